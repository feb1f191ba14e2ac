"""The work behind the ``build_training_set`` flow (pure functions; the flow adds Prefect tasks and caching).

See ``yume.datasets.training_set`` for the manifest and cache formats.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import Counter
from pathlib import Path

from yume.datasets.manifest import completed_shards, marker_path, read_marker, shard_path, write_shard
from yume.datasets.training_set import (
    TRAIN,
    aligned_settings,
    CacheLayout,
    cache_key,
    clip_shards,
    codec_fingerprint,
    encode_clip_shard,
    remove_stale_latent_shards,
    shard_complete,
    world_config,
    worlds_root,
    write_latents_index,
    write_text_cache,
)

log = logging.getLogger(__name__)
WORLDS_MARKER = "_WORLDS.json"


def ensure_training_worlds(profile) -> Path | None:
    """Render ``training_set.worlds`` once per world config (marker-guarded); None when not configured."""
    from yume.config import _canonical
    from yume.datasets.procedural import write_sekai_dataset

    if profile.training_set.worlds is None:
        return None
    root = worlds_root(profile)
    cfg = world_config(profile)
    key = json.loads(_canonical(cfg.model_dump(mode="json")))
    marker = root / WORLDS_MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("world") == key:
        return root
    if root.exists():
        shutil.rmtree(root)
    write_sekai_dataset(root, cfg)
    marker.write_text(json.dumps({"world": key}))
    return root


def write_train_manifest(profile, rows: list[dict]) -> dict[str, dict]:
    """One shard per source (``part-<source>.parquet``); shards of sources no longer present are removed.
    A shard whose marker carries the same content hash is left untouched."""
    from yume.datasets.training_set import _sha

    manifest_dir = profile.workdir_path / "manifests" / "train"
    by_source: dict[str, list[dict]] = {}
    for r in rows:
        by_source.setdefault(r["source"], []).append(r)
    markers = {}
    for source, part in sorted(by_source.items()):
        part = sorted(part, key=lambda r: r["id"])
        key = _sha(part)[:32]
        marker = read_marker(manifest_dir, source)
        if marker is not None and marker.get("content_key") == key:
            markers[source] = {**marker, "cached": True}
            continue
        markers[source] = write_shard(manifest_dir, source, part, TRAIN, extra={"content_key": key})
    for shard in completed_shards(manifest_dir) if manifest_dir.is_dir() else []:
        if shard not in by_source:
            marker_path(manifest_dir, shard).unlink(missing_ok=True)
            shard_path(manifest_dir, shard).unlink(missing_ok=True)
    return markers


def unique_clips(rows: list[dict]) -> list[dict]:
    """One entry per clip, with its rows' labelled spans (``spans``: (row id, start, end)) for aligned encodings."""
    clips = {}
    for r in rows:
        c = clips.setdefault(r["clip_key"], {**{k: r[k] for k in ("clip_key", "video_root", "video_uri", "fps",
                                                                  "clip_frames")}, "spans": []})
        c["spans"].append((r["id"], int(r["start_frame"]), int(r["end_frame"])))
    return list(clips.values())


def cache_layout(profile, encoder_id: str) -> CacheLayout:
    return CacheLayout(profile.workdir_path / "cache" / "train" / cache_key(profile, encoder_id))


def build_cache(profile, rows: list[dict], encoder=None, shard_runner=None) -> dict:
    """Latent shards for every clip the rows use (only missing ones are encoded), the text cache and the action
    table. ``shard_runner(shard, clips) -> marker`` lets the flow run each shard as a Prefect task."""
    from yume.models.codecs import build_codec
    from yume.models.text import ActionEmbeddingCache, TextEncoder

    started = time.perf_counter()
    m, t, ts = profile.model, profile.train, profile.training_set
    encoder = encoder or TextEncoder.from_config(m.text)
    layout = cache_layout(profile, encoder.encoder_id)
    layout.latents_dir.mkdir(parents=True, exist_ok=True)
    roots = {"sekai": profile.sekai_root() if (profile.data.sekai_root or profile.world) else None,
             "media": profile.media_root()}
    shards = clip_shards(unique_clips(rows), ts.clips_per_shard)
    codec = None
    markers, encoded = [], 0
    for shard, clips in shards.items():
        done = shard_complete(layout, shard)
        if done is not None:
            markers.append(done)
            continue
        if shard_runner is not None:
            markers.append(shard_runner(shard, clips))
        else:
            codec = codec or build_codec(m.codec)
            markers.append(encode_clip_shard(layout, shard, clips, roots, codec, t.height, t.width, t.fps, ts.cache_dtype,
                                             aligned=aligned_settings(profile)))
        encoded += 1
    removed = remove_stale_latent_shards(layout, set(shards))
    index = write_latents_index(layout, markers)
    texts = [x for r in rows for x in (r.get("t2v_text"), r.get("i2v_text")) if x]
    text_info = write_text_cache(layout, texts, encoder)
    actions = ActionEmbeddingCache(encoder, layout.root, m.text.vocabulary, m.text.action_prefix, m.text.max_length)
    actions.load()
    info = {"key": layout.root.name, "codec": codec_fingerprint(m), "encoder_id": encoder.encoder_id,
            "train": {"height": t.height, "width": t.width, "fps": t.fps}, "dtype": ts.cache_dtype,
            "clips": int(len(index)), "shards": len(shards), "shards_encoded": encoded, "shards_removed": removed,
            "latent_frames": int(index.latent_frames.sum()) if len(index) else 0, **text_info,
            "action_table": actions.path.name, "seconds": round(time.perf_counter() - started, 2)}
    layout.info.write_text(json.dumps(info, indent=1))
    return {**info, "root": str(layout.root)}


def encode_shard(profile, shard: str, clips: list[dict], encoder_id: str) -> dict:
    """One latent shard (what the flow's Prefect task runs)."""
    from yume.models.codecs import build_codec

    m, t, ts = profile.model, profile.train, profile.training_set
    layout = cache_layout(profile, encoder_id)
    roots = {"sekai": profile.sekai_root() if (profile.data.sekai_root or profile.world) else None,
             "media": profile.media_root()}
    return encode_clip_shard(layout, shard, clips, roots, build_codec(m.codec), t.height, t.width, t.fps, ts.cache_dtype,
                             aligned=aligned_settings(profile))


def label_counts(rows: list[dict]) -> list[dict]:
    c = Counter((r["source"], r.get("keys") or "-", r.get("mouse") or "-") for r in rows)
    return [{"source": s, "keys": k, "mouse": m, "rows": n} for (s, k, m), n in sorted(c.items())]
