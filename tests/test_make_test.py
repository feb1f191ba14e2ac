"""`make test`'s plumbing: --fail-on-skip (tests/conftest.py) for the .venv-vbench run, and the one closing line
over both runs (scripts/test_summary.py), which fails on any non-zero exit code, pytest's 5 included."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pytest(directory: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-c", str(directory / "pytest.ini"),
                           "--rootdir", str(directory), *args, str(directory)],
                          capture_output=True, text=True, timeout=120, cwd=directory)


def test_fail_on_skip_turns_every_skip_into_a_failure(tmp_path):
    shutil.copy(ROOT / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_module_skip.py").write_text(
        "import pytest\npytest.importorskip('no_such_module_xyz')\ndef test_a():\n    pass\n")
    (tmp_path / "test_runtime_skip.py").write_text(
        "import pytest\ndef test_b():\n    pytest.skip('not here')\ndef test_c():\n    pass\n")
    quiet = _pytest(tmp_path, "-q")
    assert quiet.returncode == 0 and "1 passed, 2 skipped" in quiet.stdout  # the main environment's behaviour
    strict = _pytest(tmp_path, "-q", "--fail-on-skip", "--continue-on-collection-errors")
    assert strict.returncode == 1, strict.stdout
    assert "1 failed, 1 passed, 1 error" in strict.stdout
    assert "skipped at collection under --fail-on-skip" in strict.stdout and "skipped under --fail-on-skip" in strict.stdout


def _junit(path: Path, tests: int, failures: int = 0, errors: int = 0, skipped: int = 0, time: float = 1.0) -> str:
    path.write_text(f'<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="{tests}" failures="{failures}" '
                    f'errors="{errors}" skipped="{skipped}" time="{time}"/></testsuites>')
    return str(path)


def _summary(*runs: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "test_summary.py"), *runs],
                          capture_output=True, text=True, timeout=60)


def test_one_closing_line_counts_both_runs(tmp_path):
    main, vb = _junit(tmp_path / "m.xml", 600, skipped=4, time=2300.4), _junit(tmp_path / "v.xml", 11, time=65.2)
    ok = _summary(f".venv={main}:0", f".venv-vbench={vb}:0")
    assert ok.returncode == 0
    assert ok.stdout.strip() == ("== PASSED: 607 passed, 4 skipped in 2366s over 2 runs (.venv: 596 passed, 4 skipped "
                                 "in 2300s, exit 0; .venv-vbench: 11 passed in 65s, exit 0) ==")
    failed = _summary(f".venv={main}:0", f".venv-vbench={_junit(tmp_path / 'f.xml', 11, failures=1)}:1")
    assert failed.returncode == 1 and failed.stdout.startswith("== FAILED: 606 passed, 1 failed")
    empty = _summary(f".venv={_junit(tmp_path / 'e.xml', 0)}:5", f".venv-vbench={vb}:0")
    assert empty.returncode == 1 and "exit 5 (no tests collected)" in empty.stdout
    missing = _summary(f".venv={main}:0", f".venv-vbench={tmp_path / 'none.xml'}:2")
    assert missing.returncode == 1 and ".venv-vbench: no results" in missing.stdout
