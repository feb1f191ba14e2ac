"""Parent flow `retrain`: every stage flow in dependency order (DESIGN.md, "The DAG").

Stages that exist so far: curate_real, recaption, synthesize_t2v, synthesize_events, score_and_filter.
Later stages append themselves to ``STAGES``; each is a
subflow that reads upstream manifests from the work directory, so any stage can also be re-run alone.
`yume demo` runs this flow on the `tiny` profile.
"""

from __future__ import annotations

import time

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from yume.config import config_hash, load_profile, record_config
from yume.flows.curate_real import curate_real
from yume.flows.recaption import recaption
from yume.flows.score_and_filter import score_and_filter
from yume.flows.synthesize_events import synthesize_events
from yume.flows.synthesize_t2v import synthesize_t2v

STAGES = [
    ("curate_real", curate_real),
    ("recaption", recaption),
    ("synthesize_t2v", synthesize_t2v),
    ("synthesize_events", synthesize_events),
    ("score_and_filter", score_and_filter),
]


@flow(name="retrain")
def retrain(profile: str = "tiny", workdir: str | None = None, overrides: list[str] | None = None) -> dict:
    started = time.perf_counter()
    cfg = load_profile(profile, workdir, overrides or [])
    record_config(cfg, cfg.workdir_path)
    results = {}
    for name, stage_flow in STAGES:
        t0 = time.perf_counter()
        results[name] = stage_flow(profile=profile, workdir=str(cfg.workdir_path), overrides=overrides or [])
        results[name]["stage_seconds"] = round(time.perf_counter() - t0, 2)
    lines = ["| stage | result |", "|---|---|"] + [
        f"| {name} | {', '.join(f'{k}={v}' for k, v in r.items() if not isinstance(v, (dict, list)))} |"
        for name, r in results.items()
    ]
    create_markdown_artifact(key="retrain-summary", markdown="\n".join(lines), description="retrain run summary")
    return {
        "profile": cfg.name,
        "workdir": str(cfg.workdir_path),
        "config_hash": config_hash(cfg),
        "stages": results,
        "wall_seconds": round(time.perf_counter() - started, 2),
    }
