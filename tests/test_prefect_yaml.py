"""Every deployment in prefect.yaml points at a flow that imports, with parameters that validate against the
flow's signature and parameter schema (as the Prefect server checks them), a profile that loads, a work pool and,
for the weekly retrain, a valid cron schedule."""

import inspect
from pathlib import Path

import jsonschema
import pytest
import yaml
from prefect.cli.deploy._models import DeploymentConfig, PrefectYamlModel
from prefect.client.schemas.schedules import CronSchedule
from prefect.exceptions import ParameterTypeError, SignatureMismatchError
from prefect.flows import load_flow_from_entrypoint
from prefect.utilities.callables import parameter_schema

ROOT = Path(__file__).resolve().parents[1]
PREFECT_YAML = yaml.safe_load((ROOT / "prefect.yaml").read_text())
DEPLOYMENTS = PREFECT_YAML["deployments"]
WORK_POOLS = {"yume-cpu", "yume-gpu"}  # the pools README "Orchestration" tells you to create


def test_prefect_yaml_is_valid_for_prefect_deploy():
    model = PrefectYamlModel.model_validate(PREFECT_YAML)
    assert len(model.deployments) == len(DEPLOYMENTS)
    names = [d["name"] for d in DEPLOYMENTS]
    assert len(names) == len(set(names)), "deployment names must be unique"
    for d in DEPLOYMENTS:  # Prefect ignores unknown keys silently: a typo would be lost
        assert set(d) <= set(DeploymentConfig.model_fields), d["name"]


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_entrypoint_imports_and_parameters_validate(deployment, monkeypatch):
    monkeypatch.chdir(ROOT)
    flow = load_flow_from_entrypoint(deployment["entrypoint"])
    params = deployment.get("parameters", {})
    signature = inspect.signature(flow.fn).parameters
    assert set(params) <= set(signature), f"unknown parameters {set(params) - set(signature)}"
    required = {n for n, p in signature.items() if p.default is inspect.Parameter.empty}
    assert required <= set(params), f"missing required parameters {required - set(params)}"
    validated = flow.validate_parameters(params)
    assert set(validated) <= set(flow.parameters.properties)
    # The server validates a run's parameters against the deployment's schema (enforce_parameter_schema).
    jsonschema.validate(params, parameter_schema(flow.fn).model_dump_for_openapi())
    assert deployment["work_pool"]["name"] in WORK_POOLS
    if "profile" in params:  # the profile and overrides the deployment would run with are valid
        from yume.config import load_profile

        load_profile(params["profile"], params.get("workdir"), params.get("overrides") or [])


def test_bad_parameters_are_refused():
    """The check above has teeth: a wrong name or type fails."""
    flow = load_flow_from_entrypoint(str(ROOT / "flows/retrain.py") + ":retrain")
    with pytest.raises((ParameterTypeError, SignatureMismatchError)):
        flow.validate_parameters({"profile": "tiny", "wrkdir": "/tmp/x"})
    with pytest.raises(ParameterTypeError):
        flow.validate_parameters({"profile": "tiny", "overrides": "not-a-list"})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"overrides": 3}, parameter_schema(flow.fn).model_dump_for_openapi())


def test_every_stage_flow_has_a_deployment():
    from yume.flows import STAGE_FLOWS

    entrypoints = {d["entrypoint"] for d in DEPLOYMENTS}
    for name in STAGE_FLOWS:
        assert f"flows/{name}.py:{name}" in entrypoints
    assert "flows/retrain.py:retrain" in entrypoints


def test_weekly_retrain_is_scheduled_with_a_valid_cron():
    scheduled = [d for d in DEPLOYMENTS if d["entrypoint"].endswith(":retrain") and d.get("schedules")]
    assert scheduled
    import asyncio
    from datetime import datetime, timedelta, timezone

    from prefect.server.schemas.schedules import CronSchedule as ServerCronSchedule

    for d in scheduled:
        for s in d["schedules"]:
            CronSchedule(cron=s["cron"], timezone=s.get("timezone", "UTC"))
            # What Prefect's scheduler would create over 4 weeks: exactly 4 runs, 7 days apart.
            start = datetime(2026, 12, 6, tzinfo=timezone.utc)
            server = ServerCronSchedule(cron=s["cron"], timezone=s.get("timezone", "UTC"))
            runs = asyncio.run(server.get_dates(start=start, end=start + timedelta(days=28)))
            assert len(runs) == 4, runs
            assert [(b.timestamp() - a.timestamp()) for a, b in zip(runs, runs[1:])] == [7 * 86400.0] * 3
            assert s.get("active") is False  # deployed paused; the README says how to resume it
        assert d["concurrency_limit"]["limit"] == 1  # runs on one work directory never overlap


def test_cluster_deployments_resolve_to_an_absolute_shared_work_directory():
    from yume.config import load_profile

    for d in DEPLOYMENTS:
        params = d.get("parameters", {})
        profile = load_profile(params.get("profile", "tiny"), params.get("workdir"))
        if profile.shared_workdir:
            assert Path(profile.workdir).is_absolute() and ROOT not in profile.workdir_path.parents, d["name"]
