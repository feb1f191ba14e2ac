"""Sekai reader: the procedural layout and real Sekai's bare-name layout read the same way; bad files
raise the reader's own errors (which the curation stage turns into quarantined rows)."""

import shutil

import numpy as np
import pandas as pd
import pytest

from yume.datasets import sekai
from yume.datasets.procedural import ProceduralWorldConfig, write_sekai_dataset
from yume.datasets.sekai import (
    AnnotationError,
    CameraFileError,
    VideoError,
    load_camera,
    probe_video,
    read_annotations,
    read_frames,
)

CFG = ProceduralWorldConfig(n_clips=2, frames_per_clip=45, height=32, width=48, seed=9)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("sekai")
    write_sekai_dataset(out, CFG)
    return out


def test_reads_procedural_directory(root):
    clips = read_annotations(root)
    assert len(clips) == 2
    c = clips[0]
    assert c.video_file.startswith("videos/") and c.camera_file.startswith("cameras/")
    assert c.crowdDensity == "empty" and c.scene.startswith("outdoor-") and len(c.caption) > 100
    assert probe_video(root / c.video_file) == (45, 30.0, 32, 48)
    c2w, k = load_camera(root / c.camera_file)
    assert c2w.shape == (45, 4, 4) and c2w.dtype == np.float64 and k.shape == (3, 3)


def test_real_sekai_bare_names_are_found_in_subdirectories(root, tmp_path):
    """Real Sekai CSVs list bare file names; an empty cameraFile stays empty."""
    shutil.copytree(root, tmp_path / "d")
    df = pd.read_csv(tmp_path / "d" / "annotations.csv", keep_default_na=False)
    df["videoFile"] = df.videoFile.str.replace("videos/", "", regex=False)
    df["cameraFile"] = df.cameraFile.str.replace("cameras/", "", regex=False)
    df.loc[1, "cameraFile"] = ""
    (tmp_path / "d" / "annotations.csv").unlink()
    df.to_csv(tmp_path / "d" / "sekai-real-walking-hq.csv", index=False)
    clips = read_annotations(tmp_path / "d")
    assert clips[0].video_file == "videos/" + df.videoFile[0]
    assert clips[0].camera_file == "cameras/" + df.cameraFile[0]
    assert clips[1].camera_file == ""


def test_rows_pointing_at_missing_files_are_returned_not_raised(root, tmp_path):
    shutil.copytree(root, tmp_path / "d")
    df = pd.read_csv(tmp_path / "d" / "annotations.csv", keep_default_na=False)
    df.loc[0, "videoFile"] = "videos/gone.mp4"
    df.loc[1, "cameraFile"] = "../../secret.npz"
    df.to_csv(tmp_path / "d" / "annotations.csv", index=False)
    clips = read_annotations(tmp_path / "d")
    assert [c.video_file for c in clips][0] == "videos/gone.mp4" and clips[1].camera_file == "../../secret.npz"


def test_missing_columns_and_missing_csv_raise(root, tmp_path):
    with pytest.raises(AnnotationError, match="no annotation CSV"):
        read_annotations(tmp_path)
    df = pd.read_csv(root / "annotations.csv").drop(columns=["weather", "cameraFile"])
    df.to_csv(tmp_path / "annotations.csv", index=False)
    with pytest.raises(AnnotationError, match="cameraFile, weather"):
        read_annotations(tmp_path)


@pytest.mark.parametrize(
    "write, message",
    [
        (lambda p: np.savez(p, extrinsic=np.zeros((5, 3, 4))), r"shape \(N,4,4\)"),
        (lambda p: np.savez(p, poses=np.zeros((5, 4, 4))), "no 'extrinsic'"),
        (lambda p: np.savez(p, extrinsic=np.zeros((0, 4, 4))), "empty"),
        (lambda p: np.savez(p, extrinsic=np.array([{"a": 1}], dtype=object)), "cannot read"),
        (lambda p: open(p, "wb").write(b"PK\x03\x04 broken zip"), "cannot read"),
        (lambda p: open(p, "wb").write(b""), "cannot read"),
    ],
)
def test_bad_camera_files_raise(tmp_path, write, message):
    path = tmp_path / "cam.npz"
    write(path)
    with pytest.raises(CameraFileError, match=message):
        load_camera(path)


def test_camera_npy_and_missing_file(tmp_path):
    np.save(tmp_path / "c.npy", np.tile(np.eye(4), (3, 1, 1)).astype(np.float32))
    c2w, k = load_camera(tmp_path / "c.npy")
    assert c2w.shape == (3, 4, 4) and c2w.dtype == np.float64 and k is None
    with pytest.raises(CameraFileError, match="does not exist"):
        load_camera(tmp_path / "nope.npz")


def test_truncated_and_garbage_videos_raise(root, tmp_path):
    video = root / read_annotations(root)[0].video_file
    data = video.read_bytes()
    for name, content in {"trunc.mp4": data[: len(data) // 2], "junk.mp4": b"\x00junk" * 500, "empty.mp4": b""}.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(VideoError):
            probe_video(tmp_path / name)


def test_pyav_fallback_gives_the_same_answer(root, monkeypatch):
    video = root / read_annotations(root)[0].video_file
    expected = probe_video(video)

    def broken(path):
        raise RuntimeError("decord cannot open this build's codec")

    monkeypatch.setattr(sekai, "_probe_decord", broken)
    assert probe_video(video) == expected


def test_read_frames(root):
    video = root / read_annotations(root)[0].video_file
    frames = read_frames(video, [0, 10, 44])
    assert frames.shape == (3, 32, 48, 3) and frames.dtype == np.uint8
    with pytest.raises(VideoError, match="outside"):
        read_frames(video, [45])
