"""Camera trajectory -> keyboard and mouse action labels (REFERENCE.md section 2).

Input: per-frame 4x4 camera-to-world matrices, OpenCV convention (x right, y down, z forward).
Output: one label per transition (frame i -> i+1) in frames of the input array, whatever the stride,
and segments = maximal runs of one (keys, mouse) label of at least ``min_segment_frames`` transitions.
A segment ``[start, end)`` covers the transitions ``start .. end-1``.

Two modes:
- ``yume``: the public rule, exactly. Per pair ``T_rel = inv(T_i) @ T_{i+1}`` (of ``c2w[::stride]``),
  keys from the signs of ``t_z`` / ``t_x`` against ``1e-4 * stride``, mouse from the extrinsic-xyz Euler
  angles of ``R_rel`` (yaw = angle[1], pitch = angle[0]) against ``1e-3 * stride``. With stride K each
  strided label is repeated over its K input transitions; trailing transitions that no full stride covers
  take the last strided label.
- ``robust`` (default): per-frame motion in the camera frame, smoothed over a centred window; speed
  threshold relative to the clip's own walking speed (so per-video normalisation does not matter); a
  lateral/forward ratio dead-zone so pure W/S/A/D exist; rotation thresholds raised above the clip's
  measured jitter; hysteresis on every axis; runs shorter than ``min_run_frames`` merged into the
  preceding run.

Everything is vectorised over frames with numpy (no per-frame Python loop).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.ndimage import uniform_filter1d

from yume.tasks.action_text import KEYS_BY_SIGNS, MOUSE_BY_SIGNS, action_sentence

Mode = Literal["robust", "yume"]


class RobustActionConfig(BaseModel):
    """Parameters of the robust rule, tuned for jitter up to 1.5x the figures measured on Sekai."""

    model_config = ConfigDict(extra="forbid")

    smooth_frames: int = Field(9, ge=1, description="centred moving-average window for translation (frames)")
    rotation_smooth_frames: int = Field(5, ge=1, description="centred moving-average window for rotation")
    speed_rel_threshold: float = Field(0.3, gt=0, lt=1, description="moving if speed > this x clip walking speed")
    speed_floor: float = Field(4e-4, ge=0, description="absolute speed floor (units/frame)")
    walking_speed_quantile: float = Field(0.8, gt=0, le=1, description="quantile of smoothed speed = walking speed")
    lateral_ratio: float = Field(0.4, gt=0, description="an axis is active if |it| > ratio x |other axis|")
    rotation_floor: float = Field(1.5e-3, gt=0, description="min yaw/pitch rate threshold (rad/frame)")
    rotation_jitter_sigmas: float = Field(6.0, ge=0, description="threshold >= this many sigmas of smoothed jitter")
    hysteresis: float = Field(0.7, gt=0, le=1, description="exit threshold = enter threshold x this")
    min_run_frames: int = Field(9, ge=1, description="shorter label runs are merged into the previous run")


class ActionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Mode = "robust"
    stride: int = Field(1, ge=1)
    min_segment_frames: int = Field(33, ge=1)
    vocabulary: Literal["yume15", "yume10", "paper"] = "yume15"
    robust: RobustActionConfig = RobustActionConfig()


class TrajectoryError(ValueError):
    """The camera trajectory cannot be converted (bad shape, NaN/inf, non-rigid pose)."""


@dataclass(frozen=True)
class Segment:
    start: int
    end: int  # exclusive
    keys: str
    mouse: str
    text: str
    speed: float  # mean |p_{i+1} - p_i| * fps, units/s
    distance: float  # path length, units
    turn_rate_deg: float  # mean angle between consecutive displacement vectors
    view_rotation_deg: float  # mean angle between consecutive forward axes


@dataclass(frozen=True)
class ActionLabels:
    keys: np.ndarray  # (N-1,) str labels, one per transition
    mouse: np.ndarray  # (N-1,) str labels
    segments: list[Segment]


# Labels are handled as packed codes 3 * (a + 1) + (b + 1) of a sign pair: keys (forward, lateral),
# mouse (pitch, yaw). These tables map a code back to its label string.
_KEY_FLAT = np.array([KEYS_BY_SIGNS[(a, b)] for a in (-1, 0, 1) for b in (-1, 0, 1)], dtype=object)
_MOUSE_FLAT = np.array([MOUSE_BY_SIGNS[(a, b)] for a in (-1, 0, 1) for b in (-1, 0, 1)], dtype=object)


def _pack(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return ((a + 1) * 3 + (b + 1)).astype(np.int8)


def validate_trajectory(c2w: np.ndarray, rigid_tol: float = 1e-3) -> np.ndarray:
    """Return ``c2w`` as float64 (N,4,4) or raise TrajectoryError saying what is wrong."""
    arr = np.asarray(c2w)
    if arr.ndim != 3 or arr.shape[1:] != (4, 4):
        raise TrajectoryError(f"expected camera-to-world array of shape (N,4,4), got {arr.shape}")
    if arr.shape[0] < 2:
        raise TrajectoryError(f"need at least 2 poses, got {arr.shape[0]}")
    if not np.issubdtype(arr.dtype, np.number):
        raise TrajectoryError(f"poses must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    bad = ~np.isfinite(arr.reshape(len(arr), 16)).all(axis=1)
    if bad.any():
        raise TrajectoryError(f"{int(bad.sum())} poses contain NaN or inf (first at frame {int(np.argmax(bad))})")
    if np.abs(arr[:, 3, :] - [0.0, 0.0, 0.0, 1.0]).max() > rigid_tol:
        raise TrajectoryError("last row of a pose is not [0, 0, 0, 1]")
    # R^T R = I and det R = +1, written out per element (batched 3x3 matmul/det are slow in numpy).
    col = [[arr[:, i, j] for i in range(3)] for j in range(3)]  # col[j][i] = R[:, i, j]

    def dot(a: int, b: int) -> np.ndarray:
        return col[a][0] * col[b][0] + col[a][1] * col[b][1] + col[a][2] * col[b][2]

    err = np.abs(dot(0, 0) - 1)
    for a, b, target in ((1, 1, 1), (2, 2, 1), (0, 1, 0), (0, 2, 0), (1, 2, 0)):
        np.maximum(err, np.abs(dot(a, b) - target), out=err)
    (x0, y0, z0), (x1, y1, z1), (x2, y2, z2) = col
    det = x0 * (y1 * z2 - z1 * y2) - y0 * (x1 * z2 - z1 * x2) + z0 * (x1 * y2 - y1 * x2)
    nonrigid = (err > rigid_tol) | (det < 0)
    if nonrigid.any():
        i = int(np.argmax(nonrigid))
        raise TrajectoryError(
            f"{int(nonrigid.sum())} poses are not rigid rotations (first at frame {i}: "
            f"max |R^T R - I| = {err[i]:.2e}, det = {det[i]:.3f})"
        )
    return arr


def relative_motion(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per transition: translation in camera i's frame (N-1,3), pitch = angle[0] and yaw = angle[1].

    Angles are the extrinsic-xyz Euler angles of ``R_rel = R_i^T R_{i+1}`` (scipy's ``as_euler("xyz")``);
    only the third row of R_rel is needed: angle[0] = atan2(R[2,1], R[2,2]), angle[1] = -asin(R[2,0]).
    """
    rot = c2w[:, :3, :3]
    step = c2w[1:, :3, 3] - c2w[:-1, :3, 3]
    t = np.einsum("nki,nk->ni", rot[:-1], step)
    row2 = np.einsum("nk,nkj->nj", rot[:-1, :, 2], rot[1:])  # third row of R_rel
    pitch = np.arctan2(row2[:, 1], row2[:, 2])
    yaw = -np.arcsin(np.clip(row2[:, 0], -1.0, 1.0))
    return t, pitch, yaw


def _sign(x: np.ndarray, threshold: float | np.ndarray) -> np.ndarray:
    return (x > threshold).astype(np.int8) - (x < -threshold).astype(np.int8)


def yume_rule(c2w: np.ndarray, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The public rule: packed key and mouse codes per input transition."""
    n = c2w.shape[0]
    sub = c2w[::stride]
    if sub.shape[0] < 2:
        raise TrajectoryError(f"{n} poses are too few for stride {stride}")
    t, pitch, yaw = relative_motion(sub)
    fwd, lat = _sign(t[:, 2], 1e-4 * stride), _sign(t[:, 0], 1e-4 * stride)
    pit, yw = _sign(pitch, 1e-3 * stride), _sign(yaw, 1e-3 * stride)
    # Repeat each strided label over its input transitions, then pad the tail with the last label.
    idx = np.minimum(np.arange(n - 1) // stride, len(t) - 1)
    return _pack(fwd, lat)[idx], _pack(pit, yw)[idx]


def hysteresis_sign(x: np.ndarray, enter: np.ndarray | float, leave: np.ndarray | float) -> np.ndarray:
    """Tri-state sign with hysteresis: +1 once x > enter, stays until x < leave; likewise for -1.

    Vectorised: frames that clearly decide a state get a mark, undecided frames take the last mark.
    """
    pos = np.where(x > enter, 1, np.where(x < leave, 0, -2))  # -2 = keep previous
    neg = np.where(x < -enter, 1, np.where(x > -leave, 0, -2))
    return _ffill(pos, default=0) - _ffill(neg, default=0)


def _ffill(marks: np.ndarray, default: int) -> np.ndarray:
    """Replace -2 entries with the previous decided value (``default`` before the first)."""
    decided = marks != -2
    idx = np.where(decided, np.arange(len(marks)), -1)
    np.maximum.accumulate(idx, out=idx)
    out = np.where(idx >= 0, marks[np.maximum(idx, 0)], default)
    return out.astype(np.int8)


def merge_short_runs(codes: np.ndarray, min_run: int) -> np.ndarray:
    """Give every run shorter than ``min_run`` the label of the preceding long run (the next one at the
    start), vectorised with run-length encoding."""
    n = len(codes)
    if n == 0 or min_run <= 1:
        return codes
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    lengths = np.diff(np.r_[starts, n])
    long_run = lengths >= min_run
    if not long_run.any():
        return codes
    # For each run, index of the last long run at or before it; runs before the first long run use it.
    run_idx = np.where(long_run, np.arange(len(starts)), -1)
    np.maximum.accumulate(run_idx, out=run_idx)
    run_idx[run_idx < 0] = np.flatnonzero(long_run)[0]
    return np.repeat(codes[starts[run_idx]], lengths)


def robust_rule(c2w: np.ndarray, cfg: RobustActionConfig) -> tuple[np.ndarray, np.ndarray]:
    """Our rule: smoothed, scale-free, jitter-aware and hysteretic. Returns packed codes like yume_rule."""
    t, pitch, yaw = relative_motion(c2w)
    w = min(cfg.smooth_frames, len(t))
    tx = uniform_filter1d(t[:, 0], w, mode="nearest")
    tz = uniform_filter1d(t[:, 2], w, mode="nearest")
    wr = min(cfg.rotation_smooth_frames, len(t))
    pitch_s = uniform_filter1d(pitch, wr, mode="nearest")
    yaw_s = uniform_filter1d(yaw, wr, mode="nearest")

    speed = np.hypot(tx, tz)
    walking = float(np.quantile(speed, cfg.walking_speed_quantile))
    speed_thr = max(cfg.speed_floor, cfg.speed_rel_threshold * walking)
    moving = hysteresis_sign(speed, speed_thr, speed_thr * cfg.hysteresis) > 0
    # Ratio dead-zone: an axis counts only if it dominates the other by `lateral_ratio`.
    eps = 1e-12
    fwd_strength = np.abs(tz) / (np.abs(tx) + eps)
    lat_strength = np.abs(tx) / (np.abs(tz) + eps)
    r, h = cfg.lateral_ratio, cfg.hysteresis
    fwd_on = hysteresis_sign(fwd_strength, r, r * h) > 0
    lat_on = hysteresis_sign(lat_strength, r, r * h) > 0
    fwd = np.where(moving & fwd_on, np.sign(tz), 0).astype(np.int8)
    lat = np.where(moving & lat_on, np.sign(tx), 0).astype(np.int8)

    # Rotation threshold above the smoothed jitter: sigma from the median absolute residual.
    def rot_threshold(raw: np.ndarray, smooth: np.ndarray) -> float:
        sigma = 1.4826 * float(np.median(np.abs(raw - smooth))) / np.sqrt(wr)
        return max(cfg.rotation_floor, cfg.rotation_jitter_sigmas * sigma)

    pt, yt = rot_threshold(pitch, pitch_s), rot_threshold(yaw, yaw_s)
    pit = hysteresis_sign(pitch_s, pt, pt * h)
    yw = hysteresis_sign(yaw_s, yt, yt * h)

    return merge_short_runs(_pack(fwd, lat), cfg.min_run_frames), merge_short_runs(_pack(pit, yw), cfg.min_run_frames)


def _angle_deg(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Angle between row vectors (degrees) and whether both are non-zero."""
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    ok = (na > 1e-12) & (nb > 1e-12)
    cos = (a * b).sum(1) / np.where(ok, na * nb, 1.0)
    return np.where(ok, np.degrees(np.arccos(np.clip(cos, -1, 1))), 0.0), ok


def _segment_means(values: np.ndarray, valid: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Mean of ``values`` over ``valid`` entries in each [start, end) window, via cumulative sums."""
    csum = np.r_[0.0, np.cumsum(np.where(valid, values, 0.0))]
    ccount = np.r_[0, np.cumsum(valid)]
    count = ccount[ends] - ccount[starts]
    return np.where(count > 0, (csum[ends] - csum[starts]) / np.maximum(count, 1), 0.0)


def segment_speeds(c2w: np.ndarray, starts: np.ndarray, ends: np.ndarray, fps: float) -> np.ndarray:
    """Yume 1.0's figures per segment over transitions [start, end): speed (mean |dp| x fps), distance,
    turn rate (mean angle between consecutive displacements) and view rotation (mean angle between
    consecutive forward axes), degrees. Shape (n_segments, 4)."""
    disp = np.diff(c2w[:, :3, 3], axis=0)
    norms = np.linalg.norm(disp, axis=1)
    turn, turn_ok = _angle_deg(disp[:-1], disp[1:])  # pair (i, i+1) of displacements
    view, view_ok = _angle_deg(c2w[:-1, :3, 2], c2w[1:, :3, 2])  # transition i
    distance = np.r_[0.0, np.cumsum(norms)]
    dist = distance[ends] - distance[starts]
    return np.stack(
        [
            dist / np.maximum(ends - starts, 1) * fps,
            dist,
            _segment_means(turn, turn_ok, starts, np.maximum(ends - 1, starts)),
            _segment_means(view, view_ok, starts, ends),
        ],
        1,
    )


def segments_from_codes(
    keys_code: np.ndarray, mouse_code: np.ndarray, c2w: np.ndarray, min_frames: int, fps: float, vocabulary: str
) -> list[Segment]:
    """Maximal runs of one (keys, mouse) label with at least ``min_frames`` transitions.

    Codes are (sign + 1) pairs packed as ``3 * (a + 1) + (b + 1)``; runs are found on integers, not strings.
    """
    joint = keys_code.astype(np.int16) * 9 + mouse_code
    n = len(joint)
    starts = np.flatnonzero(np.r_[True, joint[1:] != joint[:-1]])
    ends = np.r_[starts[1:], n]
    long_enough = (ends - starts) >= min_frames
    starts, ends = starts[long_enough], ends[long_enough]
    figures = segment_speeds(c2w, starts, ends, fps).tolist()
    out = []
    for s, e, (speed, dist, turn, view) in zip(starts.tolist(), ends.tolist(), figures):  # per segment
        k, m = _KEY_FLAT[keys_code[s]], _MOUSE_FLAT[mouse_code[s]]
        out.append(Segment(s, e, k, m, action_sentence(k, m, vocabulary), speed, dist, turn, view))
    return out


def sign_codes(c2w: np.ndarray, cfg: ActionConfig) -> tuple[np.ndarray, np.ndarray]:
    """Validated trajectory -> per-transition packed key and mouse codes (no strings: the fast path)."""
    if cfg.mode == "yume":
        return yume_rule(c2w, cfg.stride)
    if cfg.stride == 1:
        return robust_rule(c2w, cfg.robust)
    # Robust with stride: label the strided poses, then spread labels like the public rule does.
    k, m = robust_rule(c2w[:: cfg.stride], cfg.robust)
    idx = np.minimum(np.arange(c2w.shape[0] - 1) // cfg.stride, len(k) - 1)
    return k[idx], m[idx]


def trajectory_to_actions(c2w: np.ndarray, cfg: ActionConfig | None = None, fps: float = 30.0) -> ActionLabels:
    """Convert a camera-to-world trajectory to per-transition labels and action segments."""
    cfg = cfg or ActionConfig()
    c2w = validate_trajectory(c2w)
    k, m = sign_codes(c2w, cfg)
    segments = segments_from_codes(k, m, c2w, cfg.min_segment_frames, fps, cfg.vocabulary)
    return ActionLabels(keys=_KEY_FLAT[k], mouse=_MOUSE_FLAT[m], segments=segments)
