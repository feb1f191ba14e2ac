"""Flow `train_foundation`: rectified-flow training of the world model on the training set, then evaluation.

1. ``prepare_run``: the training manifest + cache written by ``build_training_set``, the data and run hashes,
   the checkpoint to resume from (same run hash only).
2. ``fit``: Lightning in this process, or Ray Train (``train.ray.enabled``); stops at ``train.max_steps`` or
   after ``train.max_minutes`` of training (a resumed run spends only what is left); checkpoints are
   safetensors + JSON (``SafeCheckpointIO``). A run that already finished is not refitted.
3. ``export_final``: the (EMA) weights as ``<workdir>/checkpoints/foundation/final`` (diffusers-format WanDiT +
   ``yume_model.json``), which ``yume generate --checkpoint`` reads.
4. the loss curve (PNG in ``reports/train_foundation`` and a Prefect markdown artifact) and, with
   ``train.eval.enabled``, the instruction-following evaluation on held-out procedural worlds
   (``yume.tasks.foundation_eval``), a few rollouts as mp4.

``reports/train_foundation/metrics.json``: ``train_seconds`` (all attempts), steps, samples/s, tokens/s, and
the evaluation's ``joint_accuracy``, ``if_score``, ``rollout_joint_accuracy``, ``copy_last_joint_accuracy``,
``no_action_joint_accuracy``, ``first_chunk_mse``, ``copy_last_first_chunk_mse``,
``metric_ceiling_joint_accuracy`` (and more; see the evaluation module).
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
from yume.flows.upstream import require_upstream
from yume.tasks.train_foundation import (
    TrainRun,
    export_final,
    fit,
    foundation_dir,
    last_checkpoint,
    loss_curve,
    prepare_run,
)
from yume.workdir_lock import locks_workdir

log = logging.getLogger(__name__)
STAGE = "train_foundation"
CONFIG_SECTIONS = ("model", "train", "training_set", "sampler")


@task(name="fit-foundation")
def fit_task(run: TrainRun) -> dict:
    return fit(run)


@task(name="evaluate-foundation")
def evaluate_task(profile, final_dir: str, report_dir: str) -> dict:
    from yume.models.sampler import WorldSampler, write_mp4
    from yume.tasks.foundation_eval import evaluate

    sampler = WorldSampler.from_checkpoint(final_dir, profile.sampler,
                                           text_cache_dir=profile.workdir_path / "cache" / "text")
    base = base_sampler(profile, sampler.cfg)
    out = evaluate(profile, sampler, base_sampler=base)
    roll, gt = out.pop("_rollouts"), out.pop("_ground_truth")
    samples = Path(report_dir) / "samples"
    for i in range(min(3, len(roll))):
        write_mp4(roll[i], samples / f"rollout-{i}.mp4", sampler.fps)
        write_mp4(gt[i], samples / f"ground_truth-{i}.mp4", sampler.fps)
    return out


def base_sampler(profile, cfg):
    """The pretrained base the run fine-tuned, sampled as the fine-tuned model is (``cfg``), for the
    ``base_joint_accuracy`` ablation; None for random init or a base without our export metadata (Wan2.2)."""
    from yume.models.config import resolve_model_path
    from yume.models.sampler import WorldSampler

    m = profile.model
    if m.dit_init != "pretrained" or not m.dit_pretrained_path:
        return None
    d = resolve_model_path(m.dit_pretrained_path)
    if not (d / "yume_model.json").is_file():
        return None
    return WorldSampler.from_checkpoint(d, cfg, use_recorded=False,
                                        text_cache_dir=profile.workdir_path / "cache" / "text")


def _throughput(profile, run: TrainRun, summary: dict) -> dict:
    """samples/s and tokens/s of the fit from its step count and time."""
    from yume.models.codecs import build_codec
    from yume.models.foundation import tokens_per_sample

    steps = summary.get("global_step") or 0
    secs = summary.get("train_seconds") or summary.get("fit_seconds") or 0
    if not steps or not secs:
        return {}
    t, m = profile.train, profile.model
    workers = t.ray.num_workers if t.ray.enabled else 1
    samples = steps * t.batch_size * workers
    tok = tokens_per_sample(m, t.chunk_frames or m.chunk_frames, t.height, t.width, build_codec(m.codec).spatial_factor)
    return {"samples_per_second": round(samples / secs, 2), "tokens_per_second": round(samples * tok / secs, 1),
            "samples_seen": samples}


@flow(name="train_foundation")
@locks_workdir
def train_foundation(profile: str = "tiny", workdir: str | None = None, overrides: list[str] | None = None) -> dict:
    started = time.perf_counter()
    cfg = load_profile(profile, workdir, overrides or [])
    require_upstream("train_foundation", cfg)
    run = prepare_run(cfg)
    done = Path(run.run_dir) / "done.json"
    last = last_checkpoint(run.ckpt_dir)
    if done.is_file() and last is not None and json.loads(done.read_text()).get("checkpoint") == str(last):
        summary = {**json.loads(done.read_text()), "cached": True}
        log.info("run %s already finished at step %s: not refitting", run.run_hash, summary.get("global_step"))
    else:
        summary = {**fit_task.with_options(retries=0)(run), "cached": False}
    last = last_checkpoint(run.ckpt_dir)
    final = export_final(last, foundation_dir(cfg) / "final", sampler=cfg.sampler.model_dump(mode="json"))
    report = stage_report_dir(cfg, STAGE)
    curve = loss_curve(run.run_dir, report / "loss_curve.png")
    if (report / "loss_curve.png").is_file():
        create_markdown_artifact(key="train-foundation-loss", markdown=png_markdown(report / "loss_curve.png", "Loss curve"),
                                 description=f"foundation training loss, run {run.run_hash}")
    metrics = {
        "stage": STAGE, "run_hash": run.run_hash, "data_hash": run.data_hash, "checkpoint": str(last),
        "final": str(final), "global_step": summary.get("global_step"), "stopped_by": summary.get("stopped_by"),
        "train_seconds": summary.get("train_seconds", summary.get("fit_seconds")), "fit_cached": summary["cached"],
        "loss": curve, "config_hash": stage_hash(cfg, *CONFIG_SECTIONS), **_throughput(cfg, run, summary),
    }
    if cfg.train.eval.enabled:
        metrics.update(evaluate_task(cfg, str(final), str(report)))
    metrics["wall_seconds"] = round(time.perf_counter() - started, 2)
    write_metrics(cfg, STAGE, metrics)
    return {k: v for k, v in metrics.items() if not isinstance(v, dict)}
