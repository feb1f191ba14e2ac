"""The work behind ``pretrain_base``: the tiny base that ``train_foundation`` fine-tunes (tiny profile only).

Yume-1.5 never trains from scratch: it fine-tunes Wan2.2-TI2V-5B, which already draws moving video. The tiny
profile mirrors that with a small Wan DiT (the profile's own ``model`` preset) pretrained here, once, the way
Wan was pretrained (REFERENCE section 11): a general video model of the procedural worlds.

- Data: procedural worlds (``pretrain_base.worlds``) whose scripted actions last several chunks, so a chunk's
  history shows the motion it continues. Rows are the script's segments (labels kept in the manifest for
  inspection and class balance); the text the model sees is the scene caption, preceded for a share of the
  rows by a plain-language motion sentence (``yume.tasks.motion_captions``; no sentence of the action
  vocabulary). The action sentences themselves are never shown (``train.action_text: false``).
- Training: the derived profile (``pretrain_profile``) runs the same code as ``train_foundation``:
  ``build_training_set``'s manifest and latent/text cache, ``FoundationModule`` (T2V and I2V/continuation
  steps, long histories), the step-indexed data module, safetensors checkpoints and resume after a kill,
  all under its own work directory (``<workdir>/pretrain_base``).
- Extras: a line of progress every ``log_every_n_steps * 10`` steps, the process CPU time (the budget is in
  core-seconds: 4 hours on 2 cores = 28,800; CPU time excludes a paused process), and EMA snapshots every
  ``snapshot_every_n_steps`` for the learning curve.
- Output: the EMA weights exported in diffusers format (``config.json`` + safetensors that diffusers'
  ``WanTransformer3DModel`` loads) at ``pretrain_base.out`` (default ``model.dit_pretrained_path``), with a
  model card (``model_card.json`` + ``MODEL_CARD.md``) and the learning curve (``learning_curve.csv`` + PNG).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from pathlib import Path

log = logging.getLogger(__name__)
STAGE = "pretrain_base"
CARD_JSON = "model_card.json"
CARD_MD = "MODEL_CARD.md"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"


def pretrain_profile(profile):
    """The profile ``pretrain_base`` trains with: the same model (random init), ``train`` with
    ``pretrain_base.train`` over it and action sentences off, and a training set of only the pretraining
    worlds, all in the pretraining work directory."""
    from yume.models.train_config import SourceWeights, TrainConfig, TrainingSetConfig

    pb = profile.pretrain_base
    if pb is None:
        raise ValueError(f"profile {profile.name!r} has no `pretrain_base` section (the tiny base is a tiny-profile "
                         "stage; yume15 starts from Wan2.2-TI2V-5B)")
    if profile.model is None:
        raise ValueError("profile has no `model` section")
    work = Path(pb.workdir) if pb.workdir else profile.workdir_path / "pretrain_base"
    model = profile.model.model_copy(update={"dit_init": "random", "dit_pretrained_path": None})
    train = TrainConfig.model_validate({**profile.train.model_dump(mode="json"), **pb.train, "action_text": False})
    ts = TrainingSetConfig(stage_version=pb.stage_version, sources={"procedural": SourceWeights(i2v=1.0, t2v=1.0)},
                           use_scores=False, worlds=pb.worlds, cache=True,
                           cache_dtype=profile.training_set.cache_dtype,
                           clips_per_shard=profile.training_set.clips_per_shard)
    return profile.model_copy(update={"workdir": str(work), "model": model, "train": train, "training_set": ts})


def base_out_dir(profile) -> Path:
    from yume.models.config import resolve_model_path

    pb = profile.pretrain_base
    target = pb.out or profile.model.dit_pretrained_path
    if not target:
        raise ValueError("pretrain_base.out and model.dit_pretrained_path are both unset: nowhere to export the base")
    return resolve_model_path(target)


def captioned_rows(rows: list[dict], pb) -> list[dict]:
    """Pretraining texts: T2V and I2V captions with the motion sentence for the configured share of rows."""
    from yume.tasks.motion_captions import caption_with_motion

    out = []
    for r in rows:
        caption = r["t2v_text"]
        out.append({**r,
                    "t2v_text": caption_with_motion(caption, r["keys"], r["mouse"], r["id"] + "/t2v",
                                                    pb.motion_words_t2v_p),
                    "i2v_text": caption_with_motion(caption, r["keys"], r["mouse"], r["id"] + "/i2v",
                                                    pb.motion_words_i2v_p)})
    return out


def build_pretraining_set(pp, pb) -> dict:
    """Render and label the pretraining worlds, write their train manifest and the latent/text cache."""
    from yume.datasets.training_set import collect_training_rows, label_worlds
    from yume.models.text import TextEncoder
    from yume.tasks.build_training_set import build_cache, ensure_training_worlds, write_train_manifest

    started = time.perf_counter()
    root = ensure_training_worlds(pp)
    rows, _ = collect_training_rows(pp, captioned_rows(label_worlds(pp, root), pb))
    if not rows:
        raise ValueError(f"no pretraining rows from {root}")
    write_train_manifest(pp, rows)
    encoder = TextEncoder.from_config(pp.model.text)
    cache = build_cache(pp, rows, encoder)
    return {"rows": len(rows), "clips": cache["clips"], "texts": cache["texts"], "encoder_id": encoder.encoder_id,
            "seconds": round(time.perf_counter() - started, 2)}


# ------------------------------------------------------------------------------------------ callbacks


def _callback_base():
    import lightning as L

    return L.Callback


class ProgressAndSnapshots(_callback_base()):
    """A progress line every ``every`` steps (loss, samples/s, CPU seconds), ``progress.json`` (step, CPU and
    wall seconds over all attempts: what an export of a run in progress reports), and the EMA weights every
    ``snapshot_every`` steps as ``snapshots/step-NNNNNNN.safetensors`` (weights only, written atomically)."""

    def __init__(self, run_dir: str | Path, every: int, snapshot_every: int, batch_size: int,
                 cpu_before: float = 0.0, wall_before: float = 0.0):
        self.run_dir, self.every, self.snapshot_every = Path(run_dir), int(every), int(snapshot_every)
        self.batch_size = int(batch_size)
        self.cpu_before, self.wall_before = float(cpu_before), float(wall_before)
        self._cpu0, self._wall0 = time.process_time(), time.perf_counter()
        self._t, self._step = None, None

    def totals(self) -> tuple[float, float]:
        return (self.cpu_before + time.process_time() - self._cpu0,
                self.wall_before + time.perf_counter() - self._wall0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = int(trainer.global_step)
        if step % self.every == 0:
            now = time.perf_counter()
            rate = ""
            if self._t is not None and step > self._step:
                rate = f", {(step - self._step) * self.batch_size / (now - self._t):.1f} samples/s"
            loss = trainer.callback_metrics.get("train/loss")
            cpu, wall = self.totals()
            log.info("pretrain_base step %d: loss %.4f%s, cpu %.0f s, wall %.0f s", step,
                     float(loss) if loss is not None else float("nan"), rate, cpu, wall)
            self._t, self._step = now, step
            if trainer.is_global_zero:
                write_progress(self.run_dir, step, cpu, wall)
        if step % self.snapshot_every == 0 and trainer.is_global_zero:
            save_snapshot(pl_module.inference_model(), self.run_dir / "snapshots" / f"step-{step:07d}.safetensors")


def last_checkpoint_step(ckpt_dir: Path) -> int:
    """The step of the newest checkpoint (``last.json``), 0 when there is none."""
    from yume.tasks.train_foundation import last_checkpoint

    if last_checkpoint(ckpt_dir) is None:
        return 0
    return int(json.loads((Path(ckpt_dir) / "last.json").read_text())["step"])


def run_summary(run) -> dict:
    """What a run that is not being trained now reports (``--export-only``): ``done.json`` when it finished,
    the CPU and wall totals of ``progress.json``, and the newest checkpoint's step."""
    d = Path(run.run_dir)
    out = json.loads((d / "done.json").read_text()) if (d / "done.json").is_file() else {}
    progress = read_progress(d)
    out.update({k: progress[k] for k in ("cpu_seconds", "wall_seconds") if k in progress})
    step = last_checkpoint_step(run.ckpt_dir)
    if step:
        out["global_step"] = step
    return out


def write_progress(run_dir: Path, step: int, cpu: float, wall: float) -> None:
    tmp = Path(run_dir) / f".progress.json.{os.getpid()}"
    tmp.write_text(json.dumps({"step": step, "cpu_seconds": round(cpu, 1), "wall_seconds": round(wall, 1)}))
    tmp.replace(Path(run_dir) / "progress.json")


def read_progress(run_dir: Path) -> dict:
    """``progress.json`` of a run (the last progress line's totals), or {} (a run from before it existed)."""
    try:
        return json.loads((Path(run_dir) / "progress.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def save_snapshot(model, path: Path) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp),
              metadata={"format": "pt"})
    tmp.replace(path)
    return path


# ------------------------------------------------------------------------------------------- training


def fit_base(pp, pb, build: dict) -> tuple[object, dict]:
    """Train (or resume) the base; returns (TrainRun, summary with cpu_seconds accumulated over attempts)."""
    from yume.tasks.train_foundation import fit_local, last_checkpoint, prepare_run

    run = prepare_run(pp, build.get("encoder_id"))
    done = Path(run.run_dir) / "done.json"
    last = last_checkpoint(run.ckpt_dir)
    finished = json.loads(done.read_text()) if done.is_file() else {}
    if last is not None and finished.get("checkpoint") == str(last) and finished.get("global_step", 0) >= pp.train.max_steps:
        return run, {**finished, "cached": True}
    prev = read_progress(run.run_dir) if run.resume_from else {}
    cb = ProgressAndSnapshots(run.run_dir, pp.train.log_every_n_steps * 10, pb.snapshot_every_n_steps,
                              pp.train.batch_size, prev.get("cpu_seconds", 0.0), prev.get("wall_seconds", 0.0))
    try:
        summary = fit_local(run, extra_callbacks=[cb], progress_line=False)
    finally:  # also on an interrupt: the totals so far stay with the run
        cpu, wall = cb.totals()
        write_progress(run.run_dir, last_checkpoint_step(run.ckpt_dir), cpu, wall)
    return run, {**summary, "cpu_seconds": round(cpu, 1), "wall_seconds": round(wall, 1), "cached": False}


def machine() -> dict:
    import torch

    dev = "cuda:" + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"device": dev, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__}


# ------------------------------------------------------------------------------------- learning curve


def render_curve_worlds(pp, curve, chunk_len: int, stride: int):
    """Held-out worlds whose actions last ``segment_chunks`` chunks (one random label of all 81 per segment),
    as ``foundation_eval.EvalWorlds`` plus each clip's caption."""
    import numpy as np

    from yume.datasets.procedural import ProceduralWorldConfig, _caption, render_action_clip
    from yume.datasets.training_set import trajectory_with
    from yume.tasks.action_text import KEY_LABELS, MOUSE_LABELS
    from yume.tasks.foundation_eval import EvalWorlds

    e, t = pp.train.eval, pp.train
    base = pp.world or ProceduralWorldConfig()
    cfg = base.model_copy(update={
        "seed": curve.seed, "height": t.height, "width": t.width, "supersample": e.supersample,
        "event_probability": 0.0,
        "trajectory": trajectory_with(base.trajectory, {**e.trajectory, "jitter_scale": e.jitter_scale,
                                                        "ramp_frames": e.ramp_frames}),
    })
    rng = np.random.default_rng(curve.seed)
    frames, commanded, captions = [], [], []
    for i in range(curve.clips):
        acts = []
        while len(acts) < curve.chunks:
            acts += [(KEY_LABELS[rng.integers(9)], MOUSE_LABELS[rng.integers(9)])] * curve.segment_chunks
        clip = render_action_clip(i, cfg, acts[: curve.chunks], chunk_len * stride)
        frames.append(clip.frames[::stride])
        commanded.append([(s.keys, s.mouse) for s in clip.trajectory.script])
        captions.append(_caption(clip, cfg))
    return EvalWorlds(np.stack(frames), commanded, chunk_len, stride), captions


def continuing_chunks(commanded: list[list[tuple[str, str]]]) -> list[tuple[int, int]]:
    """(clip, chunk) pairs whose commanded action equals the previous chunk's: the history shows the motion."""
    return [(i, c) for i, acts in enumerate(commanded) for c in range(1, len(acts)) if acts[c] == acts[c - 1]]


def score_base(sampler, worlds, captions: list[str], mcfg, estimator) -> dict:
    """The base on the continuing chunks, teacher-forced (ground-truth history, the scene caption, no action
    text): key / mouse / joint accuracy of the metric's labels, the four motion gains against the ground truth,
    and the chunk MSE against the copy-last baseline's (pixels in [0, 1])."""
    import numpy as np
    import torch

    from yume.tasks.foundation_eval import _motions
    from yume.tasks.instruction_following import classify_all, motion_gains, score_labels

    L = worlds.chunk_len
    pairs = continuing_chunks(worlds.commanded)
    if not pairs:
        raise ValueError("the learning-curve worlds have no chunk whose action continues the one before: raise "
                         "pretrain_base.curve.clips, chunks or segment_chunks")
    gen, gt_mot, gen_mot, cmd = [], [], [], []
    for c in sorted({c for _, c in pairs}):
        clips = [i for i, cc in pairs if cc == c]
        hist = sampler.encode_frames(worlds.frames[clips, : 1 + c * L])
        text = sampler.text([None] * len(clips), [captions[i] for i in clips])
        g = torch.Generator(device=sampler.device).manual_seed(100 + c)
        z = sampler.denoise(sampler.latent_shape(len(clips), *worlds.frames.shape[2:4]), text, hist, g, guidance=1.0)
        out = sampler.decode_chunk(hist, z)
        for j, i in enumerate(clips):
            anchor = worlds.frames[i, c * L : c * L + 1]
            truth = worlds.frames[i, c * L : (c + 1) * L + 1]
            gen.append((out[j], truth[1:], anchor))
            gen_mot.append(_motions(np.concatenate([anchor, out[j]]), L, mcfg, estimator)[0])
            gt_mot.append(_motions(truth, L, mcfg, estimator)[0])
            cmd.append(worlds.commanded[i][c])
    s = score_labels(classify_all(np.asarray(gen_mot), mcfg), cmd)
    mse = float(np.mean([np.mean((o.astype(float) - t.astype(float)) ** 2) for o, t, _ in gen])) / 255**2
    copy = float(np.mean([np.mean((np.repeat(a, len(t), 0).astype(float) - t.astype(float)) ** 2)
                          for _, t, a in gen])) / 255**2
    gains = motion_gains(np.asarray(gen_mot), np.asarray(gt_mot))
    return {"key_accuracy": s.key_accuracy, "mouse_accuracy": s.mouse_accuracy, "joint_accuracy": s.joint_accuracy,
            "chunk_mse": mse, "copy_last_chunk_mse": copy, "chunks": len(pairs),
            **{f"motion_gain_{k}": v for k, v in gains.items()}}


def base_sampler(pp, state: dict):
    """A WorldSampler over the base's weights (``state``), Euler ``curve.steps`` steps, no guidance."""
    from yume.models.codecs import build_codec
    from yume.models.sampler import WorldSampler
    from yume.models.text import TextConditioner, TextEncoder
    from yume.models.train_config import SamplerConfig
    from yume.models.wan_dit import WanDiT

    model = WanDiT.from_config(pp.model)
    model.load_state_dict(state)
    t = pp.train
    cond = TextConditioner(TextEncoder.from_config(pp.model.text), pp.model.text, None)
    cfg = SamplerConfig(schedule="euler", steps=pp.pretrain_base.curve.steps if pp.pretrain_base else 10,
                        shift=t.t_shift, guidance=1.0)
    return WorldSampler(model, pp.model, build_codec(pp.model.codec), cond, cfg, prediction=t.prediction,
                        x0_t_min=t.x0_t_min, chunk=t.chunk_frames or pp.model.chunk_frames,
                        still_image_frames=t.still_image_frames, fps=t.fps, train_size=(t.height, t.width))


def learning_curve(pp, run_dir: str | Path) -> list[dict]:
    """One row per scored snapshot: step, smoothed training loss and ``score_base``'s figures."""
    from safetensors.torch import load_file

    from yume.datasets.training_set import frame_stride
    from yume.tasks.foundation_eval import metric_config
    from yume.tasks.instruction_following import FlowMotionEstimator

    curve = pp.pretrain_base.curve
    snaps = sorted(Path(run_dir, "snapshots").glob("step-*.safetensors"))
    if not snaps:
        return []
    chosen = snaps[:: curve.every_n_snapshots]
    if chosen[-1] != snaps[-1]:
        chosen.append(snaps[-1])
    losses = _loss_by_step(run_dir)
    stride = frame_stride(pp.world.fps if pp.world else 30, pp.train.fps)
    chunk = pp.train.chunk_frames or pp.model.chunk_frames
    worlds, captions = render_curve_worlds(pp, curve, chunk, stride)
    mcfg = metric_config(pp)
    est = FlowMotionEstimator(mcfg)
    rows = []
    for snap in chosen:
        step = int(snap.stem.split("-")[1])
        sampler = base_sampler(pp, load_file(str(snap)))
        row = {"step": step, "loss": _loss_at(losses, step), **score_base(sampler, worlds, captions, mcfg, est)}
        log.info("learning curve: %s", row)
        rows.append(row)
    return rows


def _loss_by_step(run_dir):
    import pandas as pd

    frames = [pd.read_csv(f) for f in sorted(Path(run_dir, "logs", "csv").glob("attempt-*/metrics.csv"))]
    frames = [f for f in frames if "step" in f and "train/loss" in f]
    if not frames:
        return None
    return pd.concat(frames)[["step", "train/loss"]].dropna().groupby("step")["train/loss"].mean()


def _loss_at(losses, step: int, window: int = 500) -> float | None:
    if losses is None:
        return None
    near = losses[(losses.index > step - window) & (losses.index <= step)]
    return round(float(near.mean()), 5) if len(near) else None


def plot_curve(rows: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    axes[0].plot(steps, [r["loss"] for r in rows], "o-", label="training loss")
    axes[0].set_yscale("log")
    axes[0].set_title("loss")
    axes[1].plot(steps, [r["chunk_mse"] for r in rows], "o-", label="base")
    axes[1].plot(steps, [r["copy_last_chunk_mse"] for r in rows], "--", label="copy-last")
    axes[1].set_title("continuing-chunk MSE")
    for k in ("strafe", "forward", "pitch", "yaw"):
        axes[2].plot(steps, [r[f"motion_gain_{k}"] for r in rows], "o-", label=f"gain {k}")
    axes[2].plot(steps, [r["key_accuracy"] for r in rows], "s--", label="key acc")
    axes[2].plot(steps, [r["mouse_accuracy"] for r in rows], "s--", label="mouse acc")
    axes[2].axhline(0, color="grey", lw=0.8)
    axes[2].set_title("motion gains and accuracy (continuing chunks)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------------------- export + card


def code_commit() -> str:
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_card(out: Path, pp, profile, run, summary: dict, build: dict, curve: list[dict]) -> dict:
    """``model_card.json`` + ``MODEL_CARD.md`` + ``learning_curve.csv`` / ``.png`` beside the exported weights."""
    import pandas as pd

    from yume.config import stage_hash
    from yume.datasets.manifest import file_sha256

    t = pp.train
    steps = int(summary.get("global_step") or 0)
    card = {
        "name": "yume tiny base", "stage": STAGE, "stage_version": pp.pretrain_base.stage_version,
        "architecture": "WanDiT (diffusers WanTransformer3DModel keys) + TSCM",
        "parameters": None, "weights_file": WEIGHTS_FILE, "weights_sha256": file_sha256(out / WEIGHTS_FILE),
        "encoder_id": run.encoder_id, "text": "scene captions; motion words from yume.tasks.motion_captions "
        "(no action sentence)", "action_sentences_in_pretraining": False,
        "data": {"seed": pp.training_set.worlds.seed, "worlds": pp.training_set.worlds.model_dump(mode="json"),
                 "world": pp.world.model_dump(mode="json") if pp.world else None, "rows": build.get("rows"),
                 "motion_words_t2v_p": pp.pretrain_base.motion_words_t2v_p,
                 "motion_words_i2v_p": pp.pretrain_base.motion_words_i2v_p},
        "training": {"steps": steps, "max_steps": t.max_steps, "samples": steps * t.batch_size,
                     "batch_size": t.batch_size, "lr": t.lr, "i2v_fraction": t.i2v_fraction,
                     "long_history_p": t.long_history_p, "long_history_frames": list(t.long_history_frames),
                     "wall_seconds": summary.get("wall_seconds"), "cpu_seconds": summary.get("cpu_seconds"),
                     "budget_cpu_seconds": 4 * 3600 * 2, "stopped_by": summary.get("stopped_by"),
                     "complete": steps >= t.max_steps},
        "machine": machine(), "code_commit": code_commit(), "config_hash": stage_hash(profile, "model", "pretrain_base"),
        "run_hash": run.run_hash, "data_hash": run.data_hash,
        "learning_curve": {"csv": "learning_curve.csv", "png": "learning_curve.png",
                           "last": curve[-1] if curve else None},
    }
    from yume.models.wan_dit import load_safetensors_dir

    card["parameters"] = int(sum(v.numel() for v in load_safetensors_dir(out).values()))
    if curve:
        pd.DataFrame(curve).to_csv(out / "learning_curve.csv", index=False)
        plot_curve(curve, out / "learning_curve.png")
    (out / CARD_JSON).write_text(json.dumps(card, indent=1, ensure_ascii=False))
    (out / CARD_MD).write_text(card_markdown(card))
    return card


def card_markdown(card: dict) -> str:
    tr, last = card["training"], card["learning_curve"]["last"] or {}
    lines = [
        f"# {card['name']}", "",
        "A small Wan DiT (this project's `WanDiT` + TSCM, diffusers `WanTransformer3DModel` keys) pretrained as a "
        "general video model of the procedural worlds: T2V and I2V/continuation steps with scene captions, some "
        "stating the camera motion in plain words. It has never seen the action sentences: `train_foundation` "
        "fine-tunes it on them, as Yume-1.5 fine-tunes Wan2.2-TI2V-5B.", "",
        f"- weights: `{card['weights_file']}` sha256 `{card['weights_sha256']}`, {card['parameters']:,} parameters",
        f"- text encoder: `{card['encoder_id']}`",
        f"- steps: {tr['steps']:,} of {tr['max_steps']:,} ({'complete' if tr['complete'] else 'in progress'}), "
        f"{tr['samples']:,} samples, batch {tr['batch_size']}, lr {tr['lr']}",
        f"- CPU time: {tr['cpu_seconds']} s (budget {tr['budget_cpu_seconds']:,} s = 4 h on 2 cores); wall: "
        f"{tr['wall_seconds']} s",
        f"- machine: {card['machine']['device']}, {card['machine']['cpu_count']} cores, torch {card['machine']['torch']}",
        f"- data: worlds seed {card['data']['seed']}, {card['data']['rows']} script segments; code "
        f"`{card['code_commit']}`, config hash `{card['config_hash']}`", "",
        "## Learning curve (held-out worlds, chunks whose action continues the history's)", "",
        "![learning curve](learning_curve.png)", "",
    ]
    if last:
        lines += [f"Last snapshot (step {last['step']}): key {last['key_accuracy']:.3f}, mouse "
                  f"{last['mouse_accuracy']:.3f}, joint {last['joint_accuracy']:.3f}; motion gains strafe "
                  f"{last['motion_gain_strafe']:.2f}, forward {last['motion_gain_forward']:.2f}, pitch "
                  f"{last['motion_gain_pitch']:.2f}, yaw {last['motion_gain_yaw']:.2f}; chunk MSE "
                  f"{last['chunk_mse']:.4f} vs copy-last {last['copy_last_chunk_mse']:.4f}.", ""]
    return "\n".join(lines)


def export_base(pp, run, out: Path) -> Path:
    """The newest checkpoint's EMA weights as a diffusers-format directory at ``out`` (atomic replace), recording
    the schedule the learning curve samples it with (Euler, no guidance: a base has no unconditional use)."""
    from yume.tasks.train_foundation import export_final, last_checkpoint

    last = last_checkpoint(run.ckpt_dir)
    if last is None:
        raise ValueError(f"{run.ckpt_dir}: no checkpoint to export")
    return export_final(last, out, sampler={"schedule": "euler", "steps": pp.pretrain_base.curve.steps,
                                            "shift": pp.train.t_shift, "guidance": 1.0})
