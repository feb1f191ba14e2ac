"""Manifest kinds of the model-driven curation stages, registered next to ``real``.

Each stage owns one kind and writes rows keyed by its upstream row: ``upstream_id`` is the id of the row it
was derived from (a ``real`` segment for captions and scores of real video, a ``synthetic`` or ``events`` row
for their scores). Row ids follow the project rule (uuid5 of source URI + span), so a caption or score of a
real segment has the same ``id`` as the segment itself: readers join on ``id`` or ``upstream_id`` alike.

- ``captions``  (recaption): the scene caption kept for T2V, the event caption added for I2V.
- ``synthetic`` (synthesize_t2v): Wan T2V videos from deduplicated, sampled OpenVid-style captions.
- ``events``    (synthesize_events): Wan I2V event videos plus the human screening decision.
- ``scores``    (score_and_filter): raw per-dimension scores, the policy's composite, rank and selection.

Structured values that vary by scorer or sampler (raw scores, sampler settings) are JSON strings, so one
schema serves every configuration and DuckDB's ``json_extract`` reads them.
"""

from __future__ import annotations

import pyarrow as pa

from yume.datasets.manifest import ManifestKind, register_kind

CAPTIONS = register_kind(ManifestKind(
    name="captions",
    version=1,
    fields=(
        pa.field("upstream_id", pa.string(), nullable=False),  # the `real` row (same segment)
        pa.field("video_uri", pa.string(), nullable=False),  # relative to the Sekai data root
        pa.field("start_frame", pa.int64()),
        pa.field("end_frame", pa.int64()),
        pa.field("frame_indices", pa.list_(pa.int64())),  # frames shown to the captioner
        pa.field("scene_caption", pa.string()),  # the original (Sekai) caption: T2V text
        pa.field("event_caption", pa.string()),  # the new event-focused caption: I2V text
        pa.field("caption_words", pa.int64()),
        pa.field("backend", pa.string(), nullable=False),  # internvl | metadata
        pa.field("model_id", pa.string()),
        pa.field("prompt_version", pa.string()),
        pa.field("generated_tokens", pa.int64()),
        pa.field("finish_reason", pa.string()),  # eos | length | template | error
    ),
    label_columns=("backend", "finish_reason"),
))

SYNTHETIC = register_kind(ManifestKind(
    name="synthetic",
    version=1,
    fields=(
        pa.field("caption_key", pa.string(), nullable=False),  # the caption table's id column
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("pipeline", pa.string(), nullable=False),  # diffusers class
        pa.field("sampler", pa.string(), nullable=False),  # JSON: steps, guidance, shift, size, frames, ...
        pa.field("video_uri", pa.string()),  # relative to the media root (<workdir>/data)
        pa.field("video_sha256", pa.string()),
        pa.field("num_frames", pa.int64()),
        pa.field("height", pa.int64()),
        pa.field("width", pa.int64()),
        pa.field("fps", pa.float64()),
        pa.field("sample_seed", pa.int64()),  # seed of the caption sampling
        pa.field("dedup_threshold", pa.float64()),
    ),
    label_columns=("model_id",),
))

EVENTS = register_kind(ManifestKind(
    name="events",
    version=1,
    fields=(
        pa.field("item_key", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),  # urban daily life | sci-fi | fantasy | weather
        pa.field("event_text", pa.string(), nullable=False),
        pa.field("image_uri", pa.string(), nullable=False),  # first-person conditioning image (= source_uri)
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("pipeline", pa.string(), nullable=False),
        pa.field("sampler", pa.string(), nullable=False),  # JSON
        pa.field("video_uri", pa.string()),  # relative to the media root
        pa.field("video_sha256", pa.string()),
        pa.field("num_frames", pa.int64()),
        pa.field("height", pa.int64()),
        pa.field("width", pa.int64()),
        pa.field("fps", pa.float64()),
        pa.field("decision", pa.string()),  # accept | reject | pending (no decision yet)
        pa.field("reviewer", pa.string()),
        pa.field("decided_at", pa.string()),  # ISO 8601, as the decisions file states it
        pa.field("review_note", pa.string()),
    ),
    label_columns=("category", "decision"),
))

SCORES = register_kind(ManifestKind(
    name="scores",
    version=1,
    fields=(
        pa.field("upstream_kind", pa.string(), nullable=False),  # real | synthetic | events
        pa.field("upstream_id", pa.string(), nullable=False),
        pa.field("video_uri", pa.string(), nullable=False),
        pa.field("video_root", pa.string(), nullable=False),  # sekai | media
        pa.field("start_frame", pa.int64()),
        pa.field("end_frame", pa.int64()),
        pa.field("frames_scored", pa.int64()),
        pa.field("scorer", pa.string(), nullable=False),
        pa.field("is_vbench", pa.bool_(), nullable=False),
        pa.field("raw_scores", pa.string()),  # JSON {dimension: raw value}
        pa.field("normalised", pa.string()),  # JSON {dimension: value in [0, 1]} under `policy`
        pa.field("policy", pa.string(), nullable=False),  # e.g. lite@1 or vbench-leaderboard@1
        pa.field("composite", pa.float64()),
        pa.field("rank_in_source", pa.int64()),  # 1 = best of its upstream kind
        pa.field("selected", pa.bool_()),
        pa.field("selection_rule", pa.string()),  # e.g. top_k=50000 or all
    ),
    label_columns=("upstream_kind", "selected"),
))
