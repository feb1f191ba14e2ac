"""A checkpoint is sampled with its own recorded schedule (schedule, steps, shift, guidance) unless the user
overrides a field explicitly, and every load logs one `schedule:` line saying which and from where."""

import json
import logging
import subprocess
import sys

import numpy as np
import pytest

from yume.models.config import tiny_model_config
from yume.models.train_config import SamplerConfig, TrainConfig

from conftest import DISTILLED_SCHEDULE as DISTILLED  # noqa: E402  (the distilled_dir fixture's schedule)


def test_resolve_schedule_takes_the_checkpoint_then_explicit_overrides():
    from yume.models.sampler import resolve_schedule

    profile_sampler = SamplerConfig(steps=10, guidance=3.0, seed=7)
    cfg, line = resolve_schedule(DISTILLED, profile_sampler)
    assert (cfg.schedule, len(cfg.renoise_timesteps), cfg.shift, cfg.guidance) == ("renoise", 4, 5.0, 1.0)
    assert cfg.seed == 7  # fields that are not the schedule stay the profile's
    assert line == "schedule: renoise, 4 steps, shift 5, guidance 1 (from checkpoint)"
    cfg, line = resolve_schedule(DISTILLED, profile_sampler, {"guidance": 2.0})
    assert cfg.guidance == 2.0 and cfg.schedule == "renoise"
    assert line.endswith("(from checkpoint; override: guidance)")
    cfg, line = resolve_schedule(None, profile_sampler)
    assert (cfg.schedule, cfg.steps, cfg.guidance) == ("euler", 10, 3.0)
    assert "from profile" in line


def test_a_distilled_checkpoint_samples_four_renoise_steps_without_cfg(distilled_dir, caplog):
    from yume.models.sampler import WorldSampler

    with caplog.at_level(logging.INFO, logger="yume.models.sampler"):
        s = WorldSampler.from_checkpoint(distilled_dir, SamplerConfig(steps=10, guidance=3.0))
    assert any(r.getMessage().startswith("schedule: renoise, 4 steps") for r in caplog.records)
    s.generate([[("W", "→")] * 2], images=np.full((1, 32, 32, 3), 90, np.uint8), seed=0)
    assert s.forward_calls == 2 * 4  # 4 steps per chunk, one forward each (no CFG batch)
    exact = WorldSampler.from_checkpoint(distilled_dir, SamplerConfig(steps=3), use_recorded=False)
    assert (exact.cfg.schedule, exact.cfg.steps) == ("euler", 3)  # evaluate's candidates: the caller decides


def test_yume_generate_logs_and_uses_the_recorded_schedule(distilled_dir, tmp_path):
    """Through the real CLI: the tiny profile says Euler 10 with CFG 3; the distilled checkpoint wins unless told."""
    out = tmp_path / "o.mp4"
    base = [sys.executable, "-m", "yume.cli", "generate", "--checkpoint", str(distilled_dir), "--prompt", "a meadow",
            "--actions", "W:>*2", "--out", str(out)]
    r = subprocess.run(base, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "schedule: renoise, 4 steps, shift 5, guidance 1 (from checkpoint)" in r.stderr
    assert json.loads(r.stdout)["forward_calls"] == 8
    r = subprocess.run(base + ["--set", "sampler.guidance=2"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "guidance 2 (from checkpoint; override: guidance)" in r.stderr


def test_evaluate_reads_the_recorded_guidance(distilled_dir):
    from yume.tasks.evaluate import _recorded_schedule

    cfg = _recorded_schedule(distilled_dir, SamplerConfig(guidance=3.0))
    assert (cfg.schedule, cfg.guidance, cfg.shift) == ("renoise", 1.0, 5.0)
