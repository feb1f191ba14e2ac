"""Flow `score_and_filter`: real segments + synthetic + accepted event videos -> scores, composite, top-k (manifests/scores).

Scores every candidate (`yume.tasks.score_and_filter.collect_candidates`) with the configured scorer in a
Ray actor pool (``lite`` on `tiny`, ``vbench`` through its own environment on `yume15`), maps raw scores to
a composite under the versioned policy, ranks each source and keeps its ``top_k`` / ``top_fraction``
(``selection``). Histograms of the composite (all, and per source with the cut-off) are written as PNG to
reports/score_and_filter/ and shown in a Prefect markdown artifact.

Two phases, because selection needs every score: (1) one Prefect task per shard scores its videos on the
pool and caches the raw results under <workdir>/cache/score_and_filter/ (keyed on the videos' ids and
content, frames, scorer and code version: a re-run rescoring nothing); (2) the composite, ranks and
selection are computed over all of them and the manifest shards written (cheap, always redone, identical
bytes when nothing changed).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from rich.progress import Progress

from yume.config import load_profile, stage_hash
from yume.datasets.manifest import read_manifest, write_shard
from yume.datasets.manifest_kinds import SCORES
from yume.flows.reporting import stage_report_dir, write_metrics
from yume.flows.stage_utils import png_markdown, quarantine_reasons, remove_stale_shards, shard_cache_key, split_shards
from yume.tasks.ray_pool import ActorPool
from yume.tasks.score_and_filter import SOURCES, ScoreWorker, collect_candidates, score_rows, scorer_identity
from yume.tasks.scoring import POLICIES, score_histogram_png
from yume.workdir_lock import locks_workdir
from yume.flows.upstream import require_upstream

log = logging.getLogger(__name__)
STAGE = "score_and_filter"
CONFIG_SECTIONS = ("score_and_filter",)
SCORING_SECTIONS = ("scorer", "vbench_dimensions", "vbench_weights", "max_frames", "score_fps", "stage_version")



def _read_cache(path: Path, key: str) -> dict | None:
    try:
        stored = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return stored["results"] if stored.get("cache_key") == key else None


@task(name="score-shard", persist_result=False, cache_policy=NO_CACHE)  # its completion marker is the record
def score_shard(shard: str, items: list[dict], cache_dir: str, pool: ActorPool, cache_key: str) -> dict:
    """Raw scores of one shard's videos (id -> result), cached as JSON next to the run."""
    path = Path(cache_dir) / f"{shard}.json"
    cached = _read_cache(path, cache_key)
    if cached is not None:
        return cached
    runnable = [it for it in items if it.get("video_path")]
    results = dict(zip([it["id"] for it in runnable], pool.map("score", runnable)))
    for it in items:
        results.setdefault(it["id"], {"status": "quarantined", "error": it.get("path_error", "path_escape: ?")})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    tmp.write_text(json.dumps({"cache_key": cache_key, "results": results}))
    tmp.replace(path)
    return results


@flow(name="score_and_filter")
@locks_workdir
def score_and_filter(profile: str = "tiny", workdir: str | None = None, overrides: list[str] | None = None) -> dict:
    """Score, normalise, rank and select; write manifests/scores and the score histograms."""
    started = time.perf_counter()
    cfg = load_profile(profile, workdir, overrides or [])
    require_upstream("score_and_filter", cfg)
    s = cfg.score_and_filter
    policy = POLICIES[s.policy]
    items, missing = collect_candidates(cfg)
    for source in missing:
        log.warning("score_and_filter: no %s manifest yet; that source is skipped", source)

    config_hash = stage_hash(cfg, *CONFIG_SECTIONS)
    scoring = {k: v for k, v in s.model_dump(mode="json").items() if k in SCORING_SECTIONS}
    manifest_dir = cfg.workdir_path / "manifests" / "scores"
    cache_dir = cfg.workdir_path / "cache" / STAGE
    shards = split_shards(items, s.shard_size)
    remove_stale_shards(manifest_dir, set(shards))
    keys = {name: shard_cache_key(STAGE, s.stage_version, json.dumps(scoring, sort_keys=True), cache_dir,
                                  [[it["id"], it["content_hash"], it["video_uri"], it["frame_indices"]] for it in its])
            for name, its in shards.items()}
    results, hits = {}, 0
    settings = s.model_dump(mode="json")  # the vbench interpreter, made absolute here (actors' cwd may differ)
    settings["vbench_python"] = str(Path(s.vbench_python).expanduser().absolute())
    pool = ActorPool(ScoreWorker, s.scorer, settings, s.resources.num_gpus, resources=s.resources, ray_config=cfg.ray)
    with pool, Progress(transient=True) as progress:
        bar = progress.add_task(f"{STAGE}: shards", total=len(shards))
        for name, its in shards.items():
            fresh = _read_cache(cache_dir / f"{name}.json", keys[name]) is not None
            hits += fresh
            task_fn = score_shard.with_options(retries=cfg.prefect.task_retries,
                                               retry_delay_seconds=cfg.prefect.retry_delay_seconds)
            results.update(task_fn(name, its, str(cache_dir), pool, keys[name]))
            progress.advance(bar)

    # Random-init VBench backbones (tiny's vbench_weights: random): the label goes into every row's scorer name,
    # the metrics, the artifacts and the histogram titles.
    scorer_name, label = scorer_identity(s)
    tag = policy.tag + (f", {label}" if label else "")
    common = {"stage": STAGE, "stage_version": s.stage_version, "config_hash": config_hash,
              "scorer": scorer_name, "is_vbench": s.scorer == "vbench", "policy": policy.tag}
    rows = score_rows(items, results, policy, s.selection, common)
    by_id = {r["id"]: r for r in rows}
    for name, its in shards.items():
        write_shard(manifest_dir, name, [by_id[it["id"]] for it in its], SCORES, extra={"cache_key": keys[name]})

    report_dir = stage_report_dir(cfg, STAGE)
    figures = _histograms(rows, report_dir, policy.tag + (f",\n{label}" if label else ""))  # the label on a line of its own
    if figures:
        create_markdown_artifact(
            key="score-and-filter-histograms",
            markdown="\n".join(png_markdown(path, title) for title, path in figures),
            description=f"composite score histograms ({tag}; {'VBench' if policy.is_vbench else 'NOT VBench'})",
        )
    summary = _summary(rows)
    create_table_artifact(key="score-and-filter-selection", table=summary or [{"source": "-"}],
                          description=f"scored, selected and cut-off per source ({tag})")
    table = read_manifest(manifest_dir, SCORES).to_pylist() if shards else []
    status = Counter(r["status"] for r in table)
    elapsed = time.perf_counter() - started
    metrics = {
        "stage": STAGE, "scorer": common["scorer"], "is_vbench": common["is_vbench"], "policy": policy.tag,
        "scores_label": label or "", "vbench_weights": s.vbench_weights if s.scorer == "vbench" else None,
        "candidates": len(items), "sources_missing": missing, "shards": len(shards), "shards_cached": hits,
        "scored_ok": status.get("ok", 0), "rows_quarantined": status.get("quarantined", 0),
        "quarantine_reasons": quarantine_reasons([r["error"] for r in table]),
        "selected": sum(1 for r in table if r["selected"]), "per_source": summary,
        "histograms": [str(p) for _, p in figures], "wall_seconds": round(elapsed, 2), "manifest": str(manifest_dir),
        "config_hash": config_hash,
    }
    write_metrics(cfg, STAGE, metrics)
    return {k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}


def _summary(rows: list[dict]) -> list[dict]:
    out = []
    for source in SOURCES:
        ok = [r for r in rows if r["upstream_kind"] == source and r["status"] == "ok"]
        if not ok and not any(r["upstream_kind"] == source for r in rows):
            continue
        chosen = [r["composite"] for r in ok if r["selected"]]
        out.append({
            "source": source, "scored": len(ok),
            "quarantined": sum(1 for r in rows if r["upstream_kind"] == source and r["status"] != "ok"),
            "selected": len(chosen), "rule": ok[0]["selection_rule"] if ok else "-",
            "cut_off": round(min(chosen), 4) if chosen else None,
            "mean_composite": round(sum(r["composite"] for r in ok) / len(ok), 4) if ok else None,
        })
    return out


def _histograms(rows: list[dict], report_dir: Path, tag: str) -> list[tuple[str, Path]]:
    figures, one_line = [], tag.replace("\n", " ")  # titles of the artifact's images; the PNGs keep the break
    ok = [r for r in rows if r["status"] == "ok"]
    if ok:
        figures.append((f"all sources ({one_line})", score_histogram_png(
            [r["composite"] for r in ok], report_dir / "hist_all.png", title=f"composite score, {tag}")))
    for source in SOURCES:
        part = [r for r in ok if r["upstream_kind"] == source]
        if not part:
            continue
        chosen = [r["composite"] for r in part if r["selected"]]
        cut = min(chosen) if chosen and len(chosen) < len(part) else None
        figures.append((f"{source} ({one_line})", score_histogram_png(
            {r["id"]: r["composite"] for r in part}, report_dir / f"hist_{source}.png",
            title=f"{source}: composite score, {tag}", threshold=cut)))
    return figures
