"""What every stage leaves behind: DIR/reports/<stage>/{metrics.json, config.resolved.json}."""

from __future__ import annotations

import json
import os
from pathlib import Path

from yume.config import Profile, record_config


def stage_report_dir(profile: Profile, stage: str) -> Path:
    d = profile.workdir_path / "reports" / stage
    d.mkdir(parents=True, exist_ok=True)
    return d


def write_metrics(profile: Profile, stage: str, metrics: dict) -> Path:
    """Atomically write the stage's figures, next to the resolved config it ran with."""
    d = stage_report_dir(profile, stage)
    record_config(profile, d)
    path = d / "metrics.json"
    tmp = d / f".metrics.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(metrics, indent=1, ensure_ascii=False, sort_keys=True))
    tmp.replace(path)
    return path
