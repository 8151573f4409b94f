PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: train demo bench test test-all clean distclean

# The README's main job: a recurrent LIF network on delayed XOR with preflossing (about a minute on CPU).
train: $(STAMP)
	$(VENV)/bin/surroflos train

demo: $(STAMP)
	$(VENV)/bin/surroflos demo

bench: $(STAMP)
	$(VENV)/bin/surroflos bench --config cpu

# The fast suite on two pytest workers (a test module stays on one worker), then the tests that stop a sweep's
# driver with signals in a pytest process of their own.
test: $(STAMP)
	$(PY) -m pytest -m "not slow and not isolated" -q -n 2 --dist loadfile
	$(PY) -m pytest -m "isolated and not slow" -q

test-all: $(STAMP)
	$(PY) -m pytest -q

# NIR consumers that need environments of their own (spyx/JAX, Rockpool, sinabs with nir<=1.0.4) in .interop/:
# build them, run the interop tests and print the measured table (docs/INTEROP.md).
interop: $(STAMP)
	bash scripts/interop.sh

# Create the virtualenv if missing and (re)install the package in editable
# mode whenever pyproject.toml or constraints.txt change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -c constraints.txt -e ".[test]"
	touch $@

clean:
	rm -rf build dist *.egg-info .pytest_cache
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
