"""Distributed runs prove they stayed one run.

DDP keeps replicas identical only if every rank all-reduces every gradient and makes the same random choices
that shape the graph (the distillation's exit step). A bug in either leaves training running, just wrong: each
rank drifts on its own. So after ``fit`` every rank hashes its full state (weights, EMA, buffers) and the
choices it made, all ranks gather them, and any disagreement is an error naming what differs.
"""

from __future__ import annotations

import hashlib

import torch


def state_digest(module: torch.nn.Module) -> str:
    """sha256 over every tensor of ``module.state_dict()`` (names, dtypes, shapes, bytes), in name order."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def gather_and_check(value, what: str) -> list:
    """Every rank's ``value`` (this one's alone outside a process group); raises if they differ."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    if any(v != values[0] for v in values):
        raise RuntimeError(f"ranks disagree on {what}: {values} (gradients or random choices were not shared)")
    return values
