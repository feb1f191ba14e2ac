"""curate_real: every kind of bad input is quarantined with its reason while the rest proceeds; the flow
writes a valid manifest, skips finished shards on re-run and redoes only unfinished ones."""

import shutil

import numpy as np
import pandas as pd
import pytest

from yume.config import load_profile
from yume.datasets.manifest import marker_path, read_manifest, validate_manifest
from yume.datasets.procedural import ProceduralWorldConfig, write_sekai_dataset
from yume.datasets.sekai import read_annotations
from yume.tasks.curate_real import curate_clip

SMALL = dict(n_clips=12, frames_per_clip=120, height=32, width=32, seed=3)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    root = tmp_path_factory.mktemp("sekai") / "data"
    write_sekai_dataset(root, ProceduralWorldConfig(**SMALL))
    return root


@pytest.fixture
def sekai(rendered, tmp_path):
    root = tmp_path / "sekai"
    shutil.copytree(rendered, root)
    return root


def _csv(root):
    return pd.read_csv(root / "annotations.csv", keep_default_na=False)


def _corrupt(root) -> dict[str, str]:
    """Break one clip per failure kind; returns video URI -> expected reason class."""
    df = _csv(root)
    expected = {}

    def clip(i):
        return root / df.videoFile[i], root / df.cameraFile[i]

    video, _ = clip(0)
    video.write_bytes(b"not a video at all" * 100)
    expected[df.videoFile[0]] = "video_unreadable"

    video, _ = clip(1)
    video.write_bytes(video.read_bytes()[: len(video.read_bytes()) * 3 // 10])
    expected[df.videoFile[1]] = "video_unreadable"

    _, cam = clip(2)
    cam.unlink()
    expected[df.videoFile[2]] = "camera_missing"

    df.loc[3, "cameraFile"] = ""
    expected[df.videoFile[3]] = "camera_missing"

    _, cam = clip(4)
    ext = np.load(cam)["extrinsic"]
    np.savez(cam, extrinsic=ext[:, :3, :])
    expected[df.videoFile[4]] = "camera_malformed"

    _, cam = clip(5)
    ext = np.load(cam)["extrinsic"].copy()
    ext[10, 0, 3] = np.nan
    np.savez(cam, extrinsic=ext)
    expected[df.videoFile[5]] = "trajectory_invalid"

    _, cam = clip(6)
    ext = np.load(cam)["extrinsic"].copy()
    ext[20, :3, :3] *= 1.5
    np.savez(cam, extrinsic=ext)
    expected[df.videoFile[6]] = "trajectory_invalid"

    _, cam = clip(7)
    ext = np.load(cam)["extrinsic"]
    np.savez(cam, extrinsic=ext[:-10])
    expected[df.videoFile[7]] = "frame_count_mismatch"

    df.loc[8, "videoFile"] = "videos/does_not_exist_0000000_0000120.mp4"
    expected["videos/does_not_exist_0000000_0000120.mp4"] = "video_missing"

    df.loc[9, "cameraFile"] = "../../../etc/passwd"
    expected[df.videoFile[9]] = "path_escape"

    _, cam = clip(10)
    np.savez(cam, something_else=np.zeros(3))
    expected[df.videoFile[10]] = "camera_malformed"

    df.to_csv(root / "annotations.csv", index=False)
    return expected


def test_each_bad_input_is_quarantined_with_its_reason(sekai):
    expected = _corrupt(sekai)
    profile = load_profile("tiny")
    rows = []
    for clip in read_annotations(sekai):
        rows.extend(curate_clip(clip, sekai, profile.actions, profile.curate_real, "h"))
    by_video = {}
    for r in rows:
        by_video.setdefault(r["video_uri"], []).append(r)
    for uri, reason in expected.items():
        (row,) = by_video[uri]
        assert row["status"] == "quarantined", (uri, row)
        assert row["error"].startswith(reason + ":"), (uri, row["error"])
    healthy = [u for u in by_video if u not in expected]
    assert len(healthy) == 1
    assert all(r["status"] == "ok" for r in by_video[healthy[0]])


@pytest.mark.slow
def test_flow_writes_valid_manifest_and_resumes(sekai, tmp_path, prefect_harness):
    from yume.flows.curate_real import curate_real

    expected = _corrupt(sekai)
    work = tmp_path / "work"
    overrides = [f"data.sekai_root={sekai}", "curate_real.shard_size=4"]
    first = curate_real(profile="tiny", workdir=str(work), overrides=overrides)
    manifest = work / "manifests" / "real"
    assert validate_manifest(manifest) == []
    table = read_manifest(manifest).to_pandas()
    assert first["shards"] == 3 and first["shards_cached"] == 0
    quarantined = table[table.status == "quarantined"]
    assert dict(zip(quarantined.video_uri, quarantined.error.str.split(":").str[0])) == expected
    assert (table[table.status == "ok"].end_frame - table[table.status == "ok"].start_frame >= 33).all()
    assert (work / "reports" / "curate_real" / "metrics.json").is_file()

    # Nothing changed: every shard is a cache hit and the manifest is byte-identical.
    before = {p.name: p.read_bytes() for p in manifest.glob("part-*.parquet")}
    second = curate_real(profile="tiny", workdir=str(work), overrides=overrides)
    assert second["shards_cached"] == 3
    assert {p.name: p.read_bytes() for p in manifest.glob("part-*.parquet")} == before

    # A run killed before shard 1's marker: only that shard is redone, with identical rows.
    marker_path(manifest, "00001").unlink()
    third = curate_real(profile="tiny", workdir=str(work), overrides=overrides)
    assert third["shards_cached"] == 2
    assert {p.name: p.read_bytes() for p in manifest.glob("part-*.parquet")} == before
