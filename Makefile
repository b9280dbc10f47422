# Every target creates .venv if missing and installs what it needs; `make test` is what CI runs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: venv test demo bench clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

$(TEST_STAMP): $(STAMP) requirements-test.txt requirements-eval.txt
	$(PY) -m pip install --quiet -r requirements-test.txt -r requirements-eval.txt
	touch $@

venv: $(STAMP)

test: $(TEST_STAMP)
	$(PY) -m pytest -q

demo: $(TEST_STAMP)
	$(PY) scripts/demo.py

bench: $(TEST_STAMP)
	$(PY) scripts/bench/model_step.py --compile

clean:
	rm -rf $(VENV) .pytest_cache out/demo
