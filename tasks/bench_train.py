"""`yume bench train`: foundation-training throughput of one training step (forward, backward, AdamW).

The step is ``FoundationModule``'s own (``flow_loss`` -> backward -> gradient clipping -> AdamW -> EMA) on a
synthetic latent batch of the training shapes (a chunk plus a history of ``--history`` latent frames, the
text budget of the profile), so no data loading is timed. Reported: median step time, samples/s, tokens/s
(prediction tokens of the chunk; history tokens listed separately), and the analytic model FLOPs per step
(3 x forward: the forward FLOPs of ``yume.models.bench_tscm.estimate_flops``).

- ``tiny`` on CPU (default): the project's throughput figure.
- ``--profile yume15 --device cuda``: the 5B config at 544x960 (a 34x60 latent grid, 8-frame chunk) in bf16
  autocast with activation checkpointing, plus model FLOPs utilisation (MFU) against the bf16 matrix rate
  measured on the same device in the same run (a large bf16 matmul), i.e. ``achieved / measured peak``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from yume.models.bench_tscm import _sync


def measured_matmul_rate(device: torch.device, dtype: torch.dtype, n: int = 8192, repeats: int = 10) -> float:
    """FLOP/s of an n x n x n matmul on this device (the practical peak MFU is measured against)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - t0)


def step_flops(model, cfg, history_frames: int, height: int, width: int, chunk: int, text_tokens: int) -> dict:
    """Analytic training FLOPs of one sample (3 x forward) and its token counts."""
    from yume.models.bench_tscm import _embed_flops, estimate_flops
    from yume.models.tscm import tokens_per_frame

    n_pred = chunk * tokens_per_frame(cfg.dit.patch_size, height, width)
    embed, n_hist, n_z = _embed_flops(model, history_frames, height, width, n_pred)
    n_branch = sum(b.channel_branch is not None for b in model.blocks)
    c = cfg.tscm.channel
    fwd = estimate_flops(cfg.dit, n_hist, n_pred, text_tokens, n_z, c.channels, c.heads, n_branch, embed)
    return {"prediction_tokens": n_pred, "history_tokens": n_hist, "z_linear_tokens": n_z, "train_flops": 3 * fwd}


def run(profile: str = "tiny", batch: int = 32, history: int = 4, height: int | None = None, width: int | None = None,
        steps: int = 20, warmup: int = 3, device: str = "cpu", bf16: bool = False, checkpointing: bool = False,
        threads: int | None = None, text_tokens: int | None = None, log=None) -> dict:
    from yume.models.config import MODEL_CONFIGS
    from yume.models.foundation import FoundationModule
    from yume.models.train_config import TrainConfig

    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    cfg = MODEL_CONFIGS[profile]().model_copy(update={"dit_init": "random"})  # a shape benchmark: no weights
    chunk = cfg.chunk_frames
    h = height or (8 if profile == "tiny" else 34)
    w = width or (8 if profile == "tiny" else 60)
    n_text = text_tokens or cfg.text.max_length
    tcfg = TrainConfig(batch_size=batch, lr=1e-4, warmup_steps=0, history_noise_p=0.2, activation_checkpointing=checkpointing)
    torch.manual_seed(0)
    module = FoundationModule(cfg.model_dump(mode="json"), tcfg.model_dump(mode="json")).to(dev)
    module.train()
    opt = torch.optim.AdamW(module.model.parameters(), lr=tcfg.lr, betas=tcfg.betas, weight_decay=tcfg.weight_decay)
    g = torch.Generator().manual_seed(0)
    c_in = cfg.dit.in_channels
    batch_data = {
        "span": torch.randn(batch, c_in, history + chunk, h, w, generator=g).to(dev),
        "is_latent": True, "n_history": history, "mode": 0 if history else 1,
        "still": torch.zeros(batch, dtype=torch.bool),
        "text": torch.randn(batch, n_text, cfg.dit.text_dim, generator=g).to(dev),
    }

    def one_step(i: int) -> float:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            loss, _ = module.flow_loss(batch_data, i)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.model.parameters(), tcfg.grad_clip)
        opt.step()
        module.update_ema()
        return float(loss)

    for i in range(warmup):
        one_step(i)
    times = []
    for i in range(steps):
        _sync(dev)
        t0 = time.perf_counter()
        one_step(warmup + i)
        _sync(dev)
        times.append(time.perf_counter() - t0)
        if log:
            log({"step": i, "seconds": round(times[-1], 4)})
    med = statistics.median(times)
    fl = step_flops(module.model, cfg, history, h, w, chunk, n_text)
    params = sum(p.numel() for p in module.model.parameters())
    out = {"benchmark": "train", "profile": profile, "device": str(dev), "threads": torch.get_num_threads(),
           "precision": "bf16-autocast" if bf16 else "fp32", "activation_checkpointing": checkpointing,
           "parameters": params, "batch": batch, "latent_grid": [h, w], "chunk_frames": chunk,
           "history_frames": history, "text_tokens": n_text, **{k: v for k, v in fl.items() if k != "train_flops"},
           "step_seconds": round(med, 5), "samples_per_second": round(batch / med, 2),
           "tokens_per_second": round(batch * fl["prediction_tokens"] / med, 1),
           "model_tflops_per_step": round(batch * fl["train_flops"] / 1e12, 4),
           "achieved_tflops": round(batch * fl["train_flops"] / med / 1e12, 3), "steps_timed": steps}
    if dev.type == "cuda":
        peak = measured_matmul_rate(dev, torch.bfloat16 if bf16 else torch.float32)
        out["measured_matmul_tflops"] = round(peak / 1e12, 1)
        out["mfu_vs_measured"] = round(batch * fl["train_flops"] / med / peak, 3)
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="yume bench train", description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="last stdout line: one JSON object")
    p.add_argument("--profile", default="tiny", choices=["tiny", "yume15"])
    p.add_argument("--batch", type=int, default=None, help="samples per step (tiny: 32, yume15: 1)")
    p.add_argument("--history", type=int, default=4, help="latent history frames before the chunk")
    p.add_argument("--height", type=int, default=None, help="latent grid (tiny: 8 = 32 px; yume15: 34 = 544 px)")
    p.add_argument("--width", type=int, default=None, help="latent grid (tiny: 8; yume15: 60 = 960 px)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = p.parse_args(argv)
    big = args.profile == "yume15"
    if big and not args.device.startswith("cuda"):
        print("error: the yume15 (5B) step needs a GPU: --device cuda", file=sys.stderr)
        return 2
    result = run(args.profile, args.batch or (1 if big else 32), args.history, args.height, args.width, args.steps,
                 args.warmup, args.device, bf16=big, checkpointing=big, threads=args.threads,
                 log=None if args.json else lambda row: print(row, file=sys.stderr))
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>28}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
