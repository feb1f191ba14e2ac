"""What each stage needs from the stages before it, checked before it starts.

A stage whose upstream manifest is missing (or holds no complete shard), or whose upstream checkpoint does not
exist (distill and evaluate read train_foundation's / distill's final weights), fails with a message naming the
stage that makes it, instead of succeeding on nothing or failing deep inside the flow. The CLI runs the same
check before Prefect starts, so the error comes in a second and without a traceback; a deployment run gets it
from the flow (distill: from ``prepare_distill_run``, which every caller goes through).

Kept import-light (config and manifest helpers only): the CLI calls it for every `yume flow`.
"""

from __future__ import annotations

from pathlib import Path

from yume.config import ConfigError, Profile
from yume.datasets.manifest import completed_shards

PRODUCER = {"real": "curate_real", "captions": "recaption", "synthetic": "synthesize_t2v",
            "events": "synthesize_events", "scores": "score_and_filter", "train": "build_training_set"}
CURATED = ("real", "synthetic", "events")


class MissingUpstreamError(ConfigError):
    """A stage's input manifest does not exist yet."""


def upstream_manifests(stage: str, cfg: Profile) -> list[str]:
    """The manifest kinds ``stage`` reads under this profile (distill and evaluate read checkpoints instead)."""
    if stage == "train_foundation":
        return ["train"]
    if stage == "recaption":
        return ["real"]
    if stage == "score_and_filter":
        return list(cfg.score_and_filter.sources)
    if stage == "build_training_set":
        ts = cfg.training_set
        curated = [k for k in CURATED if k in ts.sources and (ts.sources[k].i2v > 0 or ts.sources[k].t2v > 0)]
        return curated + (["scores"] if curated and ts.use_scores else [])
    return []


def foundation_weights(cfg: Profile) -> Path:
    """The foundation checkpoint distill starts from: ``distill.foundation`` (relative to the work directory),
    else train_foundation's ``checkpoints/foundation/final``."""
    named = cfg.distill.foundation
    p = Path(named).expanduser() if named else cfg.workdir_path / "checkpoints" / "foundation" / "final"
    return p if p.is_absolute() else cfg.workdir_path / p


def require_checkpoints(stage: str, cfg: Profile) -> None:
    """Raise MissingUpstreamError when distill has no foundation to start from, or evaluate no candidate."""
    ck = cfg.workdir_path / "checkpoints"
    if stage == "distill" and not (foundation := foundation_weights(cfg)).exists():
        raise MissingUpstreamError(
            f"distill starts from the foundation weights {foundation}, which do not exist: run "
            f"`yume flow train_foundation` first (or set distill.foundation), or `yume demo` for the whole DAG.")
    if stage == "evaluate" and not any((ck / d / "final").exists() for d in ("foundation", "distill")):
        raise MissingUpstreamError(
            f"evaluate scores {ck}/foundation/final and {ck}/distill/final, and neither exists: run "
            f"`yume flow train_foundation` (then `yume flow distill`) first, or `yume demo` for the whole DAG.")


def require_upstream(stage: str, cfg: Profile) -> None:
    """Raise MissingUpstreamError naming the producing stage of every missing input manifest or checkpoint."""
    require_checkpoints(stage, cfg)
    root = cfg.workdir_path / "manifests"
    missing = [k for k in upstream_manifests(stage, cfg) if not (root / k).is_dir() or not completed_shards(root / k)]
    if missing:
        makers = sorted({PRODUCER[k] for k in missing}, key=list(PRODUCER.values()).index)  # DAG order
        raise MissingUpstreamError(
            f"{stage} reads manifests/{', manifests/'.join(missing)}, which {cfg.workdir_path} does not have: run "
            f"`yume flow {makers[0]}` first (made by: {', '.join(makers)}), or `yume demo` for the whole DAG.")
