"""Scripted camera trajectories with real-like jitter and drift, and their ground-truth actions.

The camera walks through a sequence of scripted segments, each holding one (keys, mouse) label. Motion
follows an FPS-style body: yaw about the world's vertical axis, pitch about the camera's x axis,
translation in the heading frame. Imperfections calibrated on Sekai (REFERENCE.md section 1), all
scaled by ``jitter_scale`` (1.0 = the real figures; the hidden checks use 0 to 1.5):

- per-frame translation noise on each camera axis, ``translation_jitter x step`` std;
- per-frame rotation noise on each axis, ``rotation_jitter`` rad std;
- slow lateral drift on pure forward/back segments (and forward drift on pure strafes), up to
  ``drift_max x step`` — the reason the public rule rarely sees a pure W;
- speed ramps between segments over ``ramp_frames``; the ground-truth label switches at the boundary.

Coordinates: OpenCV camera convention (x right, y down, z forward), c2w matrices, world y is down.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.ndimage import uniform_filter1d

from yume.tasks.action_text import KEY_LABELS, MOUSE_LABELS, SIGNS_BY_KEYS, SIGNS_BY_MOUSE


class TrajectoryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    step: float = Field(0.0025, gt=0, description="walking step per frame (Sekai's normalised units)")
    speed_range: tuple[float, float] = (0.7, 1.3)
    diagonal_ratio_range: tuple[float, float] = (0.6, 1.0)
    yaw_rate_range: tuple[float, float] = (0.004, 0.012)
    pitch_rate_range: tuple[float, float] = (0.003, 0.008)
    max_pitch: float = Field(0.45, gt=0, description="rad; pitch commands turn around beyond this")
    translation_jitter: float = Field(0.27, ge=0, description="per-axis std as a fraction of step")
    rotation_jitter: float = Field(4e-4, ge=0, description="per-axis std, rad/frame")
    drift_max: float = Field(0.15, ge=0, description="max lateral/forward drift ratio on pure segments")
    jitter_scale: float = Field(1.0, ge=0, description="scales jitter and drift; 1.0 = real-like")
    segment_frames: tuple[int, int] = (45, 120)
    ramp_frames: int = Field(5, ge=1)


@dataclass(frozen=True)
class ScriptSegment:
    start: int  # first transition
    end: int  # exclusive
    keys: str
    mouse: str


@dataclass(frozen=True)
class Trajectory:
    c2w: np.ndarray  # (N, 4, 4) float64
    keys: np.ndarray  # (N-1,) ground-truth key label per transition
    mouse: np.ndarray  # (N-1,) ground-truth mouse label per transition
    script: list[ScriptSegment]


def random_script(n_transitions: int, rng: np.random.Generator, cfg: TrajectoryConfig) -> list[ScriptSegment]:
    """Random segments covering ``n_transitions``; keys and mouse drawn uniformly from all 9 labels."""
    lo, hi = cfg.segment_frames
    script, start = [], 0
    while start < n_transitions:
        end = min(n_transitions, start + int(rng.integers(lo, hi + 1)))
        if n_transitions - end < lo:  # don't leave a stub shorter than a segment
            end = n_transitions
        keys = KEY_LABELS[int(rng.integers(len(KEY_LABELS)))]
        mouse = MOUSE_LABELS[int(rng.integers(len(MOUSE_LABELS)))]
        script.append(ScriptSegment(start, end, keys, mouse))
        start = end
    return script


def _rot_x(a: np.ndarray) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([o, z, z], -1), np.stack([z, c, -s], -1), np.stack([z, s, c], -1)], -2)


def _rot_y(a: np.ndarray) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([c, z, s], -1), np.stack([z, o, z], -1), np.stack([-s, z, c], -1)], -2)


def _rot_z(a: np.ndarray) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)], -2)


def _slow_wave(n: int, rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """A smooth random signal in [-amplitude, amplitude] (sum of two slow sinusoids)."""
    t = np.arange(n)
    periods = rng.uniform(60, 240, size=2)
    phases = rng.uniform(0, 2 * np.pi, size=2)
    wave = 0.6 * np.sin(2 * np.pi * t / periods[0] + phases[0]) + 0.4 * np.sin(2 * np.pi * t / periods[1] + phases[1])
    return amplitude * wave


def _commands(script: list[ScriptSegment], n: int, rng: np.random.Generator, cfg: TrajectoryConfig):
    """Per-transition commanded camera-frame velocity (lateral, forward) and rates (pitch, yaw)."""
    lat, fwd, pitch_rate, yaw_rate = (np.zeros(n) for _ in range(4))
    drift = _slow_wave(n, rng, cfg.drift_max * cfg.jitter_scale)
    for seg in script:
        sl = slice(seg.start, seg.end)
        f, l = SIGNS_BY_KEYS[seg.keys]
        p, y = SIGNS_BY_MOUSE[seg.mouse]
        speed = cfg.step * rng.uniform(*cfg.speed_range)
        if f and l:
            ratio = rng.uniform(*cfg.diagonal_ratio_range)  # lateral/forward
            fwd[sl], lat[sl] = f * speed, l * speed * ratio
        elif f:
            fwd[sl], lat[sl] = f * speed, speed * drift[sl]
        elif l:
            lat[sl], fwd[sl] = l * speed, speed * drift[sl]
        pitch_rate[sl] = p * rng.uniform(*cfg.pitch_rate_range)
        yaw_rate[sl] = y * rng.uniform(*cfg.yaw_rate_range)
    smooth = [uniform_filter1d(x, cfg.ramp_frames, mode="nearest") for x in (lat, fwd, pitch_rate, yaw_rate)]
    return smooth


def _flip_pitch_segments(script: list[ScriptSegment], rates: np.ndarray, cfg: TrajectoryConfig) -> list[ScriptSegment]:
    """Reverse tilt commands that would push the pitch past the limit (loop over segments, not frames)."""
    out, pitch = [], 0.0
    flip = {"↑": "↓", "↓": "↑"}
    for seg in script:
        total = float(rates[seg.start : seg.end].sum())
        if abs(pitch + total) > cfg.max_pitch:
            # Tilt the other way; if even that overshoots, slow the tilt to end at the opposite limit.
            target = -total if abs(pitch - total) <= cfg.max_pitch else -np.sign(total) * cfg.max_pitch - pitch
            rates[seg.start : seg.end] *= target / total
            total = target
            seg = ScriptSegment(seg.start, seg.end, seg.keys, "".join(flip.get(c, c) for c in seg.mouse))
        pitch += total
        out.append(seg)
    return out


def scripted_trajectory(
    n_frames: int,
    rng: np.random.Generator,
    cfg: TrajectoryConfig | None = None,
    script: list[ScriptSegment] | None = None,
) -> Trajectory:
    """Build a c2w trajectory following ``script`` (random if None) with jitter and drift."""
    cfg = cfg or TrajectoryConfig()
    n = n_frames - 1
    script = script or random_script(n, rng, cfg)
    lat, fwd, pitch_rate, yaw_rate = _commands(script, n, rng, cfg)
    # Pitch flips are decided on un-ramped segment totals so that labels and motion agree.
    script = _flip_pitch_segments(script, pitch_rate, cfg)

    js = cfg.jitter_scale
    rot_noise = rng.normal(0.0, cfg.rotation_jitter * js, size=(n, 3))
    pitch = np.cumsum(np.r_[0.0, pitch_rate + rot_noise[:, 0]])
    yaw = np.cumsum(np.r_[0.0, yaw_rate + rot_noise[:, 1]])
    # Roll jitter is mean-reverting (a walker keeps the horizon level).
    roll = np.r_[0.0, uniform_filter1d(np.cumsum(rot_noise[:, 2]), 31, mode="nearest")]
    roll = roll - uniform_filter1d(roll, 91, mode="nearest")
    rot = _rot_y(yaw) @ _rot_x(pitch) @ _rot_z(roll)

    # Translation in the heading (yaw-only) frame, jitter on the camera axes.
    t_noise = rng.normal(0.0, cfg.translation_jitter * cfg.step * js, size=(n, 3))
    bob = 0.1 * cfg.step * np.sin(np.arange(n) * 2 * np.pi / 18.0)  # vertical head bob, ignored by labels
    body = np.stack([lat, bob, fwd], -1)
    disp = np.einsum("nij,nj->ni", _rot_y(yaw[:-1]), body) + np.einsum("nij,nj->ni", rot[:-1], t_noise)
    pos = np.cumsum(np.r_[np.zeros((1, 3)), disp], axis=0)

    c2w = np.tile(np.eye(4), (n_frames, 1, 1))
    c2w[:, :3, :3] = rot
    c2w[:, :3, 3] = pos
    keys = np.empty(n, dtype=object)
    mouse = np.empty(n, dtype=object)
    for seg in script:
        keys[seg.start : seg.end] = seg.keys
        mouse[seg.start : seg.end] = seg.mouse
    return Trajectory(c2w=c2w, keys=keys, mouse=mouse, script=script)
