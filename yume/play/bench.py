"""`yume bench play`: what serving costs, measured with a scripted WebSocket client against a real server.

One run, one machine:

1. **In process** (no server): the checkpoint loaded here generates ``--inprocess-chunks`` chunks at batch 1
   (decoding included) after a warm-up -> ``inprocess_frames_per_second``.
2. **Through the server**: ``yume play`` starts as a subprocess on a free loopback port; the client opens an
   unpaced session (``?pace=0``: generate as fast as possible), changes the held keys every
   ``--change-every`` chunks along a fixed script and reads ``--chunks`` chunks.
   - ``frames_per_second``: frames received between chunk ``--rss-at`` and the last, over that time;
   - ``chunk_seconds``: the same interval per chunk;
   - ``latency_p50_s`` / ``latency_p95_s``: from sending a key message to receiving the first chunk generated
     with it (the server tags each chunk with the input ``seq`` it used);
   - ``rss_ratio_500_over_50``: the server's resident memory (``/proc/PID/status`` VmRSS) after the last chunk
     over after chunk ``--rss-at``.
Goals printed with the figures: fps >= 0.9 x in-process, p50 latency <= 2 x chunk_seconds, RSS ratio <= 1.1,
and the product goal of 16 generated frames per second.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

SCRIPT = [(["W"], []), (["D"], []), ([], ["right"]), (["S"], []), (["A"], ["up"]), (["W", "D"], []), ([], ["left"]),
          ([], []), (["W"], ["down"]), (["S", "A"], [])]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def inprocess_fps(checkpoint: str, profile, chunks: int, warmup: int, device: str) -> tuple[float, float]:
    from yume.models.sampler import WorldSampler
    from yume.play.launch import play_start

    sampler = WorldSampler.from_checkpoint(checkpoint, profile.sampler, device=device)
    start = play_start(sampler, profile, None, None)
    stream = sampler.stream(start.image[None], seed=profile.sampler.seed)
    for _ in range(warmup):
        stream.step([("W", "·")])
    t0, frames = time.perf_counter(), 0
    for i in range(chunks):
        keys, look = SCRIPT[i % len(SCRIPT)]
        frames += stream.step([("+".join(keys) or "None", "·")]).shape[1]
    seconds = time.perf_counter() - t0
    return frames / seconds, seconds / chunks


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before serving")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the server did not answer {url} within {timeout:.0f} s")


def drive(port: int, pid: int, chunks: int, rss_at: int, change_every: int) -> dict:
    """The scripted client: returns per-chunk receive times, latencies and RSS readings."""
    from websockets.sync.client import connect

    from .protocol import unpack_binary

    latencies, sent, pending = [], {}, None
    out = {"rss": {}, "times": {}, "frames": {}, "tokens": {}, "dropped": 0}
    frames_total, seq = 0, 0
    with connect(f"ws://127.0.0.1:{port}/ws?pace=0", max_size=None) as ws:
        json.loads(ws.recv())  # hello
        received = 0
        while received < chunks:
            if received % change_every == 0 and pending is None:
                seq += 1
                keys, look = SCRIPT[(seq - 1) % len(SCRIPT)]
                sent[seq] = time.perf_counter()
                ws.send(json.dumps({"type": "input", "seq": seq, "keys": keys, "look": look}))
                pending = seq
            msg = ws.recv()
            if isinstance(msg, str):
                raise RuntimeError(f"server said: {msg}")
            header, _ = unpack_binary(msg)
            now = time.perf_counter()
            received += 1
            frames_total += header["frames"]
            out["dropped"] = header["dropped_frames"]
            if pending is not None and header["seq"] >= pending:
                latencies.append(now - sent[pending])
                pending = None
            if received in (rss_at, chunks):
                out["rss"][received] = rss_mb(pid)
                out["times"][received] = now
                out["frames"][received] = frames_total
                out["tokens"][received] = header["history_tokens"]
    out["latencies"] = latencies
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="yume bench play", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="an exported model directory (the demo's distilled one)")
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--chunks", type=int, default=500)
    ap.add_argument("--rss-at", type=int, default=50)
    ap.add_argument("--change-every", type=int, default=4, help="chunks between key changes (latency samples)")
    ap.add_argument("--inprocess-chunks", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = ap.parse_args(argv)
    if not args.rss_at < args.chunks:
        ap.error("--rss-at must be below --chunks")

    from yume.config import load_profile
    from yume.play.launch import local_checkpoint

    ckpt = str(local_checkpoint(args.checkpoint))
    profile = load_profile(args.profile)
    fps_in, chunk_in = inprocess_fps(ckpt, profile, args.inprocess_chunks, args.warmup, args.device)

    port = free_port()
    cmd = [sys.executable, "-m", "yume.cli", "play", "--profile", args.profile, "--checkpoint", ckpt,
           "--port", str(port), "--device", args.device, "--max-sessions", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_ready(f"http://127.0.0.1:{port}/", proc)
        run = drive(port, proc.pid, args.chunks, args.rss_at, args.change_every)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    a, b = args.rss_at, args.chunks
    seconds = run["times"][b] - run["times"][a]
    fps = (run["frames"][b] - run["frames"][a]) / seconds
    chunk_s = seconds / (b - a)
    lat = np.array(run["latencies"])
    result = {
        "checkpoint": ckpt, "device": args.device, "cpu_count": os.cpu_count(), "chunks": b,
        "frames_per_chunk": run["frames"][b] // b,
        "frames_per_second": round(fps, 2), "inprocess_frames_per_second": round(fps_in, 2),
        "serving_ratio": round(fps / fps_in, 3), "chunk_seconds": round(chunk_s, 4),
        "inprocess_chunk_seconds": round(chunk_in, 4),
        "latency_p50_s": round(float(np.percentile(lat, 50)), 4), "latency_p95_s": round(float(np.percentile(lat, 95)), 4),
        "latency_samples": int(len(lat)),
        f"rss_mb_after_{a}": round(run["rss"][a], 1), f"rss_mb_after_{b}": round(run["rss"][b], 1),
        "rss_ratio_500_over_50": round(run["rss"][b] / run["rss"][a], 4),
        "history_tokens": {str(k): v for k, v in run["tokens"].items()}, "dropped_frames": run["dropped"],
    }
    result["goals"] = {
        "serving_ratio>=0.9": result["serving_ratio"] >= 0.9,
        "latency_p50<=2x_chunk": result["latency_p50_s"] <= 2 * chunk_s,
        "rss_ratio<=1.1": result["rss_ratio_500_over_50"] <= 1.1,
        "realtime>=16fps": fps >= 16.0,
    }
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:32s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
