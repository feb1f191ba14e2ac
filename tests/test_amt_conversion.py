"""VBench's AMT-S checkpoint is converted once to safetensors; the weights-only loader is tried first and a
pickle that needs more is refused unless the operator says --trust-pickle. Synthetic checkpoints (no real
AMT weights can be fetched here); the converter needs only torch, so this runs in the main environment."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from yume.datasets.manifest import file_sha256
from yume.tasks.scoring_vbench import VBenchWeightsMissing, convert_amt_checkpoint

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "convert_amt_checkpoint.py"


class Payload:
    """Unpickling this runs code: what a hostile checkpoint would do."""

    def __init__(self, flag: Path):
        self.flag = flag

    def __reduce__(self):
        return (Path.touch, (self.flag,))


def state():
    g = torch.Generator().manual_seed(0)
    return {"encoder.conv.weight": torch.randn(4, 3, 3, 3, generator=g), "encoder.conv.bias": torch.randn(4, generator=g)}


def test_a_tensor_only_checkpoint_converts_without_trusting_pickle(tmp_path):
    src = tmp_path / "amt-s.pth"
    torch.save({"state_dict": state()}, src)
    out = convert_amt_checkpoint(src)
    assert out == tmp_path / "amt-s.safetensors"
    loaded = load_file(str(out))
    assert loaded.keys() == state().keys() and all(torch.equal(loaded[k], v) for k, v in state().items())
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata()["source_sha256"] == file_sha256(src)


def test_a_checkpoint_with_python_objects_needs_trust_pickle(tmp_path):
    src = tmp_path / "amt-s.pth"
    torch.save({"state_dict": state(), "args": argparse.Namespace(lr=1e-4)}, src)  # like a training dump
    with pytest.raises(VBenchWeightsMissing, match="not loadable weights-only .*--trust-pickle"):
        convert_amt_checkpoint(src)
    assert not (tmp_path / "amt-s.safetensors").exists()
    out = convert_amt_checkpoint(src, tmp_path / "x.safetensors", trust_pickle=True)
    assert torch.equal(load_file(str(out))["encoder.conv.bias"], state()["encoder.conv.bias"])


def test_a_hostile_pickle_runs_nothing_without_trust(tmp_path):
    flag = tmp_path / "pwned"
    src = tmp_path / "amt-s.pth"
    torch.save({"state_dict": state(), "x": Payload(flag)}, src)
    proc = subprocess.run([sys.executable, str(SCRIPT), str(src)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--trust-pickle" in proc.stderr
    assert not flag.exists()  # the weights-only loader refused before running anything
