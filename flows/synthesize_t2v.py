"""Flow `synthesize_t2v`: OpenVid-style captions -> dedup -> seeded sample of N -> Wan T2V videos (manifests/synthetic).

Steps (`yume.tasks.synthesize_t2v`, `yume.tasks.synthesis`): read the caption table (``caption_table``; on
`tiny` a generated table with planted near-duplicates under <workdir>/data/openvid), drop near-duplicate
captions (MiniLM embeddings, cosine >= ``dedup_threshold``), sample ``num_videos`` captions with ``seed``,
then render each with diffusers' `WanPipeline` in a Ray actor pool (model loaded once per actor) and write
H.264 mp4 at ``fps`` (16) under <workdir>/data/synthetic/t2v/. The dedup decisions (kept, dropped with the
caption it duplicates and the similarity, invalid rows) go to reports/synthesize_t2v/dedup.csv and a table
artifact. One Prefect task per shard, cached like every stage; videos whose sidecar matches are reused.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.artifacts import create_table_artifact

from yume.config import load_profile, stage_hash
from yume.datasets.manifest import read_manifest, read_marker, write_shard
from yume.datasets.manifest_kinds import SYNTHETIC
from yume.flows.reporting import stage_report_dir, write_metrics
from yume.flows.stage_utils import quarantine_reasons, remove_stale_shards, run_shards, shard_cache_key, split_shards
from yume.tasks.ray_pool import ActorPool
from yume.tasks.synthesis import PIPELINES, WanWorker, generate_missing, generation_key, item_seed
from yume.tasks.synthesize_t2v import (
    dedup_cached,
    item_id,
    read_caption_table,
    synthetic_row,
    write_tiny_caption_table,
)
from yume.workdir_lock import locks_workdir

log = logging.getLogger(__name__)
STAGE = "synthesize_t2v"
CONFIG_SECTIONS = ("synthesize_t2v",)



def scheduler_name(model_path: Path) -> str | None:
    cfg = model_path / "scheduler" / "scheduler_config.json"
    return json.loads(cfg.read_text()).get("_class_name") if cfg.is_file() else None


@task(name="synthesize-t2v-shard", persist_result=False, cache_policy=NO_CACHE)  # its completion marker is the record
def synthesize_t2v_shard(shard: str, items: list[dict], manifest_dir: str, pool: ActorPool, common: dict,
                         cache_key: str) -> dict:
    """Render one shard's videos (reusing finished ones) and write the shard atomically."""
    marker = read_marker(Path(manifest_dir), shard)
    if marker is not None and marker.get("cache_key") == cache_key:
        return {**marker, "resumed": True}
    results, generated = generate_missing(items, pool)
    rows = [synthetic_row(it, results[it["id"]], common) for it in items]
    return write_shard(Path(manifest_dir), shard, rows, SYNTHETIC,
                       extra={"cache_key": cache_key, "generated": generated, "reused": len(items) - generated})


@flow(name="synthesize_t2v")
@locks_workdir
def synthesize_t2v(profile: str = "tiny", workdir: str | None = None, overrides: list[str] | None = None) -> dict:
    """Dedup and sample captions, render them with Wan T2V on Ray actors, write manifests/synthetic."""
    from yume.tasks.dedup import sample_captions
    from yume.tasks.tiny_models import model_fingerprint, resolve_model

    started = time.perf_counter()
    cfg = load_profile(profile, workdir, overrides or [])
    s = cfg.synthesize_t2v
    media = cfg.media_root()
    planted = {}
    if s.caption_table:
        table_path = Path(s.caption_table).expanduser().resolve()
    else:
        table_path = media / "openvid" / "captions.csv"
        planted = write_tiny_caption_table(table_path, s.tiny_table_rows)
    table_uri = table_path.name  # the source URI, relative to the table's directory (its data root)
    keys, captions, invalid = read_caption_table(table_path, s.id_column, s.caption_column)
    report_dir = stage_report_dir(cfg, STAGE)
    keep, dropped = dedup_cached(keys, captions, s.dedup_threshold, report_dir / "dedup_cache.json")
    _write_dedup_report(report_dir / "dedup.csv", keys, keep, dropped, invalid)
    sampled = sample_captions(keep, s.num_videos, s.seed)
    caption_of = dict(zip(keys, captions))

    model_path = resolve_model(s.model, cfg.workdir_path, "synthesize_t2v.model")
    model_fp = model_fingerprint(model_path)
    model_id = s.model_id or (s.model if s.model.startswith("tiny:") else model_path.name)
    sampler = s.sampler.model_dump(mode="json")
    sampler_record = {**sampler, "scheduler": scheduler_name(model_path), "fps": s.fps, "crf": s.crf,
                      "torch_dtype": s.torch_dtype}
    items = []
    for key in sampled:
        rid, seed = item_id(table_uri, key), item_seed(s.seed, key)
        video_uri = f"synthetic/t2v/{rid}.mp4"
        items.append({
            "id": rid, "key": key, "source_uri": table_uri, "prompt": caption_of[key], "seed": seed,
            "video_uri": video_uri, "out_path": str(media / video_uri),
            "generation_key": generation_key(model_fp, sampler, caption_of[key], seed, s.fps, s.crf),
        })
    items.sort(key=lambda it: it["id"])

    config_hash = stage_hash(cfg, *CONFIG_SECTIONS)
    common = {"stage": STAGE, "stage_version": s.stage_version, "config_hash": config_hash, "model_id": model_id,
              "pipeline": PIPELINES["t2v"], "sampler": json.dumps(sampler_record, sort_keys=True),
              "sample_seed": s.seed, "dedup_threshold": s.dedup_threshold}
    manifest_dir = cfg.workdir_path / "manifests" / "synthetic"
    shards = split_shards(items, s.shard_size)
    remove_stale_shards(manifest_dir, set(shards))
    keys_by_shard = {name: shard_cache_key(STAGE, s.stage_version, config_hash, manifest_dir,
                                           [model_fp, str(media)] + [it["generation_key"] + it["id"] for it in its])
                     for name, its in shards.items()}
    pool = ActorPool(WanWorker, "t2v", str(model_path), sampler, s.torch_dtype, s.resources.num_gpus, s.fps, s.crf,
                     resources=s.resources, ray_config=cfg.ray)
    with pool:
        markers, hits = run_shards(
            STAGE, synthesize_t2v_shard, shards, keys_by_shard, manifest_dir, cfg,
            lambda task_fn, name, its, key: task_fn(name, its, str(manifest_dir), pool, common, key),
        )

    rows = read_manifest(manifest_dir, SYNTHETIC).to_pylist() if shards else []
    status = Counter(r["status"] for r in rows)
    create_table_artifact(
        key="synthesize-t2v-dedup",
        table=[{"dropped": d, "duplicate_of": o, "similarity": round(sim, 4),
                "caption": caption_of[d][:120]} for d, o, sim in dropped] or [{"dropped": "-", "duplicate_of": "-",
                                                                               "similarity": 0, "caption": ""}],
        description=f"{len(keys)} captions, {len(dropped)} near-duplicates dropped (cosine >= {s.dedup_threshold}), "
                    f"{len(invalid)} invalid rows, {len(sampled)} sampled (seed {s.seed})",
    )
    elapsed = time.perf_counter() - started
    metrics = {
        "stage": STAGE, "caption_table": str(table_path), "captions": len(keys), "invalid_rows": len(invalid),
        "dedup_dropped": len(dropped), "dedup_kept": len(keep), "planted_duplicates": len(planted),
        "planted_duplicates_removed": sum(k in {d for d, _, _ in dropped} for k in planted),
        "sampled": len(sampled), "shards": len(shards), "shards_cached": hits,
        "generated": sum(m.get("generated", 0) for m in markers if not m["cached"]),
        "videos_ok": status.get("ok", 0), "rows_quarantined": status.get("quarantined", 0),
        "quarantine_reasons": quarantine_reasons([r["error"] for r in rows]), "model_id": model_id,
        "wall_seconds": round(elapsed, 2), "manifest": str(manifest_dir), "config_hash": config_hash,
    }
    write_metrics(cfg, STAGE, metrics)
    return {k: v for k, v in metrics.items() if not isinstance(v, dict)}


def _write_dedup_report(path: Path, keys: list[str], keep: list[str], dropped: list, invalid: list[dict]) -> None:
    import pandas as pd

    dup = {d: (o, sim) for d, o, sim in dropped}
    kept = set(keep)
    rows = [{"key": k, "decision": "kept" if k in kept else "duplicate", "duplicate_of": dup.get(k, (None,))[0],
             "similarity": dup.get(k, (None, None))[1]} for k in keys]
    rows += [{"key": r["key"], "decision": r["reason"], "duplicate_of": None, "similarity": None} for r in invalid]
    tmp = path.with_name(f".tmp-{path.name}")
    pd.DataFrame(rows, columns=["key", "decision", "duplicate_of", "similarity"]).to_csv(tmp, index=False)
    tmp.replace(path)
