"""Chunked autoregressive generation with the world model (REFERENCE.md sections 6-7).

``WorldSampler.generate`` makes a video chunk by chunk: each chunk of ``chunk`` latent frames is denoised
from noise conditioned on one (keys, mouse) action and the event text of that chunk, with everything
generated so far as its history (TSCM compresses it, so a chunk's cost stays flat). Starts:

- I2V: an image, encoded and tiled into ``still_image_frames`` clean history frames (Yume: the image plus 16
  copies = 17 frames -> 5 Wan2.2 latents; the patch codec tiles the image's latent);
- T2V: a prompt; the first chunk has no history.

Schedules: ``euler`` (N Euler steps over the shifted grid t_i = shift(1 - i/N)) and ``renoise`` (the few-step
schedule: at each warped timestep of ``renoise_timesteps``, e.g. [1000, 750, 500, 250] -> shift 7
[1000, 954.5, 875, 700], predict x0 and re-noise it with fresh noise to the next level; the last x0 is the
chunk). Classifier-free guidance ``v_u + g (v_c - v_u)`` against the empty-text embedding when ``guidance``
!= 1 (training drops conditions to it). Action embeddings come from the ``ActionEmbeddingCache`` (never
re-encoded per chunk); event texts are encoded once each. Chunks are decoded with ``decode_overlap``
latent frames of context before them (the Wan VAE's causal decoder then has no seam).

Action syntax (``parse_actions``, the ``--actions`` of ``yume generate``): one ``KEYS:MOUSE`` per chunk,
separated by commas, semicolons or new lines; ``*N`` repeats a chunk N times. KEYS: ``None``/``-``, ``W``,
``S``, ``A``, ``D``, ``W+A`` (or ``WA``), ``W+D``, ``S+A``, ``S+D``. MOUSE: ``·`` (or ``.``, ``-``, ``none``),
``→`` (``>``, ``right``), ``←`` (``<``, ``left``), ``↑`` (``^``, ``up``), ``↓`` (``v``, ``down``) and pairs such
as ``↑→`` (``^>``). A file holds the same text, or a JSON list of ``{"keys", "mouse", "event"?}`` objects
(per-chunk event text).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import ModelConfig
from .foundation import shift_t, velocity_from_output
from .train_config import SamplerConfig

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------- actions

_KEY_ALIASES = {"none": "None", "-": "None", "0": "None", "·": "None", ".": "None", "wa": "W+A", "wd": "W+D",
                "sa": "S+A", "sd": "S+D", "w": "W", "s": "S", "a": "A", "d": "D"}
_MOUSE_PARTS = {"↑": "↑", "^": "↑", "up": "↑", "↓": "↓", "v": "↓", "down": "↓", "→": "→", ">": "→", "->": "→",
                "right": "→", "←": "←", "<": "←", "<-": "←", "left": "←"}
_MOUSE_NONE = {"·", ".", "-", "none", "", "0"}


@dataclass(frozen=True)
class ChunkAction:
    keys: str
    mouse: str
    event: str | None = None


def parse_keys(tok: str) -> str:
    from yume.tasks.action_text import KEY_LABELS

    t = tok.strip()
    if t in KEY_LABELS:
        return t
    k = _KEY_ALIASES.get(t.lower().replace("+", ""))
    if k is None:
        raise ValueError(f"unknown key label {tok!r}; use one of {list(KEY_LABELS)}")
    return k


def parse_mouse(tok: str) -> str:
    from yume.tasks.action_text import MOUSE_LABELS

    t = tok.strip()
    if t in MOUSE_LABELS:
        return t
    if t.lower() in _MOUSE_NONE:
        return "·"
    parts, rest = [], t.lower()
    for word in ("right", "left", "up", "down", "->", "<-"):
        rest = rest.replace(word, f" {word} ")
    for piece in rest.split():
        if piece in _MOUSE_PARTS:
            parts.append(_MOUSE_PARTS[piece])
        else:
            parts.extend(_MOUSE_PARTS.get(ch, "?") for ch in piece)
    pitch = [p for p in parts if p in "↑↓"]
    yaw = [p for p in parts if p in "→←"]
    if "?" in parts or len(pitch) > 1 or len(yaw) > 1 or not parts:
        raise ValueError(f"unknown mouse label {tok!r}; use one of {list(MOUSE_LABELS)} (or ^ v < > . aliases)")
    label = "".join(pitch + yaw)
    if label not in MOUSE_LABELS:
        raise ValueError(f"unknown mouse label {tok!r}")
    return label


def parse_actions(spec: str) -> list[ChunkAction]:
    """Inline ``"W:→,W+A:·*2"`` or a path to a file with the same text or a JSON list (module docstring)."""
    p = Path(spec)
    text = spec
    if len(spec) < 4096 and p.suffix in (".txt", ".json", ".actions", "") and p.is_file():
        text = p.read_text()
    stripped = text.strip()
    if stripped.startswith("["):
        items = json.loads(stripped)
        return [ChunkAction(parse_keys(str(it["keys"])), parse_mouse(str(it["mouse"])), it.get("event"))
                for it in items]
    out = []
    for raw in stripped.replace(";", ",").replace("\n", ",").split(","):
        tok = raw.strip()
        if not tok or tok.startswith("#"):
            continue
        repeat = 1
        if "*" in tok:
            tok, n = tok.rsplit("*", 1)
            repeat = int(n)
        if ":" not in tok:
            raise ValueError(f"chunk {raw.strip()!r}: expected KEYS:MOUSE")
        k, m = tok.split(":", 1)
        out += [ChunkAction(parse_keys(k), parse_mouse(m))] * repeat
    if not out:
        raise ValueError("no actions given")
    return out


# ------------------------------------------------------------------------------------------- schedules


def euler_grid(steps: int, shift: float) -> list[float]:
    """t from 1 to 0 in ``steps`` Euler steps on the shifted grid."""
    u = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return [float(x) for x in shift_t(u, shift)]


def renoise_grid(timesteps: list[float], shift: float) -> list[float]:
    """Few-step levels: ``timesteps`` (of 1000) warped by the shift, as t in (0, 1]."""
    u = torch.tensor(timesteps, dtype=torch.float64) / 1000.0
    return [float(x) for x in shift_t(u, shift)]


# ------------------------------------------------------------------------------------------- schedule

# The sampling schedule a checkpoint records in its yume_model.json (``sampler``): a distilled generator its
# few-step re-noise schedule without guidance, a foundation export the Euler schedule it was trained to use.
SCHEDULE_FIELDS = ("schedule", "steps", "shift", "guidance", "renoise_timesteps")


def resolve_schedule(recorded: dict | None, base: SamplerConfig | None = None, explicit: dict | None = None,
                     base_source: str = "profile (the checkpoint records none)") -> tuple[SamplerConfig, str]:
    """The schedule to sample a checkpoint with, and the one-line log that says it and where it came from.

    ``base`` (the profile's ``sampler`` section) gives every field; the checkpoint's ``recorded`` schedule
    replaces its schedule fields; ``explicit`` fields (a user's ``--set sampler.*``) win over both."""
    base = base or SamplerConfig()
    rec = {k: v for k, v in (recorded or {}).items() if k in SCHEDULE_FIELDS and v is not None}
    if rec.get("schedule") == "renoise" and "renoise_timesteps" in rec:
        rec["steps"] = len(rec["renoise_timesteps"])
    explicit = dict(explicit or {})
    cfg = SamplerConfig.model_validate({**base.model_dump(), **rec, **explicit})
    steps = len(cfg.renoise_timesteps) if cfg.schedule == "renoise" else cfg.steps
    source = "checkpoint" if rec else base_source
    over = sorted(k for k in explicit if k in SCHEDULE_FIELDS)
    if over:
        source += "; override: " + ", ".join(over)
    line = f"schedule: {cfg.schedule}, {steps} steps, shift {cfg.shift:g}, guidance {cfg.guidance:g} (from {source})"
    return cfg, line


# ------------------------------------------------------------------------------------------- sampler


class WorldSampler:
    def __init__(self, model, model_cfg: ModelConfig, codec, conditioner, cfg: SamplerConfig | None = None, *,
                 prediction: str = "velocity", x0_t_min: float = 0.1, chunk: int | None = None,
                 still_image_frames: int = 5, fps: float = 16.0, device: str | torch.device = "cpu",
                 train_size: tuple[int, int] = (32, 32)):
        self.model = model.eval().to(device)
        self.model_cfg = model_cfg
        self.codec = codec
        self.conditioner = conditioner
        self.cfg = cfg or SamplerConfig()
        self.prediction = prediction
        self.x0_t_min = x0_t_min
        self.chunk = chunk or model_cfg.chunk_frames
        self.still_image_frames = self.cfg.still_image_frames or still_image_frames
        self.fps = self.cfg.fps or fps
        self.train_size = tuple(train_size)  # (height, width) the model was trained at: T2V's and I2V's size
        self.device = torch.device(device)
        self.forward_calls = 0
        self.schedule_line = ""

    # ---------------------------------------------------------------------------------- loading

    @classmethod
    def from_checkpoint(cls, path: str | Path, cfg: SamplerConfig | None = None, device: str = "cpu",
                        text_cache_dir: str | Path | None = None, prefer_ema: bool = True,
                        use_recorded: bool = True, explicit: dict | None = None) -> "WorldSampler":
        """From an exported directory (``final/``: config.json + weights + yume_model.json) or a training
        checkpoint file (``.safetensors`` written by SafeCheckpointIO).

        Schedule (``resolve_schedule``): ``cfg`` (default ``SamplerConfig()``) with the checkpoint's recorded
        schedule over it (``use_recorded``), then the ``explicit`` fields; logged as one ``schedule:`` line.
        ``use_recorded=False`` samples with ``cfg`` exactly (evaluate's candidates)."""
        from yume.models.codecs import build_codec
        from yume.models.text import TextConditioner, TextEncoder
        from yume.models.train_config import TrainConfig
        from yume.models.wan_dit import WanDiT

        p = Path(path)
        if p.is_dir():
            meta = json.loads((p / "yume_model.json").read_text())
            model_cfg = ModelConfig.model_validate(meta["model_config"])
            model = WanDiT.from_pretrained(p, tscm=model_cfg.tscm)
        else:
            from yume.tasks.train_foundation import state_from_checkpoint

            state, meta = state_from_checkpoint(p, prefer_ema)
            model_cfg = ModelConfig.model_validate(meta["model_config"])
            model = WanDiT.from_config(model_cfg)
            model.load_state_dict(state)
        tcfg = TrainConfig.model_validate(meta.get("train_config", {}))
        if use_recorded:
            cfg, line = resolve_schedule(meta.get("sampler"), cfg, explicit)
        else:
            cfg, line = resolve_schedule(None, cfg, explicit, base_source="the caller's configuration")
        log.info("%s", line)
        encoder = TextEncoder.from_config(model_cfg.text)
        if meta.get("encoder_id") and meta["encoder_id"] != encoder.encoder_id:
            log.warning("text encoder %s differs from the one the model was trained with (%s)", encoder.encoder_id,
                        meta["encoder_id"])
        conditioner = TextConditioner(encoder, model_cfg.text, text_cache_dir)
        sampler = cls(model, model_cfg, build_codec(model_cfg.codec), conditioner, cfg, prediction=tcfg.prediction,
                      x0_t_min=tcfg.x0_t_min, chunk=tcfg.chunk_frames or model_cfg.chunk_frames,
                      still_image_frames=tcfg.still_image_frames, fps=tcfg.fps, device=device,
                      train_size=(tcfg.height, tcfg.width))
        sampler.schedule_line = line
        return sampler

    # ---------------------------------------------------------------------------------- pieces

    def timesteps(self) -> list[float]:
        if self.cfg.schedule == "euler":
            return euler_grid(self.cfg.steps, self.cfg.shift)
        return renoise_grid(self.cfg.renoise_timesteps, self.cfg.shift)

    def text(self, actions: list[tuple[str, str] | None], events: list[str | None]) -> torch.Tensor:
        return self.conditioner(list(actions), [e or "" for e in events]).to(self.device)

    def empty_text(self, batch: int) -> torch.Tensor:
        return self.conditioner([None] * batch, [""] * batch).to(self.device)

    @torch.no_grad()
    def velocity(self, x: torch.Tensor, t: float, text: torch.Tensor, uncond: torch.Tensor | None,
                 history: torch.Tensor | None, guidance: float) -> torch.Tensor:
        b = x.shape[0]
        tt = torch.full((b,), float(t), device=x.device)
        if guidance != 1.0 and uncond is not None:
            hist2 = torch.cat([history, history]) if history is not None else None
            out = self.model(torch.cat([x, x]), torch.cat([tt, tt]) * 1000, torch.cat([text, uncond]), hist2)
            self.forward_calls += 1
            v = velocity_from_output(out.float(), torch.cat([x, x]), torch.cat([tt, tt]), self.prediction, self.x0_t_min)
            vc, vu = v[:b], v[b:]
            return vu + guidance * (vc - vu)
        out = self.model(x, tt * 1000, text, history)
        self.forward_calls += 1
        return velocity_from_output(out.float(), x, tt, self.prediction, self.x0_t_min)

    @torch.no_grad()
    def denoise(self, shape: tuple, text: torch.Tensor, history: torch.Tensor | None, generator: torch.Generator,
                uncond: torch.Tensor | None = None, guidance: float | None = None) -> torch.Tensor:
        """One chunk's clean latents [B, C, chunk, h, w]."""
        g = self.cfg.guidance if guidance is None else guidance
        if g != 1.0 and uncond is None:
            uncond = self.empty_text(shape[0])
        x = torch.randn(shape, generator=generator, device=self.device)
        ts = self.timesteps()
        if self.cfg.schedule == "euler":
            for t0, t1 in zip(ts[:-1], ts[1:]):
                v = self.velocity(x, t0, text, uncond, history, g)
                x = x + (t1 - t0) * v
            return x
        for i, t0 in enumerate(ts):
            v = self.velocity(x, t0, text, uncond, history, g)
            x0 = x - t0 * v
            if i + 1 == len(ts):
                return x0
            t1 = ts[i + 1]
            x = (1 - t1) * x0 + t1 * torch.randn(shape, generator=generator, device=self.device)
        return x

    def encode_frames(self, frames: np.ndarray) -> torch.Tensor:
        """[B, T, H, W, 3] uint8 -> latents [B, C, F, h, w]."""
        v = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 4, 1, 2, 3).float().div(127.5).sub(1)
        return self.codec.encode(v.to(self.device)).float()

    def image_history(self, images: np.ndarray) -> torch.Tensor:
        """[B, H, W, 3] uint8 images -> tiled clean history latents [B, C, still_image_frames, h, w]."""
        n = self.still_image_frames
        if self.codec.temporal_factor == 1:
            z = self.encode_frames(images[:, None])
            return z.expand(-1, -1, n, -1, -1).contiguous()
        frames = np.repeat(images[:, None], self.codec.pixel_frames(n), axis=1)
        return self.encode_frames(frames)

    def decode_chunk(self, prev: torch.Tensor | None, chunk: torch.Tensor) -> np.ndarray:
        """[B, C, L, h, w] -> [B, T, H, W, 3] uint8, decoded with ``decode_overlap`` frames of context."""
        ov = self.cfg.decode_overlap if prev is not None else 0
        z = torch.cat([prev[:, :, -ov:], chunk], 2) if ov else chunk
        with torch.no_grad():
            video = self.codec.decode(z.float())
        tf = self.codec.temporal_factor
        keep = chunk.shape[2] * tf if ov else video.shape[2]
        video = video[:, :, -keep:]
        return ((video.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 4, 1).cpu().numpy()

    def latent_shape(self, batch: int, height: int, width: int) -> tuple:
        s = self.codec.spatial_factor
        return (batch, self.model_cfg.dit.in_channels, self.chunk, height // s, width // s)

    # ---------------------------------------------------------------------------------- generation

    def stream(self, images: np.ndarray | None = None, height: int | None = None, width: int | None = None,
               seed: int | None = None, guidance: float | None = None, batch: int = 1) -> "ChunkStream":
        """A rollout made one chunk at a time (``ChunkStream.step``): what ``generate`` loops over and what
        ``yume play`` drives live, so a live session and ``generate`` make the same frames from the same seed."""
        return ChunkStream(self, images, height, width, seed, guidance, batch)

    @torch.no_grad()
    def generate(self, actions: list[list[tuple[str, str]]], images: np.ndarray | None = None,
                 events: list[list[str | None]] | list[str | None] | None = None, height: int | None = None,
                 width: int | None = None, seed: int | None = None, guidance: float | None = None,
                 return_latents: bool = False):
        """Videos for a batch: ``actions[b][c]`` per clip and chunk; ``images`` [B, H, W, 3] (I2V) or None (T2V,
        then ``height``/``width`` are required and ``events`` should describe the scene). Returns uint8
        [B, T, H, W, 3], the I2V image first."""
        n_chunks = len(actions[0])
        if any(len(a) != n_chunks for a in actions):
            raise ValueError("every clip needs the same number of chunks")
        if events is None:
            ev = [[None] * n_chunks for _ in actions]
        elif events and not isinstance(events[0], (list, tuple)):
            ev = [[e] * n_chunks for e in events]
        else:
            ev = [list(e) for e in events]
        stream = self.stream(images, height, width, seed, guidance, batch=len(actions))
        frames = [] if images is None else [np.asarray(images)[:, None]]
        for c in range(n_chunks):
            frames.append(stream.step([a[c] for a in actions], [e[c] for e in ev]))
        video = np.concatenate(frames, axis=1)
        return (video, stream.history) if return_latents else video

    @torch.no_grad()
    def next_chunk(self, history_frames: np.ndarray, actions: list[tuple[str, str]], events: list[str | None] | None = None,
                   seed: int = 0, guidance: float | None = None, use_actions: bool = True) -> np.ndarray:
        """One chunk after given (ground-truth) history frames [B, T, H, W, 3]: teacher-forced evaluation. A
        single history frame is treated as an I2V image (tiled). ``use_actions=False``: the empty-text branch."""
        b = len(actions)
        if history_frames.shape[1] == 1:
            hist = self.image_history(history_frames[:, 0])
        else:
            hist = self.encode_frames(history_frames)
        if self.cfg.max_history_frames and hist.shape[2] > self.cfg.max_history_frames:
            keep = self.cfg.max_history_frames
            hist = torch.cat([hist[:, :, :1], hist[:, :, -(keep - 1):]], 2)
        text = (self.text(actions, events or [None] * b) if use_actions else self.empty_text(b))
        g = torch.Generator(device=self.device).manual_seed(seed)
        shape = self.latent_shape(b, *history_frames.shape[2:4])
        z = self.denoise(shape, text, hist, g, guidance=guidance if use_actions else 1.0)
        return self.decode_chunk(hist, z)



class ChunkStream:
    """One rollout's state between chunks: the seeded generator, the clean history latents (TSCM compresses
    them inside the model, so a chunk's cost stays flat) and the empty-text embedding for guidance.

    I2V starts from ``images`` [B, H, W, 3] (tiled into clean history frames); T2V from nothing at
    ``height`` x ``width`` (``batch`` clips). ``step`` denoises and decodes the next chunk for one action (and event text) per
    clip.

    Memory: TSCM bounds what the model attends to, but its pooled overflow averages every older frame, so with
    ``max_history_frames`` unset all history latents are kept (48 KB per chunk at the tiny size; a long session
    grows without bound). With it set, only the first frame and the newest frames the cut or the decoder's overlap
    can still use are kept: memory and cost per chunk are then flat, and the frames are the same as keeping all."""

    def __init__(self, sampler: WorldSampler, images: np.ndarray | None, height: int | None, width: int | None,
                 seed: int | None, guidance: float | None, batch: int = 1):
        self.sampler = sampler
        self.guidance = sampler.cfg.guidance if guidance is None else guidance
        self.generator = torch.Generator(device=sampler.device).manual_seed(sampler.cfg.seed if seed is None else seed)
        if images is not None:
            images = np.asarray(images)
            self.batch, height, width = images.shape[0], images.shape[1], images.shape[2]
            self.history = sampler.image_history(images)
        else:
            if height is None or width is None:
                raise ValueError("T2V needs height and width")
            self.batch, self.history = batch, None
        self.height, self.width = height, width
        self.chunks = 0
        self._frames_made = 0 if self.history is None else int(self.history.shape[2])
        self._uncond = None

    @property
    def history_frames(self) -> int:
        """Latent frames made so far, start frames included (before any ``max_history_frames`` cut)."""
        return self._frames_made

    def conditioning_history(self) -> torch.Tensor | None:
        """The history the model sees: all of it, or the first frame plus the newest ``max_history_frames`` - 1."""
        hist, keep = self.history, self.sampler.cfg.max_history_frames
        if hist is not None and keep and hist.shape[2] > keep:
            hist = torch.cat([hist[:, :, :1], hist[:, :, -(keep - 1):]], 2) if keep > 1 else hist[:, :, -1:]
        return hist

    @torch.no_grad()
    def step(self, actions: list[tuple[str, str] | None], events: list[str | None] | None = None) -> np.ndarray:
        """The next chunk's frames [B, T, H, W, 3] uint8 for one (keys, mouse) action per clip."""
        s = self.sampler
        if len(actions) != self.batch:
            raise ValueError(f"{len(actions)} actions for a batch of {self.batch}")
        text = s.text(list(actions), list(events or [None] * self.batch))
        if self.guidance != 1.0 and self._uncond is None:
            self._uncond = s.empty_text(self.batch)
        shape = s.latent_shape(self.batch, self.height, self.width)
        z = s.denoise(shape, text, self.conditioning_history(), self.generator, self._uncond, self.guidance)
        frames = s.decode_chunk(self.history, z)
        self.history = z if self.history is None else torch.cat([self.history, z], 2)
        self._frames_made += int(z.shape[2])
        self._drop_unreachable_history()
        self.chunks += 1
        return frames

    def _drop_unreachable_history(self) -> None:
        """Keep the first frame and the newest ``max(max_history_frames - 1, decode_overlap, 1)``: no later chunk
        can read the frames between (``conditioning_history`` and ``decode_chunk`` are the only readers)."""
        keep = self.sampler.cfg.max_history_frames
        if not keep:
            return
        tail = max(keep - 1, self.sampler.cfg.decode_overlap, 1)
        if self.history.shape[2] > 1 + tail:
            self.history = torch.cat([self.history[:, :, :1], self.history[:, :, -tail:]], 2)

def write_mp4(frames: np.ndarray, path: str | Path, fps: float, crf: int = 18) -> Path:
    """(T, H, W, 3) uint8 -> H.264 mp4 (even sizes are padded by edge replication)."""
    from yume.datasets.procedural import encode_h264

    h, w = frames.shape[1:3]
    if h % 2 or w % 2:
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_h264(frames, int(round(fps)), crf))
    return path


def load_image(path: str | Path, height: int, width: int) -> np.ndarray:
    """An RGB image resized (centre crop + area) to the model's resolution, uint8 [H, W, 3]."""
    import cv2

    from yume.datasets.training_set import resize_frames

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"cannot read image {path}")
    return resize_frames(cv2.cvtColor(img, cv2.COLOR_BGR2RGB)[None], height, width)[0]


def generate_to_mp4(checkpoint: str | Path, actions: list[ChunkAction], out: str | Path, *,
                    image: str | Path | None = None, prompt: str | None = None, cfg: SamplerConfig | None = None,
                    seed: int | None = None, explicit: dict | None = None, device: str = "cpu",
                    label_metric=None) -> dict:
    """What ``yume generate`` does: one video from an image (I2V) or a prompt (T2V), one action per chunk.
    A chunk's own ``event`` text replaces the prompt for that chunk. T2V renders at the training resolution.
    The checkpoint's recorded schedule is the default; ``explicit`` sampler fields override it.
    ``label_metric`` (an ``IFMetricConfig``): also label each generated chunk's motion with the
    instruction-following metric (``labels``: commanded and measured per chunk; I2V: every chunk has the frame
    before it as anchor; T2V: the first chunk has none and is not labelled)."""
    if (image is None) == (prompt is None):
        raise ValueError("give exactly one of an image (I2V) or a prompt (T2V)")
    sampler = WorldSampler.from_checkpoint(checkpoint, cfg, device=device, explicit=explicit)
    acts = [[(a.keys, a.mouse) for a in actions]]
    events = [[a.event or prompt for a in actions]]
    height, width = sampler.train_size
    if image is not None:
        video = sampler.generate(acts, images=load_image(image, height, width)[None], events=events, seed=seed)
    else:
        video = sampler.generate(acts, events=events, height=height, width=width, seed=seed)
    write_mp4(video[0], out, sampler.fps)
    result = {"out": str(out), "frames": int(video.shape[1]), "height": height, "width": width,
              "chunks": len(actions), "fps": sampler.fps, "forward_calls": sampler.forward_calls,
              "schedule": sampler.schedule_line}
    if label_metric is not None:
        result["labels"] = chunk_labels(video[0], actions, sampler.chunk * sampler.codec.temporal_factor,
                                        label_metric, first_chunk_start=1 if image is not None else None)
        result["correct_chunks"] = sum(r["correct"] for r in result["labels"])
    return result


def chunk_labels(video: np.ndarray, actions: list[ChunkAction], chunk_len: int, metric, first_chunk_start: int | None
                 ) -> list[dict]:
    """Per chunk: the commanded (keys, mouse), the metric's measured label and whether both match."""
    from yume.tasks.instruction_following import label_chunks

    # I2V: frame 0 is the image, chunk c starts at 1 + c L. T2V: chunk 0 is frames [0, L) with no anchor before
    # it, so labelling starts at chunk 1 (frame L, anchored by frame L - 1).
    i2v = first_chunk_start is not None
    first, skip = (first_chunk_start, 0) if i2v else (chunk_len, 1)
    measured = label_chunks(video, chunk_len, metric, first_chunk_start=first)
    out = []
    for c, (a, m) in enumerate(zip(actions[skip:], measured), start=skip):
        out.append({"chunk": c, "commanded": f"{a.keys}:{a.mouse}", "measured": f"{m[0]}:{m[1]}",
                    "correct": bool((a.keys, a.mouse) == tuple(m))})
    return out


def chunk_pixel_frames(codec, chunk: int) -> int:
    return chunk * codec.temporal_factor


__all__ = ["WorldSampler", "ChunkStream", "generate_to_mp4", "parse_actions", "ChunkAction", "write_mp4", "load_image", "euler_grid", "renoise_grid"]
