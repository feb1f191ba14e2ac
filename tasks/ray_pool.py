"""Ray actor pools for per-item model work: the model is loaded once per actor, items go in batches.

Used by recaption (InternVL3), synthesize_t2v / synthesize_events (Wan) and score_and_filter (scorers);
training and evaluation helpers can use it the same way. The pattern (DESIGN.md, "Execution model"):

- A stage's flow opens one `ActorPool` for the whole run (`with ActorPool(Worker, ..., resources=...)`).
  Each actor declares ``num_cpus`` / ``num_gpus`` / ``accelerator_type`` from the stage's `StageResources`
  and builds its worker (loads its model) once, in ``__init__``.
- A Prefect shard task calls ``pool.map(method, items)``: items are cut into batches of
  ``resources.batch_size`` and spread over the actors with `ray.util.ActorPool` (results come back in
  input order, one result per item).
- Ray restarts a lost actor (``max_restarts``), on another node if its node died, and retries the calls it
  lost (``max_task_retries``); results still come back once per item, in order. If that is not enough the
  call raises and Prefect retries the whole shard (shard writes are idempotent). Actors of a pool are spread
  over the nodes (``SPREAD``), so one node's loss costs one actor.
- One bad item never fails the batch: `isolate_failures` retries a failing batch in halves down to single
  items, so only the culprit is quarantined (``<category>: <detail>``, see `classify_exception`). An
  out-of-memory batch is split the same way after freeing the CUDA cache, so a batch that is only too big
  still succeeds item by item.

Locally Ray starts in-process (`ensure_ray`); with ``ray.address`` or ``RAY_ADDRESS`` it joins a cluster
(the package must be installed on its nodes, and outputs go to storage every node can reach).
``local=True`` runs the worker in this process without Ray (benchmarks, debugging, unit tests).
"""

from __future__ import annotations

import gc
import logging
import os
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)


class QuarantineError(Exception):
    """One item cannot be processed; ``category`` names the reason class of its quarantined row."""

    def __init__(self, category: str, detail: str):
        super().__init__(f"{category}: {detail}")
        self.category = category
        self.detail = detail


def ensure_ray(cfg=None, num_cpus: int | None = None) -> None:
    """Start Ray in-process (or join ``cfg.address`` / ``RAY_ADDRESS``) unless it is already running."""
    import ray

    if ray.is_initialized():
        return
    address = getattr(cfg, "address", None) or os.environ.get("RAY_ADDRESS")
    log_to_driver = bool(getattr(cfg, "log_to_driver", False))
    if address:
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=log_to_driver)
        return
    ray.init(
        num_cpus=num_cpus or getattr(cfg, "num_cpus", None), include_dashboard=False, ignore_reinit_error=True,
        log_to_driver=log_to_driver,
    )


def torch_device(num_gpus: float) -> str:
    """The device an actor's model runs on: CUDA when the actor declared GPUs and one is visible."""
    import torch

    return "cuda" if num_gpus > 0 and torch.cuda.is_available() else "cpu"


def is_oom(exc: BaseException) -> bool:
    import torch

    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)) if t)
    return isinstance(exc, oom_types) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - best effort
        pass


def classify_exception(exc: BaseException) -> tuple[str, str]:
    """(category, detail) of an item failure: a QuarantineError's own category, ``oom`` for out-of-memory,
    ``decode_failed`` for unreadable media, ``model_error`` for anything else the model raised."""
    detail = f"{type(exc).__name__}: {exc}".strip()[:500]
    if isinstance(exc, QuarantineError):
        return exc.category, exc.detail[:500]
    if is_oom(exc):
        return "oom", detail
    from yume.datasets.sekai import VideoError

    if isinstance(exc, VideoError):
        return "decode_failed", str(exc)[:500]
    return "model_error", detail


def failure_result(exc: BaseException) -> dict:
    category, detail = classify_exception(exc)
    return {"status": "quarantined", "error": f"{category}: {detail}"}


def isolate_failures(items: Sequence[Any], batch_fn: Callable[[list], list[dict]]) -> list[dict]:
    """``batch_fn(items)`` -> one result dict per item; on an exception, the batch is split in halves
    (recursively) so that only the failing items become ``{"status": "quarantined", "error": ...}``."""
    items = list(items)
    if not items:
        return []
    try:
        results = batch_fn(items)
        if len(results) != len(items):
            raise RuntimeError(f"batch function returned {len(results)} results for {len(items)} items")
        return results
    except Exception as exc:  # noqa: BLE001 - every failure is classified and confined to its item
        if is_oom(exc):
            free_memory()
        if len(items) == 1:
            log.warning("item quarantined: %s", exc)
            return [failure_result(exc)]
        mid = len(items) // 2
        return isolate_failures(items[:mid], batch_fn) + isolate_failures(items[mid:], batch_fn)


class ActorPool:
    """A pool of ``resources.actors`` actors, each holding one ``worker_cls(*args, **kwargs)``.

    ``map(method, items)`` calls ``worker.<method>(batch)`` on batches of ``resources.batch_size`` items and
    returns the per-item results flattened, in input order.
    """

    def __init__(self, worker_cls: type, *args, resources, ray_config=None, local: bool = False, **kwargs):
        self.resources = resources
        self.local = local
        self._spec = (worker_cls, args, kwargs, ray_config)
        self._actors: list = []
        self._worker = None
        self.started = False

    def start(self) -> "ActorPool":
        """Create the actors (each loads its model). Called by the first `map`, so a run whose shards are all
        cached never starts Ray or loads a model."""
        if self.started:
            return self
        self.started = True
        worker_cls, args, kwargs, ray_config = self._spec
        resources = self.resources
        if self.local:
            self._worker = worker_cls(*args, **kwargs)
            return self
        import ray

        ensure_ray(ray_config)
        options = {
            "num_cpus": resources.num_cpus,
            "num_gpus": resources.num_gpus,
            "max_restarts": resources.max_restarts,
            "max_task_retries": resources.max_task_retries,
        }
        if resources.accelerator_type:
            options["accelerator_type"] = resources.accelerator_type
        if resources.actors > 1:
            # Best-effort spread over nodes: losing one node then costs one actor, not the whole pool.
            options["scheduling_strategy"] = "SPREAD"
        remote_cls = ray.remote(worker_cls).options(**options)
        self._actors = [remote_cls.remote(*args, **kwargs) for _ in range(resources.actors)]
        return self

    def map(self, method: str, items: Sequence[Any]) -> list:
        items = list(items)
        if not items:
            return []
        self.start()
        size = self.resources.batch_size
        batches = [items[i : i + size] for i in range(0, len(items), size)]
        if self.local:
            out = [getattr(self._worker, method)(b) for b in batches]
        else:
            from ray.util import ActorPool as RayActorPool

            pool = RayActorPool(self._actors)
            out = list(pool.map(lambda actor, batch: getattr(actor, method).remote(batch), batches))
        results = [r for batch in out for r in batch]
        if len(results) != len(items):
            raise RuntimeError(f"{method}: {len(results)} results for {len(items)} items")
        return results

    def call_all(self, method: str, *args) -> list:
        """Call ``method`` once on every actor (e.g. to warm up or to read a worker's description)."""
        self.start()
        if self.local:
            return [getattr(self._worker, method)(*args)]
        import ray

        return ray.get([getattr(a, method).remote(*args) for a in self._actors])

    def shutdown(self) -> None:
        if self.local or not self.started:
            self._worker = None
            return
        import ray

        for actor in self._actors:
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self._actors = []

    def __enter__(self) -> "ActorPool":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
