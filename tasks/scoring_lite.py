"""LiteScorer: an offline CPU video scorer on OpenCV + numpy. It is NOT VBench.

Use it where VBench cannot run (no weights, no GPU: the tiny profile, CI). Every dimension is prefixed
`lite_`, `is_vbench` is False, and its composite uses `LITE_POLICY_V1`, never VBench's ranges.
Each raw score is in [0, 1], 1 = good:

- lite_subject_consistency: colour-histogram (HSV) cosine similarity of the central crop to the first and
  the previous frame (the analogue of VBench's DINO-feature subject consistency).
- lite_background_consistency: the same on a 16x16 mean-centred grey thumbnail of the whole frame
  (the analogue of VBench's CLIP-feature background consistency).
- lite_motion_smoothness: DIS optical flow between consecutive frames; penalises the motion-compensated
  prediction error (what flow cannot explain: noise, flicker, tearing) and the acceleration of the
  global motion (jerky or stalling camera).
- lite_temporal_flicker: second difference of mean brightness over time (a smooth exposure ramp passes,
  per-frame brightness jumps do not).
- lite_sharpness: re-blur ratio 1 - var(Lap(blur(I))) / var(Lap(I)); content-normalised, so a textured
  and a flat scene are comparable (a plain Laplacian variance is not).
- lite_noise: exp(-sigma / 10) with sigma from Immerkaer's fast noise estimator (grey levels).
- lite_exposure: (1 - clipped-pixel fraction) x a brightness term that is 1 for mean grey in [40, 215].
- lite_not_frozen: 1 - fraction of consecutive frame pairs that are near-identical.

The constants below were set on procedurally rendered clips (see tests/test_scoring_lite.py); they rank
degraded clips below clean ones, they are not calibrated against human ratings.
"""

from __future__ import annotations

import cv2
import numpy as np

LITE_DIMENSIONS = (
    "lite_subject_consistency",
    "lite_background_consistency",
    "lite_motion_smoothness",
    "lite_temporal_flicker",
    "lite_sharpness",
    "lite_noise",
    "lite_exposure",
    "lite_not_frozen",
)

FLOW_MAX_SIDE = 160  # flow on a downscaled copy: global motion does not need full resolution
MAX_STILL_FRAMES = 16  # sharpness / noise / exposure on evenly spaced frames, at full resolution
FROZEN_MAD = 0.5  # mean |diff| in grey levels below which two frames count as the same frame


def _gray(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def _resize_max_side(img: np.ndarray, max_side: int) -> np.ndarray:
    h, w = img.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return img
    return cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a, b) / (na * nb))


def _first_prev_consistency(features: list[np.ndarray]) -> float:
    """VBench's recipe: mean over t>=1 of (cos(f_t, f_0) + cos(f_t, f_{t-1})) / 2, clipped to [0, 1]."""
    if len(features) < 2:
        return 1.0
    sims = [(_cos(f, features[0]) + _cos(f, features[t - 1])) / 2 for t, f in enumerate(features) if t > 0]
    return float(np.clip(np.mean(sims), 0.0, 1.0))


def subject_consistency(frames: np.ndarray) -> float:
    h, w = frames.shape[1:3]
    crop = frames[:, h // 4 : h - h // 4, w // 4 : w - w // 4]
    feats = []
    for f in crop:
        hsv = cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2HSV)
        hist = cv2.calcHist([hsv], [0, 1, 2], None, [8, 4, 4], [0, 180, 0, 256, 0, 256])
        feats.append(np.sqrt(hist.ravel()))  # sqrt: Hellinger-style, less dominated by one big bin
    return _first_prev_consistency(feats)


def background_consistency(frames: np.ndarray) -> float:
    feats = []
    for f in frames:
        thumb = cv2.resize(_gray(f), (16, 16), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
        feats.append(thumb - thumb.mean())  # mean-centred: a plain cosine of intensities is ~1 always
    return _first_prev_consistency(feats)


def _flows(grays: list[np.ndarray]) -> list[np.ndarray]:
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return [dis.calc(a, b, None) for a, b in zip(grays[:-1], grays[1:])]


def _warp_back(img: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Predict frame t from frame t+1 and the flow t -> t+1."""
    h, w = flow.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(img, gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def motion_smoothness(frames: np.ndarray) -> float:
    if len(frames) < 3:
        return 1.0
    grays = [_resize_max_side(_gray(f), FLOW_MAX_SIDE) for f in frames]
    flows = _flows(grays)
    m = 2  # ignore a border where warping has no source pixels
    residual = np.mean(
        [
            np.abs(_warp_back(b.astype(np.float32), fl) - a.astype(np.float32))[m:-m, m:-m].mean()
            for a, b, fl in zip(grays[:-1], grays[1:], flows)
        ]
    )
    # Global motion per step (median flow is robust to independently moving objects).
    motion = np.array([np.median(fl.reshape(-1, 2), axis=0) for fl in flows])
    accel = np.linalg.norm(np.diff(motion, axis=0), axis=1).mean()
    speed = np.linalg.norm(motion, axis=1).mean()
    residual_term = np.exp(-residual / 8.0)  # grey levels
    accel_term = np.exp(-accel / (0.25 * speed + 0.25))  # px per step^2, relative to the speed
    return float(residual_term * accel_term)


def temporal_flicker(frames: np.ndarray) -> float:
    if len(frames) < 3:
        return 1.0
    brightness = np.array([_gray(f).mean() for f in frames], dtype=np.float64)
    jerk = np.abs(np.diff(brightness, n=2)).mean()
    return float(np.exp(-jerk / 2.0))  # grey levels


def _still_indices(n: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, MAX_STILL_FRAMES)).round().astype(int))


def sharpness(frames: np.ndarray) -> float:
    vals = []
    for i in _still_indices(len(frames)):
        g = _gray(frames[i]).astype(np.float32)
        lap = cv2.Laplacian(g, cv2.CV_32F).var()
        if lap < 1e-6:
            vals.append(0.0)  # flat frame: nothing is in focus
            continue
        lap_reblur = cv2.Laplacian(cv2.GaussianBlur(g, (0, 0), 1.0), cv2.CV_32F).var()
        vals.append(1.0 - lap_reblur / lap)
    return float(np.clip(np.mean(vals), 0.0, 1.0))


_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)


def noise_sigma(gray: np.ndarray) -> float:
    """Immerkaer (1996) fast noise standard deviation estimate, in grey levels."""
    h, w = gray.shape
    if h < 3 or w < 3:
        return 0.0
    resp = cv2.filter2D(gray.astype(np.float32), -1, _IMMERKAER)[1:-1, 1:-1]
    return float(np.sqrt(np.pi / 2) * np.abs(resp).sum() / (6 * (w - 2) * (h - 2)))


def noise(frames: np.ndarray) -> float:
    sigma = np.mean([noise_sigma(_gray(frames[i])) for i in _still_indices(len(frames))])
    return float(np.exp(-sigma / 10.0))


def exposure(frames: np.ndarray) -> float:
    vals = []
    for i in _still_indices(len(frames)):
        g = _gray(frames[i])
        clipped = np.mean((g <= 3) | (g >= 252))
        mean = g.mean()
        # 1 inside [40, 215], falling linearly to 0 at black (0) or white (255).
        bright = min(1.0, mean / 40.0, (255.0 - mean) / 40.0)
        vals.append((1.0 - clipped) * max(0.0, bright))
    return float(np.mean(vals))


def not_frozen(frames: np.ndarray) -> float:
    if len(frames) < 2:
        return 1.0
    thumbs = [_resize_max_side(_gray(f), 64).astype(np.float32) for f in frames]
    mad = np.array([np.abs(a - b).mean() for a, b in zip(thumbs[:-1], thumbs[1:])])
    return float(1.0 - np.mean(mad < FROZEN_MAD))


class LiteScorer:
    """Offline CPU scorer (NOT VBench); stateless, so one instance can score any number of clips."""

    name = "lite-opencv"
    is_vbench = False
    dimensions = LITE_DIMENSIONS

    def score(self, frames: np.ndarray) -> dict[str, float]:
        frames = _check_frames(frames)
        return {
            "lite_subject_consistency": subject_consistency(frames),
            "lite_background_consistency": background_consistency(frames),
            "lite_motion_smoothness": motion_smoothness(frames),
            "lite_temporal_flicker": temporal_flicker(frames),
            "lite_sharpness": sharpness(frames),
            "lite_noise": noise(frames),
            "lite_exposure": exposure(frames),
            "lite_not_frozen": not_frozen(frames),
        }


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 (T, H, W, 3) RGB frames, got {frames.dtype} {frames.shape}")
    if len(frames) == 0:
        raise ValueError("empty clip")
    return np.ascontiguousarray(frames)
