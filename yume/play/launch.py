"""From the command line's choices to a running `yume play` server."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .server import PlayConfig, PlayServer
from .session import PlayStart, ReplayCommand

log = logging.getLogger("yume.play")

# Latent history frames a play session keeps when the profile sets none (``sampler.max_history_frames``): the first
# frame, TSCM's tiers and a pooled overflow over the rest of this window. Memory and cost per chunk stay flat however
# long someone plays (with no cap every latent is kept: the pooled overflow averages all older frames).
DEFAULT_HISTORY_FRAMES = 256


def local_checkpoint(path: str | Path) -> Path:
    """The checkpoint must be an exported model directory on this machine (no URLs, no hub ids)."""
    text = str(path)
    if "://" in text:
        raise ValueError(f"--checkpoint {text!r}: a local directory is required, not a URL")
    p = Path(path).expanduser().resolve()
    if not p.is_dir():
        raise ValueError(f"--checkpoint {text!r}: no such directory (give an exported model directory such as "
                         "<workdir>/checkpoints/distill/final)")
    if not (p / "yume_model.json").is_file():
        raise ValueError(f"--checkpoint {text!r}: not an exported world model (no yume_model.json)")
    return p


def play_start(sampler, profile, image: str | None, prompt: str | None) -> PlayStart:
    """--image (resized to the model's size), --prompt, or by default a held-out world's first frame."""
    from yume.models.sampler import load_image

    h, w = sampler.train_size
    if image is not None and prompt is not None:
        raise ValueError("give at most one of --image and --prompt")
    if prompt is not None:
        return PlayStart(prompt=prompt, description=f"prompt {prompt!r}")
    if image is not None:
        return PlayStart(image=load_image(image, h, w), description=f"image {Path(image).name}")
    from yume.tasks.foundation_eval import held_out_first_frame

    frame = held_out_first_frame(profile)
    if frame.shape[:2] != (h, w):
        raise ValueError(f"the profile renders {frame.shape[1]}x{frame.shape[0]} but the checkpoint was trained at "
                         f"{w}x{h}: give --image or --prompt")
    return PlayStart(image=frame, description="held-out world 0, first frame")


def build_server(checkpoint: str | Path, profile, *, image: str | None = None, prompt: str | None = None,
                 cfg: PlayConfig | None = None, device: str = "cpu", sampler_sets: tuple[str, ...] = (),
                 explicit: dict | None = None, history_frames: int | None = DEFAULT_HISTORY_FRAMES) -> PlayServer:
    """Load the checkpoint once (its recorded schedule, the profile's ``sampler`` under it, ``explicit``
    over both: exactly what ``yume generate`` would use) and make the server. ``history_frames`` caps the
    history (``sampler.max_history_frames``) where neither the profile nor ``explicit`` does; the replay
    command then carries the same ``--set``."""
    from yume.models.sampler import WorldSampler

    explicit, sampler_sets = dict(explicit or {}), tuple(sampler_sets)
    if history_frames and "max_history_frames" not in explicit and profile.sampler.max_history_frames is None:
        explicit["max_history_frames"] = history_frames
        sampler_sets += (f"sampler.max_history_frames={history_frames}",)
    ckpt = local_checkpoint(checkpoint)
    cfg = cfg or PlayConfig(seed=profile.sampler.seed)
    if cfg.token is None and os.environ.get("YUME_PLAY_TOKEN"):
        cfg = cfg.model_copy(update={"token": os.environ["YUME_PLAY_TOKEN"]})
    cfg.check_binding()
    sampler = WorldSampler.from_checkpoint(ckpt, profile.sampler, device=device, explicit=explicit)
    start = play_start(sampler, profile, image, prompt)
    replay = ReplayCommand(str(ckpt), profile.name, tuple(sampler_sets), device)
    return PlayServer(cfg, sampler, start, replay, checkpoint_name=f"{ckpt.parent.name}/{ckpt.name}")


def play_url(cfg: PlayConfig, port: int | None = None) -> str:
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    url = f"http://{host}:{port or cfg.port}/"
    return url + ("?token=…" if cfg.token else "")


def play_command(profile, promoted: dict | None, candidate: str | Path) -> dict:
    """The ``yume play`` command for the promoted generator, or for the candidate when none is promoted
    (what ``yume demo`` prints at its end and the evaluate report shows)."""
    import shlex

    if promoted:
        path, what = promoted["path"], "the promoted generator"
    else:
        path, what = str(candidate), "the distilled candidate (not promoted)"
    argv = ["yume", "play", "--profile", profile.name, "--checkpoint", str(path)]
    return {"command": shlex.join(argv), "checkpoint": str(path), "what": what,
            "url": play_url(PlayConfig(seed=0))}
