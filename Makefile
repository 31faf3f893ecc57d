# The two commands a newcomer needs: `make demo` and `make test`. Both create .venv if absent.
PYTHON ?= python3
VENV ?= .venv
# '' (CPU), tpu or cuda12: the accelerator wheels at the locked jax (pyproject's extras)
ACCEL ?=
comma := ,
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed$(ACCEL)

.PHONY: demo test test-fast lint venv clean

venv: $(STAMP)

# Install the project and its extras at the versions in requirements.lock (what CI used).
$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e '.[test,dev$(if $(ACCEL),$(comma)$(ACCEL))]'
	touch $(STAMP)

demo: $(STAMP)
	rm -rf runs/demo
	$(VENV)/bin/dul-jax train --config experiments/configs/demo.py --workdir runs/demo

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -n auto --dist loadfile

# The quick tier (a few minutes): everything but the tests marked integration (see pyproject.toml).
test-fast: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -n auto --dist loadfile -m "not integration"

lint: $(STAMP)
	$(VENV)/bin/ruff check dul_jax tests experiments benchmarks

clean:
	rm -rf $(VENV) runs
