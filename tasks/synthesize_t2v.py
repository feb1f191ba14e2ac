"""Per-item work of `synthesize_t2v`: an OpenVid-style caption table -> dedup -> seeded sample -> Wan T2V.

- The caption table is CSV or Parquet with OpenVid-1M's columns (``video``, ``caption``, scores ...); the
  key and caption columns are configurable. Rows with an empty caption or a repeated key cannot be
  sampled: they are counted and listed in the stage's dedup report, never silently lost.
- Dedup: `yume.tasks.dedup` (all-MiniLM-L6-v2 sentence embeddings, greedy in table order: a caption whose
  cosine similarity to an earlier kept one is >= ``dedup_threshold`` is dropped). Its result is cached in
  the stage's report directory under a key of the table's bytes and the threshold.
- Sampling: `yume.tasks.dedup.sample_captions` (N keys drawn without replacement, seeded, independent of
  table order). Each sampled caption gets its own generation seed, derived from the stage seed and its key.
- On `tiny`, `write_tiny_caption_table` writes a small table with planted near-duplicates (light
  paraphrases) into the work directory; `yume15` reads OpenVid-1M's CSV from a local path.

Row ids: uuid5 of (caption table URI, ``caption=<key>``): the table is the source, the key the span.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from yume.datasets.manifest import row_id

STAGE = "synthesize_t2v"

DISTINCT_CAPTIONS = [
    "A man walks down a busy city street at night under bright neon signs.",
    "A red car drives along a winding mountain road lined with autumn trees.",
    "A dog runs along the beach at sunset, chasing the waves as they roll in.",
    "Close-up of a chef slicing fresh vegetables on a wooden board in a restaurant kitchen.",
    "Aerial view of a snow-covered pine forest on a cold, still winter morning.",
    "A child rides a bicycle through a quiet suburban park in spring.",
    "Rain falls on a crowded train platform while commuters wait under umbrellas.",
    "A hiker climbs a rocky trail toward a summit hidden in fog.",
    "Time-lapse of clouds drifting over a desert canyon as shadows move across the rocks.",
    "An old fisherman repairs his nets on a small wooden boat in a harbour.",
    "A street market at dusk, with vendors selling fruit under strings of lights.",
    "A cat sleeps on a windowsill while snow falls outside.",
    "Waves crash against a lighthouse during a storm at night.",
    "A group of friends plays football on a dusty field at sunset.",
    "A cyclist speeds down an empty highway through flat farmland.",
    "Lanterns float up into the night sky above a crowded river festival.",
    "A barista pours steamed milk into a cup of coffee, drawing a leaf pattern.",
    "A tram moves slowly through a narrow cobbled street in an old European town.",
    "Fireworks burst above a city skyline reflected in the harbour water.",
    "A horse gallops across a green meadow with mountains in the background.",
    "Steam rises from hot springs surrounded by snowy rocks.",
    "A woman reads a book on a park bench under falling autumn leaves.",
    "Commuters cross a wide intersection in the rain, seen from above.",
    "A small sailboat glides across a calm lake at dawn.",
]
# Light edits of DISTINCT_CAPTIONS[i]: tense, punctuation, articles, one word. MiniLM cosine >= 0.9.
NEAR_DUPLICATES = [
    (0, "A man is walking down a busy city street at night under bright neon signs."),
    (1, "a red car driving along a winding mountain road lined with autumn trees"),
    (2, "A dog runs along the beach at sunset chasing the waves as they roll in."),
    (3, "Close up of a chef slicing fresh vegetables on a wooden board in a restaurant's kitchen."),
    (4, "Aerial view of a snow covered pine forest on a cold and still winter morning."),
    (5, "A child is riding a bicycle through a quiet suburban park in spring."),
    (6, "Rain is falling on a crowded train platform while commuters wait under umbrellas."),
    (7, "A hiker climbs the rocky trail toward a summit hidden in the fog."),
]


def write_tiny_caption_table(path: Path, rows: int) -> dict[str, str]:
    """Write an OpenVid-style CSV of ``rows`` captions, about a quarter of them planted near-duplicates of
    earlier rows (each right after a few distinct rows). Returns {duplicate key: original key}.
    Deterministic; rewritten only when its content would change."""
    import pandas as pd

    n_dup = min(len(NEAR_DUPLICATES), rows // 4)
    n_base = min(len(DISTINCT_CAPTIONS), rows - n_dup)
    records, planted = [], {}
    for i in range(n_base):
        records.append({"video": f"tiny_openvid_{i:04d}.mp4", "caption": DISTINCT_CAPTIONS[i]})
    for j, (orig, text) in enumerate(NEAR_DUPLICATES[:n_dup]):
        if orig >= n_base:
            continue
        key = f"tiny_openvid_dup_{j:04d}.mp4"
        records.insert(min(len(records), orig + 3 + 2 * j), {"video": key, "caption": text})
        planted[key] = f"tiny_openvid_{orig:04d}.mp4"
    for k, rec in enumerate(records):  # OpenVid-1M's other columns, plausible constants
        rec.update({"aesthetic score": 5.0 + (k % 7) / 10, "motion score": 2.0 + (k % 5) / 4,
                    "temporal consistency score": 0.98, "camera motion": "static", "frame": 81, "fps": 16.0,
                    "seconds": 5.06})
    csv = pd.DataFrame(records).to_csv(index=False)
    path = Path(path)
    if not (path.is_file() and path.read_text() == csv):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{path.name}")
        tmp.write_text(csv)
        tmp.replace(path)
    return planted


def read_caption_table(path: Path, id_column: str, caption_column: str) -> tuple[list[str], list[str], list[dict]]:
    """(keys, captions, invalid rows) of a CSV/Parquet caption table, in table order."""
    import pandas as pd

    from yume.config import ConfigError

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"synthesize_t2v.caption_table: {str(path)!r} does not exist")
    if path.suffix.lower() in (".parquet", ".pq"):
        df = pd.read_parquet(path, columns=[id_column, caption_column])
    else:
        try:
            df = pd.read_csv(path, usecols=[id_column, caption_column], keep_default_na=False, dtype=str)
        except ValueError as e:
            raise ConfigError(f"synthesize_t2v.caption_table: {e}") from None
    missing = {id_column, caption_column} - set(df.columns)
    if missing:
        raise ConfigError(f"synthesize_t2v.caption_table: columns {sorted(missing)} missing in {path.name}")
    keys, captions, invalid, seen = [], [], [], set()
    for i, (key, cap) in enumerate(zip(df[id_column].astype(str), df[caption_column].fillna("").astype(str))):
        if not cap.strip():
            invalid.append({"row": i, "key": key, "reason": "caption_empty"})
        elif key in seen:
            invalid.append({"row": i, "key": key, "reason": "duplicate_key"})
        else:
            seen.add(key)
            keys.append(key)
            captions.append(cap.strip())
    return keys, captions, invalid


def dedup_cached(keys: list[str], captions: list[str], threshold: float, cache: Path) -> tuple[list[str], list]:
    """`dedup_captions`, cached on (keys, captions, threshold): embedding a large table is the slow part."""
    from yume.tasks.dedup import dedup_captions

    key = hashlib.sha256(json.dumps([keys, captions, threshold]).encode()).hexdigest()[:32]
    if cache.is_file():
        try:
            stored = json.loads(cache.read_text())
            if stored.get("key") == key:
                return stored["keep"], [tuple(d) for d in stored["dropped"]]
        except (OSError, json.JSONDecodeError):
            pass
    keep, dropped = dedup_captions(keys, captions, threshold=threshold)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".tmp-{cache.name}")
    tmp.write_text(json.dumps({"key": key, "keep": keep, "dropped": dropped}))
    tmp.replace(cache)
    return keep, dropped


def synthetic_row(item: dict, result: dict, common: dict) -> dict:
    """The `synthetic` manifest row of one sampled caption."""
    ok = result["status"] == "ok"
    return {
        **common,
        "id": item["id"], "source_uri": item["source_uri"],
        "content_hash": hashlib.sha256(item["prompt"].encode()).hexdigest(),
        "status": result["status"], "error": result.get("error"),
        "caption_key": item["key"], "prompt": item["prompt"], "seed": item["seed"],
        "video_uri": item["video_uri"] if ok else None, "video_sha256": result.get("video_sha256"),
        "num_frames": result.get("num_frames"), "height": result.get("height"), "width": result.get("width"),
        "fps": result.get("fps"),
    }


def item_id(table_uri: str, key: str) -> str:
    return row_id(table_uri, f"caption={key}")
