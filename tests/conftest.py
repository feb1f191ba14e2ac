"""Shared fixtures. Prefect runs against one throw-away server per test session (prefect_test_harness)."""

import os

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def ray_local():
    """One in-process Ray for the session (2 CPUs, no dashboard), as the stage flows start it locally."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    yield ray
    ray.shutdown()


DISTILLED_SCHEDULE = {"schedule": "renoise", "renoise_timesteps": [1000.0, 750.0, 500.0, 250.0], "steps": 4,
                      "shift": 5.0, "guidance": 1.0}


@pytest.fixture(scope="session")
def distilled_dir(tmp_path_factory):
    """A random-init tiny world model exported as a distilled generator (4 re-noise steps, no guidance)."""
    import json

    from yume.models.config import tiny_model_config
    from yume.models.train_config import TrainConfig
    from yume.models.wan_dit import WanDiT

    d = tmp_path_factory.mktemp("distilled") / "final"
    cfg = tiny_model_config().model_copy(update={"dit_init": "random"})
    WanDiT.from_config(cfg).save_pretrained(d)
    (d / "yume_model.json").write_text(json.dumps({
        "model_config": cfg.model_dump(mode="json"), "train_config": TrainConfig().model_dump(mode="json"),
        "kind": "distilled", "sampler": DISTILLED_SCHEDULE}))
    return d


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """The tiny random-init curation checkpoints (InternVL3, Wan2.1 T2V, Wan2.2 TI2V), built once."""
    from yume.tasks.tiny_models import TINY_MODELS, ensure_tiny_model

    root = tmp_path_factory.mktemp("tiny-models")
    return {name: ensure_tiny_model(name, root) for name in TINY_MODELS}
