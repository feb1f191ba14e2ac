"""Text from data (event prompts, reviewers, error messages, candidate descriptions) reaches the HTML pages the
project writes as text, never as markup: the contact sheet and the evaluate report, checked in the HTML and,
for the report, in headless Chromium (a script in the text would have renamed the page)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

HOSTILE = """<script>document.title='PWNED'</script><img src=x onerror="document.title='PWNED'"> "quoted" & 'single'"""


def assert_inert(page: str) -> None:
    assert "<script>" not in page and "<img src=x" not in page
    assert "&lt;script&gt;document.title=" in page and "&quot;quoted&quot; &amp;" in page


def test_contact_sheet_escapes_event_text_reviewer_and_errors(tmp_path):
    from yume.tasks.synthesize_events import write_contact_sheet

    base = {"category": "weather", "decision": "pending", "reviewer": None, "video_uri": None, "image_uri": "x.png"}
    rows = [{**base, "id": "ok-1", "status": "quarantined", "error": f"decode_failed: {HOSTILE}", "event_text": HOSTILE,
             "reviewer": HOSTILE, "decision": "accept"},
            {**base, "id": "ok-2", "status": "ok", "error": None, "event_text": HOSTILE, "category": HOSTILE}]
    page = write_contact_sheet(tmp_path / "sheet.html", rows, tmp_path, tmp_path).read_text()
    assert_inert(page)
    assert page.count("&lt;script&gt;") == 5  # event text x2, reviewer, error, category


def hostile_metrics() -> dict:
    cand = {"joint_accuracy": 0.5, "if_score": 0.5, "first_chunk_mse": 0.01, "latency_mean_s": 0.1, "fps": 10.0,
            "latency_ratio_16_over_8": 1.0, "description": HOSTILE}
    return {"candidates": {f"distilled_4step{HOSTILE}": cand, "foundation_euler20": {**cand, "description": "ok"}},
            "comparisons": {HOSTILE: 1.0}, "promotion": {"promote": False, "reason": HOSTILE, "candidate": "distilled_4step"},
            "worlds": {"clips": 1, "seed": 1, "chunks": 2, "chunk_frames": 4, "key_labels": 9, "mouse_labels": 9,
                       "clips_with_events": 0},
            "quality_scorer": {"label": HOSTILE}, "chance_joint_accuracy": 0.03,
            "metric_ceiling_joint_accuracy": 0.9, "copy_last_first_chunk_mse": 0.02}


def test_evaluate_report_escapes_descriptions_reasons_names_and_labels(tmp_path):
    from yume.tasks.evaluate import write_html

    metrics = hostile_metrics()
    metrics["candidates"] = {"distilled_4step": metrics["candidates"].pop(f"distilled_4step{HOSTILE}"),
                             **metrics["candidates"], HOSTILE: metrics["candidates"]["foundation_euler20"]}
    page = write_html(metrics, {}, {HOSTILE: "s.png"}, tmp_path / "index.html").read_text()
    assert_inert(page)


def test_the_report_renders_the_text_in_chromium(tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (make test installs it with apt-get where it can)")
    from yume.tasks.evaluate import write_html

    metrics = hostile_metrics()
    metrics["candidates"] = {"distilled_4step": metrics["candidates"].pop(f"distilled_4step{HOSTILE}"),
                             **metrics["candidates"]}
    page = write_html(metrics, {}, {}, tmp_path / "index.html")
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          "--disable-background-networking", "--disable-component-update", "--disable-sync",
                          f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert "<title>Yume evaluation</title>" in dom and "PWNED" not in dom.split("</title>")[0]
    assert "&lt;script&gt;document.title='PWNED'&lt;/script&gt;" in dom  # shown as text in the body
