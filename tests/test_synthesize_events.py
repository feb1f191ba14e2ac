"""synthesize_events without models: procedural prompts and their ground-truth decisions (rejects included),
the decisions file (CSV and JSON, bad rows reported), manifest rows, the contact sheet."""

import json

import pandas as pd
import pytest

from yume.config import EVENT_CATEGORIES, ConfigError
from yume.datasets.procedural import ProceduralWorldConfig, write_sekai_dataset
from yume.tasks.synthesize_events import (
    EVENT_LIBRARY,
    GT_REVIEWER,
    build_procedural_prompts,
    derive_decisions,
    event_row,
    read_decisions,
    read_prompts_table,
    write_contact_sheet,
    write_decisions,
)


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    base = tmp_path_factory.mktemp("events")
    root = write_sekai_dataset(base / "sekai", ProceduralWorldConfig(n_clips=6, frames_per_clip=40, height=32,
                                                                     width=32, seed=1))
    path = build_procedural_prompts(root, base / "events", 12, list(EVENT_CATEGORIES))
    return root, path


def test_procedural_prompts_cover_the_four_categories_with_ground_truth(prompts):
    root, path = prompts
    rows, invalid = read_prompts_table(path, list(EVENT_CATEGORIES))
    assert len(rows) == 12 and not invalid
    assert {r["category"] for r in rows} == set(EVENT_CATEGORIES)
    assert all((path.parent / r["image"]).is_file() for r in rows)
    assert all("seconds in" not in r["event"] for r in rows)
    gt = pd.read_parquet(root / "ground_truth" / "clips.parquet")
    annotations = pd.read_csv(root / "annotations.csv").set_index("videoFile")
    for r in rows:  # the simulated reviewer's rule: a library event's requirement against the image's truth
        clip = gt[gt.video_file.str.contains(r["key"].rsplit("-", 1)[0])].iloc[0]
        needs = next((n for t, n in EVENT_LIBRARY[r["category"]] if t == r["event"]), {})
        truth = {"scene": clip.scene, "timeOfDay": annotations.loc[clip.video_file, "timeOfDay"]}
        assert r["gt_decision"] == ("accept" if all(truth[k] == v for k, v in needs.items()) else "reject")
    assert {r["gt_decision"] for r in rows} == {"accept", "reject"}  # rejects included
    assert build_procedural_prompts(root, path.parent, 12, list(EVENT_CATEGORIES)).read_text() == path.read_text()


def test_prompts_table_rejects_unknown_category_and_missing_columns(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("key,image,category,event\na,x.png,weather,Rain.\nb,y.png,horror,Ghosts.\nc,z.png,sci-fi,\n")
    rows, invalid = read_prompts_table(path, list(EVENT_CATEGORIES))
    assert [r["key"] for r in rows] == ["a"] and [i["key"] for i in invalid] == ["b", "c"]
    (tmp_path / "q.csv").write_text("image,event\nx.png,Rain.\n")
    with pytest.raises(ConfigError, match="category"):
        read_prompts_table(tmp_path / "q.csv", list(EVENT_CATEGORIES))


@pytest.mark.parametrize("suffix", ["csv", "json"])
def test_decisions_file_round_trip_and_problems(tmp_path, suffix):
    path = tmp_path / f"decisions.{suffix}"
    write_decisions(path, [
        {"video_id": "v1", "decision": "accept", "reviewer": "ana", "decided_at": "2026-01-01T10:00:00+00:00"},
        {"video_id": "v2", "decision": "REJECT", "reviewer": "bo", "decided_at": "2026-01-01T10:00:00+00:00",
         "note": "event not visible"},
        {"video_id": "v1", "decision": "reject", "reviewer": "cy", "decided_at": "2026-01-02T09:00:00+00:00"},
        {"video_id": "v3", "decision": "maybe", "reviewer": "ana", "decided_at": "2026-01-01T10:00:00+00:00"},
        {"video_id": "v4", "decision": "", "reviewer": "", "decided_at": ""},  # undecided: pending, no problem
        {"video_id": "nope", "decision": "accept", "reviewer": "ana", "decided_at": "2026-01-01T10:00:00+00:00"},
    ])
    decisions, problems = read_decisions(path, {"v1", "v2", "v3", "v4"})
    assert decisions["v1"]["decision"] == "reject" and decisions["v1"]["reviewer"] == "cy"  # latest wins
    assert decisions["v2"] == {"decision": "reject", "reviewer": "bo", "decided_at": "2026-01-01T10:00:00+00:00",
                               "note": "event not visible"}
    assert set(decisions) == {"v1", "v2"}
    assert sorted(p["video_id"] for p in problems) == ["nope", "v3"]


def test_unreadable_decisions_file_names_the_key(tmp_path):
    bad = tmp_path / "d.json"
    bad.write_text(json.dumps({"video_id": "x"}))
    with pytest.raises(ConfigError, match="synthesize_events.decisions"):
        read_decisions(bad, {"x"})


def test_rows_carry_decisions_and_only_ok_videos_are_reviewable(prompts, tmp_path):
    _, path = prompts
    items = [{"id": f"id{i}", "gt_decision": d, "gt_note": "n"} for i, d in enumerate(["accept", "reject", ""])]
    derived = derive_decisions(items)
    assert [d["decision"] for d in derived] == ["accept", "reject"] and derived[0]["reviewer"] == GT_REVIEWER
    item = {"id": "id0", "image_uri": "images/a.png", "content_hash": "h", "key": "k", "category": "weather",
            "prompt": "Rain.", "seed": 1, "video_uri": "events/videos/id0.mp4"}
    ok = {"status": "ok", "error": None, "video_sha256": "s", "num_frames": 9, "height": 64, "width": 64, "fps": 16.0}
    common = {"stage": "synthesize_events", "stage_version": "1", "config_hash": "c", "model_id": "m",
              "pipeline": "WanImageToVideoPipeline", "sampler": "{}"}
    assert event_row(item, ok, None, common)["decision"] == "pending"
    row = event_row(item, ok, {"decision": "accept", "reviewer": "ana", "decided_at": "t", "note": None}, common)
    assert (row["decision"], row["reviewer"], row["decided_at"]) == ("accept", "ana", "t")
    failed = event_row(item, {"status": "quarantined", "error": "nan_frames: 3 of 9"}, None, common)
    assert failed["decision"] is None and failed["video_uri"] is None
    sheet = write_contact_sheet(tmp_path / "sheet.html", [{**row, "status": "quarantined", "error": "oom: x"}],
                                tmp_path, path.parent)
    html = sheet.read_text()
    assert "id0" in html and "oom: x" in html and "decisions.csv" in html


def test_contact_sheet_is_paginated_with_thumbnail_files(prompts, tmp_path):
    _, path = prompts
    rows, _ = read_prompts_table(path, list(EVENT_CATEGORIES))
    base = {"status": "quarantined", "error": "oom: x", "decision": None, "category": "weather", "event_text": "Rain."}
    many = [{**base, "id": f"x{i:03d}", "image_uri": rows[0]["image"]} for i in range(450)]
    first = write_contact_sheet(tmp_path / "review" / "sheet.html", many, tmp_path, path.parent)
    pages = sorted(p.name for p in first.parent.glob("sheet*.html"))
    assert pages == ["sheet.html", "sheet_002.html", "sheet_003.html"]
    assert 'href="sheet_003.html"' in first.read_text() and "x449" in (first.parent / "sheet_003.html").read_text()
    assert (first.parent / "thumbs" / "x000_image.jpg").is_file() and "base64" not in first.read_text()
