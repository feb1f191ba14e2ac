"""Foundation training (issue 4) on a few small procedural training worlds: the training set and its cache,
the data pipeline, the rectified-flow module, safe checkpoints, kill-and-resume, Ray Train, the sampler and
`yume generate`."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from yume.config import load_profile

# Only the procedural training worlds (no curation stages needed): 6 short clips at 32 px.
SMALL = [
    "world.height=32", "world.width=32",
    "training_set.sources={procedural: {i2v: 1.0, t2v: 1.0}}",
    "training_set.worlds={n_clips: 6, height: 32, width: 32, frames_per_clip: 120, supersample: 1, seed: 5,"
    " trajectory: {segment_frames: [36, 60]}}",
    "training_set.clips_per_shard=4",
    "train.batch_size=4", "train.lr=0.001", "train.warmup_steps=2", "train.checkpoint_every_n_steps=2",
    "train.max_steps=6", "train.eval.enabled=false", "train.torch_threads=1",
]


@pytest.fixture(scope="module")
def trainset(tmp_path_factory, prefect_harness):
    from yume.flows.build_training_set import build_training_set

    work = tmp_path_factory.mktemp("foundation") / "work"
    first = build_training_set(profile="tiny", workdir=str(work), overrides=SMALL)
    second = build_training_set(profile="tiny", workdir=str(work), overrides=SMALL)
    return work, first, second


def _profile(work, extra=()):
    return load_profile("tiny", str(work), SMALL + list(extra))


def _copy_trainset(src, dst):
    import shutil

    for sub in ("manifests", "cache", "media", "data"):
        if (src / sub).exists():
            shutil.copytree(src / sub, dst / sub, symlinks=True)
    return dst


# ------------------------------------------------------------------------------------------ pure math


def test_timestep_shift_and_x0_conversion_match_the_formulas():
    from yume.models.foundation import shift_t, velocity_from_output, x0_from_velocity

    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    assert torch.allclose(shift_t(t, 3.0), torch.tensor([0.0, 0.5, 0.75, 1.0]))
    assert torch.equal(shift_t(t, 1.0), t)
    x0, eps = torch.randn(3, 2, 1, 2, 2), torch.randn(3, 2, 1, 2, 2)
    tt = torch.tensor([0.3, 0.6, 0.9])
    xt = (1 - tt.view(-1, 1, 1, 1, 1)) * x0 + tt.view(-1, 1, 1, 1, 1) * eps
    # An exact x0 prediction converts to the exact velocity eps - x0 (t above the clamp) ...
    v = velocity_from_output(x0, xt, tt, "x0", 0.1)
    assert torch.allclose(v, eps - x0, atol=1e-5)
    assert torch.allclose(x0_from_velocity(v, xt, tt), x0, atol=1e-5)
    # ... and below the clamp the division uses t_min, so the velocity stays bounded.
    small = torch.tensor([0.01, 0.01, 0.01])
    xs = (1 - 0.01) * x0 + 0.01 * eps
    assert velocity_from_output(x0, xs, small, "x0", 0.1).abs().max() <= (xs - x0).abs().max() / 0.1 + 1e-6
    assert torch.equal(velocity_from_output(v, xt, tt, "velocity", 0.1), v)


def test_logit_normal_t_is_in_range_and_deterministic_per_step():
    from yume.models.foundation import sample_t, step_generator
    from yume.models.train_config import TrainConfig

    cfg = TrainConfig(t_shift=3.0)
    a = sample_t(4096, cfg, step_generator(0, 7, 0, "cpu"))
    b = sample_t(4096, cfg, step_generator(0, 7, 0, "cpu"))
    c = sample_t(4096, cfg, step_generator(0, 8, 0, "cpu"))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert 0 < float(a.min()) and float(a.max()) < 1
    # logit-normal median 0.5, shifted by 3 -> 0.75
    assert abs(float(a.median()) - 0.75) < 0.03


def test_train_config_rejects_bad_values():
    from pydantic import ValidationError

    from yume.models.train_config import SamplerConfig, TrainConfig

    with pytest.raises(ValidationError, match="history_frames"):
        TrainConfig(history_frames=(4, 2))
    with pytest.raises(ValidationError, match="uncond_p"):
        TrainConfig(uncond_p=0.6, drop_event_p=0.3, drop_action_p=0.2)
    with pytest.raises(ValidationError, match="renoise_timesteps"):
        SamplerConfig(renoise_timesteps=[500, 750])
    with pytest.raises(ValidationError, match="bogus"):
        TrainConfig.model_validate({"bogus": 1})


# ------------------------------------------------------------------------------------------ checkpoints


def test_safe_checkpoint_round_trip_without_pickle(tmp_path):
    from yume.models.checkpoint import load_safe, read_meta, save_safe

    w = torch.randn(3, 4)
    obj = {"state_dict": {"model.w": w, "ema.w": w}, "global_step": 12, "epoch": 0,
           "opt": [{"state": {0: {"exp_avg": torch.ones(2)}}, "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.99)}]}],
           "rng": {"numpy": ("MT19937", np.arange(5, dtype=np.uint32), 2, 0, 0.0)}, "dtype": torch.bfloat16,
           "yume": {"run_hash": "abc", "data_hash": "def"}}
    path = save_safe(obj, tmp_path / "c.safetensors")
    assert path.read_bytes()[:2] != b"PK"  # not a torch.save zip
    back = load_safe(path)
    assert torch.equal(back["state_dict"]["model.w"], w) and torch.equal(back["state_dict"]["ema.w"], w)
    assert back["opt"][0]["state"][0]["exp_avg"].tolist() == [1.0, 1.0]
    assert back["opt"][0]["param_groups"][0]["betas"] == (0.9, 0.99)
    assert back["rng"]["numpy"][1].dtype == np.uint32 and back["dtype"] is torch.bfloat16
    assert read_meta(path) == {"run_hash": "abc", "data_hash": "def", "global_step": 12}
    assert list(tmp_path.iterdir()) == [path]  # no temporary left behind


def test_safe_checkpoint_refuses_arbitrary_objects_and_foreign_files(tmp_path):
    from yume.models.checkpoint import CheckpointFormatError, load_safe, save_safe

    with pytest.raises(CheckpointFormatError, match=r"checkpoint\.callbacks\.cb"):
        save_safe({"callbacks": {"cb": object()}}, tmp_path / "bad.safetensors")
    assert not (tmp_path / "bad.safetensors").exists()
    from safetensors.torch import save_file

    save_file({"w": torch.ones(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointFormatError, match="not a yume-checkpoint"):
        load_safe(tmp_path / "plain.safetensors")


# ------------------------------------------------------------------------------------------ training set


def test_training_set_manifest_and_cache_are_reused(trainset):
    from yume.datasets.manifest import read_manifest, validate_manifest

    work, first, second = trainset
    assert validate_manifest(work / "manifests" / "train") == []
    df = read_manifest(work / "manifests" / "train").to_pandas()
    assert set(df.source) == {"procedural"} and (df.status == "ok").all() and len(df) == first["rows"]
    assert df["keys"].notna().all() and df["mouse"].notna().all()
    assert first["manifest_shards_written"] >= 1 and second["manifest_shards_written"] == 0
    info = json.loads(next((work / "cache" / "train").glob("*/cache.json")).read_text())
    assert info["shards_encoded"] == 0  # the second build encoded nothing
    assert info["clips"] == 6 and info["train"] == {"height": 32, "width": 32, "fps": 16.0}


def test_script_labels_give_one_chunk_per_segment_with_the_rendered_actions(tmp_path):
    """labels: script (the tiny profile's one action per chunk): a row per script segment, labelled with the
    script as rendered (pitch flips applied), each holding exactly one chunk whose motion is that segment's."""
    import pyarrow.parquet as pq

    from yume.datasets.foundation_data import chunk_positions
    from yume.datasets.training_set import frame_stride, label_worlds
    from yume.tasks.build_training_set import ensure_training_worlds

    over = ["training_set.worlds={n_clips: 3, height: 32, width: 32, frames_per_clip: 97, supersample: 1, seed: 9,"
            " labels: script, trajectory: {segment_frames: [8, 8], pitch_rate_range: [0.02, 0.03], max_pitch: 0.3}}"]
    profile = load_profile("tiny", str(tmp_path / "work"), over)
    root = ensure_training_worlds(profile)
    rows = label_worlds(profile, root)
    gt = {r["video_file"]: json.loads(r["script"]) for r in pq.read_table(root / "ground_truth" / "clips.parquet").to_pylist()}
    assert len(rows) == sum(len(s) for s in gt.values()) == 3 * 12  # 96 transitions in 8-frame segments
    stride = frame_stride(profile.world.fps, profile.train.fps)
    assert stride == 2
    pitched = 0
    for r in rows:
        script = gt[r["video_uri"].removeprefix("train_worlds/")]
        seg = next(s for s in script if (s["start"], s["end"]) == (r["start_frame"], r["end_frame"]))
        assert (r["keys"], r["mouse"]) == (seg["keys"], seg["mouse"]) and r["source"] == "procedural"
        lo, hi = chunk_positions(r["start_frame"], r["end_frame"], r["clip_frames"], stride, 4, 1)
        assert lo == hi == r["start_frame"] // stride + 1  # the chunk whose motion is exactly this segment
        pitched += seg["mouse"] in ("↑", "↓", "↑→", "↑←", "↓→", "↓←")
    assert pitched > 0
    from yume.datasets.sekai import read_annotations
    from yume.datasets.training_set import script_rows

    assert script_rows(read_annotations(root)[0], root, None) == []  # no script: no rows, nothing invented
    # the rule's segments are >= actions.min_segment_frames long: it cannot label 8-frame actions
    rule_profile = load_profile("tiny", str(tmp_path / "work"), [over[0].replace("labels: script", "labels: rule")])
    by_rule = label_worlds(rule_profile, root)
    assert len(by_rule) < len(rows) / 4
    assert all(r["end_frame"] - r["start_frame"] >= rule_profile.actions.min_segment_frames for r in by_rule)


def test_cache_key_changes_with_resolution_codec_and_encoder(trainset):
    from yume.datasets.training_set import cache_key

    work, _, _ = trainset
    base = _profile(work)
    key = cache_key(base, "enc-a")
    assert cache_key(_profile(work), "enc-a") == key
    assert cache_key(base, "enc-b") != key
    assert cache_key(_profile(work, ["train.height=48", "train.width=48"]), "enc-a") != key
    assert cache_key(_profile(work, ["model.codec.patch_size=2", "model.dit.in_channels=12", "model.dit.out_channels=12"]), "enc-a") != key
    assert cache_key(_profile(work, ["train.lr=0.5"]), "enc-a") == key  # optimisation does not change latents


def test_data_is_deterministic_balanced_and_worker_safe(trainset):
    from yume.tasks.train_foundation import build_module_and_data, prepare_run

    work, _, _ = trainset
    _, dm = build_module_and_data(prepare_run(_profile(work)))
    ds = dm.dataset() if callable(getattr(dm, "dataset", None)) else dm.train_dataloader().dataset
    a, b = ds[5], ds[5]
    assert torch.equal(a["span"], b["span"]) and torch.equal(a["text"], b["text"])
    assert a["span"].shape[1] == a["n_history"] + 4  # history then the 4-frame chunk, [C, T, h, w]
    batches0 = list(dm.train_dataloader())  # max_steps = 6 batches, read to the end (workers shut down cleanly)
    _, dm2 = build_module_and_data(prepare_run(_profile(work, ["train.num_workers=2"])))
    batches2 = list(dm2.train_dataloader())
    assert len(batches0) == len(batches2) == 6
    for x, y in zip(batches0, batches2):
        assert torch.equal(x["span"], y["span"]) and torch.equal(x["text"], y["text"])
    # Class balance: labels are drawn uniformly among the source's labels, not by row frequency.
    from collections import Counter

    rows = ds.records
    labels = Counter((rows[ds.table.draw(np.random.default_rng(i), "i2v")[0]]["keys"],
                      rows[ds.table.draw(np.random.default_rng(i), "i2v")[0]]["mouse"]) for i in range(3000))
    counts = np.array(list(labels.values()), dtype=float)
    assert counts.max() / counts.min() < 1.6, labels


def test_steps_alternate_with_i2v_on_even_steps_at_the_configured_fraction():
    from yume.datasets.foundation_data import mode_of_step

    assert [mode_of_step(s, 0.5) for s in range(4)] == ["i2v", "t2v", "i2v", "t2v"]  # REFERENCE section 5
    assert [mode_of_step(s, 0.75) for s in range(4)] == ["i2v", "t2v", "i2v", "i2v"]
    assert {mode_of_step(s, 1.0) for s in range(10)} == {"i2v"} and {mode_of_step(s, 0.0) for s in range(10)} == {"t2v"}
    for f in (0.25, 0.6, 0.75):
        assert sum(mode_of_step(s, f) == "i2v" for s in range(1000)) == round(1000 * f)


def test_still_image_steps_build_the_history_as_inference_does(trainset):
    """A still-image step's history is the anchor (the frame before the chunk) as an image: still_image_frames
    copies of its latent, the length ``WorldSampler.image_history`` gives an image, for the whole batch."""
    from yume.datasets.foundation_data import mode_of_step, still_step
    from yume.tasks.train_foundation import build_module_and_data, prepare_run

    work, _, _ = trainset
    _, dm = build_module_and_data(prepare_run(_profile(work, ["train.still_image_p=0.5", "train.still_image_frames=5",
                                                              "train.history_frames=[2, 3]"])))
    ds = dm.train_dataloader().dataset
    s = ds.settings
    stills = [st for st in range(40) if still_step(s, st, mode_of_step(st, s.i2v_fraction))]
    moving = [st for st in range(40) if mode_of_step(st, s.i2v_fraction) == "i2v" and st not in stills]
    assert stills and moving
    for st in stills[:2]:
        for j in range(s.batch_size):
            index = st * s.batch_size + j
            item = ds[index]
            assert item["still"] and item["n_history"] == 5 and item["mode"] == 0
            r, c = ds.table.draw(np.random.default_rng([s.seed, index]), "i2v")
            clip = ds.records[r]["clip_key"]
            anchor, chunk = ds._latents(clip, c - 1, c), ds._latents(clip, c, c + s.chunk)
            for k in range(5):
                assert torch.equal(item["span"][:, k], anchor[0])
            assert torch.equal(item["span"][:, 5:], chunk.permute(1, 0, 2, 3))
    for st in moving[:2]:
        item = ds[st * s.batch_size]
        assert not item["still"] and item["n_history"] in (2, 3)


# ------------------------------------------------------------------------------------------ training


def _final_weights(run):
    from yume.tasks.train_foundation import last_checkpoint, state_from_checkpoint

    return state_from_checkpoint(last_checkpoint(run.ckpt_dir), prefer_ema=False)[0]


def test_training_reduces_loss_and_writes_safe_checkpoints(trainset, tmp_path):
    """The loss of one fixed batch at fixed noise and t (not two random minibatches) falls over 30 steps from
    random init; checkpoints are kept as configured."""
    from yume.tasks.train_foundation import build_module_and_data, fit_local, loss_curve, prepare_run, state_from_checkpoint

    work = _copy_trainset(trainset[0], tmp_path / "w")
    run = prepare_run(_profile(work, ["model.dit_init=random", "train.max_steps=30", "train.log_every_n_steps=1",
                                      "train.checkpoint_every_n_steps=10"]))
    module, dm = build_module_and_data(run)
    batch = next(iter(dm.train_dataloader()))
    with torch.no_grad():
        before = float(module.flow_loss(batch, step=12345)[0])
    summary = fit_local(run)
    assert summary["global_step"] == 30 and summary["stopped_by"] == "max_steps"
    ckpts = sorted(run.ckpt_dir.glob("step-*.safetensors"))
    assert [p.name for p in ckpts] == ["step-0000020.safetensors", "step-0000030.safetensors"]  # keep 2
    module.model.load_state_dict(state_from_checkpoint(ckpts[-1], prefer_ema=False)[0])
    with torch.no_grad():
        after = float(module.flow_loss(batch, step=12345)[0])
    assert after < 0.8 * before, (before, after)
    loss_curve(run.run_dir, tmp_path / "loss.png")
    assert (tmp_path / "loss.png").stat().st_size > 1000
    assert (tmp_path / "w" / "checkpoints").exists()
    assert list((tmp_path / "w").rglob("events.out.tfevents*"))  # TensorBoard next to the CSV log


def test_resume_refuses_a_checkpoint_of_other_data(trainset, tmp_path):
    from yume.tasks.train_foundation import fit_local, last_checkpoint, prepare_run

    work = _copy_trainset(trainset[0], tmp_path / "w")
    run = prepare_run(_profile(work, ["train.max_steps=2"]))
    fit_local(run)
    run.resume_from = str(last_checkpoint(run.ckpt_dir))
    run.data_hash = "something-else"
    with pytest.raises(ValueError, match="data_hash"):
        fit_local(run, max_steps=4)


KILLER = textwrap.dedent("""
    import os, signal, sys
    import lightning as L
    import safetensors.torch
    from yume.config import load_profile
    from yume.tasks.train_foundation import fit_local, prepare_run

    mode, step = sys.argv[2], int(sys.argv[3])

    class KillAfterStep(L.Callback):
        def on_train_batch_end(self, trainer, *a):
            if mode == "after_step" and trainer.global_step == step:
                os.kill(os.getpid(), signal.SIGKILL)

    real_save = safetensors.torch.save_file

    def dying_save(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata)
        if mode == "mid_write" and os.path.basename(filename).startswith(f".tmp-step-{step:07d}"):
            data = open(filename, "rb").read()
            open(filename, "wb").write(data[: len(data) // 2])  # the disk holds half of it
            os.kill(os.getpid(), signal.SIGKILL)

    safetensors.torch.save_file = dying_save
    run = prepare_run(load_profile("tiny", sys.argv[1], sys.argv[4:]))
    fit_local(run, extra_callbacks=[KillAfterStep()])
""")


@pytest.mark.slow
@pytest.mark.parametrize("mode, step, resumes_at", [("after_step", 5, 4), ("after_step", 3, 2), ("mid_write", 4, 2)])
def test_killed_run_resumes_to_the_same_weights(trainset, tmp_path, mode, step, resumes_at):
    """SIGKILL after step 5 (last checkpoint: step 4), or in the middle of writing step 4's checkpoint (half of
    it on disk, last checkpoint step 2); restart: the final weights equal an uninterrupted run's."""
    from yume.tasks.train_foundation import fit_local, prepare_run

    straight = _copy_trainset(trainset[0], tmp_path / "straight")
    killed = _copy_trainset(trainset[0], tmp_path / "killed")
    ref = prepare_run(_profile(straight))
    fit_local(ref)
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    proc = subprocess.run([sys.executable, str(script), str(killed), mode, str(step), *SMALL], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    resumed = prepare_run(_profile(killed))
    if mode == "mid_write":
        assert list(resumed.ckpt_dir.glob(".tmp-step-0000004*"))  # the half-written file is really there
    assert resumed.resume_from and resumed.resume_from.endswith(f"step-{resumes_at:07d}.safetensors")
    summary = fit_local(resumed)
    assert summary["global_step"] == 6
    assert not list(resumed.ckpt_dir.glob(".tmp-*"))  # the leftover was cleaned up
    a, b = _final_weights(ref), _final_weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_ray_train_two_cpu_workers(trainset, tmp_path):
    """TorchTrainer with RayDDPStrategy over 2 CPU workers (gloo), step-based checkpoints reported to Ray."""
    import ray

    from yume.tasks.train_foundation import fit, prepare_run

    work = _copy_trainset(trainset[0], tmp_path / "w")
    profile = _profile(work, ["train.ray.enabled=true", "train.ray.num_workers=2", "train.max_steps=4",
                              "ray.num_cpus=2"])
    run = prepare_run(profile)
    try:
        summary = fit(run)
    finally:
        ray.shutdown()
    assert summary["global_step"] == 4 and summary["ray_workers"] == 2
    assert summary["ray_checkpoint"] and os.path.isdir(summary["ray_checkpoint"])
    assert (run.ckpt_dir / "step-0000004.safetensors").is_file()
    digests = summary["rank_state_digests"]  # each rank hashed its own weights, EMA and buffers after fit
    assert len(digests) == 2 and digests[0] == digests[1]

    # The weights equal a single process that runs each rank's batch with that rank's noise and averages the
    # gradients (what DDP's all-reduce must amount to), then clips, steps AdamW and its schedule, updates EMA.
    from yume.datasets.foundation_data import FoundationDataset, StepSampler, collate
    from yume.tasks.train_foundation import build_module_and_data, state_from_checkpoint

    module, dm = build_module_and_data(run)
    t = profile.train
    optimizers = module.configure_optimizers()
    opt, sched = optimizers["optimizer"], optimizers["lr_scheduler"]["scheduler"]
    ds = FoundationDataset(dm.rows, dm.settings, dm.roots, dm.cache_root, dm.text, 2, dm.text_dim)
    for step in range(4):
        losses = [module.flow_loss(collate([ds[i] for i in StepSampler(step, 1, t.batch_size, 2, rank)]), step, rank)[0]
                  for rank in (0, 1)]
        opt.zero_grad(set_to_none=True)
        (sum(losses) / 2).backward()
        torch.nn.utils.clip_grad_norm_(module.model.parameters(), t.grad_clip)
        opt.step()
        sched.step()
        module.update_ema()
    trained = state_from_checkpoint(run.ckpt_dir / "step-0000004.safetensors", prefer_ema=False)[0]
    reference = module.model.state_dict()
    assert trained.keys() == reference.keys()
    for k in reference:
        torch.testing.assert_close(trained[k], reference[k], rtol=1e-4, atol=1e-5, msg=k)


# ------------------------------------------------------------------------------------------ sampler


def test_parse_actions_syntax(tmp_path):
    from yume.models.sampler import ChunkAction, parse_actions

    assert parse_actions("W:>, S+D:^<; None:·*2") == [ChunkAction("W", "→"), ChunkAction("S+D", "↑←"),
                                                       ChunkAction("None", "·"), ChunkAction("None", "·")]
    with pytest.raises(ValueError):
        parse_actions("Q:>")


@pytest.fixture(scope="module")
def trained(trainset, tmp_path_factory):
    from yume.tasks.train_foundation import export_final, fit_local, last_checkpoint, prepare_run

    work = _copy_trainset(trainset[0], tmp_path_factory.mktemp("trained") / "w")
    run = prepare_run(_profile(work, ["train.max_steps=4"]))
    fit_local(run)
    final = export_final(last_checkpoint(run.ckpt_dir), work / "final")
    return work, final


def test_sampler_generates_i2v_and_t2v_with_both_schedules(trained):
    from yume.models.sampler import WorldSampler
    from yume.models.train_config import SamplerConfig

    work, final = trained
    for cfg in (SamplerConfig(steps=3), SamplerConfig(schedule="renoise", guidance=2.0)):
        s = WorldSampler.from_checkpoint(final, cfg)
        image = np.full((2, 32, 32, 3), 120, np.uint8)
        video = s.generate([[("W", "→")] * 3, [("S", "·")] * 3], images=image, seed=1)
        assert video.shape == (2, 1 + 3 * 4, 32, 32, 3) and video.dtype == np.uint8
        assert np.array_equal(video[:, 0], image)  # I2V keeps the start image as frame 0
        again = s.generate([[("W", "→")] * 3, [("S", "·")] * 3], images=image, seed=1)
        assert np.array_equal(video, again)
    t2v = s.generate([[("A", "←")] * 2], events=["a walk in a meadow"], height=32, width=32, seed=0)
    assert t2v.shape[1] == 2 * 4


def test_yume_generate_writes_an_mp4(trained, tmp_path):
    from yume.cli import main
    from yume.datasets.sekai import probe_video

    work, final = trained
    img = tmp_path / "start.png"
    import cv2

    cv2.imwrite(str(img), np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    out = tmp_path / "out.mp4"
    assert main(["generate", "--checkpoint", str(final), "--image", str(img), "--actions", "W:>*2, D:·",
                 "--out", str(out), "--set", "sampler.steps=2"]) == 0
    frames, fps, height, width = probe_video(out)
    assert (frames, fps, height, width) == (1 + 3 * 4, 16.0, 32, 32)
    actions = tmp_path / "acts.json"
    actions.write_text(json.dumps([{"keys": "W", "mouse": "→", "event": "rain starts"}, {"keys": "S", "mouse": "·"}]))
    out2 = tmp_path / "t2v.mp4"
    assert main(["generate", "--checkpoint", str(final), "--prompt", "a street", "--actions", str(actions),
                 "--out", str(out2)]) == 0
    assert probe_video(out2)[0] == 2 * 4
    with pytest.raises(SystemExit):  # neither --image nor --prompt
        main(["generate", "--checkpoint", str(final), "--actions", "W:>", "--out", str(out2)])
    assert main(["generate", "--checkpoint", str(final), "--prompt", "x", "--actions", "Q:>", "--out", str(out2)]) == 2


def test_bench_train_prints_throughput(capsys):
    from yume.tasks.bench_train import main

    assert main(["--steps", "2", "--warmup", "1", "--batch", "2", "--history", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["prediction_tokens"] == 4 * 16 and out["history_tokens"] > 0 and out["batch"] == 2
    assert out["samples_per_second"] > 0 and out["tokens_per_second"] == pytest.approx(
        out["samples_per_second"] * 64, rel=0.01)
    assert out["model_tflops_per_step"] > 0
    assert main(["--profile", "yume15"]) == 2  # the 5B step needs a GPU: a clear refusal, not an OOM


WATCH = textwrap.dedent("""
    import logging, sys
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from yume.config import load_profile
    from yume.tasks.train_foundation import fit_local, prepare_run

    fit_local(prepare_run(load_profile("tiny", sys.argv[1], sys.argv[2:])))
""")


def test_training_you_can_watch(trainset, tmp_path):
    """Configured as the CLI configures logging: a start line with the TensorBoard command, a progress line every
    N steps (loss, samples/s, time left), each Lightning line once, no library tips, a readable run name."""
    import re

    work = _copy_trainset(trainset[0], tmp_path / "w")
    proc = subprocess.run([sys.executable, "-c", WATCH, str(work), *SMALL, "train.progress_every_n_steps=2"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    err = proc.stderr
    assert "tensorboard --logdir" in err and "/logs/tb" in err
    progress = re.findall(r"train_foundation step (\d+)/6: loss [\d.]+, [\d.]+ samples/s, \d+:\d\d:\d\d elapsed, "
                          r"\d+:\d\d:\d\d left", err)
    assert progress == ["2", "4", "6"], err[-2000:]
    assert err.count("GPU available") == 1 and "Tip:" not in err and "in eval mode" not in err
    (run_dir,) = [p for p in (work / "checkpoints" / "foundation" / "runs").iterdir() if not p.is_symlink()]
    alias = [p for p in run_dir.parent.iterdir() if p.is_symlink()]
    assert len(alias) == 1 and re.fullmatch(rf"train_foundation-\d{{8}}-{run_dir.name[:8]}", alias[0].name)
    assert alias[0].resolve() == run_dir.resolve()


def test_devices_and_strategy_come_from_the_profile(trainset, tmp_path, monkeypatch):
    """Was: a hard-coded devices=1. The world size is part of the run hash (it changes the optimisation)."""
    import lightning as L

    from yume.tasks.train_foundation import fit_local, prepare_run

    work = _copy_trainset(trainset[0], tmp_path / "w")
    seen = {}

    class Stop(Exception):
        pass

    def capture(**kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(L, "Trainer", capture)
    run = prepare_run(_profile(work, ["train.devices=2", "train.strategy=ddp"]))
    with pytest.raises(Stop):
        fit_local(run)
    assert seen["devices"] == 2 and seen["strategy"] == "ddp"
    assert run.run_hash != prepare_run(_profile(work)).run_hash
