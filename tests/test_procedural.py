"""Procedural worlds: Sekai's on-disk format, determinism, visible 3-D motion, events, atomic writes."""

import re

import cv2
import decord
import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from yume.datasets import procedural
from yume.datasets.procedural import EVENT_KINDS, ProceduralWorldConfig, render_clip, write_sekai_dataset
from yume.datasets.sekai import SEKAI_COLUMNS, load_camera, read_annotations
from yume.datasets.trajectory import ScriptSegment, TrajectoryConfig, random_script
from yume.tasks.action_text import KEY_LABELS, MOUSE_LABELS
from yume.tasks.actions import ActionConfig, trajectory_to_actions

SMALL = dict(n_clips=4, frames_per_clip=120, height=48, width=64, seed=5)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("worlds")
    write_sekai_dataset(root, ProceduralWorldConfig(**SMALL))
    return root


def test_writes_sekai_layout(dataset):
    df = pd.read_csv(dataset / "annotations.csv", keep_default_na=False)
    assert tuple(df.columns) == SEKAI_COLUMNS
    assert len(df) == SMALL["n_clips"]
    for video, camera in zip(df.videoFile, df.cameraFile):
        m = re.fullmatch(r"videos/([a-z0-9]{11})_(\d{7})_(\d{7})\.mp4", video)
        assert m, video
        assert int(m[3]) - int(m[2]) == SMALL["frames_per_clip"]
        assert camera == f"cameras/{m[1]}_{m[2]}_{m[3]}.npz"
        vr = decord.VideoReader(str(dataset / video))
        assert len(vr) == SMALL["frames_per_clip"] and vr.get_avg_fps() == pytest.approx(30)
        assert vr[0].shape == (SMALL["height"], SMALL["width"], 3)
        npz = np.load(dataset / camera)
        ext, k = npz["extrinsic"], npz["intrinsic"]
        assert ext.shape == (SMALL["frames_per_clip"], 4, 4) and k.shape == (3, 3)
        assert np.abs(ext[:, :3, 3]).max() <= 1.0
        rot = ext[:, :3, :3].astype(np.float64)
        np.testing.assert_allclose(rot @ rot.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rot.shape), atol=1e-5)
        assert k[0, 2] == SMALL["width"] / 2 and k[1, 2] == SMALL["height"] / 2
    assert set(df.scene) <= set(procedural.SCENES)
    assert not list(dataset.rglob("*.tmp")), "temporary files left behind"


def test_ground_truth_matches_cameras(dataset):
    """Labels recovered from the written (float32, normalised) cameras agree with the ground truth."""
    gt = pd.read_parquet(dataset / "ground_truth" / "actions.parquet")
    clips = pd.read_parquet(dataset / "ground_truth" / "clips.parquet")
    assert len(clips) == SMALL["n_clips"] and len(gt) == SMALL["n_clips"] * (SMALL["frames_per_clip"] - 1)
    agree = []
    for clip in read_annotations(dataset):
        c2w, _ = load_camera(dataset / clip.camera_file)
        labels = trajectory_to_actions(c2w, ActionConfig())
        truth = gt[gt.video_file == clip.video_file].sort_values("frame")
        agree.append(np.mean((labels.keys == truth["keys"].to_numpy()) & (labels.mouse == truth["mouse"].to_numpy())))
    assert np.mean(agree) >= 0.9, agree


def test_deterministic_per_seed_and_index():
    cfg = ProceduralWorldConfig(**{**SMALL, "frames_per_clip": 40})
    a, b = render_clip(1, cfg), render_clip(1, cfg.model_copy(update={"n_clips": 9}))
    assert a.stem == b.stem and np.array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.trajectory.c2w, b.trajectory.c2w)
    c = render_clip(1, cfg.model_copy(update={"seed": 6}))
    assert c.stem != a.stem and not np.array_equal(a.frames, c.frames)


def test_video_bytes_are_reproducible(tmp_path):
    cfg = ProceduralWorldConfig(n_clips=1, frames_per_clip=40, height=32, width=32)
    write_sekai_dataset(tmp_path / "a", cfg)
    write_sekai_dataset(tmp_path / "b", cfg)
    for rel in ("annotations.csv", *(str(p.relative_to(tmp_path / "a")) for p in (tmp_path / "a").rglob("*.mp4"))):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_every_key_and_mouse_label_is_reachable():
    rng = np.random.default_rng(0)
    keys, mouse = set(), set()
    for _ in range(50):
        for seg in random_script(600, rng, TrajectoryConfig()):
            keys.add(seg.keys)
            mouse.add(seg.mouse)
    assert keys == set(KEY_LABELS) and mouse == set(MOUSE_LABELS)


def _mean_flow(frames: np.ndarray) -> np.ndarray:
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    flows = [dis.calc(a, b, None) for a, b in zip(grey, grey[1:])]
    return np.mean(flows, axis=0)  # (H, W, 2)


def _scripted(keys: str, mouse: str, n: int = 60, **world):
    cfg = ProceduralWorldConfig(**{"n_clips": 1, "frames_per_clip": n, "height": 64, "width": 96, "seed": 2,
                                   "event_probability": 0, "trajectory": TrajectoryConfig(jitter_scale=0), **world})
    return render_clip(0, cfg, [ScriptSegment(0, n - 1, keys, mouse)]).frames


def test_walking_forward_makes_the_ground_expand():
    """W over bare ground: the ground flows outwards from the centre and down past the walker."""
    flow = _mean_flow(_scripted("W", "·", n_objects=0)[10:])
    h, w = flow.shape[:2]
    ground = flow[int(0.75 * h):]
    assert ground[:, : w // 3, 0].mean() < -0.05 and ground[:, -w // 3 :, 0].mean() > 0.05
    assert ground[..., 1].mean() > 0.05


def test_strafing_shows_parallax():
    """D: near ground (bottom rows) slides left faster than far ground (just below the horizon)."""
    flow = _mean_flow(_scripted("D", "·", n_objects=0)[10:])
    h = flow.shape[0]
    near, far = flow[int(0.85 * h):, :, 0].mean(), flow[int(0.55 * h) : int(0.62 * h), :, 0].mean()
    assert near < 0 and far < 0 and abs(near) > 2 * abs(far), (near, far)


def test_ground_contrast_scales_the_ground_texture_only():
    """contrast 2.5 at 32 px: the bare ground's texture is ~2.5x stronger (clipped), the sky is untouched, and
    walking forward moves the ground more visibly (larger frame-to-frame change)."""
    kw = dict(n_objects=0, height=32, width=32)
    plain, strong = _scripted("W", "·", n=24, **kw), _scripted("W", "·", n=24, ground_contrast=2.5, **kw)
    assert np.array_equal(plain, _scripted("W", "·", n=24, ground_contrast=1.0, **kw))  # 1 = the default look
    ground = slice(24, 32)  # bottom rows: ground only at this pitch
    std = lambda f: f[:, ground].astype(float).std(axis=(1, 2)).mean()  # noqa: E731
    assert 2.0 < std(strong) / std(plain) < 2.6, (std(strong), std(plain))
    assert np.array_equal(plain[:, :8], strong[:, :8])  # top rows: sky
    change = lambda f: np.mean((f[1:, ground].astype(float) - f[:-1, ground]) ** 2)  # noqa: E731
    assert change(strong) > 3 * change(plain)


def test_panning_right_moves_the_image_left():
    flow = _mean_flow(_scripted("None", "→")[10:])
    assert flow[..., 0].mean() < -0.1
    assert abs(flow[..., 0].mean()) > 3 * abs(flow[..., 1].mean())


@pytest.mark.parametrize("kind", EVENT_KINDS)
def test_events_change_the_scene_after_their_start(kind):
    cfg = ProceduralWorldConfig(n_clips=1, frames_per_clip=150, height=48, width=64, seed=1,
                                event_probability=1.0, events=[kind], trajectory=TrajectoryConfig(jitter_scale=0))
    clip = render_clip(0, cfg, [ScriptSegment(0, 149, "None", "·")])  # standing still: only the event changes
    start = clip.world.event.start_frame
    before, after = clip.frames[start - 5].astype(float), clip.frames[-1].astype(float)
    assert clip.world.event.kind == kind and f"About {start / 30:.0f} seconds in" in clip.world.event.text
    if kind == "rain":
        assert after.mean() < before.mean() - 10
    elif kind == "fog":
        assert after.std() < 0.6 * before.std()  # contrast drops
    elif kind == "night_lights":
        yellow = lambda f: ((f[..., 0] > 150) & (f[..., 1] > 120) & (f[..., 2] < 110)).mean()  # noqa: E731
        assert yellow(before) == 0 and yellow(after) > 0.003
    else:
        orange = lambda f: ((f[..., 0] > 90) & (f[..., 0] > 1.6 * f[..., 1]) & (f[..., 0] > 4 * f[..., 2])).mean()  # noqa: E731
        assert orange(before) == 0 and orange(after) > 0.01


def test_frustum_culling_changes_nothing(monkeypatch):
    cfg = ProceduralWorldConfig(n_clips=1, frames_per_clip=60, height=32, width=48, seed=4)
    culled = render_clip(0, cfg).frames
    monkeypatch.setattr(procedural, "_pillars_in_view", lambda o, d, world, frames: np.arange(len(world.radii)))
    assert np.array_equal(culled, render_clip(0, cfg).frames)


def test_failed_render_leaves_no_annotation_csv(tmp_path, monkeypatch):
    real = procedural.render_clip

    def flaky(index, cfg, script=None):
        if index == 1:
            raise RuntimeError("disk on fire")
        return real(index, cfg, script)

    monkeypatch.setattr(procedural, "render_clip", flaky)
    with pytest.raises(RuntimeError):
        write_sekai_dataset(tmp_path, ProceduralWorldConfig(n_clips=3, frames_per_clip=40, height=32, width=32))
    assert not (tmp_path / "annotations.csv").exists()
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("bad, key", [({"height": 33}, "height"), ({"n_clipz": 3}, "n_clipz"),
                                      ({"events": ["meteor"]}, "events")])
def test_config_rejects_bad_values(bad, key):
    with pytest.raises(ValidationError, match=key):
        ProceduralWorldConfig(**bad)
