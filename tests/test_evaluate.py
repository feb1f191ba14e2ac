"""Evaluation stage (issue 5): the action script, the promotion rule (tolerances, atomic record), and the flow
writing metrics.json with the named keys per candidate and the HTML report (random tiny models: the machinery,
not the figures)."""

import json
import os
import shutil

import numpy as np
import pytest

from yume.config import load_profile

SMALL = ["world.height=32", "world.width=32", "distill.evaluate.clips=2", "distill.evaluate.euler_steps=3",
         "distill.evaluate.latency_repeats=1", "distill.evaluate.supersample=1", "distill.evaluate.strip_chunks=4"]

CANDIDATE_KEYS = ("joint_accuracy", "key_accuracy", "mouse_accuracy", "if_score", "quality_score", "first_chunk_mse",
                  "latency_per_chunk_s", "latency_chunk8_s", "latency_chunk16_s", "latency_ratio_16_over_8", "fps",
                  "drift_joint_delta", "drift_quality_delta", "drift_joint_abs", "drift_quality_abs", "segments")


def test_action_script_covers_every_key_and_mouse_label():
    from yume.tasks.action_text import KEY_LABELS, MOUSE_LABELS
    from yume.tasks.evaluate import action_script

    script = action_script(6, 16, 40_000)
    assert len(script) == 6 and all(len(c) == 16 for c in script)
    flat = [a for c in script for a in c]
    assert len(set(flat)) == 81  # 96 chunks: every (keys, mouse) pair at least once
    assert {k for k, _ in flat} == set(KEY_LABELS) and {m for _, m in flat} == set(MOUSE_LABELS)
    assert action_script(6, 16, 40_000) == script


TOL = {"joint_accuracy": ("max", 0.05), "first_chunk_mse": ("min", 0.005)}


def test_evaluate_scores_with_the_filtering_stages_vbench_weights(monkeypatch):
    """Was: evaluate started the VBench service without score_and_filter.vbench_weights, so the demo with
    vbench_weights=random failed there (VBenchWeightsMissing) after score_and_filter had scored with random weights."""
    import yume.tasks.scoring_service as service
    from yume.tasks.evaluate import build_scorer
    from yume.tasks.scoring import VBENCH_POLICY_V1

    calls = []
    monkeypatch.setattr(service, "SubprocessScorer", lambda *a, **kw: calls.append((a, kw)) or "scorer")
    vbench = ["score_and_filter.scorer=vbench", "score_and_filter.policy=vbench-leaderboard@1"]
    for weights in ("random", "cache"):
        cfg = load_profile("tiny", overrides=[*vbench, f"score_and_filter.vbench_weights={weights}"])
        assert build_scorer(cfg, cfg.distill.evaluate) == ("scorer", VBENCH_POLICY_V1)
        assert calls[-1][0][1] == "vbench" and calls[-1][1]["weights"] == weights


def test_promotion_blocks_a_regression_beyond_tolerance_and_passes_within():
    from yume.tasks.evaluate import promotion_decision

    current = {"joint_accuracy": 0.80, "first_chunk_mse": 0.010}
    assert promotion_decision({"joint_accuracy": 0.76, "first_chunk_mse": 0.014}, current, TOL)["promote"]
    worse = promotion_decision({"joint_accuracy": 0.74, "first_chunk_mse": 0.010}, current, TOL)
    assert not worse["promote"] and worse["regressions"] == ["joint_accuracy"]
    worse_mse = promotion_decision({"joint_accuracy": 0.9, "first_chunk_mse": 0.016}, current, TOL)
    assert not worse_mse["promote"] and worse_mse["regressions"] == ["first_chunk_mse"]
    assert promotion_decision({"joint_accuracy": 0.9}, current, TOL)["skipped"] == ["first_chunk_mse"]
    assert promotion_decision({"joint_accuracy": 0.1}, None, TOL)["promote"]  # nothing promoted yet


def _gen_dir(path, content=b"w"):
    path.mkdir(parents=True)
    (path / "diffusion_pytorch_model.safetensors").write_bytes(content)
    (path / "yume_model.json").write_text("{}")
    return path


def test_promote_records_atomically_and_keeps_the_old_record_on_failure(tmp_path, monkeypatch):
    from yume.tasks import evaluate as ev

    profile = load_profile("tiny", str(tmp_path / "w"), ["distill.evaluate.promotion.tolerances="
                                                         "{joint_accuracy: [max, 0.05]}"])
    a, b, c = _gen_dir(tmp_path / "a", b"a"), _gen_dir(tmp_path / "b", b"b"), _gen_dir(tmp_path / "c", b"c")
    metrics = {"candidates": {"distilled_4step": {"path": str(a), "joint_accuracy": 0.8}}}
    first = ev.maybe_promote(profile, metrics)
    assert first["promote"] and first["reason"] == "no generator promoted yet"
    rec = ev.read_promoted(profile)
    assert rec["path"] != str(a) and os.path.isdir(rec["path"])  # copied: a later distill run cannot overwrite it
    # Within tolerance -> promoted, previous record kept as `previous`.
    second = ev.maybe_promote(profile, {"candidates": {"distilled_4step": {"path": str(b), "joint_accuracy": 0.77}}})
    assert second["promote"] and ev.read_promoted(profile)["previous"]["path"] == rec["path"]
    # Beyond tolerance -> not promoted, record unchanged.
    before = ev.promoted_file(profile).read_bytes()
    third = ev.maybe_promote(profile, {"candidates": {"distilled_4step": {"path": str(c), "joint_accuracy": 0.70}}})
    assert not third["promote"] and "joint_accuracy" in third["reason"]
    assert ev.promoted_file(profile).read_bytes() == before
    # A crash while writing the record (the rename fails) leaves the old record intact and no temporary.
    monkeypatch.setattr(ev.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        ev.promote(profile, c, {"joint_accuracy": 0.9})
    assert ev.promoted_file(profile).read_bytes() == before
    json.loads(before)
    leftovers = [p.name for p in ev.promoted_file(profile).parent.iterdir() if p.name.startswith(".promoted")]
    assert leftovers == []


def test_promotion_floors_refuse_a_first_candidate_at_chance(tmp_path):
    from yume.models.distill_config import PromotionFloors
    from yume.tasks import evaluate as ev

    profile = load_profile("tiny", str(tmp_path / "w"))
    a = _gen_dir(tmp_path / "a", b"a")
    top = {"chance_joint_accuracy": 0.03, "copy_last_first_chunk_mse": 0.029}
    at_chance = {"path": str(a), "joint_accuracy": 0.03, "first_chunk_mse": 0.02, "nonfinite_latents": 0}
    d = ev.maybe_promote(profile, {**top, "candidates": {"distilled_4step": at_chance}})
    assert not d["promote"] and "3 x chance" in d["reason"] and ev.read_promoted(profile) is None
    blurry = {**at_chance, "joint_accuracy": 0.5, "first_chunk_mse": 0.03}
    assert ev.floor_failures(blurry, top, PromotionFloors()) == ["first-chunk MSE 0.03 is not below copy-last 0.0290"]
    nan = {**at_chance, "joint_accuracy": 0.5, "nonfinite_latents": 12}
    assert ev.floor_failures(nan, top, PromotionFloors()) == ["12 non-finite latent values in its rollouts"]
    good = {**at_chance, "joint_accuracy": 0.5}
    d = ev.maybe_promote(profile, {**top, "candidates": {"distilled_4step": good}})
    assert d["promote"] and d["reason"] == "no generator promoted yet"
    assert ev.floor_failures(at_chance, top, PromotionFloors(joint_over_chance=None)) == []


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A random tiny foundation final and a 'distilled' final (a copy with the few-step schedule recorded)."""
    from test_distill import make_foundation

    work = tmp_path_factory.mktemp("evaluate") / "w"
    ck = work / "checkpoints"
    make_foundation(ck / "foundation" / "final", load_profile("tiny", str(work), SMALL))
    shutil.copytree(ck / "foundation" / "final", ck / "distill" / "final")
    meta = json.loads((ck / "distill" / "final" / "yume_model.json").read_text())
    meta["sampler"] = {"schedule": "renoise", "renoise_timesteps": [1000, 750, 500, 250], "shift": 5.0}
    (ck / "distill" / "final" / "yume_model.json").write_text(json.dumps(meta))
    return work


def test_evaluate_flow_writes_metrics_report_and_promotes(workdir, prefect_harness):
    from yume.flows.evaluate import evaluate

    out = evaluate(profile="tiny", workdir=str(workdir), overrides=SMALL, promote=True)
    rep = workdir / "reports" / "evaluate"
    m = json.loads((rep / "metrics.json").read_text())
    assert set(m["candidates"]) == {"foundation_euler20", "foundation_renoise4", "distilled_4step"}
    for name, r in m["candidates"].items():
        for k in CANDIDATE_KEYS:
            assert k in r, (name, k)
        assert len(r["segments"]) == 4 and len(r["latency_per_chunk_s"]) == 16
        assert 0 <= r["joint_accuracy"] <= 1 and r["first_chunk_mse"] > 0
    assert m["candidates"]["foundation_euler20"]["forward_calls_per_chunk"] == 3
    assert m["candidates"]["distilled_4step"]["forward_calls_per_chunk"] == 4
    # Each comparison recomputed from the candidates' own figures (signs, thresholds, ratios).
    c, cmp = m["candidates"], m["comparisons"]
    d, e, f = c["distilled_4step"], c["foundation_euler20"], c["foundation_renoise4"]
    for k in ("joint_accuracy", "if_score"):
        assert cmp[f"distilled_minus_euler20_{k}"] == pytest.approx(d[k] - e[k])
        assert cmp[f"distilled_within_0.05_of_euler20_{k}"] is (abs(d[k] - e[k]) <= 0.05)
        assert cmp[f"distilled_minus_renoise4_{k}"] == pytest.approx(d[k] - f[k])
        assert cmp[f"distilled_beats_renoise4_{k}"] is (d[k] > f[k])
    assert cmp["distilled_minus_renoise4_first_chunk_mse"] == pytest.approx(d["first_chunk_mse"] - f["first_chunk_mse"])
    assert cmp["distilled_beats_renoise4_first_chunk_mse"] is (d["first_chunk_mse"] < f["first_chunk_mse"])
    assert cmp["distilled_over_euler20_first_chunk_mse"] == pytest.approx(d["first_chunk_mse"] / e["first_chunk_mse"])
    assert cmp["distilled_speedup_over_euler20"] == pytest.approx(e["latency_mean_s"] / d["latency_mean_s"])
    for name, r in c.items():
        per = r["latency_per_chunk_s"]
        assert r["latency_mean_s"] == pytest.approx(sum(per) / len(per))
        assert r["latency_ratio_16_over_8"] == pytest.approx(per[15] / per[7])
        assert cmp[f"{name}_latency_flat"] is (per[15] / per[7] <= 1.15)
        assert cmp[f"{name}_drift_joint_within_0.05"] is (r["drift_joint_abs"] <= 0.05)
    assert m["quality_scorer"]["is_vbench"] is False and "NOT VBench" in m["quality_scorer"]["label"]
    assert m["worlds"]["chunks"] == 16 and m["worlds"]["mouse_labels"] >= 8
    # The floors decide for a random model: promoted exactly when it clears them (it does not: at chance).
    from yume.models.distill_config import PromotionFloors
    from yume.tasks.evaluate import floor_failures

    assert 0 < m["chance_joint_accuracy"] < 0.2 and m["copy_last_first_chunk_mse"] > 0
    failures = floor_failures(m["candidates"]["distilled_4step"], m, PromotionFloors())
    assert m["promotion"]["applied"] and m["promotion"]["promote"] == (not failures) == bool(out["promotion"])
    if failures:
        assert m["promotion"]["floor_failures"] == failures
    page = (rep / "index.html").read_text()
    assert "follow the controls" in page  # the one-line verdict opens the report
    assert "<table>" in page and "distilled_4step" in page
    for src in [s.split('"')[0] for s in page.split('src="')[1:]]:
        assert (rep / src).is_file() and (rep / src).stat().st_size > 500, src
    assert (rep / "plots" / "joint_accuracy.png").is_file() and (rep / "strips" / "distilled_4step.png").is_file()
    # The report says how to play the generator the gate chose: the promoted one, else the candidate.
    import html

    promoted = workdir / "checkpoints" / "promoted.json"
    expected = json.loads(promoted.read_text())["path"] if not failures else str(workdir / "checkpoints" / "distill" / "final")
    assert m["play"]["checkpoint"] == expected
    assert m["play"]["command"] == f"yume play --profile tiny --checkpoint {expected}"
    assert html.escape(m["play"]["command"]) in page and 'href="http://127.0.0.1:8765/"' in page


@pytest.mark.slow
def test_evaluate_includes_the_promoted_generator(workdir, prefect_harness):
    """Next evaluation: the promoted generator is a candidate; the same weights are not promoted again."""
    from yume.flows.evaluate import evaluate
    from yume.tasks import evaluate as ev

    profile = load_profile("tiny", str(workdir), SMALL)
    if ev.read_promoted(profile) is None:
        ev.promote(profile, workdir / "checkpoints" / "distill" / "final", {})
    rep = workdir / "reports" / "evaluate"
    evaluate(profile="tiny", workdir=str(workdir), overrides=SMALL + ["distill.evaluate.chunks=16"], promote=True)
    m2 = json.loads((rep / "metrics.json").read_text())
    assert "promoted" in m2["candidates"]
    assert not m2["promotion"]["promote"] and "already" in m2["promotion"]["reason"]
    assert np.isclose(m2["candidates"]["promoted"]["joint_accuracy"], m2["candidates"]["distilled_4step"]["joint_accuracy"])
