"""`yume bench curation`: per-stage throughput of the curation workers, and a GPU-hour estimate at paper scale.

Throughput: each stage's worker (what one Ray actor runs) is built once in this process - model loading is
timed separately - and fed ``--items`` items on the tiny profile's settings: recaption with the InternVL
backend (tiny random-init InternVL3) and the metadata backend, caption dedup (the real MiniLM), Wan T2V
(tiny Wan2.1 architecture), Wan I2V (tiny Wan2.2-TI2V architecture) and lite scoring. Inputs are procedural
clips rendered into a temporary directory. Figures are items/s on this machine's CPU (threads as torch has
them); Ray adds a few seconds of actor start-up per stage, not per item.

GPU-hours at paper scale are an estimate from model FLOPs, not a measurement (no GPU or real weights here).
Its assumptions are printed with it: the architectures (Wan2.1-T2V-14B, Wan2.2-TI2V-5B from REFERENCE
section 3, InternVL3-8B), the `yume15` profile's sampler settings (size, frames, steps, guidance), A100 bf16
peak 312 TFLOP/s at an assumed model-FLOP utilisation, VAE/text-encoder overheads, InternVL decoding as
memory-bound, and VBench seconds per video. DiT FLOPs per token and layer: 2 x (4 d^2 self-attention
projections + 2 d^2 cross-attention q/o + 2 d f feed-forward) + 4 L d self-attention scores + 4 T d
cross-attention scores (L video tokens, T text tokens); times layers, tokens, steps and 2 with CFG.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

A100_BF16_FLOPS = 312e12
A100_HBM_BYTES_PER_S = 2.0e12

WAN21_T2V_14B = {"dim": 5120, "ffn": 13824, "layers": 40, "vae_time": 4, "vae_space": 8, "patch": (1, 2, 2)}
WAN22_TI2V_5B = {"dim": 3072, "ffn": 14336, "layers": 30, "vae_time": 4, "vae_space": 16, "patch": (1, 2, 2)}
INTERNVL3_8B = {"llm_params": 7.6e9, "vit_params": 0.3e9, "vit_tokens": 1025, "image_tokens": 256,
                "weight_bytes": 16.2e9}


def dit_tokens(arch: dict, frames: int, height: int, width: int) -> int:
    t = (frames - 1) // arch["vae_time"] + 1
    pt, ph, pw = arch["patch"]
    return (t // pt) * (height // arch["vae_space"] // ph) * (width // arch["vae_space"] // pw)


def dit_forward_flops(arch: dict, tokens: int, text_tokens: int = 512) -> float:
    d, f = arch["dim"], arch["ffn"]
    per_token_layer = 2 * (4 * d * d + 2 * d * d + 2 * d * f) + 4 * tokens * d + 4 * text_tokens * d
    return per_token_layer * tokens * arch["layers"]


def paper_scale_estimate(mfu: float = 0.35, segments_per_clip: float = 12.0, vbench_seconds: float = 20.0,
                         vae_seconds_t2v: float = 60.0, vae_seconds_i2v: float = 30.0) -> dict:
    """GPU-hours (A100) for the paper-scale curation, from the yume15 profile's settings and stated assumptions."""
    from yume.config import load_profile

    p = load_profile("yume15")
    t2v, i2v, rc = p.synthesize_t2v, p.synthesize_events, p.recaption
    flops_per_s = A100_BF16_FLOPS * mfu
    out: dict = {"assumptions": {
        "gpu": "A100 80GB, bf16 dense peak 312 TFLOP/s", "model_flop_utilisation": mfu,
        "t2v": {"model": "Wan2.1-T2V-14B", **WAN21_T2V_14B, "videos": t2v.num_videos,
                "size": [t2v.sampler.height, t2v.sampler.width], "frames": t2v.sampler.num_frames,
                "steps": t2v.sampler.num_inference_steps, "cfg": t2v.sampler.guidance_scale > 1,
                "vae_decode_and_text_seconds": vae_seconds_t2v},
        "i2v": {"model": "Wan2.2-TI2V-5B", **WAN22_TI2V_5B, "videos": 10_000,
                "size": [i2v.sampler.height, i2v.sampler.width], "frames": i2v.sampler.num_frames,
                "steps": i2v.sampler.num_inference_steps, "cfg": i2v.sampler.guidance_scale > 1,
                "vae_and_text_seconds": vae_seconds_i2v},
        "recaption": {"model": "InternVL3-8B", **INTERNVL3_8B, "sekai_clips": 18_208,
                      "segments_per_clip": segments_per_clip, "frames_per_segment": rc.frames_per_segment,
                      "prompt_tokens": 120, "new_tokens": 100, "batch": rc.resources.batch_size,
                      "decode": "memory-bound: weights read once per step at 60% of 2 TB/s"},
        "scoring": {"vbench_seconds_per_video": vbench_seconds,
                    "videos": "80k T2V + 10k I2V + every recaptioned real segment"},
    }}
    for name, arch, s, n, extra in (("t2v", WAN21_T2V_14B, t2v.sampler, t2v.num_videos, vae_seconds_t2v),
                                    ("i2v", WAN22_TI2V_5B, i2v.sampler, 10_000, vae_seconds_i2v)):
        tokens = dit_tokens(arch, s.num_frames, s.height, s.width)
        passes = s.num_inference_steps * (2 if s.guidance_scale > 1 else 1)
        flops = dit_forward_flops(arch, tokens, s.max_sequence_length) * passes
        seconds = flops / flops_per_s + extra
        out[name] = {"tokens_per_video": tokens, "pflop_per_video": round(flops / 1e15, 1),
                     "gpu_seconds_per_video": round(seconds), "gpu_hours": round(seconds * n / 3600)}
    segments = 18_208 * segments_per_clip
    prefill_tokens = rc.frames_per_segment * INTERNVL3_8B["image_tokens"] + 120
    prefill = (2 * INTERNVL3_8B["llm_params"] * prefill_tokens
               + 2 * INTERNVL3_8B["vit_params"] * INTERNVL3_8B["vit_tokens"] * rc.frames_per_segment) / flops_per_s
    decode = 100 * INTERNVL3_8B["weight_bytes"] / (0.6 * A100_HBM_BYTES_PER_S) / rc.resources.batch_size
    out["recaption"] = {"captions": int(segments), "gpu_seconds_per_caption": round(prefill + decode, 3),
                        "gpu_hours": round(segments * (prefill + decode) / 3600)}
    scored = t2v.num_videos + 10_000 + segments
    out["scoring"] = {"videos": int(scored), "gpu_hours": round(scored * vbench_seconds / 3600)}
    out["total_gpu_hours"] = sum(out[k]["gpu_hours"] for k in ("t2v", "i2v", "recaption", "scoring"))
    return out


def _timed(fn, *args):
    t0 = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - t0


def measure(items: int, work: Path) -> dict:
    """items/s of every stage's worker on CPU with tiny models (model load timed apart)."""
    import numpy as np
    import torch

    from yume.config import load_profile
    from yume.datasets.procedural import ProceduralWorldConfig, write_sekai_dataset
    from yume.datasets.sekai import read_annotations
    from yume.tasks.recaption import CaptionWorker, sample_frame_indices
    from yume.tasks.score_and_filter import ScoreWorker
    from yume.tasks.synthesis import WanWorker, item_seed
    from yume.tasks.synthesize_t2v import DISTINCT_CAPTIONS
    from yume.tasks.tiny_models import ensure_tiny_model

    tiny = load_profile("tiny", workdir=work)
    root = write_sekai_dataset(work / "sekai", ProceduralWorldConfig(n_clips=min(items, 8), frames_per_clip=96, seed=5))
    clips = read_annotations(root)
    segments = [{"id": f"s{i}", "video_path": str(root / c.video_file), "start_frame": 0, "end_frame": 96,
                 "frame_indices": sample_frame_indices(0, 96, tiny.recaption.frames_per_segment),
                 "scene": c.scene, "crowdDensity": c.crowdDensity, "weather": c.weather, "timeOfDay": c.timeOfDay,
                 "location": c.location, "event": None}
                for i, c in enumerate(clips * (items // len(clips) + 1))][:items]
    models = work / "models"
    stages: dict = {}

    def record(name, n, seconds, load, note):
        stages[name] = {"items": n, "seconds": round(seconds, 3), "items_per_s": round(n / seconds, 3),
                        "load_seconds": round(load, 2), "note": note}

    rc = tiny.recaption.model_dump(mode="json")
    ivl = ensure_tiny_model("internvl3", models)
    worker, load = _timed(CaptionWorker, "internvl", rc, str(ivl))
    bs = tiny.recaption.resources.batch_size
    _, sec = _timed(lambda: [worker.caption(segments[i : i + bs]) for i in range(0, items, bs)])
    record("recaption_internvl", items, sec, load,
           f"tiny InternVL3, {tiny.recaption.frames_per_segment} frames/segment, max_new_tokens "
           f"{tiny.recaption.max_new_tokens}, batch {bs}")
    worker, load = _timed(CaptionWorker, "metadata", rc, None)
    _, sec = _timed(worker.caption, segments)
    record("recaption_metadata", items, sec, load, "captions from annotation columns")

    from yume.tasks.dedup import _load_minilm, dedup_captions

    captions = [f"{c} Variant {i}." for i in range(max(1, 200 // len(DISTINCT_CAPTIONS))) for c in DISTINCT_CAPTIONS]
    _, load = _timed(_load_minilm)
    _, sec = _timed(dedup_captions, [str(i) for i in range(len(captions))], captions)
    record("dedup_minilm", len(captions), sec, load, "all-MiniLM-L6-v2 embed + greedy dedup")

    t2v_cfg = tiny.synthesize_t2v
    path = ensure_tiny_model("wan2.1-t2v", models)
    worker, load = _timed(WanWorker, "t2v", str(path), t2v_cfg.sampler.model_dump(), "float32", 0, t2v_cfg.fps)
    jobs = [{"id": f"t{i}", "prompt": DISTINCT_CAPTIONS[i % len(DISTINCT_CAPTIONS)], "seed": item_seed(0, str(i)),
             "out_path": str(work / "t2v" / f"{i}.mp4"), "generation_key": "bench"} for i in range(items)]
    bs = t2v_cfg.resources.batch_size
    out, sec = _timed(lambda: [r for i in range(0, items, bs) for r in worker.generate(jobs[i : i + bs])])
    s = t2v_cfg.sampler
    record("synthesize_t2v", items, sec, load, f"tiny Wan2.1 T2V {s.width}x{s.height}x{s.num_frames}, "
           f"{s.num_inference_steps} steps, mp4 encode included; {sum(r['status'] == 'ok' for r in out)} ok")

    ev_cfg = tiny.synthesize_events
    path = ensure_tiny_model("wan2.2-ti2v", models)
    worker, load = _timed(WanWorker, "i2v", str(path), ev_cfg.sampler.model_dump(), "float32", 0, ev_cfg.fps)
    from PIL import Image

    from yume.datasets.sekai import read_frames

    image = work / "first.png"
    Image.fromarray(read_frames(root / clips[0].video_file, [0])[0]).save(image)
    jobs = [{"id": f"e{i}", "prompt": "Rain starts to fall.", "seed": i, "image_path": str(image),
             "out_path": str(work / "i2v" / f"{i}.mp4"), "generation_key": "bench"} for i in range(items)]
    out, sec = _timed(worker.generate, jobs)
    s = ev_cfg.sampler
    record("synthesize_events", items, sec, load, f"tiny Wan2.2-TI2V {s.width}x{s.height}x{s.num_frames}, "
           f"{s.num_inference_steps} steps; {sum(r['status'] == 'ok' for r in out)} ok")

    sc = tiny.score_and_filter
    worker, load = _timed(ScoreWorker, "lite", sc.model_dump(mode="json"))
    score_items = [{"id": seg["id"], "video_path": seg["video_path"], "frame_indices": list(range(0, 64, 2)),
                    "fps": 15.0} for seg in segments]
    out, sec = _timed(worker.score, score_items)
    record("score_lite", items, sec, load, f"lite scorer (NOT VBench), 32 frames at 64x64; "
           f"{sum(r['status'] == 'ok' for r in out)} ok")
    return {"device": "cpu", "torch_threads": torch.get_num_threads(), "numpy": np.__version__, "stages": stages}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="yume bench curation", description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=8, help="items per stage")
    p.add_argument("--mfu", type=float, default=0.35, help="assumed model-FLOP utilisation on A100")
    p.add_argument("--segments-per-clip", type=float, default=12.0, help="assumed action segments per Sekai clip")
    p.add_argument("--vbench-seconds", type=float, default=20.0, help="assumed A100 seconds per VBench video")
    p.add_argument("--estimate-only", action="store_true", help="skip the CPU measurements")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = p.parse_args(argv)
    result: dict = {}
    if not args.estimate_only:
        with tempfile.TemporaryDirectory(prefix="yume-bench-curation-") as tmp:
            result["throughput"] = measure(max(1, args.items), Path(tmp))
    result["paper_scale_estimate"] = paper_scale_estimate(args.mfu, args.segments_per_clip, args.vbench_seconds)
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
        return 0
    if "throughput" in result:
        t = result["throughput"]
        print(f"CPU throughput with tiny models ({t['torch_threads']} torch threads; model load not included):")
        for name, r in t["stages"].items():
            print(f"  {name:20s} {r['items_per_s']:9.2f} items/s  ({r['items']} in {r['seconds']:.2f} s, "
                  f"load {r['load_seconds']:.1f} s)  {r['note']}")
    e = result["paper_scale_estimate"]
    print(f"\nEstimated A100 GPU-hours at paper scale (MFU {e['assumptions']['model_flop_utilisation']}; "
          "an estimate from FLOPs, not a measurement):")
    for k in ("t2v", "i2v", "recaption", "scoring"):
        print(f"  {k:10s} {e[k]['gpu_hours']:>9,d} h   {json.dumps({x: v for x, v in e[k].items() if x != 'gpu_hours'})}")
    print(f"  {'total':10s} {e['total_gpu_hours']:>9,d} h")
    print("assumptions:")
    for k, v in e["assumptions"].items():
        print(f"  {k}: {json.dumps(v)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
