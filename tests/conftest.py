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


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """The tiny random-init curation checkpoints (InternVL3, Wan2.1 T2V, Wan2.2 TI2V), built once."""
    from yume.tasks.tiny_models import TINY_MODELS, ensure_tiny_model

    root = tmp_path_factory.mktemp("tiny-models")
    return {name: ensure_tiny_model(name, root) for name in TINY_MODELS}
