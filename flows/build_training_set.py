"""Flow `build_training_set`: the curated sources -> training mixture (manifests/train) + latent/text cache.

Reads what the curation stages wrote (``manifests/real`` with ``captions``; ``synthetic``; accepted ``events``;
``score_and_filter``'s selection when ``manifests/scores`` exists) plus, when ``training_set.worlds`` is set
(tiny), extra procedural worlds rendered at training resolution and labelled by curate_real's code. Sources
whose manifests do not exist yet are skipped and reported as ``missing``. Per-source mixture weights come
from ``training_set.sources`` (see ``yume.datasets.training_set``).

The cache (``<workdir>/cache/train/<key>``) is keyed by the codec, the text encoder and the sample settings;
one Prefect task per missing latent shard encodes its clips (complete shards, marked, are skipped),
so a re-run with the same inputs encodes nothing and a changed codec, encoder or resolution builds a new
cache beside the old one.
"""

from __future__ import annotations

import logging
import time

from prefect import flow, task
from prefect.artifacts import create_table_artifact

from yume.config import load_profile, stage_hash
from yume.datasets.training_set import collect_training_rows, label_worlds, manifest_digest
from yume.flows.reporting import write_metrics
from yume.tasks.build_training_set import (
    build_cache,
    encode_shard,
    ensure_training_worlds,
    label_counts,
    write_train_manifest,
)
from yume.workdir_lock import locks_workdir
from yume.flows.upstream import require_upstream

log = logging.getLogger(__name__)
STAGE = "build_training_set"
CONFIG_SECTIONS = ("training_set", "actions", "curate_real")


@task(name="render-training-worlds")
def render_worlds_task(profile):
    root = ensure_training_worlds(profile)
    return str(root) if root else None


@task(name="label-training-worlds")
def label_worlds_task(profile, root: str) -> list[dict]:
    from pathlib import Path

    return label_worlds(profile, Path(root))


@task(name="encode-latent-shard")
def encode_shard_task(profile, shard: str, clips: list[dict], encoder_id: str, cache_root: str) -> dict:
    return encode_shard(profile, shard, clips, encoder_id)


@flow(name="build_training_set")
@locks_workdir
def build_training_set(profile: str = "tiny", workdir: str | None = None, overrides: list[str] | None = None) -> dict:
    """Write manifests/train (one shard per source) and the latent + text-embedding cache."""
    from yume.models.text import TextEncoder
    from yume.tasks.build_training_set import cache_layout

    started = time.perf_counter()
    cfg = load_profile(profile, workdir, overrides or [])
    require_upstream("build_training_set", cfg)
    if cfg.model is None:
        raise ValueError("profile has no `model` section")
    worlds_rows = []
    if cfg.training_set.worlds is not None:
        root = render_worlds_task(cfg)
        worlds_rows = label_worlds_task(cfg, root)
    rows, counts = collect_training_rows(cfg, worlds_rows)
    if not rows:
        raise ValueError(f"no training rows from any source ({counts}); run the curation stages first")
    markers = write_train_manifest(cfg, rows)
    cache = None
    if cfg.training_set.cache:
        encoder = TextEncoder.from_config(cfg.model.text)
        layout = cache_layout(cfg, encoder.encoder_id)
        opts = encode_shard_task.with_options(retries=cfg.prefect.task_retries,
                                              retry_delay_seconds=cfg.prefect.retry_delay_seconds)
        cache = build_cache(cfg, rows, encoder,
                            shard_runner=lambda shard, clips: opts(cfg, shard, clips, encoder.encoder_id, str(layout.root)))
    table = label_counts(rows)
    create_table_artifact(key="build-training-set-mixture", table=table,
                          description=f"Training rows by source and action label ({len(rows)} rows)")
    metrics = {
        "stage": STAGE,
        "rows": len(rows),
        "rows_by_source": {k: v for k, v in counts.items()},
        "labels": len({(r['keys'], r['mouse']) for r in rows if r.get("keys")}),
        "data_hash": manifest_digest(rows),
        "manifest_shards_written": sum(1 for m in markers.values() if not m.get("cached")),
        "cache": {k: v for k, v in (cache or {}).items() if k != "codec"},
        "wall_seconds": round(time.perf_counter() - started, 2),
        "config_hash": stage_hash(cfg, *CONFIG_SECTIONS),
    }
    write_metrics(cfg, STAGE, metrics)
    return {k: v for k, v in metrics.items() if not isinstance(v, dict)}
