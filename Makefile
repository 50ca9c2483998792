# Kvorum: `make run` starts a local cluster, `make test` runs every test.
# Sizes and ports are variables: make run NODES=7 PORT=9090

NODES        ?= 5
STANDBYS     ?= 0
RF           ?= 3
PARTITIONS   ?= 64
PORT         ?= 8080
STORAGE_PORT ?= 7001
METAD        ?= 3
METAD_PORT   ?= 9001
DETECTORS    ?= 1
DETECTOR_PORT ?= 7300
RECOVERY     ?= 1
RECOVERY_PORT ?= 7400
REPLACEMENT_DELAY_MS ?= 15000
DATA_DIR     ?= data
CHAOS_DURATION_S ?= 150
CHAOS_OUT    ?= target/chaos/latest
SOAK_METAD_S ?= 1800
# Every fault kind local processes can have (slow-links needs Docker: loopback must not be shaped).
CHAOS_ALL_FAULTS := partition-halves,kill-storage,clock-forward,wipe-storage,kill-two-storage,partition-one-way,kill-metad-leader,pause-router,clock-back,wipe-storage-all,partition-bridge,pause-storage,kill-storage-and-metad-leader,lossy-links,clock-drift,term-storage,partition-storage,churn-storage,kill-recovery,wipe-metad,kill-metad

CARGO ?= cargo
# A toolchain that ensure-tools.sh installed with rustup lives here.
export PATH := $(HOME)/.cargo/bin:$(PATH)

VERSION := $(shell scripts/version.sh)
KIND_CLUSTER ?= kvorum
# The one list of images is in scripts/build-images.sh.
IMAGES := $(shell sed -n 's/^SERVICES=(\(.*\))$$/\1/p' scripts/build-images.sh)

.PHONY: all tools build release run test lint fmt clean clean-data images test-docker \
	validate-k8s kind-up kind-load kind-deploy kind-down minikube-deploy chaos chaos-tools chaos-long soak-metad chaos-docker chaos-k8s \
	bench bench-tombstones profile

all: build

tools: ## check the Rust toolchain and install cargo-nextest if missing
	@scripts/ensure-tools.sh

build: tools ## debug binaries, as the tests use them
	$(CARGO) build --bins

release: tools
	$(CARGO) build --release --bins

run: release ## start a local cluster in ./data until Ctrl-C
	./target/release/kvorum-local --nodes $(NODES) --standbys $(STANDBYS) --replication-factor $(RF) \
		--partitions $(PARTITIONS) --port $(PORT) --storage-port $(STORAGE_PORT) \
		--metad-replicas $(METAD) --metad-port $(METAD_PORT) \
		--detectors $(DETECTORS) --detector-port $(DETECTOR_PORT) \
		--recovery-controllers $(RECOVERY) --recovery-port $(RECOVERY_PORT) \
		--replacement-delay-ms $(REPLACEMENT_DELAY_MS) \
		--data-dir $(DATA_DIR) --bin-dir target/release

chaos-tools: ## nftables and libfaketime, for network and clock faults
	@scripts/ensure-chaos-tools.sh

test: build chaos-tools ## unit, handler and whole-cluster tests
	$(CARGO) nextest run --workspace

lint: tools ## formatting and clippy, warnings are errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean-data: ## forget the local cluster's data
	rm -rf $(DATA_DIR)

clean: clean-data
	$(CARGO) clean

chaos: release chaos-tools ## a bounded chaos run on local processes (at most 4 minutes); report in target/chaos/latest
	./target/release/kvorum-chaos --duration-s $(CHAOS_DURATION_S) --out $(CHAOS_OUT)

chaos-long: release chaos-tools ## a 30-minute soak with every fault kind (not in CI); report in target/chaos/long
	./target/release/kvorum-chaos --duration-s 1800 --faults $(CHAOS_ALL_FAULTS) --out target/chaos/long

soak-metad: release chaos-tools ## 30 minutes of metad kills and disk losses, one every two minutes, in the Kubernetes layout (not in CI); report in target/chaos/soak-metad
	./target/release/kvorum-chaos --duration-s $(SOAK_METAD_S) --detectors 2 --faults kill-metad,wipe-metad \
		--quiet-start-s 20 --fault-interval-s 120 --fault-hold-s 10 --out target/chaos/soak-metad

chaos-docker: tools ## a chaos run with network partitions against the Compose cluster; report in target/chaos/docker
	scripts/chaos-docker.sh

chaos-k8s: tools ## a chaos run that deletes pods of the kind/minikube deployment; report in target/chaos/k8s
	scripts/chaos-k8s.sh

bench: tools ## Kvorum against a 3-node etcd on this machine, same load tool; table in target/bench/report.md
	scripts/bench.sh

bench-tombstones: tools ## disk kept by a strong keyspace after 1,000,000 keys are written and deleted; target/bench/tombstones.json
	BENCH_SCRIPT=bench_tombstones.py scripts/bench.sh

profile: tools ## CPU flame graphs of the router and a storage node under 64-connection PUTs, in docs/profiles/
	scripts/bench.sh --profile

images: tools ## container images FROM scratch, tagged $(VERSION)
	scripts/build-images.sh

test-docker: tools ## the Compose cluster end to end: PUT/GET, kill a storage container, QUORUM still works
	scripts/test-docker.sh

validate-k8s: ## render every kustomize overlay and validate it offline (kubernetes-validate --strict)
	scripts/validate-k8s.sh

kind-up: ## a kind cluster with the router on localhost:8080 and Jaeger on localhost:16686
	@command -v kind >/dev/null || { echo "kind is not installed: see https://kind.sigs.k8s.io/docs/user/quick-start/#installation"; exit 1; }
	kind create cluster --config k8s/kind-config.yaml --name $(KIND_CLUSTER)

kind-load: images ## load the images into the kind cluster (they are never pulled)
	@command -v kind >/dev/null || { echo "kind is not installed"; exit 1; }
	for image in $(IMAGES); do kind load docker-image --name $(KIND_CLUSTER) $$image:$(VERSION); done

kind-deploy: ## deploy the kind overlay and wait for the router
	kubectl apply -k k8s/overlays/kind
	kubectl -n kvorum rollout status statefulset/kvorum-metad --timeout=180s
	kubectl -n kvorum rollout status statefulset/kvorum-storage --timeout=180s
	kubectl -n kvorum rollout status deployment/kvorum-router --timeout=180s

kind-down: ## delete the kind cluster
	kind delete cluster --name $(KIND_CLUSTER)

minikube-deploy: images ## load the images into minikube and deploy the minikube overlay
	@command -v minikube >/dev/null || { echo "minikube is not installed: see https://minikube.sigs.k8s.io/docs/start/"; exit 1; }
	for image in $(IMAGES); do minikube image load $$image:$(VERSION); done
	kubectl apply -k k8s/overlays/minikube
	kubectl -n kvorum rollout status deployment/kvorum-router --timeout=300s
