"""The training set: the mixture manifest (kind ``train``) and the latent + text-embedding cache.

**Mixture.** ``collect_training_rows(profile)`` reads the curated sources that exist in the work directory
and turns each usable item into one ``train`` row:

- ``real``: ``ok`` segments of ``manifests/real`` (only those ``score_and_filter`` selected when
  ``manifests/scores`` scored real video), with their action labels, Sekai's caption as the T2V text and
  ``recaption``'s event caption (where it passed) as the I2V text;
- ``synthetic``: ``ok`` videos of ``manifests/synthetic`` (selected ones when scored), prompt as T2V text;
- ``events``: accepted videos of ``manifests/events`` (selected ones when scored), event text as I2V text;
- ``procedural`` (``training_set.worlds``): extra procedural worlds rendered at training resolution into
  ``<workdir>/data/train_worlds``, labelled by ``curate_real``'s own camera->action code.

Each row carries its source's mixture weights per mode (``weight_i2v``, ``weight_t2v``); the sampler draws a
source by weight, then an action label uniformly (class balance), then a row in proportion to its chunk
positions. A source absent from ``training_set.sources`` is not used; a manifest that does not exist yet
(the curation stages run before this one) is skipped, and joins the mixture on the next run.

**Cache.** ``<workdir>/cache/train/<key>/`` with ``key`` = hash of the codec (config and weight files), the
text encoder's id and the sample settings that change latents (training resolution, frame rate, dtype):

- ``latents/part-<shard>.safetensors``: one tensor per clip, ``[F, C, h, w]`` (frames first so a chunk is a
  contiguous slice read through ``safe_open``), the whole clip at training resolution and frame rate; a
  completion marker ``latents/_SUCCESS.<shard>.json`` per shard; ``latents_index.parquet`` maps clip keys to
  shards. A shard's name is the hash of its clips' keys: unchanged clips are never re-encoded.
- ``text.safetensors`` + ``text_index.parquet``: every distinct T2V/I2V text, trimmed to its tokens.
- the action-sentence table (``ActionEmbeddingCache``'s safetensors file).

Wan VAE caveat: latents of a whole clip are encoded once and chunks are sliced from them; the causal VAE then
gives a chunk the context of the frames before it, not the cold start of encoding the chunk alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from yume.datasets.manifest import ManifestKind, ManifestError, read_manifest, register_kind

log = logging.getLogger(__name__)
STAGE = "build_training_set"
CACHE_FORMAT = "1"

TRAIN = register_kind(ManifestKind(
    name="train",
    version=1,
    fields=(
        pa.field("source", pa.string(), nullable=False),  # real | synthetic | events | procedural
        pa.field("video_root", pa.string(), nullable=False),  # sekai | media (paths relative to it)
        pa.field("video_uri", pa.string(), nullable=False),
        pa.field("clip_key", pa.string(), nullable=False),  # the parent clip's latent-cache key
        pa.field("start_frame", pa.int64()),  # first transition of the labelled span (source frame rate)
        pa.field("end_frame", pa.int64()),  # exclusive
        pa.field("clip_frames", pa.int64()),  # frames of the whole clip
        pa.field("fps", pa.float64()),
        pa.field("keys", pa.string()),  # action label (null: no camera labels)
        pa.field("mouse", pa.string()),
        pa.field("t2v_text", pa.string()),
        pa.field("i2v_text", pa.string()),
        pa.field("image_uri", pa.string()),
        pa.field("composite", pa.float64()),  # score_and_filter's composite, when scored
        pa.field("weight_i2v", pa.float64(), nullable=False),
        pa.field("weight_t2v", pa.float64(), nullable=False),
    ),
    label_columns=("source", "keys", "mouse"),
))

TRAIN_COLUMNS = [f.name for f in TRAIN.schema]


def _sha(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode() + b"\0")
    return h.hexdigest()


def clip_key(video_root: str, video_uri: str, content_hash: str) -> str:
    return _sha(video_root, video_uri, content_hash)[:24]


def _read_ok(path: Path, kind) -> pd.DataFrame | None:
    if not path.is_dir():
        return None
    try:
        df = read_manifest(path, kind).to_pandas()
    except ManifestError as e:
        log.warning("skipping %s: %s", path, e)
        return None
    return df[df.status == "ok"]


def _selected(work: Path, use_scores: bool) -> dict[str, set[str]] | None:
    """ids kept by score_and_filter per upstream kind, or None when there is no scores manifest."""
    if not use_scores:
        return None
    from yume.datasets.manifest_kinds import SCORES

    scores = _read_ok(work / "scores", SCORES)
    if scores is None:
        return None
    return {k: set(g.upstream_id[g.selected.astype(bool)]) for k, g in scores.groupby("upstream_kind")}


def _keep(df: pd.DataFrame, kind: str, selected: dict[str, set[str]] | None) -> pd.DataFrame:
    if selected is None or kind not in selected:  # not scored: keep every ok row
        return df
    return df[df.id.isin(selected[kind])]


def _common(row_id: str, source_uri: str, content_hash: str, config_hash: str, stage_version: str) -> dict:
    return {"id": row_id, "source_uri": source_uri, "content_hash": content_hash, "stage": STAGE,
            "stage_version": stage_version, "config_hash": config_hash, "status": "ok", "error": None}


def real_rows(df: pd.DataFrame, source: str, video_root: str, captions: pd.DataFrame | None, weights,
              config_hash: str, stage_version: str) -> list[dict]:
    """``real``-kind segments (curate_real's rows) -> train rows."""
    events = {}
    if captions is not None and not captions.empty:
        events = dict(zip(captions.id, captions.event_caption))
    rows = []
    for r in df.itertuples(index=False):
        rows.append({
            **_common(r.id, r.source_uri, r.content_hash, config_hash, stage_version),
            "source": source, "video_root": video_root, "video_uri": r.video_uri,
            "clip_key": clip_key(video_root, r.video_uri, r.content_hash),
            "start_frame": int(r.start_frame), "end_frame": int(r.end_frame), "clip_frames": int(r.num_frames),
            "fps": float(r.fps), "keys": r.keys, "mouse": r.mouse, "t2v_text": r.caption,
            "i2v_text": events.get(r.id) or None, "image_uri": None, "composite": None,
            "weight_i2v": float(weights.i2v), "weight_t2v": float(weights.t2v),
        })
    return rows


def video_rows(df: pd.DataFrame, source: str, text_col: str, weights, config_hash: str, stage_version: str
               ) -> list[dict]:
    """Whole synthetic / event videos (no camera labels) -> train rows (video_root media)."""
    rows = []
    for r in df.itertuples(index=False):
        if not r.video_uri or not r.num_frames:
            continue
        content = getattr(r, "video_sha256", None) or r.content_hash
        text = getattr(r, text_col)
        rows.append({
            **_common(r.id, r.source_uri, r.content_hash, config_hash, stage_version),
            "source": source, "video_root": "media", "video_uri": r.video_uri,
            "clip_key": clip_key("media", r.video_uri, content),
            "start_frame": 0, "end_frame": int(r.num_frames) - 1, "clip_frames": int(r.num_frames),
            "fps": float(r.fps), "keys": None, "mouse": None,
            "t2v_text": text if source == "synthetic" else None, "i2v_text": text if source == "events" else None,
            "image_uri": getattr(r, "image_uri", None), "composite": None,
            "weight_i2v": float(weights.i2v), "weight_t2v": float(weights.t2v),
        })
    return rows


def collect_training_rows(profile, worlds_rows: list[dict] | None = None) -> tuple[list[dict], dict]:
    """All train rows of the profile's mixture, and per-source counts (including skipped sources)."""
    from yume.config import stage_hash
    from yume.datasets.manifest import REAL
    from yume.datasets.manifest_kinds import CAPTIONS, EVENTS, SYNTHETIC

    ts = profile.training_set
    work = profile.workdir_path / "manifests"
    h = stage_hash(profile, "training_set")
    selected = _selected(work, ts.use_scores)
    rows: list[dict] = []
    counts: dict[str, Any] = {}
    if "real" in ts.sources:
        real = _read_ok(work / "real", REAL)
        if real is None:
            counts["real"] = "missing"
        else:
            real = _keep(real, "real", selected)
            caps = _read_ok(work / "captions", CAPTIONS)
            part = real_rows(real, "real", "sekai", caps, ts.sources["real"], h, ts.stage_version)
            rows += part
            counts["real"] = len(part)
    for source, kind, text in (("synthetic", SYNTHETIC, "prompt"), ("events", EVENTS, "event_text")):
        if source not in ts.sources:
            continue
        df = _read_ok(work / source, kind)
        if df is None:
            counts[source] = "missing"
            continue
        if source == "events":
            df = df[df.decision == "accept"]
        df = _keep(df, source, selected)
        part = video_rows(df, source, text, ts.sources[source], h, ts.stage_version)
        rows += part
        counts[source] = len(part)
    if ts.worlds is not None and "procedural" in ts.sources:
        part = [dict(r, config_hash=h, weight_i2v=ts.sources["procedural"].i2v,
                     weight_t2v=ts.sources["procedural"].t2v) for r in (worlds_rows or [])]
        rows += part
        counts["procedural"] = len(part)
    return rows, counts


def worlds_root(profile) -> Path:
    return profile.media_root() / "train_worlds"


def world_config(profile):
    """The ProceduralWorldConfig of the extra training worlds (``training_set.worlds``)."""
    from yume.datasets.procedural import ProceduralWorldConfig

    w = profile.training_set.worlds
    base = profile.world or ProceduralWorldConfig()
    upd = {k: v for k, v in (("ramp_frames", w.ramp_frames), ("jitter_scale", w.jitter_scale)) if v is not None}
    return base.model_copy(update={
        "n_clips": w.n_clips, "seed": w.seed, "height": w.height, "width": w.width,
        "frames_per_clip": w.frames_per_clip, "supersample": w.supersample, "event_probability": w.event_probability,
        "trajectory": trajectory_with(base.trajectory, {**w.trajectory, **upd}),
    })


def trajectory_with(base, overrides: dict):
    """``base`` (a TrajectoryConfig) with ``overrides`` applied and validated (unknown keys are errors)."""
    return type(base).model_validate({**base.model_dump(), **overrides})


def label_worlds(profile, root: Path) -> list[dict]:
    """Train rows (source procedural) of the rendered training worlds, labelled by curate_real's code or by
    their commanded script (``training_set.worlds.labels``)."""
    from yume.datasets.sekai import read_annotations
    from yume.tasks.curate_real import curate_clip

    by_script = profile.training_set.worlds.labels == "script"
    scripts = script_segments(root) if by_script else {}
    rows = []
    for clip in read_annotations(root):
        labelled = (script_rows(clip, root, scripts.get(clip.video_file)) if by_script
                    else curate_clip(clip, root, profile.actions, profile.curate_real, ""))
        for r in labelled:
            if r["status"] != "ok":
                continue
            rows.append({
                **_common(r["id"], r["source_uri"], r["content_hash"], "", profile.training_set.stage_version),
                "source": "procedural", "video_root": "media",
                "video_uri": f"train_worlds/{r['video_uri']}",
                "clip_key": clip_key("media", f"train_worlds/{r['video_uri']}", r["content_hash"]),
                "start_frame": r["start_frame"], "end_frame": r["end_frame"], "clip_frames": r["num_frames"],
                "fps": r["fps"], "keys": r["keys"], "mouse": r["mouse"], "t2v_text": r["caption"],
                "i2v_text": None, "image_uri": None, "composite": None, "weight_i2v": 0.0, "weight_t2v": 0.0,
            })
    return rows


def script_segments(root: Path) -> dict[str, list[dict]]:
    """video file -> the commanded script ([{start, end, keys, mouse}], transitions) of rendered worlds."""
    import pyarrow.parquet as pq

    path = root / "ground_truth" / "clips.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: labels 'script' needs the renderer's ground truth")
    return {r["video_file"]: json.loads(r["script"]) for r in pq.read_table(path).to_pylist()}


def script_rows(clip, root: Path, script: list[dict] | None) -> list[dict]:
    """curate_real-shaped rows of one rendered clip, a row per script segment (labels from the script).
    A clip without a script, or whose video is missing or unreadable, gives no rows (logged)."""
    from yume.datasets.manifest import file_sha256, row_id
    from yume.datasets.sekai import VideoError, probe_video
    from yume.tasks.curate_real import QuarantineError, clip_inputs

    try:
        if not script:
            raise ValueError("no script in the ground truth")
        video, camera = clip_inputs(clip, root)
        n_frames, fps, _, _ = probe_video(video)
        content_hash = file_sha256(video, camera)
    except (OSError, ValueError, VideoError, QuarantineError) as e:
        log.warning("training world %s skipped: %s", clip.video_file, e)
        return []
    return [{"id": row_id(clip.video_file, f"{s['start']}-{s['end']}"), "source_uri": clip.video_file,
             "content_hash": content_hash, "status": "ok", "video_uri": clip.video_file, "start_frame": s["start"],
             "end_frame": s["end"], "num_frames": n_frames, "fps": fps, "keys": s["keys"], "mouse": s["mouse"],
             "caption": clip.caption}
            for s in script if s["end"] <= n_frames - 1]


# ------------------------------------------------------------------------------------------- frames


def frame_stride(src_fps: float, target_fps: float) -> int:
    """Read every k-th frame of a ``src_fps`` video to approach ``target_fps`` (never faster than the source)."""
    return max(1, int(round(float(src_fps) / float(target_fps))))


def strided_frames(clip_frames: int, stride: int, temporal_factor: int = 1) -> int:
    """Pixel frames of a clip read every ``stride`` frames, trimmed to ``k * tf + 1`` for a temporal codec."""
    n = (int(clip_frames) - 1) // stride + 1
    return n if temporal_factor == 1 else (n - 1) // temporal_factor * temporal_factor + 1


def latent_frame_count(pixel_frames: int, temporal_factor: int) -> int:
    return pixel_frames if temporal_factor == 1 else (pixel_frames - 1) // temporal_factor + 1


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, height, width, 3): centre crop to the target aspect, then area resize."""
    import cv2

    t, h, w, _ = frames.shape
    if (h, w) == (height, width):
        return frames
    target = width / height
    if w / h > target:  # too wide
        cw = int(round(h * target))
        x0 = (w - cw) // 2
        frames = frames[:, :, x0 : x0 + cw]
    elif w / h < target:
        ch = int(round(w / target))
        y0 = (h - ch) // 2
        frames = frames[:, y0 : y0 + ch]
    interp = cv2.INTER_AREA if frames.shape[1] > height else cv2.INTER_CUBIC
    return np.stack([cv2.resize(f, (width, height), interpolation=interp) for f in frames])


def read_clip_frames(path: Path, clip_frames: int, stride: int, height: int, width: int, temporal_factor: int = 1,
                     indices: list[int] | None = None) -> np.ndarray:
    """The clip's frames at the training frame rate and resolution, (T, height, width, 3) uint8 (decord).
    ``indices``: strided frame numbers to read (default: all)."""
    from yume.datasets.sekai import read_frames

    n = strided_frames(clip_frames, stride, temporal_factor)
    idx = list(range(n)) if indices is None else list(indices)
    frames = read_frames(path, [i * stride for i in idx])
    return resize_frames(frames, height, width)


# -------------------------------------------------------------------------------------------- cache


def codec_fingerprint(model_cfg) -> dict:
    """What identifies the codec's latents: its config, plus the weight files of a pretrained VAE."""
    c = model_cfg.codec
    fp: dict[str, Any] = {"codec": c.model_dump(mode="json")}
    if c.kind == "wan_vae" and c.pretrained_path:
        p = Path(c.pretrained_path)
        fp["files"] = sorted((f.name, f.stat().st_size) for f in p.glob("*") if f.is_file())
    return fp


def cache_key(profile, encoder_id: str) -> str:
    """Key of the latent + text cache: codec, text encoder and the sample settings that change the tensors
    (for a temporal codec also the aligned encodings' settings, ``aligned_settings``)."""
    t, ts, m = profile.train, profile.training_set, profile.model
    settings = {"height": t.height, "width": t.width, "fps": t.fps, "dtype": ts.cache_dtype}
    aligned = aligned_settings(profile)
    if aligned:
        settings["aligned"] = aligned
    return _sha(CACHE_FORMAT, codec_fingerprint(m), encoder_id, m.text.model_dump(mode="json"), settings)[:16]


# ------------------------------------------------------------------------------- aligned encodings
#
# A temporal codec (the Wan VAE, 4 frames per latent, causal) encodes a clip's latent c with the context of the
# frames before it, and its latent 0 is a single frame. Inference encodes differently: a T2V chunk is decoded on
# its own (latent 0 = one frame) and an I2V image is the image repeated 4 (n - 1) + 1 times (n latents). So for
# temporal codecs the cache also holds, for ``aligned_per_row`` positions c of each row, the encodings inference
# would make: ``t2v/<clip>/<c>`` = the chunk's pixel frames [4c, 4 (c + chunk - 1)] encoded alone, and
# ``still/<clip>/<c>`` = the anchor frame 4 (c - 1) repeated 4 (n - 1) + 1 times then the chunk's frames
# [4c - 3, 4 (c + chunk - 1)], encoded together (n + chunk latents). T2V and still-image steps then read these;
# history steps slice the whole-clip latents (a history is a clip's past, as in a rollout). Frame-wise codecs
# (tiny's patch codec) give identical tensors either way, so nothing extra is stored for them.


def aligned_settings(profile) -> dict | None:
    """What the aligned encodings depend on, or None for a frame-wise codec."""
    if profile.model is None or profile.model.codec.kind == "patch":
        return None
    t = profile.train
    return {"k": profile.training_set.aligned_per_row, "chunk": t.chunk_frames or profile.model.chunk_frames,
            "still": t.still_image_frames}


def aligned_positions(row_id: str, lo: int, hi: int, k: int) -> list[int]:
    """``k`` distinct chunk positions in [lo, hi] (all when fewer), a pure function of the row id."""
    if hi < lo:
        return []
    n = hi - lo + 1
    rng = np.random.default_rng(int(_sha("aligned", row_id)[:12], 16))
    return sorted(int(lo + x) for x in rng.choice(n, size=min(k, n), replace=False))


def aligned_pixel_indices(c: int, chunk: int, still: int, tf: int) -> tuple[list[int], list[int]]:
    """Strided pixel frame indices of the T2V encoding and of the still-image encoding at chunk position c."""
    t2v = list(range(tf * c, tf * (c + chunk - 1) + 1))
    still_idx = [tf * (c - 1)] * (tf * (still - 1) + 1) + list(range(tf * c - tf + 1, tf * (c + chunk - 1) + 1))
    return t2v, still_idx


def text_key(text: str) -> str:
    return _sha("text", text)[:20]


_DTYPES = {"float16": "float16", "bfloat16": "bfloat16", "float32": "float32"}


@dataclass
class CacheLayout:
    root: Path

    @property
    def latents_dir(self) -> Path:
        return self.root / "latents"

    @property
    def latents_index(self) -> Path:
        return self.root / "latents_index.parquet"

    @property
    def text_file(self) -> Path:
        return self.root / "text.safetensors"

    @property
    def text_index(self) -> Path:
        return self.root / "text_index.parquet"

    @property
    def info(self) -> Path:
        return self.root / "cache.json"

    def shard_file(self, shard: str) -> Path:
        return self.latents_dir / f"part-{shard}.safetensors"

    def marker(self, shard: str) -> Path:
        return self.latents_dir / f"_SUCCESS.{shard}.json"


def clip_shards(clips: list[dict], per_shard: int) -> dict[str, list[dict]]:
    """Clips grouped (sorted by key) into shards named by the hash of their keys."""
    ordered = sorted(clips, key=lambda c: c["clip_key"])
    out = {}
    for i in range(0, len(ordered), per_shard):
        group = ordered[i : i + per_shard]
        out[_sha([c["clip_key"] for c in group])[:16]] = group
    return out


def shard_complete(layout: CacheLayout, shard: str) -> dict | None:
    m, f = layout.marker(shard), layout.shard_file(shard)
    if not (m.is_file() and f.is_file()):
        return None
    try:
        marker = json.loads(m.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return marker if marker.get("bytes") == f.stat().st_size else None


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def encode_clip_shard(layout: CacheLayout, shard: str, clips: list[dict], roots: dict[str, Path], codec, height: int,
                      width: int, target_fps: float, dtype: str, batch_frames: int = 64,
                      aligned: dict | None = None) -> dict:
    """Encode every clip of a shard to latents ``[F, C, h, w]`` and write the shard + its marker. ``aligned``
    (temporal codecs): also the T2V and still-image encodings at each row's aligned positions (clip ``spans``)."""
    import torch
    from safetensors.torch import save_file

    tensors, entries = {}, []
    tf = codec.temporal_factor
    for c in clips:
        stride = frame_stride(c["fps"], target_fps)
        path = roots[c["video_root"]] / c["video_uri"]
        frames = read_clip_frames(path, c["clip_frames"], stride, height, width, tf)
        video = torch.from_numpy(frames).permute(3, 0, 1, 2).float().div(127.5).sub(1).unsqueeze(0)
        if tf == 1:  # frame-wise codec: encode in slices to bound memory
            z = torch.cat([codec.encode(video[:, :, i : i + batch_frames]) for i in range(0, video.shape[2], batch_frames)], 2)
        else:
            z = codec.encode(video)
        lat = z[0].permute(1, 0, 2, 3).contiguous().to(getattr(torch, _DTYPES[dtype]))
        tensors[f"clip/{c['clip_key']}"] = lat
        positions = []
        if aligned and tf > 1:
            positions = clip_aligned_positions(c, stride, aligned, tf)
            for pos in positions:
                for kind, idx in zip(("t2v", "still"), aligned_pixel_indices(pos, aligned["chunk"], aligned["still"], tf)):
                    z = codec.encode(video[:, :, idx])
                    tensors[f"{kind}/{c['clip_key']}/{pos}"] = (
                        z[0].permute(1, 0, 2, 3).contiguous().to(getattr(torch, _DTYPES[dtype])))
        entries.append({"clip_key": c["clip_key"], "video_root": c["video_root"], "video_uri": c["video_uri"],
                        "stride": stride, "pixel_frames": int(frames.shape[0]), "latent_frames": int(lat.shape[0]),
                        "shape": list(lat.shape), "shard": shard, "aligned": positions})
    f = layout.shard_file(shard)
    _atomic(f, lambda p: save_file(tensors, str(p), metadata={"format": "yume-latents", "shard": shard}))
    marker = {"shard": shard, "clips": entries, "bytes": f.stat().st_size}
    _atomic(layout.marker(shard), lambda p: p.write_text(json.dumps(marker)))
    return marker


def clip_aligned_positions(clip: dict, stride: int, aligned: dict, tf: int) -> list[int]:
    """The union of the aligned positions of a clip's rows (``clip['spans']``: (row id, start, end))."""
    from yume.datasets.foundation_data import chunk_positions

    out = set()
    for row_id, start, end in clip.get("spans", []):
        lo, hi = chunk_positions(start, end, clip["clip_frames"], stride, aligned["chunk"], tf)
        out.update(aligned_positions(row_id, lo, hi, aligned["k"]))
    return sorted(out)


def write_latents_index(layout: CacheLayout, markers: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame([e for m in markers for e in m["clips"]])
    _atomic(layout.latents_index, lambda p: df.to_parquet(p, index=False))
    return df


def remove_stale_latent_shards(layout: CacheLayout, keep: set[str]) -> int:
    n = 0
    for f in layout.latents_dir.glob("part-*.safetensors"):
        shard = f.name[len("part-") : -len(".safetensors")]
        if shard not in keep:
            f.unlink(missing_ok=True)
            layout.marker(shard).unlink(missing_ok=True)
            n += 1
    return n


def write_text_cache(layout: CacheLayout, texts: list[str], encoder, batch: int = 32) -> dict:
    """Embeddings of every distinct text (trimmed to its tokens); reuses what the file already holds."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    wanted = {text_key(t): t for t in sorted(set(t for t in texts if t))}
    have = {}
    if layout.text_file.is_file() and layout.text_index.is_file():
        idx = pd.read_parquet(layout.text_index)
        with safe_open(str(layout.text_file), framework="pt") as f:
            names = set(f.keys())
            have = {k: f.get_tensor(f"t/{k}") for k in idx.text_key if k in wanted and f"t/{k}" in names}
    todo = [k for k in wanted if k not in have]
    for i in range(0, len(todo), batch):
        keys = todo[i : i + batch]
        for k, emb in zip(keys, encoder.encode([wanted[k] for k in keys])):
            have[k] = emb.contiguous()
    if todo or set(have) != set(wanted) or not layout.text_file.is_file():
        tensors = {f"t/{k}": have[k] for k in sorted(wanted)}
        if not tensors:
            import torch

            tensors = {"empty": torch.zeros(1)}
        _atomic(layout.text_file, lambda p: save_file(tensors, str(p), metadata={"format": "yume-text"}))
        df = pd.DataFrame({"text_key": sorted(wanted), "text": [wanted[k] for k in sorted(wanted)]})
        _atomic(layout.text_index, lambda p: df.to_parquet(p, index=False))
    return {"texts": len(wanted), "encoded": len(todo)}


def manifest_digest(rows: list[dict]) -> str:
    """Hash of the training manifest's content (recorded in checkpoints: the data hash)."""
    return _sha(sorted((r["id"], r["clip_key"], r["weight_i2v"], r["weight_t2v"], r.get("i2v_text"),
                        r.get("t2v_text")) for r in rows))[:16]
