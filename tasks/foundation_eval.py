"""Does the trained world model follow the commands? Held-out procedural worlds, scored with the
instruction-following metric (``yume.tasks.instruction_following``).

Held-out worlds (``train.eval``): ``clips`` worlds of seed ``eval.seed`` (never trained on), rendered at the
training resolution with one random (keys, mouse) action of all 9 x 9 per chunk (clean motion: no jitter,
one-frame ramps), ``chunks`` chunks each, at the training frame rate. Figures:

- ``metric_ceiling_joint_accuracy``: the metric on the ground-truth renders (its own ceiling);
- ``joint_accuracy`` / ``if_score`` (+ key, mouse): every chunk generated from the ground-truth history before
  it (the first chunk from the image alone), clips x chunks chunks;
- ``rollout_joint_accuracy``: ``chunks``-chunk autoregressive rollouts from the first frame (own history);
- ``copy_last_joint_accuracy``: the first frame repeated (copy-the-last-frame baseline);
- ``no_action_joint_accuracy``: the same model sampled with the empty-text embedding (no action input);
- ``first_chunk_mse`` / ``copy_last_first_chunk_mse``: the rollout's first chunk against the ground-truth
  render, and the repeated first frame against it (pixels in [0, 1]);
- ``chance_joint_accuracy``: the best constant label under the evaluation's action distribution;
- ``motion_gain_{strafe,forward,pitch,yaw}``: how much of the ground truth's camera motion the teacher-forced
  chunks draw, per axis (``instruction_following.motion_gains``: 1 = all of it, 0 = none), which says what
  the model has learned where the labels only say right or wrong.

Chunks are scored on the frame before them plus their frames (the metric's anchor). The metric runs with its
calibrated defaults (``IFMetricConfig``: thresholds fitted on ground-truth renders at the training frame rate,
``pair_gap`` 1 strided frame) unless ``eval.metric`` overrides them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class EvalWorlds:
    frames: np.ndarray  # [clips, 1 + chunks * L, H, W, 3]
    commanded: list[list[tuple[str, str]]]  # per clip, per chunk (as rendered: pitch flips applied)
    chunk_len: int
    stride: int


def render_eval_worlds(profile, chunk_len: int, stride: int) -> EvalWorlds:
    from yume.datasets.procedural import ProceduralWorldConfig, render_action_clip
    from yume.datasets.training_set import trajectory_with
    from yume.tasks.action_text import KEY_LABELS, MOUSE_LABELS

    e, t = profile.train.eval, profile.train
    base = profile.world or ProceduralWorldConfig()
    cfg = base.model_copy(update={
        "seed": e.seed, "height": t.height, "width": t.width, "supersample": e.supersample, "event_probability": 0.0,
        "trajectory": trajectory_with(base.trajectory, {**e.trajectory, "jitter_scale": e.jitter_scale,
                                                        "ramp_frames": e.ramp_frames}),
    })
    rng = np.random.default_rng(e.seed)
    frames, commanded = [], []
    for i in range(e.clips):
        acts = [(KEY_LABELS[rng.integers(9)], MOUSE_LABELS[rng.integers(9)]) for _ in range(e.chunks)]
        clip = render_action_clip(i, cfg, acts, chunk_len * stride)
        frames.append(clip.frames[::stride])
        commanded.append([(s.keys, s.mouse) for s in clip.trajectory.script])
    return EvalWorlds(np.stack(frames), commanded, chunk_len, stride)


def metric_config(profile, overrides: dict | None = None):
    """The IF metric's configuration for ``profile``'s worlds: its calibrated defaults, the worlds' field of view,
    then ``overrides`` (default ``train.eval.metric``).

    The thresholds are per frame of the clip as scored (the training frame rate), calibrated with ``pair_gap``
    1; scaling the gap by the render stride halves the measured motion per pair at stride 2 and dropped the
    metric's own ceiling on ground-truth renders from 0.86 to 0.57 (tests/test_instruction_following.py)."""
    from yume.tasks.instruction_following import IFMetricConfig

    over = dict(profile.train.eval.metric if overrides is None else overrides)
    over.setdefault("fov_deg", (profile.world.fov_deg if profile.world else 70.0))
    return IFMetricConfig(**over)


def _motions(frames: np.ndarray, chunk_len: int, mcfg, estimator) -> np.ndarray:
    """(chunks, 6) camera motion of each whole chunk after the first frame (the metric's chunks)."""
    from yume.tasks.instruction_following import chunk_motions, chunk_starts

    return chunk_motions(frames, chunk_starts(len(frames), chunk_len), chunk_len, mcfg, estimator)


def _labels(frames: np.ndarray, chunk_len: int, mcfg, estimator) -> list[tuple[str, str]]:
    from yume.tasks.instruction_following import classify_all

    return classify_all(_motions(frames, chunk_len, mcfg, estimator), mcfg)


def evaluate(profile, sampler, worlds: EvalWorlds | None = None, guidance: float | None = None) -> dict:
    """All the figures of the module docstring (plus timings)."""
    from yume.datasets.training_set import frame_stride
    from yume.tasks.instruction_following import (FlowMotionEstimator, chance_joint_accuracy, classify_all,
                                                  motion_gains, score_labels)

    started = time.perf_counter()
    e = profile.train.eval
    L = sampler.chunk * sampler.codec.temporal_factor
    stride = frame_stride(profile.world.fps if profile.world else 30, profile.train.fps)
    w = worlds or render_eval_worlds(profile, L, stride)
    mcfg = metric_config(profile)
    est = FlowMotionEstimator(mcfg)
    n, C = w.frames.shape[0], len(w.commanded[0])
    cmd = [a for clip in w.commanded for a in clip]
    t_render = time.perf_counter() - started

    def score(pred):
        return score_labels(pred, cmd)

    gt_motion = np.concatenate([_motions(w.frames[i], L, mcfg, est) for i in range(n)])  # clip-major, as cmd
    gt = classify_all(gt_motion, mcfg)
    copy = [lab for i in range(n) for lab in _labels(np.repeat(w.frames[i][:1], len(w.frames[i]), 0), L, mcfg, est)]

    # Teacher-forced: chunk c from the ground-truth frames before it (batched over clips), with and without actions.
    t0 = time.perf_counter()
    tf_frames = {True: np.zeros_like(w.frames[:, 1:]), False: np.zeros_like(w.frames[:, 1:])}
    for c in range(C):
        hist = w.frames[:, : 1 + c * L]
        acts = [w.commanded[i][c] for i in range(n)]
        for use in (True, False):
            out = []
            for b0 in range(0, n, e.batch_size):
                out.append(sampler.next_chunk(hist[b0 : b0 + e.batch_size], acts[b0 : b0 + e.batch_size],
                                              seed=1000 * c + b0 + (0 if use else 7), guidance=guidance, use_actions=use))
            tf_frames[use][:, c * L : (c + 1) * L] = np.concatenate(out)
    tf_motion = {True: [], False: []}
    for i in range(n):
        for c in range(C):
            for use in (True, False):
                clip = np.concatenate([w.frames[i, c * L : c * L + 1], tf_frames[use][i, c * L : (c + 1) * L]])
                tf_motion[use].append(_motions(clip, L, mcfg, est)[0])
    tf_labels, na_labels = (classify_all(np.asarray(tf_motion[use]), mcfg) for use in (True, False))
    t_tf = time.perf_counter() - t0

    # Rollouts from the first frame, own history.
    t0 = time.perf_counter()
    roll = []
    for b0 in range(0, n, e.batch_size):
        roll.append(sampler.generate(w.commanded[b0 : b0 + e.batch_size], images=w.frames[b0 : b0 + e.batch_size, 0],
                                     seed=b0, guidance=guidance))
    roll = np.concatenate(roll)
    roll_labels = [lab for i in range(n) for lab in _labels(roll[i], L, mcfg, est)]
    t_roll = time.perf_counter() - t0

    gt01 = w.frames[:, 1 : 1 + L].astype(np.float64) / 255
    first_mse = float(np.mean((roll[:, 1 : 1 + L].astype(np.float64) / 255 - gt01) ** 2))
    copy_mse = float(np.mean((np.repeat(w.frames[:, :1], L, 1).astype(np.float64) / 255 - gt01) ** 2))
    tf_s = score(tf_labels)
    out = {
        "joint_accuracy": tf_s.joint_accuracy, "if_score": tf_s.if_score, "key_accuracy": tf_s.key_accuracy,
        "mouse_accuracy": tf_s.mouse_accuracy, "chunks": tf_s.chunks,
        "rollout_joint_accuracy": score(roll_labels).joint_accuracy, "rollout_if_score": score(roll_labels).if_score,
        "rollout_chunks": C,
        "metric_ceiling_joint_accuracy": score(gt).joint_accuracy, "metric_ceiling_if_score": score(gt).if_score,
        "copy_last_joint_accuracy": score(copy).joint_accuracy,
        "no_action_joint_accuracy": score(na_labels).joint_accuracy,
        "chance_joint_accuracy": chance_joint_accuracy(cmd),
        "first_chunk_mse": first_mse, "copy_last_first_chunk_mse": copy_mse,
        **{f"motion_gain_{k}": v for k, v in motion_gains(np.asarray(tf_motion[True]), gt_motion).items()},
        "eval_clips": n, "eval_chunk_frames": L, "eval_frame_stride": w.stride,
        "eval_guidance": sampler.cfg.guidance if guidance is None else guidance,
        "eval_seconds": round(time.perf_counter() - started, 2), "eval_render_seconds": round(t_render, 2),
        "eval_teacher_forced_seconds": round(t_tf, 2), "eval_rollout_seconds": round(t_roll, 2),
    }
    out["_rollouts"] = roll
    out["_ground_truth"] = w.frames
    return out
