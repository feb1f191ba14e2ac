"""Running foundation training: in the flow's process, or on Ray Train (TorchTrainer + Lightning).

``prepare_run(profile)`` gathers what a run needs as plain values (``TrainRun``: picklable for Ray workers):
the training manifest, the cache location, the data and run hashes, the run directory and the checkpoint
to resume from. ``fit(run)`` trains to ``train.max_steps`` or the wall-time budget ``train.max_minutes``
(Lightning's timer; its elapsed time is part of the checkpoint, so a resumed run spends only what is left),
then ``export_final`` writes the (EMA) weights as a diffusers-format directory.

Layout under ``<workdir>/checkpoints/foundation/``::

    runs/<run_hash>/ckpt/step-0000200.safetensors   SafeCheckpointIO files (no pickle); last.json points at
                                                     the newest; ``done.json`` once a fit has finished
    runs/<run_hash>/logs/csv/attempt-N/metrics.csv   CSV log per attempt (a resumed run adds an attempt)
    runs/<run_hash>/logs/tb/                         TensorBoard
    final/                                           config.json + safetensors (WanDiT) + yume_model.json

``run_hash`` covers the model config, the settings that shape the optimisation (not the budget, logging or
evaluation) and the data hash: a checkpoint is resumed only by a run that would have produced it.

Ray Train: ``ScalingConfig`` from ``train.ray`` (workers, CPUs/GPUs per worker, ``accelerator_type``),
``RayDDPStrategy`` (or ``RayFSDPStrategy``) with ``RayLightningEnvironment``, ``prepare_trainer``; the gloo
backend on CPU. ``StepCheckpoint`` saves every ``checkpoint_every_n_steps`` and, under Ray, reports the
checkpoint to Ray (Ray's own callback reports only at epoch ends). A restarted Ray run (same name and
storage) resumes from Ray's latest checkpoint, else from ours.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)
STAGE = "train_foundation"

# TrainConfig fields that do not change what the optimisation computes (excluded from the run hash).
# ``devices`` and ``strategy`` do change it, through the world size, which the hash records as ``ray.num_workers``.
NON_TRAJECTORY_FIELDS = {"max_steps", "max_minutes", "eval", "log_every_n_steps", "checkpoint_every_n_steps",
                         "keep_checkpoints", "resume", "num_workers", "torch_threads", "accelerator", "stage_version",
                         "devices", "strategy", "progress_every_n_steps"}


@dataclass
class TrainRun:
    profile: dict  # the resolved profile (JSON)
    manifest_dir: str
    cache_root: str | None
    roots: dict[str, str]
    run_dir: str
    run_hash: str
    data_hash: str
    encoder_id: str
    action_file: str | None
    resume_from: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def ckpt_dir(self) -> Path:
        return Path(self.run_dir) / "ckpt"

    def load_profile(self):
        from yume.config import Profile

        return Profile.model_validate(self.profile)


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_hash(profile, data_hash: str) -> str:
    t = profile.train.model_dump(mode="json", exclude=NON_TRAJECTORY_FIELDS)
    t["ray"] = {"num_workers": profile.train.ray.num_workers if profile.train.ray.enabled else profile.train.devices}
    return _sha({"model": profile.model.model_dump(mode="json"), "train": t, "data": data_hash})


def foundation_dir(profile) -> Path:
    return profile.workdir_path / "checkpoints" / "foundation"


def read_train_rows(manifest_dir: Path):
    from yume.datasets.manifest import read_manifest
    from yume.datasets.training_set import TRAIN

    df = read_manifest(manifest_dir, TRAIN).to_pandas()
    return df[df.status == "ok"].reset_index(drop=True)


STEP_FILE = re.compile(r"step-\d{7}\.safetensors")


def last_checkpoint(ckpt_dir: Path) -> Path | None:
    """The checkpoint to resume from: the one ``last.json`` names, else the newest step file that reads.

    A pointer naming anything but a step file of this directory (``../x``: path_escape) is ignored, and a
    truncated or unreadable checkpoint is skipped for the one before it (``StepCheckpoint`` keeps two), each
    with a warning. None when no readable checkpoint exists (training starts from step 0).
    """
    from yume.models.checkpoint import checkpoint_problem

    ckpt_dir = Path(ckpt_dir)
    candidates = []
    pointer = ckpt_dir / "last.json"
    if pointer.is_file():
        try:
            name = str(json.loads(pointer.read_text())["file"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("%s is unreadable (%s): resuming from the newest readable step file", pointer, e)
            name = None
        if name is not None and not STEP_FILE.fullmatch(name):
            log.warning("%s names %r, which is not a step checkpoint of %s (path_escape): ignored", pointer, name,
                        ckpt_dir)
            name = None
        if name is not None:
            candidates.append(ckpt_dir / name)
    candidates += sorted((p for p in ckpt_dir.glob("step-*.safetensors") if STEP_FILE.fullmatch(p.name)), reverse=True)
    tried = set()
    for path in candidates:
        if path in tried or not path.is_file():
            continue
        tried.add(path)
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        log.warning("checkpoint %s is unreadable (%s): trying the one before it", path, problem)
    return None


def prepare_run(profile, text_encoder_id: str | None = None) -> TrainRun:
    """Everything a fit needs, as plain values. Raises if the training set is missing (run build_training_set)."""
    from yume.datasets.training_set import CacheLayout, cache_key, manifest_digest
    from yume.models.text import ActionEmbeddingCache, TextEncoder

    if profile.model is None:
        raise ValueError("profile has no `model` section")
    manifest_dir = profile.workdir_path / "manifests" / "train"
    rows = read_train_rows(manifest_dir)
    if rows.empty:
        raise ValueError(f"{manifest_dir} has no ok rows: run build_training_set first")
    data_hash = manifest_digest(rows.to_dict("records"))
    encoder = None
    if text_encoder_id is None:
        encoder = TextEncoder.from_config(profile.model.text)
        text_encoder_id = encoder.encoder_id
    cache_root, action_file = None, None
    if profile.training_set.cache:
        layout = CacheLayout(profile.workdir_path / "cache" / "train" / cache_key(profile, text_encoder_id))
        if not (layout.latents_index.is_file() and layout.text_file.is_file()):
            raise ValueError(f"latent/text cache {layout.root} is incomplete: run build_training_set first")
        cache_root = str(layout.root)
        t = profile.model.text
        if encoder is None:
            encoder = TextEncoder.from_config(t)
        action_file = str(ActionEmbeddingCache(encoder, layout.root, t.vocabulary, t.action_prefix, t.max_length).path)
        data_hash = _sha([data_hash, layout.root.name])
    check_pretrained_base(profile.model, text_encoder_id)
    rh = run_hash(profile, data_hash)
    run_dir = foundation_dir(profile) / "runs" / rh
    resume = last_checkpoint(run_dir / "ckpt") if profile.train.resume else None
    roots = {"sekai": str(profile.sekai_root()) if (profile.data.sekai_root or profile.world) else "",
             "media": str(profile.media_root())}
    return TrainRun(profile=profile.model_dump(mode="json"), manifest_dir=str(manifest_dir), cache_root=cache_root,
                    roots=roots, run_dir=str(run_dir), run_hash=rh, data_hash=data_hash, encoder_id=text_encoder_id,
                    action_file=action_file, resume_from=str(resume) if resume else None)


def check_pretrained_base(model_cfg, encoder_id: str) -> None:
    """Before any training: the base ``model.dit_pretrained_path`` names exists and matches ``model.dit``
    (``pretrained_dit_dir``), and a base with a card (``model_card.json`` or ``yume_model.json``: our own exports)
    was trained with this run's text encoder; a different ``encoder_id`` means its cross-attention learned other
    embeddings. Wan2.2's own transformer directory has no card: nothing to compare."""
    from yume.models.foundation import PretrainedBaseError, pretrained_dit_dir

    if model_cfg.dit_init != "pretrained":
        return
    d = pretrained_dit_dir(model_cfg)
    for card in ("model_card.json", "yume_model.json"):
        if (d / card).is_file():
            try:
                base_encoder = json.loads((d / card).read_text()).get("encoder_id")
            except json.JSONDecodeError as e:
                raise PretrainedBaseError(f"{d / card} is not valid JSON ({e}): re-export the base") from e
            if base_encoder and base_encoder != encoder_id:
                raise PretrainedBaseError(
                    f"the base {d} was trained with text encoder {base_encoder} ({card}) but this run encodes text "
                    f"with {encoder_id}: use the base's encoder (model.text) or pretrain a base for this one")
            return


# ------------------------------------------------------------------------------------------ what a run prints


def _callback_base():
    import lightning as L

    return L.Callback


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


def tidy_training_logs() -> None:
    """Each line once, no library tips. Lightning gives its loggers their own stream handler when the root logger
    has none at import; the CLI (or Prefect) configures the root later, and every Lightning line came out twice.
    Its cloud-logging tips go, and so do three warnings that do not apply here: the frozen/EMA copies are in eval
    mode by design, StepSampler resumes from the trainer's step (so the loader need not be resumable), and a
    torch-internal deprecation."""
    import warnings

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        lg = logging.getLogger(name)
        for handler in [h for h in lg.handlers if type(h) is logging.StreamHandler]:
            lg.removeHandler(handler)
        lg.propagate = True
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropTips) for f in rank_zero.filters):
        rank_zero.addFilter(_DropTips())
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    warnings.filterwarnings("ignore", message=r".*your dataloader is not resumable")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def link_readable_name(run_dir: str | Path, stage: str) -> Path:
    """``<stage>-<YYYYMMDD>-<hash[:8]>`` beside ``runs/<hash>`` (a relative symlink made once, on first use)."""
    run_dir = Path(run_dir)
    for existing in run_dir.parent.glob(f"{stage}-*-{run_dir.name[:8]}"):
        if existing.is_symlink():
            return existing
    alias = run_dir.parent / f"{stage}-{time.strftime('%Y%m%d')}-{run_dir.name[:8]}"
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        alias.symlink_to(run_dir.name, target_is_directory=True)
    except FileExistsError:
        pass
    return alias


# ------------------------------------------------------------------------------------------ callbacks


class ProgressLine(_callback_base()):
    """At the start: where the run lives and the TensorBoard command. Then one line every ``every`` steps: step of
    max, loss, samples/s over the last interval, elapsed, and the time left (the step budget at the current rate,
    or the wall-time guard ``max_time`` if that ends first)."""

    def __init__(self, stage: str, run_dir: str | Path, every: int, samples_per_step: int,
                 max_seconds: float | None = None):
        self.stage, self.run_dir, self.every, self.samples_per_step = stage, Path(run_dir), int(every), samples_per_step
        self.max_seconds = max_seconds
        self._t0 = self._t = self._step = None

    def on_train_start(self, trainer, pl_module) -> None:
        self._t0 = self._t = time.perf_counter()
        self._step = int(trainer.global_step)
        if trainer.is_global_zero:
            alias = link_readable_name(self.run_dir, self.stage)
            log.info("%s: run %s (%s), steps %d -> %d; watch it with: tensorboard --logdir %s", self.stage,
                     self.run_dir.name, alias.name, self._step, trainer.max_steps, self.run_dir / "logs" / "tb")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = int(trainer.global_step)
        if step % self.every or not trainer.is_global_zero or self._t is None or step <= self._step:
            return
        now = time.perf_counter()
        rate = (step - self._step) / (now - self._t)  # steps/s over the last interval
        left = (trainer.max_steps - step) / rate if rate > 0 else float("inf")
        if self.max_seconds:
            left = min(left, self.max_seconds - (now - self._t0))
        loss = trainer.callback_metrics.get("train/loss")
        log.info("%s step %d/%d: loss %.4f, %.1f samples/s, %s elapsed, %s left", self.stage, step, trainer.max_steps,
                 float(loss) if loss is not None else float("nan"), rate * self.samples_per_step,
                 _clock(now - self._t0), _clock(max(left, 0)))
        self._t, self._step = now, step


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"




class StepCheckpoint(_callback_base()):
    """Save a checkpoint every ``every`` optimiser steps and when training ends; keep the newest ``keep``.
    Under Ray Train, also ``ray.train.report`` each checkpoint (all workers call it; rank 0 attaches it)."""

    def __init__(self, dirpath: str | Path, every: int, keep: int = 2, ray_report: bool = False):
        self.dirpath, self.every, self.keep, self.ray_report = Path(dirpath), int(every), int(keep), ray_report
        self.saved: list[int] = []

    def on_fit_start(self, trainer, pl_module) -> None:
        """Remove what a run killed mid-write left (a half-written ``.tmp-step-*``, a ``.last.json.<pid>``): the
        files are written beside their names and renamed when whole, so these are never anything's only copy."""
        if trainer.is_global_zero and self.dirpath.is_dir():
            for leftover in [*self.dirpath.glob(".tmp-step-*"), *self.dirpath.glob(".last.json.*")]:
                log.info("removing %s, left by a run killed mid-write", leftover)
                leftover.unlink(missing_ok=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = int(trainer.global_step)
        if step and step % self.every == 0:
            self.save(trainer, step)

    def on_train_end(self, trainer, pl_module) -> None:
        step = int(trainer.global_step)
        if not self.saved or self.saved[-1] != step:
            self.save(trainer, step)

    def save(self, trainer, step: int) -> Path:
        name = f"step-{step:07d}.safetensors"
        path = self.dirpath / name
        trainer.save_checkpoint(str(path), weights_only=False)  # full state; the strategy writes on rank 0 only
        if trainer.is_global_zero:
            tmp = self.dirpath / f".last.json.{os.getpid()}"
            tmp.write_text(json.dumps({"file": name, "step": step}))
            tmp.replace(self.dirpath / "last.json")
            for old in sorted(self.dirpath.glob("step-*.safetensors"))[: -self.keep]:
                old.unlink(missing_ok=True)
        self.saved.append(step)
        if self.ray_report:
            self._report(trainer, path, step)
        return path

    def _report(self, trainer, path: Path, step: int) -> None:
        import ray.train

        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
        metrics["step"] = step
        if trainer.is_global_zero:
            with tempfile.TemporaryDirectory() as tmp:
                shutil.copy2(path, Path(tmp) / "checkpoint.safetensors")
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics, checkpoint=None)


# ------------------------------------------------------------------------------------------ building


def build_module_and_data(run: TrainRun, rows=None):
    from yume.datasets.foundation_data import FoundationDataModule, SampleSettings, TextSource
    from yume.models.foundation import FoundationModule

    import lightning as L

    profile = run.load_profile()
    rows = read_train_rows(Path(run.manifest_dir)) if rows is None else rows
    # Same seed -> same initial weights (and RNG streams) in every process: a fresh run, a resumed one and
    # every Ray worker start from identical models.
    L.seed_everything(profile.train.seed, workers=True, verbose=False)
    meta = {"run_hash": run.run_hash, "data_hash": run.data_hash, "encoder_id": run.encoder_id,
            "profile_name": profile.name}
    module = FoundationModule(profile.model.model_dump(mode="json"), profile.train.model_dump(mode="json"), meta)
    settings = SampleSettings.from_profile(profile)
    text = TextSource(run.cache_root, profile.model.text.model_dump(mode="json"), run.action_file)
    dm = FoundationDataModule(rows, settings, run.roots, run.cache_root, text, profile.model.dit.text_dim,
                              profile.train.max_steps, profile.train.num_workers, run.data_hash)
    return module, dm


def _loggers(run: TrainRun, attempt: str):
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    logs = Path(run.run_dir) / "logs"
    return [CSVLogger(str(logs), name="csv", version=attempt, flush_logs_every_n_steps=50),
            TensorBoardLogger(str(logs), name="tb", version=attempt, default_hp_metric=False)]


def _attempt_name(run: TrainRun) -> str:
    d = Path(run.run_dir) / "logs" / "csv"
    n = len(list(d.glob("attempt-*"))) if d.is_dir() else 0
    return f"attempt-{n:03d}"


def trainer_kwargs(profile, run: TrainRun, max_steps: int | None = None, max_seconds: float | None = None) -> dict:
    t = profile.train
    budget = max_seconds if max_seconds is not None else (t.max_minutes * 60 if t.max_minutes else None)
    kw = dict(max_steps=max_steps or t.max_steps, precision=t.precision, gradient_clip_val=t.grad_clip,
              log_every_n_steps=t.log_every_n_steps, enable_checkpointing=False, use_distributed_sampler=False,
              num_sanity_val_steps=0, enable_model_summary=False, enable_progress_bar=False, max_epochs=-1,
              limit_val_batches=0)
    if budget:
        kw["max_time"] = {"seconds": float(budget)}
    return kw


def fit_local(run: TrainRun, max_steps: int | None = None, max_seconds: float | None = None,
              extra_callbacks: list | None = None, progress_line: bool = True) -> dict:
    """Train in this process (``train.devices`` devices with ``train.strategy``; 1 by default). ``progress_line``
    off when a caller prints its own (pretrain_base's line adds its CPU-budget totals)."""
    import lightning as L
    import torch

    from yume.models.checkpoint import SafeCheckpointIO

    profile = run.load_profile()
    t = profile.train
    if t.torch_threads:
        torch.set_num_threads(t.torch_threads)
    module, dm = build_module_and_data(run)
    ckpt_cb = StepCheckpoint(run.ckpt_dir, t.checkpoint_every_n_steps, t.keep_checkpoints)
    attempt = _attempt_name(run)
    tidy_training_logs()
    kw = trainer_kwargs(profile, run, max_steps, max_seconds)
    progress = ProgressLine(STAGE, run.run_dir, t.progress_every_n_steps, t.batch_size * t.devices,
                            kw.get("max_time", {}).get("seconds"))
    trainer = L.Trainer(accelerator=t.accelerator, devices=t.devices, strategy=t.strategy, logger=_loggers(run, attempt),
                        callbacks=[ckpt_cb] + ([progress] if progress_line else []) + list(extra_callbacks or []),
                        plugins=[SafeCheckpointIO()],
                        default_root_dir=run.run_dir, **kw)
    started = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=run.resume_from)
    return _finish(run, trainer, time.perf_counter() - started, ckpt_cb, attempt)


def _finish(run: TrainRun, trainer, seconds: float, ckpt_cb: StepCheckpoint, attempt: str,
            extra: dict | None = None) -> dict:
    last = last_checkpoint(run.ckpt_dir)
    done = Path(run.run_dir) / "done.json"
    before = 0.0
    if run.resume_from and done.is_file():
        before = float(json.loads(done.read_text()).get("train_seconds", 0.0))
    summary = {"global_step": int(trainer.global_step), "fit_seconds": round(seconds, 2),
               "train_seconds": round(before + seconds, 2),
               "checkpoint": str(last) if last else None, "resumed_from": run.resume_from, "attempt": attempt,
               "stopped_by": "max_steps" if trainer.global_step >= trainer.max_steps else "time_budget", **(extra or {})}
    if trainer.is_global_zero:
        done.write_text(json.dumps(summary, indent=1))
    return summary


# ------------------------------------------------------------------------------------------ Ray Train


def _ray_train_loop(config: dict) -> None:
    """``train_loop_per_worker``: one Lightning Trainer per Ray worker, DDP/FSDP over Ray's process group."""
    import lightning as L
    import ray.train
    import torch
    from ray.train.lightning import RayDDPStrategy, RayFSDPStrategy, RayLightningEnvironment, prepare_trainer

    from yume.models.checkpoint import SafeCheckpointIO

    run = TrainRun(**config["run"])
    profile = run.load_profile()
    t = profile.train
    torch.set_num_threads(int(config.get("threads") or t.torch_threads or 1))
    module, dm = build_module_and_data(run)
    strategy = (RayFSDPStrategy() if t.ray.strategy == "fsdp" else RayDDPStrategy(find_unused_parameters=True))
    ckpt_cb = StepCheckpoint(run.ckpt_dir, t.checkpoint_every_n_steps, t.keep_checkpoints, ray_report=True)
    attempt = config["attempt"]
    rank = ray.train.get_context().get_world_rank()
    tidy_training_logs()
    kw = trainer_kwargs(profile, run, config.get("max_steps"), config.get("max_seconds"))
    progress = ProgressLine(STAGE, run.run_dir, t.progress_every_n_steps, t.batch_size * t.ray.num_workers,
                            kw.get("max_time", {}).get("seconds"))
    trainer = L.Trainer(accelerator="gpu" if t.ray.use_gpu else "cpu", devices="auto", strategy=strategy,
                        plugins=[RayLightningEnvironment(), SafeCheckpointIO()], callbacks=[ckpt_cb, progress],
                        logger=_loggers(run, attempt) if rank == 0 else False, default_root_dir=run.run_dir, **kw)
    trainer = prepare_trainer(trainer)
    resume = run.resume_from
    ray_ckpt = ray.train.get_checkpoint()
    if ray_ckpt is not None:  # a restarted Ray run: Ray's latest checkpoint wins
        local = Path(run.run_dir) / f"ray_resume-rank{rank}.safetensors"
        with ray_ckpt.as_directory() as d:
            shutil.copy2(Path(d) / "checkpoint.safetensors", local)
        resume = str(local)
    started = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=resume)
    from yume.models.rank_agreement import gather_and_check, state_digest

    digests = gather_and_check(state_digest(module), "the trained state")  # DDP really synchronised
    summary = _finish(run, trainer, time.perf_counter() - started, ckpt_cb, attempt,
                      extra={"rank_state_digests": digests})
    ray.train.report({"done": 1.0, "step": summary["global_step"]}, checkpoint=None)


def fit_ray(run: TrainRun, max_steps: int | None = None, max_seconds: float | None = None, name: str | None = None) -> dict:
    """Train with Ray Train's TorchTrainer (starts a local Ray if none is running)."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    profile = run.load_profile()
    r = profile.train.ray
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
    run_config = RunConfig(name=name or f"foundation-{run.run_hash}", storage_path=storage,
                           checkpoint_config=CheckpointConfig(num_to_keep=profile.train.keep_checkpoints),
                           failure_config=FailureConfig(max_failures=r.max_failures))
    backend = r.backend or ("nccl" if r.use_gpu else "gloo")
    config = {"run": asdict(run), "attempt": _attempt_name(run), "max_steps": max_steps, "max_seconds": max_seconds,
              "threads": max(1, int(r.cpus_per_worker))}
    trainer = TorchTrainer(_ray_train_loop, train_loop_config=config, scaling_config=scaling, run_config=run_config,
                           torch_config=TorchConfig(backend=backend))
    started = time.perf_counter()
    result = trainer.fit()
    done = Path(run.run_dir) / "done.json"
    summary = json.loads(done.read_text()) if done.is_file() else {}
    summary.update({"ray_seconds": round(time.perf_counter() - started, 2), "ray_workers": r.num_workers,
                    "ray_checkpoint": result.checkpoint.path if result.checkpoint else None})
    return summary


def fit(run: TrainRun, **kw) -> dict:
    profile = run.load_profile()
    return fit_ray(run, **kw) if profile.train.ray.enabled else fit_local(run, **kw)


# ------------------------------------------------------------------------------------------ export


def state_from_checkpoint(path: str | Path, prefer_ema: bool = True) -> tuple[dict, dict]:
    """(WanDiT state dict, the checkpoint's ``yume`` metadata) from a training checkpoint."""
    from yume.models.checkpoint import load_safe

    ckpt = load_safe(path)
    sd = ckpt["state_dict"]
    prefix = "ema." if prefer_ema and any(k.startswith("ema.") for k in sd) else "model."
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}, {
        **ckpt.get("yume", {}), "global_step": ckpt.get("global_step"), "weights": prefix.rstrip(".")}


def export_final(checkpoint: str | Path, out_dir: str | Path, sampler: dict | None = None) -> Path:
    """The checkpoint's (EMA) weights as a diffusers-format WanDiT directory plus ``yume_model.json`` (with the
    schedule to sample it with, ``sampler``, when given: ``WorldSampler.from_checkpoint`` defaults to it)."""
    from yume.models.config import ModelConfig
    from yume.models.wan_dit import WanDiT

    state, meta = state_from_checkpoint(checkpoint)
    cfg = ModelConfig.model_validate(meta["model_config"])
    model = WanDiT.from_config(cfg)
    model.load_state_dict(state)
    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    from yume.datasets.manifest import file_sha256

    record = {**meta, "source_checkpoint": str(checkpoint),
              "weights_sha256": {f.name: file_sha256(f) for f in sorted(tmp.glob("*.safetensors"))}}
    if sampler is not None:
        record["sampler"] = {k: sampler[k] for k in ("schedule", "steps", "shift", "guidance", "renoise_timesteps")
                             if k in sampler}
    (tmp / "yume_model.json").write_text(json.dumps(record, indent=1))
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)
    return out


def check_export(path: str | Path, role: str, remedy: str) -> None:
    """Refuse an unreadable export (``final/``) or training checkpoint before any work starts on it: its record
    must parse, and each weight file must be whole (safetensors header) and match the sha256 recorded at export.
    ``role`` names it in the message ("foundation"), ``remedy`` says what to do."""
    from safetensors import safe_open

    from yume.datasets.manifest import file_sha256
    from yume.errors import StateFileError
    from yume.models.checkpoint import checkpoint_problem

    p = Path(path)
    if not p.is_dir():
        problem = checkpoint_problem(p)
        if problem:
            raise StateFileError(f"{role} checkpoint {p} is unreadable ({problem}): {remedy}")
        return
    record_file = p / "yume_model.json"
    try:
        record = json.loads(record_file.read_text())
        record["model_config"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StateFileError(f"{role} record {record_file} is unreadable ({type(e).__name__}: {e}): {remedy}") from None
    weights = sorted(p.glob("*.safetensors"))
    if not weights:
        raise StateFileError(f"{role} {p} holds no .safetensors weights: {remedy}")
    recorded = record.get("weights_sha256") or {}
    for w in weights:
        try:
            with safe_open(str(w), framework="pt"):
                pass
        except Exception as e:  # noqa: BLE001
            raise StateFileError(f"{role} weights {w} are unreadable (truncated or corrupt: {e}): {remedy}") from None
        if w.name in recorded and file_sha256(w) != recorded[w.name]:
            raise StateFileError(f"{role} weights {w} do not match the sha256 recorded at export: {remedy}")


# ------------------------------------------------------------------------------------------ reporting


def loss_curve(run_dir: str | Path, png: str | Path) -> dict:
    """Plot train/loss (and per mode) against step from every attempt's metrics.csv; returns summary figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    frames = [pd.read_csv(f) for f in sorted(Path(run_dir, "logs", "csv").glob("attempt-*/metrics.csv"))]
    frames = [f for f in frames if "step" in f]
    if not frames:
        return {}
    df = pd.concat(frames).sort_values("step")
    fig, ax = plt.subplots(figsize=(7, 4))
    out = {}
    for col, label in (("train/loss", "loss"), ("train/loss_i2v", "I2V"), ("train/loss_t2v", "T2V")):
        if col not in df:
            continue
        s = df[["step", col]].dropna().groupby("step")[col].mean()
        if s.empty:
            continue
        smooth = s.rolling(max(1, len(s) // 30), min_periods=1).mean()
        ax.plot(smooth.index, smooth.values, label=label)
        out[f"{label}_last"] = float(smooth.iloc[-1])
        out[f"{label}_first"] = float(smooth.iloc[0])
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching loss (velocity MSE)")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return out
