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

FAST = ["world.n_clips=8", "train.max_steps=4", "train.eval.enabled=false"]


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


@pytest.mark.slow
def test_retrain_twice_hits_every_stage_and_a_change_reruns_only_downstream(tmp_path, prefect_harness, ray_local):
    from yume.flows import STAGE_NAMES
    from yume.flows.retrain import retrain

    work = tmp_path / "work"
    t0 = time.perf_counter()
    first = retrain(profile="tiny", workdir=str(work), overrides=FAST)
    t1 = time.perf_counter()
    second = retrain(profile="tiny", workdir=str(work), overrides=FAST)
    t2 = time.perf_counter()
    print(f"retrain first {t1 - t0:.1f} s, second {t2 - t1:.1f} s, ratio {(t2 - t1) / (t1 - t0):.3f}")

    assert first["stages_run"] == list(STAGE_NAMES) and first["cache_hits"] == 0
    assert second["stages_run"] == [] and second["cache_hits"] == len(STAGE_NAMES)
    assert all(r["cache_hit"] for r in second["summary"])
    assert (t2 - t1) < 0.25 * (t1 - t0)
    # The summary of a cached stage reports what it produced when it ran.
    by_stage = {r["stage"]: r for r in second["summary"]}
    assert by_stage["curate_real"]["items_in"] == 8 and by_stage["curate_real"]["ok"] > 0
    assert by_stage["score_and_filter"]["quarantined"] == 0
    assert set(by_stage["train_foundation"]) >= {"items_in", "ok", "quarantined", "wall_seconds", "cache_hit"}
    report = json.loads((work / "reports" / "retrain" / "metrics.json").read_text())
    assert report["cache_hits"] == len(STAGE_NAMES)

    # One stage's config changes: that stage and what reads its output rerun, nothing upstream.
    changed = FAST + ["score_and_filter.selection.real.top_fraction=0.5"]
    third = retrain(profile="tiny", workdir=str(work), overrides=changed)
    assert third["stages_run"] == ["score_and_filter", "build_training_set", "train_foundation"]

    # A deleted manifest is rebuilt; identical bytes leave everything downstream cached.
    captions = read_manifest(work / "manifests" / "captions").to_pylist()
    shutil.rmtree(work / "manifests" / "captions")
    fourth = retrain(profile="tiny", workdir=str(work), overrides=changed)
    assert fourth["stages_run"] == ["recaption"]
    assert read_manifest(work / "manifests" / "captions").to_pylist() == captions
