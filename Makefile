# The command contract of DESIGN section 7: README, CI and benchmarks rely on these targets.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

# One cargo target dir per machine, outside the checkout, so a CI run in a fresh clone reuses
# what an earlier session (or run) built.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/taskrun/cargo-target
export CARGO_TERM_COLOR ?= never

.PHONY: help deps test lint fmt clippy fuzz-check build control-plane crd cluster up down run bench helm go-tools fuzz

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

test: deps control-plane go-tools lint build ## everything from a fresh clone: build, lint, unit and integration tests
	cargo test --workspace --all-targets --locked
	@# The lint step's warning is long scrolled away by now: say it again at the end.
	@for c in fmt clippy; do cargo $$c --version >/dev/null 2>&1 || \
	  echo "!!! cargo $$c is not installed on this machine: this run did NOT check $$c" >&2; done

deps: ## system packages the tests and make up need (lua5.1, openssl, curl, g++), installed with apt-get when missing
	@hack/install-deps.sh

# Whatever compiles needs deps' compilers and checked toolchains first, under make -j too.
lint fmt clippy fuzz-check build control-plane go-tools helm: | deps

lint: fmt clippy fuzz-check ## rustfmt and clippy; says so loudly when a component is missing

fuzz-check: ## the fuzz targets (a workspace of their own) still build against the crates, lint clean, with fuzz/Cargo.lock current
	@if cargo clippy --version >/dev/null 2>&1; then \
	  cd fuzz && cargo clippy --locked --bins --quiet -- -D warnings; \
	else \
	  cd fuzz && cargo check --locked --bins --quiet; \
	fi

fmt:
	@if cargo fmt --version >/dev/null 2>&1; then \
	  cargo fmt --all --check && (cd fuzz && cargo fmt --check); \
	else \
	  echo "!!! rustfmt is not installed on this machine: formatting was NOT checked" >&2; \
	fi

clippy:
	@if cargo clippy --version >/dev/null 2>&1; then \
	  cargo clippy --workspace --all-targets --locked -- -D warnings; \
	else \
	  echo "!!! clippy is not installed on this machine: lints were NOT checked" >&2; \
	fi

build: ## build every binary (integration tests start them as processes)
	cargo build --workspace --bins --locked

control-plane: ## build (once per machine) and cache kube-apiserver, etcd, kube-controller-manager, kubectl
	@tests/cluster/build.sh >/dev/null

crd: ## regenerate the CRD in manifests/ from the Rust types
	cargo run --quiet --locked -p taskrun --bin crdgen > manifests/crd/taskruns.orchestrator.io.yaml.new
	mv manifests/crd/taskruns.orchestrator.io.yaml.new manifests/crd/taskruns.orchestrator.io.yaml

cluster: control-plane ## the control plane alone (etcd, kube-apiserver, kube-controller-manager, CRD), foreground until Ctrl-C
	@hack/cluster.sh

up: deps control-plane ## the stack in the background; ready when it returns (source .dev/env; logs in .dev/logs/)
	@hack/up.sh

down: ## stop everything make up started
	@hack/down.sh

run: deps control-plane ## up (or the cluster KUBECONFIG names), apply examples/, stream their status until Ctrl-C, then down
	@hack/run.sh

bench: control-plane helm ## the benchmarks against the ceiling and Helm: a table, and .dev/bench/summary.json (docs/benchmarks.md)
	cargo build --release --locked -p taskrun-webhook -p taskrun-controller -p taskrun-bench
	$(CARGO_TARGET_DIR)/release/taskrun-bench

helm: ## build (once per machine) and cache the pinned helm CLI the migrate-helm tests install releases with
	@tests/helm/build.sh >/dev/null

go-tools: helm ## build (once per machine) and cache every pinned Go tool the tests drive, before they start
	@for tool in certmanager kstatus fluxapply; do tests/$$tool/build.sh >/dev/null; done

FUZZ_SECONDS ?= 30
fuzz: ## run every cargo-fuzz target for FUZZ_SECONDS each (needs cargo-fuzz; stable Rust via RUSTC_BOOTSTRAP)
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	@# cargo fuzz has no --locked: stop here if fuzz/Cargo.lock would have to change.
	@cd fuzz && cargo metadata --locked --format-version 1 >/dev/null
	@cd fuzz && for target in validation admission helm_release; do \
	  mkdir -p corpus/$$target; seeds=; [ -d seeds/$$target ] && seeds=seeds/$$target; \
	  echo "== fuzz $$target for $(FUZZ_SECONDS)s"; \
	  mkdir -p artifacts; log=artifacts/$$target.log; \
	  RUSTC_BOOTSTRAP=1 cargo fuzz run $$target corpus/$$target $$seeds -- -max_total_time=$(FUZZ_SECONDS) >$$log 2>&1 \
	    || { tail -n 60 $$log; echo "== fuzz $$target failed: the whole output is in fuzz/$$log" >&2; exit 1; }; \
	  grep -E '^(Done|==[0-9]+== ERROR|SUMMARY)' $$log || true; \
	done
