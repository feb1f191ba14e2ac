"""Actor pools: a model loaded once per actor, results in input order, failures confined to their item."""

import os

import pytest
import torch

from yume.config import StageResources
from yume.datasets.sekai import VideoError
from yume.tasks.ray_pool import ActorPool, QuarantineError, classify_exception, isolate_failures


class CountingWorker:
    """Stands in for a model worker: counts how often it was built and which process serves items."""

    built = 0

    def __init__(self, offset: int):
        type(self).built += 1
        self.offset, self.pid, self.instance_builds = offset, os.getpid(), type(self).built

    def describe(self):
        return {"pid": self.pid, "builds": self.instance_builds}

    def work(self, batch):
        if len(batch) > 3:
            raise AssertionError("batch_size not honoured")
        return [{"status": "ok", "value": x + self.offset, "pid": self.pid} for x in batch]


@pytest.mark.parametrize(
    "exc, category",
    [(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), "oom"),
     (RuntimeError("CUDA error: out of memory"), "oom"),
     (VideoError("cannot decode"), "decode_failed"),
     (QuarantineError("nan_frames", "3 of 17 frames"), "nan_frames"),
     (ValueError("shape mismatch in attention"), "model_error")],
)
def test_classify_exception(exc, category):
    assert classify_exception(exc)[0] == category


def test_isolate_failures_quarantines_only_the_culprits():
    calls = []

    def batch_fn(items):
        calls.append(list(items))
        if 3 in items:
            raise torch.OutOfMemoryError("out of memory")
        if 6 in items:
            raise RuntimeError("model exploded")
        return [{"status": "ok", "x": i} for i in items]

    results = isolate_failures(list(range(8)), batch_fn)
    assert [r["status"] for r in results] == ["ok"] * 3 + ["quarantined"] + ["ok"] * 2 + ["quarantined", "ok"]
    assert results[3]["error"].startswith("oom: ") and results[6]["error"].startswith("model_error: ")
    assert [r["x"] for r in results if r["status"] == "ok"] == [0, 1, 2, 4, 5, 7]
    assert calls[0] == list(range(8)) and [3] in calls and [6] in calls  # split down to the single culprits


def test_local_pool_runs_in_process():
    CountingWorker.built = 0
    with ActorPool(CountingWorker, 10, resources=StageResources(batch_size=3), local=True) as pool:
        assert not pool.started  # lazy: nothing is built until the first map
        out = pool.map("work", list(range(7)))
    assert [r["value"] for r in out] == list(range(10, 17)) and CountingWorker.built == 1


def test_ray_pool_loads_once_per_actor_and_keeps_order(ray_local):
    import sys

    # Ray's workers cannot import this test module (tests/ is not on their path): ship the class by value.
    ray_local.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    CountingWorker.built = 0  # the class travels with its state
    resources = StageResources(actors=2, num_cpus=1, batch_size=3, max_restarts=1, max_task_retries=1)
    with ActorPool(CountingWorker, 100, resources=resources) as pool:
        first = pool.map("work", list(range(10)))
        second = pool.map("work", list(range(10, 20)))
        described = pool.call_all("describe")
    assert [r["value"] for r in first + second] == list(range(100, 120))
    assert all(d["builds"] == 1 for d in described)  # one model per actor, reused by every call
    assert {r["pid"] for r in first + second} <= {d["pid"] for d in described} and len(described) == 2
    assert os.getpid() not in {d["pid"] for d in described}
