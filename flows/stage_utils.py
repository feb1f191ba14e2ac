"""What the model-driven stage flows share: shard splitting, cache keys, resume, stale shards, artifacts.

The pattern is curate_real's (a Prefect task per shard, cached on inputs + code version, skipped when its
completion marker carries the same key), with one difference: shards run one after another in the driver,
because each shard already spreads its items over the stage's Ray actor pool; running shards concurrently
would only interleave their batches on the same actors.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from rich.progress import Progress

from yume.config import Profile
from yume.datasets.manifest import MARKER_PREFIX, completed_shards, marker_path, read_marker, shard_path
from yume.versioning import code_version

log = logging.getLogger(__name__)


def split_shards(items: list, size: int) -> dict[str, list]:
    return {f"{i // size:05d}": items[i : i + size] for i in range(0, len(items), size)}


def shard_cache_key(stage: str, stage_version: str, config_hash: str, manifest_dir: Path, fingerprints: list) -> str:
    h = hashlib.sha256()
    for part in (stage, code_version(stage_version), config_hash, str(manifest_dir)):
        h.update(part.encode() + b"\0")
    for fp in fingerprints:
        h.update(json.dumps(fp, sort_keys=True, default=str).encode() + b"\n")
    return h.hexdigest()[:32]


def remove_stale_shards(manifest_dir: Path, keep: set[str]) -> None:
    """Shards from an earlier, larger input set would leave rows nobody produced this run."""
    for shard in completed_shards(manifest_dir):
        if shard not in keep:
            marker_path(manifest_dir, shard).unlink(missing_ok=True)
            shard_path(manifest_dir, shard).unlink(missing_ok=True)


def run_shards(
    stage: str, task_fn, shards: dict[str, list], keys: dict[str, str], manifest_dir: Path, cfg: Profile,
    call: Callable[[Any, str, list, str], dict],
) -> tuple[list[dict], int]:
    """Run ``call(task_with_options, shard, items, key)`` for every shard in order; returns (markers, cache hits).
    Each marker gets ``cached``: whether its shard was already complete with the same key.

    A shard whose marker carries its key is a cache hit: the task itself returns the marker without touching the
    pool. The markers are the record, so the tasks persist no Prefect result (and so nothing is pickled).
    """
    markers, hits = [], 0
    with Progress(transient=True) as progress:
        bar = progress.add_task(f"{stage}: shards", total=len(shards))
        for name, items in shards.items():
            marker = read_marker(manifest_dir, name)
            fresh = marker is not None and marker.get("cache_key") == keys[name]
            hits += fresh
            options = task_fn.with_options(retries=cfg.prefect.task_retries,
                                           retry_delay_seconds=cfg.prefect.retry_delay_seconds)
            markers.append({**call(options, name, items, keys[name]), "cached": fresh})
            progress.advance(bar)
    return markers, int(hits)


def quarantine_reasons(errors: list[str | None]) -> dict[str, int]:
    return dict(Counter(e.split(":")[0] for e in errors if e).most_common())


def png_markdown(path: Path, title: str) -> str:
    """Markdown embedding a PNG as a data URI (Prefect artifacts show markdown; no image server needed)."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f"### {title}\n\n![{title}](data:image/png;base64,{data})\n\n`{path}`\n"


# --- fingerprints of what a stage reads and writes (the retrain flow's stage cache) -------------------------


def manifest_digest(manifest_dir: Path) -> str:
    """Content digest of a manifest: the sha256 of every complete shard (from its verified marker).

    Incomplete shards do not count (readers ignore them too); a missing or empty manifest is ``"absent"``.
    """
    manifest_dir = Path(manifest_dir)
    if not manifest_dir.is_dir():
        return "absent"
    shards = []
    for marker_file in sorted(manifest_dir.glob(f"{MARKER_PREFIX}*.json")):
        shard = marker_file.name[len(MARKER_PREFIX) : -len(".json")]
        marker = read_marker(manifest_dir, shard)  # verifies the Parquet file's sha256
        if marker is not None:
            shards.append((shard, marker["sha256"]))
    if not shards:
        return "absent"
    return hashlib.sha256(json.dumps(shards).encode()).hexdigest()[:32]


SMALL_FILE_BYTES = 256 << 10


def path_digest(path: Path, content: bool = True) -> str:
    """Digest of a file or directory tree.

    ``content``: a file by its bytes; a tree by relative names plus the bytes of files up to 256 KiB (a table or
    index rewritten with the same bytes is unchanged) and size + mtime of bigger ones. Without ``content``
    (big external data roots, ~1e5 files): names, sizes and mtimes only, one stat per file.
    A directory holding ``_SUCCESS.*`` markers is a manifest (``manifest_digest``). Missing: ``"absent"``.
    """
    from yume.datasets.manifest import file_sha256

    path = Path(path)
    if not path.exists():
        return "absent"
    if path.is_file():
        st = path.stat()
        return file_sha256(path)[:32] if content else f"{st.st_size}-{st.st_mtime_ns}"
    if any(path.glob(f"{MARKER_PREFIX}*.json")):
        return manifest_digest(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        st = f.stat()
        small = content and st.st_size <= SMALL_FILE_BYTES
        stamp = file_sha256(f) if small else f"{st.st_size}\0{st.st_mtime_ns}"
        h.update(f"{f.relative_to(path).as_posix()}\0{stamp}\n".encode())
    return h.hexdigest()[:32]


def status_counts(manifest_dir: Path) -> dict[str, int]:
    """Rows by status over a manifest's complete shards (from the markers; no Parquet read)."""
    counts: Counter = Counter()
    manifest_dir = Path(manifest_dir)
    for marker_file in sorted(manifest_dir.glob(f"{MARKER_PREFIX}*.json")) if manifest_dir.is_dir() else []:
        marker = read_marker(manifest_dir, marker_file.name[len(MARKER_PREFIX) : -len(".json")])
        counts.update((marker or {}).get("status_counts", {}))
    return dict(counts)
