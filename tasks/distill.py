"""Running the distillation: in the flow's process, or on Ray Train (TorchTrainer + Lightning), as the foundation.

``prepare_distill_run(profile)`` gathers what a run needs as plain values (``DistillRun``, picklable for Ray
workers): the foundation weights (``distill.foundation`` or ``<workdir>/checkpoints/foundation/final``), the
start pool file (written once per run: ``build_starts``), the run hash and directory and the checkpoint to
resume from. ``fit(run)`` trains ``distill.max_steps`` iterations (or until ``distill.max_minutes``), then
``export_generator`` writes the generator's EMA weights in the foundation's ``final`` format.

Layout under ``<workdir>/checkpoints/distill/``::

    runs/<run_hash>/starts.safetensors          the start pool (histories + text pieces)
    runs/<run_hash>/ckpt/step-0000100.safetensors  SafeCheckpointIO files (step = iteration); last.json
    runs/<run_hash>/logs/csv/attempt-N/metrics.csv and logs/tb/
    final/                                      config.json + safetensors (WanDiT) + yume_model.json

``run_hash`` covers the model config, the foundation weights' digest and the distill settings that shape the
optimisation (not the budget, logging, evaluation or Ray placement): a checkpoint is resumed only by a run
that would have produced it. The machinery (``StepCheckpoint``, loggers, Ray's ScalingConfig/RunConfig,
``RayDDPStrategy`` + ``RayLightningEnvironment`` + ``prepare_trainer``) is the foundation stage's
(``yume.tasks.train_foundation``), reused by import.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from yume.tasks.train_foundation import (StepCheckpoint, _attempt_name, _loggers, _sha, check_export, export_final,
                                         last_checkpoint)

log = logging.getLogger(__name__)
STAGE = "distill"

NON_TRAJECTORY_FIELDS = {"max_steps", "max_minutes", "evaluate", "log_every_n_steps", "checkpoint_every_n_steps",
                         "keep_checkpoints", "resume", "torch_threads", "accelerator", "stage_version", "foundation",
                         "ray"}


@dataclass
class DistillRun:
    profile: dict
    foundation: str
    foundation_hash: str
    run_dir: str
    run_hash: str
    starts_file: str
    resume_from: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def ckpt_dir(self) -> Path:
        return Path(self.run_dir) / "ckpt"

    def load_profile(self):
        from yume.config import Profile

        return Profile.model_validate(self.profile)


def distill_dir(profile) -> Path:
    return profile.workdir_path / "checkpoints" / "distill"


def foundation_path(profile) -> Path:
    """The foundation weights to distill; MissingUpstreamError (named producer, no traceback) if absent."""
    from yume.flows.upstream import foundation_weights, require_checkpoints

    require_checkpoints("distill", profile)
    return foundation_weights(profile)


def weights_digest(path: str | Path) -> str:
    """sha256 over the weight files' names, sizes and first/last MiB (cheap for 5B checkpoints, stable)."""
    p = Path(path)
    files = sorted(p.glob("*.safetensors")) + sorted(p.glob("*.json")) if p.is_dir() else [p]
    h = hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read())
    return h.hexdigest()[:16]


def distill_run_hash(profile, foundation_hash: str) -> str:
    d = profile.distill.model_dump(mode="json", exclude=NON_TRAJECTORY_FIELDS)
    d["workers"] = profile.distill.ray.num_workers if profile.distill.ray.enabled else 1
    return _sha({"model": profile.model.model_dump(mode="json") if profile.model else None, "distill": d,
                 "foundation": foundation_hash, "train_hw": [profile.train.height, profile.train.width]})


def prepare_distill_run(profile) -> DistillRun:
    fpath = foundation_path(profile)
    check_export(fpath, "foundation", "re-export it (`yume flow train_foundation` writes final/ from its run's last "
                 "checkpoint without retraining) or set distill.foundation to a good export")
    fh = weights_digest(fpath)
    rh = distill_run_hash(profile, fh)
    run_dir = distill_dir(profile) / "runs" / rh
    resume = last_checkpoint(run_dir / "ckpt") if profile.distill.resume else None
    return DistillRun(profile=profile.model_dump(mode="json"), foundation=str(fpath), foundation_hash=fh,
                      run_dir=str(run_dir), run_hash=rh, starts_file=str(run_dir / "starts.safetensors"),
                      resume_from=str(resume) if resume else None)


# ------------------------------------------------------------------------------------------ starts


def _render_procedural_starts(profile, n: int):
    """First frames (uint8 [n, H, W, 3]) and event texts of ``n`` procedural worlds of ``distill.starts.seed``."""
    import numpy as np

    from yume.datasets.procedural import ProceduralWorldConfig, render_action_clip

    s, t = profile.distill.starts, profile.train
    base = profile.world or ProceduralWorldConfig()
    cfg = base.model_copy(update={"seed": s.seed, "height": t.height, "width": t.width, "supersample": s.supersample})
    images, events = [], []
    for i in range(n):
        clip = render_action_clip(i, cfg, [("None", "·")], 1)
        images.append(clip.frames[0])
        events.append(clip.world.event.text if clip.world.event else None)
    return np.stack(images), events


def _cache_starts(profile, n: int, frames: int):
    """History windows of ``frames`` latents from the training set's latent cache, with their rows' event texts."""
    import numpy as np
    import torch

    from yume.datasets.foundation_data import FoundationDataset, SampleSettings, TextSource, _nan_to_none
    from yume.tasks.train_foundation import prepare_run, read_train_rows

    run = prepare_run(profile)
    if not run.cache_root:
        raise ValueError("distill.starts.source=cache needs training_set.cache (run build_training_set)")
    rows = read_train_rows(Path(run.manifest_dir))
    ds = FoundationDataset(rows, SampleSettings.from_profile(profile), run.roots, run.cache_root,
                           TextSource(run.cache_root, None, run.action_file), 1, profile.model.dit.text_dim)
    rng = np.random.default_rng([profile.distill.starts.seed, 3])
    hist, events = [], []
    mode = "i2v" if "i2v" in ds.table.modes() else next(iter(ds.table.modes()))
    for _ in range(n):
        r, c = ds.table.draw(rng, mode)
        row = ds.records[r]
        a = max(0, c - frames)
        lat = ds._latents(row["clip_key"], a, c if c > a else a + 1)
        if lat.shape[0] < frames:
            lat = torch.cat([lat[:1].expand(frames - lat.shape[0], *lat.shape[1:]), lat], 0)
        hist.append(lat.permute(1, 0, 2, 3))
        events.append(_nan_to_none(row.get("i2v_text")) or _nan_to_none(row.get("t2v_text")))
    return torch.stack(hist), events


def build_starts(run: DistillRun, sampler=None):
    """Write the run's start pool (histories + action/event embeddings) unless it exists; returns the pool."""
    import torch

    from yume.models.distill import StartPool
    from yume.models.sampler import WorldSampler

    path = Path(run.starts_file)
    if path.is_file():
        return StartPool.load(path)
    profile = run.load_profile()
    s = profile.distill.starts
    sampler = sampler or WorldSampler.from_checkpoint(run.foundation, profile.sampler,
                                                      text_cache_dir=profile.workdir_path / "cache" / "text")
    if s.source == "procedural":
        images, events = _render_procedural_starts(profile, s.count)
        history = sampler.image_history(images).cpu()
    else:
        history, events = _cache_starts(profile, s.count, sampler.still_image_frames)
    cond = sampler.conditioner
    table = cond.actions.load()
    labels = list(table)
    distinct = sorted({e for e in events if e})
    embs = cond.encoder.encode(distinct, cond.cfg.max_length) if distinct else []
    index = torch.tensor([distinct.index(e) if e else -1 for e in events], dtype=torch.long)
    pool = StartPool(history.float(), index, [e.float() for e in embs], labels, [table[k].float() for k in labels],
                     cond.cfg.max_length, cond.cfg.order)
    pool.save(path, {"source": s.source, "count": s.count, "seed": s.seed})
    return pool


# ------------------------------------------------------------------------------------------ module


def build_module(run: DistillRun):
    import lightning as L

    from yume.models.distill import DistillModule, load_foundation

    profile = run.load_profile()
    L.seed_everything(profile.distill.seed, workers=True, verbose=False)
    _, fmeta = load_foundation(run.foundation) if Path(run.foundation).is_file() else (None, json.loads(
        (Path(run.foundation) / "yume_model.json").read_text()))
    meta = {"run_hash": run.run_hash, "foundation_hash": run.foundation_hash, "profile_name": profile.name,
            "encoder_id": fmeta.get("encoder_id")}
    return DistillModule(fmeta["model_config"], fmeta.get("train_config", {}), profile.distill.model_dump(mode="json"),
                         run.foundation, run.starts_file, meta)


class IterationCheckpoint(StepCheckpoint):
    """The foundation's StepCheckpoint keyed on the distillation iteration (Lightning's global_step counts the
    optimiser steps of both optimisers under manual optimisation)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        it = int(pl_module.iteration)
        if it and it % self.every == 0 and (not self.saved or self.saved[-1] != it):
            self.save(trainer, it)

    def on_train_end(self, trainer, pl_module) -> None:
        it = int(pl_module.iteration)
        if not self.saved or self.saved[-1] != it:
            self.save(trainer, it)


def trainer_kwargs(profile, max_seconds: float | None = None) -> dict:
    d = profile.distill
    budget = max_seconds if max_seconds is not None else (d.max_minutes * 60 if d.max_minutes else None)
    kw = dict(max_epochs=1, max_steps=-1, precision=d.precision, log_every_n_steps=d.log_every_n_steps,
              enable_checkpointing=False, use_distributed_sampler=False, num_sanity_val_steps=0,
              enable_model_summary=False, enable_progress_bar=False, limit_val_batches=0)
    if budget:
        kw["max_time"] = {"seconds": float(budget)}
    return kw


def _with_max_steps(run: DistillRun, max_steps: int | None) -> DistillRun:
    if max_steps is None:
        return run
    prof = json.loads(json.dumps(run.profile))
    prof["distill"]["max_steps"] = int(max_steps)
    return DistillRun(**{**asdict(run), "profile": prof})


def fit_local(run: DistillRun, max_steps: int | None = None, max_seconds: float | None = None,
              extra_callbacks: list | None = None) -> dict:
    """Distil in this process (one device)."""
    import lightning as L
    import torch

    from yume.models.checkpoint import SafeCheckpointIO

    run = _with_max_steps(run, max_steps)
    profile = run.load_profile()
    d = profile.distill
    if d.torch_threads:
        torch.set_num_threads(d.torch_threads)
    build_starts(run)
    module = build_module(run)
    ckpt_cb = IterationCheckpoint(run.ckpt_dir, d.checkpoint_every_n_steps, d.keep_checkpoints)
    attempt = _attempt_name(run)
    trainer = L.Trainer(accelerator=d.accelerator, devices=1, logger=_loggers(run, attempt),
                        callbacks=[ckpt_cb] + list(extra_callbacks or []), plugins=[SafeCheckpointIO()],
                        default_root_dir=run.run_dir, **trainer_kwargs(profile, max_seconds))
    started = time.perf_counter()
    trainer.fit(module, ckpt_path=run.resume_from)
    return _finish(run, trainer, module, time.perf_counter() - started, attempt)


def _finish(run: DistillRun, trainer, module, seconds: float, attempt: str, extra: dict | None = None) -> dict:
    last = last_checkpoint(run.ckpt_dir)
    done = Path(run.run_dir) / "done.json"
    before = 0.0
    if run.resume_from and done.is_file():
        before = float(json.loads(done.read_text()).get("train_seconds", 0.0))
    it = int(module.iteration)
    summary = {"iterations": it, "generator_updates": int(module.generator_updates),
               "critic_updates": int(module.critic_updates), "fit_seconds": round(seconds, 2),
               "train_seconds": round(before + seconds, 2), "checkpoint": str(last) if last else None,
               "resumed_from": run.resume_from, "attempt": attempt,
               "stopped_by": "max_steps" if it >= run.load_profile().distill.max_steps else "time_budget",
               **(extra or {})}
    if trainer.is_global_zero:
        done.write_text(json.dumps(summary, indent=1))
    return summary


# ------------------------------------------------------------------------------------------ Ray Train


def _ray_distill_loop(config: dict) -> None:
    """``train_loop_per_worker``: one Lightning Trainer per Ray worker, DDP over Ray's process group."""
    import lightning as L
    import ray.train
    import torch
    from ray.train.lightning import RayDDPStrategy, RayFSDPStrategy, RayLightningEnvironment, prepare_trainer

    from yume.models.checkpoint import SafeCheckpointIO

    run = DistillRun(**config["run"])
    profile = run.load_profile()
    d = profile.distill
    torch.set_num_threads(int(config.get("threads") or d.torch_threads or 1))
    module = build_module(run)
    strategy = RayFSDPStrategy() if d.ray.strategy == "fsdp" else RayDDPStrategy(find_unused_parameters=True)
    ckpt_cb = IterationCheckpoint(run.ckpt_dir, d.checkpoint_every_n_steps, d.keep_checkpoints, ray_report=True)
    rank = ray.train.get_context().get_world_rank()
    trainer = L.Trainer(accelerator="gpu" if d.ray.use_gpu else "cpu", devices="auto", strategy=strategy,
                        plugins=[RayLightningEnvironment(), SafeCheckpointIO()], callbacks=[ckpt_cb],
                        logger=_loggers(run, config["attempt"]) if rank == 0 else False,
                        default_root_dir=run.run_dir, **trainer_kwargs(profile, config.get("max_seconds")))
    trainer = prepare_trainer(trainer)
    resume = run.resume_from
    ray_ckpt = ray.train.get_checkpoint()
    if ray_ckpt is not None:  # a restarted Ray run: Ray's latest checkpoint wins
        local = Path(run.run_dir) / f"ray_resume-rank{rank}.safetensors"
        with ray_ckpt.as_directory() as dd:
            shutil.copy2(Path(dd) / "checkpoint.safetensors", local)
        resume = str(local)
    started = time.perf_counter()
    trainer.fit(module, ckpt_path=resume)
    from yume.models.rank_agreement import gather_and_check, state_digest

    extra = {"rank_exit_steps": gather_and_check(list(module.exit_steps_taken), "the exit steps"),
             "rank_state_digests": gather_and_check(state_digest(module), "the trained state")}
    summary = _finish(run, trainer, module, time.perf_counter() - started, config["attempt"], extra)
    ray.train.report({"done": 1.0, "iteration": summary["iterations"]}, checkpoint=None)


def fit_ray(run: DistillRun, max_steps: int | None = None, max_seconds: float | None = None,
            name: str | None = None) -> dict:
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    run = _with_max_steps(run, max_steps)
    profile = run.load_profile()
    build_starts(run)  # once, on the driver; workers read the file
    r = profile.distill.ray
    if not ray.is_initialized():
        address = profile.ray.address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=profile.ray.log_to_driver)
        else:
            ray.init(num_cpus=profile.ray.num_cpus, include_dashboard=False, log_to_driver=profile.ray.log_to_driver)
    resources = {"CPU": r.cpus_per_worker}
    if r.use_gpu:
        resources["GPU"] = r.gpus_per_worker if r.gpus_per_worker is not None else 1
    scaling = ScalingConfig(num_workers=r.num_workers, use_gpu=r.use_gpu, resources_per_worker=resources,
                            accelerator_type=r.accelerator_type)
    storage = r.storage_path or str(profile.workdir_path / "ray_results")
    run_config = RunConfig(name=name or f"distill-{run.run_hash}", storage_path=storage,
                           checkpoint_config=CheckpointConfig(num_to_keep=profile.distill.keep_checkpoints),
                           failure_config=FailureConfig(max_failures=r.max_failures))
    config = {"run": asdict(run), "attempt": _attempt_name(run), "max_seconds": max_seconds,
              "threads": max(1, int(r.cpus_per_worker))}
    trainer = TorchTrainer(_ray_distill_loop, train_loop_config=config, scaling_config=scaling, run_config=run_config,
                           torch_config=TorchConfig(backend=r.backend or ("nccl" if r.use_gpu else "gloo")))
    started = time.perf_counter()
    result = trainer.fit()
    done = Path(run.run_dir) / "done.json"
    summary = json.loads(done.read_text()) if done.is_file() else {}
    summary.update({"ray_seconds": round(time.perf_counter() - started, 2), "ray_workers": r.num_workers,
                    "ray_checkpoint": result.checkpoint.path if result.checkpoint else None})
    return summary


def fit(run: DistillRun, **kw) -> dict:
    return fit_ray(run, **kw) if run.load_profile().distill.ray.enabled else fit_local(run, **kw)


# ------------------------------------------------------------------------------------------ export


def export_generator(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """The generator's EMA weights in the foundation's ``final`` format (``export_final``), with the few-step
    schedule it was distilled for recorded in ``yume_model.json`` (``sampler``: renoise, timesteps, shift)."""
    out = export_final(checkpoint, out_dir)
    meta_file = out / "yume_model.json"
    meta = json.loads(meta_file.read_text())
    d = meta.get("distill_config", {})
    meta["sampler"] = {"schedule": "renoise", "renoise_timesteps": d.get("timesteps"),
                       "steps": len(d.get("timesteps") or []), "shift": d.get("shift"), "guidance": 1.0}
    tmp = meta_file.with_name(".yume_model.json.tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(meta_file)
    return out


def distilled_sampler_config(profile, base=None):
    """The SamplerConfig of the distilled generator: ``renoise`` over ``distill.timesteps`` / ``distill.shift``."""
    base = base or profile.sampler
    d = profile.distill
    return base.model_copy(update={"schedule": "renoise", "renoise_timesteps": list(d.timesteps), "shift": d.shift,
                                   "guidance": 1.0})


# ------------------------------------------------------------------------------------------ reporting


def distill_curves(run_dir: str | Path, png: str | Path) -> dict:
    """Critic and generator losses against iteration from every attempt's metrics.csv (PNG); summary figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    frames = [pd.read_csv(f) for f in sorted(Path(run_dir, "logs", "csv").glob("attempt-*/metrics.csv"))]
    frames = [f for f in frames if "distill/iteration" in f]
    if not frames:
        return {}
    df = pd.concat(frames)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    out = {}
    for ax, col, label in ((axes[0], "distill/critic_loss", "critic (flow matching)"),
                           (axes[1], "distill/generator_loss", "generator (DMD)")):
        if col not in df:
            continue
        s = df[["distill/iteration", col]].dropna().groupby("distill/iteration")[col].mean()
        if s.empty:
            continue
        ax.plot(s.index, s.values, lw=1)
        ax.set_title(label)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        key = col.split("/")[1]
        out[f"{key}_first"], out[f"{key}_last"] = float(s.iloc[0]), float(s.iloc[-1])
    fig.tight_layout()
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return out


def state_dict_of(run: DistillRun) -> dict:
    """The module state of the run's newest checkpoint (generator ``model.``, ``ema.``, ``fake_score.``)."""
    from yume.models.checkpoint import load_safe

    last = last_checkpoint(run.ckpt_dir)
    if last is None:
        raise FileNotFoundError(f"no checkpoint in {run.ckpt_dir}")
    return load_safe(last)["state_dict"]
