"""Checkpoints that load without unpickling anything: safetensors for tensors, JSON for the rest.

``SafeCheckpointIO`` is a Lightning ``CheckpointIO``: the whole checkpoint dict Lightning builds (weights,
optimiser and scheduler states, loop progress, callback and datamodule states, our EMA weights, RNG states
and config/data hashes) is flattened into one safetensors file; every tensor (and numpy array) becomes a
named tensor, and the nested structure around them a tagged JSON document in the file's metadata. Loading
rebuilds the dict from JSON and tensors only, so a checkpoint can never execute code. Values of any other
type are refused at save time, naming their path in the dict. Files are written to a temporary name and
renamed, so a kill during a save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "yume-checkpoint"
VERSION = "1"


class CheckpointFormatError(ValueError):
    pass


def flatten(obj: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """(JSON-able skeleton, tensors by name)."""
    tensors: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()

    def add(t: torch.Tensor, path: str, numpy: bool = False) -> dict:
        name = f"{len(tensors):06d}"
        t = t.detach().cpu()
        key = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else None
        if not t.is_contiguous() or (key is not None and key in seen):
            t = t.contiguous().clone()
        if key is not None:
            seen.add(key)
        tensors[name] = t
        return {"N" if numpy else "T": name}

    def enc(v: Any, path: str) -> Any:
        if isinstance(v, torch.Tensor):
            return add(v, path)
        if isinstance(v, np.ndarray):
            if v.dtype == object:
                raise CheckpointFormatError(f"{path}: object arrays cannot be stored")
            return add(torch.from_numpy(np.ascontiguousarray(v)), path, numpy=True) | {"np_dtype": str(v.dtype)}
        if isinstance(v, np.generic):
            return {"v": v.item()}
        if v is None or isinstance(v, (bool, int, float, str)):
            return {"v": v}
        if isinstance(v, dict):
            if all(isinstance(k, str) for k in v):
                return {"d": {k: enc(x, f"{path}.{k}") for k, x in v.items()}}
            return {"dk": [[enc(k, f"{path}<key>"), enc(x, f"{path}[{k!r}]")] for k, x in v.items()]}
        if isinstance(v, torch.Size):
            return {"t": [{"v": int(x)} for x in v]}
        if isinstance(v, tuple):
            return {"t": [enc(x, f"{path}[{i}]") for i, x in enumerate(v)]}
        if isinstance(v, list):
            return {"l": [enc(x, f"{path}[{i}]") for i, x in enumerate(v)]}
        if isinstance(v, torch.dtype):
            return {"dtype": str(v).removeprefix("torch.")}
        raise CheckpointFormatError(f"{path}: values of type {type(v).__name__} cannot be stored safely")

    return enc(obj, "checkpoint"), tensors


def unflatten(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    def dec(node: Any) -> Any:
        if not isinstance(node, dict) or len(node) == 0:
            raise CheckpointFormatError(f"malformed checkpoint node {node!r}")
        if "T" in node:
            return tensors[node["T"]]
        if "N" in node:
            return tensors[node["N"]].numpy().astype(node.get("np_dtype"), copy=False)
        if "v" in node:
            return node["v"]
        if "d" in node:
            return {k: dec(x) for k, x in node["d"].items()}
        if "dk" in node:
            return {_hashable(dec(k)): dec(x) for k, x in node["dk"]}
        if "t" in node:
            return tuple(dec(x) for x in node["t"])
        if "l" in node:
            return [dec(x) for x in node["l"]]
        if "dtype" in node:
            return getattr(torch, node["dtype"])
        raise CheckpointFormatError(f"unknown checkpoint node {sorted(node)}")

    return dec(skeleton)


def _hashable(k: Any) -> Any:
    return tuple(_hashable(x) for x in k) if isinstance(k, list) else k


def save_safe(obj: dict, path: str | Path) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    skeleton, tensors = flatten(obj)
    meta = {"format": FORMAT, "version": VERSION, "skeleton": json.dumps(skeleton, allow_nan=True)}
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        with open(tmp, "rb+") as fh:  # on disk before the rename: a crash leaves the old file or the whole new one
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_safe(path: str | Path, device: str = "cpu") -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device=str(device)) as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise CheckpointFormatError(f"{path} is not a {FORMAT} file (format {meta.get('format')!r})")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return unflatten(json.loads(meta["skeleton"]), tensors)


def read_meta(path: str | Path) -> dict:
    """The ``yume`` section (config/data hashes, configs) and ``global_step`` of a checkpoint, tensors unread."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise CheckpointFormatError(f"{path} is not a {FORMAT} file")
    sk = json.loads(meta["skeleton"])["d"]
    out = unflatten(sk.get("yume", {"d": {}}), {})
    out["global_step"] = sk.get("global_step", {"v": None})["v"]
    return out


try:
    from lightning.pytorch.plugins.io import CheckpointIO

    class SafeCheckpointIO(CheckpointIO):
        """Lightning CheckpointIO writing/reading ``save_safe``/``load_safe`` files."""

        def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
            save_safe(checkpoint, path)

        def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
            return load_safe(path)

        def remove_checkpoint(self, path) -> None:
            Path(path).unlink(missing_ok=True)

except ImportError:  # pragma: no cover
    SafeCheckpointIO = None  # type: ignore[assignment]


def checkpoint_problem(path: str | Path) -> str | None:
    """Why ``path`` is not a readable checkpoint of this project (truncated, not safetensors, another format),
    or None. Reads the header only: safetensors rejects a file its header does not fully cover."""
    try:
        read_meta(path)
    except Exception as e:  # noqa: BLE001 - any failure to read is the answer
        return f"{type(e).__name__}: {e}"
    return None
