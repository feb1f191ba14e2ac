"""One player's world: a ``ChunkStream`` driven one chunk at a time, and its recording.

A ``PlaySession`` is used by exactly one worker thread (the server's), so it holds no locks. Every chunk is
generated with the same code as ``yume generate`` (``WorldSampler.stream``), from the same start and seed,
so the recording's ``actions.json`` replays to the same frames: the zip carries the exact command.

The recording (frames since the start or the last reset) goes to a raw file in the session's own temporary
directory, not to memory, and stops growing at ``max_record_chunks`` (the download then says how many chunks
it covers); the directory is removed when the session closes.
"""

from __future__ import annotations

import io
import json
import shlex
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from yume.models.sampler import WorldSampler, write_mp4
from yume.models.tscm import history_token_count, plan_history


@dataclass(frozen=True)
class PlayStart:
    """Where every session (and every reset) starts: an image at the model's size (I2V) or a prompt (T2V)."""

    image: np.ndarray | None = None  # [H, W, 3] uint8
    prompt: str | None = None
    description: str = ""

    def __post_init__(self):
        if (self.image is None) == (self.prompt is None):
            raise ValueError("a play session starts from exactly one of an image or a prompt")


@dataclass(frozen=True)
class ReplayCommand:
    """The ``yume generate`` arguments that reproduce a session, less the start, seed, actions and output."""

    checkpoint: str
    profile: str
    sampler_sets: tuple[str, ...] = ()  # "sampler.steps=8" style --set values the server was started with
    device: str = "cpu"

    def argv(self, start: PlayStart, seed: int) -> list[str]:
        args = ["yume", "generate", "--profile", self.profile]
        for s in self.sampler_sets:
            args += ["--set", s]
        args += ["--checkpoint", self.checkpoint, "--device", self.device]
        args += ["--image", "start.png"] if start.image is not None else ["--prompt", start.prompt]
        return args + ["--seed", str(seed), "--actions", "actions.json", "--out", "replay.mp4"]


@dataclass
class ChunkResult:
    index: int  # chunk number since the start or last reset (0-based)
    frames: np.ndarray  # [T, H, W, 3] uint8
    keys: str
    mouse: str
    event: str | None
    generate_seconds: float
    history_frames: int  # latent frames the chunk was conditioned on
    history_tokens: int  # the temporal-spatial tokens TSCM made of them


@dataclass
class _Recording:
    directory: Path
    actions: list[dict] = field(default_factory=list)
    frame_count: int = 0
    full: bool = False

    @property
    def frames_path(self) -> Path:
        return self.directory / "frames.rgb"


class PlaySession:
    def __init__(self, sampler: WorldSampler, start: PlayStart, seed: int, replay: ReplayCommand,
                 max_record_chunks: int = 2000, tmp_root: str | Path | None = None):
        self.sampler = sampler
        self.start = start
        self.seed = seed
        self.replay = replay
        self.max_record_chunks = max_record_chunks
        self.height, self.width = (start.image.shape[:2] if start.image is not None else sampler.train_size)
        self._dir = Path(tempfile.mkdtemp(prefix="yume-play-", dir=tmp_root))
        self.reset()

    # ------------------------------------------------------------------------------------------ rollout

    def reset(self) -> None:
        """Back to the start: a fresh stream with the same seed, an empty recording."""
        images = None if self.start.image is None else self.start.image[None]
        self.stream = self.sampler.stream(images, self.height, self.width, seed=self.seed)
        self.recording = _Recording(self._dir)
        self.recording.frames_path.write_bytes(b"")
        if self.start.image is not None:
            self._record_frames(self.start.image[None])

    def history_tokens(self, frames: int) -> int:
        """Tokens the DiT's attention gets from ``frames`` latent history frames (what TSCM bounds)."""
        mc = self.sampler.model_cfg
        s = self.sampler.codec.spatial_factor
        return history_token_count(plan_history(frames, mc.tscm, mc.dit.patch_size), self.height // s, self.width // s)

    def step(self, keys: str, mouse: str, event: str | None) -> ChunkResult:
        """The next chunk for one action. ``event`` (or, for a prompt start, the prompt) is its text."""
        text = event or self.start.prompt
        history = self.stream.conditioning_history()
        frames_in = 0 if history is None else int(history.shape[2])
        t0 = time.perf_counter()
        frames = self.stream.step([(keys, mouse)], [text])[0]
        seconds = time.perf_counter() - t0
        rec = self.recording
        if not rec.full and len(rec.actions) < self.max_record_chunks:
            rec.actions.append({"keys": keys, "mouse": mouse, "event": event or None})
            self._record_frames(frames)
        else:
            rec.full = True
        return ChunkResult(self.stream.chunks - 1, frames, keys, mouse, event or None, seconds, frames_in,
                           self.history_tokens(frames_in))

    def _record_frames(self, frames: np.ndarray) -> None:
        with self.recording.frames_path.open("ab") as f:
            f.write(np.ascontiguousarray(frames, dtype=np.uint8).tobytes())
        self.recording.frame_count += len(frames)

    # ------------------------------------------------------------------------------------------ export

    def recorded_frames(self) -> np.ndarray:
        raw = np.fromfile(self.recording.frames_path, dtype=np.uint8)
        return raw.reshape(-1, self.height, self.width, 3)

    def recording_zip(self) -> tuple[bytes, dict]:
        """The session since its start or last reset: ``session.mp4``, ``actions.json`` (the JSON list
        ``yume generate --actions`` reads), ``start.png`` (image starts), ``replay.sh`` and ``session.json``."""
        import cv2

        rec = self.recording
        if not rec.actions:
            raise ValueError("nothing recorded yet: no chunk has been generated since the start or the last reset")
        mp4 = io.BytesIO()
        tmp = self._dir / "session.mp4"
        write_mp4(self.recorded_frames(), tmp, self.sampler.fps)
        argv = self.replay.argv(self.start, self.seed)
        info = {"chunks": len(rec.actions), "frames": rec.frame_count, "seed": self.seed, "fps": self.sampler.fps,
                "start": self.start.description, "recording_full": rec.full,
                "max_record_chunks": self.max_record_chunks, "replay": shlex.join(argv)}
        with zipfile.ZipFile(mp4, "w", zipfile.ZIP_DEFLATED) as z:
            z.write(tmp, "session.mp4")
            z.writestr("actions.json", json.dumps(rec.actions, indent=1, ensure_ascii=False) + "\n")
            if self.start.image is not None:
                ok, png = cv2.imencode(".png", cv2.cvtColor(self.start.image, cv2.COLOR_RGB2BGR))
                z.writestr("start.png", png.tobytes())
            z.writestr("replay.sh", "#!/bin/sh\n# Regenerates session.mp4 (same frames) from this folder.\n"
                       + shlex.join(argv) + "\n")
            z.writestr("session.json", json.dumps(info, indent=1, ensure_ascii=False) + "\n")
        tmp.unlink()
        return mp4.getvalue(), info

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)
