"""score_and_filter without a flow: frame sampling, per-item quarantine (decode failure, NaN score, model
error, OOM), composite + per-source selection, and the out-of-environment scoring service (lite)."""

import json
import sys

import numpy as np
import pytest
import torch

from yume.config import ScoreAndFilterConfig, SelectRule
from yume.datasets.procedural import ProceduralWorldConfig, write_sekai_dataset
from yume.datasets.sekai import read_annotations, read_frames
from yume.tasks.score_and_filter import ScoreWorker, score_rows, scorer_identity, scoring_indices
from yume.tasks.scoring import LITE_POLICY_V1, VBENCH_POLICY_V1
from yume.tasks.scoring_lite import LiteScorer


def test_scoring_indices_subsample_towards_the_score_rate():
    idx, fps = scoring_indices(0, 240, 30.0, 16.0, 32)
    assert fps == 15.0 and np.all(np.diff(idx) == 2) and len(idx) == 32 and idx[0] == 88  # the middle 32
    idx, fps = scoring_indices(0, 17, 16.0, 16.0, 32)
    assert idx == list(range(17)) and fps == 16.0


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = write_sekai_dataset(tmp_path_factory.mktemp("score") / "sekai",
                               ProceduralWorldConfig(n_clips=3, frames_per_clip=40, height=32, width=32, seed=4))
    return [str(root / c.video_file) for c in read_annotations(root)]


def _item(i, path):
    return {"id": f"v{i}", "video_path": path, "frame_indices": list(range(0, 40, 2)), "fps": 15.0}


def test_score_worker_quarantines_each_failure_kind(clips, tmp_path, monkeypatch):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 2048)
    worker = ScoreWorker("lite", ScoreAndFilterConfig().model_dump(mode="json"))
    assert worker.describe()["is_vbench"] is False
    items = [_item(0, clips[0]), _item(1, str(broken)), _item(2, clips[1]), _item(3, clips[2]),
             _item(4, clips[0]), _item(5, clips[1])]
    real_score = worker.scorer.score
    calls = {"n": 0}

    def faulty(frames):
        calls["n"] += 1
        if calls["n"] == 2:
            return {**real_score(frames), "lite_sharpness": float("nan")}
        if calls["n"] == 3:
            raise torch.OutOfMemoryError("CUDA out of memory")
        if calls["n"] == 4:
            raise ValueError("optical flow failed")
        return real_score(frames)

    monkeypatch.setattr(worker.scorer, "score", faulty)
    results = worker.score(items)
    reasons = [r["error"].split(":")[0] if r["error"] else None for r in results]
    assert reasons == [None, "decode_failed", "nan_score", "oom", "model_error", None]
    assert results[0]["frames_scored"] == 20 and set(results[0]["raw"]) == set(LiteScorer.dimensions)
    assert all(r["scorer"] == "lite-opencv" and r["is_vbench"] is False for r in results)


def _results(composites):
    dims = list(LITE_POLICY_V1.ranges)
    return {vid: {"status": "ok", "error": None, "raw": {d: c for d in dims}, "frames_scored": 8,
                  "scorer": "lite-opencv", "is_vbench": False} for vid, c in composites.items()}


def test_selection_is_per_source_top_k_fraction_or_all():
    items = [{"id": f"{src}{i}", "upstream_kind": src, "source_uri": "s", "content_hash": "h", "video_uri": "v.mp4",
              "video_root": "media", "start_frame": 0, "end_frame": 8} for src in ("real", "synthetic", "events")
             for i in range(4)]
    scores = {it["id"]: 0.1 + 0.2 * int(it["id"][-1]) for it in items}
    results = _results(scores)
    results["synthetic3"] = {"status": "quarantined", "error": "decode_failed: x"}
    common = {"stage": "score_and_filter", "stage_version": "1", "config_hash": "c", "scorer": "lite-opencv",
              "is_vbench": False, "policy": LITE_POLICY_V1.tag}
    rows = {r["id"]: r for r in score_rows(items, results, LITE_POLICY_V1,
                                           {"real": SelectRule(top_fraction=0.5), "synthetic": SelectRule(top_k=1)},
                                           common)}
    assert [rows[f"real{i}"]["selected"] for i in range(4)] == [False, False, True, True]
    assert [rows[f"synthetic{i}"]["selected"] for i in range(4)] == [False, False, True, False]
    assert all(rows[f"events{i}"]["selected"] for i in range(4)) and rows["events0"]["selection_rule"] == "all"
    assert rows["real3"]["rank_in_source"] == 1 and rows["real0"]["rank_in_source"] == 4
    assert rows["synthetic3"]["composite"] is None and rows["synthetic3"]["status"] == "quarantined"
    assert rows["real2"]["composite"] == pytest.approx(0.5) and rows["real2"]["policy"] == "lite@1"
    assert json.loads(rows["real2"]["normalised"])["lite_noise"] == pytest.approx(0.5)
    # Raw scores of one family never get another family's composite: the row is quarantined instead.
    mixed = score_rows(items[:1], _results({"real0": 0.5}), VBENCH_POLICY_V1, {}, common)
    assert mixed[0]["status"] == "quarantined" and mixed[0]["error"].startswith("policy_mismatch")


def test_config_refuses_a_policy_of_another_scorer_family():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="another scorer family"):
        ScoreAndFilterConfig(scorer="lite", policy="vbench-leaderboard@1")


def test_random_vbench_weights_label_every_row_and_change_the_cache_key():
    from yume.flows.score_and_filter import SCORING_SECTIONS

    vbench = {"scorer": "vbench", "policy": "vbench-leaderboard@1"}
    assert scorer_identity(ScoreAndFilterConfig()) == ("lite-opencv", None)
    assert scorer_identity(ScoreAndFilterConfig(**vbench)) == ("vbench-0.1.5", None)
    name, label = scorer_identity(ScoreAndFilterConfig(**vbench, vbench_weights="random"))
    assert label == "weights: random, values not meaningful" and name == f"vbench-0.1.5 ({label})"
    assert "vbench_weights" in SCORING_SECTIONS  # random-weight scores are never reused for real weights
    items = [{"id": "s0", "upstream_kind": "synthetic", "source_uri": "u", "content_hash": "h", "video_uri": "v",
              "video_root": "media", "start_frame": 0, "end_frame": 8}]
    results = {"s0": {"status": "ok", "raw": {d: 0.5 for d in VBENCH_POLICY_V1.weights} | {"imaging_quality": 50.0},
                      "frames_scored": 8, "scorer": name, "is_vbench": True}}
    common = {"stage": "score_and_filter", "stage_version": "1", "config_hash": "c", "scorer": name,
              "is_vbench": True, "policy": VBENCH_POLICY_V1.tag}
    (row,) = score_rows(items, results, VBENCH_POLICY_V1, {}, common)
    assert row["scorer"].endswith("(weights: random, values not meaningful)") and row["status"] == "ok"


def test_scoring_service_subprocess_matches_in_process(clips):
    from yume.tasks.scoring_service import SubprocessScorer

    frames = read_frames(clips[0], list(range(0, 40, 2)))
    service = SubprocessScorer(sys.executable, "lite")
    try:
        assert service.name == "lite-opencv" and not service.is_vbench
        remote = service.score(frames)
        assert remote == pytest.approx(LiteScorer().score(frames))
        with pytest.raises(RuntimeError, match="expected uint8"):
            service.score(frames[:, :, :, :1])  # a bad request fails that request only
        assert service.score(frames) == pytest.approx(remote)
    finally:
        service.close()
    with pytest.raises(FileNotFoundError, match="setup_vbench_env"):
        SubprocessScorer("/nonexistent/python", "vbench")
    with pytest.raises(RuntimeError, match="applies to the vbench scorer only"):
        SubprocessScorer(sys.executable, "lite", weights="random")
