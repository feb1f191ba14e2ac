"""Flow `curate_real`: Sekai-format clips + camera files -> action-labelled segments (manifests/real).

One Prefect task per shard of ``curate_real.shard_size`` clips. A shard's cache key covers its inputs
(each file's URI, size and mtime, and its annotation row), the stage's config sections, the code version
and the output location. A shard whose completion marker carries the same key is not redone (resume);
Prefect's cache is honoured only while that marker is intact, so a deleted manifest is always rebuilt.
Camera -> action conversion is cheap CPU work, so shards run in the driver's task runner; the
model-heavy stages hand their items to Ray actor pools instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections import Counter
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.artifacts import create_table_artifact
from prefect.futures import as_completed
from rich.progress import Progress

from yume.config import Profile, load_profile, stage_hash
from yume.datasets.manifest import REAL, completed_shards, marker_path, read_manifest, read_marker, shard_path, write_shard
from yume.datasets.sekai import SekaiClip, read_annotations
from yume.flows.reporting import write_metrics
from yume.tasks.curate_real import clip_fingerprint, curate_clip
from yume.versioning import code_version
from yume.workdir_lock import locks_workdir

log = logging.getLogger(__name__)
STAGE = "curate_real"
WORLD_MARKER = "_WORLD.json"


@task(name="render-procedural-worlds")
def ensure_procedural_worlds(profile: Profile) -> str:
    """Render the tiny profile's Sekai-format worlds once per world config (marker-guarded)."""
    from yume.datasets.procedural import write_sekai_dataset

    root = profile.sekai_root()
    key = stage_hash(profile, "world")
    marker = root / WORLD_MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("world_hash") == key:
        log.info("procedural worlds at %s are up to date", root)
        return str(root)
    # Render beside the old tree and swap it in only once complete: a kill mid-render leaves the previous worlds
    # (or nothing) in place, never a half-written tree that a later run would trust. The work directory's lock
    # (yume.workdir_lock) keeps a second run from rendering into the same place meanwhile.
    staging = root.with_name(f".{root.name}.rendering")
    if staging.exists():
        shutil.rmtree(staging)  # a render that was killed: nobody else writes here while we hold the lock
    write_sekai_dataset(staging, profile.world)
    (staging / WORLD_MARKER).write_text(json.dumps({"world_hash": key}))
    if root.exists():
        retired = root.with_name(f".{root.name}.retired")
        shutil.rmtree(retired, ignore_errors=True)
        root.rename(retired)
        staging.rename(root)
        shutil.rmtree(retired)
    else:
        staging.rename(root)
    return str(root)



@task(name="curate-real-shard", persist_result=False, cache_policy=NO_CACHE)  # its completion marker is the record
def curate_shard(shard: str, clips: list[SekaiClip], root: str, manifest_dir: str, profile: Profile, cache_key: str) -> dict:
    """Label every clip of one shard and write the shard atomically. Returns its completion marker."""
    marker = read_marker(Path(manifest_dir), shard)
    if marker is not None and marker.get("cache_key") == cache_key:
        return {**marker, "resumed": True}
    rows: list[dict] = []
    for clip in clips:
        rows.extend(curate_clip(clip, Path(root), profile.actions, profile.curate_real, stage_hash(profile, *CONFIG_SECTIONS)))
    return write_shard(Path(manifest_dir), shard, rows, REAL, extra={"cache_key": cache_key})


CONFIG_SECTIONS = ("data", "actions", "curate_real")


def shard_cache_key(clips: list[SekaiClip], root: Path, manifest_dir: Path, profile: Profile) -> str:
    h = hashlib.sha256()
    for part in (STAGE, code_version(profile.curate_real.stage_version), stage_hash(profile, *CONFIG_SECTIONS), str(manifest_dir)):
        h.update(part.encode() + b"\0")
    for clip in clips:
        h.update(json.dumps(clip_fingerprint(clip, root), sort_keys=True).encode())
    return h.hexdigest()[:32]


def _remove_stale_shards(manifest_dir: Path, keep: set[str]) -> None:
    """Shards from an earlier, larger input set would leave rows nobody produced this run."""
    for shard in completed_shards(manifest_dir):
        if shard not in keep:
            marker_path(manifest_dir, shard).unlink(missing_ok=True)
            shard_path(manifest_dir, shard).unlink(missing_ok=True)


def label_distribution(manifest_dir: Path) -> list[dict]:
    table = read_manifest(manifest_dir, REAL).to_pandas()
    ok = table[table.status == "ok"]
    if ok.empty:
        return []
    ok = ok.assign(frames=ok.end_frame - ok.start_frame)
    dist = ok.groupby(["keys", "mouse"]).agg(segments=("id", "size"), frames=("frames", "sum")).reset_index()
    return dist.sort_values("segments", ascending=False).to_dict("records")


@flow(name="curate_real")
@locks_workdir
def curate_real(profile: str = "tiny", workdir: str | None = None, overrides: list[str] | None = None) -> dict:
    """Read a Sekai-format directory, convert trajectories to actions, cut segments, write manifests/real."""
    started = time.perf_counter()
    cfg = load_profile(profile, workdir, overrides or [])
    root = Path(ensure_procedural_worlds(cfg)) if cfg.world is not None and not cfg.data.sekai_root else cfg.sekai_root()
    clips = read_annotations(root)
    manifest_dir = cfg.workdir_path / "manifests" / "real"
    size = cfg.curate_real.shard_size
    shards = {f"{i // size:05d}": clips[i : i + size] for i in range(0, len(clips), size)}
    _remove_stale_shards(manifest_dir, set(shards))

    futures, hits = [], 0
    for name, shard_clips in shards.items():
        key = shard_cache_key(shard_clips, root, manifest_dir, cfg)
        marker = read_marker(manifest_dir, name)
        fresh = marker is not None and marker.get("cache_key") == key
        hits += fresh
        options = curate_shard.with_options(
            retries=cfg.prefect.task_retries, retry_delay_seconds=cfg.prefect.retry_delay_seconds
        )
        futures.append(options.submit(name, shard_clips, str(root), str(manifest_dir), cfg, key))
    with Progress(transient=True) as progress:
        bar = progress.add_task(f"{STAGE}: shards", total=len(futures))
        for fut in as_completed(futures):
            fut.result()  # raises if a shard failed after its retries
            progress.advance(bar)

    table = read_manifest(manifest_dir, REAL)
    status = Counter(table.column("status").to_pylist())
    distribution = label_distribution(manifest_dir)
    create_table_artifact(
        key="curate-real-labels", table=distribution or [{"keys": "-", "mouse": "-", "segments": 0, "frames": 0}],
        description=f"Label distribution of {status.get('ok', 0)} segments from {len(clips)} clips ({root})",
    )
    metrics = {
        "stage": STAGE,
        "clips": len(clips),
        "shards": len(shards),
        "shards_cached": int(hits),
        "segments_ok": status.get("ok", 0),
        "rows_quarantined": status.get("quarantined", 0),
        "label_distribution": distribution,
        "wall_seconds": round(time.perf_counter() - started, 2),
        "manifest": str(manifest_dir),
        "config_hash": stage_hash(cfg, *CONFIG_SECTIONS),
    }
    write_metrics(cfg, STAGE, metrics)
    return {k: v for k, v in metrics.items() if k != "label_distribution"}
