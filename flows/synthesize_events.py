"""Flow `synthesize_events`: first-person images + event texts -> Wan I2V videos -> human screening (manifests/events).

Steps (`yume.tasks.synthesize_events`, `yume.tasks.synthesis`): read the prompts table (``prompts_table``; on
`tiny` one built from the procedural worlds under <workdir>/data/events), render each (image, event) with
diffusers' `WanImageToVideoPipeline` in a Ray actor pool (Wan2.2-TI2V-style checkpoints: ``expand_timesteps``,
no image encoder), write H.264 mp4 at ``fps`` under <workdir>/data/events/videos/, then screening: the
decisions file (``decisions``, default <workdir>/review/events/decisions.csv) is read and every ok row gets
``decision`` accept / reject / pending with reviewer and time; a contact sheet (contact_sheet.html) and a
template of the undecided ids (decisions_template.csv) are written next to it. Re-running after reviewers
fill the file reuses every video and only rewrites the rows. One Prefect task per shard; its cache key covers
the generation inputs and the decisions of its items.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.artifacts import create_markdown_artifact

from yume.config import load_profile, stage_hash
from yume.datasets.manifest import (PathEscapeError, file_sha256, read_manifest, read_marker, recordable_uri, resolve_uri,
                                   write_shard)
from yume.datasets.manifest_kinds import EVENTS
from yume.flows.reporting import write_metrics
from yume.flows.stage_utils import quarantine_reasons, remove_stale_shards, run_shards, shard_cache_key, split_shards
from yume.flows.synthesize_t2v import scheduler_name
from yume.tasks.ray_pool import ActorPool
from yume.tasks.synthesis import PIPELINES, WanWorker, generate_missing, generation_key, item_seed
from yume.tasks.synthesize_events import (
    DECISION_COLUMNS,
    build_procedural_prompts,
    content_hash,
    decision_fingerprint,
    derive_decisions,
    event_item_id,
    event_row,
    read_decisions,
    read_prompts_table,
    write_contact_sheet,
    write_decisions,
)
from yume.workdir_lock import locks_workdir

log = logging.getLogger(__name__)
STAGE = "synthesize_events"
CONFIG_SECTIONS = ("synthesize_events",)



@task(name="synthesize-events-shard", persist_result=False, cache_policy=NO_CACHE)  # its completion marker is the record
def synthesize_events_shard(shard: str, items: list[dict], decisions: dict, manifest_dir: str, pool: ActorPool,
                            common: dict, cache_key: str) -> dict:
    """Render one shard's event videos (reusing finished ones), attach decisions, write the shard."""
    marker = read_marker(Path(manifest_dir), shard)
    if marker is not None and marker.get("cache_key") == cache_key:
        return {**marker, "resumed": True}
    results, generated = generate_missing(items, pool)
    rows = [event_row(it, results[it["id"]], decisions.get(it["id"]), common) for it in items]
    return write_shard(Path(manifest_dir), shard, rows, EVENTS,
                       extra={"cache_key": cache_key, "generated": generated, "reused": len(items) - generated})


@flow(name="synthesize_events")
@locks_workdir
def synthesize_events(profile: str = "tiny", workdir: str | None = None, overrides: list[str] | None = None) -> dict:
    """Render event videos with Wan I2V on Ray actors, apply reviewers' decisions, write manifests/events."""
    from yume.tasks.tiny_models import model_fingerprint, resolve_model

    started = time.perf_counter()
    cfg = load_profile(profile, workdir, overrides or [])
    s = cfg.synthesize_events
    media = cfg.media_root()
    if s.prompts_table:
        table_path = Path(s.prompts_table).expanduser().resolve()
    else:
        table_path = build_procedural_prompts(cfg.sekai_root(), media / "events", s.num_items, s.categories)
    image_root = table_path.parent
    prompts, invalid = read_prompts_table(table_path, s.categories)

    model_path = resolve_model(s.model, cfg.workdir_path, "synthesize_events.model")
    model_fp = model_fingerprint(model_path)
    model_id = s.model_id or (s.model if s.model.startswith("tiny:") else model_path.name)
    sampler = s.sampler.model_dump(mode="json")
    items = []
    for p in prompts:
        try:  # the same data-root guard as Sekai rows: an absolute or ../ path quarantines its row, unread
            image_path, escape = resolve_uri(image_root, p["image"]), None
        except PathEscapeError as e:
            image_path, escape = None, f"path_escape: {e}"
        rid = event_item_id(p["image"], p["key"])
        image_sha = file_sha256(image_path) if image_path is not None and image_path.is_file() else "missing"
        seed = item_seed(s.seed, p["key"])
        video_uri = f"events/videos/{rid}.mp4"
        items.append({
            "id": rid, "key": p["key"], "category": p["category"], "prompt": p["event"].strip(),
            "image_uri": recordable_uri(image_root, p["image"]) if escape else p["image"],
            "image_path": None if image_path is None else str(image_path), "seed": seed,
            "quarantine": escape,
            "content_hash": content_hash(image_path, p["event"]), "video_uri": video_uri,
            "out_path": str(media / video_uri), "gt_decision": p.get("gt_decision"), "gt_note": p.get("gt_note"),
            "generation_key": generation_key(model_fp, sampler, p["event"].strip(), seed, s.fps, s.crf, image_sha),
        })
    items.sort(key=lambda it: it["id"])

    review_dir = cfg.workdir_path / "review" / "events"
    decisions_path = Path(s.decisions).expanduser().resolve() if s.decisions else review_dir / "decisions.csv"
    derived = False
    if s.derive_decisions and not decisions_path.is_file():
        write_decisions(decisions_path, derive_decisions(items))
        derived = True
    decisions, problems = (read_decisions(decisions_path, {it["id"] for it in items})
                           if decisions_path.is_file() else ({}, []))
    for p in problems:
        log.warning("decisions file %s: %s", decisions_path, p)

    config_hash = stage_hash(cfg, *CONFIG_SECTIONS)
    common = {"stage": STAGE, "stage_version": s.stage_version, "config_hash": config_hash, "model_id": model_id,
              "pipeline": PIPELINES["i2v"],
              "sampler": json.dumps({**sampler, "scheduler": scheduler_name(model_path), "fps": s.fps, "crf": s.crf,
                                     "torch_dtype": s.torch_dtype}, sort_keys=True)}
    manifest_dir = cfg.workdir_path / "manifests" / "events"
    shards = split_shards(items, s.shard_size)
    remove_stale_shards(manifest_dir, set(shards))
    keys = {name: shard_cache_key(STAGE, s.stage_version, config_hash, manifest_dir,
                                  [model_fp, str(media)] + [[it["generation_key"], it["id"], it["content_hash"],
                                                             decision_fingerprint(decisions.get(it["id"]))]
                                                            for it in its])
            for name, its in shards.items()}
    pool = ActorPool(WanWorker, "i2v", str(model_path), sampler, s.torch_dtype, s.resources.num_gpus, s.fps, s.crf,
                     resources=s.resources, ray_config=cfg.ray)
    with pool:
        markers, hits = run_shards(
            STAGE, synthesize_events_shard, shards, keys, manifest_dir, cfg,
            lambda task_fn, name, its, key: task_fn(
                name, its, {it["id"]: decisions[it["id"]] for it in its if it["id"] in decisions},
                str(manifest_dir), pool, common, key),
        )

    rows = read_manifest(manifest_dir, EVENTS).to_pylist() if shards else []
    sheet = write_contact_sheet(review_dir / "contact_sheet.html", rows, media, image_root)
    pending = [r for r in rows if r["decision"] == "pending"]
    write_decisions(review_dir / "decisions_template.csv",
                    [{"video_id": r["id"], "decision": "", "reviewer": "", "decided_at": "", "note": r["event_text"]}
                     for r in pending])
    status = Counter(r["status"] for r in rows)
    decision_counts = Counter(r["decision"] for r in rows if r["status"] == "ok")
    by_category = {c: dict(Counter(r["decision"] for r in rows if r["category"] == c and r["status"] == "ok"))
                   for c in s.categories}
    create_markdown_artifact(
        key="synthesize-events-screening",
        markdown=(f"## Event videos: screening\n\n{status.get('ok', 0)} videos, {status.get('quarantined', 0)} "
                  f"quarantined. Decisions: {dict(decision_counts)}.\n\nContact sheet: `{sheet}`  \n"
                  f"Decisions file: `{decisions_path}` (columns {', '.join(DECISION_COLUMNS)})"
                  + (" - derived from the procedural ground truth" if derived else "")
                  + f"\n\n{len(pending)} undecided: see `{review_dir / 'decisions_template.csv'}`, then re-run.\n"),
        description="synthesize_events: human screening",
    )
    elapsed = time.perf_counter() - started
    metrics = {
        "stage": STAGE, "prompts_table": str(table_path), "items": len(items), "invalid_prompt_rows": len(invalid),
        "shards": len(shards), "shards_cached": hits,
        "generated": sum(m.get("generated", 0) for m in markers if not m["cached"]),
        "videos_ok": status.get("ok", 0), "rows_quarantined": status.get("quarantined", 0),
        "quarantine_reasons": quarantine_reasons([r["error"] for r in rows]),
        "accepted": decision_counts.get("accept", 0), "rejected": decision_counts.get("reject", 0),
        "pending": decision_counts.get("pending", 0), "decisions_file": str(decisions_path),
        "decisions_derived_from_ground_truth": derived, "decision_problems": len(problems),
        "by_category": by_category, "contact_sheet": str(sheet), "model_id": model_id,
        "wall_seconds": round(elapsed, 2), "manifest": str(manifest_dir), "config_hash": config_hash,
    }
    write_metrics(cfg, STAGE, metrics)
    return {k: v for k, v in metrics.items() if not isinstance(v, dict)}
