"""Per-item work of `synthesize_events`: first-person image + event text -> Wan I2V video -> human screening.

Inputs: a prompts table (CSV: ``key``, ``image`` (path relative to the table), ``category``, ``event``) in four
categories - urban daily life, sci-fi, fantasy, weather (Yume-1.5's event classes). On `tiny`,
`build_procedural_prompts` writes one from the procedural worlds: the image is a clip's first frame (the
walker's view before anything happens) and the event text is either the clip's own ground-truth event
(rain/fog -> weather, lights coming on -> urban daily life, a sculpture appearing -> fantasy) or one from
`EVENT_LIBRARY` for the category the item cycles to. Each library event states what the image must show
for it to make sense (e.g. street lights need an urban scene); the ground truth (scene, time of day) says
whether it does, which is what the simulated reviewer on `tiny` decides by - so rejects occur naturally.

Screening (the human step): the flow writes a static HTML contact sheet (conditioning image, first/middle/
last frame, the event text, the video) and a decisions template; reviewers fill the decisions file - CSV
(``video_id,decision,reviewer,decided_at,note``) or JSON (a list of such objects) - and re-run the flow:
videos are reused, the decisions land in the manifest (``decision`` accept/reject/pending, ``reviewer``,
``decided_at``, ``review_note``), and only accepted videos go on to score_and_filter. A decision for an
unknown id, or with a value other than accept/reject, is reported and ignored; for repeated ids the latest
``decided_at`` wins. With ``derive_decisions`` (tiny), a missing decisions file is first written from the
ground truth, reviewer ``ground-truth (procedural)``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from yume.datasets.manifest import resolve_uri, row_id

STAGE = "synthesize_events"
DECISIONS = ("accept", "reject")
DECISION_COLUMNS = ("video_id", "decision", "reviewer", "decided_at", "note")
GT_REVIEWER = "ground-truth (procedural)"

# category -> [(event text, requirement on the image's ground truth)]
EVENT_LIBRARY: dict[str, list[tuple[str, dict]]] = {
    "urban daily life": [
        ("A delivery rider cycles past along the path and a few people stroll towards the buildings.",
         {"scene": "outdoor-urban"}),
        ("The street lights switch on one by one and the shop windows start to glow.", {"scene": "outdoor-urban"}),
    ],
    "sci-fi": [
        ("A silver drone descends from the sky and hovers ahead, its lights blinking blue and red.", {}),
        ("A holographic billboard flickers to life on the side of the nearest building.", {"scene": "outdoor-urban"}),
    ],
    "fantasy": [
        ("A glowing orange sculpture rises out of the ground ahead, shimmering with light.", {}),
        ("The tree trunks begin to glow with soft blue runes as fireflies gather around them.",
         {"scene": "outdoor-natural"}),
    ],
    "weather": [
        ("Dark clouds gather and heavy rain starts to pour, streaking across the view.", {}),
        ("Snow begins to fall, slowly covering the ground in a thin white layer.", {"timeOfDay": "daytime"}),
    ],
}
GT_EVENT_CATEGORY = {"rain": "weather", "fog": "weather", "night_lights": "urban daily life",
                     "object_appears": "fantasy"}
_TIMING = re.compile(r"^\s*about \d+ seconds? in,\s*", re.IGNORECASE)


def _strip_timing(text: str) -> str:
    core = _TIMING.sub("", text or "").strip()
    return core[:1].upper() + core[1:]


def build_procedural_prompts(sekai_root: Path, out_dir: Path, n_items: int, categories: list[str]) -> Path:
    """Write <out_dir>/prompts.csv and <out_dir>/images/*.png from procedural worlds and their ground truth."""
    import cv2
    import pandas as pd

    from yume.config import ConfigError
    from yume.datasets.sekai import read_frames

    gt_path = Path(sekai_root) / "ground_truth" / "clips.parquet"
    if not gt_path.is_file():
        raise ConfigError("synthesize_events.prompts_table: required when the data has no procedural ground truth "
                          f"({gt_path} is missing)")
    clips = pd.read_parquet(gt_path).sort_values("video_file").reset_index(drop=True)
    clips = clips.astype(object).where(clips.notna(), None)
    ann = pd.read_csv(Path(sekai_root) / "annotations.csv", keep_default_na=False).set_index("videoFile")
    rows = []
    for j in range(n_items):
        clip = clips.iloc[j % len(clips)]
        category = categories[j % len(categories)]
        truth = {"scene": clip["scene"], "timeOfDay": ann.loc[clip["video_file"], "timeOfDay"]}
        if clip["event"] and GT_EVENT_CATEGORY.get(clip["event"]) == category:
            text, needs = _strip_timing(clip["event_text"]), {}
        else:
            library = EVENT_LIBRARY[category]
            text, needs = library[(j // len(categories)) % len(library)]
        unmet = {k: v for k, v in needs.items() if truth.get(k) != v}
        stem = Path(clip["video_file"]).stem
        image_uri = f"images/{stem}_f0000.png"
        image_path = Path(out_dir) / image_uri
        if not image_path.is_file():
            frame = read_frames(Path(sekai_root) / clip["video_file"], [0])[0]
            image_path.parent.mkdir(parents=True, exist_ok=True)
            ok, png = cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            tmp = image_path.with_name(f".tmp-{image_path.name}")
            tmp.write_bytes(png.tobytes())
            tmp.replace(image_path)
        rows.append({
            "key": f"{stem}-{j:03d}", "image": image_uri, "category": category, "event": text,
            "gt_decision": "reject" if unmet else "accept",
            "gt_note": "; ".join(f"needs {k}={v}, the image shows {truth.get(k)}" for k, v in unmet.items())
                       or "consistent with the image's ground truth",
        })
    path = Path(out_dir) / "prompts.csv"
    data = pd.DataFrame(rows).to_csv(index=False)
    if not (path.is_file() and path.read_text() == data):
        tmp = path.with_name(".tmp-prompts.csv")
        tmp.write_text(data)
        tmp.replace(path)
    return path


def read_prompts_table(path: Path, categories: list[str]) -> tuple[list[dict], list[dict]]:
    """(valid rows, invalid rows with reasons) of a prompts CSV. Rows keep every column of the table."""
    import pandas as pd

    from yume.config import ConfigError

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"synthesize_events.prompts_table: {str(path)!r} does not exist")
    df = pd.read_csv(path, keep_default_na=False, dtype=str)
    missing = {"image", "category", "event"} - set(df.columns)
    if missing:
        raise ConfigError(f"synthesize_events.prompts_table: columns {sorted(missing)} missing in {path.name}")
    if "key" not in df.columns:
        df["key"] = [f"row{i:06d}" for i in range(len(df))]
    valid, invalid, seen = [], [], set()
    for i, row in enumerate(df.to_dict("records")):
        reason = None
        if row["category"] not in categories:
            reason = f"category {row['category']!r} is not one of {categories}"
        elif not row["event"].strip():
            reason = "empty event text"
        elif row["key"] in seen:
            reason = "duplicate key"
        if reason:
            invalid.append({"row": i, "key": row["key"], "reason": reason})
            continue
        seen.add(row["key"])
        valid.append(row)
    return valid, invalid


def event_item_id(image_uri: str, key: str) -> str:
    return row_id(image_uri, f"event={key}")


def content_hash(image_path: Path | None, text: str) -> str:
    h = hashlib.sha256()
    if image_path is not None and Path(image_path).is_file():
        h.update(Path(image_path).read_bytes())
    h.update(text.encode())
    return h.hexdigest()


# --- decisions -----------------------------------------------------------------------------------------


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def write_decisions(path: Path, decisions: list[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    if path.suffix.lower() == ".json":
        tmp.write_text(json.dumps(decisions, indent=1, ensure_ascii=False))
    else:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=DECISION_COLUMNS)
            w.writeheader()
            for d in decisions:
                w.writerow({k: d.get(k, "") for k in DECISION_COLUMNS})
    tmp.replace(path)


def read_decisions(path: Path, known_ids: set[str]) -> tuple[dict[str, dict], list[dict]]:
    """{video_id: decision record} and the problems found (unknown ids, bad values), from CSV or JSON."""
    from yume.config import ConfigError

    path = Path(path)
    try:
        if path.suffix.lower() == ".json":
            records = json.loads(path.read_text())
            if not isinstance(records, list):
                raise ValueError("a JSON decisions file must hold a list of objects")
        else:
            with open(path, newline="", encoding="utf-8") as f:
                records = list(csv.DictReader(f))
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"synthesize_events.decisions: cannot read {path}: {e}. Fix the file (a list of objects with video_id "
            f"and decision), or move it aside: every video is then pending review and its template is rewritten."
        ) from None
    decisions, problems = {}, []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            problems.append({"row": i, "video_id": "", "problem": f"not an object: {str(rec)[:40]!r}"})
            continue
        vid = str(rec.get("video_id") or "").strip()
        decision = str(rec.get("decision") or "").strip().lower()
        if not vid or vid not in known_ids:
            problems.append({"row": i, "video_id": vid, "problem": "unknown video_id"})
            continue
        if decision not in DECISIONS:
            if decision:  # a blank decision is simply not decided yet
                problems.append({"row": i, "video_id": vid, "problem": f"decision {decision!r} is not accept/reject"})
            continue
        entry = {"decision": decision, "reviewer": str(rec.get("reviewer") or "").strip() or None,
                 "decided_at": str(rec.get("decided_at") or "").strip() or None,
                 "note": str(rec.get("note") or "").strip() or None}
        previous = decisions.get(vid)
        if previous is None or (entry["decided_at"] or "") >= (previous["decided_at"] or ""):
            decisions[vid] = entry
    return decisions, problems


def derive_decisions(items: list[dict]) -> list[dict]:
    """Decisions from the prompts table's ground-truth columns (procedural worlds only)."""
    when = now_iso()
    return [{"video_id": it["id"], "decision": it["gt_decision"], "reviewer": GT_REVIEWER, "decided_at": when,
             "note": it.get("gt_note") or ""} for it in items if it.get("gt_decision") in DECISIONS]


# --- contact sheet -------------------------------------------------------------------------------------


def _thumbnail(frame: np.ndarray, out: Path, size: int = 160) -> str:
    """Write a JPEG thumbnail (longer side ``size``; small frames are enlarged pixel by pixel); its file name."""
    import cv2

    h, w = frame.shape[:2]
    scale = size / max(h, w)
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST
    img = cv2.resize(frame, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=interp)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    return f"{out.parent.name}/{out.name}"


CARDS_PER_PAGE = 200


def write_contact_sheet(path: Path, rows: list[dict], media_root: Path, image_root: Path) -> Path:
    """Static HTML pages for reviewers: per video its conditioning image, first/middle/last frames (JPEG
    thumbnails in ``thumbs/`` beside the page), event text, category, id, current decision and a <video>
    element (relative link). ``CARDS_PER_PAGE`` cards a page (contact_sheet.html, contact_sheet_002.html, ...),
    so 10k videos stay browsable. Returns the first page."""
    import html

    import cv2

    from yume.datasets.sekai import probe_video, read_frames

    path = Path(path)
    thumbs_dir = path.parent / "thumbs"
    cards = []
    for r in rows:
        rid = html.escape(r["id"])
        if r["status"] == "ok" and r.get("video_uri"):
            video = Path(media_root) / r["video_uri"]
            try:
                n = probe_video(video)[0]
                frames = read_frames(video, sorted({0, n // 2, n - 1}))
                srcs = [_thumbnail(f, thumbs_dir / f"{r['id']}_{k}.jpg") for k, f in enumerate(frames)]
                thumbs = "".join(f'<img src="{src}" title="frame">' for src in srcs)
            except Exception as e:  # noqa: BLE001 - a sheet is still useful without thumbnails
                thumbs = f"<i>cannot read video: {html.escape(str(e))}</i>"
            rel = Path(os.path.relpath(Path(video).resolve(), path.parent.resolve())).as_posix()
            thumbs += f'<br><video src="{html.escape(rel)}" controls loop muted width="240"></video>'
        else:
            thumbs = f"<b>generation failed:</b> {html.escape(r.get('error') or '')}"
        try:  # resolve_uri: a row quarantined for path_escape never has its outside file read into the sheet
            img = cv2.cvtColor(cv2.imread(str(resolve_uri(image_root, r["image_uri"]))), cv2.COLOR_BGR2RGB)
            src = _thumbnail(img, thumbs_dir / f"{r['id']}_image.jpg")
            image = f'<img src="{src}" title="conditioning image">'
        except Exception:  # noqa: BLE001
            image = "<i>image unreadable</i>"
        decision = r.get("decision") or "-"
        cards.append(
            f'<div class="card {html.escape(decision)}"><div class="id">{rid}</div>'
            f'<div><b>{html.escape(r["category"])}</b> | decision: <b>{html.escape(decision)}</b>'
            f'{" by " + html.escape(r["reviewer"]) if r.get("reviewer") else ""}</div>'
            f'<p>{html.escape(r["event_text"])}</p><div>{image} &rarr; {thumbs}</div></div>'
        )
    pages = [cards[i : i + CARDS_PER_PAGE] for i in range(0, len(cards), CARDS_PER_PAGE)] or [[]]
    names = [path.name if i == 0 else f"{path.stem}_{i + 1:03d}{path.suffix}" for i in range(len(pages))]
    nav = " ".join(f'<a href="{n}">{i + 1}</a>' for i, n in enumerate(names)) if len(pages) > 1 else ""
    for name, page_cards in zip(names, pages):
        page = (
            "<!doctype html><html><head><meta charset='utf-8'><title>Event videos: screening</title><style>"
            "body{font-family:sans-serif;margin:1em}.card{border:1px solid #ccc;margin:.5em;padding:.5em}"
            ".accept{border-left:6px solid #2a2}.reject{border-left:6px solid #c22}.pending{border-left:6px solid #999}"
            "img{margin:2px;vertical-align:middle}.id{font-family:monospace;color:#555}</style>"
            f"</head><body><h1>Event videos: screening ({len(cards)})</h1><p>Fill <code>decisions.csv</code> "
            f"(columns {', '.join(DECISION_COLUMNS)}; decision accept or reject) next to this page and re-run "
            "<code>yume flow synthesize_events</code>. Only accepted videos go on.</p>"
            f"<p>{nav}</p>" + "".join(page_cards) + f"<p>{nav}</p></body></html>"
        )
        out = path.parent / name
        tmp = out.with_name(f".tmp-{out.name}")
        tmp.write_text(page, encoding="utf-8")
        tmp.replace(out)
    return path


def event_row(item: dict, result: dict, decision: dict | None, common: dict) -> dict:
    ok = result["status"] == "ok"
    decided = decision if ok else None
    return {
        **common,
        "id": item["id"], "source_uri": item["image_uri"], "content_hash": item["content_hash"],
        "status": result["status"], "error": result.get("error"),
        "item_key": item["key"], "category": item["category"], "event_text": item["prompt"],
        "image_uri": item["image_uri"], "seed": item["seed"],
        "video_uri": item["video_uri"] if ok else None, "video_sha256": result.get("video_sha256"),
        "num_frames": result.get("num_frames"), "height": result.get("height"), "width": result.get("width"),
        "fps": result.get("fps"),
        "decision": (decided or {}).get("decision") or ("pending" if ok else None),
        "reviewer": (decided or {}).get("reviewer"), "decided_at": (decided or {}).get("decided_at"),
        "review_note": (decided or {}).get("note"),
    }


def decision_fingerprint(decision: dict | None) -> str:
    return json.dumps(decision, sort_keys=True)

