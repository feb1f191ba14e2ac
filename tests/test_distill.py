"""Self-Forcing DMD distillation (issue 5): the loss against an independent computation, the shared exit step,
no-grad steps before it, the critic:generator ratio, EMA, resume, Ray Train, and the flow end to end on a random
tiny foundation (the stage's machinery, not its quality: that needs a trained foundation)."""

import json
import shutil

import numpy as np
import pytest
import torch

from yume.config import load_profile

BASE = ["world.height=32", "world.width=32", "distill.batch_size=2", "distill.chunks=2", "distill.starts.count=4",
        "distill.starts.supersample=1", "distill.torch_threads=1", "distill.lr_generator=0.001",
        "distill.lr_critic=0.001", "distill.ema_start_step=2", "distill.checkpoint_every_n_steps=3",
        "distill.max_steps=6", "distill.log_every_n_steps=1"]


def make_foundation(out, profile) -> str:
    """A random-init tiny foundation in the exported ``final`` format (what train_foundation writes)."""
    from yume.models.wan_dit import WanDiT

    torch.manual_seed(0)
    m = WanDiT.from_config(profile.model)
    m.save_pretrained(out)
    (out / "yume_model.json").write_text(json.dumps({"model_config": profile.model.model_dump(mode="json"),
                                                     "train_config": profile.train.model_dump(mode="json")}))
    return str(out)


@pytest.fixture(scope="module")
def foundation(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill-foundation")
    return make_foundation(root / "final", load_profile("tiny", str(root), BASE))


def _profile(work, foundation, extra=()):
    return load_profile("tiny", str(work), BASE + [f"distill.foundation={foundation}", *extra])


def _pool(n=3, chunk_hw=(8, 8)):
    from yume.models.distill import StartPool
    from yume.tasks.action_text import KEY_LABELS, MOUSE_LABELS

    g = torch.Generator().manual_seed(0)
    labels = [(k, m) for k in KEY_LABELS for m in MOUSE_LABELS]
    return StartPool(torch.randn(n, 48, 2, *chunk_hw, generator=g), torch.tensor([0, -1, -1][:n]),
                     [torch.randn(2, 32, generator=g)], labels, [torch.randn(3, 32, generator=g) for _ in labels], 8,
                     "action_first")


def _module(profile, foundation=None, **distill):
    from yume.models.distill import DistillModule

    d = profile.distill.model_copy(update=distill).model_dump(mode="json")
    m = DistillModule(profile.model.model_dump(mode="json"), profile.train.model_dump(mode="json"), d, foundation)
    m.set_starts(_pool())
    return m


# ------------------------------------------------------------------------------------------ math


def test_dmd_loss_matches_an_independent_computation():
    from yume.models.distill import dmd_generator_loss

    rng = np.random.default_rng(0)
    x_np, fake_np, real_np = (rng.normal(size=(2, 3, 2, 2, 2)) for _ in range(3))
    # Independent: per-sample normaliser mean|x - x0_real|, g = (fake - real) / it, loss = 0.5 mean(g^2)
    # (x - sg(x - g) = g), and d loss / dx = g / numel.
    norm = np.abs(x_np - real_np).reshape(2, -1).mean(1).reshape(2, 1, 1, 1, 1)
    g = (fake_np - real_np) / norm
    want_loss = 0.5 * np.mean(g ** 2)
    x = torch.tensor(x_np, dtype=torch.float32, requires_grad=True)
    loss, info = dmd_generator_loss(x, torch.tensor(fake_np, dtype=torch.float32), torch.tensor(real_np, dtype=torch.float32))
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(want_loss, rel=1e-5)
    loss.backward()
    np.testing.assert_allclose(x.grad.numpy(), g / g.size, rtol=1e-4, atol=1e-9)
    # Hand-checked numbers on a 1-element sample: x=1, real=0, fake=0.5 -> norm 1, g 0.5, loss 0.125.
    one = torch.ones(1, 1, 1, 1, 1, requires_grad=True)
    l1, _ = dmd_generator_loss(one, torch.full((1, 1, 1, 1, 1), 0.5), torch.zeros(1, 1, 1, 1, 1))
    assert float(l1) == pytest.approx(0.125)


def test_real_score_cfg_and_x0_conversion_match_the_sampler():
    from yume.models.distill import predict_x0, real_cfg
    from yume.models.sampler import renoise_grid  # the distiller trains on the levels the sampler uses

    assert torch.allclose(real_cfg(torch.tensor([2.0]), torch.tensor([1.0]), 3.0), torch.tensor([5.0]))  # 2 + 3 (2 - 1)
    # shift(u) = s u / (1 + (s - 1) u), computed by hand
    assert renoise_grid([1000, 750, 500, 250], 5.0) == pytest.approx([1.0, 0.9375, 0.83333, 0.625], abs=1e-4)
    assert renoise_grid([1000, 750, 500, 250], 7.0) == pytest.approx([1.0, 0.95455, 0.875, 0.7], abs=1e-4)

    class X0Model(torch.nn.Module):  # predicts a fixed x0
        def __init__(self, x0):
            super().__init__()
            self.x0 = x0

        def forward(self, x, t, text, hist):
            return self.x0.expand_as(x)

    x0, x_t = torch.randn(2, 3, 1, 2, 2), torch.randn(2, 3, 1, 2, 2)
    t = torch.tensor([0.5, 0.9])
    assert torch.allclose(predict_x0(X0Model(x0), x_t, t, None, None, "x0", 0.1), x0, atol=1e-6)
    v = torch.randn_like(x_t)  # velocity model: x0 = x_t - t v
    got = predict_x0(X0Model(v), x_t, t, None, None, "velocity", 0.1)
    assert torch.allclose(got, x_t - t.view(-1, 1, 1, 1, 1) * v)


def test_exit_steps_cover_every_level_and_depend_on_the_seed():
    """What the ranks share is checked on two real ranks (test_ray_train_two_cpu_workers: rank_exit_steps)."""
    from yume.models.distill import exit_step

    seq = [exit_step(0, i, 4) for i in range(200)]
    assert set(seq) == {0, 1, 2, 3}  # every exit step is drawn
    assert seq != [exit_step(1, i, 4) for i in range(200)]  # the seed matters


def test_steps_before_the_exit_run_without_gradient_and_history_is_detached():
    profile = load_profile("tiny", "/tmp/unused", BASE)
    m = _module(profile)
    grads, hist_grads = [], []
    orig = m.model.forward

    def spy(x, t, text, hist=None, **kw):
        grads.append(torch.is_grad_enabled())
        hist_grads.append(hist is not None and hist.requires_grad)
        return orig(x, t, text, hist, **kw)

    m.model.forward = spy
    hist, text, _ = m.draw(0, 0, 0)
    g = torch.Generator().manual_seed(0)
    outs, hists = m.rollout(hist, text, g, 2, grad=True)
    assert grads == [False, False, True] * 2  # 2 chunks, exit step 2: steps 0-1 without gradient
    assert not any(hist_grads)  # the second chunk's history (the first chunk's output) is detached
    assert all(o.requires_grad for o in outs) and hists[1].shape[2] == hists[0].shape[2] + m.chunk


def test_ema_is_a_copy_before_the_start_step_then_averages():
    profile = load_profile("tiny", "/tmp/unused", BASE)
    m = _module(profile, ema_start_step=3, ema_decay=0.9)
    p, e = next(m.model.parameters()), next(m.ema.parameters())
    with torch.no_grad():
        p.add_(1.0)
    m.update_ema()  # iteration 0 < 3: a copy
    assert torch.equal(e, p)
    before = e.clone()
    with torch.no_grad():
        p.add_(1.0)
    m.iteration.fill_(3)
    m.update_ema()
    assert torch.allclose(e, 0.9 * before + 0.1 * p)


# ------------------------------------------------------------------------------------------ training


def test_critic_generator_ratio_counts_optimizer_steps(foundation, tmp_path):
    from yume.tasks.distill import fit_local, prepare_distill_run

    class Count:
        n = {"gen": 0, "critic": 0}

    import lightning as L

    class StepCounter(L.Callback):
        def on_train_start(self, trainer, pl_module):
            opt_g, opt_c = pl_module.optimizers()
            for name, opt in (("gen", opt_g), ("critic", opt_c)):
                orig = opt.optimizer.step

                def step(*a, _orig=orig, _name=name, **k):
                    Count.n[_name] += 1
                    return _orig(*a, **k)

                opt.optimizer.step = step

    run = prepare_distill_run(_profile(tmp_path / "w", foundation, ["distill.max_steps=11"]))
    summary = fit_local(run, extra_callbacks=[StepCounter()])
    # critic every iteration, generator every 5th (iterations 0, 5, 10)
    assert Count.n == {"gen": 3, "critic": 11}
    assert summary["iterations"] == 11 and summary["generator_updates"] == 3 and summary["critic_updates"] == 11
    rows = list((tmp_path / "w").rglob("metrics.csv"))
    assert rows


def test_resume_continues_to_the_same_weights(foundation, tmp_path):
    from yume.tasks.distill import fit_local, prepare_distill_run, state_dict_of

    straight = prepare_distill_run(_profile(tmp_path / "a", foundation))
    fit_local(straight)  # 6 iterations, checkpoints at 3 and 6
    first = prepare_distill_run(_profile(tmp_path / "b", foundation, ["distill.max_steps=3"]))
    fit_local(first)
    again = prepare_distill_run(_profile(tmp_path / "b", foundation))  # same run hash: resumes from step 3
    assert again.run_hash == first.run_hash and again.resume_from.endswith("step-0000003.safetensors")
    summary = fit_local(again)
    assert summary["iterations"] == 6 and summary["generator_updates"] == 2
    a, b = state_dict_of(straight), state_dict_of(again)
    assert a.keys() == b.keys() and any(k.startswith("ema.") for k in a) and any(k.startswith("fake_score.") for k in a)
    assert not any(k.startswith("real_score.") for k in a)  # the frozen teacher is not stored
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


DISTILL_KILLER = """
import os, signal, sys
import lightning as L
from yume.config import load_profile
from yume.tasks.distill import fit_local, prepare_distill_run

class KillAt(L.Callback):
    def on_train_batch_end(self, trainer, module, *a):
        if int(module.iteration) == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)

fit_local(prepare_distill_run(load_profile("tiny", sys.argv[1], sys.argv[3:])), extra_callbacks=[KillAt()])
"""


def test_sigkilled_distillation_resumes_to_the_same_weights(foundation, tmp_path):
    """SIGKILL after iteration 4 (last checkpoint: 3), run again: the weights equal an uninterrupted run's."""
    import signal
    import subprocess
    import sys

    from yume.tasks.distill import fit_local, prepare_distill_run, state_dict_of

    straight = prepare_distill_run(_profile(tmp_path / "a", foundation))
    fit_local(straight)
    overrides = BASE + [f"distill.foundation={foundation}"]
    proc = subprocess.run([sys.executable, "-c", DISTILL_KILLER, str(tmp_path / "b"), "4", *overrides],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    again = prepare_distill_run(_profile(tmp_path / "b", foundation))
    assert again.resume_from.endswith("step-0000003.safetensors")
    assert fit_local(again)["iterations"] == 6
    a, b = state_dict_of(straight), state_dict_of(again)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


@pytest.mark.slow
def test_ray_train_two_cpu_workers(foundation, tmp_path):
    import ray

    from yume.tasks.distill import fit, prepare_distill_run

    run = prepare_distill_run(_profile(tmp_path / "w", foundation, ["distill.ray.enabled=true",
                                                                     "distill.ray.num_workers=2", "ray.num_cpus=2",
                                                                     "distill.max_steps=3"]))
    try:
        summary = fit(run)
    finally:
        ray.shutdown()
    assert summary["iterations"] == 3 and summary["ray_workers"] == 2
    assert (run.ckpt_dir / "step-0000003.safetensors").is_file()
    # Both ranks took the same exit step at each generator iteration and ended with identical state.
    from yume.models.distill import exit_step

    profile = run.load_profile()
    module = build_module_for(run)
    generator_its = [it for it in range(3) if module.is_generator_iteration(it)]
    expected = [exit_step(profile.distill.seed, it, len(module.levels)) for it in generator_its]
    assert expected and summary["rank_exit_steps"] == [expected, expected]
    digests = summary["rank_state_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]


def build_module_for(run):
    from yume.tasks.distill import build_module

    return build_module(run)


def test_distill_flow_end_to_end(foundation, tmp_path, prefect_harness):
    from yume.flows.distill import distill
    from yume.models.sampler import WorldSampler
    from yume.tasks.distill import distilled_sampler_config

    work = tmp_path / "w"
    final = work / "checkpoints" / "foundation" / "final"
    shutil.copytree(foundation, final)
    over = [o for o in BASE] + ["distill.max_steps=2"]
    out = distill(profile="tiny", workdir=str(work), overrides=over)
    assert out["iterations"] == 2 and not out["fit_cached"]
    gen = work / "checkpoints" / "distill" / "final"
    meta = json.loads((gen / "yume_model.json").read_text())
    assert meta["sampler"]["schedule"] == "renoise" and meta["weights"] == "ema"
    metrics = json.loads((work / "reports" / "distill" / "metrics.json").read_text())
    assert metrics["generator_updates"] == 1 and metrics["critic_updates"] == 2
    profile = load_profile("tiny", str(work), over)
    s = WorldSampler.from_checkpoint(gen, distilled_sampler_config(profile))
    video = s.generate([[("W", "→")] * 2], images=np.full((1, 32, 32, 3), 90, np.uint8), seed=0)
    assert video.shape == (1, 1 + 2 * 4, 32, 32, 3) and s.forward_calls == 2 * 4  # 4 steps per chunk
    again = distill(profile="tiny", workdir=str(work), overrides=over)
    assert again["fit_cached"]  # a finished run is not refitted
