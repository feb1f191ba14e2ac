"""Flow `recaption`: `real` segments -> event-focused captions (manifests/captions), InternVL3 on Ray actors.

Reads the ``ok`` rows of manifests/real (quarantined segments have nothing to caption), samples
``recaption.frames_per_segment`` frames per segment, and captions them with the configured backend
(`yume.tasks.recaption`: ``internvl`` or ``metadata``) in a Ray actor pool whose actors load the model
once. One Prefect task per shard of ``recaption.shard_size`` segments, cached on the segments (id, content
hash, span, annotation columns, event), the model checkpoint's fingerprint, the stage's config sections and
the code version; a shard whose completion marker carries the same key is not redone.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path

import pyarrow.compute as pc
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.artifacts import create_table_artifact

from yume.config import Profile, load_profile, stage_hash
from yume.datasets.manifest import REAL, PathEscapeError, read_manifest, resolve_uri, write_shard
from yume.datasets.manifest_kinds import CAPTIONS
from yume.flows.reporting import write_metrics
from yume.flows.stage_utils import quarantine_reasons, remove_stale_shards, run_shards, shard_cache_key, split_shards
from yume.tasks.ray_pool import ActorPool
from yume.tasks.recaption import CaptionWorker, caption_row, sample_frame_indices
from yume.workdir_lock import locks_workdir
from yume.flows.upstream import require_upstream

log = logging.getLogger(__name__)
STAGE = "recaption"
CONFIG_SECTIONS = ("data", "recaption")
ANNOTATIONS = ("caption", "location", "scene", "crowdDensity", "weather", "timeOfDay")


def load_events_table(root: Path, rel: str | None) -> dict[str, dict]:
    """video_file -> {event, event_start_frame, event_text} from a per-clip event table, if there is one."""
    if not rel:
        return {}
    try:
        path = resolve_uri(root, rel)
    except PathEscapeError:
        log.warning("recaption.events_table %r escapes the data root; ignored", rel)
        return {}
    if not path.is_file():
        return {}
    import pandas as pd

    df = pd.read_parquet(path)
    df = df.astype(object).where(df.notna(), None)  # NaN -> None
    out = {}
    for row in df.to_dict("records"):
        start = row.get("event_start_frame")
        out[row["video_file"]] = {
            "event": row.get("event") or None,
            "event_start_frame": None if start is None else int(start),
            "event_text": row.get("event_text") or None,
        }
    return out



@task(name="recaption-shard", persist_result=False, cache_policy=NO_CACHE)  # its completion marker is the record
def recaption_shard(shard: str, items: list[dict], manifest_dir: str, pool: ActorPool, backend: str,
                    model_id: str | None, stage_version: str, config_hash: str, cache_key: str) -> dict:
    """Caption one shard's segments on the actor pool and write the shard atomically."""
    from yume.datasets.manifest import read_marker

    marker = read_marker(Path(manifest_dir), shard)
    if marker is not None and marker.get("cache_key") == cache_key:
        return {**marker, "resumed": True}
    runnable = [it for it in items if it.get("video_path")]
    results = dict(zip([it["id"] for it in runnable], pool.map("caption", runnable)))
    rows = []
    for it in items:
        res = results.get(it["id"]) or {"status": "quarantined", "error": it["path_error"]}
        rows.append(caption_row(it, res, backend, model_id, stage_version, config_hash))
    return write_shard(Path(manifest_dir), shard, rows, CAPTIONS, extra={"cache_key": cache_key})


def build_items(cfg: Profile, root: Path) -> tuple[list[dict], int]:
    """Caption items for the ok `real` rows (sorted by id), and how many quarantined rows were skipped."""
    table = read_manifest(cfg.workdir_path / "manifests" / "real", REAL)
    ok = table.filter(pc.equal(table.column("status"), "ok")).to_pylist()
    events = load_events_table(root, cfg.recaption.events_table) if cfg.recaption.backend == "metadata" else {}
    items = []
    for row in sorted(ok, key=lambda r: r["id"]):
        item = {
            "id": row["id"], "source_uri": row["source_uri"], "content_hash": row["content_hash"],
            "video_uri": row["video_uri"], "start_frame": row["start_frame"], "end_frame": row["end_frame"],
            "frame_indices": sample_frame_indices(row["start_frame"], row["end_frame"], cfg.recaption.frames_per_segment),
            **{c: row[c] for c in ANNOTATIONS}, "event": events.get(row["video_uri"]),
        }
        try:
            item["video_path"] = str(resolve_uri(root, row["video_uri"]))
        except PathEscapeError as e:
            item["video_path"], item["path_error"] = None, f"path_escape: {e}"
        items.append(item)
    return items, table.num_rows - len(ok)


@flow(name="recaption")
@locks_workdir
def recaption(profile: str = "tiny", workdir: str | None = None, overrides: list[str] | None = None) -> dict:
    """Caption every ok `real` segment with an event-focused caption; write manifests/captions."""
    started = time.perf_counter()
    cfg = load_profile(profile, workdir, overrides or [])
    require_upstream("recaption", cfg)
    settings = cfg.recaption
    root = cfg.sekai_root()
    manifest_dir = cfg.workdir_path / "manifests" / "captions"
    items, skipped = build_items(cfg, root)

    model_path, model_id, model_fp = None, None, None
    if settings.backend == "internvl":
        from yume.tasks.tiny_models import model_fingerprint, resolve_model

        if not settings.model:
            from yume.config import ConfigError

            raise ConfigError("recaption.model: the internvl backend needs a model directory (or tiny:internvl3)")
        model_path = resolve_model(settings.model, cfg.workdir_path, "recaption.model")
        model_id, model_fp = settings.model if settings.model.startswith("tiny:") else model_path.name, model_fingerprint(model_path)

    config_hash = stage_hash(cfg, *CONFIG_SECTIONS)
    shards = split_shards(items, settings.shard_size)
    remove_stale_shards(manifest_dir, set(shards))
    keys = {
        name: shard_cache_key(STAGE, settings.stage_version, config_hash, manifest_dir,
                              [model_fp] + [{k: v for k, v in it.items() if k != "video_path"} for it in shard_items])
        for name, shard_items in shards.items()
    }
    pool = ActorPool(CaptionWorker, settings.backend, settings.model_dump(mode="json"),
                     str(model_path) if model_path else None, settings.resources.num_gpus,
                     resources=settings.resources, ray_config=cfg.ray)
    with pool:
        markers, hits = run_shards(
            STAGE, recaption_shard, shards, keys, manifest_dir, cfg,
            lambda task_fn, name, shard_items, key: task_fn(
                name, shard_items, str(manifest_dir), pool, settings.backend, model_id, settings.stage_version,
                config_hash, key),
        )

    table = read_manifest(manifest_dir, CAPTIONS) if shards else CAPTIONS.schema.empty_table()
    rows = table.to_pylist()
    status = Counter(r["status"] for r in rows)
    ok_rows = [r for r in rows if r["status"] == "ok"]
    words = [r["caption_words"] for r in ok_rows if r["caption_words"]]
    sample = [{"segment": r["id"][:8], "status": r["status"], "event_caption": (r["event_caption"] or "")[:160],
               "error": r["error"] or ""} for r in rows[:8]]
    create_table_artifact(
        key="recaption-samples", table=sample or [{"segment": "-", "status": "-", "event_caption": "", "error": ""}],
        description=f"recaption ({settings.backend}): {status.get('ok', 0)} ok, {status.get('quarantined', 0)} quarantined",
    )
    elapsed = time.perf_counter() - started
    metrics = {
        "stage": STAGE, "backend": settings.backend, "model_id": model_id, "segments": len(items),
        "upstream_quarantined_skipped": skipped, "shards": len(shards), "shards_cached": hits,
        "captions_ok": status.get("ok", 0), "rows_quarantined": status.get("quarantined", 0),
        "quarantine_reasons": quarantine_reasons([r["error"] for r in rows]),
        "mean_caption_words": round(sum(words) / len(words), 1) if words else None,
        "wall_seconds": round(elapsed, 2), "manifest": str(manifest_dir), "config_hash": config_hash,
    }
    write_metrics(cfg, STAGE, metrics)
    return {k: v for k, v in metrics.items() if not isinstance(v, dict)}
