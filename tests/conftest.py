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


# --fail-on-skip: the run inside .venv-vbench (`make test`) passes it, so that a test module skipped at
# collection (tests/test_scoring_vbench.py's importorskip) or a test skipped at run time is a failure there,
# never a quiet "skipped". The main environment's run keeps its skips.
def pytest_addoption(parser):
    parser.addoption("--fail-on-skip", action="store_true",
                     help="report every skip (at collection or in a test) as a failure")


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    return longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and collector.config.getoption("fail_on_skip"):
        report.outcome = "failed"
        report.longrepr = f"skipped at collection under --fail-on-skip: {_skip_reason(report)}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") and item.config.getoption("fail_on_skip"):
        report.outcome = "failed"
        report.longrepr = f"skipped under --fail-on-skip: {_skip_reason(report)}"
