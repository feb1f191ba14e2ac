"""One closing line for `make test`'s two pytest runs (main .venv, then .venv-vbench), from their JUnit XML.

Usage: python scripts/test_summary.py NAME=RESULTS.xml:EXIT_CODE ...   (stdlib only)
Prints the counts summed over the runs, then each run's, and exits 1 when any run's exit code is non-zero
(pytest's 5, "no tests collected", included) or its XML is missing.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

KEYS = ("passed", "failed", "errors", "skipped")


def counts(xml: Path) -> dict:
    root = ET.parse(xml).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    c = {k: 0 for k in KEYS} | {"seconds": 0.0}
    for s in suites:
        tests, failed, errors, skipped = (int(s.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
        c["passed"] += tests - failed - errors - skipped
        c["failed"] += failed
        c["errors"] += errors
        c["skipped"] += skipped
        c["seconds"] += float(s.get("time", 0))
    return c


def fmt(c: dict) -> str:
    return ", ".join(f"{c[k]} {k}" for k in KEYS if c[k] or k == "passed") + f" in {c['seconds']:.0f}s"


def main(argv: list[str]) -> int:
    total, parts, ok = {k: 0 for k in KEYS} | {"seconds": 0.0}, [], True
    for arg in argv:
        name, _, rest = arg.partition("=")
        path, _, code = rest.rpartition(":")
        code = int(code)
        try:
            c = counts(Path(path))
        except (OSError, ET.ParseError) as e:
            parts.append(f"{name}: no results ({type(e).__name__}), exit {code}")
            ok = False
            continue
        for k in total:
            total[k] += c[k]
        note = " (no tests collected)" if code == 5 else ""
        parts.append(f"{name}: {fmt(c)}, exit {code}{note}")
        ok &= code == 0
    print(f"== {'PASSED' if ok else 'FAILED'}: {fmt(total)} over {len(argv)} runs ({'; '.join(parts)}) ==")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
