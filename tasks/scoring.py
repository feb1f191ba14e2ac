"""Video scoring interface, versioned normalisation policies, composite score and top-k selection.

A scorer returns *raw* per-dimension scores; a `NormalisationPolicy` (versioned, recorded next to every
score) turns them into one composite number. Policies belong to one scorer family: VBench's leaderboard
ranges mean nothing for the lite scorer, so each policy names its dimensions and `composite_score`
refuses raw scores that miss any of them (it never mixes families silently).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator


@runtime_checkable
class VideoScorer(Protocol):
    """Scores one video. Implementations load their models once, in __init__ (long-lived Ray actor)."""

    name: str
    is_vbench: bool
    dimensions: tuple[str, ...]

    def score(self, frames: np.ndarray) -> dict[str, float]:
        """frames: uint8 (T, H, W, 3) RGB -> raw score per dimension (keys == self.dimensions)."""
        ...


class NormalisationPolicy(BaseModel):
    """How raw per-dimension scores become one composite in [0, 1] (for in-range inputs).

    For each dimension: x' = (x * prescale[d] - min[d]) / (max[d] - min[d]), clipped to [0, 1];
    the composite is sum(w[d] * x'[d]) / sum(w[d]).
    """

    model_config = ConfigDict(frozen=True)

    name: str
    version: str
    is_vbench: bool
    ranges: dict[str, tuple[float, float]]
    weights: dict[str, float]
    prescale: dict[str, float] = {}
    note: str = ""

    @model_validator(mode="after")
    def _check(self) -> "NormalisationPolicy":
        if set(self.ranges) != set(self.weights):
            raise ValueError("ranges and weights must name the same dimensions")
        if not set(self.prescale) <= set(self.ranges):
            raise ValueError("prescale names a dimension that has no range")
        for dim, (lo, hi) in self.ranges.items():
            if not hi > lo:
                raise ValueError(f"{dim}: max must exceed min")
        if any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ValueError("weights must be >= 0 with a positive sum")
        return self

    @property
    def tag(self) -> str:
        """What to store beside a composite score, e.g. 'vbench-leaderboard@1'."""
        return f"{self.name}@{self.version}"

    def normalise(self, raw: dict[str, float]) -> dict[str, float]:
        """Per-dimension scores mapped to [0, 1] under this policy."""
        missing = [d for d in self.ranges if d not in raw]
        if missing:
            raise KeyError(f"policy {self.tag} needs dimensions {missing}; got {sorted(raw)}")
        out = {}
        for dim, (lo, hi) in self.ranges.items():
            x = float(raw[dim]) * self.prescale.get(dim, 1.0)
            if not math.isfinite(x):
                raise ValueError(f"{dim} is not finite: {raw[dim]!r}")
            out[dim] = min(1.0, max(0.0, (x - lo) / (hi - lo)))
        return out


# VBench leaderboard normalisation (REFERENCE section 8). Only meaningful for VBench's own scorers.
VBENCH_POLICY_V1 = NormalisationPolicy(
    name="vbench-leaderboard",
    version="1",
    is_vbench=True,
    ranges={
        "subject_consistency": (0.1462, 1.0),
        "background_consistency": (0.2615, 1.0),
        "motion_smoothness": (0.706, 0.9975),
        "dynamic_degree": (0.0, 1.0),
        "aesthetic_quality": (0.0, 1.0),
        "imaging_quality": (0.0, 1.0),
    },
    weights={
        "subject_consistency": 1.0,
        "background_consistency": 1.0,
        "motion_smoothness": 1.0,
        "dynamic_degree": 0.5,
        "aesthetic_quality": 1.0,
        "imaging_quality": 1.0,
    },
    prescale={"imaging_quality": 0.01},  # MUSIQ is 0-100
    note="VBench leaderboard: imaging/100, min-max per dimension, dynamic degree weight 0.5, weighted mean.",
)

# Lite scorer (tasks/scoring_lite.py). Every lite raw score is already in [0, 1] with 1 = good, so the
# ranges are the identity; the weights are ours: flow smoothness and flicker matter most for a world
# model's training data, frozen frames are heavily weighted because a stalled clip teaches "no motion".
LITE_POLICY_V1 = NormalisationPolicy(
    name="lite",
    version="1",
    is_vbench=False,
    ranges={
        "lite_subject_consistency": (0.0, 1.0),
        "lite_background_consistency": (0.0, 1.0),
        "lite_motion_smoothness": (0.0, 1.0),
        "lite_temporal_flicker": (0.0, 1.0),
        "lite_sharpness": (0.0, 1.0),
        "lite_noise": (0.0, 1.0),
        "lite_exposure": (0.0, 1.0),
        "lite_not_frozen": (0.0, 1.0),
    },
    weights={
        "lite_subject_consistency": 1.0,
        "lite_background_consistency": 1.0,
        "lite_motion_smoothness": 1.0,
        "lite_temporal_flicker": 1.0,
        "lite_sharpness": 1.0,
        "lite_noise": 1.0,
        "lite_exposure": 0.5,
        "lite_not_frozen": 1.5,
    },
    note="NOT VBench. Offline OpenCV heuristics, each in [0,1] with 1 = good; weighted mean.",
)

POLICIES = {p.tag: p for p in (VBENCH_POLICY_V1, LITE_POLICY_V1)}


def composite_score(raw: dict[str, float], policy: NormalisationPolicy) -> float:
    """Weighted mean of the policy-normalised dimensions (extra raw keys are ignored)."""
    norm = policy.normalise(raw)
    total = sum(policy.weights.values())
    return sum(policy.weights[d] * norm[d] for d in norm) / total


def select_top(
    scores: dict[str, float], k: int | None = None, fraction: float | None = None
) -> list[str]:
    """Ids of the best `k` (or best `fraction`, rounded up) by score, best first.

    Ties are broken by id (ascending) so the selection never depends on dict order. NaN scores rank last.
    Exactly one of k and fraction must be given.
    """
    if (k is None) == (fraction is None):
        raise ValueError("give exactly one of k or fraction")
    if fraction is not None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError("fraction must be in [0, 1]")
        k = math.ceil(fraction * len(scores))
    if k < 0:
        raise ValueError("k must be >= 0")

    def key(item: tuple[str, float]):
        vid, s = item
        bad = s is None or not math.isfinite(s)
        return (bad, 0.0 if bad else -s, vid)

    return [vid for vid, _ in sorted(scores.items(), key=key)[:k]]


def score_histogram_png(
    scores: dict[str, float] | list[float],
    path: str | Path,
    title: str = "composite score",
    threshold: float | None = None,
    bins: int = 30,
) -> Path:
    """Histogram of scores written as PNG (Agg backend, no display needed); optional cut-off line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.asarray(list(scores.values()) if isinstance(scores, dict) else scores, dtype=float)
    values = values[np.isfinite(values)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(values, bins=bins, color="#4477aa", edgecolor="white")
    if threshold is not None:
        ax.axvline(threshold, color="#cc3311", linestyle="--", label=f"cut-off {threshold:.3f}")
        ax.legend()
    ax.set_xlabel(title)
    ax.set_ylabel("videos")
    ax.set_title(f"{title} (n={len(values)})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
