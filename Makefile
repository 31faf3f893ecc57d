# The two commands a newcomer needs: `make demo` and `make test`. Both create .venv if absent.
PYTHON ?= python3
VENV ?= .venv
# '' (CPU), tpu or cuda12: the accelerator wheels at the locked jax (pyproject's extras)
ACCEL ?=
comma := ,
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed$(ACCEL)
TEST_STAMP := $(VENV)/.installed-test$(ACCEL)

.PHONY: demo test test-fast lint venv clean

venv: $(STAMP)

# What a user needs: the project (and its accelerator wheels) at the versions in requirements.lock.
$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e '.$(if $(ACCEL),[$(ACCEL)])'
	touch $(STAMP)

# The tests add pytest, libtpu for ahead-of-time TPU compiles, a GCS emulator, Jupyter and ruff.
$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q -c requirements.lock -e '.[test,dev$(if $(ACCEL),$(comma)$(ACCEL))]'
	touch $(TEST_STAMP)

# Resumes a stopped demo (and only evaluates a finished one); `rm -rf runs/demo` starts over.
demo: $(STAMP)
	$(VENV)/bin/dul-jax train --config experiments/configs/demo.py --workdir runs/demo

test: $(TEST_STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -n auto --dist loadfile

# The quick tier (a few minutes): everything but the tests marked integration (see pyproject.toml).
test-fast: $(TEST_STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -n auto --dist loadfile -m "not integration"

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check dul_jax tests experiments benchmarks

clean:
	rm -rf $(VENV) runs
