"""`yume bench tscm`: does a chunk's cost stay flat as the history grows? TSCM against full context.

For history lengths of 1..N chunks (default 1, 2, 4, 8, 12, 16, 24, 32), one chunk's DiT forward and a
few-step generation (4 Euler steps) are timed with TSCM and with the full-context baseline (every history
frame at the fine patch (1,2,2), no channel branch), both with the same weights. Reported per point: history
tokens, z_linear tokens, total tokens, estimated FLOPs (analytic: linear layers, attention, embeddings), and
the median time over ``--repeats`` runs. The summary gives time(32 chunks) / time(8 chunks) for both
(the paper: flat beyond 8 chunks; targets: TSCM <= 1.15, full >= 1.5).

Timing is made stable by pinning torch to one thread (``--threads``), warming up, and taking medians.
Defaults: the tiny model profile on CPU, a 16x16 latent grid (64 px through the patch codec), 512 text
tokens. ``--profile yume15 --device cuda --dtype bfloat16 --height 34 --width 60`` runs the 5B config at
544x960 with random weights (peak memory and frames per second added; VAE decode not included).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import torch

from .config import MODEL_CONFIGS, TSCMConfig, WanDiTConfig
from .tscm import channel_token_count, history_token_count, plan_history, tokens_per_frame
from .wan_dit import WanDiT

DEFAULT_POINTS = (1, 2, 4, 8, 12, 16, 24, 32)
STEPS = (1.0, 0.75, 0.5, 0.25)  # few-step schedule (sigma); Yume infers with 4 steps


def estimate_flops(cfg: WanDiTConfig, n_hist: int, n_pred: int, n_text: int, n_z: int = 0,
                   branch_channels: int = 0, branch_heads: int = 1, branch_blocks: int = 0,
                   embed_flops: float = 0.0) -> float:
    """Forward FLOPs (2 per multiply-add) of one DiT pass over ``n_hist + n_pred`` tokens."""
    d, ffn, n = cfg.inner_dim, cfg.ffn_dim, n_hist + n_pred
    layer = (2 * n * 4 * d * d            # self-attention q, k, v, out
             + 4 * n * n * d              # scores and weighted values
             + 2 * n * 2 * d * d          # cross-attention q, out
             + 2 * n_text * 2 * d * d     # cross-attention k, v
             + 4 * n * n_text * d         # cross-attention scores and values
             + 2 * n * 2 * d * ffn)       # feed-forward
    flops = cfg.num_layers * layer
    if branch_blocks and n_z:
        c, dh, seq = branch_channels, branch_channels // branch_heads, n_pred + n_z
        branch = (2 * n_pred * d * c * 2        # down + up
                  + 2 * n_pred * c * c          # q
                  + 2 * seq * c * c * 2         # k, v
                  + 2 * seq * c * dh            # sum_j k_j v_j^T
                  + 2 * n_pred * c * dh * 2)    # numerator + normaliser
        flops += branch_blocks * branch
    flops += 2 * n_pred * d * cfg.out_channels * math.prod(cfg.patch_size)  # output head
    flops += 2 * n_text * (cfg.text_dim * d + d * d)                         # text projection
    return flops + embed_flops


def _embed_flops(model: WanDiT, n_frames: int, h: int, w: int, n_pred: int) -> tuple[float, int, int]:
    """Patch-embedding FLOPs, history tokens and z_linear tokens for ``n_frames`` history frames."""
    cfg, tscm = model.config, model.tscm_config
    d, c_in = cfg.inner_dim, cfg.in_channels
    flops = 2 * n_pred * c_in * math.prod(cfg.patch_size) * d
    groups = plan_history(n_frames, tscm, cfg.patch_size)
    for g in groups:
        flops += 2 * len(g.sources) * tokens_per_frame(g.kernel, h, w) * c_in * math.prod(g.kernel) * d
    n_hist = history_token_count(groups, h, w)
    n_z = 0
    if model.tscm is not None and model.tscm.channel_embedding is not None and n_frames:
        n_z = channel_token_count(n_frames, h, w, tscm.channel)
        flops += 2 * n_z * c_in * math.prod(tscm.channel.patch) * tscm.channel.channels
    return flops, n_hist, n_z


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _median_time(fn, repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()
def _generate(model: WanDiT, noise: torch.Tensor, text: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
    """Few-step Euler sampling of one chunk (rectified flow, velocity = noise - x0)."""
    x = noise
    sigmas = list(STEPS) + [0.0]
    t = torch.empty(x.shape[0], device=x.device)
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        v = model(x, t.fill_(1000.0 * s), text, history=history)
        x = x + (s_next - s) * v
    return x


def run(points: list[int], profile: str = "tiny", height: int = 16, width: int = 16, chunk_frames: int | None = None,
        text_tokens: int = 512, repeats: int = 5, gen_repeats: int = 3, device: str = "cpu",
        dtype: torch.dtype = torch.float32, modes: tuple[str, ...] = ("tscm", "full"), seed: int = 0,
        tiers: str | None = None, log=None) -> dict:
    """Time both models at every history length in ``points`` (chunks); returns the rows and the ratios."""
    cfg = MODEL_CONFIGS[profile]()
    if tiers is not None:
        cfg.tscm = TSCMConfig(**{**cfg.tscm.model_dump(), "tiers": tiers})
    chunk = chunk_frames or cfg.chunk_frames
    dev = torch.device(device)
    torch.manual_seed(seed)
    init_device = "meta" if profile != "tiny" and dev.type != "cpu" else "cpu"
    models = {}
    with torch.device(init_device):
        base = WanDiT(cfg.dit, cfg.tscm)
    if init_device == "meta":
        base = base.to_empty(device=dev)
        for p in base.parameters():
            torch.nn.init.normal_(p, std=0.02)
        base.init_tscm_params()
    models["tscm"] = base.to(dev, dtype).eval()
    if "full" in modes:
        with torch.device("meta"):
            full = WanDiT(cfg.dit, TSCMConfig(enabled=False))
        full.load_state_dict({k: v for k, v in base.state_dict().items() if k in full.state_dict()}, assign=True)
        models["full"] = full.eval()
    c_in = cfg.dit.in_channels
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(1, text_tokens, cfg.dit.text_dim, generator=g).to(dev, dtype)
    noise = torch.randn(1, c_in, chunk, height, width, generator=g).to(dev, dtype)
    n_pred = chunk * tokens_per_frame(cfg.dit.patch_size, height, width)
    n_branch = sum(b.channel_branch is not None for b in models["tscm"].blocks)
    rows = []
    for mode in modes:
        model = models[mode]
        warm = torch.randn(1, c_in, chunk * points[0], height, width, generator=g).to(dev, dtype)
        with torch.no_grad():
            model(noise, torch.full((1,), 500.0, device=dev), text, history=warm)  # warm-up
        for n in points:
            frames = n * chunk
            history = torch.randn(1, c_in, frames, height, width, generator=g).to(dev, dtype)
            embed, n_hist, n_z = _embed_flops(model, frames, height, width, n_pred)
            ccfg = cfg.tscm.channel
            flops = estimate_flops(cfg.dit, n_hist, n_pred, text_tokens, n_z if mode == "tscm" else 0,
                                   ccfg.channels, ccfg.heads, n_branch if mode == "tscm" else 0, embed)
            t_step = torch.full((1,), 500.0, device=dev)

            def forward():
                with torch.no_grad():
                    model(noise, t_step, text, history=history)

            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            fwd = _median_time(forward, repeats, dev)
            gen = _median_time(lambda: _generate(model, noise, text, history), gen_repeats, dev)
            row = {"mode": mode, "history_chunks": n, "history_frames": frames, "history_tokens": n_hist,
                   "z_linear_tokens": n_z if mode == "tscm" else 0, "tokens": n_hist + n_pred,
                   "gflops": round(flops / 1e9, 3), "forward_s": round(fwd, 5), "generate_s": round(gen, 5),
                   "steps": len(STEPS)}
            if dev.type == "cuda":
                row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                row["frames_per_second"] = round(chunk * (4 if profile == "yume15" else 1) / gen, 2)
            rows.append(row)
            if log:
                log(row)
    result = {"benchmark": "tscm", "profile": profile, "device": str(dev), "dtype": str(dtype).replace("torch.", ""),
              "threads": torch.get_num_threads(), "latent_grid": [height, width], "chunk_frames": chunk,
              "tiers": [list(t) for t in cfg.tscm.tiers], "prediction_tokens": n_pred, "text_tokens": text_tokens, "repeats": repeats, "rows": rows}
    for mode in modes:
        by_n = {r["history_chunks"]: r for r in rows if r["mode"] == mode}
        if 8 in by_n and 32 in by_n:
            result[f"{mode}_ratio_32_over_8"] = round(by_n[32]["forward_s"] / by_n[8]["forward_s"], 3)
            result[f"{mode}_generate_ratio_32_over_8"] = round(by_n[32]["generate_s"] / by_n[8]["generate_s"], 3)
            result[f"{mode}_token_ratio_32_over_8"] = round(by_n[32]["tokens"] / by_n[8]["tokens"], 3)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="yume bench tscm", description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="last stdout line: one JSON object")
    p.add_argument("--max-history", type=int, default=32, help="largest history, in chunks")
    p.add_argument("--points", default=None, help="comma-separated history lengths (chunks); default "
                   "1,2,4,8,12,16,24,32 up to --max-history; 'all' = every length 1..max")
    p.add_argument("--profile", default="tiny", choices=sorted(MODEL_CONFIGS))
    p.add_argument("--height", type=int, default=16, help="latent grid height")
    p.add_argument("--width", type=int, default=16, help="latent grid width")
    p.add_argument("--chunk-frames", type=int, default=None, help="latent frames per chunk (profile default)")
    p.add_argument("--text-tokens", type=int, default=512)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--gen-repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 for stable timing)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--tiers", default=None, help="tier preset overriding the profile's (paper, public, ...)")
    p.add_argument("--tscm-only", action="store_true", help="skip the full-context baseline")
    args = p.parse_args(argv)

    if args.points == "all":
        points = list(range(1, args.max_history + 1))
    elif args.points:
        points = sorted({int(x) for x in args.points.split(",")})
    else:
        points = sorted({n for n in DEFAULT_POINTS if n <= args.max_history} | {args.max_history})
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        log = None if args.json else (lambda r: print(
            f"{r['mode']:5s} {r['history_chunks']:3d} chunks  tokens {r['tokens']:6d}  {r['gflops']:9.2f} GFLOP  "
            f"forward {r['forward_s'] * 1e3:9.1f} ms  generate({r['steps']}) {r['generate_s'] * 1e3:9.1f} ms",
            flush=True))
        result = run(points, args.profile, args.height, args.width, args.chunk_frames, args.text_tokens, args.repeats,
                     args.gen_repeats, args.device, getattr(torch, args.dtype),
                     ("tscm",) if args.tscm_only else ("tscm", "full"), tiers=args.tiers, log=log)
    finally:
        torch.set_num_threads(threads)
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        for key in sorted(k for k in result if "ratio" in k):
            print(f"{key}: {result[key]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
