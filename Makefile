# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[text,dicom,gradcam,test]'
	touch $(STAMP)

# two pytest-xdist workers on the 2-core machine, one test file per work unit, the longest files first
# (tests/conftest.py: LONGEST_FILES); PYTEST_WORKERS=0 runs the suite in one process
PYTEST_WORKERS ?= 2

test: $(STAMP)
	$(PY) -m pytest -q $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder)

demo: $(STAMP)
	$(PY) -m nnunet_ext.cli demo

lint: $(STAMP)
	$(VENV)/bin/ruff check nnunet_ext tests examples benchmarks

clean:
	rm -rf $(VENV) build *.egg-info demo_output
