PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: train train-xor demo bench test test-all clean distclean

# The README's main job: surrogate flossing against none on the best setting issue 13's study found (docs/RESULTS.md
# section 5): 8 + 8 recurrent LIF networks (seeds 0-7), temporal go/no-go with a delay of 36 steps = 8 membrane
# time constants (beta 0.8), the wide SuperSpike surrogate, Adam at lr 1e-3 for 60 epochs, preflossing of 4
# exponents. The study found no significant benefit of flossing here; the comparison shows what flossing does.
MAIN_JOB := --compare --ensemble 8 --task gonogo_temporal --delay 36 --beta 0.8 --surrogate superspike --lr 1e-3 \
	--epochs 60 --steps-per-epoch 10 --k 4 --pre-steps 100 --floss-T 100 --floss-batch 8 --lyap-every 5 \
	--spectrum-k 16 --out outputs/train
train: $(STAMP)
	$(VENV)/bin/surroflos train $(MAIN_JOB)

# The earlier main job (one network, delayed XOR at delay 6, preflossed; about 25 s): `surroflos train`'s defaults.
train-xor: $(STAMP)
	$(VENV)/bin/surroflos train --out outputs/train-xor

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
