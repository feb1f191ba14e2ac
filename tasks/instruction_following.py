"""Instruction-following (IF) metric: which keys and mouse moves does a clip's camera motion show?

For each consecutive frame pair: dense DIS optical flow on frames upscaled ``upscale`` times (Farneback
fails at 32 px, REFERENCE section 10), then a least-squares fit of the instantaneous motion field of a
camera walking over a ground plane::

    flow(x, y) = f * [ (-tx + x tz) rho + wx x y - wy (1 + x^2) + wz y ,
                       (-ty + y tz) rho + wx (1 + y^2) - wy x y - wz x ]

in normalised image coordinates (OpenCV axes: x right, y down, z forward), with the inverse depth of the
ground ``rho = max(0, g . (x, y, 1))`` (camera heights as the unit, sky and anything above the horizon at
rho = 0) for a ground normal ``g`` tilted by the camera's pitch, found by a grid search (the pitch with the
smallest residual). Objects off the ground (pillars) break that depth model, and a strafe past them
looks like a pan; so the fit then alternates with a per-pixel inverse depth (what the translation must
explain once rotation is removed, pulled towards the ground plane below the horizon and never farther
than it), which separates strafing from panning. Huber-weighted least squares throughout. Translations
come out in camera heights per frame, rotations in rad per frame.

A chunk's label is taken from the median of the per-frame estimates of its ``pair_gap``-frame spans (the
frame before the chunk included):
keys from (tz, tx) with a dead zone and an axis ratio (as the robust action rule), mouse from (wy, wx)
with rotation thresholds. Thresholds are data (`IFMetricConfig`), calibrated on ground-truth renders of
the procedural worlds (`calibrate_thresholds`); the defaults are that calibration's result.

Scores: key accuracy, mouse accuracy, joint accuracy (both right) and IF = mean of key and mouse
accuracy, against the commanded actions. The metric sees direction only; pair it with an image-quality
measure (first-chunk error against the ground-truth render).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from yume.tasks.action_text import KEYS_BY_SIGNS, MOUSE_BY_SIGNS

PARAMS = ("tx", "ty", "tz", "wx", "wy", "wz")


class IFMetricConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fov_deg: float = Field(70.0, gt=10, lt=150, description="horizontal field of view of the clips")
    upscale: int = Field(4, ge=1, description="frames are resized by this factor before DIS flow")
    margin: float = Field(0.06, ge=0, lt=0.4, description="border fraction ignored (flow is unreliable there)")
    sample_stride: int = Field(2, ge=1, description="use every n-th flow vector (after upscaling)")
    pitch_grid: tuple[float, float, int] = Field((-0.4, 0.4, 9), description="camera pitch search, rad")
    irls_iterations: int = Field(1, ge=0)
    texture_weighting: bool = Field(True, description="weight flow vectors by local texture (cornerMinEigenVal)")
    depth_iterations: int = Field(8, ge=0, description="rounds of per-pixel inverse-depth refinement")
    ground_prior: float = Field(0.3, ge=0, description="pull of below-horizon pixels to the ground plane")
    sky_prior: float = Field(0.0, ge=0, description="pull of above-horizon pixels to infinity (rho = 0)")
    pair_gap: int = Field(
        4, ge=1, description="frames between the two frames of a flow pair: sub-pixel per-frame motion is too "
        "small for DIS at 32 px, while spans over ~8 frames move too far for a linear motion field")
    move_threshold: float = Field(0.0089, gt=0, description="camera heights/frame below which keys are None")
    axis_ratio: float = Field(0.3, ge=0, lt=1, description="an axis counts if |axis| > ratio * |other axis|")
    yaw_threshold: float = Field(0.0031, gt=0, description="rad/frame")
    pitch_threshold: float = Field(0.0018, gt=0, description="rad/frame")


@dataclass(frozen=True)
class MotionEstimate:
    params: np.ndarray  # (pairs, 6) tx, ty, tz, wx, wy, wz per frame pair
    pitch: np.ndarray  # (pairs,) ground-plane pitch chosen by the fit
    residual: np.ndarray  # (pairs,) robust RMS residual, pixels of the upscaled frames


def _grey(frame: np.ndarray, upscale: int) -> np.ndarray:
    g = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) if frame.ndim == 3 else frame
    return cv2.resize(g, None, fx=upscale, fy=upscale, interpolation=cv2.INTER_CUBIC) if upscale > 1 else g


class FlowMotionEstimator:
    """Fits camera motion to DIS flow; builds its sampling grid once per frame size."""

    def __init__(self, cfg: IFMetricConfig | None = None):
        self.cfg = cfg or IFMetricConfig()
        self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        self._grid_key: tuple[int, int] | None = None

    def _grid(self, h: int, w: int) -> None:
        if self._grid_key == (h, w):
            return
        cfg = self.cfg
        f = 0.5 * w / np.tan(np.radians(cfg.fov_deg) / 2)
        m_y, m_x = int(cfg.margin * h), int(cfg.margin * w)
        v, u = np.mgrid[m_y : h - m_y : cfg.sample_stride, m_x : w - m_x : cfg.sample_stride]
        self._rows, self._cols = v.ravel(), u.ravel()
        self._f = f
        self._x = (u.ravel() + 0.5 - w / 2) / f
        self._y = (v.ravel() + 0.5 - h / 2) / f
        self._pitches = np.linspace(*cfg.pitch_grid)
        self._grid_key = (h, w)

    def _design(self, pitch: float, rho: np.ndarray | None = None) -> np.ndarray:
        """(2P, 6) motion-field basis in pixels for unit tx, ty, tz, wx, wy, wz; inverse depth ``rho``
        (camera heights^-1), by default the ground plane's at this pitch."""
        x, y = self._x, self._y
        if rho is None:
            rho = np.maximum(0.0, np.cos(pitch) * y - np.sin(pitch))  # g = (0, cos, -sin); h = 1
        zero = np.zeros_like(x)
        du = np.stack([-rho, zero, x * rho, x * y, -(1 + x * x), y], -1)
        dv = np.stack([zero, -rho, y * rho, 1 + y * y, -x * y, -x], -1)
        return self._f * np.concatenate([du, dv])

    def _texture(self, grey: np.ndarray) -> np.ndarray:
        """Per-sample reliability: textureless regions (sky, flat walls) give interpolated, not measured, flow."""
        if not self.cfg.texture_weighting:
            return np.ones(len(self._rows))
        eig = cv2.cornerMinEigenVal(grey.astype(np.float32) / 255.0, 5)[self._rows, self._cols]
        w = np.sqrt(np.maximum(eig, 0))
        return np.tile(w / (w.mean() + 1e-12), 2)

    def _fit(self, flow: np.ndarray, prior: np.ndarray) -> tuple[np.ndarray, float, float]:
        b = np.concatenate([flow[self._rows, self._cols, 0], flow[self._rows, self._cols, 1]])
        best = (np.inf, None, 0.0)
        for pitch in self._pitches:
            a = self._design(pitch)
            params, res = _irls(a, b, self.cfg.irls_iterations, prior)
            if res < best[0]:
                best = (res, params, pitch)
        res, params, pitch = best
        for _ in range(self.cfg.depth_iterations):
            rho = self._refine_depth(b, params, pitch)
            params, res = _irls(self._design(pitch, rho), b, self.cfg.irls_iterations, prior)
        return params, pitch, res

    def _refine_depth(self, b: np.ndarray, params: np.ndarray, pitch: float) -> np.ndarray:
        """Per-pixel inverse depth given the motion: what the translation must explain after rotation.

        Objects off the ground (pillars above the horizon) are not at the ground plane's depth; without
        this step their translation flow is fitted as rotation. A prior pulls each pixel towards the ground
        plane (strongly below the horizon, weakly above it); ground pixels can only come nearer (an object
        standing in front of the ground), never farther."""
        n = len(self._x)
        rho_g = np.maximum(0.0, np.cos(pitch) * self._y - np.sin(pitch))
        t_only = self._design(pitch, np.ones(n))[:, :3] @ params[:3]  # translation flow at rho = 1
        rot = self._design(pitch, np.zeros(n))[:, 3:] @ params[3:]
        au, av = t_only[:n], t_only[n:]
        ru, rv = b[:n] - rot[:n], b[n:] - rot[n:]
        scale = np.mean(au * au + av * av)
        if scale < 1e-10:  # no translation: depth is unobservable, keep the ground plane
            return rho_g
        lam = (np.where(rho_g > 0, self.cfg.ground_prior, self.cfg.sky_prior) + 1e-6) * scale
        rho = (ru * au + rv * av + lam * rho_g) / (au * au + av * av + lam)
        return np.maximum(rho, rho_g)

    def estimate(self, frames: np.ndarray, pairs: list[tuple[int, int]] | None = None) -> MotionEstimate:
        """Motion between frame pairs (consecutive pairs by default) of a (T, H, W, 3) uint8 clip.

        Estimates are per frame: the motion between frames i and j is divided by j - i."""
        if len(frames) < 2:
            raise ValueError(f"need at least 2 frames to estimate motion, got {len(frames)}")
        pairs = pairs or [(i, i + 1) for i in range(len(frames) - 1)]
        needed = sorted({i for p in pairs for i in p})
        grey = {i: _grey(np.asarray(frames[i]), self.cfg.upscale) for i in needed}
        self._grid(*grey[needed[0]].shape)
        params, pitch, residual = [], [], []
        for i, j in pairs:
            a, b = grey[i], grey[j]
            flow = self._dis.calc(a, b, None) / (j - i)
            p, th, r = self._fit(flow, self._texture(a))
            params.append(p)
            pitch.append(th)
            residual.append(r)
        return MotionEstimate(np.asarray(params), np.asarray(pitch), np.asarray(residual))


def _irls(a: np.ndarray, b: np.ndarray, iterations: int, prior: np.ndarray) -> tuple[np.ndarray, float]:
    """Huber-weighted least squares with per-sample prior weights; returns (params, robust RMS residual)."""
    w = prior.copy()
    for it in range(iterations + 1):
        sw = np.sqrt(w)
        params, *_ = np.linalg.lstsq(a * sw[:, None], b * sw, rcond=None)
        r = b - a @ params
        scale = 1.4826 * np.median(np.abs(r)) + 1e-6
        if it < iterations:
            k = 1.345 * scale
            w = prior * np.minimum(1.0, k / np.maximum(np.abs(r), 1e-12))
    return params, float(np.sqrt(np.sum(w * r * r) / np.sum(w)))


def _sign(value: float, threshold: float) -> int:
    return 0 if abs(value) <= threshold else int(np.sign(value))


def classify(motion: np.ndarray, cfg: IFMetricConfig) -> tuple[str, str]:
    """(keys, mouse) label of one chunk's median motion (tx, ty, tz, wx, wy, wz)."""
    tx, _, tz, wx, wy, _ = motion
    speed = float(np.hypot(tx, tz))
    fwd = lat = 0
    if speed > cfg.move_threshold:
        fwd = _sign(tz, cfg.axis_ratio * abs(tx))
        lat = _sign(tx, cfg.axis_ratio * abs(tz))
    return KEYS_BY_SIGNS[(fwd, lat)], MOUSE_BY_SIGNS[(_sign(wx, cfg.pitch_threshold), _sign(wy, cfg.yaw_threshold))]


def chunk_pairs(chunk_starts: list[int], chunk_len: int, gap: int) -> list[list[tuple[int, int]]]:
    """Frame pairs per chunk. Chunk c shows frames [s, s+len) and its motion starts at frame s-1 (the last
    frame before it: a history frame, or the previous chunk's last), so its pairs are (i, i+gap) for
    i = s-1 .. s+len-1-gap: every ``gap``-frame span inside [s-1, s+len-1]."""
    g = min(gap, chunk_len)
    return [[(i, i + g) for i in range(s - 1, s + chunk_len - g)] for s in chunk_starts]


def chunk_motions(
    frames: np.ndarray, chunk_starts: list[int], chunk_len: int, cfg: IFMetricConfig | None = None,
    estimator: FlowMotionEstimator | None = None,
) -> np.ndarray:
    """(chunks, 6) median per-frame motion of each chunk; every chunk start must be >= 1."""
    cfg = cfg or IFMetricConfig()
    if min(chunk_starts) < 1 or max(chunk_starts) + chunk_len > len(frames):
        raise ValueError(f"chunks {chunk_starts} of {chunk_len} frames need frames 0..{max(chunk_starts) + chunk_len - 1}"
                         f" (one frame before the first chunk); the clip has {len(frames)}")
    estimator = estimator or FlowMotionEstimator(cfg)
    per_chunk = chunk_pairs(chunk_starts, chunk_len, cfg.pair_gap)
    est = estimator.estimate(frames, [p for pairs in per_chunk for p in pairs])
    out, k = [], 0
    for pairs in per_chunk:
        out.append(np.median(est.params[k : k + len(pairs)], axis=0))
        k += len(pairs)
    return np.asarray(out)


def label_chunks(
    frames: np.ndarray, chunk_len: int, cfg: IFMetricConfig | None = None, first_chunk_start: int = 1,
    estimator: FlowMotionEstimator | None = None,
) -> list[tuple[str, str]]:
    """(keys, mouse) per chunk of ``chunk_len`` frames, the first starting at ``first_chunk_start`` (>= 1:
    the frame before it anchors the first chunk's motion)."""
    cfg = cfg or IFMetricConfig()
    starts = list(range(first_chunk_start, len(frames) - chunk_len + 1, chunk_len))
    return [classify(m, cfg) for m in chunk_motions(frames, starts, chunk_len, cfg, estimator)]


@dataclass(frozen=True)
class IFScores:
    key_accuracy: float
    mouse_accuracy: float
    joint_accuracy: float
    if_score: float
    chunks: int

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}{k}": v for k, v in self.__dict__.items()}


def score_labels(predicted: list[tuple[str, str]], commanded: list[tuple[str, str]]) -> IFScores:
    if len(predicted) != len(commanded) or not commanded:
        raise ValueError(f"need equal, non-zero numbers of chunks (got {len(predicted)} and {len(commanded)})")
    p, c = np.asarray(predicted, dtype=object), np.asarray(commanded, dtype=object)
    keys, mouse = p[:, 0] == c[:, 0], p[:, 1] == c[:, 1]
    k, m = float(keys.mean()), float(mouse.mean())
    return IFScores(k, m, float((keys & mouse).mean()), (k + m) / 2, len(commanded))


def chance_joint_accuracy(commanded: list[tuple[str, str]]) -> float:
    """Joint accuracy of the best constant prediction under this action distribution."""
    _, counts = np.unique(np.asarray([f"{k}|{m}" for k, m in commanded]), return_counts=True)
    return float(counts.max() / counts.sum())


def calibrate_thresholds(
    motions: np.ndarray, commanded: list[tuple[str, str]], base: IFMetricConfig | None = None,
) -> tuple[IFMetricConfig, float]:
    """Grid-search the thresholds that maximise joint accuracy on chunks with known actions.

    ``motions``: (chunks, 6) median motions (`chunk_motions`) of ground-truth renders.
    """
    base = base or IFMetricConfig()
    grid = {
        "move_threshold": np.geomspace(0.003, 0.02, 8),
        "axis_ratio": np.linspace(0.2, 0.6, 5),
        "yaw_threshold": np.geomspace(0.0006, 0.004, 8),
        "pitch_threshold": np.geomspace(0.0006, 0.004, 8),
    }
    # Keys and mouse are independent: search each pair of thresholds separately.
    best_keys = max(
        product(grid["move_threshold"], grid["axis_ratio"]),
        key=lambda mt: np.mean([classify(m, base.model_copy(update={"move_threshold": mt[0], "axis_ratio": mt[1]}))[0] == c[0]
                                for m, c in zip(motions, commanded)]),
    )
    best_mouse = max(
        product(grid["yaw_threshold"], grid["pitch_threshold"]),
        key=lambda yp: np.mean([classify(m, base.model_copy(update={"yaw_threshold": yp[0], "pitch_threshold": yp[1]}))[1] == c[1]
                                for m, c in zip(motions, commanded)]),
    )
    cfg = base.model_copy(update={
        "move_threshold": float(best_keys[0]), "axis_ratio": float(best_keys[1]),
        "yaw_threshold": float(best_mouse[0]), "pitch_threshold": float(best_mouse[1]),
    })
    return cfg, score_labels([classify(m, cfg) for m in motions], commanded).joint_accuracy
