# The two entry points (README): `make demo` runs the whole DAG on the tiny profile, `make test` runs
# the whole test suite. Both create .venv from constraints.txt when it is missing or out of date.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-fast

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade "pip>=24"
	$(VENV)/bin/pip install -c constraints.txt -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/yume demo $(ARGS)

# pytest exits 5 when it collects no tests: make fails on it like on any other non-zero code.
test: $(STAMP)
	$(VENV)/bin/pytest $(ARGS)

test-fast: $(STAMP)
	$(VENV)/bin/pytest -m "not slow" $(ARGS)
