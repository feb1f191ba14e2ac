"""Per-clip work of `curate_real`: one Sekai clip -> manifest rows (one per action segment).

Bad input never stops the stage: each failure becomes one quarantined row with the reason, written as
``<category>: <detail>`` so that `yume manifest show` can count reasons. Categories:
``path_escape``, ``video_missing``, ``video_unreadable``, ``camera_missing``, ``camera_malformed``,
``trajectory_invalid``, ``frame_count_mismatch``, ``no_segment``.

Frame spans: a segment ``[start_frame, end_frame)`` lists the frames whose motion to the next frame
carries the label (transition i = frame i -> i+1), in frames of the clip.
"""

from __future__ import annotations

from pathlib import Path

from yume.config import CurateRealConfig
from yume.datasets.manifest import PathEscapeError, file_sha256, recordable_uri, resolve_uri, row_id
from yume.datasets.sekai import CameraFileError, SekaiClip, VideoError, load_camera, probe_video
from yume.tasks.actions import ActionConfig, TrajectoryError, trajectory_to_actions

STAGE = "curate_real"
ANNOTATION_COLUMNS = ("caption", "location", "scene", "crowdDensity", "weather", "timeOfDay")


class QuarantineError(Exception):
    """One clip cannot be curated; ``category`` names the reason class."""

    def __init__(self, category: str, detail: str):
        super().__init__(f"{category}: {detail}")
        self.category = category


def clip_fingerprint(clip: SekaiClip, root: Path) -> dict:
    """Cheap identity of a clip's inputs for cache keys: URIs, sizes, mtimes and its annotation row."""
    fp = {"video": clip.video_file, "camera": clip.camera_file, **{c: getattr(clip, c) for c in ANNOTATION_COLUMNS}}
    for name in ("video", "camera"):
        uri = fp[name]
        try:
            st = resolve_uri(root, uri).stat() if uri else None
            fp[f"{name}_stat"] = [st.st_size, st.st_mtime_ns] if st else None
        except (OSError, PathEscapeError):
            fp[f"{name}_stat"] = "missing"
    return fp


def clip_inputs(clip: SekaiClip, root: Path) -> tuple[Path, Path]:
    """The clip's video and camera files, resolved under ``root``; QuarantineError says why not."""
    try:
        video = resolve_uri(root, clip.video_file)
    except PathEscapeError as e:
        raise QuarantineError("path_escape", str(e)) from None
    if not video.is_file():
        raise QuarantineError("video_missing", f"video file {clip.video_file!r} does not exist")
    if not clip.camera_file:
        raise QuarantineError("camera_missing", "the annotation's cameraFile is empty")
    try:
        camera = resolve_uri(root, clip.camera_file)
    except PathEscapeError as e:
        raise QuarantineError("path_escape", str(e)) from None
    if not camera.is_file():
        raise QuarantineError("camera_missing", f"camera file {clip.camera_file!r} does not exist")
    return video, camera


def _label_clip(video: Path, camera: Path, actions: ActionConfig, settings: CurateRealConfig):
    try:
        n_frames, fps, _, _ = probe_video(video)
    except VideoError as e:
        raise QuarantineError("video_unreadable", str(e)) from None
    try:
        c2w, _ = load_camera(camera)
    except CameraFileError as e:
        raise QuarantineError("camera_malformed", str(e)) from None
    if abs(n_frames - len(c2w)) > settings.frame_count_tolerance:
        raise QuarantineError(
            "frame_count_mismatch", f"video has {n_frames} frames but the camera file has {len(c2w)} poses"
        )
    try:
        labels = trajectory_to_actions(c2w, actions, fps=fps)
    except TrajectoryError as e:
        raise QuarantineError("trajectory_invalid", str(e)) from None
    if not labels.segments:
        raise QuarantineError("no_segment", f"no action segment of at least {actions.min_segment_frames} frames")
    return labels, n_frames, fps


def curate_clip(
    clip: SekaiClip, root: Path, actions: ActionConfig, settings: CurateRealConfig, config_hash: str
) -> list[dict]:
    """Rows for one clip: a row per segment, or one quarantined row saying why there are none."""
    video_uri = recordable_uri(root, clip.video_file)
    common = {
        "stage": STAGE, "stage_version": settings.stage_version, "config_hash": config_hash,
        "video_uri": video_uri, "camera_uri": clip.camera_file or None, "label_mode": actions.mode,
        **{c: getattr(clip, c) for c in ANNOTATION_COLUMNS},
    }
    try:
        video, camera = clip_inputs(clip, root)
        content_hash = file_sha256(video, camera)
        labels, n_frames, fps = _label_clip(video, camera, actions, settings)
    except QuarantineError as e:
        return [_quarantined_row(common, root, clip, str(e))]
    rows = []
    for s in labels.segments:
        rows.append({
            **common,
            "id": row_id(video_uri, f"{s.start}-{s.end}"), "source_uri": video_uri, "content_hash": content_hash,
            "status": "ok", "error": None, "start_frame": s.start, "end_frame": s.end, "fps": fps,
            "num_frames": n_frames, "keys": s.keys, "mouse": s.mouse, "action_text": s.text, "speed": s.speed,
            "distance": s.distance, "turn_rate_deg": s.turn_rate_deg, "view_rotation_deg": s.view_rotation_deg,
        })
    return rows


def _existing_files(root: Path, uris: list[str | None]) -> list[Path]:
    out = []
    for uri in uris:
        try:
            path = resolve_uri(root, uri) if uri else None
        except PathEscapeError:
            continue
        if path is not None and path.is_file():
            out.append(path)
    return out


def _quarantined_row(common: dict, root: Path, clip: SekaiClip, error: str) -> dict:
    """One row saying why a clip produced no segments; hashes whatever input bytes exist."""
    paths = _existing_files(root, [clip.video_file, clip.camera_file])
    return {
        **common,
        "id": row_id(common["video_uri"], "clip"), "source_uri": common["video_uri"],
        "content_hash": file_sha256(*paths) if paths else "", "status": "quarantined", "error": error,
        "start_frame": None, "end_frame": None, "fps": None, "num_frames": None, "keys": None, "mouse": None,
        "action_text": None, "speed": None, "distance": None, "turn_rate_deg": None, "view_rotation_deg": None,
    }
