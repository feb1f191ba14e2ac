"""Normalisation policies, composite score, top-k selection and the histogram figure."""

import math

import pytest
from pydantic import ValidationError

from yume.tasks.scoring import (
    LITE_POLICY_V1,
    POLICIES,
    VBENCH_POLICY_V1,
    NormalisationPolicy,
    composite_score,
    score_histogram_png,
    select_top,
)

# Yume-1.5's published VBench numbers (REFERENCE section 8); MUSIQ imaging quality is on 0-100.
YUME15 = {
    "subject_consistency": 0.932,
    "background_consistency": 0.945,
    "motion_smoothness": 0.985,
    "aesthetic_quality": 0.506,
    "imaging_quality": 72.8,
    "dynamic_degree": 1.0,
}


def test_vbench_policy_matches_leaderboard_formula():
    norm = VBENCH_POLICY_V1.normalise(YUME15)
    assert norm["imaging_quality"] == pytest.approx(0.728)  # /100 first, then 0-1 min-max
    assert norm["subject_consistency"] == pytest.approx((0.932 - 0.1462) / (1 - 0.1462))
    assert norm["background_consistency"] == pytest.approx((0.945 - 0.2615) / (1 - 0.2615))
    assert norm["motion_smoothness"] == pytest.approx((0.985 - 0.706) / (0.9975 - 0.706))
    weights = {d: 1.0 for d in norm} | {"dynamic_degree": 0.5}
    expected = sum(weights[d] * norm[d] for d in norm) / 5.5
    assert composite_score(YUME15, VBENCH_POLICY_V1) == pytest.approx(expected)


def test_normalised_values_are_clipped():
    low = dict(YUME15, subject_consistency=0.0, motion_smoothness=1.0)
    norm = VBENCH_POLICY_V1.normalise(low)
    assert norm["subject_consistency"] == 0.0 and norm["motion_smoothness"] == 1.0


def test_policy_refuses_other_scorer_family():
    lite_raw = {d: 0.5 for d in LITE_POLICY_V1.ranges}
    with pytest.raises(KeyError, match="vbench-leaderboard@1"):
        composite_score(lite_raw, VBENCH_POLICY_V1)
    assert composite_score(lite_raw, LITE_POLICY_V1) == pytest.approx(0.5)


def test_policy_validation_and_tags():
    assert set(POLICIES) == {"vbench-leaderboard@1", "lite@1"}
    with pytest.raises(ValidationError):
        NormalisationPolicy(name="x", version="1", is_vbench=False, ranges={"a": (1.0, 0.0)}, weights={"a": 1.0})
    with pytest.raises(ValidationError):
        NormalisationPolicy(name="x", version="1", is_vbench=False, ranges={"a": (0.0, 1.0)}, weights={"b": 1.0})
    with pytest.raises(ValueError, match="not finite"):
        composite_score(dict(YUME15, aesthetic_quality=math.nan), VBENCH_POLICY_V1)


def test_select_top_k_fraction_and_ties():
    scores = {"c": 0.5, "a": 0.9, "b": 0.5, "d": 0.1, "e": math.nan}
    assert select_top(scores, k=3) == ["a", "b", "c"]  # b and c tie: id order
    assert select_top(dict(reversed(list(scores.items()))), k=3) == ["a", "b", "c"]  # dict order irrelevant
    assert select_top(scores, fraction=0.5) == ["a", "b", "c"]  # ceil(2.5)
    assert select_top(scores, k=10)[-1] == "e"  # NaN last
    assert select_top(scores, fraction=0.0) == []
    with pytest.raises(ValueError):
        select_top(scores, k=1, fraction=0.5)
    with pytest.raises(ValueError):
        select_top(scores)


def test_histogram_png(tmp_path):
    path = score_histogram_png({f"v{i}": i / 100 for i in range(100)}, tmp_path / "sub" / "hist.png", threshold=0.8)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000


def test_vbench_paths_follow_env(tmp_path, monkeypatch):
    from yume.tasks import scoring_vbench as sv

    monkeypatch.setenv("VBENCH_CACHE_DIR", str(tmp_path / "vb"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    paths = sv.expected_weight_paths()
    assert set(paths) == set(sv.VBENCH_DIMENSIONS) == set(VBENCH_POLICY_V1.ranges)
    assert paths["subject_consistency"][1] == tmp_path / "th" / "hub" / "checkpoints" / "dino_vitbase16_pretrain.pth"
    assert paths["imaging_quality"] == [tmp_path / "vb" / "pyiqa_model" / "musiq_spaq_ckpt-358bb6af.pth"]
    with pytest.raises(sv.VBenchWeightsMissing, match="amt-s.pth"):
        sv.check_weights(["motion_smoothness"])


def test_vbench_scorer_explains_missing_vbench():
    from yume.tasks import scoring_vbench as sv

    try:
        import vbench  # noqa: F401
    except ImportError:
        with pytest.raises(sv.VBenchUnavailable, match="setup_vbench_env.sh"):
            sv.VBenchScorer()
    else:
        pytest.skip("vbench is importable here (the vbench env): covered by test_scoring_vbench.py")
