"""Procedural worlds written in Sekai's format: the embedded sample data of the `tiny` profile.

Each clip is a first-person walk through a small 3-D world, driven by a scripted key/mouse trajectory
(`yume.datasets.trajectory`) with real-like jitter and drift, so the ground-truth actions are known.
The world has visible 3-D structure, so camera motion shows as parallax and optical flow:

- a textured ground plane (1 m checker tiles with per-tile shade and grid lines),
- vertical pillars ("buildings" or "trees") at depths from a few metres to ~40 m, striped by height,
- a sky gradient with a mountain ridge on the horizon, and aerial haze with distance.

A clip may carry one scene event that captions can describe: ``rain`` (streaks, darker cooler light),
``fog`` (haze distance collapses), ``night_lights`` (a night scene whose windows light up) or
``object_appears`` (a bright sculpture appears ahead of the walker).

Layout written by `write_sekai_dataset(out_dir, cfg)`::

    annotations.csv                 Sekai's columns: videoFile, cameraFile, caption, location, scene,
                                    crowdDensity, weather, timeOfDay (paths relative to out_dir)
    videos/{ytid}_{start:07d}_{end:07d}.mp4   H.264, yuv420p, cfg.fps (30) fps, decord-readable
    cameras/{same stem}.npz         extrinsic (N,4,4) float32 camera-to-world, OpenCV axes
                                    (x right, y down, z forward), translations within +-1;
                                    intrinsic (3,3) float32 pinhole matrix in pixels
    ground_truth/actions.parquet    one row per transition: video_file, frame, keys, mouse
    ground_truth/clips.parquet      one row per clip: scene, event, event frame and text, script

Rendering is vectorised numpy ray casting over (frames x pixels x objects) in chunks of frames.
Everything is deterministic per (seed, clip index); every file is written atomically and the CSV last,
so a directory with an annotations.csv is complete.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import av
import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, field_validator

from yume.datasets.trajectory import ScriptSegment, Trajectory, TrajectoryConfig, scripted_trajectory

EventKind = Literal["rain", "fog", "night_lights", "object_appears"]
EVENT_KINDS: tuple[str, ...] = ("rain", "fog", "night_lights", "object_appears")
SCENES = ("outdoor-urban", "outdoor-natural")


class ProceduralWorldConfig(BaseModel):
    """Sizes and content of the procedural Sekai-format dataset."""

    model_config = ConfigDict(extra="forbid")

    n_clips: int = Field(24, ge=1)
    seed: int = Field(0, ge=0)
    height: int = Field(64, ge=16, le=1080, description="pixels; even (H.264 yuv420p)")
    width: int = Field(64, ge=16, le=1920, description="pixels; even (H.264 yuv420p)")
    fps: int = Field(30, ge=1)
    frames_per_clip: int = Field(240, ge=2, description="frames per clip (Sekai: 1800)")
    fov_deg: float = Field(70.0, gt=10, lt=150, description="horizontal field of view")
    world_scale: float = Field(20.0, gt=0, description="metres per normalised trajectory unit")
    camera_height: float = Field(1.6, gt=0, description="metres above the ground")
    n_objects: int = Field(48, ge=0, description="pillars scattered around the walk")
    object_field_radius: float = Field(30.0, gt=2, description="metres; pillars lie within this of the path")
    haze_distance: float = Field(90.0, gt=0, description="metres; aerial perspective e-folding distance")
    event_probability: float = Field(0.75, ge=0, le=1)
    events: list[EventKind] = Field(default_factory=lambda: list(EVENT_KINDS))
    supersample: int = Field(
        2, ge=1, le=4, description="rays per pixel side; averaged (anti-aliasing: no flicker of thin lines)"
    )
    ground_contrast: float = Field(
        1.0, gt=0, description="ground texture contrast about its mean colour (1 = the default look); at 32 px "
        "the default ground is nearly flat, so translation shows only on pillars and a generated chunk's small "
        "errors hide it from optical flow (tiny: 4)"
    )
    lens_blur_sigma: float = Field(
        0.5, ge=0, description="pixels; a camera's optical blur, so edges are not aliased as no real video's are"
    )
    crf: int = Field(18, ge=0, le=51, description="x264 quality (lower is better)")
    chunk_frames: int = Field(16, ge=1, description="frames rendered per vectorised batch")
    trajectory: TrajectoryConfig = TrajectoryConfig()

    @field_validator("height", "width")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 2:
            raise ValueError("must be even (H.264 yuv420p needs even frame sizes)")
        return v

    @field_validator("events")
    @classmethod
    def _some_events(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("list at least one event kind (set event_probability: 0 to disable events)")
        return v


@dataclass(frozen=True)
class Palette:
    ground: tuple[tuple[float, float, float], tuple[float, float, float]]
    zenith: tuple[float, float, float]
    horizon: tuple[float, float, float]
    mountain: tuple[float, float, float]
    objects: tuple[tuple[float, float, float], ...]


PALETTES = {
    "outdoor-urban": Palette(
        ground=((0.55, 0.55, 0.57), (0.42, 0.42, 0.45)), zenith=(0.25, 0.45, 0.85), horizon=(0.75, 0.85, 0.95),
        mountain=(0.45, 0.5, 0.6),
        objects=((0.8, 0.55, 0.4), (0.6, 0.6, 0.7), (0.85, 0.8, 0.65), (0.5, 0.35, 0.3), (0.7, 0.7, 0.75)),
    ),
    "outdoor-natural": Palette(
        ground=((0.35, 0.55, 0.25), (0.28, 0.45, 0.2)), zenith=(0.3, 0.5, 0.9), horizon=(0.8, 0.88, 0.95),
        mountain=(0.35, 0.45, 0.4),
        objects=((0.4, 0.28, 0.18), (0.2, 0.45, 0.2), (0.3, 0.55, 0.25), (0.5, 0.4, 0.25), (0.15, 0.35, 0.15)),
    ),
}


@dataclass(frozen=True)
class Event:
    kind: str
    start_frame: int
    text: str


@dataclass(frozen=True)
class World:
    """Geometry and look of one clip's world (metres, world axes: y down, ground at +camera_height)."""

    scene: str
    palette: Palette
    centres: np.ndarray  # (K, 2) x, z
    radii: np.ndarray  # (K,)
    heights: np.ndarray  # (K,)
    colours: np.ndarray  # (K, 3)
    appear_frame: np.ndarray  # (K,) first frame an object is visible (0 = always)
    ridge: np.ndarray  # (3, 2) amplitude/phase pairs of the mountain ridge
    night: bool
    event: Event | None


# ---------------------------------------------------------------------------------------------------
# World and event generation


def clip_rng(seed: int, index: int) -> np.random.Generator:
    """Clip ``index``'s generator: a clip is the same whatever n_clips is."""
    return np.random.default_rng([seed, index])


def youtube_like_id(seed: int, index: int) -> str:
    """An 11-character alphanumeric id (YouTube ids' length) derived from seed and index."""
    digest = hashlib.sha256(f"yume-procedural:{seed}:{index}".encode()).digest()
    return base64.b32encode(digest).decode().lower()[:11]


def _choose_event(rng: np.random.Generator, cfg: ProceduralWorldConfig, n_frames: int) -> tuple[str, int] | None:
    if rng.random() >= cfg.event_probability:
        return None
    kind = cfg.events[int(rng.integers(len(cfg.events)))]
    start = int(rng.integers(int(0.3 * n_frames), int(0.6 * n_frames) + 1))
    return kind, start


def _event_text(kind: str, seconds: float) -> str:
    when = f"About {seconds:.0f} seconds in"
    return {
        "rain": f"{when}, rain starts to fall: grey streaks cross the view and the light turns dim and cool.",
        "fog": f"{when}, fog rolls in and the distant pillars and mountains fade into a pale grey haze.",
        "night_lights": f"{when}, the lights come on in the night: windows on the buildings glow warm yellow.",
        "object_appears": f"{when}, a bright orange sculpture suddenly appears on the ground ahead.",
    }[kind]


def build_world(rng: np.random.Generator, cfg: ProceduralWorldConfig, c2w_m: np.ndarray) -> World:
    """Scatter pillars around the walk ``c2w_m`` ((N,4,4) camera-to-world, positions in metres)."""
    traj_m = c2w_m[:, :3, 3]
    scene = SCENES[int(rng.integers(len(SCENES)))]
    palette = PALETTES[scene]
    urban = scene == "outdoor-urban"
    centres, radii = _place_pillars(rng, cfg, traj_m[:, [0, 2]], (0.6, 1.8) if urban else (0.25, 0.6))
    k = len(radii)
    heights = rng.uniform(4.0, 14.0, size=k) if urban else rng.uniform(3.0, 8.0, size=k)
    colours = np.asarray(palette.objects)[rng.integers(len(palette.objects), size=k)]
    colours = np.clip(colours * rng.uniform(0.85, 1.15, size=(k, 1)), 0, 1)
    appear = np.zeros(k, dtype=np.int64)

    chosen = _choose_event(rng, cfg, len(traj_m))
    night = chosen is not None and chosen[0] == "night_lights"
    event = None
    if chosen is not None:
        kind, start = chosen
        event = Event(kind, start, _event_text(kind, start / cfg.fps))
        if kind == "object_appears":
            centres, radii, heights, colours, appear = _add_sculpture(
                traj_m, start, centres, radii, heights, colours, appear, view_heading(c2w_m[start])
            )
    ridge = np.stack([rng.uniform(0.02, 0.06, size=3), rng.uniform(0, 2 * np.pi, size=3)], -1)
    return World(scene, palette, centres, radii, heights, colours, appear, ridge, night, event)


def _place_pillars(rng: np.random.Generator, cfg: ProceduralWorldConfig, path_xz: np.ndarray, radius_range):
    """Up to ``n_objects`` pillars near the walk but clear of it (the walker never passes through one)."""
    n = 4 * cfg.n_objects
    anchors = path_xz[rng.integers(len(path_xz), size=n)]
    angle = rng.uniform(0, 2 * np.pi, size=n)
    dist = rng.uniform(3.0, cfg.object_field_radius, size=n)
    centres = anchors + np.stack([np.cos(angle), np.sin(angle)], -1) * dist[:, None]
    radii = rng.uniform(*radius_range, size=n)
    clearance = np.sqrt(((centres[:, None, :] - path_xz[None, ::5, :]) ** 2).sum(-1)).min(1) - radii
    keep = np.flatnonzero(clearance > CLEARANCE_M)[: cfg.n_objects]
    return centres[keep], radii[keep]


CLEARANCE_M = 2.5  # metres between the walk and the nearest pillar surface


def view_heading(c2w: np.ndarray) -> np.ndarray:
    """Unit xz direction the camera looks along (its z axis projected on the ground)."""
    d = c2w[[0, 2], 2]
    n = np.linalg.norm(d)
    return d / n if n > 1e-6 else np.array([0.0, 1.0])


def _add_sculpture(traj_m, start, centres, radii, heights, colours, appear, heading):
    """An orange pillar that appears 6 m in front of the camera at the event frame."""
    pos = traj_m[start, [0, 2]] + 6.0 * heading
    return (
        np.vstack([centres, pos[None]]),
        np.r_[radii, 0.8],
        np.r_[heights, 3.0],
        np.vstack([colours, [[1.0, 0.45, 0.05]]]),
        np.r_[appear, start],
    )


# ---------------------------------------------------------------------------------------------------
# Rendering


def intrinsic_matrix(cfg: ProceduralWorldConfig) -> np.ndarray:
    f = 0.5 * cfg.width / np.tan(np.radians(cfg.fov_deg) / 2)
    return np.array([[f, 0, cfg.width / 2], [0, f, cfg.height / 2], [0, 0, 1]], dtype=np.float64)


def pixel_rays(cfg: ProceduralWorldConfig) -> np.ndarray:
    """(H*s * W*s, 3) unit ray directions through the centres of the s x s sub-pixels of every pixel
    (s = ``supersample``), in camera axes (x right, y down, z forward)."""
    k, s = intrinsic_matrix(cfg), cfg.supersample
    v, u = (np.mgrid[0 : cfg.height * s, 0 : cfg.width * s] + 0.5) / s
    d = np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones_like(u)], -1).reshape(-1, 3)
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def _sky(d: np.ndarray, world: World) -> np.ndarray:
    """Gradient sky with a mountain ridge; ``d`` (..., 3) world directions."""
    elevation = -d[..., 1]  # y is down
    azimuth = np.arctan2(d[..., 0], d[..., 2])
    up = np.clip(elevation, 0, 1)[..., None] ** 0.6
    sky = (1 - up) * np.asarray(world.palette.horizon) + up * np.asarray(world.palette.zenith)
    ridge = 0.03 + sum(a * np.sin((i * 2 + 3) * azimuth + p) for i, (a, p) in enumerate(world.ridge))
    mountain = elevation < ridge
    shade = 0.9 + 0.1 * np.sin(9 * azimuth)[..., None]
    return np.where(mountain[..., None], np.asarray(world.palette.mountain) * shade, sky)


def _fade(footprint: np.ndarray, full: float, gone: float) -> np.ndarray:
    """Texture level of detail: 1 while a pixel covers < ``full`` metres, 0 beyond ``gone``.

    Detail finer than two pixels is replaced by its average instead of being point-sampled, which would
    alias into flicker and false motion."""
    return np.clip((gone - footprint) / (gone - full), 0.0, 1.0)


def _hash01(ix: np.ndarray, iz: np.ndarray) -> np.ndarray:
    """A deterministic pseudo-random value in [0, 1) per integer cell."""
    v = np.sin(ix * 12.9898 + iz * 78.233) * 43758.5453
    return v - np.floor(v)


def _value_noise(x: np.ndarray, z: np.ndarray, cell: float) -> np.ndarray:
    """Smooth, aperiodic noise in [0, 1): hashed cell corners, smoothstep-interpolated."""
    gx, gz = x / cell, z / cell
    ix, iz = np.floor(gx), np.floor(gz)
    fx, fz = gx - ix, gz - iz
    fx, fz = fx * fx * (3 - 2 * fx), fz * fz * (3 - 2 * fz)
    a, b = _hash01(ix, iz), _hash01(ix + 1, iz)
    c, d = _hash01(ix, iz + 1), _hash01(ix + 1, iz + 1)
    return (a + (b - a) * fx) * (1 - fz) + (c + (d - c) * fx) * fz


def _ground(p: np.ndarray, world: World, footprint: np.ndarray, contrast: float = 1.0) -> np.ndarray:
    """Aperiodic patches (value noise at 2 m, 0.6 m and 0.2 m), so optical flow has no repeating pattern to
    mistake one position for another; ``p`` (..., 3) hit points, ``footprint`` (...) metres per pixel;
    ``contrast`` scales the colour's deviation from the ground's mean colour (clipped to [0, 1])."""
    x, z = p[..., 0], p[..., 2]
    palette = np.asarray(world.palette.ground)
    big = _value_noise(x, z, 2.0)
    mid = _value_noise(x + 17.0, z - 5.0, 0.6) - 0.5
    fine = _value_noise(x - 3.0, z + 11.0, 0.2) - 0.5
    # Each octave fades to its mean (0) once a pixel covers more than half its cell: no aliasing.
    shade = 0.8 + 0.2 * big + 0.35 * mid * _fade(footprint, 0.15, 0.3) + 0.3 * fine * _fade(footprint, 0.05, 0.1)
    mix = big[..., None]
    colour = (palette[0] * mix + palette[1] * (1 - mix)) * shade[..., None]
    if contrast == 1.0:
        return colour
    mean = palette.mean(0) * 0.9  # the mean shade: 0.8 + 0.2 * E[big]
    return np.clip(mean + (colour - mean) * contrast, 0.0, 1.0)


def _wrap(angle: np.ndarray) -> np.ndarray:
    return (angle + np.pi) % (2 * np.pi) - np.pi


def _pillars_in_view(o: np.ndarray, d: np.ndarray, world: World, frames: np.ndarray) -> np.ndarray:
    """Indices of pillars that can appear in any of these frames (horizontal frustum test).

    Only a culling step: ray casting against the survivors decides what is drawn.
    """
    view_az = np.arctan2(d[:, :, 0].mean(1), d[:, :, 2].mean(1))  # (F,)
    ray_rel = _wrap(np.arctan2(d[..., 0], d[..., 2]) - view_az[:, None])
    half_fov = np.abs(ray_rel).max()
    vec = world.centres[None] - o[:, None, [0, 2]]  # (F,K,2)
    dist = np.linalg.norm(vec, axis=-1)
    rel = np.abs(_wrap(np.arctan2(vec[..., 0], vec[..., 1]) - view_az[:, None]))
    angular_radius = np.arcsin(np.clip(world.radii[None] / np.maximum(dist, 1e-6), 0, 1))
    seen = (rel <= half_fov + angular_radius + 0.05) | (dist < world.radii[None] + 1.0)
    seen &= frames[:, None] >= world.appear_frame[None]
    return np.flatnonzero(seen.any(0))


def _hit_pillars(o: np.ndarray, d: np.ndarray, world: World, frames: np.ndarray, cam_h: float):
    """Nearest pillar hit per ray: (t, pillar index); t = inf where no pillar is hit."""
    f, p = d.shape[:2]
    keep = _pillars_in_view(o, d, world, frames) if len(world.radii) else np.zeros(0, np.int64)
    if len(keep) == 0:
        return np.full((f, p), np.inf), np.zeros((f, p), np.int64)
    centres = world.centres[keep].astype(np.float32)
    radii, heights = world.radii[keep].astype(np.float32), world.heights[keep].astype(np.float32)
    dx, dz = d[..., 0:1], d[..., 2:3]  # (F,P,1)
    ox = (o[:, None, 0:1] - centres[None, None, :, 0]).astype(np.float32)  # (F,1,K)
    oz = (o[:, None, 2:3] - centres[None, None, :, 1]).astype(np.float32)
    a = dx * dx + dz * dz
    b = 2 * (ox * dx + oz * dz)
    c = ox * ox + oz * oz - (radii**2)[None, None, :]
    disc = b * b - 4 * a * c
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (-b - np.sqrt(disc)) / (2 * a)
    y = o[:, None, 1:2].astype(np.float32) + t * d[..., 1:2]
    visible = frames[:, None, None] >= world.appear_frame[keep][None, None, :]
    ok = (disc > 0) & (t > 0.2) & (y <= cam_h) & (y >= cam_h - heights[None, None, :]) & visible
    t = np.where(ok, t, np.inf)
    idx = np.argmin(t, axis=-1)
    return np.take_along_axis(t, idx[..., None], -1)[..., 0], keep[idx]


def _pillar_colour(
    p: np.ndarray, idx: np.ndarray, world: World, cam_h: float, lights_on: np.ndarray, footprint: np.ndarray
) -> np.ndarray:
    """Stripes by height (faded to their mean where finer than a pixel can show), Lambert shading by the
    surface normal, lit windows at night."""
    if len(world.radii) == 0:
        return np.zeros(p.shape), np.zeros(p.shape[:-1], bool)
    centre = world.centres[idx]
    nx, nz = p[..., 0] - centre[..., 0], p[..., 2] - centre[..., 1]
    norm = np.sqrt(nx * nx + nz * nz) + 1e-9
    light = np.array([0.6, 0.8])
    lambert = 0.55 + 0.45 * np.clip((nx * light[0] + nz * light[1]) / norm, 0, 1)
    height_above = cam_h - p[..., 1]
    band = (np.floor(height_above / 0.7) % 2).astype(bool)
    w_bands = _fade(footprint, 0.2, 0.45)
    stripes = w_bands * np.where(band, 1.0, 0.8) + (1 - w_bands) * 0.9
    col = world.colours[idx] * (lambert * stripes)[..., None]
    angle = np.arctan2(nz, nx)
    window = band & (np.sin(angle * 6) > 0.3) & (height_above > 1.0) & (w_bands > 0.5)
    glow = window & lights_on
    return np.where(glow[..., None], WINDOW_GLOW, col), glow


WINDOW_GLOW = np.array([1.0, 0.85, 0.4])


def _event_strength(world: World, frames: np.ndarray, ramp: int = 45) -> np.ndarray:
    if world.event is None:
        return np.zeros(len(frames))
    return np.clip((frames - world.event.start_frame) / ramp, 0, 1)


def render_frames(
    world: World, c2w_m: np.ndarray, frames: np.ndarray, cfg: ProceduralWorldConfig, rays: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Render ``frames`` of a clip: (F, H, W, 3) uint8. ``c2w_m`` is (N,4,4) with positions in metres."""
    rot, o = c2w_m[frames, :3, :3], c2w_m[frames, :3, 3]
    d = np.einsum("fij,pj->fpi", rot, rays).astype(np.float32)  # (F,P,3) world directions
    cam_h = cfg.camera_height
    with np.errstate(divide="ignore", invalid="ignore"):
        t_ground = np.where(d[..., 1] > 1e-4, (cam_h - o[:, None, 1]) / d[..., 1], np.inf)
    t_pillar, idx = _hit_pillars(o, d, world, frames, cam_h)
    kind = world.event.kind if world.event else None
    strength = _event_strength(world, frames)

    t = np.minimum(t_ground, t_pillar)
    hit = o[:, None, :] + np.where(np.isfinite(t), t, 0)[..., None] * d
    lights_on = strength > 0.5 if kind == "night_lights" else np.zeros(len(frames), bool)
    is_pillar = t_pillar < t_ground
    pixel_angle = 1.0 / intrinsic_matrix(cfg)[0, 0]  # radians per output pixel
    with np.errstate(invalid="ignore"):
        pillar_fp = np.where(np.isfinite(t_pillar), t_pillar, 0) * pixel_angle
        ground_fp = np.where(np.isfinite(t_ground), t_ground, 0) * pixel_angle / np.maximum(np.abs(d[..., 1]), 0.02)
    # Shade each surface only where it is seen (boolean-masked 1-D views of the (F, P) pixels).
    is_ground = (t_ground <= t_pillar) & np.isfinite(t_ground)
    is_sky = ~(is_ground | is_pillar)
    img = np.empty(d.shape, np.float64)
    img[is_sky] = _sky(d[is_sky], world)
    img[is_ground] = _ground(hit[is_ground], world, ground_fp[is_ground], cfg.ground_contrast)
    lights_px = np.broadcast_to(lights_on[:, None], is_pillar.shape)[is_pillar]
    img[is_pillar], glow_px = _pillar_colour(hit[is_pillar], idx[is_pillar], world, cam_h, lights_px, pillar_fp[is_pillar])
    glow = np.zeros(is_pillar.shape, bool)
    glow[is_pillar] = glow_px

    haze_col = np.array([0.78, 0.8, 0.82])
    if world.night:  # dark ambient light; lit windows keep their own brightness
        ambient = (0.22 + 0.12 * lights_on)[:, None, None]
        img = np.where(glow[..., None], img, img * ambient)
        haze_col = haze_col * 0.25
    haze_dist = cfg.haze_distance * (1 - 0.96 * strength if kind == "fog" else np.ones(len(frames)))
    # The sky keeps its colours except in fog, where it turns into the haze too.
    sky_haze = 0.9 * strength if kind == "fog" else np.zeros(len(frames))
    haze = np.where(np.isfinite(t), 1 - np.exp(-np.where(np.isfinite(t), t, 0) / haze_dist[:, None]), sky_haze[:, None])
    img = img * (1 - haze[..., None]) + haze_col * haze[..., None]
    if kind == "rain":
        img = img * (1 - 0.3 * strength[:, None, None]) * np.array([0.9, 0.95, 1.05])
    s = cfg.supersample  # box-filter the sub-pixels: anti-aliasing, so thin lines do not flicker
    img = img.reshape(len(frames), cfg.height, s, cfg.width, s, 3).mean(axis=(2, 4))
    if kind == "rain":
        img = _rain_streaks(img, strength, rng)
    if cfg.lens_blur_sigma > 0:
        img = np.stack([cv2.GaussianBlur(f.astype(np.float32), (0, 0), cfg.lens_blur_sigma) for f in img])
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def _rain_streaks(img: np.ndarray, strength: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Short bright vertical streaks at random places, denser as the rain builds."""
    f, h, w, _ = img.shape
    drops = rng.random((f, h, w)) < 0.03 * strength[:, None, None]
    streak = drops | np.roll(drops, 1, axis=1) | np.roll(drops, 2, axis=1)
    return np.where(streak[..., None], 0.6 * img + 0.4 * 0.85, img)


# ---------------------------------------------------------------------------------------------------
# Writing


def _atomic_write(path: Path, write) -> None:
    """Call ``write(file_object)`` on a temporary file next to ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def encode_h264(frames: np.ndarray, fps: int, crf: int) -> bytes:
    """H.264/yuv420p mp4 bytes of (N,H,W,3) uint8 frames, byte-for-byte reproducible.

    x264's rate-control lookahead made output sizes vary from run to run in this build even with one
    thread (measured: 4 different sizes in 12 encodes); ``rc-lookahead=0`` makes it deterministic.
    """
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "medium", "threads": "1", "x264-params": "rc-lookahead=0"}
        stream.codec_context.thread_count = 1
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode(None))
    return buf.getvalue()


def normalise_translations(c2w: np.ndarray) -> np.ndarray:
    """Sekai keeps translations within +-1 per video: scale down only if they exceed it."""
    out = c2w.copy()
    extent = np.abs(out[:, :3, 3]).max()
    if extent > 1.0:
        out[:, :3, 3] /= extent
    return out


@dataclass(frozen=True)
class RenderedClip:
    stem: str
    trajectory: Trajectory
    world: World
    frames: np.ndarray  # (N,H,W,3) uint8


def render_clip(index: int, cfg: ProceduralWorldConfig, script: list[ScriptSegment] | None = None) -> RenderedClip:
    """Trajectory, world and frames of clip ``index``; ``script`` fixes the actions (random if None)."""
    rng = clip_rng(cfg.seed, index)
    n = cfg.frames_per_clip
    traj = scripted_trajectory(n, rng, cfg.trajectory, script)
    c2w_m = traj.c2w.copy()
    c2w_m[:, :3, 3] *= cfg.world_scale
    world = build_world(rng, cfg, c2w_m)
    rays = pixel_rays(cfg)
    chunks = [
        render_frames(world, c2w_m, np.arange(s, min(n, s + cfg.chunk_frames)), cfg, rays, rng)
        for s in range(0, n, cfg.chunk_frames)
    ]
    stem = f"{youtube_like_id(cfg.seed, index)}_{0:07d}_{n:07d}"
    return RenderedClip(stem, traj, world, np.concatenate(chunks))


def render_action_clip(
    index: int, cfg: ProceduralWorldConfig, actions: list[tuple[str, str]], chunk_frames: int
) -> RenderedClip:
    """A clip of one context frame followed by one chunk of ``chunk_frames`` frames per (keys, mouse)
    action: chunk c is frames [1 + c*L, 1 + (c+1)*L) and its motion starts at frame c*L.

    The ground truth for world-model evaluation. Pitch commands that would tilt past ``max_pitch`` are
    flipped (see `scripted_trajectory`): read the labels actually rendered from ``clip.trajectory.script``.
    """
    L = chunk_frames
    script = [ScriptSegment(c * L, (c + 1) * L, k, m) for c, (k, m) in enumerate(actions)]
    return render_clip(index, cfg.model_copy(update={"frames_per_clip": 1 + L * len(actions)}), script)


def _caption(clip: RenderedClip, cfg: ProceduralWorldConfig) -> str:
    w = clip.world
    what = "tall buildings and pillars in stone, brick and glass" if w.scene == "outdoor-urban" else (
        "tree trunks and mossy posts scattered across a grassy meadow"
    )
    light = "It is night; the scene is dark." if w.night else "It is daytime under a clear blue sky."
    base = (
        f"A first-person walk through a quiet {w.scene.replace('outdoor-', '')} landscape. The walker moves "
        f"along a tiled ground between {what}, some close by and some far away, with a range of mountains "
        f"on the horizon. {light} Nobody else is around."
    )
    return base + (" " + w.event.text if w.event else "")


def _annotation(clip: RenderedClip, cfg: ProceduralWorldConfig, index: int) -> dict:
    event = clip.world.event.kind if clip.world.event else None
    weather = {"rain": "rainy", "fog": "cloudy/foggy"}.get(event, "sunny")
    return {
        "videoFile": f"videos/{clip.stem}.mp4", "cameraFile": f"cameras/{clip.stem}.npz",
        "caption": _caption(clip, cfg), "location": f"Procedural World {cfg.seed}-{index}",
        "scene": clip.world.scene, "crowdDensity": "empty", "weather": weather,
        "timeOfDay": "night" if clip.world.night else "daytime",
    }


def _ground_truth(clip: RenderedClip, annotation: dict, cfg: ProceduralWorldConfig) -> tuple[dict, dict]:
    n = len(clip.trajectory.keys)
    actions = {
        "video_file": [annotation["videoFile"]] * n, "frame": list(range(n)),
        "keys": list(clip.trajectory.keys), "mouse": list(clip.trajectory.mouse),
    }
    ev = clip.world.event
    script = [{"start": s.start, "end": s.end, "keys": s.keys, "mouse": s.mouse} for s in clip.trajectory.script]
    clip_row = {
        "video_file": annotation["videoFile"], "camera_file": annotation["cameraFile"], "scene": clip.world.scene,
        "event": ev.kind if ev else None, "event_start_frame": ev.start_frame if ev else None,
        "event_text": ev.text if ev else None, "seed": cfg.seed, "script": json.dumps(script, ensure_ascii=False),
    }
    return actions, clip_row


def write_clip(out_dir: Path, clip: RenderedClip, cfg: ProceduralWorldConfig) -> None:
    video = encode_h264(clip.frames, cfg.fps, cfg.crf)
    _atomic_write(out_dir / "videos" / f"{clip.stem}.mp4", lambda f: f.write(video))
    extrinsic = normalise_translations(clip.trajectory.c2w).astype(np.float32)
    intrinsic = intrinsic_matrix(cfg).astype(np.float32)
    _atomic_write(out_dir / "cameras" / f"{clip.stem}.npz", lambda f: np.savez(f, extrinsic=extrinsic, intrinsic=intrinsic))


def write_sekai_dataset(out_dir: Path, cfg: ProceduralWorldConfig | None = None) -> Path:
    """Render ``cfg.n_clips`` clips into ``out_dir`` in Sekai's layout (see the module docstring)."""
    cfg = cfg or ProceduralWorldConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    annotations, actions, clips = [], {"video_file": [], "frame": [], "keys": [], "mouse": []}, []
    for i in range(cfg.n_clips):
        clip = render_clip(i, cfg)
        write_clip(out_dir, clip, cfg)
        ann = _annotation(clip, cfg, i)
        per_frame, clip_row = _ground_truth(clip, ann, cfg)
        for k in actions:
            actions[k].extend(per_frame[k])
        annotations.append(ann)
        clips.append(clip_row)
    gt = out_dir / "ground_truth"
    _atomic_write(gt / "actions.parquet", lambda f: pq.write_table(pa.table(actions), f))
    _atomic_write(gt / "clips.parquet", lambda f: pq.write_table(pa.Table.from_pylist(clips, schema=CLIP_GT_SCHEMA), f))
    _atomic_write(out_dir / "annotations.csv", lambda f: _write_csv(f, annotations))
    return out_dir


CLIP_GT_SCHEMA = pa.schema([
    ("video_file", pa.string()), ("camera_file", pa.string()), ("scene", pa.string()), ("event", pa.string()),
    ("event_start_frame", pa.int64()), ("event_text", pa.string()), ("seed", pa.int64()), ("script", pa.string()),
])


def _write_csv(f, rows: list[dict]) -> None:
    import pandas as pd

    pd.DataFrame(rows).to_csv(f, index=False, encoding="utf-8")
