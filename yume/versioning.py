"""Code version for cache keys: a stage's version string plus a hash of the package's source.

Hashing every .py file of the installed package (not only a task function's source) means a change to
any helper a task calls invalidates its cache, which Prefect's TASK_SOURCE policy would miss.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import yume


def _package_dirs() -> list[Path]:
    import yume.datasets
    import yume.flows
    import yume.models
    import yume.tasks

    return [Path(m.__file__).parent for m in (yume, yume.flows, yume.tasks, yume.models, yume.datasets)]


@lru_cache(maxsize=1)
def source_hash() -> str:
    h = hashlib.sha256()
    for d in _package_dirs():
        for f in sorted(d.glob("*.py")):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def code_version(stage_version: str) -> str:
    return f"{stage_version}+{source_hash()}"
