#!/usr/bin/env bash
# Validates the Kubernetes manifests offline: every overlay renders with
# `kubectl kustomize`, the output passes `kubernetes-validate --strict` for the
# Kubernetes version we target, and every Kvorum image it names is one that
# `make images` builds, with the same tag.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION=${K8S_VERSION:-1.32.0}
VALIDATE_VERSION=1.32.0
venv=target/tools/k8s-venv

if [[ ! -x "$venv/bin/kubernetes-validate" ]]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "kubernetes-validate==$VALIDATE_VERSION"
fi

version=$(scripts/version.sh)
built=$(sed -n 's/^SERVICES=(\(.*\))$/\1/p' scripts/build-images.sh)
status=0
for overlay in k8s/overlays/*/; do
    name=$(basename "$overlay")
    rendered=target/k8s/$name.yaml
    mkdir -p target/k8s
    kubectl kustomize "$overlay" > "$rendered"
    if ! "$venv/bin/kubernetes-validate" --strict --kubernetes-version "$K8S_VERSION" "$rendered" >target/k8s/$name.validation 2>&1; then
        echo "validate-k8s: $name does not validate:" >&2
        grep -v ' is valid$' target/k8s/$name.validation >&2 || true
        status=1
        continue
    fi
    # Every kvorum image is one make images builds, at the workspace version.
    while read -r image; do
        repository=${image%%:*}
        tag=${image#*:}
        case " $built " in
            *" $repository "*) ;;
            *) echo "validate-k8s: $name names $image, which make images does not build" >&2; status=1; continue ;;
        esac
        if [[ "$tag" != "$version" ]]; then
            echo "validate-k8s: $name names $image, but make images tags $repository:$version" >&2
            status=1
        fi
    done < <(sed -n 's/^ *image: \(kvorum-[^ ]*\)$/\1/p' "$rendered" | sort -u)
    echo "validate-k8s: $name renders and validates ($(grep -c '^kind:' "$rendered") objects)"
done
exit $status
