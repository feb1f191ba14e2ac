"""The Ray cluster configs in deploy/ray parse, keep token authentication and declare A100 resources; no config
in the repo carries a secret (they come from the environment or Prefect Secret blocks)."""

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = ROOT / "deploy" / "ray" / "cluster-a100.yaml"
KUBERAY = ROOT / "deploy" / "ray" / "kuberay-raycluster.yaml"
SECRET_WORDS = {"token", "secret", "password", "passwd", "credential", "credentials", "apikey"}


def _names_secret(key) -> bool:
    """hf_token, AWS_SECRET_ACCESS_KEY, api-key, password: yes; max_new_tokens: no."""
    key = str(key).lower()
    return bool(SECRET_WORDS & set(re.split(r"[_\-.\s]", key))) or any(
        w in key for w in ("api_key", "access_key", "private_key"))


def test_cluster_launcher_config_is_valid_with_token_auth_and_a100_workers():
    import ray.autoscaler
    from ray.autoscaler._private.util import validate_config

    cfg = yaml.safe_load(LAUNCHER.read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cfg, schema)
    validate_config(cfg)  # the launcher's own checks (head type, min/max workers)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(c for c in cfg[key] if "ray start" in c)
        assert "RAY_AUTH_MODE=token" in start and "RAY_AUTH_TOKEN_PATH" in start, key
    assert "~/.ray/auth_token" in cfg["file_mounts"].values()  # the token travels from your machine, not the repo
    types = cfg["available_node_types"]
    workers = [t for name, t in types.items() if name != cfg["head_node_type"]]
    assert all(t["resources"].get("accelerator_type:A100") and t["resources"]["GPU"] > 0 for t in workers)
    assert types[cfg["head_node_type"]]["resources"]["GPU"] == 0
    setup = "\n".join(cfg["setup_commands"])
    assert "-c constraints.txt" in setup and "RAY_AUTH_MODE=token" in setup
    assert "scripts/setup_vbench_env.sh" in setup  # every node can host a VBench score actor (yume15's scorer)
    assert any("PREFECT_API_URL" in c for c in cfg["head_setup_commands"] + cfg["head_start_ray_commands"])


def test_kuberay_raycluster_keeps_token_auth_and_a100_workers():
    cfg = yaml.safe_load(KUBERAY.read_text())
    assert cfg["apiVersion"] == "ray.io/v1" and cfg["kind"] == "RayCluster"
    spec = cfg["spec"]
    assert spec["authOptions"]["mode"] == "token"
    major, minor = (int(x) for x in spec["rayVersion"].split(".")[:2])
    assert (major, minor) >= (2, 52), "token authentication needs Ray >= 2.52"
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert any(e["name"] == "PREFECT_API_URL" for e in head["env"])
    for group in spec["workerGroupSpecs"]:
        assert "accelerator_type:A100" in group["rayStartParams"]["resources"]
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) == int(group["rayStartParams"]["num-gpus"]) > 0


def _reference(value) -> bool:
    """A path to a token file, an environment variable or a template is where a secret lives, not a secret."""
    return isinstance(value, str) and value.startswith(("~/", "/", "$", "{{"))


def _secret_values(node, path=""):
    """(key path, value) for every mapping key that names a secret and holds a literal value."""
    if isinstance(node, dict):
        for k, v in node.items():
            p = f"{path}.{k}" if path else str(k)
            if _names_secret(k) and v not in (None, "", [], {}) and not isinstance(v, (dict, list)) and not _reference(v):
                yield p, v
            yield from _secret_values(v, p)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            # Kubernetes env entries: {name: AWS_SECRET_ACCESS_KEY, value: ...} must use valueFrom instead
            if isinstance(v, dict) and _names_secret(v.get("name", "")) and "value" in v:
                yield f"{path}[{i}].{v['name']}", v["value"]
            yield from _secret_values(v, f"{path}[{i}]")


CONFIGS = sorted((ROOT / "yume" / "profiles").glob("*.yaml")) + [ROOT / "prefect.yaml", LAUNCHER, KUBERAY]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_no_secret_values_in_repo_configs(path):
    docs = list(yaml.safe_load_all(path.read_text()))
    found = [hit for doc in docs for hit in _secret_values(doc)]
    assert not found, f"{path.name}: secrets belong in the environment or a Prefect Secret block: {found}"


def test_the_secret_check_catches_one():
    doc = yaml.safe_load("recaption: {hf_token: hf_abc, max_new_tokens: 160}\n"
                         "env: [{name: AWS_SECRET_ACCESS_KEY, value: x}, {name: RAY_AUTH_TOKEN, valueFrom: {}}]")
    assert {p for p, _ in _secret_values(doc)} == {"recaption.hf_token", "env[0].AWS_SECRET_ACCESS_KEY"}


def test_profiles_take_no_secret_fields():
    """No profile section has a secret-named field at all, so a secret cannot be configured in a profile."""
    from yume.config import Profile

    def fields(model, prefix=""):
        for name, f in model.model_fields.items():
            yield f"{prefix}{name}"
            ann = f.annotation
            for t in getattr(ann, "__args__", (ann,)):
                if isinstance(t, type) and hasattr(t, "model_fields"):
                    yield from fields(t, f"{prefix}{name}.")

    assert not [f for f in fields(Profile) if _names_secret(f.rsplit(".", 1)[-1])]
