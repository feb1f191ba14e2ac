"""The `retrain` parent flow: every stage in DAG order, skipped when its inputs, config and code are unchanged.

Fast tests cover the fingerprints; the slow one runs the whole DAG (tiny profile, 8 worlds, 4 training steps)
twice, then changes one stage's config, then deletes one stage's manifest.
"""

import json
import shutil
import time

import pytest

from yume.config import load_profile
from yume.datasets.manifest import REAL, read_manifest, write_shard
from yume.flows.stage_utils import manifest_digest, path_digest, status_counts

FAST = ["world.n_clips=8", "training_set.worlds.n_clips=4", "train.max_steps=4", "train.eval.enabled=false"]
# Distillation and the evaluation gate at their smallest (the machinery, not the figures).
FAST_DISTILL = ["distill.max_steps=2", "distill.batch_size=2", "distill.chunks=2", "distill.starts.count=2",
                "distill.starts.supersample=1", "distill.evaluate.clips=1", "distill.evaluate.euler_steps=2",
                "distill.evaluate.latency_repeats=1", "distill.evaluate.supersample=1", "distill.evaluate.strip_chunks=2"]


def _row(i, status="ok"):
    return {"id": f"id{i}", "source_uri": f"videos/{i}.mp4", "content_hash": "h", "stage": "curate_real",
            "stage_version": "1", "config_hash": "c", "status": status,
            "error": None if status == "ok" else "video_unreadable: x", "video_uri": f"videos/{i}.mp4"}


def test_stage_order_and_names_match_the_registry():
    from yume.flows import STAGE_NAMES
    from yume.flows.retrain import STAGES

    assert tuple(s.name for s in STAGES) == STAGE_NAMES
    assert [name for name, _ in STAGES] == list(STAGE_NAMES)  # (name, flow) unpacking still works


def test_manifest_digest_follows_content_not_rewrites(tmp_path):
    d = tmp_path / "m"
    assert manifest_digest(d) == "absent"
    write_shard(d, "00000", [_row(0), _row(1, "quarantined")], REAL)
    first = manifest_digest(d)
    write_shard(d, "00000", [_row(0), _row(1, "quarantined")], REAL)  # same bytes again
    assert manifest_digest(d) == first == path_digest(d)
    assert status_counts(d) == {"ok": 1, "quarantined": 1}
    write_shard(d, "00001", [_row(2)], REAL)
    assert manifest_digest(d) != first
    (d / "part-00001.parquet").write_bytes(b"torn")  # an incomplete shard does not count
    assert manifest_digest(d) == first


def test_stage_key_covers_config_sections_and_upstream_content(tmp_path):
    from yume.flows.retrain import STAGE_BY_NAME, stage_cache_key, stage_inputs

    cfg = load_profile("tiny", tmp_path, FAST)
    recaption = STAGE_BY_NAME["recaption"]
    key = stage_cache_key(stage_inputs(cfg, recaption))
    assert key == stage_cache_key(stage_inputs(load_profile("tiny", tmp_path, FAST), recaption))
    # Sections the stage does not read (training, Ray placement) leave its key alone ...
    other = load_profile("tiny", tmp_path, FAST + ["train.max_steps=5", "ray.num_cpus=1"])
    assert stage_cache_key(stage_inputs(other, recaption)) == key
    # ... its own section and its upstream manifest's content change it.
    changed = load_profile("tiny", tmp_path, FAST + ["recaption.target_words=40"])
    assert stage_cache_key(stage_inputs(changed, recaption)) != key
    write_shard(tmp_path / "manifests" / "real", "00000", [_row(0)], REAL)
    assert stage_cache_key(stage_inputs(cfg, recaption)) != key


def test_result_storage_defaults_to_the_workdir_and_accepts_paths(tmp_path):
    from yume.flows.retrain import result_storage

    assert result_storage(load_profile("tiny", tmp_path)) == (tmp_path / "cache" / "prefect").resolve()
    cfg = load_profile("tiny", tmp_path, [f"prefect.result_storage={tmp_path / 'shared'}"])
    assert result_storage(cfg) == (tmp_path / "shared").resolve() and (tmp_path / "shared").is_dir()


# The slow tests' whole-DAG runs: 2-video score shards so that a kill mid-stage leaves finished shards behind.
RUN = ["world.n_clips=8", "training_set.worlds.n_clips=4", "score_and_filter.shard_size=2", "train.max_steps=2",
       "train.eval.enabled=false", *FAST_DISTILL]


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory, prefect_harness, ray_local):
    """One uninterrupted retrain with RUN, shared by the slow tests below (one whole-DAG run, about 150 s on 2
    cores, instead of one per test): its work directory, summary, wall time and a snapshot of its manifests taken
    before any test reruns stages in it."""
    from yume.flows.retrain import retrain

    work = tmp_path_factory.mktemp("uninterrupted") / "work"
    t0 = time.perf_counter()
    summary = retrain(profile="tiny", workdir=str(work), overrides=RUN)
    return {"work": work, "summary": summary, "seconds": time.perf_counter() - t0, "manifests": _manifests(work)}


@pytest.mark.slow
def test_retrain_twice_hits_every_stage_and_a_change_reruns_only_downstream(uninterrupted_run):
    from yume.flows import STAGE_NAMES
    from yume.flows.retrain import retrain

    work, first, first_seconds = uninterrupted_run["work"], uninterrupted_run["summary"], uninterrupted_run["seconds"]
    fast = RUN
    t1 = time.perf_counter()
    second = retrain(profile="tiny", workdir=str(work), overrides=fast)
    t2 = time.perf_counter()
    print(f"retrain first {first_seconds:.1f} s, second {t2 - t1:.1f} s, ratio {(t2 - t1) / first_seconds:.3f}")

    assert first["stages_run"] == list(STAGE_NAMES) and first["cache_hits"] == 0
    assert second["stages_run"] == [] and second["cache_hits"] == len(STAGE_NAMES)
    assert all(r["cache_hit"] for r in second["summary"])
    assert (t2 - t1) < 0.25 * first_seconds
    # The summary of a cached stage reports what it produced when it ran.
    by_stage = {r["stage"]: r for r in second["summary"]}
    assert by_stage["curate_real"]["items_in"] == 8 and by_stage["curate_real"]["ok"] > 0
    assert by_stage["score_and_filter"]["quarantined"] == 0
    assert set(by_stage["train_foundation"]) >= {"items_in", "ok", "quarantined", "wall_seconds", "cache_hit"}
    report = json.loads((work / "reports" / "retrain" / "metrics.json").read_text())
    assert report["cache_hits"] == len(STAGE_NAMES)
    # The evaluation gate ran at the end: the first distilled generator is promoted exactly when it clears the
    # promotion floors (a few training steps do not: it stays unpromoted, as a broken weekly run would).
    from yume.models.distill_config import PromotionFloors
    from yume.tasks.evaluate import floor_failures

    evaluated = json.loads((work / "reports" / "evaluate" / "metrics.json").read_text())
    failures = floor_failures(evaluated["candidates"]["distilled_4step"], evaluated, PromotionFloors())
    assert first["promotion"] is (not failures)
    assert (work / "checkpoints" / "promoted.json").is_file() is (not failures)
    assert (work / "reports" / "evaluate" / "index.html").is_file()

    # One stage's config changes: that stage and what reads its output rerun, nothing upstream.
    changed = fast + ["score_and_filter.selection.real.top_fraction=0.5"]
    third = retrain(profile="tiny", workdir=str(work), overrides=changed)
    assert third["stages_run"] == ["score_and_filter", "build_training_set", "train_foundation", "distill", "evaluate"]
    # Only distillation's settings change: distill and the evaluation rerun, training stays cached.
    fourth = retrain(profile="tiny", workdir=str(work), overrides=changed + ["distill.max_steps=3"])
    assert fourth["stages_run"] == ["distill", "evaluate"]

    # A deleted manifest is rebuilt; identical bytes leave everything downstream cached.
    captions = read_manifest(work / "manifests" / "captions").to_pylist()
    shutil.rmtree(work / "manifests" / "captions")
    fifth = retrain(profile="tiny", workdir=str(work), overrides=changed + ["distill.max_steps=3"])
    assert fifth["stages_run"] == ["recaption"]
    assert read_manifest(work / "manifests" / "captions").to_pylist() == captions


def _manifests(work) -> dict[str, list[str]]:
    """Every manifest's rows (ids, all columns, content hashes), sorted by id, with the work directory masked."""
    out = {}
    for d in sorted((work / "manifests").iterdir()):
        rows = sorted(read_manifest(d).to_pylist(), key=lambda r: r["id"])
        for r in rows:  # tiny's simulated reviewer stamps its decisions with the time it wrote them
            if r.get("reviewer") == "ground-truth (procedural)":
                r["decided_at"] = "<derived>"
        out[d.name] = [json.dumps(r, sort_keys=True, default=str).replace(str(work), "<work>") for r in rows]
    return out


@pytest.mark.slow
def test_killed_run_resumes_to_manifests_identical_to_an_uninterrupted_run(tmp_path, uninterrupted_run):
    """SIGKILL `yume demo` while score_and_filter is mid-way (some shards scored), run it again: finished stages
    are cache hits, finished shards are reused, and every manifest equals an uninterrupted run's."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from prefect.settings import PREFECT_API_URL

    from yume.flows.retrain import retrain

    overrides = RUN
    work = tmp_path / "killed"
    yume = Path(sys.executable).parent / "yume"
    cmd = [str(yume), "demo", "--workdir", str(work)] + [a for o in overrides for a in ("--set", o)]
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    scored = work / "cache" / "score_and_filter"
    deadline = time.monotonic() + 300
    try:
        while not (scored.is_dir() and any(scored.glob("*.json"))):
            assert proc.poll() is None, "the run ended before score_and_filter started"
            assert time.monotonic() < deadline, "score_and_filter never started"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI, its in-process Ray and anything else it started
        proc.wait(timeout=60)
    assert not (work / "manifests" / "scores").exists() or not any((work / "manifests" / "scores").glob("_SUCCESS*"))
    assert not (work / "manifests" / "train").exists()

    again = retrain(profile="tiny", workdir=str(work), overrides=overrides)
    from yume.versioning import source_hash

    if source_hash.__wrapped__() == source_hash():
        assert again["stages_run"] == ["score_and_filter", "build_training_set", "train_foundation", "distill",
                                       "evaluate"]
        assert again["stages"]["score_and_filter"]["shards_cached"] >= 1  # scored shards were not redone
    else:  # the package source was edited while this test ran (shared checkout): every code version changed
        assert {"score_and_filter", "build_training_set", "train_foundation", "distill"} <= set(again["stages_run"])
    assert _manifests(work) == uninterrupted_run["manifests"]
    assert retrain(profile="tiny", workdir=str(work), overrides=overrides)["stages_run"] == []  # nothing left to do
