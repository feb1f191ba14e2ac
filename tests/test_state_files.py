"""Corrupt or hostile state files: each gets a clear error naming the file and what to do, or a fall-back to the
previous good state (with a warning). Never a traceback from json.loads, never a silently wrong result."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from yume.config import ConfigError, load_profile
from yume.errors import StateFileError
from yume.models.checkpoint import save_safe
from yume.tasks.train_foundation import check_export, export_final, last_checkpoint


def write_step(ckpt_dir: Path, step: int, model_config: dict | None = None, state: dict | None = None) -> Path:
    path = ckpt_dir / f"step-{step:07d}.safetensors"
    save_safe({"global_step": step, "state_dict": state or {"model.w": torch.full((64,), float(step))},
               "yume": {"model_config": model_config or {}}}, path)
    (ckpt_dir / "last.json").write_text(json.dumps({"file": path.name, "step": step}))
    return path


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_a_truncated_newest_checkpoint_falls_back_to_the_one_before(tmp_path, caplog):
    older, newest = write_step(tmp_path, 200), write_step(tmp_path, 400)
    assert last_checkpoint(tmp_path) == newest
    truncate(newest)
    with caplog.at_level(logging.WARNING):
        assert last_checkpoint(tmp_path) == older
    assert f"checkpoint {newest} is unreadable" in caplog.text
    truncate(older)
    assert last_checkpoint(tmp_path) is None  # nothing readable: training starts over, it never loads garbage


def test_a_pointer_outside_the_checkpoint_directory_is_ignored(tmp_path, caplog):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    inside = write_step(ckpt, 100)
    outside = write_step(tmp_path, 900)  # a readable checkpoint, so only the name guard keeps it out
    for name in ("../step-0000900.safetensors", str(outside), "sub/../../step-0000900.safetensors"):
        (ckpt / "last.json").write_text(json.dumps({"file": name}))
        with caplog.at_level(logging.WARNING):
            assert last_checkpoint(ckpt) == inside
        assert "path_escape" in caplog.text
        caplog.clear()
    (ckpt / "last.json").write_text('{"file": "step-00')  # killed mid-write by an older version
    with caplog.at_level(logging.WARNING):
        assert last_checkpoint(ckpt) == inside
    assert "last.json is unreadable" in caplog.text


@pytest.fixture()
def exported(tmp_path):
    from yume.models.wan_dit import WanDiT

    profile = load_profile("tiny", tmp_path)
    model = WanDiT.from_config(profile.model)
    state = {f"ema.{k}": v for k, v in model.state_dict().items()}
    ckpt = write_step(tmp_path / "ckpt", 10, profile.model.model_dump(mode="json"), state)
    return export_final(ckpt, tmp_path / "final")


def test_a_truncated_or_altered_foundation_is_refused_before_distillation(exported, tmp_path):
    from yume.tasks.distill import prepare_distill_run

    check_export(exported, "foundation", "fix it")  # a whole export passes
    weights = exported / "diffusion_pytorch_model.safetensors"
    assert json.loads((exported / "yume_model.json").read_text())["weights_sha256"][weights.name]
    good = weights.read_bytes()

    profile = load_profile("tiny", tmp_path / "work", [f"distill.foundation={exported}"])
    truncate(weights)
    with pytest.raises(StateFileError, match=f"foundation weights {weights} are unreadable .*re-export it"):
        prepare_distill_run(profile)

    flipped = bytearray(good)
    flipped[-5] ^= 0xFF  # whole file, one weight byte changed: only the recorded sha256 tells
    weights.write_bytes(bytes(flipped))
    with pytest.raises(StateFileError, match="do not match the sha256 recorded at export"):
        check_export(exported, "foundation", "fix it")

    weights.write_bytes(good)
    (exported / "yume_model.json").write_text('{"model_config": ')
    with pytest.raises(StateFileError, match="foundation record .*yume_model.json is unreadable"):
        prepare_distill_run(profile)


def test_a_truncated_training_checkpoint_handed_to_distill_is_refused(tmp_path):
    ckpt = write_step(tmp_path, 10)
    truncate(ckpt, 0.9)
    with pytest.raises(StateFileError, match=f"foundation checkpoint {ckpt} is unreadable"):
        check_export(ckpt, "foundation", "fix it")


@pytest.mark.parametrize("text", ['{"path": "/x", "digest": "ab', "[1, 2]", ""])
def test_a_corrupt_promotion_record_is_an_error_not_nothing_promoted(tmp_path, text):
    from yume.tasks.evaluate import maybe_promote, promoted_file, read_promoted

    profile = load_profile("tiny", tmp_path)
    promoted_file(profile).parent.mkdir(parents=True)
    promoted_file(profile).write_text(text)
    with pytest.raises(StateFileError, match=f"promotion record {promoted_file(profile)} is unreadable"):
        read_promoted(profile)
    metrics = {"candidates": {"distilled_4step": {"joint_accuracy": 0.9, "path": str(tmp_path)}}}
    with pytest.raises(StateFileError, match="move it aside"):
        maybe_promote(profile, metrics)
    assert promoted_file(profile).read_text() == text  # left for the operator, not overwritten


@pytest.mark.parametrize("text", ['[{"video_id": "a", "decision": "acc', '[{"video_id": "a"},', "{not json"])
def test_a_broken_decisions_json_names_the_file_and_what_to_do(tmp_path, text):
    from yume.tasks.synthesize_events import read_decisions

    path = tmp_path / "decisions.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"cannot read {path}.*move it aside"):
        read_decisions(path, {"a"})


def test_non_object_decision_entries_are_problems_not_crashes(tmp_path):
    from yume.tasks.synthesize_events import read_decisions

    path = tmp_path / "decisions.json"
    path.write_text(json.dumps([{"video_id": "a", "decision": "accept"}, "b", 3]))
    decisions, problems = read_decisions(path, {"a"})
    assert set(decisions) == {"a"} and [p["row"] for p in problems] == [1, 2]
