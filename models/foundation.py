"""Foundation training of the world model: rectified flow with TSCM history (REFERENCE.md section 5).

``FoundationModule`` (a LightningModule) owns the research code; the Trainer owns devices, precision,
checkpoints and logging. Per step:

- the batch (``yume.datasets.foundation_data``) holds a span of latent frames: ``n_history`` history frames then
  the target chunk (pixels are encoded with the codec here when the cache is off); a still-image step's
  history is the frame before the chunk as an image, built by the data module as inference builds it;
- ``t`` is logit-normal (``sigmoid(N(mean, std))``) then shifted ``t' = s t / (1 + (s - 1) t)``;
  ``x_t = (1 - t) x0 + t eps``, the target is the velocity ``eps - x0``, the model's timestep ``1000 t``;
- the history stays clean at t = 0; with ``history_noise_p`` a sample's history gets the small noise
  ``sigma = exp(N(-3.5, 0.5))`` (``(1 - sigma) h + sigma eps``), its timestep still 0;
- the loss is the MSE of the predicted velocity on the generated chunk only (the model outputs only the
  chunk), weighted per mode (I2V / T2V steps alternate, see ``mode_of_step``);
- ``prediction: x0``: the network outputs x0 and ``v = (x_t - x0_hat) / max(t, x0_t_min)`` (REFERENCE section 10:
  a velocity head narrower than channels x patch volume cannot carry the noise; tiny needs this).

Randomness of a step (t, noise, history noise) comes from a generator seeded by (seed, global step, rank),
so a resumed run draws exactly what an uninterrupted one would. EMA weights are a frozen copy updated after
every optimiser step; checkpoints also carry the RNG states and the run's config and data hashes.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from .config import ModelConfig, resolve_model_path
from .train_config import TrainConfig
from .wan_dit import CONFIG_NAME, WanDiT

# ------------------------------------------------------------------------------------ flow matching


def shift_t(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Timestep shift ``s t / (1 + (s - 1) t)`` (t in [0, 1])."""
    return shift * t / (1 + (shift - 1) * t)


def sample_t(n: int, cfg: TrainConfig, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Logit-normal t, shifted."""
    u = torch.randn(n, generator=generator, device=device) * cfg.t_logit_std + cfg.t_logit_mean
    return shift_t(torch.sigmoid(u), cfg.t_shift)


def velocity_from_output(out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, prediction: str, t_min: float
                         ) -> torch.Tensor:
    """The network output as a velocity: as is, or x0 converted ``(x_t - x0) / max(t, t_min)``."""
    if prediction == "velocity":
        return out
    tt = t.clamp(min=t_min).view(-1, *([1] * (x_t.ndim - 1)))
    return (x_t - out) / tt


def x0_from_velocity(v: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x0 = x_t - t v`` (rectified flow)."""
    return x_t - t.view(-1, *([1] * (x_t.ndim - 1))) * v


def step_generator(seed: int, step: int, rank: int, device) -> torch.Generator:
    state = np.random.SeedSequence([int(seed), int(step), int(rank), 31]).generate_state(2, dtype=np.uint32)
    g = torch.Generator(device=device)
    g.manual_seed(int(state[0]) << 31 ^ int(state[1]))
    return g


# ------------------------------------------------------------------------------------ pretrained base


class PretrainedBaseError(ValueError):
    """The pretrained DiT a profile names is missing or does not match the profile's model."""


def pretrained_dit_dir(model_cfg: ModelConfig) -> Path:
    """The checked directory of ``model.dit_pretrained_path``: it exists, has a diffusers ``config.json``, and
    that config matches ``model.dit`` key by key (the first differing key is named). Weights' shapes are
    checked when they load (``WanDiT.from_pretrained`` names the first bad tensor)."""
    from .config import WanDiTConfig

    if not model_cfg.dit_pretrained_path:
        raise PretrainedBaseError(
            "model.dit_init is 'pretrained' but model.dit_pretrained_path is not set: name a local diffusers-format "
            "transformer directory (yume15: Wan2.2-TI2V-5B's transformer/), or set model.dit_init=random for a "
            "shape experiment")
    d = resolve_model_path(model_cfg.dit_pretrained_path)
    if not (d / CONFIG_NAME).is_file():
        raise PretrainedBaseError(f"model.dit_pretrained_path {d}: no {CONFIG_NAME} there (expected a diffusers-format "
                                  "transformer directory with config.json and *.safetensors)")
    try:
        found = WanDiTConfig.from_diffusers(json.loads((d / CONFIG_NAME).read_text()))
    except (ValueError, TypeError) as e:
        raise PretrainedBaseError(f"model.dit_pretrained_path {d}/{CONFIG_NAME}: {e}") from e
    want = model_cfg.dit.model_dump()
    for key, value in found.model_dump().items():
        if key != "rope_max_seq_len" and _norm(value) != _norm(want[key]):
            raise PretrainedBaseError(f"model.dit_pretrained_path {d}: {CONFIG_NAME} has {key}={value!r} but the "
                                      f"profile's model.dit.{key} is {want[key]!r}")
    return d


def _norm(v):
    return list(v) if isinstance(v, (list, tuple)) else v


def build_dit(model_cfg: ModelConfig) -> WanDiT:
    """The DiT training starts from: the pretrained base (``dit_init: pretrained``), or random init."""
    if model_cfg.dit_init == "random":
        return WanDiT.from_config(model_cfg)
    d = pretrained_dit_dir(model_cfg)
    try:
        return WanDiT.from_pretrained(d, tscm=model_cfg.tscm, dtype=torch.float32)
    except (ValueError, FileNotFoundError) as e:
        raise PretrainedBaseError(f"model.dit_pretrained_path: {e}") from e


# -------------------------------------------------------------------------------------------- module


class FoundationModule(L.LightningModule):
    """Rectified-flow training of ``WanDiT`` with TSCM history; see the module docstring."""

    def __init__(self, model_config: dict, train_config: dict, meta: dict | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.model_cfg = ModelConfig.model_validate(model_config)
        self.cfg = TrainConfig.model_validate(train_config)
        self.meta = dict(meta or {})
        # The pretrained base (or random init) is loaded before the EMA copy and the optimiser are made, so both
        # start from it. A resumed run then overwrites these weights with the checkpoint's.
        self.model = build_dit(self.model_cfg)
        if self.cfg.activation_checkpointing:
            self.model.enable_gradient_checkpointing(True)
        self.ema = None
        if self.cfg.ema:
            self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
            self.ema.gradient_checkpointing = False
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        self._codec = None
        self._t_last = None
        self._samples = 0

    # ------------------------------------------------------------------------------------ helpers

    @property
    def codec(self):
        if self._codec is None:
            from .codecs import build_codec

            self._codec = build_codec(self.model_cfg.codec)
        return self._codec

    def inference_model(self) -> WanDiT:
        return self.ema if self.ema is not None else self.model

    def split_batch(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(x0 chunk, history or None) as latents."""
        span = batch["span"]
        if not batch["is_latent"]:
            with torch.no_grad():
                span = self.codec.encode(span.float()).to(self.device)
        h = int(batch["n_history"])
        x0, hist = span[:, :, h:], span[:, :, :h]
        if h == 0:
            return x0, None
        return x0, hist

    def flow_loss(self, batch: dict, step: int, rank: int = 0) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        x0, hist = self.split_batch(batch)
        x0 = x0.float()
        b = x0.shape[0]
        g = step_generator(cfg.seed, step, rank, x0.device)
        t = sample_t(b, cfg, g, x0.device)
        eps = torch.randn(x0.shape, generator=g, device=x0.device)
        tt = t.view(-1, 1, 1, 1, 1)
        x_t = (1 - tt) * x0 + tt * eps
        if hist is not None:
            hist = hist.float()
            noisy = torch.rand(b, generator=g, device=x0.device) < cfg.history_noise_p
            sigma = torch.exp(torch.randn(b, generator=g, device=x0.device) * cfg.history_noise_log_std
                              + cfg.history_noise_log_mean) * noisy
            s = sigma.view(-1, 1, 1, 1, 1)
            hist = (1 - s) * hist + s * torch.randn(hist.shape, generator=g, device=x0.device)
        text = batch["text"].to(x0.dtype)
        out = self.model(x_t, t * 1000, text, hist)
        v_hat = velocity_from_output(out.float(), x_t, t, cfg.prediction, cfg.x0_t_min)
        mse = F.mse_loss(v_hat, eps - x0)
        mode = "i2v" if int(batch["mode"]) == 0 else "t2v"
        loss = mse * cfg.mode_loss_weight.get(mode, 1.0)
        return loss, {"mse": mse.detach(), "mode": mode, "t_mean": t.mean().detach()}

    # ------------------------------------------------------------------------------------ lightning

    def training_step(self, batch: dict, batch_idx: int):
        loss, info = self.flow_loss(batch, int(self.global_step), int(self.global_rank))
        b = batch["span"].shape[0]
        self._samples += b
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        self.log(f"train/loss_{info['mode']}", info["mse"], batch_size=b)
        self.log("train/t_mean", info["t_mean"], batch_size=b)
        now = time.perf_counter()
        if self._t_last is not None:
            self.log("train/samples_per_s", b / max(now - self._t_last, 1e-9), batch_size=b)
        self._t_last = now
        return loss

    def configure_optimizers(self):
        cfg = self.cfg
        opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        warm = max(cfg.warmup_steps, 0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / (warm + 1)) if warm else 1.0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    def on_before_optimizer_step(self, optimizer) -> None:
        if self.global_step % self.cfg.log_every_n_steps == 0:
            norms = [p.grad.detach().norm() for p in self.model.parameters() if p.grad is not None]
            if norms:
                self.log("train/grad_norm", torch.stack(norms).norm())
            self.log("train/lr", optimizer.param_groups[0]["lr"])

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        self.update_ema()

    @torch.no_grad()
    def update_ema(self) -> None:
        """EMA after every optimiser step (here, not in a batch-end hook, so a checkpoint saved by a callback
        at batch end already holds it). Decay warms up as min(decay, (1 + n) / (10 + n))."""
        if self.ema is None:
            return
        self.ema_updates += 1
        n = int(self.ema_updates) - self.cfg.ema_start_step
        decay = 0.0 if n <= 0 else min(self.cfg.ema_decay, (1 + n) / (10 + n))
        for pe, pm in zip(self.ema.parameters(), self.model.parameters()):
            pe.lerp_(pm.detach().to(pe.dtype), 1 - decay)
        for be, bm in zip(self.ema.buffers(), self.model.buffers()):
            be.copy_(bm)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["yume"] = {**self.meta, "model_config": self.model_cfg.model_dump(mode="json"),
                              "train_config": self.cfg.model_dump(mode="json")}
        checkpoint["rng"] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                             "python": random.getstate()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        stored = checkpoint.get("yume", {})
        for key in ("run_hash", "data_hash"):
            if self.meta.get(key) and stored.get(key) and stored[key] != self.meta[key]:
                raise ValueError(f"checkpoint {key} {stored[key]} != this run's {self.meta[key]}: refusing to resume")
        rng = checkpoint.get("rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            np.random.set_state(tuple(rng["numpy"]))
            random.setstate(_to_tuple(rng["python"]))


def _to_tuple(x):
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def tokens_per_sample(model_cfg: ModelConfig, chunk: int, height: int, width: int, spatial_factor: int) -> int:
    """Prediction tokens of one chunk (for tokens/s figures)."""
    pt, ph, pw = model_cfg.dit.patch_size
    return math.ceil(chunk / pt) * (height // spatial_factor // ph) * (width // spatial_factor // pw)
