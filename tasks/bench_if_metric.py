"""Benchmark of the instruction-following metric on ground-truth renders of held-out procedural worlds.

Renders the evaluation worlds exactly as the foundation evaluation does (`foundation_eval.render_eval_worlds`:
``train.eval`` of a profile, the training resolution and frame rate, one random (keys, mouse) action of all
9 x 9 per chunk) and prints the metric's key / mouse / joint accuracy on them, which labels fail (confusion
summary), the copy-the-last-frame baseline against chance, and the labelling speed (chunks/s).

    python -m yume.tasks.bench_if_metric --profile tiny --set 'train.eval.trajectory={step: 0.01}' --json

``--set`` takes the profile overrides of the CLI (``section.key=value``, YAML values); ``--metric`` takes
IFMetricConfig overrides as a YAML mapping; ``--chunk-frames`` defaults to the profile model's chunk.
``--calibrate-seed S`` first fits the thresholds (``calibrate_thresholds``) on other worlds (seed S,
``--calibrate-clips`` of them) and scores the evaluation worlds with the fitted ones; IFMetricConfig's defaults
came from ``--calibrate-seed 777 --calibrate-clips 48`` on the tiny profile.

``degraded`` (``--degrade``): the metric on the same ground truth with each chunk's frames (not the sharp anchor
frame before it, as a teacher-forced generated chunk follows a ground-truth frame) degraded by additive
Gaussian pixel noise or Gaussian blur, the errors a generator makes. A metric that reads the ground truth well
but loses the keys under small degradations would call a model's translation "None" although it is there.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter

import numpy as np
import yaml


DEGRADATIONS: dict[str, tuple[str, float]] = {  # name -> (kind, level: noise std in 8-bit levels / blur sigma in px)
    "noise_5": ("noise", 5.0), "noise_10": ("noise", 10.0), "blur_1": ("blur", 1.0),
}
THRESHOLDS = ("move_threshold", "axis_ratio", "lateral_ratio", "forward_gain", "yaw_threshold", "pitch_threshold")


def confusion_summary(predicted: list[tuple[str, str]], commanded: list[tuple[str, str]], top: int = 10) -> dict:
    """Per-label accuracy of keys and mouse, and the most frequent (commanded -> predicted) errors."""
    out: dict = {}
    for axis, name in ((0, "keys"), (1, "mouse")):
        per, errors = {}, Counter()
        for p, c in zip(predicted, commanded):
            ok = per.setdefault(c[axis], [0, 0])
            ok[0] += p[axis] == c[axis]
            ok[1] += 1
            if p[axis] != c[axis]:
                errors[f"{c[axis]} -> {p[axis]}"] += 1
        out[f"{name}_accuracy_by_label"] = {k: round(v[0] / v[1], 3) for k, v in sorted(per.items())}
        out[f"{name}_top_errors"] = dict(errors.most_common(top))
    return out


def degrade(frames: np.ndarray, kind: str, level: float, rng: np.random.Generator) -> np.ndarray:
    """uint8 frames [T, H, W, 3] with additive Gaussian noise (std ``level`` levels) or Gaussian blur (sigma
    ``level`` px)."""
    import cv2

    if kind == "noise":
        return np.clip(frames + rng.normal(0.0, level, frames.shape), 0, 255).round().astype(np.uint8)
    if kind == "blur":
        return np.stack([cv2.GaussianBlur(f, (0, 0), level) for f in frames])
    raise ValueError(f"unknown degradation {kind!r} (noise, blur)")


def degraded_scores(worlds, mcfg, estimator, names=tuple(DEGRADATIONS), seed: int = 0) -> dict:
    """{name: key / mouse / joint accuracy} with every chunk's frames degraded and its anchor frame kept."""
    from yume.tasks.instruction_following import label_chunks, score_labels

    L = worlds.chunk_len
    cmd = [a for clip in worlds.commanded for a in clip]
    out = {}
    for name in names:
        kind, level = DEGRADATIONS[name]
        rng = np.random.default_rng(seed)
        pred = []
        for clip in worlds.frames:
            for c in range(len(clip) // L):
                piece = clip[c * L : c * L + L + 1].copy()
                piece[1:] = degrade(piece[1:], kind, level, rng)
                pred += label_chunks(piece, L, mcfg, estimator=estimator)
        s = score_labels(pred, cmd)
        out[name] = {"key_accuracy": s.key_accuracy, "mouse_accuracy": s.mouse_accuracy,
                     "joint_accuracy": s.joint_accuracy}
    return out


def calibrated_metric(profile, chunk_len: int, base, worlds=None):
    """(IFMetricConfig with thresholds fitted on ``profile``'s evaluation worlds, joint accuracy there)."""
    from yume.datasets.training_set import frame_stride
    from yume.tasks.foundation_eval import render_eval_worlds
    from yume.tasks.instruction_following import FlowMotionEstimator, calibrate_thresholds, chunk_motions, chunk_starts

    stride = frame_stride(profile.world.fps if profile.world else 30, profile.train.fps)
    w = worlds or render_eval_worlds(profile, chunk_len, stride)
    est = FlowMotionEstimator(base)
    motions = np.concatenate([chunk_motions(clip, chunk_starts(len(clip), w.chunk_len), w.chunk_len, base, est)
                              for clip in w.frames])
    return calibrate_thresholds(motions, [a for clip in w.commanded for a in clip], base)


def run(profile, chunk_len: int, metric: dict | None = None, worlds=None, calibration_profile=None,
        degradations: tuple[str, ...] = ()) -> dict:
    from yume.datasets.training_set import frame_stride
    from yume.tasks.foundation_eval import metric_config, render_eval_worlds
    from yume.tasks.instruction_following import FlowMotionEstimator, chance_joint_accuracy, label_chunks, score_labels

    t0 = time.perf_counter()
    stride = frame_stride(profile.world.fps if profile.world else 30, profile.train.fps)
    w = worlds or render_eval_worlds(profile, chunk_len, stride)
    t_render = time.perf_counter() - t0
    mcfg = metric_config(profile, {**profile.train.eval.metric, **(metric or {})})
    calibration = None
    if calibration_profile is not None:
        mcfg, joint = calibrated_metric(calibration_profile, chunk_len, mcfg)
        e = calibration_profile.train.eval
        calibration = {"seed": e.seed, "clips": e.clips, "chunks": e.chunks, "joint_accuracy": joint}
    est = FlowMotionEstimator(mcfg)
    cmd = [a for clip in w.commanded for a in clip]
    t0 = time.perf_counter()
    pred = [lab for clip in w.frames for lab in label_chunks(clip, w.chunk_len, mcfg, estimator=est)]
    t_label = time.perf_counter() - t0
    copy = [lab for clip in w.frames
            for lab in label_chunks(np.repeat(clip[:1], len(clip), 0), w.chunk_len, mcfg, estimator=est)]
    s, c = score_labels(pred, cmd), score_labels(copy, cmd)
    return {
        "clips": int(w.frames.shape[0]), "chunks": s.chunks, "chunk_frames": w.chunk_len, "frame_stride": w.stride,
        "resolution": list(w.frames.shape[2:4]),
        "key_accuracy": s.key_accuracy, "mouse_accuracy": s.mouse_accuracy, "joint_accuracy": s.joint_accuracy,
        "if_score": s.if_score,
        "copy_last_joint_accuracy": c.joint_accuracy, "chance_joint_accuracy": chance_joint_accuracy(cmd),
        "chunks_per_second": round(s.chunks / max(t_label, 1e-9), 1),
        "render_seconds": round(t_render, 2), "label_seconds": round(t_label, 2),
        "metric": mcfg.model_dump(mode="json"), "calibration": calibration,
        "trajectory": dict(profile.train.eval.trajectory),
        "degraded": degraded_scores(w, mcfg, est, degradations) if degradations else {},
        **confusion_summary(pred, cmd),
    }


def main(argv: list[str] | None = None) -> dict:
    from yume.config import load_profile

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="profile override (repeatable)")
    ap.add_argument("--metric", default=None, help="IFMetricConfig overrides, a YAML mapping")
    ap.add_argument("--clips", type=int, default=None, help="train.eval.clips (default: the profile's, >= 24)")
    ap.add_argument("--chunks", type=int, default=None, help="train.eval.chunks (default: the profile's, >= 12)")
    ap.add_argument("--seed", type=int, default=None, help="train.eval.seed")
    ap.add_argument("--chunk-frames", type=int, default=None, help="frames per chunk (default: the model's chunk)")
    ap.add_argument("--calibrate-seed", type=int, default=None, help="fit the thresholds on worlds of this seed first")
    ap.add_argument("--calibrate-clips", type=int, default=48, help="worlds of the calibration set")
    ap.add_argument("--degrade", action="store_true", help=f"also score degraded chunks: {', '.join(DEGRADATIONS)}")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)

    sets = list(args.set)
    for key, val in (("clips", args.clips), ("chunks", args.chunks), ("seed", args.seed)):
        if val is not None:
            sets.append(f"train.eval.{key}={val}")
    with tempfile.TemporaryDirectory(prefix="ifm_bench_") as wd:
        profile = load_profile(args.profile, wd, sets)
        calib = None if args.calibrate_seed is None else load_profile(
            args.profile, wd, [*sets, f"train.eval.seed={args.calibrate_seed}", f"train.eval.clips={args.calibrate_clips}"])
    L = args.chunk_frames or int(profile.train.chunk_frames or profile.model.chunk_frames)
    res = run(profile, L, yaml.safe_load(args.metric) if args.metric else None, calibration_profile=calib,
              degradations=tuple(DEGRADATIONS) if args.degrade else ())
    if args.json:
        print(json.dumps(res, ensure_ascii=False))
    else:
        print(f"{res['clips']} clips x {res['chunks'] // res['clips']} chunks of {L} frames at "
              f"{res['resolution'][0]}x{res['resolution'][1]}, frame stride {res['frame_stride']}")
        print(f"ground truth: key {res['key_accuracy']:.3f}  mouse {res['mouse_accuracy']:.3f}  "
              f"joint {res['joint_accuracy']:.3f}  IF {res['if_score']:.3f}")
        print(f"copy-last joint {res['copy_last_joint_accuracy']:.3f}  chance {res['chance_joint_accuracy']:.3f}")
        if res["calibration"]:
            print(f"thresholds fitted on {res['calibration']}: "
                  f"{ {k: res['metric'][k] for k in THRESHOLDS} }")
        for name, d in res["degraded"].items():
            print(f"degraded {name}: key {d['key_accuracy']:.3f}  mouse {d['mouse_accuracy']:.3f}  "
                  f"joint {d['joint_accuracy']:.3f}")
        print(f"labelling: {res['chunks_per_second']} chunks/s (render {res['render_seconds']} s)")
        for k in ("keys_accuracy_by_label", "mouse_accuracy_by_label", "keys_top_errors", "mouse_top_errors"):
            print(f"{k}: {res[k]}")
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
