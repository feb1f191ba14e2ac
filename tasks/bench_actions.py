"""`yume bench actions`: throughput of the camera -> action conversion on one core.

Builds a long jittered trajectory (default 1M frames, tiled from scripted segments), pins the process
to one CPU, and times the full ``trajectory_to_actions`` (validation, labels, segments with their speed
figures) for the robust rule, plus the public rule for comparison. Best of ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from yume.datasets.trajectory import TrajectoryConfig, scripted_trajectory
from yume.tasks.actions import ActionConfig, trajectory_to_actions


def long_trajectory(n_frames: int, seed: int = 0) -> np.ndarray:
    """Jittered trajectory of ``n_frames``, tiled from one 20k-frame scripted trajectory (the jumps at
    the seams cost nothing extra and do not matter for throughput)."""
    tile = scripted_trajectory(20_000, np.random.default_rng(seed), TrajectoryConfig()).c2w
    reps = -(-n_frames // len(tile))
    return np.concatenate([tile] * reps)[:n_frames].copy()


def _time(c2w: np.ndarray, cfg: ActionConfig, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        trajectory_to_actions(c2w, cfg)
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="yume bench actions")
    p.add_argument("--frames", type=int, default=1_000_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, as the target says
    c2w = long_trajectory(args.frames)
    robust = _time(c2w, ActionConfig(mode="robust"), args.repeats)
    public = _time(c2w, ActionConfig(mode="yume"), args.repeats)
    result = {
        "benchmark": "actions",
        "frames": args.frames,
        "cores": 1,
        "frames_per_second": round(args.frames / robust),
        "seconds": round(robust, 4),
        "yume_mode_frames_per_second": round(args.frames / public),
    }
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        print(f"robust: {result['frames_per_second']:,} frames/s ({robust:.3f} s for {args.frames:,} frames, 1 core)")
        print(f"yume:   {result['yume_mode_frames_per_second']:,} frames/s")
    return 0
