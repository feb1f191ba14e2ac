"""Self-Forcing distillation (DMD) with TSCM: the foundation model -> a few-step real-time generator
(REFERENCE.md section 6).

``DistillModule`` (a LightningModule, manual optimisation) holds three copies of the foundation model:

- the generator ``model`` (few-step, trained; its EMA ``ema``),
- the fake score / critic ``fake_score`` (trained with the flow-matching loss on the generator's outputs),
- the real score ``real_score`` (the frozen teacher; not stored in checkpoints, reloaded from the foundation).

All predict what the foundation predicts (``train.prediction``: x0 on tiny, velocity on Wan); every use goes
through ``predict_x0`` = ``x_t - t v`` with ``v = velocity_from_output(...)``, exactly as ``WorldSampler``'s
``renoise`` schedule does, so training and inference see the same x0.

One iteration (``training_step``):

1. **Self-rollout** over ``distill.chunks`` chunks from a start history (a first frame tiled, or a cached history
   window): each chunk starts from noise and runs the few-step schedule (``distill.timesteps`` warped by
   ``distill.shift``: predict x0, re-noise with fresh noise to the next level); its output is the x0 at the
   **exit step**, and it joins the TSCM history of the next chunk **detached** (no gradient crosses chunks).
   The exit step is one random index per iteration, the same for every chunk, every sample and every rank:
   it is derived from ``(distill.seed, iteration)`` only (``exit_step``), so all ranks draw the same without a
   broadcast. Steps before it run under ``no_grad``; only the exit step's forward keeps the graph.
2. **Generator update** (every ``critic_per_generator``-th iteration): DMD loss (``dmd_generator_loss``):
   ``t = shift(u)`` clamped to [t_min, t_max]/1000, ``x_t = (1 - t) x + t eps`` (one t per sample, all chunks),
   ``g = x0_fake - x0_real`` with the real score's CFG ``cond + real_guidance (cond - uncond)``, normalised by
   ``mean |x - x0_real|`` per sample, ``loss = 0.5 mse(x, stopgrad(x - g))`` in float64. Then the EMA.
3. **Critic update** (every iteration): a fresh rollout without gradient to the generator; the fake score's
   flow-matching loss on it (logit-normal t, shifted; velocity MSE, as the foundation's loss).

Separate AdamW optimisers (betas (0, 0.999), weight decay 0.01), gradient clipping by norm, generator EMA
(a copy before ``ema_start_step``, then ``ema_decay``). Randomness of an iteration comes from generators seeded
by (seed, iteration, rank, phase), so a resumed run draws what an uninterrupted one would.

Data: a ``StartPool`` (safetensors file written by ``yume.tasks.distill``): start histories
[N, C, F, h, w], the 81 action-sentence embeddings and the starts' event embeddings (raw, combined here as the
foundation's data pipeline does). No video is needed beyond the starts (REFERENCE section 6).
"""

from __future__ import annotations

import copy
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from .config import ModelConfig
from .distill_config import DistillConfig
from .foundation import sample_t, shift_t, velocity_from_output
from .train_config import TrainConfig
from .sampler import renoise_grid
from .wan_dit import WanDiT

# ------------------------------------------------------------------------------------------- math


def exit_step(seed: int, iteration: int, n_steps: int) -> int:
    """The iteration's exit step: a pure function of (seed, iteration), identical on every rank."""
    state = np.random.SeedSequence([int(seed), int(iteration), 0xD157]).generate_state(1, dtype=np.uint32)
    return int(state[0] % n_steps)


def phase_generator(seed: int, iteration: int, rank: int, phase: int, device) -> torch.Generator:
    state = np.random.SeedSequence([int(seed), int(iteration), int(rank), int(phase), 53]).generate_state(
        2, dtype=np.uint32)
    g = torch.Generator(device=device)
    g.manual_seed(int(state[0]) << 31 ^ int(state[1]))
    return g


def predict_x0(model, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor, history: torch.Tensor | None,
               prediction: str, t_min: float) -> torch.Tensor:
    """x0 of a model whose output is ``prediction`` (x0 or velocity): ``x_t - t v`` as the sampler computes it."""
    out = model(x_t, t * 1000, text, history)
    v = velocity_from_output(out.float(), x_t, t, prediction, t_min)
    return x_t - t.view(-1, *([1] * (x_t.ndim - 1))) * v


def real_cfg(cond: torch.Tensor, uncond: torch.Tensor, guidance: float) -> torch.Tensor:
    """The real score's guided x0: ``cond + g (cond - uncond)`` (REFERENCE section 6)."""
    return cond + guidance * (cond - uncond)


def dmd_generator_loss(x: torch.Tensor, x0_fake: torch.Tensor, x0_real: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """DMD generator loss: ``g = (x0_fake - x0_real) / mean|x - x0_real|`` (per sample), ``0.5 mse(x, sg(x - g))``
    in float64. Its gradient w.r.t. x is ``g / numel``: it moves x along -(x0_fake - x0_real)."""
    dims = list(range(1, x.ndim))
    p_real = (x - x0_real).detach()
    norm = p_real.abs().mean(dim=dims, keepdim=True)
    grad = torch.nan_to_num((x0_fake - x0_real).detach() / norm)
    loss = 0.5 * F.mse_loss(x.double(), (x.double() - grad.double()).detach(), reduction="mean")
    return loss, {"dmd_grad_norm": grad.detach().float().norm(), "dmd_normaliser": norm.detach().float().mean()}


# ------------------------------------------------------------------------------------------- starts


@dataclass
class StartPool:
    """Start histories and the text pieces of the rollouts (see the module docstring)."""

    history: torch.Tensor  # [N, C, F, h, w] clean latents
    event_index: torch.Tensor  # [N] long, -1: no event
    events: list[torch.Tensor]  # raw event embeddings [L_e, D]
    actions: list[tuple[str, str]]  # the vocabulary's (keys, mouse) labels
    action_embeddings: list[torch.Tensor]  # raw [L_a, D] per label
    max_length: int
    order: str

    def save(self, path: str | Path, meta: dict | None = None) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        t = {"history": self.history.contiguous(), "event_index": self.event_index.contiguous()}
        t.update({f"e{i}": e.contiguous() for i, e in enumerate(self.events)})
        t.update({f"a{i}": a.contiguous() for i, a in enumerate(self.action_embeddings)})
        m = {"actions": json.dumps(self.actions, ensure_ascii=False), "events": str(len(self.events)),
             "max_length": str(self.max_length), "order": self.order, "meta": json.dumps(meta or {})}
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(t, str(tmp), metadata=m)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "StartPool":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            m = f.metadata()
            actions = [tuple(a) for a in json.loads(m["actions"])]
            return cls(f.get_tensor("history").float(), f.get_tensor("event_index").long(),
                       [f.get_tensor(f"e{i}").float() for i in range(int(m["events"]))], actions,
                       [f.get_tensor(f"a{i}").float() for i in range(len(actions))], int(m["max_length"]), m["order"])

    def draw(self, rng: np.random.Generator, batch: int, chunks: int, event_p: float
             ) -> tuple[torch.Tensor, torch.Tensor, list[list[tuple[str, str]]]]:
        """(history [B, C, F, h, w], text [B, chunks, L, D], actions per sample and chunk)."""
        from .text import combine_embeddings

        idx = rng.integers(len(self.history), size=batch)
        acts = rng.integers(len(self.actions), size=(batch, chunks))
        use_event = rng.random((batch, chunks)) < event_p
        rows = []
        for b in range(batch):
            ev = int(self.event_index[idx[b]])
            per = []
            for c in range(chunks):
                e = self.events[ev] if ev >= 0 and use_event[b, c] else None
                per.append(combine_embeddings(self.action_embeddings[acts[b, c]], e, self.max_length, self.order))
            rows.append(torch.stack(per))
        labels = [[self.actions[a] for a in row] for row in acts]
        return self.history[torch.as_tensor(idx)], torch.stack(rows), labels


class _Ticks(torch.utils.data.IterableDataset):
    """The trainer's 'data': iteration ticks. What an iteration trains on is drawn from the start pool by the
    module from (seed, iteration, rank), so a resumed run needs nothing but the restored iteration counter."""

    def __iter__(self):
        i = 0
        while True:
            yield i
            i += 1


def tick_loader() -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(_Ticks(), batch_size=None)


# ------------------------------------------------------------------------------------------- foundation


def load_foundation(path: str | Path) -> tuple[dict, dict]:
    """(WanDiT state dict, metadata with ``model_config`` and ``train_config``) from an exported directory
    (``final/``) or a training checkpoint (``.safetensors`` written by SafeCheckpointIO; EMA weights preferred)."""
    p = Path(path)
    if p.is_dir():
        meta = json.loads((p / "yume_model.json").read_text())
        cfg = ModelConfig.model_validate(meta["model_config"])
        return WanDiT.from_pretrained(p, tscm=cfg.tscm).state_dict(), meta
    from yume.tasks.train_foundation import state_from_checkpoint

    return state_from_checkpoint(p, prefer_ema=True)


# ------------------------------------------------------------------------------------------- module


class DistillModule(L.LightningModule):
    """Self-Forcing DMD distillation; see the module docstring."""

    def __init__(self, model_config: dict, train_config: dict, distill_config: dict, foundation: str | None = None,
                 starts_file: str | None = None, meta: dict | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.model_cfg = ModelConfig.model_validate(model_config)
        self.tcfg = TrainConfig.model_validate(train_config)  # the foundation's: prediction, chunk, t sampling
        self.cfg = DistillConfig.model_validate(distill_config)
        self.meta = dict(meta or {})
        self.foundation = foundation
        self.starts_file = starts_file
        self.model = WanDiT.from_config(self.model_cfg)
        self.fake_score = WanDiT.from_config(self.model_cfg)
        self.real_score = WanDiT.from_config(self.model_cfg).requires_grad_(False).eval()
        if foundation:
            state, _ = load_foundation(foundation)
            for m in (self.model, self.fake_score, self.real_score):
                m.load_state_dict(state)
        if self.cfg.activation_checkpointing:
            self.model.enable_gradient_checkpointing(True)
            self.fake_score.enable_gradient_checkpointing(True)
        self.ema = None
        if self.cfg.ema:
            self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
            self.ema.gradient_checkpointing = False
        for name in ("iteration", "generator_updates", "critic_updates", "ema_updates"):
            self.register_buffer(name, torch.zeros((), dtype=torch.long))
        self.levels = renoise_grid(self.cfg.timesteps, self.cfg.shift)  # the levels the sampler re-noises to
        self._starts: StartPool | None = None
        self._t_last = None
        self.exit_steps_taken: list[int] = []  # this process's generator iterations (not checkpointed)

    # ------------------------------------------------------------------------------------ helpers

    @property
    def starts(self) -> StartPool:
        if self._starts is None:
            if not self.starts_file:
                raise ValueError("DistillModule needs a starts_file (or set_starts)")
            self._starts = StartPool.load(self.starts_file)
        return self._starts

    def set_starts(self, pool: StartPool) -> None:
        self._starts = pool

    def inference_model(self) -> WanDiT:
        return self.ema if self.ema is not None else self.model

    @property
    def chunk(self) -> int:
        return self.tcfg.chunk_frames or self.model_cfg.chunk_frames

    def _x0(self, model, x_t, t, text, history):
        return predict_x0(model, x_t, t, text, history, self.tcfg.prediction, self.tcfg.x0_t_min)

    def draw(self, iteration: int, rank: int, phase: int):
        rng = np.random.default_rng([self.cfg.seed, int(iteration), int(rank), int(phase), 7])
        hist, text, labels = self.starts.draw(rng, self.cfg.batch_size, self.cfg.chunks, self.cfg.starts.event_p)
        return hist.to(self.device), text.to(self.device), labels

    def rollout(self, history: torch.Tensor, text: torch.Tensor, g: torch.Generator, exit_idx: int, grad: bool
                ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Self-rollout of ``text.shape[1]`` chunks: (outputs, the history each chunk was generated with).
        Outputs keep the graph of their exit step when ``grad``; histories are always detached."""
        b = history.shape[0]
        shape = (b, history.shape[1], self.chunk, *history.shape[3:])
        outs, hists = [], []
        for c in range(text.shape[1]):
            x = torch.randn(shape, generator=g, device=history.device)
            x0 = x
            for i in range(exit_idx + 1):
                t = torch.full((b,), self.levels[i], device=x.device)
                with torch.set_grad_enabled(grad and i == exit_idx):
                    x0 = self._x0(self.model, x, t, text[:, c], history)
                if i < exit_idx:
                    t1 = self.levels[i + 1]
                    x = (1 - t1) * x0 + t1 * torch.randn(shape, generator=g, device=x.device)
            outs.append(x0)
            hists.append(history)
            history = torch.cat([history, x0.detach()], 2)
        return outs, hists

    def generator_loss(self, iteration: int, rank: int) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        hist0, text, _ = self.draw(iteration, rank, 0)
        g = phase_generator(cfg.seed, iteration, rank, 0, hist0.device)
        k = exit_step(cfg.seed, iteration, len(self.levels))
        outs, hists = self.rollout(hist0, text, g, k, grad=True)
        b = hist0.shape[0]
        u = torch.rand(b, generator=g, device=hist0.device, dtype=torch.float64)
        t = shift_t(u, cfg.dmd_t_shift or cfg.shift).clamp(cfg.t_min / 1000, cfg.t_max / 1000).float()
        tt = t.view(-1, 1, 1, 1, 1)
        uncond = torch.zeros_like(text[:, 0])
        fakes, reals = [], []
        with torch.no_grad():
            for c, (x, h) in enumerate(zip(outs, hists)):
                eps = torch.randn(x.shape, generator=g, device=x.device)
                x_t = (1 - tt) * x.detach() + tt * eps
                fakes.append(self._x0(self.fake_score, x_t, t, text[:, c], h))
                cond = self._x0(self.real_score, x_t, t, text[:, c], h)
                unc = self._x0(self.real_score, x_t, t, uncond, h)
                reals.append(real_cfg(cond, unc, cfg.real_guidance))
        loss, info = dmd_generator_loss(torch.cat(outs, 2), torch.cat(fakes, 2), torch.cat(reals, 2))
        return loss, {**info, "exit_step": k, "dmd_t_mean": t.mean()}

    def critic_loss(self, iteration: int, rank: int) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        hist0, text, _ = self.draw(iteration, rank, 1)
        g = phase_generator(cfg.seed, iteration, rank, 1, hist0.device)
        k = exit_step(cfg.seed, iteration, len(self.levels))
        with torch.no_grad():
            outs, hists = self.rollout(hist0, text, g, k, grad=False)
        tcfg = self.tcfg if cfg.critic_t_shift is None else self.tcfg.model_copy(update={"t_shift": cfg.critic_t_shift})
        losses = []
        for c, (x0, h) in enumerate(zip(outs, hists)):
            t = sample_t(x0.shape[0], tcfg, g, x0.device)
            eps = torch.randn(x0.shape, generator=g, device=x0.device)
            tt = t.view(-1, 1, 1, 1, 1)
            x_t = (1 - tt) * x0 + tt * eps
            out = self.fake_score(x_t, t * 1000, text[:, c], h)
            v = velocity_from_output(out.float(), x_t, t, self.tcfg.prediction, self.tcfg.x0_t_min)
            losses.append(F.mse_loss(v, eps - x0))
        return torch.stack(losses).mean(), {}

    def is_generator_iteration(self, iteration: int) -> bool:
        return iteration % self.cfg.critic_per_generator == 0

    # ------------------------------------------------------------------------------------ lightning

    def train_dataloader(self):
        return tick_loader()

    def on_train_batch_start(self, batch, batch_idx: int):
        if int(self.iteration) >= self.cfg.max_steps:
            return -1  # done: ends the (single) epoch
        return None

    def training_step(self, batch, batch_idx: int):
        it, rank = int(self.iteration), int(self.global_rank)
        opt_g, opt_c = self.optimizers()
        b = self.cfg.batch_size
        if self.is_generator_iteration(it):
            loss_g, info = self.generator_loss(it, rank)
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(loss_g)
            if self.cfg.grad_clip:
                self.clip_gradients(opt_g, gradient_clip_val=self.cfg.grad_clip, gradient_clip_algorithm="norm")
            opt_g.step()
            self.generator_updates += 1
            self.exit_steps_taken.append(int(info["exit_step"]))  # checked equal across ranks after fit
            self.update_ema()
            self.log("distill/generator_loss", loss_g.float(), batch_size=b)
            self.log("distill/exit_step", float(info["exit_step"]), batch_size=b)
            self.log("distill/dmd_normaliser", info["dmd_normaliser"], batch_size=b)
        loss_c, _ = self.critic_loss(it, rank)
        opt_c.zero_grad(set_to_none=True)
        self.manual_backward(loss_c)
        if self.cfg.grad_clip:
            self.clip_gradients(opt_c, gradient_clip_val=self.cfg.grad_clip, gradient_clip_algorithm="norm")
        opt_c.step()
        self.critic_updates += 1
        self.log("distill/critic_loss", loss_c.detach(), prog_bar=True, batch_size=b)
        self.log("distill/iteration", float(it), batch_size=b)
        now = time.perf_counter()
        if self._t_last is not None:
            self.log("distill/iterations_per_s", 1.0 / max(now - self._t_last, 1e-9), batch_size=b)
        self._t_last = now
        self.iteration += 1

    def configure_optimizers(self):
        cfg = self.cfg
        opt_g = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr_generator, betas=tuple(cfg.betas),
                                  weight_decay=cfg.weight_decay)
        opt_c = torch.optim.AdamW(self.fake_score.parameters(), lr=cfg.lr_critic, betas=tuple(cfg.betas),
                                  weight_decay=cfg.weight_decay)
        return [opt_g, opt_c]

    @torch.no_grad()
    def update_ema(self) -> None:
        """After every generator step: a copy of the generator before ``ema_start_step`` (iterations), then
        ``ema <- decay ema + (1 - decay) generator``."""
        if self.ema is None:
            return
        self.ema_updates += 1
        decay = self.cfg.ema_decay if int(self.iteration) >= self.cfg.ema_start_step else 0.0
        for pe, pm in zip(self.ema.parameters(), self.model.parameters()):
            pe.lerp_(pm.detach().to(pe.dtype), 1 - decay)
        for be, bm in zip(self.ema.buffers(), self.model.buffers()):
            be.copy_(bm)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The frozen teacher is the foundation: reloaded from it, never stored (a 5B copy per checkpoint).
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("real_score.")}
        checkpoint["yume"] = {**self.meta, "model_config": self.model_cfg.model_dump(mode="json"),
                              "train_config": self.tcfg.model_dump(mode="json"),
                              "distill_config": self.cfg.model_dump(mode="json"), "foundation": self.foundation,
                              "iteration": int(self.iteration), "kind": "distilled"}
        checkpoint["rng"] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                             "python": random.getstate()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        stored = checkpoint.get("yume", {})
        for key in ("run_hash", "foundation_hash"):
            if self.meta.get(key) and stored.get(key) and stored[key] != self.meta[key]:
                raise ValueError(f"checkpoint {key} {stored[key]} != this run's {self.meta[key]}: refusing to resume")
        sd = checkpoint["state_dict"]
        for k, v in self.real_score.state_dict().items():
            sd.setdefault(f"real_score.{k}", v)
        rng = checkpoint.get("rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            np.random.set_state(tuple(rng["numpy"]))
            random.setstate(_to_tuple(rng["python"]))


def _to_tuple(x):
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
