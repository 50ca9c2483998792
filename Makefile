# Kvorum: `make run` starts a local cluster, `make test` runs every test.
# Sizes and ports are variables: make run NODES=7 PORT=9090

NODES        ?= 5
RF           ?= 3
PARTITIONS   ?= 64
PORT         ?= 8080
STORAGE_PORT ?= 7001
METAD        ?= 3
METAD_PORT   ?= 9001
DATA_DIR     ?= data

CARGO ?= cargo
# A toolchain that ensure-tools.sh installed with rustup lives here.
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: all tools build release run test lint fmt clean clean-data

all: build

tools: ## check the Rust toolchain and install cargo-nextest if missing
	@scripts/ensure-tools.sh

build: tools ## debug binaries, as the tests use them
	$(CARGO) build --bins

release: tools
	$(CARGO) build --release --bins

run: release ## start a local cluster in ./data until Ctrl-C
	./target/release/kvorum-local --nodes $(NODES) --replication-factor $(RF) \
		--partitions $(PARTITIONS) --port $(PORT) --storage-port $(STORAGE_PORT) \
		--metad-replicas $(METAD) --metad-port $(METAD_PORT) \
		--data-dir $(DATA_DIR) --bin-dir target/release

test: build ## unit, handler and whole-cluster tests
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
