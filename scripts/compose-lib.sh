# Shared by the scripts that run the Compose cluster (test-docker.sh,
# chaos-docker.sh); source it after setting `name` (the log prefix).
# Provides log, fail, free_port, and compose_start, which starts a project
# with the router on a free port, tears it down (volumes too) on exit even on
# failure (and the directories in the array compose_dirs), and waits until the
# router is ready.

log() { printf '%s: %s\n' "$name" "$*" >&2; }
fail() { log "FAILED: $*"; exit 1; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# compose_start PROJECT [EXTRA_COMPOSE_FILE]: sets the globals compose (the
# docker-compose command line) and router (the router's URL).
compose_start() {
    local project=$1 extra=${2:-}
    local port
    port=$(free_port)
    export KVORUM_ROUTER_PORT=$port KVORUM_VERSION=$(scripts/version.sh)
    compose=(docker-compose --project-name "$project" --file deploy/docker-compose.yml)
    [[ -z $extra ]] || compose+=(--file "$extra")
    router="http://127.0.0.1:$port"
    compose_extra=$extra
    trap compose_cleanup EXIT INT TERM
    log "starting $project (router on $router)"
    "${compose[@]}" up --detach --quiet-pull 2>&1 | grep -v -e '^Creating' -e '^$' >&2 || true
    # Ready means: every storage node registered with metad and the map exists.
    local deadline=$((SECONDS + 120))
    until curl -sf "$router/readyz" >/dev/null; do
        (( SECONDS < deadline )) || fail "the router was not ready within 120 s"
        sleep 0.5
    done
    log "ready after ${SECONDS}s"
}

compose_cleanup() {
    local status=$?
    if [[ $status -ne 0 ]]; then
        log "logs of the cluster:"
        "${compose[@]}" logs --no-color --tail 30 >&2 || true
    fi
    "${compose[@]}" down --volumes --remove-orphans --timeout 5 >/dev/null 2>&1 || true
    [[ -z ${compose_extra:-} ]] || rm -f "$compose_extra"
    # Directories the caller made for the project (set before compose_start).
    [[ -z ${compose_dirs:-} ]] || rm -rf "${compose_dirs[@]}"
    exit $status
}
