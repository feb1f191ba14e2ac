"""Prefect retries around the shard tasks: a transient failure is retried and leaves a manifest identical to an
undisturbed run's; a shard that keeps failing fails the flow after its retries while the other shards keep
their completion markers (so the next run redoes only that shard)."""

from __future__ import annotations

import threading

import pytest

from yume.datasets.manifest import completed_shards, read_manifest

pytestmark = pytest.mark.slow

SMALL = ["world.n_clips=6", "world.frames_per_clip=96", "world.height=32", "world.width=32", "world.seed=7",
         "curate_real.shard_size=2", "prefect.task_retries=2", "prefect.retry_delay_seconds=0"]


class FlakyClip:
    """curate_clip that raises for one clip: ``failures`` times (then works), or forever when None."""

    def __init__(self, real, victim: str, failures: int | None):
        self.real, self.victim, self.failures, self.calls = real, victim, failures, 0
        self.lock = threading.Lock()

    def __call__(self, clip, *args, **kwargs):
        if clip.video_file == self.victim:
            with self.lock:
                self.calls += 1
                if self.failures is None or self.calls <= self.failures:
                    raise ConnectionError(f"transient storage error on {clip.video_file} (call {self.calls})")
        return self.real(clip, *args, **kwargs)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, prefect_harness):
    from yume.flows.curate_real import curate_real

    work = tmp_path_factory.mktemp("retries") / "reference"
    curate_real(profile="tiny", workdir=str(work), overrides=SMALL)
    return work


def _victim(work):
    from yume.datasets.sekai import read_annotations

    return read_annotations(work / "data" / "sekai")[2].video_file  # shard 00001


def test_a_shard_that_fails_once_is_retried_and_the_manifest_is_unchanged(reference, tmp_path, monkeypatch):
    import yume.flows.curate_real as flow_module

    flaky = FlakyClip(flow_module.curate_clip, _victim(reference), failures=1)
    monkeypatch.setattr(flow_module, "curate_clip", flaky)
    flow_module.curate_real(profile="tiny", workdir=str(tmp_path / "w"), overrides=SMALL)
    assert flaky.calls == 2  # failed, then retried
    got = read_manifest(tmp_path / "w" / "manifests" / "real").to_pandas().drop(columns=["config_hash"], errors="ignore")
    want = read_manifest(reference / "manifests" / "real").to_pandas().drop(columns=["config_hash"], errors="ignore")
    assert got.sort_values("id").reset_index(drop=True).equals(want.sort_values("id").reset_index(drop=True))


def test_exhausted_retries_fail_the_flow_and_the_other_shards_keep_their_markers(reference, tmp_path, monkeypatch):
    import yume.flows.curate_real as flow_module

    flaky = FlakyClip(flow_module.curate_clip, _victim(reference), failures=None)
    monkeypatch.setattr(flow_module, "curate_clip", flaky)
    work = tmp_path / "w"
    with pytest.raises(ConnectionError, match="transient storage error"):
        flow_module.curate_real(profile="tiny", workdir=str(work), overrides=SMALL)
    assert flaky.calls == 3  # the first try and 2 retries
    manifest = work / "manifests" / "real"
    assert sorted(completed_shards(manifest)) == ["00000", "00002"]

    monkeypatch.setattr(flow_module, "curate_clip", flaky.real)  # the storage recovers
    again = flow_module.curate_real(profile="tiny", workdir=str(work), overrides=SMALL)
    assert again["shards_cached"] == 2 and sorted(completed_shards(manifest)) == ["00000", "00001", "00002"]
