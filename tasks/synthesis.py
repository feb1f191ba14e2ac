"""Wan video synthesis on Ray actors: diffusers `WanPipeline` (T2V) and `WanImageToVideoPipeline` (I2V).

`WanWorker` is what one actor holds: the pipeline, loaded once from a local diffusers directory (real Wan
weights on `yume15`, `tiny:` random-init checkpoints on `tiny`, see `yume.tasks.tiny_models`). Its
``generate(items)`` renders each item's video and writes it as H.264 mp4 (yuv420p, ``fps``; the
reproducible encoder of `yume.datasets.procedural.encode_h264`) next to a JSON sidecar, atomically.

Choices and environment notes:
- Seeds: every item carries its own seed and gets its own ``torch.Generator``; diffusers draws each
  sample's noise from its own generator, so a video does not depend on which batch it ran in (checked:
  batch vs single differ by < 1e-6).
- Prompts are encoded with `WanPipeline`'s umT5 path and passed as ``prompt_embeds`` to both pipelines:
  diffusers 0.42.1's I2V pipeline calls ``ftfy`` unconditionally while the T2V pipeline guards it, and ftfy
  is not a dependency here. The embeddings are the same apart from ftfy's text repair.
- Loading: diffusers refuses to load `WanTransformer3DModel` (it keeps some modules in fp32) without
  ``accelerate``'s low-memory loader; when ``accelerate`` is missing we build the transformer from its
  config and load its safetensors (sharded or not) ourselves, then hand it to ``from_pretrained``. GPU
  nodes should install ``accelerate`` (then plain ``from_pretrained`` is used).
- I2V runs one item per pipeline call: with several different conditioning images, diffusers 0.42.1's
  ``prepare_latents`` repeats the encoded batch by the batch size. T2V batches ``batch_size`` prompts.
- Wan2.2-TI2V-style I2V (``expand_timesteps=True``, no CLIP image encoder) and Wan2.1-style I2V (image
  encoder, channel concat) both load through the same class; the checkpoint's model_index decides.
- Per-item failures: ``nan_frames`` (non-finite output), ``decode_failed`` (conditioning image unreadable),
  ``oom``, ``model_error`` (see `yume.tasks.ray_pool.isolate_failures`).
- Item-level resume: a video whose sidecar carries the item's generation key and whose bytes match the
  recorded sha256 is reused, so a killed shard loses only the videos in flight.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from yume.tasks.ray_pool import QuarantineError, failure_result, isolate_failures, torch_device

SYNTH_VERSION = "1"  # bump to regenerate every video (item keys exclude the package's code hash on purpose)
PIPELINES = {"t2v": "WanPipeline", "i2v": "WanImageToVideoPipeline"}


def _accelerate_available() -> bool:
    try:
        import accelerate  # noqa: F401
    except ImportError:
        return False
    return True


def load_wan_transformer(directory: Path, dtype):
    """`WanTransformer3DModel` from a diffusers directory without accelerate (config + safetensors)."""
    from diffusers import WanTransformer3DModel
    from safetensors.torch import load_file

    directory = Path(directory)
    model = WanTransformer3DModel.from_config(WanTransformer3DModel.load_config(directory))
    index = directory / "diffusion_pytorch_model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else [
        "diffusion_pytorch_model.safetensors"]
    state = {}
    for name in files:
        state.update(load_file(directory / name))
    model.load_state_dict(state, strict=True)
    import torch

    keep = set(model._keep_in_fp32_modules or ())
    for name, param in model.named_parameters():  # cast, keeping what diffusers keeps in fp32 in fp32
        param.data = param.data.to(torch.float32 if keep & set(name.split(".")) else dtype)
    return model.eval()


def load_wan_pipeline(mode: str, path: str | Path, torch_dtype: str = "float32", device: str = "cpu",
                      flow_shift: float | None = None):
    import torch
    import diffusers

    cls = getattr(diffusers, PIPELINES[mode])
    dtype = getattr(torch, torch_dtype)
    path = Path(path)
    extra = {}
    if not _accelerate_available():
        for sub in ("transformer", "transformer_2"):
            if (path / sub / "config.json").is_file():
                extra[sub] = load_wan_transformer(path / sub, dtype)
    pipe = cls.from_pretrained(path, dtype=dtype, local_files_only=True, **extra)
    if flow_shift is not None:
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, flow_shift=flow_shift)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def encode_prompts(pipe, prompts: list[str], max_sequence_length: int, device):
    """umT5 embeddings through WanPipeline's encoder path (see the module notes on ftfy)."""
    from diffusers import WanPipeline

    return WanPipeline._get_t5_prompt_embeds(pipe, prompt=prompts, max_sequence_length=max_sequence_length,
                                             device=device)


def item_seed(base_seed: int, key: str) -> int:
    """A per-item seed from the stage seed and the item's key (stable across runs and batchings)."""
    return int.from_bytes(hashlib.sha256(f"{base_seed}:{key}".encode()).digest()[:4], "big") & 0x7FFFFFFF


def generation_key(model_fp: str, sampler: dict, prompt: str, seed: int, fps: int, crf: int, image_sha: str = "") -> str:
    payload = json.dumps([SYNTH_VERSION, model_fp, sampler, prompt, seed, fps, crf, image_sha], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def sidecar_path(video: Path) -> Path:
    return Path(video).with_suffix(".json")


def generate_missing(items: list[dict], pool) -> tuple[dict[str, dict], int]:
    """Results per item id: items the flow already quarantined (``quarantine``: "reason: detail", e.g. a
    path_escape) keep that result, finished videos are reused, the rest are generated on the actor pool.
    Returns (results, number generated)."""
    results = {it["id"]: ({"status": "quarantined", "error": it["quarantine"]} if it.get("quarantine")
                          else reusable(it)) for it in items}
    todo = [it for it in items if results[it["id"]] is None]
    results.update(zip([it["id"] for it in todo], pool.map("generate", todo)))
    return results, len(todo)


def reusable(item: dict) -> dict | None:
    """The recorded result of an item whose video already exists with the same generation key, else None."""
    video = Path(item["out_path"])
    side = sidecar_path(video)
    if not (video.is_file() and side.is_file()):
        return None
    try:
        meta = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if meta.get("generation_key") != item["generation_key"]:
        return None
    if hashlib.sha256(video.read_bytes()).hexdigest() != meta.get("video_sha256"):
        return None
    return {k: meta[k] for k in ("status", "error", "video_sha256", "num_frames", "height", "width", "fps")}


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def frames_to_uint8(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) float in [0, 1] -> uint8; raises QuarantineError(nan_frames) on non-finite values."""
    frames = np.asarray(frames)
    bad = ~np.isfinite(frames)
    if bad.any():
        per_frame = bad.reshape(len(frames), -1).any(1)
        raise QuarantineError("nan_frames", f"{int(per_frame.sum())} of {len(frames)} frames hold NaN/inf values")
    return (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def write_video(item: dict, frames: np.ndarray, fps: int, crf: int) -> dict:
    from yume.datasets.procedural import encode_h264

    video = frames_to_uint8(frames)
    data = encode_h264(video, fps, crf)
    sha = hashlib.sha256(data).hexdigest()
    out = Path(item["out_path"])
    _atomic_write(out, data)
    result = {"status": "ok", "error": None, "video_sha256": sha, "num_frames": int(video.shape[0]),
              "height": int(video.shape[1]), "width": int(video.shape[2]), "fps": float(fps)}
    _atomic_write(sidecar_path(out), json.dumps({**result, "generation_key": item["generation_key"],
                                                 "id": item["id"], "prompt": item["prompt"],
                                                 "seed": item["seed"]}, indent=1).encode())
    return result


def load_image(path: str | Path, height: int, width: int):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            image = im.convert("RGB")
    except (OSError, UnidentifiedImageError) as e:
        raise QuarantineError("decode_failed", f"conditioning image {Path(path).name}: {e}") from None
    return image.resize((width, height), Image.BICUBIC) if image.size != (width, height) else image


class WanWorker:
    """One actor's Wan pipeline. ``generate(items)`` -> one result per item (status, error, video facts).

    Item: ``{"id", "prompt", "seed", "out_path", "generation_key"}`` plus ``"image_path"`` for I2V.
    """

    def __init__(self, mode: str, model_path: str, sampler: dict, torch_dtype: str = "float32",
                 num_gpus: float = 0.0, fps: int = 16, crf: int = 18):
        from yume.config import WanSamplerConfig

        if mode not in PIPELINES:
            raise ValueError(f"mode must be one of {list(PIPELINES)}")
        self.mode = mode
        self.sampler = WanSamplerConfig.model_validate(sampler)
        self.device = torch_device(num_gpus)
        self.fps, self.crf = fps, crf
        self.pipe = load_wan_pipeline(mode, model_path, torch_dtype, self.device, self.sampler.flow_shift)

    def describe(self) -> dict:
        return {"mode": self.mode, "device": self.device, "pipeline": type(self.pipe).__name__}

    def _run(self, items: list[dict], images=None) -> np.ndarray:
        import torch

        s = self.sampler
        cfg = s.guidance_scale > 1.0
        embeds = encode_prompts(self.pipe, [it["prompt"] for it in items], s.max_sequence_length, self.device)
        negative = None
        if cfg:
            negative = encode_prompts(self.pipe, [s.negative_prompt] * len(items), s.max_sequence_length, self.device)
        kwargs = dict(
            prompt_embeds=embeds, negative_prompt_embeds=negative, height=s.height, width=s.width,
            num_frames=s.num_frames, num_inference_steps=s.num_inference_steps, guidance_scale=s.guidance_scale,
            generator=[torch.Generator(device="cpu").manual_seed(int(it["seed"])) for it in items],
            output_type="np",
        )
        if images is not None:
            kwargs["image"] = images[0] if len(images) == 1 else images
        with torch.inference_mode():
            return np.asarray(self.pipe(**kwargs).frames)

    def _batch(self, items: list[dict], images=None) -> list[dict]:
        """Render a batch; per-item output problems (NaN frames) are that item's result only."""
        videos = self._run(items, images)
        results = []
        for item, frames in zip(items, videos):
            try:
                results.append(write_video(item, frames, self.fps, self.crf))
            except QuarantineError as e:
                results.append(failure_result(e))
        return results

    def generate(self, items: list[dict]) -> list[dict]:
        if self.mode == "t2v":
            return isolate_failures(items, self._batch)
        results = []
        for item in items:  # one conditioning image per pipeline call (see the module notes)
            try:
                image = load_image(item["image_path"], self.sampler.height, self.sampler.width)
            except QuarantineError as e:
                results.append(failure_result(e))
                continue
            results.extend(isolate_failures([item], lambda batch, image=image: self._batch(batch, [image])))
        return results
