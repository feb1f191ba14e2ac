"""VBenchScorer adapter: runs only inside .venv-vbench (scripts/setup_vbench_env.sh).

No real VBench weights can be fetched here, so vbench's per-dimension functions run on random-weight
backbones: openai-clip's CLIP architecture (reduced size), pyiqa's MUSIQ, vbench's AMT-S and RAFT, and a
timm ViT standing in for DINO (whose code needs a torch.hub clone). What this proves is the adapter's data
path: frames reach vbench exactly as vbench's own readers would deliver them from an mp4, every
dimension runs, and values have vbench's ranges. It proves nothing about real score values.

The module-level skips are for the main environment's run only: `make test` runs this file a second time
inside .venv-vbench with --fail-on-skip (tests/conftest.py), where any skip is a failure.
"""


import numpy as np
import pytest

pytest.importorskip(
    "vbench", reason="vbench 0.1.5 lives in its own env: run scripts/setup_vbench_env.sh, then "
    ".venv-vbench/bin/python -m pytest tests/test_scoring_vbench.py"
)
torch = pytest.importorskip("torch")
cv2 = pytest.importorskip("cv2")

from yume.tasks import scoring_vbench as sv  # noqa: E402
from yume.tasks.scoring import VBENCH_POLICY_V1, VideoScorer, composite_score  # noqa: E402

FPS = 16


def _clip(frames=16, size=64, seed=0):
    """A smooth pan over a random colour texture (uint8 RGB)."""
    rng = np.random.default_rng(seed)
    tex = cv2.resize(rng.integers(0, 256, (32, 96, 3), dtype=np.uint8), (size * 3, size), interpolation=cv2.INTER_CUBIC)
    return np.stack([tex[:, 2 * t : 2 * t + size] for t in range(frames)])


@pytest.fixture(scope="module")
def scorer():
    torch.set_num_threads(2)
    return sv.VBenchScorer(device="cpu", fps=FPS, weights="random")  # sv.random_vbench_models()


@pytest.fixture(scope="module")
def mp4(tmp_path_factory):
    """The clip written as an mp4, so vbench's own (unpatched) readers can score it for comparison."""
    path = tmp_path_factory.mktemp("videos") / "clip.mp4"
    frames = _clip()
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, frames.shape[2:0:-1])
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return str(path)


def _decord_frames(path):
    from vbench.utils import load_video

    return load_video(path).permute(0, 2, 3, 1).to(torch.uint8).numpy()  # float 0-255 in vbench; exact ints


def _cv2_frames(path):
    cap, out = cv2.VideoCapture(path), []
    while True:
        ok, bgr = cap.read()
        if not ok:
            return np.stack(out)
        out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def test_scorer_protocol_and_ranges(scorer):
    assert isinstance(scorer, VideoScorer) and scorer.is_vbench
    raw = scorer.score(_clip())
    assert set(raw) == set(sv.VBENCH_DIMENSIONS)
    for dim in ("subject_consistency", "background_consistency", "motion_smoothness"):
        assert 0.0 <= raw[dim] <= 1.0, (dim, raw[dim])
    assert raw["dynamic_degree"] in (0.0, 1.0)
    assert all(np.isfinite(v) for v in raw.values()), raw
    assert 0.0 <= composite_score(raw, VBENCH_POLICY_V1) <= 1.0
    print("random-weight VBench raw scores:", raw)


def test_static_clip_is_perfectly_consistent(scorer):
    """Identical frames give cosine 1 whatever the weights: frames reach the feature loops intact."""
    static = np.repeat(_clip()[:1], 8, axis=0)
    raw = scorer.score(static)
    assert raw["subject_consistency"] == pytest.approx(1.0, abs=1e-5)
    assert raw["background_consistency"] == pytest.approx(1.0, abs=1e-5)
    assert raw["dynamic_degree"] == 0.0


def test_load_video_dimensions_match_vbench_on_the_mp4(scorer, mp4):
    """Adapter(frames decoded by vbench's load_video) == vbench's functions reading the mp4 themselves."""
    from vbench.aesthetic_quality import laion_aesthetic
    from vbench.background_consistency import background_consistency
    from vbench.imaging_quality import technical_quality
    from vbench.subject_consistency import subject_consistency

    ours = scorer.score(_decord_frames(mp4))
    m = scorer.models
    with torch.no_grad():
        ref = {  # each vbench function returns (mean over videos, per-video results)
            "subject_consistency": subject_consistency(m["dino"], [mp4], "cpu", False),
            "background_consistency": background_consistency(m["clip_b32"], None, [mp4], "cpu", False),
            "aesthetic_quality": laion_aesthetic(m["aesthetic_head"], m["clip_l14"], [mp4], "cpu"),
            "imaging_quality": technical_quality(m["musiq"], [mp4], "cpu"),
        }
    for dim, (_, per_video) in ref.items():
        assert ours[dim] == pytest.approx(per_video[0]["video_results"], rel=1e-5, abs=1e-6), dim


def test_cv2_dimensions_match_vbench_on_the_mp4(scorer, mp4):
    """Motion smoothness (AMT-S) and dynamic degree (RAFT) read mp4s with cv2 in vbench; compare likewise."""
    from vbench.dynamic_degree import dynamic_degree
    from vbench.motion_smoothness import motion_smoothness

    ours = scorer.score(_cv2_frames(mp4))
    with torch.no_grad():
        ms = motion_smoothness(scorer._motion, [mp4])[1][0]["video_results"]
        dd = dynamic_degree(scorer._dynamic, [mp4])[1][0]["video_results"]
    assert ours["motion_smoothness"] == pytest.approx(ms, rel=1e-6)
    assert ours["dynamic_degree"] == float(dd)


def test_patches_are_undone(scorer):
    import vbench.imaging_quality
    import vbench.utils

    scorer.score(_clip(frames=4))
    assert vbench.imaging_quality.load_video is vbench.utils.load_video
    assert "get_frames" not in scorer._motion.fp.__dict__ and "get_frames" not in scorer._dynamic.__dict__


def test_missing_weights_listed_never_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("VBENCH_CACHE_DIR", str(tmp_path / "vb"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    with pytest.raises(sv.VBenchWeightsMissing) as err:
        sv.VBenchScorer(device="cpu")
    msg = str(err.value)
    for name in ("dino_vitbase16_pretrain.pth", "hubconf.py", "ViT-B-32.pt", "ViT-L-14.pt",
                 "sa_0_4_vit_l_14_linear.pth", "musiq_spaq_ckpt-358bb6af.pth", "amt-s.safetensors", "raft-things.pth"):
        assert name in msg
    assert not (tmp_path / "vb").exists() and not (tmp_path / "th").exists()  # nothing fetched or created


def test_bad_frames_rejected(scorer):
    with pytest.raises(ValueError):
        scorer.score(np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError):
        scorer.score(np.zeros((4, 8, 8, 3), np.float32))


def test_frames_under_64_px_are_upscaled_for_raft(scorer):
    """The tiny profile's 32 px frames: vbench's RAFT fails on them as they are; the scorer upscales them first."""
    small = _clip(frames=8, size=32)
    up = sv.upscale_frames(small)
    assert up.shape == (8, 64, 64, 3) and up.dtype == np.uint8
    big = _clip()
    assert sv.upscale_frames(big) is big  # 64 px and up: untouched
    raw = scorer.score(small)
    assert set(raw) == set(sv.VBENCH_DIMENSIONS) and all(np.isfinite(v) for v in raw.values()), raw
    assert raw == scorer.score(up)  # what was scored is the upscaled clip
    as_is = sv.VBenchScorer(["dynamic_degree"], device="cpu", fps=FPS, models=scorer.models, weights="random",
                            min_side=1)
    with pytest.raises(RuntimeError, match="Output size is too small"):
        as_is.score(small)


def test_random_weights_are_labelled_and_explicit(scorer):
    assert scorer.weights == "random" and scorer.name == f"vbench-0.1.5 ({sv.RANDOM_WEIGHTS_LABEL})"
    assert sv.RANDOM_WEIGHTS_LABEL == "weights: random, values not meaningful"
    with pytest.raises(ValueError, match="weights must be one of"):
        sv.VBenchScorer(device="cpu", models=scorer.models, weights="fallback")


def test_service_scores_with_random_weights(tmp_path):
    """What a score_and_filter actor runs with vbench_weights=random: the service in this interpreter."""
    import sys

    from yume.tasks.scoring_service import SubprocessScorer

    service = SubprocessScorer(sys.executable, "vbench", device="cpu", dimensions=["dynamic_degree", "imaging_quality"],
                               weights="random")
    try:
        assert service.name == f"vbench-0.1.5 ({sv.RANDOM_WEIGHTS_LABEL})" and service.is_vbench
        raw = service.score(_clip(frames=8, size=32), fps=FPS)
        assert set(raw) == {"dynamic_degree", "imaging_quality"} and raw["dynamic_degree"] in (0.0, 1.0)
    finally:
        service.close()


def test_service_refuses_missing_weights_without_fallback(tmp_path):
    """weights=cache (the default) with an empty cache: the service does not start; nothing falls back to random."""
    import sys

    from yume.tasks.scoring_service import SubprocessScorer

    env = {"VBENCH_CACHE_DIR": str(tmp_path / "vb"), "TORCH_HOME": str(tmp_path / "th")}
    with pytest.raises(RuntimeError, match="(?s)VBenchWeightsMissing.*raft-things.pth"):
        SubprocessScorer(sys.executable, "vbench", device="cpu", dimensions=["dynamic_degree"], env=env)
