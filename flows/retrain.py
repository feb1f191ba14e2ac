"""Parent flow `retrain`: every stage flow in dependency order (DESIGN.md, "The DAG"), each skipped when nothing
it depends on changed.

Stages: curate_real, recaption, synthesize_t2v, synthesize_events, score_and_filter, build_training_set,
train_foundation, distill, evaluate. Each is a subflow that reads upstream manifests (or checkpoints) from the
work directory, so any stage can also be re-run alone. `yume demo` runs this flow on `tiny`.

The evaluation gate: the last stage runs ``evaluate`` with ``promote=True``, so the distilled generator is
promoted (``checkpoints/promoted.json``) only if no metric regresses beyond its tolerance against the promoted
one (``distill.evaluate.promotion``); the decision is in the run's result (``promotion``).

Stage cache. Every stage runs inside a Prefect task whose cache key (``cache_key_fn``) covers

- the stage's name and code version (`yume.versioning.code_version`: its ``stage_version`` + a hash of the
  package source),
- the config sections its output depends on (`yume.config.stage_hash`; ``ray`` / ``prefect`` are not among
  them, so moving to a cluster does not invalidate anything),
- the content of what it reads: upstream manifests by the sha256 of their complete shards, caches and data
  roots by file names, sizes and mtimes, tables and model directories it is configured with,
- the work directory.

The task's result (the stage's summary, its output digest and counts; JSON, never pickle) is persisted in
``prefect.result_storage`` (default ``<workdir>/cache/prefect``; any fsspec URL such as ``s3://`` for a
cluster), so a second run with nothing changed finds every key and runs no stage. A hit is honoured only while
the stage's outputs (its manifest, and files it owns such as rendered videos or the reviewers' decisions file)
still have the digest recorded when it ran: a deleted manifest or an edited decisions file reruns the stage,
and since a rerun that changes its manifest changes every downstream key, exactly the stage and its downstream
rerun. A stage killed mid-way left no result, so the next run reruns it; its completed shards are skipped by
the stage's own shard cache (resume).

The run summary (per stage: items in, ok, quarantined, wall time, cache hit) is a Prefect table artifact
``retrain-summary`` and ``<workdir>/reports/retrain/summary.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from yume.config import Profile, config_hash, load_profile, record_config, stage_hash
from yume.flows.build_training_set import build_training_set
from yume.flows.curate_real import curate_real
from yume.flows.distill import distill
from yume.flows.evaluate import evaluate
from yume.flows.recaption import recaption
from yume.flows.reporting import write_metrics
from yume.flows.score_and_filter import score_and_filter
from yume.flows.stage_utils import path_digest, status_counts
from yume.flows.synthesize_events import synthesize_events
from yume.flows.synthesize_t2v import synthesize_t2v
from yume.flows.train_foundation import train_foundation
from yume.versioning import code_version
from yume.workdir_lock import locks_workdir
from yume.tasks.preflight import require_preflight

log = logging.getLogger(__name__)


def _local_dir(value: str | None) -> str | None:
    """A configured model/table path when it is a local one (``tiny:`` models are built from config)."""
    return None if not value or value.startswith("tiny:") else str(Path(value).expanduser())


@dataclass(frozen=True)
class Stage:
    """One stage of the DAG: its flow and what its cache key and output check cover (paths are relative to
    the work directory unless a function of the profile returns absolute ones)."""

    name: str
    flow: Callable[..., dict]
    sections: tuple[str, ...]  # config sections the stage's output depends on
    reads: tuple[str, ...] = ()  # upstream manifests / caches
    writes: tuple[str, ...] = ()  # outputs checked on a cache hit (a deleted or edited one reruns the stage)
    items_in: str | None = None  # key of the stage's summary that counts its input items
    manifest: str | None = None  # the stage's own manifest (ok / quarantined counts)
    version_section: str | None = None  # (dotted) config section holding its ``stage_version`` (default: its name)
    extra_reads: Callable[[Profile], dict] = field(default=lambda cfg: {})  # name -> absolute path (content-hashed)
    extra_writes: Callable[[Profile], dict] = field(default=lambda cfg: {})

    def __iter__(self):  # `for name, flow_fn in STAGES` keeps working
        return iter((self.name, self.flow))


def _curate_reads(cfg: Profile) -> dict:
    return {"sekai_root": cfg.data.sekai_root and str(cfg.sekai_root())}


def _curate_writes(cfg: Profile) -> dict:
    # Procedural worlds are rendered by the stage itself (keyed by the `world` section): an output.
    return {} if cfg.data.sekai_root else {"worlds": str(cfg.sekai_root())}


def _recaption_reads(cfg: Profile) -> dict:
    r = cfg.recaption
    return {"sekai_root": str(cfg.sekai_root()), "model": _local_dir(r.model) if r.backend == "internvl" else None}


def _t2v_reads(cfg: Profile) -> dict:
    s = cfg.synthesize_t2v
    return {"caption_table": s.caption_table and str(Path(s.caption_table).expanduser()), "model": _local_dir(s.model)}


def _events_reads(cfg: Profile) -> dict:
    s = cfg.synthesize_events
    return {"prompts_table": s.prompts_table and str(Path(s.prompts_table).expanduser()),
            "sekai_root": None if s.prompts_table else str(cfg.sekai_root()), "model": _local_dir(s.model)}


def _events_writes(cfg: Profile) -> dict:
    # Reviewers edit the decisions file and re-run: an edit changes this output's digest and reruns the stage.
    s = cfg.synthesize_events
    return {"decisions": str(Path(s.decisions).expanduser()) if s.decisions
            else str(cfg.workdir_path / "review" / "events" / "decisions.csv")}


def evaluate_and_gate(profile: str = "tiny", workdir: str | None = None, overrides: list[str] | None = None) -> dict:
    """The retrain DAG's last stage: ``evaluate`` with the promotion rule applied."""
    return evaluate(profile=profile, workdir=workdir, overrides=overrides, promote=True)


def _evaluate_writes(cfg: Profile) -> dict:
    # The promotion record is the gate's output: an edited or deleted record re-runs the evaluation.
    return {"promoted": str(cfg.workdir_path / "checkpoints" / "promoted.json")}


STAGES: list[Stage] = [
    Stage("curate_real", curate_real, ("data", "world", "actions", "curate_real"),
          writes=("manifests/real",), items_in="clips", manifest="manifests/real",
          extra_reads=_curate_reads, extra_writes=_curate_writes),
    Stage("recaption", recaption, ("data", "recaption"), reads=("manifests/real",),
          writes=("manifests/captions",), items_in="segments", manifest="manifests/captions",
          extra_reads=_recaption_reads),
    Stage("synthesize_t2v", synthesize_t2v, ("synthesize_t2v",),
          writes=("manifests/synthetic", "data/synthetic", "data/openvid"), items_in="captions",
          manifest="manifests/synthetic", extra_reads=_t2v_reads),
    Stage("synthesize_events", synthesize_events, ("data", "world", "synthesize_events"),
          writes=("manifests/events", "data/events"), items_in="items", manifest="manifests/events",
          extra_reads=_events_reads, extra_writes=_events_writes),
    Stage("score_and_filter", score_and_filter, ("score_and_filter",),
          reads=("manifests/real", "manifests/synthetic", "manifests/events"),
          writes=("manifests/scores",), items_in="candidates", manifest="manifests/scores"),
    Stage("build_training_set", build_training_set, ("training_set", "actions", "curate_real", "model", "world"),
          reads=("manifests/real", "manifests/captions", "manifests/synthetic", "manifests/events", "manifests/scores"),
          writes=("manifests/train", "cache/train", "data/train_worlds"), items_in="rows", manifest="manifests/train",
          version_section="training_set"),
    Stage("train_foundation", train_foundation, ("model", "train", "training_set", "sampler"),
          # The latent/text cache is derived from manifests/train + the training_set and model sections (both in
          # the key); it is not read as an input because build_training_set rewrites its run report on every run.
          reads=("manifests/train",), writes=("checkpoints/foundation",), items_in="samples_seen",
          version_section="train"),
    Stage("distill", distill, ("model", "train", "distill"), reads=("checkpoints/foundation/final",),
          writes=("checkpoints/distill",), items_in="iterations"),
    # The evaluation's settings live in distill.evaluate (its key covers the whole distill section).
    Stage("evaluate", evaluate_and_gate, ("model", "distill", "sampler", "train", "world", "score_and_filter"),
          reads=("checkpoints/foundation/final", "checkpoints/distill/final"), writes=("reports/evaluate",),
          version_section="distill.evaluate", extra_writes=_evaluate_writes),
]
STAGE_BY_NAME = {s.name: s for s in STAGES}
SUMMARY_COLUMNS = ("stage", "items_in", "ok", "quarantined", "wall_seconds", "cache_hit", "note")


def _stage_version(cfg: Profile, stage: Stage) -> str:
    section = cfg
    for part in (stage.version_section or stage.name).split("."):  # dotted: a nested section (distill.evaluate)
        section = getattr(section, part, None)
    return str(getattr(section, "stage_version", "1"))


def stage_inputs(cfg: Profile, stage: Stage) -> dict:
    """Everything the stage's cache key covers, as data (logged and stored with the result)."""
    work = cfg.workdir_path
    reads = {rel: path_digest(work / rel) for rel in stage.reads}
    # Configured files (tables) by content; directories (data roots, model weights) by names, sizes and mtimes.
    reads.update({name: path_digest(Path(p), content=Path(p).is_file())
                  for name, p in stage.extra_reads(cfg).items() if p})
    return {
        "stage": stage.name,
        "code_version": code_version(_stage_version(cfg, stage)),
        "config": stage_hash(cfg, *stage.sections),
        "workdir": str(work),
        "reads": reads,
    }


def stage_outputs(cfg: Profile, stage: Stage) -> dict:
    work = cfg.workdir_path
    out = {rel: path_digest(work / rel) for rel in stage.writes}
    out.update({name: path_digest(Path(p), content=Path(p).is_file())
                for name, p in stage.extra_writes(cfg).items() if p})
    return out


def stage_cache_key(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:40]


def _cache_key_fn(context, parameters) -> str:
    return parameters["cache_key"]


@task(name="stage", cache_key_fn=_cache_key_fn, persist_result=True, result_serializer="json",
      cache_result_in_memory=False)
def run_stage(name: str, profile: str, workdir: str, overrides: list[str], cache_key: str, inputs: dict) -> dict:
    """Run one stage flow; the result (persisted under its cache key) records what it produced."""
    stage = STAGE_BY_NAME[name]
    t0 = time.perf_counter()
    summary = stage.flow(profile=profile, workdir=workdir, overrides=overrides)
    cfg = load_profile(profile, workdir, overrides)
    counts = status_counts(cfg.workdir_path / stage.manifest) if stage.manifest else {}
    return {
        "stage": name, "summary": summary, "inputs": inputs, "outputs": stage_outputs(cfg, stage),
        "items_in": summary.get(stage.items_in) if stage.items_in else None,
        "ok": counts.get("ok") if stage.manifest else None,
        "quarantined": counts.get("quarantined", 0) if stage.manifest else None,
        "run_seconds": round(time.perf_counter() - t0, 2), "cache_key": cache_key,
    }


def result_storage(cfg: Profile):
    """Where the stage records persist: a local directory (a Path) or a saved Prefect filesystem block."""
    spec = cfg.prefect.result_storage
    if spec is None:
        path = cfg.workdir_path / "cache" / "prefect"
    elif spec.startswith("block:"):
        from prefect.filesystems import WritableFileSystem

        return WritableFileSystem.load(spec[len("block:"):])
    elif "://" in spec and not spec.startswith("file://"):
        from prefect.filesystems import RemoteFileSystem

        # Saved server-side (Prefect requires it for task result storage); credentials come from the environment
        # (AWS_*, GOOGLE_APPLICATION_CREDENTIALS, ...) as fsspec reads them, never from the profile.
        block = RemoteFileSystem(basepath=spec.rstrip("/"))
        block.save(f"yume-results-{hashlib.sha256(spec.encode()).hexdigest()[:10]}", overwrite=True)
        return block
    else:
        path = Path(spec.removeprefix("file://")).expanduser()
    path = path.resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _note(name: str, summary: dict) -> str:
    keys = {"train_foundation": ("global_step", "stopped_by"), "score_and_filter": ("selected",),
            "synthesize_events": ("accepted", "rejected", "pending"), "build_training_set": ("rows",),
            "distill": ("iterations", "stopped_by"), "evaluate": ("promotion",)}.get(name, ())
    return ", ".join(f"{k}={summary[k]}" for k in keys if summary.get(k) is not None)


def run_stage_cached(stage: Stage, cfg: Profile, profile: str, overrides: list[str], storage) -> dict:
    """Run ``stage`` unless a persisted result with the same key exists and its outputs are intact."""
    t0 = time.perf_counter()
    inputs = stage_inputs(cfg, stage)
    key = stage_cache_key(inputs)
    task_fn = run_stage.with_options(name=f"stage-{stage.name}", task_run_name=stage.name, result_storage=storage,
                                     retries=0)
    args = (stage.name, profile, str(cfg.workdir_path), overrides, key, inputs)
    state = task_fn(*args, return_state=True)
    record = state.result()
    hit = state.name == "Cached"
    if hit:
        now = stage_outputs(cfg, stage)
        if now != record["outputs"]:
            changed = sorted(k for k in now if now[k] != record["outputs"].get(k))
            log.info("retrain: %s has a cached result but its outputs changed (%s): running it", stage.name, changed)
            state = task_fn.with_options(refresh_cache=True)(*args, return_state=True)
            record, hit = state.result(), False
    log.info("retrain: %s %s (key %s)", stage.name, "cache hit" if hit else "ran", key[:12])
    return {**record, "cache_hit": hit, "wall_seconds": round(time.perf_counter() - t0, 2)}


@flow(name="retrain")
@locks_workdir
def retrain(profile: str = "tiny", workdir: str | None = None, overrides: list[str] | None = None) -> dict:
    """Every stage in DAG order, each skipped (cache hit) when its inputs, config and code are unchanged."""
    started = time.perf_counter()
    overrides = list(overrides or [])
    cfg = load_profile(profile, workdir, overrides)
    require_preflight(cfg)  # every model, data root and service first: a missing VAE fails here, not at stage 6
    record_config(cfg, cfg.workdir_path)
    storage = result_storage(cfg)
    records = {stage.name: run_stage_cached(stage, cfg, profile, overrides, storage) for stage in STAGES}

    rows = [{"stage": name, "items_in": r["items_in"], "ok": r["ok"], "quarantined": r["quarantined"],
             "wall_seconds": r["wall_seconds"], "cache_hit": r["cache_hit"], "note": _note(name, r["summary"])}
            for name, r in records.items()]
    hits = sum(r["cache_hit"] for r in rows)
    wall = round(time.perf_counter() - started, 2)
    create_table_artifact(key="retrain-summary", table=rows,
                          description=f"retrain {cfg.name}: {hits}/{len(rows)} stages cached, {wall} s")
    lines = ["| " + " | ".join(SUMMARY_COLUMNS) + " |", "|" + "---|" * len(SUMMARY_COLUMNS)]
    lines += ["| " + " | ".join("-" if r[c] is None else str(r[c]) for c in SUMMARY_COLUMNS) + " |" for r in rows]
    create_markdown_artifact(key="retrain-summary-md", markdown="\n".join(lines),
                             description="retrain run summary (per stage)")
    result = {
        "profile": cfg.name,
        "workdir": str(cfg.workdir_path),
        "config_hash": config_hash(cfg),
        "cache_hits": hits,
        "stages_run": [r["stage"] for r in rows if not r["cache_hit"]],
        "promotion": records["evaluate"]["summary"].get("promotion"),  # the gate: was the new generator promoted
        "summary": rows,
        "stages": {name: {**r["summary"], "stage_seconds": r["wall_seconds"], "cache_hit": r["cache_hit"]}
                   for name, r in records.items()},
        "wall_seconds": wall,
    }
    write_metrics(cfg, "retrain", {k: v for k, v in result.items() if k != "stages"})
    return result
