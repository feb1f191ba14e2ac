"""The model-driven curation flows end to end on small procedural worlds, with Ray in-process and tiny
random-init models: recaption (InternVL backend and metadata backend), synthesize_t2v, synthesize_events
with screening decisions, score_and_filter; valid manifests, resume, reuse of finished videos."""

import json

import pandas as pd
import pytest

from yume.config import load_profile
from yume.datasets.manifest import marker_path, read_manifest, validate_manifest
from yume.datasets.sekai import probe_video
from yume.tasks.synthesis import item_seed

pytestmark = pytest.mark.slow

SMALL = ["world.n_clips=5", "world.frames_per_clip=96", "world.height=32", "world.width=32", "world.seed=7",
         "synthesize_t2v.num_videos=4", "synthesize_t2v.shard_size=2", "synthesize_events.num_items=6",
         "synthesize_events.shard_size=4", "synthesize_events.sampler.height=32",
         "synthesize_events.sampler.width=32", "score_and_filter.shard_size=8"]


@pytest.fixture(scope="module")
def work(tmp_path_factory, prefect_harness, ray_local):
    from yume.flows.curate_real import curate_real
    from yume.flows.synthesize_events import synthesize_events
    from yume.flows.synthesize_t2v import synthesize_t2v

    work = tmp_path_factory.mktemp("curation") / "work"
    out = {"curate_real": curate_real(profile="tiny", workdir=str(work), overrides=SMALL)}
    out["synthesize_t2v"] = synthesize_t2v(profile="tiny", workdir=str(work), overrides=SMALL)
    out["synthesize_events"] = synthesize_events(profile="tiny", workdir=str(work), overrides=SMALL)
    return work, out


@pytest.fixture()
def own_work(work, tmp_path):
    """A private copy of the module's work directory, for a test that changes inputs (a broken video, revised
    decisions): the other tests see the module's directory as the fixture left it, in any order."""
    import shutil

    src, out = work
    copy = tmp_path / "work"
    shutil.copytree(src, copy, symlinks=True)
    return copy, out


def _real_ok(work):
    real = read_manifest(work / "manifests" / "real").to_pandas()
    return real[real.status == "ok"]


def test_recaption_internvl_then_metadata(work):
    from yume.flows.recaption import recaption

    work, _ = work
    real = _real_ok(work)
    internvl = SMALL + ["recaption.backend=internvl", "recaption.model=tiny:internvl3",
                        "recaption.max_new_tokens=16", "recaption.shard_size=4"]
    result = recaption(profile="tiny", workdir=str(work), overrides=internvl)
    manifest = work / "manifests" / "captions"
    assert validate_manifest(manifest) == []
    caps = read_manifest(manifest).to_pandas()
    assert sorted(caps.upstream_id) == sorted(real.id) and (caps.id == caps.upstream_id).all()
    assert result["segments"] == len(real) and result["model_id"] == "tiny:internvl3"
    assert set(caps.backend) == {"internvl"} and (caps.generated_tokens <= 16).all()
    merged = caps.merge(real[["id", "start_frame", "end_frame", "caption"]], on="id", suffixes=("", "_real"))
    assert all(s <= min(f) and max(f) < e for f, s, e in zip(merged.frame_indices, merged.start_frame, merged.end_frame))
    assert (merged.scene_caption == merged.caption).all()  # the T2V caption stays
    reasons = {e.split(":")[0] for e in caps.error.dropna()}  # random weights: their output is caught
    assert reasons <= {"caption_empty", "caption_degenerate", "caption_truncated", "caption_too_short"}

    again = recaption(profile="tiny", workdir=str(work), overrides=internvl)
    assert again["shards_cached"] == again["shards"] == result["shards"]

    metadata = recaption(profile="tiny", workdir=str(work), overrides=SMALL)
    caps = read_manifest(manifest).to_pandas()
    assert metadata["captions_ok"] == len(real) == len(caps) and set(caps.backend) == {"metadata"}
    assert caps.event_caption.str.len().min() > 100 and not caps.event_caption.str.contains("camera").any()


def test_synthesize_t2v(work):
    from yume.flows.synthesize_t2v import synthesize_t2v

    work, out = work
    first = out["synthesize_t2v"]
    assert first["planted_duplicates"] == first["planted_duplicates_removed"] == first["dedup_dropped"] == 6
    assert first["sampled"] == first["videos_ok"] == first["generated"] == 4
    manifest = work / "manifests" / "synthetic"
    assert validate_manifest(manifest) == []
    rows = read_manifest(manifest).to_pandas()
    table = pd.read_csv(work / "data" / "openvid" / "captions.csv").set_index("video")
    dedup = pd.read_csv(work / "reports" / "synthesize_t2v" / "dedup.csv")
    assert set(rows.caption_key) <= set(dedup[dedup.decision == "kept"].key)
    for r in rows.itertuples():
        assert r.prompt == table.loc[r.caption_key, "caption"] and r.seed == item_seed(0, r.caption_key)
        assert probe_video(work / "data" / r.video_uri)[:2] == (17, 16.0)
        sampler = json.loads(r.sampler)
        assert sampler["num_inference_steps"] == 2 and sampler["scheduler"] == "UniPCMultistepScheduler"
    assert set(rows.model_id) == {"tiny:wan2.1-t2v"} and set(rows.pipeline) == {"WanPipeline"}

    before = {p.name: p.read_bytes() for p in manifest.glob("part-*.parquet")}
    again = synthesize_t2v(profile="tiny", workdir=str(work), overrides=SMALL)
    assert again["shards_cached"] == again["shards"] == 2 and again["generated"] == 0
    marker_path(manifest, "00001").unlink()  # a run killed before this shard's marker
    third = synthesize_t2v(profile="tiny", workdir=str(work), overrides=SMALL)
    assert third["shards_cached"] == 1 and third["generated"] == 0  # its videos are reused, not re-rendered
    assert {p.name: p.read_bytes() for p in manifest.glob("part-*.parquet")} == before


def test_synthesize_events_screening(own_work):
    from yume.flows.synthesize_events import synthesize_events
    from yume.tasks.synthesize_events import read_decisions, write_decisions

    work, out = own_work
    first = out["synthesize_events"]
    manifest = work / "manifests" / "events"
    assert validate_manifest(manifest) == []
    rows = read_manifest(manifest).to_pandas()
    prompts = pd.read_csv(work / "data" / "events" / "prompts.csv")
    assert first["decisions_derived_from_ground_truth"] and first["pending"] == 0
    assert sorted(rows.decision) == sorted(prompts.gt_decision) and {"accept", "reject"} <= set(rows.decision)
    assert set(rows.reviewer) == {"ground-truth (procedural)"} and rows.decided_at.notna().all()
    assert (work / "review" / "events" / "contact_sheet.html").is_file()
    assert set(rows.pipeline) == {"WanImageToVideoPipeline"} and rows.video_uri.notna().all()

    # Reviewers change their minds: one accept becomes a reject, one decision is withdrawn, one row is junk.
    path = work / "review" / "events" / "decisions.csv"
    decisions, _ = read_decisions(path, set(rows.id))
    accepted = sorted(i for i, d in decisions.items() if d["decision"] == "accept")
    flipped, withdrawn = accepted[0], accepted[1]
    records = [{"video_id": i, **d} for i, d in decisions.items() if i != withdrawn]
    records = [{**r, "decision": "reject", "reviewer": "human", "decided_at": "2030-01-01T00:00:00+00:00"}
               if r["video_id"] == flipped else r for r in records] + [{"video_id": "junk", "decision": "accept"}]
    write_decisions(path, records)
    second = synthesize_events(profile="tiny", workdir=str(work), overrides=SMALL)
    assert second["generated"] == 0 and second["pending"] == 1 and second["decision_problems"] == 1
    assert second["accepted"] == first["accepted"] - 2 and second["rejected"] == first["rejected"] + 1
    rows = read_manifest(manifest).to_pandas().set_index("id")
    assert rows.loc[flipped, "decision"] == "reject" and rows.loc[flipped, "reviewer"] == "human"
    assert rows.loc[withdrawn, "decision"] == "pending"
    template = pd.read_csv(work / "review" / "events" / "decisions_template.csv")
    assert list(template.video_id) == [withdrawn]


def test_score_and_filter(own_work):
    from yume.flows.score_and_filter import score_and_filter
    from yume.tasks.score_and_filter import training_candidates

    work, _ = own_work
    synthetic = read_manifest(work / "manifests" / "synthetic").to_pandas()
    broken = work / "data" / synthetic.video_uri.iloc[0]
    broken.write_bytes(broken.read_bytes()[:200])  # a video that no longer decodes
    events = read_manifest(work / "manifests" / "events").to_pandas()
    accepted = set(events[(events.status == "ok") & (events.decision == "accept")].id)
    result = score_and_filter(profile="tiny", workdir=str(work), overrides=SMALL)
    manifest = work / "manifests" / "scores"
    assert validate_manifest(manifest) == []
    scores = read_manifest(manifest).to_pandas()
    real = _real_ok(work)
    assert result["candidates"] == len(real) + len(synthetic) + len(accepted) == len(scores)
    assert set(scores[scores.upstream_kind == "events"].id) == accepted  # only accepted event videos go on
    bad = scores.set_index("id").loc[synthetic.id.iloc[0]]
    assert bad.status == "quarantined" and bad.error.startswith("decode_failed")
    ok = scores[scores.status == "ok"]
    assert set(ok.policy) == {"lite@1"} and not ok.is_vbench.any() and ok.composite.between(0, 1).all()
    for kind, fraction in (("real", 0.75), ("synthetic", 0.5), ("events", 1.0)):
        part = ok[ok.upstream_kind == kind]
        assert part.selected.sum() == -(-len(part) * fraction // 1)  # ceil
        if part.selected.any() and not part.selected.all():
            assert part[part.selected].composite.min() >= part[~part.selected].composite.max()
    assert sorted(ok[ok.upstream_kind == "real"].rank_in_source) == list(range(1, len(real) + 1))
    for name in ("hist_all.png", "hist_real.png", "hist_synthetic.png"):
        assert (work / "reports" / "score_and_filter" / name).read_bytes()[:4] == b"\x89PNG"

    again = score_and_filter(profile="tiny", workdir=str(work), overrides=SMALL)
    assert again["shards_cached"] == again["shards"]
    mixture = training_candidates(load_profile("tiny", workdir=work, overrides=SMALL))
    assert {"real", "synthetic", "events"} == set(mixture.upstream_kind)  # the mixture sees every source
    assert mixture[mixture.upstream_kind == "events"].image_uri.notna().all()
    assert mixture[mixture.upstream_kind == "synthetic"].t2v_text.notna().all()


def test_event_images_outside_the_table_root_quarantine_their_rows(work, tmp_path):
    """An absolute or ../ image path in the prompts table quarantines that row as path_escape (the reason
    curate_real gives Sekai rows); the file outside is never read and the rest of the shard renders."""
    import shutil

    from yume.flows.synthesize_events import synthesize_events

    src, _ = work
    procedural = pd.read_csv(src / "data" / "events" / "prompts.csv").iloc[0]
    table = tmp_path / "tables" / "prompts.csv"
    table.parent.mkdir()
    shutil.copy(src / "data" / "events" / procedural.image, table.parent / "good.png")
    outside = tmp_path / "outside.png"  # readable, so only the guard keeps it out
    shutil.copy(table.parent / "good.png", outside)
    pd.DataFrame([{"key": "good", "image": "good.png", "category": procedural.category, "event": procedural.event},
                  {"key": "absolute", "image": str(outside), "category": procedural.category, "event": "x"},
                  {"key": "dotdot", "image": "../outside.png", "category": procedural.category, "event": "y"}]
                 ).to_csv(table, index=False)
    out = synthesize_events(profile="tiny", workdir=str(tmp_path / "work"),
                            overrides=SMALL + [f"synthesize_events.prompts_table={table}"])
    rows = read_manifest(tmp_path / "work" / "manifests" / "events").to_pandas().set_index("item_key")
    assert rows.loc["good", "status"] == "ok"
    for key in ("absolute", "dotdot"):
        assert rows.loc[key, "status"] == "quarantined"
        assert rows.loc[key, "error"].startswith("path_escape: ") and "the data root" in rows.loc[key, "error"]
    assert out["generated"] == 1
    thumbs = {p.name for p in (tmp_path / "work" / "review" / "events" / "thumbs").glob("*_image.jpg")}
    assert thumbs == {f"{rows.loc['good', 'id']}_image.jpg"}
