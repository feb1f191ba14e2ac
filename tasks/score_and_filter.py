"""Per-video work of `score_and_filter`: decode frames -> scorer -> raw scores; composite and selection.

Candidates: the ``ok`` rows of manifests/real (each segment), manifests/synthetic, and manifests/events with
``decision == accept`` (only accepted event videos go on). For each, up to ``max_frames`` frames are read:
real segments are subsampled towards ``score_fps`` (30 fps Sekai -> every 2nd frame) and the middle
``max_frames`` kept, so all sources are scored at about the same frame rate.

Scorers (`ScoreWorker`, one per Ray actor, built once): ``lite`` = `LiteScorer` in the actor (OpenCV,
NOT VBench, labelled so in every row); ``vbench`` = `VBenchScorer` in the separate `.venv-vbench`
environment, reached through a long-lived `scoring_service` child process of the actor (models load once
per actor; the actor declares the GPU; with ``vbench_weights: random`` on random-init backbones, its name
"vbench-0.1.5 (weights: random, values not meaningful)" in every row). Per-item failures: ``decode_failed``, ``nan_score`` (a raw score
that is not finite), ``model_error``, ``oom``.

Composite: `yume.tasks.scoring.composite_score` under the configured, versioned policy (``lite@1`` or
``vbench-leaderboard@1``; the policy tag is stored in every row). Selection is per source (``selection``:
``top_k`` or ``top_fraction`` by composite, ties by id; a source without a rule keeps all its scored rows):
``yume15`` keeps the best 50,000 of the 80,000 T2V videos.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from yume.tasks.ray_pool import QuarantineError, failure_result, torch_device

STAGE = "score_and_filter"
SOURCES = ("real", "synthetic", "events")


def scoring_indices(start: int, end: int, fps: float, score_fps: float, max_frames: int) -> tuple[list[int], float]:
    """Frames [start, end) at a stride towards ``score_fps``, the middle ``max_frames`` of them, and the
    frame rate of that sampling."""
    fps = fps or score_fps
    stride = max(1, round(fps / score_fps))
    idx = list(range(start, end, stride))
    if len(idx) > max_frames:
        off = (len(idx) - max_frames) // 2
        idx = idx[off : off + max_frames]
    return idx, fps / stride


def collect_candidates(profile) -> tuple[list[dict], list[str]]:
    """Scoring items from the upstream manifests; returns (items, sources whose manifest is missing)."""
    import pyarrow.compute as pc

    from yume.datasets.manifest import KINDS, ManifestError, read_manifest, resolve_uri

    s = profile.score_and_filter
    roots = {"sekai": profile.sekai_root(), "media": profile.media_root()}
    items, missing = [], []
    for source in s.sources:
        directory = profile.workdir_path / "manifests" / source
        try:
            table = read_manifest(directory, KINDS[source])
        except ManifestError:
            missing.append(source)
            continue
        table = table.filter(pc.equal(table.column("status"), "ok"))
        for row in table.to_pylist():
            if source == "events" and row["decision"] != "accept":
                continue
            if source == "real":
                root_name, start, end, fps = "sekai", row["start_frame"], row["end_frame"], row["fps"]
            else:
                root_name, start, end, fps = "media", 0, row["num_frames"], row["fps"]
            indices, sampled_fps = scoring_indices(start, end, fps, s.score_fps, s.max_frames)
            item = {
                "id": row["id"], "upstream_kind": source, "source_uri": row["source_uri"],
                "content_hash": row["content_hash"], "video_uri": row["video_uri"], "video_root": root_name,
                "start_frame": start, "end_frame": end, "frame_indices": indices, "fps": sampled_fps,
            }
            try:
                item["video_path"] = str(resolve_uri(roots[root_name], row["video_uri"]))
            except ManifestError as e:
                item["video_path"], item["path_error"] = None, f"path_escape: {e}"
            items.append(item)
    items.sort(key=lambda it: (it["upstream_kind"], it["id"]))
    return items, missing


def scorer_identity(settings) -> tuple[str, str | None]:
    """(the scorer name every row records, the label its scores carry or None) for a `ScoreAndFilterConfig`.
    Random-init VBench backbones (``vbench_weights: random``) are labelled "weights: random, values not
    meaningful", in the name itself (as `VBenchScorer.name` has it) and in the stage's report."""
    from yume.tasks.scoring_vbench import RANDOM_WEIGHTS_LABEL

    if settings.scorer == "lite":
        return "lite-opencv", None
    label = RANDOM_WEIGHTS_LABEL if settings.vbench_weights == "random" else None
    return "vbench-0.1.5" + (f" ({label})" if label else ""), label


class ScoreWorker:
    """One actor's scorer. ``score(items)`` -> one result per item: status, error, raw scores, frames."""

    def __init__(self, scorer: str, settings: dict, num_gpus: float = 0.0):
        from yume.config import ScoreAndFilterConfig

        self.settings = ScoreAndFilterConfig.model_validate(settings)
        if scorer == "lite":
            from yume.tasks.scoring_lite import LiteScorer

            self.scorer = LiteScorer()
        else:
            from yume.tasks.scoring_service import SubprocessScorer

            self.scorer = SubprocessScorer(self.settings.vbench_python, "vbench", device=torch_device(num_gpus),
                                           dimensions=self.settings.vbench_dimensions,
                                           weights=self.settings.vbench_weights)
        self.name = self.scorer.name
        self.is_vbench = bool(self.scorer.is_vbench)

    def describe(self) -> dict:
        return {"scorer": self.name, "is_vbench": self.is_vbench, "dimensions": list(self.scorer.dimensions)}

    def _score_one(self, item: dict) -> dict:
        from yume.datasets.sekai import read_frames

        frames = read_frames(Path(item["video_path"]), item["frame_indices"])
        if len(frames) < 2:
            raise QuarantineError("decode_failed", f"only {len(frames)} frames decoded")
        if self.is_vbench:
            raw = self.scorer.score(frames, fps=item["fps"])
        else:
            raw = self.scorer.score(frames)
        bad = sorted(k for k, v in raw.items() if v is None or not math.isfinite(float(v)))
        if bad:
            raise QuarantineError("nan_score", f"non-finite {', '.join(bad)}")
        return {"status": "ok", "error": None, "raw": {k: float(v) for k, v in raw.items()},
                "frames_scored": int(len(frames)), "scorer": self.name, "is_vbench": self.is_vbench}

    def score(self, items: list[dict]) -> list[dict]:
        results = []
        for item in items:
            try:
                results.append(self._score_one(item))
            except Exception as exc:  # noqa: BLE001 - one video's failure is that video's
                from yume.tasks.ray_pool import free_memory, is_oom

                if is_oom(exc):
                    free_memory()
                results.append({**failure_result(exc), "scorer": self.name, "is_vbench": self.is_vbench})
        return results


def select(scores: dict[str, float], rule) -> tuple[set[str], str]:
    """Ids kept under ``rule`` (SelectRule or None) and the rule's description."""
    from yume.tasks.scoring import select_top

    if rule is None or (rule.top_k is None and rule.top_fraction is None):
        return set(scores), "all"
    if rule.top_k is not None:
        return set(select_top(scores, k=rule.top_k)), f"top_k={rule.top_k}"
    return set(select_top(scores, fraction=rule.top_fraction)), f"top_fraction={rule.top_fraction}"


def score_rows(items: list[dict], results: dict[str, dict], policy, selection: dict, common: dict) -> list[dict]:
    """`scores` manifest rows: composite under ``policy``, rank within source, selection per source."""
    from yume.tasks.scoring import composite_score

    composite, normalised = {}, {}
    for it in items:
        res = results[it["id"]]
        if res["status"] == "ok":
            try:
                normalised[it["id"]] = policy.normalise(res["raw"])
                composite[it["id"]] = composite_score(res["raw"], policy)
            except (KeyError, ValueError) as e:
                res.update(status="quarantined", error=f"policy_mismatch: {e}")
    ranks, kept, rules = {}, set(), {}
    for source in SOURCES:
        scores = {it["id"]: composite[it["id"]] for it in items
                  if it["upstream_kind"] == source and it["id"] in composite}
        order = sorted(scores, key=lambda i: (-scores[i], i))
        ranks.update({vid: r + 1 for r, vid in enumerate(order)})
        chosen, rules[source] = select(scores, selection.get(source))
        kept |= chosen
    rows = []
    for it in items:
        res = results[it["id"]]
        ok = res["status"] == "ok"
        rows.append({
            **common,
            "id": it["id"], "source_uri": it["source_uri"], "content_hash": it["content_hash"],
            "status": res["status"], "error": res.get("error"),
            "upstream_kind": it["upstream_kind"], "upstream_id": it["id"], "video_uri": it["video_uri"],
            "video_root": it["video_root"], "start_frame": it["start_frame"], "end_frame": it["end_frame"],
            "frames_scored": res.get("frames_scored"), "scorer": res.get("scorer") or common["scorer"],
            "is_vbench": bool(res.get("is_vbench", common["is_vbench"])),
            "raw_scores": json.dumps(res["raw"], sort_keys=True) if res.get("raw") else None,
            "normalised": json.dumps(normalised[it["id"]], sort_keys=True) if ok else None,
            "composite": composite.get(it["id"]) if ok else None, "rank_in_source": ranks.get(it["id"]) if ok else None,
            "selected": (it["id"] in kept) if ok else False, "selection_rule": rules[it["upstream_kind"]] if ok else None,
        })
    return rows


def training_candidates(profile):
    """The selected videos of every source with their texts, for the training-set builder (a DataFrame):
    real segments with their scene caption (T2V) and event caption (I2V, where recaption passed), synthetic
    T2V videos with their prompt, accepted event videos with their event text and conditioning image."""
    import pandas as pd

    from yume.datasets.manifest import read_manifest
    from yume.datasets.manifest_kinds import CAPTIONS, EVENTS, SCORES, SYNTHETIC

    work = profile.workdir_path / "manifests"
    scores = read_manifest(work / "scores", SCORES).to_pandas()
    chosen = scores[(scores.status == "ok") & scores.selected]
    frames = []
    real = chosen[chosen.upstream_kind == "real"]
    if not real.empty:
        caps = (read_manifest(work / "captions", CAPTIONS).to_pandas() if (work / "captions").is_dir() else
                pd.DataFrame(columns=["id", "status", "scene_caption", "event_caption"]))
        caps = caps.assign(event_caption=caps.event_caption.where(caps.status == "ok"))
        real = real.merge(caps[["id", "scene_caption", "event_caption"]], on="id", how="left")
        frames.append(real.assign(t2v_text=real.scene_caption, i2v_text=real.event_caption, image_uri=None))
    for kind, text_col in (("synthetic", "prompt"), ("events", "event_text")):
        part = chosen[chosen.upstream_kind == kind]
        if part.empty:
            continue
        up = read_manifest(work / kind, SYNTHETIC if kind == "synthetic" else EVENTS).to_pandas()
        extra = ["id", text_col] + (["image_uri"] if kind == "events" else [])
        part = part.merge(up[extra], on="id", how="left")
        if kind == "synthetic":
            part = part.assign(t2v_text=part.prompt, i2v_text=None, image_uri=None)
        else:
            part = part.assign(t2v_text=None, i2v_text=part.event_text)
        frames.append(part)
    cols = ["id", "upstream_kind", "video_root", "video_uri", "start_frame", "end_frame", "composite",
            "t2v_text", "i2v_text", "image_uri"]
    if not frames:
        return pd.DataFrame(columns=cols)
    return pd.concat([f[cols] for f in frames], ignore_index=True)

