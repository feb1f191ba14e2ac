"""Flow `pretrain_base` (tiny only, run once): the shipped base that `train_foundation` fine-tunes.

1. ``build-pretraining-set``: render and label the pretraining worlds (``pretrain_base.worlds``), write their
   train manifest and latent/text cache under ``<workdir>/pretrain_base`` (captions with motion words).
2. ``fit-base``: ``FoundationModule`` on them (action sentences off), to ``pretrain_base.train.max_steps``;
   safetensors checkpoints every ``checkpoint_every_n_steps``, so a killed run resumes where it stopped.
3. ``export-base``: the EMA weights in diffusers format at ``pretrain_base.out`` (default
   ``model.dit_pretrained_path``), the learning curve over the EMA snapshots, the model card.

``yume pretrain-base`` runs it; ``--export-only`` skips training and exports the newest checkpoint (a run in
progress can ship its current weights with a card that says how far it got). Figures:
``<workdir>/pretrain_base/reports/pretrain_base/metrics.json``. See ``yume.tasks.pretrain_base``.
"""

from __future__ import annotations

import logging
import time

from prefect import flow, task

from yume.config import load_profile
from yume.flows.reporting import write_metrics
from yume.tasks.pretrain_base import (
    STAGE,
    base_out_dir,
    build_pretraining_set,
    export_base,
    fit_base,
    learning_curve,
    pretrain_profile,
    run_summary,
    write_card,
)
from yume.workdir_lock import locks_workdir

log = logging.getLogger(__name__)


@task(name="build-pretraining-set", persist_result=False)
def build_task(pp, pb) -> dict:
    return build_pretraining_set(pp, pb)


@task(name="fit-base", persist_result=False)
def fit_task(pp, pb, build: dict) -> tuple:
    return fit_base(pp, pb, build)


@task(name="export-base", persist_result=False)
def export_task(profile, pp, run, summary: dict, build: dict) -> dict:
    out = export_base(pp, run, base_out_dir(profile))
    curve = learning_curve(pp, run.run_dir)
    card = write_card(out, pp, profile, run, summary, build, curve)
    return {"out": str(out), "weights_sha256": card["weights_sha256"], "steps": card["training"]["steps"],
            "complete": card["training"]["complete"], "curve_last": card["learning_curve"]["last"]}


@flow(name="pretrain_base")
@locks_workdir
def pretrain_base(profile: str = "tiny", workdir: str | None = None, overrides: list[str] | None = None,
                  export_only: bool = False) -> dict:
    started = time.perf_counter()
    cfg = load_profile(profile, workdir, overrides or [])
    pp = pretrain_profile(cfg)
    build = build_task(pp, cfg.pretrain_base)
    if export_only:
        from yume.tasks.train_foundation import prepare_run

        run = prepare_run(pp, build["encoder_id"])
        summary = run_summary(run)
    else:
        run, summary = fit_task(pp, cfg.pretrain_base, build)
    exported = export_task(cfg, pp, run, summary, build)
    metrics = {"stage": STAGE, "run_hash": run.run_hash, **{k: v for k, v in summary.items() if k != "checkpoint"},
               **exported, "build": build, "wall_seconds": round(time.perf_counter() - started, 2)}
    write_metrics(pp, STAGE, metrics)
    return {k: v for k, v in metrics.items() if not isinstance(v, dict)}
