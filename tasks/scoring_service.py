"""A scorer in another Python environment, driven over stdin/stdout: how Ray actors reach vbench.

vbench lives in `.venv-vbench` (its pins must never reach the main environment, and it has no Ray), so the
score_and_filter actor that declares the GPU starts this module there once, as a long-lived child process:

    .venv-vbench/bin/python -m yume.tasks.scoring_service --scorer vbench --device cuda [--weights random]

and keeps it for its lifetime, so vbench's models load once per actor. Protocol: one JSON object per line.
Request ``{"npy": "/path/frames.npy", "fps": 16.0}`` (uint8 (T, H, W, 3) RGB, written by the caller);
reply ``{"ok": true, "scores": {dimension: value}}`` or ``{"ok": false, "error": "..."}``. The first line the
service prints is ``{"ready": true, "scorer": ..., "dimensions": [...]}`` (or ``{"ready": false, "error"}``).
Logs go to stderr. This module imports only numpy and the scorer it serves (no Ray, Prefect or torch at
import), so it runs in either environment; tests drive it with ``--scorer lite`` from the main one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def _build(scorer: str, device: str | None, dimensions: list[str] | None, weights: str = "cache"):
    if scorer == "lite":
        from yume.tasks.scoring_lite import LiteScorer

        if weights != "cache":
            raise ValueError(f"--weights {weights} applies to the vbench scorer only")

        s = LiteScorer()
        return lambda fps: s, s.name, list(s.dimensions)
    from yume.tasks.scoring_vbench import VBENCH_DIMENSIONS, VBenchScorer

    dims = tuple(dimensions or VBENCH_DIMENSIONS)
    first = VBenchScorer(dims, device=device, fps=16.0, weights=weights)  # loads (or builds) every model once
    by_fps = {16.0: first}

    def for_fps(fps: float):
        if fps not in by_fps:
            by_fps[fps] = VBenchScorer(dims, device=first.device, fps=fps, models=first.models, weights=weights)
        return by_fps[fps]

    return for_fps, first.name, list(dims)


def serve(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m yume.tasks.scoring_service")
    p.add_argument("--scorer", choices=["lite", "vbench"], required=True)
    p.add_argument("--device", default=None)
    p.add_argument("--dimensions", default=None, help="comma-separated vbench dimensions (default: all six)")
    p.add_argument("--weights", choices=["cache", "random"], default="cache",
                   help="vbench backbones: the real weights from the cache, or random-init (values not meaningful)")
    args = p.parse_args(argv)
    out = sys.stdout
    try:
        scorer_for, name, dims = _build(args.scorer, args.device, args.dimensions.split(",") if args.dimensions else None,
                                        args.weights)
    except Exception as e:  # noqa: BLE001 - reported to the parent, which quarantines nothing and fails
        out.write(json.dumps({"ready": False, "error": f"{type(e).__name__}: {e}"}) + "\n")
        out.flush()
        return 1
    out.write(json.dumps({"ready": True, "scorer": name, "dimensions": dims}) + "\n")
    out.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            frames = np.load(req["npy"], allow_pickle=False)
            scores = scorer_for(float(req.get("fps", 16.0))).score(frames)
            reply = {"ok": True, "scores": {k: float(v) for k, v in scores.items()}}
        except Exception as e:  # noqa: BLE001 - one video's failure is that video's
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"[:1000]}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    return 0


class SubprocessScorer:
    """The `VideoScorer` interface over a `serve` child process running in ``python`` (another venv)."""

    def __init__(self, python: str, scorer: str, device: str | None = None, dimensions: list[str] | None = None,
                 fps: float = 16.0, env: dict | None = None, weights: str = "cache"):
        if not Path(python).is_file():
            raise FileNotFoundError(f"scorer interpreter {python!r} does not exist (scripts/setup_vbench_env.sh)")
        cmd = [python, "-m", "yume.tasks.scoring_service", "--scorer", scorer]
        if device:
            cmd += ["--device", device]
        if dimensions:
            cmd += ["--dimensions", ",".join(dimensions)]
        if weights != "cache":
            cmd += ["--weights", weights]
        self.fps = fps
        self._tmp = tempfile.TemporaryDirectory(prefix="yume-score-")
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                      env={**os.environ, **(env or {})})
        hello = json.loads(self._proc.stdout.readline() or '{"ready": false, "error": "no answer"}')
        if not hello.get("ready"):
            self.close()
            raise RuntimeError(f"scoring service failed to start: {hello.get('error')}")
        self.name = hello["scorer"]
        self.dimensions = tuple(hello["dimensions"])
        self.is_vbench = scorer == "vbench"

    def score(self, frames: np.ndarray, fps: float | None = None) -> dict[str, float]:
        if self._proc.poll() is not None:
            raise RuntimeError(f"scoring service exited with code {self._proc.returncode}")
        path = Path(self._tmp.name) / "frames.npy"
        np.save(path, np.ascontiguousarray(frames, dtype=np.uint8))
        self._proc.stdin.write(json.dumps({"npy": str(path), "fps": fps or self.fps}) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"scoring service died (exit code {self._proc.poll()})")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise RuntimeError(reply.get("error", "scoring failed"))
        return reply["scores"]

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._tmp.cleanup()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


if __name__ == "__main__":
    sys.exit(serve())
