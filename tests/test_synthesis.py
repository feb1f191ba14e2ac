"""Wan synthesis workers (tiny random-init Wan2.1 T2V / Wan2.2 TI2V) and the T2V caption side: H.264 output
at 16 fps, seeds, per-item quarantine (NaN frames, model error, OOM, unreadable image), reuse of finished
videos, and dedup of the planted near-duplicates of the tiny caption table."""

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from yume.config import WanSamplerConfig
from yume.datasets.sekai import probe_video, read_frames
from yume.tasks.synthesis import WanWorker, frames_to_uint8, generation_key, item_seed, reusable
from yume.tasks.synthesize_t2v import read_caption_table, write_tiny_caption_table

SAMPLER = WanSamplerConfig(height=32, width=32, num_frames=9, num_inference_steps=2).model_dump()


def _items(tmp_path, prompts, prefix="t"):
    return [{"id": f"{prefix}{i}", "prompt": p, "seed": item_seed(0, p), "out_path": str(tmp_path / f"{prefix}{i}.mp4"),
             "generation_key": generation_key("fp", SAMPLER, p, item_seed(0, p), 16, 18)} for i, p in enumerate(prompts)]


@pytest.fixture(scope="module")
def t2v(tiny_models):
    return WanWorker("t2v", str(tiny_models["wan2.1-t2v"]), SAMPLER, fps=16)


def test_t2v_writes_decodable_h264_at_16_fps_with_its_seed(t2v, tmp_path):
    items = _items(tmp_path, ["rain on a city street", "a dragon over a forest", "fog over a lake"])
    results = t2v.generate(items)
    assert [r["status"] for r in results] == ["ok"] * 3
    n, fps, h, w = probe_video(tmp_path / "t0.mp4")
    assert (n, fps, h, w) == (9, 16.0, 32, 32) and results[0]["num_frames"] == 9
    import av

    with av.open(str(tmp_path / "t0.mp4")) as c:
        assert c.streams.video[0].codec_context.name == "h264"
    side = json.loads((tmp_path / "t0.json").read_text())
    assert side["seed"] == items[0]["seed"] and side["prompt"] == items[0]["prompt"]
    assert side["video_sha256"] == hashlib.sha256((tmp_path / "t0.mp4").read_bytes()).hexdigest()
    # The same seed alone (not in a batch) gives the same video; another seed does not.
    alone = t2v._run([items[1]])[0]
    batch = t2v._run(items)[1]
    np.testing.assert_allclose(alone, batch, atol=1e-4)
    assert np.abs(t2v._run([{**items[1], "seed": 999}])[0] - alone).max() > 1e-3


def test_t2v_item_failures_are_quarantined_while_the_rest_goes_on(t2v, tmp_path, monkeypatch):
    items = _items(tmp_path, ["ok one", "NAN please", "boom please", "OOM please", "ok two"])
    real_run = t2v._run

    def faulty(batch, images=None):
        prompts = [it["prompt"] for it in batch]
        if any("boom" in p for p in prompts):
            raise RuntimeError("cuDNN error: execution failed")
        if any("OOM" in p for p in prompts):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 40.00 GiB")
        out = real_run(batch, images)
        for k, p in enumerate(prompts):
            if "NAN" in p:
                out[k, 3:5] = np.nan
        return out

    monkeypatch.setattr(t2v, "_run", faulty)
    results = t2v.generate(items)
    assert [r["status"] for r in results] == ["ok", "quarantined", "quarantined", "quarantined", "ok"]
    assert results[1]["error"] == "nan_frames: 2 of 9 frames hold NaN/inf values"
    assert results[2]["error"].startswith("model_error: RuntimeError: cuDNN error")
    assert results[3]["error"].startswith("oom: ")
    assert not (tmp_path / "t1.mp4").exists() and (tmp_path / "t4.mp4").is_file()


def test_finished_videos_are_reused_only_when_unchanged(t2v, tmp_path):
    (item,) = _items(tmp_path, ["rain on a city street"])
    assert reusable(item) is None
    t2v.generate([item])
    assert reusable(item)["status"] == "ok"
    assert reusable({**item, "generation_key": "other settings"}) is None
    (tmp_path / "t0.mp4").write_bytes(b"truncated")
    assert reusable(item) is None


def test_frames_to_uint8_rejects_non_finite():
    assert frames_to_uint8(np.full((2, 4, 4, 3), 0.5)).max() == 128
    with pytest.raises(Exception, match="nan_frames: 1 of 2"):
        frames_to_uint8(np.stack([np.zeros((4, 4, 3)), np.full((4, 4, 3), np.inf)]))


@pytest.fixture(scope="module")
def i2v(tiny_models, tmp_path_factory):
    sampler = WanSamplerConfig(height=64, width=64, num_frames=9, num_inference_steps=2).model_dump()
    image = tmp_path_factory.mktemp("i2v") / "first.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(image)
    return WanWorker("i2v", str(tiny_models["wan2.2-ti2v"]), sampler, fps=16), image


def _i2v_items(tmp_path, images):
    return [{"id": f"e{i}", "prompt": "Rain starts to fall.", "seed": i, "image_path": str(p),
             "out_path": str(tmp_path / f"e{i}.mp4"), "generation_key": "k"} for i, p in enumerate(images)]


def test_i2v_wan22_style_from_an_image(i2v, tmp_path):
    from diffusers import WanImageToVideoPipeline

    worker, image = i2v
    assert isinstance(worker.pipe, WanImageToVideoPipeline) and worker.pipe.config.expand_timesteps
    assert worker.pipe.image_encoder is None
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    results = worker.generate(_i2v_items(tmp_path, [image, tmp_path / "bad.png", tmp_path / "missing.png", image]))
    assert [r["status"] for r in results] == ["ok", "quarantined", "quarantined", "ok"]
    assert all(r["error"].startswith("decode_failed: ") for r in results[1:3])
    assert read_frames(tmp_path / "e0.mp4", [0, 8]).shape == (2, 64, 64, 3)


def test_i2v_item_failures_are_quarantined_while_the_rest_goes_on(i2v, tmp_path, monkeypatch):
    worker, image = i2v
    real_run = worker._run
    faults = {1: "nan", 2: "oom", 3: "error"}  # by item seed

    def faulty(batch, images=None):
        kind = faults.get(batch[0]["seed"])
        if kind == "oom":
            raise torch.OutOfMemoryError("CUDA out of memory")
        if kind == "error":
            raise RuntimeError("expected all tensors on the same device")
        out = real_run(batch, images)
        if kind == "nan":
            out[:] = np.nan
        return out

    monkeypatch.setattr(worker, "_run", faulty)
    reasons = [r["error"].split(":")[0] if r["error"] else None
               for r in worker.generate(_i2v_items(tmp_path, [image] * 4))]
    assert reasons == [None, "nan_frames", "oom", "model_error"]


def test_tiny_caption_table_planted_duplicates_are_removed(tmp_path):
    from yume.tasks.dedup import dedup_captions, sample_captions

    path = tmp_path / "captions.csv"
    planted = write_tiny_caption_table(path, 24)
    before = path.stat().st_mtime_ns
    assert write_tiny_caption_table(path, 24) == planted and path.stat().st_mtime_ns == before  # unchanged
    keys, captions, invalid = read_caption_table(path, "video", "caption")
    assert len(keys) == 24 and not invalid and len(planted) == 6
    keep, dropped = dedup_captions(keys, captions, threshold=0.9)
    assert {d: o for d, o, _ in dropped} == planted  # every planted near-duplicate, and nothing else
    assert len(keep) == 18 and set(planted.values()) <= set(keep)
    sample = sample_captions(keep, 6, seed=0)
    assert sample == sample_captions(list(reversed(keep)), 6, seed=0) and len(set(sample)) == 6


def test_caption_table_invalid_rows_and_columns(tmp_path):
    from yume.config import ConfigError

    path = tmp_path / "t.csv"
    path.write_text("video,caption\na.mp4,A dog runs.\nb.mp4,\na.mp4,Another caption.\n")
    keys, captions, invalid = read_caption_table(path, "video", "caption")
    assert keys == ["a.mp4"] and [r["reason"] for r in invalid] == ["caption_empty", "duplicate_key"]
    with pytest.raises(ConfigError, match="caption_table"):
        read_caption_table(path, "clip_id", "caption")


T2V_KILLER = """
import json, os, signal, sys
from pathlib import Path
import yume.tasks.synthesis as synthesis

model, items, mode = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
victim = Path(items[-1]["out_path"])
real_write = synthesis._atomic_write

def dying_write(path, data):
    path = Path(path)
    if mode == "mid_video" and path == victim:  # half the mp4 reaches the disk, then the process dies
        tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
        tmp.write_bytes(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    real_write(path, data)
    if mode == "before_sidecar" and path == victim:  # the new mp4 is in place, its sidecar is the old one
        os.kill(os.getpid(), signal.SIGKILL)

synthesis._atomic_write = dying_write
sampler = json.loads(sys.argv[4])
synthesis.WanWorker("t2v", model, sampler, fps=16).generate(items)
"""


@pytest.mark.parametrize("mode", ["mid_video", "before_sidecar"])
def test_a_video_killed_mid_write_is_redone_not_reused(t2v, tiny_models, tmp_path, mode):
    """SIGKILL while the second video of a re-render is written (settings changed, so the old mp4 and sidecar
    are stale): the rerun regenerates it and reuses the finished first one."""
    import signal
    import subprocess
    import sys

    from yume.tasks.synthesis import generate_missing, sidecar_path

    old = _items(tmp_path, ["rain on a city street", "fog over a lake"])
    t2v.generate(old)  # the previous settings' videos and sidecars
    items = [{**it, "generation_key": it["generation_key"] + "-v2"} for it in old]  # new settings
    t2v.generate(items[:1])
    proc = subprocess.run([sys.executable, "-c", T2V_KILLER, str(tiny_models["wan2.1-t2v"]), json.dumps(items), mode,
                           json.dumps(SAMPLER)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    victim = items[1]
    stale = json.loads(sidecar_path(victim["out_path"]).read_text())
    assert stale["generation_key"] == old[1]["generation_key"]  # the sidecar on disk is the old one
    assert reusable(victim) is None and reusable(items[0]) is not None

    class LocalPool:
        def map(self, method, todo):
            return getattr(t2v, method)(todo)

    results, generated = generate_missing(items, LocalPool())
    assert generated == 1 and results[victim["id"]]["status"] == "ok"
    side = json.loads(sidecar_path(victim["out_path"]).read_text())
    assert side["generation_key"] == victim["generation_key"]
    assert side["video_sha256"] == hashlib.sha256(open(victim["out_path"], "rb").read()).hexdigest()
    assert probe_video(victim["out_path"])[0] == 9
