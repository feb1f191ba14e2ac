"""Every deployment in prefect.yaml points at a flow that imports, with parameters that validate."""

from pathlib import Path

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint

ROOT = Path(__file__).resolve().parents[1]
DEPLOYMENTS = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_entrypoint_imports_and_parameters_validate(deployment, monkeypatch):
    monkeypatch.chdir(ROOT)
    flow = load_flow_from_entrypoint(deployment["entrypoint"])
    validated = flow.validate_parameters(deployment.get("parameters", {}))
    assert set(validated) <= set(flow.parameters.properties)
    assert deployment["work_pool"]["name"]


def test_every_stage_flow_has_a_deployment():
    from yume.flows import STAGE_FLOWS

    entrypoints = {d["entrypoint"] for d in DEPLOYMENTS}
    for name in STAGE_FLOWS:
        assert f"flows/{name}.py:{name}" in entrypoints
    assert any(d.get("schedules") for d in DEPLOYMENTS if d["entrypoint"].endswith(":retrain"))
