"""`yume check`: one table, ok / fail and the fix per row, non-zero on any failure; retrain runs it first."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from yume.config import load_profile
from yume.tasks.preflight import PreflightError, model_dir_check, require_preflight, run_checks

YUME = str(Path(sys.executable).with_name("yume"))


def yume(*args):
    return subprocess.run([YUME, *args], capture_output=True, text=True, timeout=300)


def test_yume15_fails_with_a_readable_table_on_a_machine_without_its_weights(tmp_path):
    proc = yume("check", "--profile", "yume15", "--workdir", str(tmp_path))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    rows = {line.split("  ")[0].strip(): line for line in proc.stdout.splitlines()}
    for name, path in (("VAE", "/models/Wan2.2-TI2V-5B-Diffusers/vae"), ("DiT (base)", "/transformer"),
                       ("InternVL (recaption)", "/models/InternVL3-8B-hf"), ("data root", "/data/sekai")):
        assert " fail " in rows[name] and path in rows[name], rows[name]
    assert proc.stdout.count("fix: ") == proc.stdout.count(" fail ")  # every failure says what to do
    assert "work directory" in rows and " ok " in rows["work directory"]


def test_tiny_passes(tmp_path):
    proc = yume("check", "--workdir", str(tmp_path))
    assert proc.returncode == 0, proc.stdout
    assert "0 failed" in proc.stdout


def test_a_truncated_weight_file_fails_its_row(tmp_path):
    from safetensors.torch import save_file

    d = tmp_path / "vae"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"z_dim": 4}))
    save_file({"w": torch.zeros(1000)}, str(d / "diffusion_pytorch_model.safetensors"))
    assert model_dir_check("VAE", "model.codec.pretrained_path", str(d)).status == "ok"
    data = (d / "diffusion_pytorch_model.safetensors").read_bytes()
    (d / "diffusion_pytorch_model.safetensors").write_bytes(data[:-100])
    row = model_dir_check("VAE", "model.codec.pretrained_path", str(d))
    assert row.status == "fail" and "header unreadable" in row.found
    (d / "config.json").write_text("{")
    assert "config.json unreadable" in model_dir_check("VAE", "k", str(d)).found


def test_retrain_checks_before_its_first_stage(tmp_path, prefect_harness):
    """Was: a missing model directory surfaced at the stage that loads it, after the stages before had run."""
    from yume.flows.retrain import retrain

    bad = ["model.dit_pretrained_path=/nonexistent/transformer"]
    with pytest.raises(PreflightError, match="/nonexistent/transformer does not exist"):
        retrain(profile="tiny", workdir=str(tmp_path / "w"), overrides=bad)
    assert not (tmp_path / "w" / "manifests").exists()  # nothing ran
    proc = yume("demo", "--workdir", str(tmp_path / "cli"), "--set", bad[0])
    assert proc.returncode == 2 and "pre-flight check failed" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "cli" / "manifests").exists()


def test_checks_cover_every_model_the_profile_names():
    names = [c.name for c in run_checks(load_profile("yume15", "/tmp/unused"))]
    for expected in ("DiT (base)", "VAE", "text encoder (umT5)", "InternVL (recaption)", "Wan T2V (synthesize_t2v)",
                     "Wan I2V (synthesize_events)", "MiniLM (caption dedup)", "data root", "work directory", "Ray",
                     "Prefect API", "VBench environment"):
        assert expected in names
    with pytest.raises(PreflightError):
        require_preflight(load_profile("yume15", "/tmp/unused"))


def test_vbench_check_names_missing_weights_and_labels_random_ones(tmp_path, monkeypatch):
    """scorer=vbench: the real weights are checked before the first stage (no fallback); random ones are labelled."""
    from yume.tasks.preflight import vbench_check

    # An interpreter that "imports vbench" and otherwise is this one (the weight check needs only yume).
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\ncase "$2" in *"import vbench"*) echo 3.11.7; exit 0;; esac\nexec {sys.executable} "$@"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("VBENCH_CACHE_DIR", str(tmp_path / "vb"))
    vbench = ["score_and_filter.scorer=vbench", "score_and_filter.policy=vbench-leaderboard@1",
              f"score_and_filter.vbench_python={fake}", "score_and_filter.vbench_dimensions=[dynamic_degree]"]
    check = vbench_check(load_profile("tiny", overrides=vbench))
    raft = tmp_path / "vb" / "raft_model" / "models" / "raft-things.pth"
    assert check.status == "fail" and f"1 weight files missing, e.g. {raft}" in check.found
    assert "vbench_weights=random" in check.fix
    raft.parent.mkdir(parents=True)
    raft.write_bytes(b"weights")
    assert vbench_check(load_profile("tiny", overrides=vbench)).found.endswith("imports vbench; weights: cache")
    raft.unlink()
    random = vbench_check(load_profile("tiny", overrides=[*vbench, "score_and_filter.vbench_weights=random"]))
    assert random.status == "ok" and random.found.endswith("weights: random, values not meaningful")
