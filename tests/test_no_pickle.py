"""No pickle anywhere: every stage flow, run on its own as an engineer (or a deployment's worker) runs it, leaves
no pickled Prefect result and no raw pickle file, in the work directory or in Prefect's own storage.

The stages run in a child process with a fresh ``PREFECT_HOME`` (so Prefect's default local result storage is a
directory this test owns), each as its own top-level flow run in DAG order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from test_retrain import FAST, FAST_DISTILL

PICKLE_PROTOCOLS = {bytes([0x80, p]) for p in range(2, 6)}

RUN_EACH_STAGE = """
import json, sys
from yume.flows import STAGE_FLOWS, STAGE_NAMES
workdir, overrides = sys.argv[1], json.loads(sys.argv[2])
for name in STAGE_NAMES:
    STAGE_FLOWS[name](profile="tiny", workdir=workdir, overrides=overrides)
    print("ran", name, flush=True)
"""


def pickle_findings(root: Path) -> list[str]:
    """Every file under ``root`` that is a raw pickle, a Prefect result whose serializer is pickle, or an archive
    (a torch.save checkpoint) with a pickle inside."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        head = path.read_bytes()[:4096]
        if head[:2] in PICKLE_PROTOCOLS:
            found.append(f"{path}: raw pickle")
        elif head.startswith(b"{") and b'"serializer"' in head:
            try:
                serializer = json.loads(path.read_text())["metadata"]["serializer"]
            except (ValueError, KeyError, TypeError):
                continue
            if serializer.get("type") != "json":
                found.append(f"{path}: Prefect result with serializer {serializer.get('type')!r}")
        elif zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                inner = [n for n in archive.namelist() if n.endswith(".pkl")]
            if inner:
                found.append(f"{path}: archive holding {inner[0]}")
    return found


def test_the_scanner_finds_each_kind_of_pickle(tmp_path):
    import pickle

    import torch

    (tmp_path / "raw").write_bytes(pickle.dumps({"a": 1}))
    (tmp_path / "result").write_text(json.dumps({"metadata": {"serializer": {"type": "pickle"}}, "result": "gAWV"}))
    (tmp_path / "ok").write_text(json.dumps({"metadata": {"serializer": {"type": "json"}}, "result": "{}"}))
    torch.save({"w": torch.zeros(1)}, tmp_path / "ckpt.pt")
    found = pickle_findings(tmp_path)
    assert [Path(f.split(":")[0]).name for f in found] == ["ckpt.pt", "raw", "result"]


@pytest.mark.slow
def test_every_stage_run_on_its_own_persists_no_pickle(tmp_path):
    home, work = tmp_path / "prefect-home", tmp_path / "work"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180")
    proc = subprocess.run([sys.executable, "-c", RUN_EACH_STAGE, str(work), json.dumps(FAST + FAST_DISTILL)],
                          env=env, capture_output=True, text=True, timeout=1800, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("ran ") == 9
    assert (home / "prefect.db").exists()  # the child really used this Prefect home
    assert pickle_findings(work) == [] and pickle_findings(home) == []
