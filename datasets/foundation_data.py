"""Training samples for the foundation model: a step-indexed torch Dataset and its LightningDataModule.

A sample is a target chunk of ``chunk`` latent frames plus (I2V) a history of the latent frames right before
it in the parent clip. Everything about a sample is a pure function of ``(seed, global index)``, and a global
index is ``(step * world_size + rank) * batch_size + j``; so sampling is deterministic per seed, identical
whatever the number of DataLoader workers, and resuming at step ``s`` needs nothing but ``s`` (the sampler
state saved in checkpoints).

Per step (shared by the whole batch, all ranks): the mode (I2V with history or T2V without; ``i2v_fraction``
of the steps are I2V, spread evenly: 0.5 alternates even I2V / odd T2V) and the history length (uniform in
``history_frames``, or in ``long_history_frames`` with ``long_history_p``). Per sample: a source (by the
mode's mixture weights), an action label uniformly among the source's labels (class balance; rows without
camera labels form one class), a row in proportion to its valid chunk positions, a position, still-image
mode (``still_image_p``: the frame before the chunk tiled as the history; done by the model module so both
cache and pixel paths share it) and the text dropout (``uncond_p`` to the empty-text embedding,
``drop_event_p`` / ``drop_action_p`` to one half).

Chunk positions honour the labels: the motion from the last frame before the chunk to the chunk's last frame
lies inside the row's labelled span. Frames are read at ``train.fps`` (every round(source fps / fps) frames).
A history that would start before the clip is padded at the front by repeating its first frame.

With the cache (``training_set.cache``) a sample is a slice of the clip's cached latents and the cached text
embeddings; without it, frames are decoded with decord and resized, and the texts encoded in the worker
(the module encodes pixels with the codec on its device).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from yume.datasets.training_set import (
    CacheLayout,
    frame_stride,
    latent_frame_count,
    read_clip_frames,
    strided_frames,
    text_key,
)

log = logging.getLogger(__name__)
NO_LABEL = "none"


def mode_of_step(step: int, i2v_fraction: float) -> str:
    """``i2v`` or ``t2v``: the I2V steps are spread evenly (Bresenham, offset so step 0 is I2V); 0.5 gives even
    I2V, odd T2V (REFERENCE section 5)."""
    f = float(i2v_fraction)
    c = 1.0 - f + 1e-9
    return "i2v" if np.floor((step + 1) * f + c) - np.floor(step * f + c) >= 1 else "t2v"


def chunk_positions(start: int, end: int, clip_frames: int, stride: int, chunk: int, tf: int) -> tuple[int, int]:
    """Valid first latent frames ``c`` (inclusive range) of a chunk in a labelled span ``[start, end)`` of
    transitions (source frame rate). Latent j ends at strided pixel frame ``j * tf``; the chunk's motion runs
    from latent c-1's last pixel frame to latent c+chunk-1's, and must stay inside the span."""
    step = tf * stride
    lo = max(1, 1 + -(-int(start) // step))
    n_lat = latent_frame_count(strided_frames(clip_frames, stride, tf), tf)
    hi = min(int(end) // step - chunk + 1, n_lat - chunk)
    return lo, hi


class MixtureTable:
    """Sampling tables of a training manifest: per mode, sources by weight; per source, labels; per label,
    rows weighted by their number of chunk positions."""

    def __init__(self, rows: pd.DataFrame, chunk: int, temporal_factor: int, target_fps: float):
        self.rows = rows.reset_index(drop=True)
        n = len(self.rows)
        self.stride = np.array([frame_stride(f, target_fps) for f in self.rows.fps], dtype=np.int64) if n else np.zeros(0, np.int64)
        lo, hi = np.zeros(n, np.int64), np.zeros(n, np.int64)
        for i, r in enumerate(self.rows.itertuples(index=False)):
            lo[i], hi[i] = chunk_positions(r.start_frame, r.end_frame, r.clip_frames, self.stride[i], chunk, temporal_factor)
        self.lo, self.hi = lo, hi
        self.positions = np.maximum(hi - lo + 1, 0)
        labels = [NO_LABEL if (k is None or (isinstance(k, float) and np.isnan(k))) else f"{k}|{m}"
                  for k, m in zip(self.rows.get("keys", [None] * n), self.rows.get("mouse", [None] * n))]
        self.labels = np.asarray(labels, dtype=object)
        self.tables: dict[str, tuple[list[str], np.ndarray, dict]] = {}
        for mode in ("i2v", "t2v"):
            weights = self.rows[f"weight_{mode}"].to_numpy(float) if n else np.zeros(0)
            usable = (weights > 0) & (self.positions > 0)
            sources, sw, per_source = [], [], {}
            for source in sorted(set(self.rows.source[usable])) if n else []:
                idx = np.flatnonzero(usable & (self.rows.source.to_numpy() == source))
                by_label = {}
                for lab in sorted(set(self.labels[idx])):
                    ridx = idx[self.labels[idx] == lab]
                    cum = np.cumsum(self.positions[ridx])
                    by_label[lab] = (ridx, cum)
                sources.append(source)
                sw.append(float(weights[idx[0]]))
                per_source[source] = (sorted(by_label), by_label)
            if sources:
                self.tables[mode] = (sources, np.cumsum(np.asarray(sw) / np.sum(sw)), per_source)

    def modes(self) -> set[str]:
        return set(self.tables)

    def draw(self, rng: np.random.Generator, mode: str) -> tuple[int, int]:
        """(row index, first latent frame of the chunk)."""
        if mode not in self.tables:
            mode = next(iter(self.tables))  # the other mode has no data: fall back
        sources, cum_w, per_source = self.tables[mode]
        source = sources[min(int(np.searchsorted(cum_w, rng.random(), side="right")), len(sources) - 1)]
        labels, by_label = per_source[source]
        ridx, cum = by_label[labels[int(rng.integers(len(labels)))]]
        k = int(np.searchsorted(cum, rng.integers(cum[-1]), side="right"))
        row = int(ridx[k])
        return row, int(rng.integers(self.lo[row], self.hi[row] + 1))

    def summary(self) -> dict:
        return {mode: {s: {lab: int(len(v[0])) for lab, v in by.items()} for s, (_, by) in per.items()}
                for mode, (_, _, per) in self.tables.items()}


@dataclass(frozen=True)
class SampleSettings:
    """What a dataset needs from the profile (plain values: picklable into workers and Ray)."""

    seed: int
    batch_size: int
    chunk: int  # latent frames
    temporal_factor: int
    height: int
    width: int
    fps: float
    i2v_fraction: float
    history_frames: tuple[int, int]
    long_history_p: float
    long_history_frames: tuple[int, int]
    still_image_p: float
    still_image_frames: int
    uncond_p: float
    drop_event_p: float
    drop_action_p: float
    text_max_length: int
    text_order: str
    action_text: bool = True
    aligned_per_row: int = 4

    @classmethod
    def from_profile(cls, profile) -> "SampleSettings":
        t, m = profile.train, profile.model
        tf = 1 if m.codec.kind == "patch" else 4  # Wan2.2 VAE: 4x in time
        return cls(seed=t.seed, batch_size=t.batch_size, chunk=t.chunk_frames or m.chunk_frames, temporal_factor=tf,
                   height=t.height, width=t.width, fps=t.fps, i2v_fraction=t.i2v_fraction,
                   history_frames=tuple(t.history_frames), long_history_p=t.long_history_p,
                   long_history_frames=tuple(t.long_history_frames), still_image_p=t.still_image_p,
                   still_image_frames=t.still_image_frames,
                   uncond_p=t.uncond_p, drop_event_p=t.drop_event_p, drop_action_p=t.drop_action_p,
                   text_max_length=m.text.max_length, text_order=m.text.order, action_text=t.action_text,
                   aligned_per_row=profile.training_set.aligned_per_row)


def still_step(settings: SampleSettings, step: int, mode: str) -> bool:
    """Still-image step (I2V only, probability ``still_image_p``): the whole batch's history is one image, built
    as inference builds it (``still_history``)."""
    return mode == "i2v" and np.random.default_rng([settings.seed, step, 23]).random() < settings.still_image_p


def history_length(settings: SampleSettings, step: int, mode: str) -> int:
    """Latent history frames of a step: 0 for T2V; ``still_image_frames`` for a still-image step (what inference
    gives an image); else uniform in ``history_frames``, or in ``long_history_frames`` with ``long_history_p``."""
    if mode == "t2v":
        return 0
    if still_step(settings, step, mode):
        return settings.still_image_frames
    rng = np.random.default_rng([settings.seed, step, 17])
    lo, hi = settings.long_history_frames if rng.random() < settings.long_history_p else settings.history_frames
    return int(rng.integers(lo, hi + 1))


class TextSource:
    """Action + event embeddings: from the cache files, or from the encoder (built lazily in the worker)."""

    def __init__(self, cache_root: str | None, text_cfg_json: dict | None, action_file: str | None):
        self.cache_root = cache_root
        self.text_cfg_json = text_cfg_json
        self.action_file = action_file
        self._actions: dict | None = None
        self._texts: dict[str, torch.Tensor] = {}
        self._file = None
        self._conditioner = None

    def _load_actions(self) -> dict:
        if self._actions is None:
            if self.action_file:
                import json

                from safetensors import safe_open

                with safe_open(self.action_file, framework="pt") as f:
                    labels = [tuple(x) for x in json.loads(f.metadata()["labels"])]
                    self._actions = {lab: f.get_tensor(f"a{i}") for i, lab in enumerate(labels)}
            else:
                self._actions = self._cond().actions.load()
        return self._actions

    def _cond(self):
        if self._conditioner is None:
            from yume.models.config import TextConfig
            from yume.models.text import TextConditioner, TextEncoder

            cfg = TextConfig(**self.text_cfg_json)
            self._conditioner = TextConditioner(TextEncoder.from_config(cfg), cfg, None)
        return self._conditioner

    def action(self, keys: str, mouse: str) -> torch.Tensor:
        return self._load_actions()[(keys, mouse)]

    def event(self, text: str) -> torch.Tensor:
        if text in self._texts:
            return self._texts[text]
        if self.cache_root:
            from safetensors import safe_open

            if self._file is None:
                self._file = safe_open(str(CacheLayout(Path(self.cache_root)).text_file), framework="pt")
            emb = self._file.get_tensor(f"t/{text_key(text)}").float()
        else:
            emb = self._cond().encoder.encode([text])[0]
        if len(self._texts) < 4096:
            self._texts[text] = emb
        return emb

    def __getstate__(self):  # open files and encoders stay in the process that made them
        return {"cache_root": self.cache_root, "text_cfg_json": self.text_cfg_json, "action_file": self.action_file,
                "_actions": None, "_texts": {}, "_file": None, "_conditioner": None}


def _nan_to_none(v):
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else v


class FoundationDataset(torch.utils.data.Dataset):
    """Map-style dataset over global sample indices (see the module docstring)."""

    def __init__(self, rows: pd.DataFrame, settings: SampleSettings, roots: dict[str, str], cache_root: str | None,
                 text: TextSource, world_size: int = 1, text_dim: int = 32, length: int = 2**62):
        self.settings = settings
        self.table = MixtureTable(rows, settings.chunk, settings.temporal_factor, settings.fps)
        if not self.table.modes():
            raise ValueError("the training manifest has no row with a valid chunk position and a non-zero weight")
        self.rows = self.table.rows
        self.records = self.rows.to_dict("records")
        self.roots = {k: Path(v) for k, v in roots.items()}
        self.cache_root = cache_root
        self.text = text
        self.world_size = world_size
        self.text_dim = text_dim
        self.length = length
        self._index: dict[str, tuple[str, int]] | None = None
        self._files: dict = {}
        # Temporal codec + cache: T2V and still-image steps read the aligned encodings (training_set's section
        # "aligned encodings") at k positions per row, drawn here exactly as the cache builder drew them.
        self.aligned: list[list[int]] | None = None
        if cache_root and settings.temporal_factor > 1:
            from yume.datasets.training_set import aligned_positions

            self.aligned = [aligned_positions(rec["id"], int(lo), int(hi), settings.aligned_per_row)
                            for rec, lo, hi in zip(self.records, self.table.lo, self.table.hi)]

    def __len__(self) -> int:
        return self.length

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_files"] = {}
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)

    # ------------------------------------------------------------------------------------- pieces

    def step_of(self, index: int) -> int:
        return index // (self.settings.batch_size * self.world_size)

    def _latent_index(self) -> dict[str, str]:
        if self._index is None:
            layout = CacheLayout(Path(self.cache_root))
            df = pd.read_parquet(layout.latents_index)
            self._index = dict(zip(df.clip_key, df.shard))
        return self._index

    def _aligned(self, clip: str, kind: str, c: int) -> torch.Tensor:
        """A cached aligned encoding ([F, C, h, w]): ``t2v`` (the chunk alone) or ``still`` (image + chunk)."""
        shard = self._latent_index()[clip]
        if shard not in self._files:
            from safetensors import safe_open

            self._files[shard] = safe_open(str(CacheLayout(Path(self.cache_root)).shard_file(shard)), framework="pt")
        return self._files[shard].get_tensor(f"{kind}/{clip}/{c}").float()

    def _latents(self, clip: str, a: int, b: int) -> torch.Tensor:
        from safetensors import safe_open

        shard = self._latent_index()[clip]
        if shard not in self._files:
            self._files[shard] = safe_open(str(CacheLayout(Path(self.cache_root)).shard_file(shard)), framework="pt")
        return self._files[shard].get_slice(f"clip/{clip}")[a:b].float()  # [F, C, h, w]

    def _text(self, row, mode: str, u: float) -> torch.Tensor:
        from yume.models.text import combine_embeddings

        s = self.settings
        keys, mouse = _nan_to_none(row["keys"]), _nan_to_none(row["mouse"])
        event = _nan_to_none(row["i2v_text"] if mode == "i2v" else row["t2v_text"])
        if mode == "i2v" and not event:
            event = _nan_to_none(row["t2v_text"])
        use_action, use_event = keys is not None and s.action_text, bool(event)
        if u < s.uncond_p:
            use_action = use_event = False
        elif u < s.uncond_p + s.drop_event_p:
            use_event = False
        elif u < s.uncond_p + s.drop_event_p + s.drop_action_p:
            use_action = False
        a = self.text.action(keys, mouse) if use_action else None
        e = self.text.event(event) if use_event else None
        if a is None and e is None:
            return torch.zeros(s.text_max_length, self.text_dim)
        return combine_embeddings(a, e, s.text_max_length, s.text_order)

    def __getitem__(self, index: int) -> dict:
        s = self.settings
        step = self.step_of(int(index))
        mode = mode_of_step(step, s.i2v_fraction)
        if mode not in self.table.modes():
            mode = next(iter(self.table.modes()))
        h = history_length(s, step, mode)
        still = still_step(s, step, mode)
        rng = np.random.default_rng([s.seed, int(index)])
        r, c = self.table.draw(rng, mode)
        row = self.records[r]
        rng.random()  # the former per-sample still draw: keeps every later draw of a sample where it was
        u = float(rng.random())
        if self.aligned is not None and (still or mode == "t2v"):
            c = self.aligned[r][int(rng.integers(len(self.aligned[r])))]
            kind = "still" if still else "t2v"
            span = self._aligned(row["clip_key"], kind, c)
            return {"span": span.permute(1, 0, 2, 3).contiguous(), "is_latent": True, "mode": 0 if still else 1,
                    "n_history": h, "still": still, "index": int(index), "text": self._text(row, mode, u)}
        if still:
            return {**self._still_item(row, r, c, h), "mode": 0, "n_history": h, "still": True, "index": int(index),
                    "text": self._text(row, mode, u)}
        avail = min(h, c)
        item = {"mode": 0 if mode == "i2v" else 1, "n_history": h, "still": still, "index": int(index),
                "text": self._text(row, mode, u)}
        if self.cache_root:
            lat = self._latents(row["clip_key"], c - avail, c + s.chunk)
            if avail < h:
                lat = torch.cat([lat[:1].expand(h - avail, *lat.shape[1:]), lat], 0)
            item["span"] = lat.permute(1, 0, 2, 3).contiguous()  # [C, h + L, hh, ww]
            item["is_latent"] = True
        else:
            tf = s.temporal_factor
            if tf == 1:
                idx = list(range(c - avail, c + s.chunk))
                pad = h - avail
            else:
                first = tf * (c - avail)
                idx = list(range(first, tf * (c + s.chunk - 1) + 1))
                pad = tf * (h - avail)
            path = self.roots[row["video_root"]] / row["video_uri"]
            frames = read_clip_frames(path, int(row["clip_frames"]), int(self.table.stride[r]), s.height, s.width, tf,
                                      indices=idx)
            if pad:
                frames = np.concatenate([np.repeat(frames[:1], pad, 0), frames], 0)
            item["span"] = torch.from_numpy(frames).permute(3, 0, 1, 2).float().div(127.5).sub(1)  # [3, T, H, W]
            item["is_latent"] = False
        return item


    def _still_item(self, row, r: int, c: int, h: int) -> dict:
        """A still-image sample as inference builds it (``WorldSampler.image_history``): the anchor frame (the
        one before the chunk) repeated as an image clip and encoded, then the chunk. Patch codec (no temporal
        compression): the anchor's latent repeated ``h`` times. Wan VAE pixel path: the anchor repeated
        ``4 (h - 1) + 1`` times (17 frames -> 5 latents) before the chunk's frames, encoded together by the module
        (the cache path reads the same encoding, made by the cache builder)."""
        s = self.settings
        if self.cache_root:  # frame-wise codec (temporal codecs read the aligned encodings in __getitem__)
            lat = self._latents(row["clip_key"], c - 1, c + s.chunk)
            span = torch.cat([lat[:1].expand(h, *lat.shape[1:]), lat[1:]], 0)
            return {"span": span.permute(1, 0, 2, 3).contiguous(), "is_latent": True}
        tf = s.temporal_factor
        anchor = tf * (c - 1) if tf > 1 else c - 1
        chunk_idx = list(range(tf * c - tf + 1, tf * (c + s.chunk - 1) + 1)) if tf > 1 else list(range(c, c + s.chunk))
        copies = tf * (h - 1) + 1 if tf > 1 else h
        frames = read_clip_frames(self.roots[row["video_root"]] / row["video_uri"], int(row["clip_frames"]),
                                  int(self.table.stride[r]), s.height, s.width, tf, indices=[anchor] + chunk_idx)
        frames = np.concatenate([np.repeat(frames[:1], copies, 0), frames[1:]], 0)
        return {"span": torch.from_numpy(frames).permute(3, 0, 1, 2).float().div(127.5).sub(1), "is_latent": False}


class StepSampler(torch.utils.data.Sampler):
    """Global indices of this rank for steps ``start .. start_step + num_steps - 1``.

    ``start`` is ``current_step()`` when given (the trainer's step, read each time iteration begins), else
    ``start_step``. Why: a run resumed mid-epoch from a loader that is not resumable has its epoch cut short by
    Lightning's restored batch count, and the next epoch iterates the sampler again. Reading the step then
    continues where training is; a fixed start replayed the steps since the resume point (a resumed run then
    diverged from an uninterrupted one).
    """

    def __init__(self, start_step: int, num_steps: int, batch_size: int, world_size: int = 1, rank: int = 0,
                 current_step=None):
        self.start_step, self.num_steps = int(start_step), int(num_steps)
        self.batch_size, self.world_size, self.rank = batch_size, world_size, rank
        self.current_step = current_step

    def __iter__(self):
        start = self.start_step if self.current_step is None else int(self.current_step())
        for step in range(start, self.start_step + self.num_steps):
            base = (step * self.world_size + self.rank) * self.batch_size
            yield from range(base, base + self.batch_size)

    def __len__(self) -> int:
        return self.num_steps * self.batch_size

    def state_dict(self) -> dict:
        return {"start_step": self.start_step}


def collate(items: list[dict]) -> dict:
    if len({it["n_history"] for it in items}) != 1 or len({it["mode"] for it in items}) != 1:
        raise ValueError("a batch must share its mode and history length (one training step)")
    return {
        "span": torch.stack([it["span"] for it in items]),
        "is_latent": items[0]["is_latent"],
        "n_history": items[0]["n_history"],
        "mode": items[0]["mode"],
        "still": torch.tensor([it["still"] for it in items]),
        "text": torch.stack([it["text"] for it in items]),
        "index": torch.tensor([it["index"] for it in items]),
    }


def _worker_init(_):
    torch.set_num_threads(1)


try:
    import lightning as L

    _Base = L.LightningDataModule
except ImportError:  # pragma: no cover
    _Base = object


class FoundationDataModule(_Base):
    """DataModule over a training manifest (+ cache). The sampler starts at the trainer's restored step."""

    def __init__(self, rows: pd.DataFrame, settings: SampleSettings, roots: dict[str, str], cache_root: str | None,
                 text: TextSource, text_dim: int, max_steps: int, num_workers: int = 0, data_hash: str = ""):
        super().__init__()
        self.rows, self.settings, self.roots, self.cache_root = rows, settings, roots, cache_root
        self.text, self.text_dim, self.max_steps, self.num_workers = text, text_dim, max_steps, num_workers
        self.data_hash = data_hash
        self.restored: dict | None = None
        self.sampler: StepSampler | None = None

    def train_dataloader(self):
        trainer = getattr(self, "trainer", None)
        start = int(trainer.global_step) if trainer is not None else 0
        world = int(trainer.world_size) if trainer is not None else 1
        rank = int(trainer.global_rank) if trainer is not None else 0
        if self.restored is not None and int(self.restored.get("next_step", start)) != start:
            log.warning("datamodule state says step %s, trainer says %s: following the trainer",
                        self.restored.get("next_step"), start)
        ds = FoundationDataset(self.rows, self.settings, self.roots, self.cache_root, self.text, world, self.text_dim)
        current = (lambda: int(trainer.global_step)) if trainer is not None else None
        self.sampler = StepSampler(start, max(self.max_steps - start, 1), self.settings.batch_size, world, rank,
                                   current_step=current)
        return torch.utils.data.DataLoader(
            ds, batch_size=self.settings.batch_size, sampler=self.sampler, collate_fn=collate,
            num_workers=self.num_workers, worker_init_fn=_worker_init if self.num_workers else None,
            persistent_workers=False, prefetch_factor=4 if self.num_workers else None,
            # Workers are started by forkserver, not fork: the flow's process runs threads (Prefect's API
            # client, Ray, a test server) that a forked child would inherit mid-state.
            multiprocessing_context="forkserver" if self.num_workers else None)

    def state_dict(self) -> dict:
        trainer = getattr(self, "trainer", None)
        return {"next_step": int(trainer.global_step) if trainer is not None else 0, "data_hash": self.data_hash,
                "seed": self.settings.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("data_hash") and self.data_hash and state["data_hash"] != self.data_hash:
            raise ValueError(f"checkpoint was trained on data {state['data_hash']}, this run has {self.data_hash}")
        self.restored = dict(state)
