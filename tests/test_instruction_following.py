"""Instruction-following metric: the motion-field basis against projected 3-D points, chunk bookkeeping,
baselines at chance, and accuracy on ground-truth renders of the procedural worlds."""

import json

import numpy as np
import pytest

from yume.datasets.procedural import ProceduralWorldConfig, render_action_clip
from yume.datasets.trajectory import TrajectoryConfig
from yume.tasks.action_text import KEY_LABELS, MOUSE_LABELS
from yume.tasks.instruction_following import (
    FlowMotionEstimator,
    IFMetricConfig,
    chance_joint_accuracy,
    chunk_pairs,
    classify,
    label_chunks,
    motion_gains,
    score_labels,
)


def _rot(wx, wy, wz):
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec([wx, wy, wz]).as_matrix()


@pytest.mark.parametrize("motion", [
    (0.02, 0, 0, 0, 0, 0), (0, 0, 0.03, 0, 0, 0), (0, 0.01, 0, 0, 0, 0),
    (0, 0, 0, 0.004, 0, 0), (0, 0, 0, 0, 0.006, 0), (0, 0, 0, 0, 0, 0.003), (0.01, 0, 0.02, 0.002, -0.004, 0),
])
@pytest.mark.parametrize("pitch", [0.0, 0.3])
def test_motion_field_matches_projected_ground_points(motion, pitch):
    """Flow of ground points under a small camera motion == the basis the estimator fits (to first order)."""
    est = FlowMotionEstimator(IFMetricConfig(margin=0.0, sample_stride=4))
    est._grid(64, 64)
    x, y, f = est._x, est._y, est._f
    rho = np.cos(pitch) * y - np.sin(pitch)
    on_ground = rho > 0.05
    # 3-D points (camera 1 unit above the ground) seen through each pixel, then the camera moves.
    p = np.stack([x, y, np.ones_like(x)], -1)[on_ground] / rho[on_ground, None]
    t, w = np.array(motion[:3]), np.array(motion[3:])
    q = (p - t) @ _rot(*w)  # camera-frame coordinates after moving by t and rotating by w
    flow = f * np.concatenate([q[:, 0] / q[:, 2] - x[on_ground], q[:, 1] / q[:, 2] - y[on_ground]])
    design = est._design(pitch)
    n = len(x)
    predicted = design @ np.array(motion, float)
    predicted = np.concatenate([predicted[:n][on_ground], predicted[n:][on_ground]])
    scale = np.abs(flow).max()
    assert np.abs(predicted - flow).max() < 0.06 * scale + 1e-9


def test_chunk_pairs_start_at_the_frame_before_the_chunk():
    assert chunk_pairs([1, 9], 8, 4) == [[(0, 4), (1, 5), (2, 6), (3, 7), (4, 8)], [(8, 12), (9, 13), (10, 14), (11, 15), (12, 16)]]
    assert chunk_pairs([1], 2, 4) == [[(0, 2)]]


def test_classify_dead_zones():
    cfg = IFMetricConfig()
    assert classify(np.zeros(6), cfg) == ("None", "·")
    # Half of every threshold (speed, pitch, yaw): no key, no mouse.
    slow = 0.5 * cfg.move_threshold / np.sqrt(1 + cfg.forward_gain**2)
    below = np.array([slow, 0, slow, 0.5 * cfg.pitch_threshold, 0.5 * cfg.yaw_threshold, 0])
    assert classify(below, cfg) == ("None", "·")
    assert classify(np.array([0.01, 0, 0.2, 0, 0.06, 0]), cfg) == ("W", "→")
    assert classify(np.array([-0.15, 0, -0.15, 0.03, -0.06, 0]), cfg) == ("S+A", "↑←")


def test_label_chunks_rejects_chunks_without_an_anchor_frame():
    with pytest.raises(ValueError, match="one frame before"):
        label_chunks(np.zeros((9, 32, 32, 3), np.uint8), 4, first_chunk_start=0)


# The tiny profile's camera speeds (visible at 32 px) and the held-out evaluation's clip settings
# (foundation_eval.render_eval_worlds): 4-frame chunks at 16 fps from a 30 fps render (stride 2), no jitter.
SPEEDS = {"step": 0.008, "speed_range": (0.9, 1.1), "yaw_rate_range": (0.025, 0.04),
          "pitch_rate_range": (0.015, 0.025), "max_pitch": 0.3, "diagonal_ratio_range": (0.8, 1.0)}


def _renders(n_clips, jitter, seed=0, chunks=12, chunk=4, stride=2):
    rng = np.random.default_rng(seed)
    cfg = ProceduralWorldConfig(height=32, width=32, supersample=2, event_probability=0, seed=500 + seed,
                                trajectory=TrajectoryConfig(ramp_frames=1, jitter_scale=jitter, **SPEEDS))
    out = []
    for i in range(n_clips):
        actions = [(KEY_LABELS[rng.integers(9)], MOUSE_LABELS[rng.integers(9)]) for _ in range(chunks)]
        clip = render_action_clip(i, cfg, actions, chunk * stride)
        out.append((clip.frames[::stride], [(s.keys, s.mouse) for s in clip.trajectory.script]))
    return out


@pytest.fixture(scope="module")
def renders():
    return _renders(6, jitter=0.0)


def _ground_truth_scores(renders):
    pred, cmd = [], []
    for frames, commanded in renders:
        pred += label_chunks(frames, 4)
        cmd += commanded
    return score_labels(pred, cmd), cmd


def test_ground_truth_renders_score_well_above_chance(renders):
    """Measured at 32 px, 4-frame chunks, stride 2, all 81 labels: joint 0.927 on the tiny profile's 288 held-out
    evaluation chunks (0.84 before the 3-round IRLS fit and the recalibrated thresholds, 0.89 before its ground
    contrast 4), 0.944 on these 72."""
    scores, cmd = _ground_truth_scores(renders)
    # These 72 chunks: key 0.958, mouse 0.944, joint 0.944 (key 0.889, joint 0.861 with one IRLS round and the
    # previous thresholds, which this bound rejects).
    assert scores.mouse_accuracy >= 0.9 and scores.key_accuracy >= 0.9, scores
    assert scores.joint_accuracy >= 0.9 > chance_joint_accuracy(cmd) + 0.6, scores


@pytest.mark.xfail(reason="the 0.95 target is not met: measured 0.944 on these 72 chunks and 0.927 on the tiny "
                   "profile's 288 held-out chunks at 32 px (key errors: diagonal vs pure). Strict: the day the "
                   "metric reaches it this fails, and the bound above should be raised.", strict=True)
def test_ground_truth_renders_reach_the_issue_target(renders):
    scores, _ = _ground_truth_scores(renders)
    assert scores.joint_accuracy >= 0.95, scores


def test_copy_last_frame_and_shuffled_actions_stay_at_chance(renders):
    pred, cmd, shuffled = [], [], []
    rng = np.random.default_rng(1)
    for frames, commanded in renders:
        frozen = np.repeat(frames[:1], len(frames), axis=0)
        pred += label_chunks(frames, 4)
        shuffled += label_chunks(frozen, 4)
        cmd += commanded
    assert score_labels(shuffled, cmd).joint_accuracy <= chance_joint_accuracy(cmd) + 0.05
    # Labels of one clip scored against another clip's commands: no better than chance.
    order = rng.permutation(len(cmd))
    assert score_labels([pred[i] for i in order], cmd).joint_accuracy <= chance_joint_accuracy(cmd) + 0.08


def test_calibration_recovers_thresholds_that_fit(renders):
    from yume.tasks.instruction_following import calibrate_thresholds, chunk_motions

    est, cfg = FlowMotionEstimator(), IFMetricConfig()
    motions = np.concatenate([chunk_motions(f, list(range(1, len(f) - 3, 4)), 4, cfg, est) for f, _ in renders])
    cmd = [a for _, c in renders for a in c]
    _, joint = calibrate_thresholds(motions, cmd, cfg)
    assert joint >= score_labels([classify(m, cfg) for m in motions], cmd).joint_accuracy


def test_score_labels_checks_lengths():
    with pytest.raises(ValueError):
        score_labels([("W", "·")], [])


def test_static_clip_estimates_no_motion():
    """Regression: a frozen clip (zero flow) made the depth refinement divide 0 by 0 and lstsq fail."""
    frames = np.repeat(_renders(1, jitter=0.0, chunks=2)[0][0][:1], 9, axis=0)
    assert label_chunks(frames, 4) == [("None", "·"), ("None", "·")]


def test_the_tiny_profiles_evaluation_worlds_are_scored_at_the_calibrated_settings(tmp_path):
    """Regression: the evaluations scaled ``pair_gap`` by the render stride (2 at 16 fps from 30), halving the
    motion per flow pair against thresholds calibrated at gap 1: the metric scored 0.57 on ground truth."""
    from yume.config import load_profile
    from yume.tasks.foundation_eval import metric_config, render_eval_worlds

    profile = load_profile("tiny", tmp_path, ["train.eval.clips=6"])
    cfg = metric_config(profile)
    assert cfg.pair_gap == IFMetricConfig().pair_gap == 1
    assert metric_config(profile, {"pair_gap": 3}).pair_gap == 3  # eval.metric / distill.evaluate.metric override
    worlds = render_eval_worlds(profile, 4, 2)
    est = FlowMotionEstimator(cfg)
    pred = [lab for clip in worlds.frames for lab in label_chunks(clip, 4, cfg, estimator=est)]
    cmd = [a for clip in worlds.commanded for a in clip]
    assert score_labels(pred, cmd).joint_accuracy >= 0.75


def test_bench_calibrates_on_other_worlds_and_scores_the_evaluation_worlds_with_the_fit(tmp_path, capsys):
    from yume.config import load_profile
    from yume.tasks import bench_if_metric
    from yume.tasks.foundation_eval import render_eval_worlds

    res = bench_if_metric.main(["--clips", "2", "--chunks", "6", "--calibrate-seed", "777", "--calibrate-clips", "3",
                                "--json"])
    cal = res["calibration"]
    assert (cal["seed"], cal["clips"], cal["chunks"]) == (777, 3, 6) and res["chunks"] == 12
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["calibration"] == cal
    # The fitted thresholds are the ones reported, scored on the calibration worlds and applied to the evaluation
    # worlds (rendered again here: seed 777 x 3 and the profile's seed x 2).
    fitted = IFMetricConfig(**res["metric"])

    def joint(overrides):
        p = load_profile("tiny", tmp_path, ["train.eval.chunks=6", *overrides])
        w = render_eval_worlds(p, 4, 2)
        pred = [lab for clip in w.frames for lab in label_chunks(clip, 4, fitted)]
        return score_labels(pred, [a for clip in w.commanded for a in clip]).joint_accuracy

    assert joint(["train.eval.seed=777", "train.eval.clips=3"]) == pytest.approx(cal["joint_accuracy"])
    assert joint(["train.eval.clips=2"]) == pytest.approx(res["joint_accuracy"])


def test_degraded_scores_keep_the_anchor_and_match_the_clean_metric_at_level_zero(renders, monkeypatch):
    from yume.tasks import bench_if_metric
    from yume.tasks.foundation_eval import EvalWorlds

    frames = np.full((5, 32, 32, 3), 128, np.uint8)
    noisy = bench_if_metric.degrade(frames, "noise", 10.0, np.random.default_rng(0))
    assert 9.0 < noisy.astype(float).std() < 11.0
    edge = np.zeros((1, 32, 32, 3), np.uint8)
    edge[:, :, 16:] = 255
    assert 0 < bench_if_metric.degrade(edge, "blur", 1.0, None)[0, 0, 15, 0] < 255
    with pytest.raises(ValueError, match="unknown degradation"):
        bench_if_metric.degrade(frames, "jpeg", 1.0, None)

    w = EvalWorlds(np.stack([f for f, _ in renders[:2]]), [c for _, c in renders[:2]], 4, 2)
    clean = score_labels([lab for clip in w.frames for lab in label_chunks(clip, 4)],
                         [a for clip in w.commanded for a in clip])
    seen = []
    real_degrade = bench_if_metric.degrade
    monkeypatch.setattr(bench_if_metric, "degrade", lambda fr, kind, level, rng: seen.append(len(fr)) or
                        real_degrade(fr, kind, level, rng))
    monkeypatch.setitem(bench_if_metric.DEGRADATIONS, "noise_0", ("noise", 0.0))
    out = bench_if_metric.degraded_scores(w, IFMetricConfig(), None, ("noise_0",))["noise_0"]
    assert set(seen) == {4}  # the chunk's 4 frames; its anchor frame stays as rendered
    assert out == {"key_accuracy": clean.key_accuracy, "mouse_accuracy": clean.mouse_accuracy,
                   "joint_accuracy": clean.joint_accuracy}


def test_motion_gains_measure_how_much_of_each_motion_is_drawn():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(50, 6))
    same = motion_gains(ref, ref)
    assert same == pytest.approx({"strafe": 1.0, "forward": 1.0, "pitch": 1.0, "yaw": 1.0})
    # Half the strafe, the forward motion reversed, no pitch, yaw plus noise independent of it.
    gen = ref.copy()
    gen[:, 0] *= 0.5
    gen[:, 2] *= -1
    gen[:, 3] = 0
    gen[:, 4] += rng.normal(scale=0.01, size=50)
    g = motion_gains(gen, ref)
    assert g["strafe"] == pytest.approx(0.5) and g["forward"] == pytest.approx(-1.0) and g["pitch"] == 0.0
    assert g["yaw"] == pytest.approx(1.0, abs=0.01)
    # An axis the reference never moves on has no gain, and the arrays must describe the same chunks.
    still = ref.copy()
    still[:, 4] = 0
    assert motion_gains(gen, still)["yaw"] is None
    with pytest.raises(ValueError, match="same chunks"):
        motion_gains(gen[:10], ref)


class _ReplaySampler:
    """A stand-in generator for evaluate's bookkeeping: it returns the ground truth that follows the history
    it is given (``oracle``) or repeats the history's last frame (``frozen``)."""

    def __init__(self, worlds, frozen: bool):
        from types import SimpleNamespace

        self.worlds, self.frozen, self.chunk = worlds, frozen, worlds.chunk_len
        self.codec = SimpleNamespace(temporal_factor=1)
        self.cfg = SimpleNamespace(guidance=1.0)
        self._clip = {w[0].tobytes(): i for i, w in enumerate(worlds.frames)}

    def next_chunk(self, hist, actions, seed=0, guidance=None, use_actions=True):
        n = hist.shape[1]
        if self.frozen:
            return np.repeat(hist[:, -1:], self.chunk, 1)
        return np.stack([self.worlds.frames[self._clip[h[0].tobytes()], n : n + self.chunk] for h in hist])

    def generate(self, commanded, images, seed=0, guidance=None):
        frames = images[:, None]
        for _ in commanded[0]:
            frames = np.concatenate([frames, self.next_chunk(frames, None)], 1)
        return frames


def test_evaluate_reports_the_motion_gains_of_the_generated_chunks(renders, tmp_path):
    """evaluate's bookkeeping: a generator that replays the ground truth scores the metric's ceiling with every
    gain 1; one that freezes the last frame scores as copy-last with gains ~0."""
    from yume.config import load_profile
    from yume.tasks.foundation_eval import EvalWorlds, evaluate

    profile = load_profile("tiny", tmp_path, ["train.eval.clips=3", "train.eval.chunks=4", "train.eval.batch_size=2"])
    w = EvalWorlds(np.stack([f for f, _ in renders[:3]]), [c for _, c in renders[:3]], 4, 2)
    oracle = evaluate(profile, _ReplaySampler(w, frozen=False), worlds=w)
    assert oracle["joint_accuracy"] == oracle["rollout_joint_accuracy"] == oracle["metric_ceiling_joint_accuracy"]
    assert oracle["first_chunk_mse"] == 0.0
    for axis in ("strafe", "forward", "pitch", "yaw"):
        assert oracle[f"motion_gain_{axis}"] == pytest.approx(1.0), axis
    frozen = evaluate(profile, _ReplaySampler(w, frozen=True), worlds=w)
    assert frozen["joint_accuracy"] == frozen["copy_last_joint_accuracy"]
    assert frozen["first_chunk_mse"] == pytest.approx(frozen["copy_last_first_chunk_mse"])
    assert all(abs(frozen[f"motion_gain_{a}"]) < 0.05 for a in ("strafe", "forward", "pitch", "yaw"))
