"""Flow `evaluate`: the Yume-Bench-style benchmark of every candidate generator, the report and the promotion gate.

Candidates: the foundation (``checkpoints/foundation/final``) sampled with ``distill.evaluate.euler_steps`` (20)
Euler steps and with the distilled generator's few-step renoise schedule, the distilled generator
(``checkpoints/distill/final``), and the currently promoted generator (``checkpoints/promoted.json``) if any.
Metrics, worlds and the promotion rule: ``yume.tasks.evaluate``.

Outputs under ``<workdir>/reports/evaluate/``: ``metrics.json`` (``candidates.<name>.<metric>``, ``comparisons``,
``promotion``), ``index.html`` (results table, one PNG per metric in ``plots/``, frame strips in ``strips/``),
and a Prefect markdown artifact ``evaluate-report``. ``promotion`` is the rule's decision for
``distill.evaluate.promotion.candidate``; it is applied (``promoted.json`` written) only with ``promote=True``
(what ``retrain`` passes), otherwise it is a preview.
"""

from __future__ import annotations

import logging
import time

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from yume.config import load_profile, stage_hash
from yume.flows.reporting import stage_report_dir, write_metrics
from yume.flows.upstream import require_upstream
from yume.tasks.evaluate import (
    STAGE,
    maybe_promote,
    markdown_report,
    promotion_decision,
    read_promoted,
    run_evaluation,
    write_html,
)
from yume.workdir_lock import locks_workdir

log = logging.getLogger(__name__)
CONFIG_SECTIONS = ("model", "distill", "sampler", "train", "world", "score_and_filter")


@task(name="evaluate-candidates")
def evaluate_task(cfg, foundation: str | None, distilled: str | None, promoted: str | None, report_dir: str) -> dict:
    from pathlib import Path

    return run_evaluation(cfg, foundation, distilled, Path(report_dir), promoted)


@flow(name="evaluate")
@locks_workdir
def evaluate(profile: str = "tiny", workdir: str | None = None, overrides: list[str] | None = None,
             promote: bool = False) -> dict:
    from yume.models.distill_config import evaluate_config
    from yume.play.launch import play_command

    started = time.perf_counter()
    cfg = load_profile(profile, workdir, overrides or [])
    require_upstream("evaluate", cfg)
    ecfg = evaluate_config(cfg)
    ck = cfg.workdir_path / "checkpoints"
    current = read_promoted(cfg)
    report = stage_report_dir(cfg, STAGE)
    metrics = evaluate_task(cfg, str(ck / "foundation" / "final"), str(ck / "distill" / "final"),
                            current["path"] if current else None, str(report))
    plots, strips = metrics.pop("_plots"), metrics.pop("_strips")
    name = ecfg.promotion.candidate
    if promote:
        metrics["promotion"] = {**maybe_promote(cfg, metrics), "applied": True}
    elif name in metrics["candidates"]:
        cur = metrics["candidates"].get("promoted") or (current or {}).get("metrics")
        metrics["promotion"] = {**promotion_decision(metrics["candidates"][name], cur if current else None,
                                                     ecfg.promotion.tolerances), "candidate": name, "applied": False}
    metrics["play"] = play_command(cfg, read_promoted(cfg), ck / "distill" / "final")
    metrics["config_hash"] = stage_hash(cfg, *CONFIG_SECTIONS)
    metrics["wall_seconds"] = round(time.perf_counter() - started, 2)
    write_metrics(cfg, STAGE, metrics)
    html = write_html(metrics, plots, strips, report / "index.html")
    create_markdown_artifact(key="evaluate-report", markdown=markdown_report(metrics),
                             description=f"evaluation of {', '.join(metrics['candidates'])}; report {html}")
    summary = {f"{n}.{k}": r[k] for n, r in metrics["candidates"].items()
               for k in ("joint_accuracy", "if_score", "first_chunk_mse", "latency_ratio_16_over_8", "drift_joint_delta",
                         "quality_score")}
    return {"report": str(html), "promotion": (metrics.get("promotion") or {}).get("promote"), **summary}
