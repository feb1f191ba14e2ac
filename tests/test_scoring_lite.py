"""LiteScorer (NOT VBench): a clean smooth clip must outrank each degraded copy on the composite."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from yume.tasks.scoring import LITE_POLICY_V1, VideoScorer, composite_score
from yume.tasks.scoring_lite import LITE_DIMENSIONS, LiteScorer, noise_sigma


def _texture(size: int = 256, seed: int = 0) -> np.ndarray:
    """Multi-scale colour noise plus flat rectangles: smooth areas and hard edges, like a street."""
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size, 3), np.float32)
    for s in (4, 8, 16, 32):
        img += cv2.resize(rng.random((s, s, 3)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC) / 4
    for _ in range(40):
        x, y = rng.integers(0, size - 20, 2)
        w, h = rng.integers(6, 30, 2)
        img[y : y + h, x : x + w] = rng.random(3) * 0.8 + 0.1
    return np.clip(img * 255, 0, 255).astype(np.uint8)


def clean_clip(frames: int = 48, size: int = 64, seed: int = 0) -> np.ndarray:
    """A first-person-like clip: the camera pans right and slowly zooms in (walks forward), smoothly."""
    tex = _texture(256, seed)
    out = []
    for t in range(frames):
        half = 48 / (1.0 + 0.004 * t)  # half-width of the viewed window, shrinking = zoom in
        cx, cy = 100 + 1.2 * t, 128 + 0.3 * t
        s = size / (2 * half)
        m = np.float32([[s, 0, -(cx - half) * s], [0, s, -(cy - half) * s]])
        out.append(cv2.warpAffine(tex, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))
    return np.stack(out)


def add_noise(clip, sigma=20.0, seed=1):
    rng = np.random.default_rng(seed)
    return np.clip(clip + rng.normal(0, sigma, clip.shape), 0, 255).astype(np.uint8)


def add_blur(clip, sigma=1.5):
    return np.stack([cv2.GaussianBlur(f, (0, 0), sigma) for f in clip])


def add_flicker(clip, amp=25.0, seed=2):
    """Per-frame brightness jumps of +-amp grey levels."""
    gains = np.random.default_rng(seed).choice([-amp, amp], size=len(clip))
    return np.stack([np.clip(f + g, 0, 255).astype(np.uint8) for f, g in zip(clip, gains)])


def add_frozen(clip, every=3):
    """Each frame repeated `every` times (a stalled generator / dropped frames), same length."""
    return clip[[(t // every) * every for t in range(len(clip))]]


DEGRADATIONS = {"noise": add_noise, "blur": add_blur, "flicker": add_flicker, "frozen": add_frozen}
# The raw dimension each degradation must hit hardest (shows the score drops for the right reason).
EXPECTED_DROP = {"noise": "lite_noise", "blur": "lite_sharpness", "flicker": "lite_temporal_flicker",
                 "frozen": "lite_not_frozen"}


def _procedural_clip(tmp_path_factory) -> np.ndarray:
    import yume.datasets.procedural as procedural
    root = tmp_path_factory.mktemp("worlds")
    procedural.write_sekai_dataset(root, procedural.ProceduralWorldConfig(n_clips=1, seed=0))
    videos = sorted(Path(root).rglob("*.mp4"))
    assert videos, "write_sekai_dataset wrote no mp4"
    cap = cv2.VideoCapture(str(videos[0]))
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    assert len(frames) >= 8
    return np.stack(frames[:48])


@pytest.fixture(scope="module", params=["synthetic", "procedural"])
def clip(request, tmp_path_factory):
    if request.param == "synthetic":
        return clean_clip()
    return _procedural_clip(tmp_path_factory)


@pytest.fixture(scope="module")
def scorer():
    return LiteScorer()


def test_lite_scorer_is_labelled_not_vbench(scorer):
    assert isinstance(scorer, VideoScorer)
    assert scorer.is_vbench is False and not LITE_POLICY_V1.is_vbench
    assert all(d.startswith("lite_") for d in scorer.dimensions)
    assert set(scorer.dimensions) == set(LITE_POLICY_V1.ranges)


def test_raw_scores_in_unit_range(scorer, clip):
    raw = scorer.score(clip)
    assert tuple(raw) == LITE_DIMENSIONS
    assert all(0.0 <= v <= 1.0 and np.isfinite(v) for v in raw.values()), raw


@pytest.mark.parametrize("kind", sorted(DEGRADATIONS))
def test_clean_ranks_above_degraded(scorer, clip, kind):
    raw_clean = scorer.score(clip)
    raw_bad = scorer.score(DEGRADATIONS[kind](clip))
    clean, bad = composite_score(raw_clean, LITE_POLICY_V1), composite_score(raw_bad, LITE_POLICY_V1)
    assert clean > bad + 0.02, (kind, clean, bad)
    dim = EXPECTED_DROP[kind]
    assert raw_bad[dim] < raw_clean[dim] - 0.1, (dim, raw_clean[dim], raw_bad[dim])


def test_frozen_fraction_is_measured(scorer):
    clip = clean_clip()
    # Every 3rd frame is new: 2 of 3 consecutive pairs are identical.
    assert scorer.score(add_frozen(clip, every=3))["lite_not_frozen"] == pytest.approx(1 - 32 / 47)
    assert scorer.score(clip)["lite_not_frozen"] == 1.0


def test_noise_estimator_recovers_sigma():
    rng = np.random.default_rng(0)
    flat = np.full((128, 128), 128.0)
    est = noise_sigma(np.clip(flat + rng.normal(0, 10, flat.shape), 0, 255).astype(np.uint8))
    assert est == pytest.approx(10, rel=0.1)


def test_exposure_penalises_dark_and_clipped(scorer):
    clip = clean_clip(frames=8)
    good = scorer.score(clip)["lite_exposure"]
    dark = scorer.score((clip * 0.1).astype(np.uint8))["lite_exposure"]
    blown = scorer.score(np.clip(clip.astype(np.int32) + 150, 0, 255).astype(np.uint8))["lite_exposure"]
    assert good > 0.9 and dark < 0.5 and blown < 0.5


def test_rejects_bad_input(scorer):
    with pytest.raises(ValueError, match="uint8"):
        scorer.score(np.zeros((4, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        scorer.score(np.zeros((4, 8, 8), np.uint8))
