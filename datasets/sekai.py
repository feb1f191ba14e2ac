"""Reader for Sekai-format directories: the real Sekai-Real-Walking-HQ release and our procedural worlds.

A directory holds an annotation CSV with Sekai's columns (`videoFile`, `cameraFile`, `caption`,
`location`, `scene`, `crowdDensity`, `weather`, `timeOfDay`), the clips and the camera files.
Paths in the CSV are taken relative to the directory. Real Sekai CSVs list bare file names; when a bare
name is not found at the top level it is looked up in ``videos/`` (or ``cameras/``) and the URI
rewritten to that sub-directory, so both layouts read the same way.

Reading the CSV never fails because of one bad row: a row pointing at a missing or escaping file is
returned as is, and the curation stage quarantines it with its reason. Only a CSV that cannot be read
at all, or that lacks Sekai's columns, raises `AnnotationError`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

SEKAI_COLUMNS = ("videoFile", "cameraFile", "caption", "location", "scene", "crowdDensity", "weather", "timeOfDay")
DEFAULT_CSV_NAMES = ("annotations.csv",)


class SekaiError(Exception):
    """Base class of the reader's errors."""


class AnnotationError(SekaiError):
    """The annotation CSV is missing, unreadable or lacks required columns."""


class CameraFileError(SekaiError):
    """A camera file is unreadable, lacks `extrinsic`, or holds arrays of the wrong shape."""


class VideoError(SekaiError):
    """A video cannot be opened or decoded to its last frame (corrupt or truncated)."""


@dataclass(frozen=True)
class SekaiClip:
    """One annotation row. ``video_file``/``camera_file`` are URIs relative to the data root
    (``camera_file`` is "" when the CSV leaves it empty)."""

    video_file: str
    camera_file: str
    caption: str
    location: str
    scene: str
    crowdDensity: str  # noqa: N815 - Sekai's column name
    weather: str
    timeOfDay: str  # noqa: N815 - Sekai's column name


def find_annotation_csv(root: Path) -> Path:
    """``root/annotations.csv``, else the only ``*.csv`` at the top of ``root``."""
    root = Path(root)
    for name in DEFAULT_CSV_NAMES:
        if (root / name).is_file():
            return root / name
    csvs = sorted(root.glob("*.csv"))
    if len(csvs) == 1:
        return csvs[0]
    if not csvs:
        raise AnnotationError(f"no annotation CSV in {root}")
    raise AnnotationError(f"several CSVs in {root} ({', '.join(p.name for p in csvs)}); name one annotations.csv")


def _locate(root: Path, uri: str, subdir: str) -> str:
    """Map a bare Sekai file name to ``subdir/name`` when only that exists; otherwise keep ``uri``."""
    if not uri or "/" in uri or "\\" in uri or (root / uri).exists():
        return uri
    return f"{subdir}/{uri}" if (root / subdir / uri).exists() else uri


def read_annotations(root: Path, csv_path: Path | None = None) -> list[SekaiClip]:
    """All rows of the annotation CSV as `SekaiClip`s, in file order. Empty cells read as ""."""
    root = Path(root)
    csv_path = Path(csv_path) if csv_path else find_annotation_csv(root)
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise AnnotationError(f"cannot read annotation CSV {csv_path}: {e}") from e
    missing = [c for c in SEKAI_COLUMNS if c not in df.columns]
    if missing:
        raise AnnotationError(f"annotation CSV {csv_path} lacks Sekai columns: {', '.join(missing)}")
    clips = []
    for row in df[list(SEKAI_COLUMNS)].itertuples(index=False):
        values = dict(zip(SEKAI_COLUMNS, (str(v).strip() for v in row)))
        clips.append(SekaiClip(
            video_file=_locate(root, values.pop("videoFile"), "videos"),
            camera_file=_locate(root, values.pop("cameraFile"), "cameras"),
            **values,
        ))
    return clips


def load_camera(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(extrinsic (N,4,4) float64 camera-to-world, intrinsic or None) from a Sekai ``.npz`` or a ``.npy``.

    Shapes are checked here; values (NaN, non-rigid rotations) are checked by the action conversion.
    Pickled object arrays are refused (``allow_pickle=False``).
    """
    path = Path(path)
    if not path.is_file():
        raise CameraFileError(f"camera file {path} does not exist")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                if "extrinsic" not in loaded.files:
                    raise CameraFileError(f"{path.name} has no 'extrinsic' array (keys: {', '.join(loaded.files) or 'none'})")
                extrinsic = loaded["extrinsic"]
                intrinsic = loaded["intrinsic"] if "intrinsic" in loaded.files else None
        else:
            extrinsic, intrinsic = loaded, None
    except CameraFileError:
        raise
    except Exception as e:  # noqa: BLE001 - numpy raises many types for corrupt files
        raise CameraFileError(f"cannot read camera file {path.name}: {type(e).__name__}: {e}") from e
    if extrinsic.ndim != 3 or extrinsic.shape[1:] != (4, 4):
        raise CameraFileError(f"{path.name}: extrinsic must have shape (N,4,4), got {extrinsic.shape}")
    if len(extrinsic) == 0:
        raise CameraFileError(f"{path.name}: extrinsic is empty")
    if not np.issubdtype(extrinsic.dtype, np.number):
        raise CameraFileError(f"{path.name}: extrinsic must be numeric, got {extrinsic.dtype}")
    if intrinsic is not None and intrinsic.shape[-2:] != (3, 3):
        raise CameraFileError(f"{path.name}: intrinsic must be (3,3) or (N,3,3), got {intrinsic.shape}")
    return extrinsic.astype(np.float64), intrinsic


def probe_video(path: Path) -> tuple[int, float, int, int]:
    """(frames, fps, height, width) of a video, after decoding its last frame (catches truncation).

    decord first (the training loaders' decoder); PyAV as the fallback for containers or codecs the
    decord build cannot open. Either way an unreadable file raises `VideoError`.
    """
    try:
        return _probe_decord(Path(path))
    except Exception as first:  # noqa: BLE001 - decord raises its own untyped errors
        try:
            info = _probe_pyav(Path(path))
        except Exception as second:  # noqa: BLE001
            raise VideoError(f"cannot decode {Path(path).name}: decord: {first}; PyAV: {second}") from second
        log.warning("decord could not read %s (%s); read it with PyAV", path, first)
        return info


def _probe_decord(path: Path) -> tuple[int, float, int, int]:
    import decord

    vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    n = len(vr)
    if n == 0:
        raise VideoError("no frames")
    last = vr[n - 1].asnumpy()
    return n, float(vr.get_avg_fps()), int(last.shape[0]), int(last.shape[1])


def _probe_pyav(path: Path) -> tuple[int, float, int, int]:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        declared = stream.frames
        n, shape = 0, None
        for frame in container.decode(stream):
            n += 1
            shape = (frame.height, frame.width)
        fps = float(stream.average_rate or 0)
    if n == 0 or shape is None:
        raise VideoError("no decodable frames")
    if declared and n != declared:
        raise VideoError(f"truncated: the container declares {declared} frames but {n} decode")
    return n, fps, shape[0], shape[1]


def read_frames(path: Path, indices: list[int] | np.ndarray) -> np.ndarray:
    """Frames ``indices`` of a video as (K, H, W, 3) uint8 RGB.

    decord first; PyAV when decord fails (decord 0.6's ``get_batch`` rejects some frame widths, e.g. 48).
    """
    idx = [int(i) for i in indices]
    n = probe_video(path)[0]
    if idx and (min(idx) < 0 or max(idx) >= n):
        raise VideoError(f"frame indices {min(idx)}..{max(idx)} outside 0..{n - 1} of {Path(path).name}")
    try:
        import decord

        vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        return vr.get_batch(idx).asnumpy()
    except Exception as first:  # noqa: BLE001 - decord raises its own untyped errors
        try:
            return _read_frames_pyav(Path(path), idx)
        except Exception as second:  # noqa: BLE001
            raise VideoError(f"cannot read frames of {Path(path).name}: decord: {first}; PyAV: {second}") from second


def _read_frames_pyav(path: Path, idx: list[int]) -> np.ndarray:
    import av

    wanted, found = set(idx), {}
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                found[i] = frame.to_ndarray(format="rgb24")
            if i >= max(idx, default=-1):
                break
    return np.stack([found[i] for i in idx]) if idx else np.zeros((0, 0, 0, 3), np.uint8)
