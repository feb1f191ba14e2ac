"""Flow `distill`: Self-Forcing DMD distillation of the foundation model into a few-step generator.

1. ``prepare_distill_run``: the foundation weights (``distill.foundation``, default
   ``<workdir>/checkpoints/foundation/final``), the run hash (model, foundation digest, distill settings) and the
   checkpoint to resume from (same run hash only).
2. the start pool (first frames of procedural worlds, or cached history windows; ``distill.starts``).
3. ``fit``: Lightning in this process, or Ray Train (``distill.ray.enabled``): ``distill.max_steps`` iterations
   or ``distill.max_minutes``; safetensors checkpoints (``SafeCheckpointIO``). A finished run is not refitted.
4. ``export_generator``: the generator's EMA weights as ``<workdir>/checkpoints/distill/final`` (the foundation's
   ``final`` format: ``WorldSampler.from_checkpoint`` loads it; sample it with the ``renoise`` schedule over
   ``distill.timesteps`` / ``distill.shift``, recorded in its ``yume_model.json``).
5. loss curves (PNG in ``reports/distill`` + a Prefect markdown artifact); ``reports/distill/metrics.json``.

The evaluation of the result against the foundation is the ``evaluate`` flow.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from yume.config import load_profile, stage_hash
from yume.flows.reporting import stage_report_dir, write_metrics
from yume.flows.stage_utils import png_markdown
from yume.tasks.distill import (
    DistillRun,
    distill_curves,
    distill_dir,
    export_generator,
    fit,
    last_checkpoint,
    prepare_distill_run,
)
from yume.workdir_lock import locks_workdir

log = logging.getLogger(__name__)
STAGE = "distill"
CONFIG_SECTIONS = ("model", "distill", "train")


@task(name="fit-distill")
def fit_task(run: DistillRun) -> dict:
    return fit(run)


@flow(name="distill")
@locks_workdir
def distill(profile: str = "tiny", workdir: str | None = None, overrides: list[str] | None = None) -> dict:
    started = time.perf_counter()
    cfg = load_profile(profile, workdir, overrides or [])
    run = prepare_distill_run(cfg)  # checks the foundation first (upstream.require_checkpoints), for any caller
    done = Path(run.run_dir) / "done.json"
    last = last_checkpoint(run.ckpt_dir)
    finished = done.is_file() and last is not None and json.loads(done.read_text()).get("checkpoint") == str(last) \
        and int(json.loads(done.read_text()).get("iterations", 0)) >= cfg.distill.max_steps
    if finished:
        summary = {**json.loads(done.read_text()), "cached": True}
        log.info("distill run %s already finished at iteration %s: not refitting", run.run_hash,
                 summary.get("iterations"))
    else:
        summary = {**fit_task.with_options(retries=0)(run), "cached": False}
    last = last_checkpoint(run.ckpt_dir)
    final = export_generator(last, distill_dir(cfg) / "final")
    report = stage_report_dir(cfg, STAGE)
    curves = distill_curves(run.run_dir, report / "losses.png")
    if (report / "losses.png").is_file():
        create_markdown_artifact(key="distill-losses", markdown=png_markdown(report / "losses.png", "Distillation losses"),
                                 description=f"critic / generator losses, run {run.run_hash}")
    d = cfg.distill
    metrics = {
        "stage": STAGE, "run_hash": run.run_hash, "foundation": run.foundation, "foundation_hash": run.foundation_hash,
        "checkpoint": str(last), "final": str(final), "iterations": summary.get("iterations"),
        "generator_updates": summary.get("generator_updates"), "critic_updates": summary.get("critic_updates"),
        "stopped_by": summary.get("stopped_by"), "train_seconds": summary.get("train_seconds"),
        "fit_cached": summary["cached"], "losses": curves, "timesteps": list(d.timesteps), "shift": d.shift,
        "critic_per_generator": d.critic_per_generator, "config_hash": stage_hash(cfg, *CONFIG_SECTIONS),
        "wall_seconds": round(time.perf_counter() - started, 2),
    }
    write_metrics(cfg, STAGE, metrics)
    return {k: v for k, v in metrics.items() if not isinstance(v, dict)}
