"""TSCM: tier plans and token budgets, coarse patch weights, positions, the channel branch, the benchmark."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from yume.models.config import TSCM_SCHEDULES, ChannelBranchConfig, ModelConfig, TSCMConfig, tiny_model_config
from yume.models.tscm import (
    LinearAttentionBranch,
    TSCMEmbedder,
    apply_rope,
    channel_token_count,
    grid_positions,
    history_token_count,
    patchify,
    plan_history,
    rope_cos_sin,
    tokens_per_frame,
)
from yume.models.wan_dit import WanDiT


def _expected_tokens(n: int, tiers, h: int, w: int, overflow: str, slots: int, first_fine=True) -> int:
    """The formula: first frame fine, each tier its frames x ceil(H/kh) x ceil(W/kw), overflow slots."""
    total = 0
    if first_fine and n:
        total += math.ceil(h / 2) * math.ceil(w / 2)
        n -= 1
    for count, (_, kh, kw) in tiers:
        take = min(count, n)
        total += take * math.ceil(h / kh) * math.ceil(w / kw)
        n -= take
    if n and overflow == "pool":
        _, kh, kw = tiers[-1][1]
        total += min(slots, n) * math.ceil(h / kh) * math.ceil(w / kw)
    return total


def test_reference_token_budget_at_704x1280():
    # REFERENCE section 4: latent 44x80 -> 880, 220, 60, 15, 6 tokens per frame
    assert [tokens_per_frame(k, 44, 80) for k in [(1, 2, 2), (1, 4, 4), (1, 8, 8), (1, 16, 16), (1, 32, 32)]] == [
        880, 220, 60, 15, 6]
    assert tokens_per_frame((1, 2, 2), 34, 60) == 510  # 540p


@pytest.mark.parametrize("preset", sorted(TSCM_SCHEDULES))
@pytest.mark.parametrize("overflow", ["pool", "drop"])
def test_token_counts_per_tier_match_formula(preset, overflow):
    cfg = TSCMConfig(tiers=preset, overflow=overflow)
    for n in [0, 1, 2, 3, 7, 24, 25, 100, 400, 2000]:
        for h, w in [(44, 80), (16, 16), (34, 60)]:
            groups = plan_history(n, cfg)
            assert history_token_count(groups, h, w) == _expected_tokens(
                n, cfg.tiers, h, w, overflow, cfg.overflow_slots), (preset, n, h, w)
            # every frame is used exactly once (pool) or only overflow is lost (drop)
            used = sorted(i for g in groups for s in g.sources for i in s)
            covered = 1 + sum(c for c, _ in cfg.tiers)
            assert used == list(range(n)) if overflow == "pool" or n <= covered else len(used) == covered


def test_plan_is_newest_fine_and_oldest_first():
    cfg = TSCMConfig(tiers="paper")
    groups = plan_history(30, cfg)
    assert [g.kernel for g in groups] == [(1, 2, 2), (1, 16, 16), (1, 8, 8), (1, 4, 4), (1, 2, 2)]
    assert groups[0].sources == ((0,),)  # the first frame, fine
    assert groups[-1].sources == ((28,), (29,))  # t-2, t-1 fine
    assert groups[-2].sources == tuple((i,) for i in range(24, 28))
    full = plan_history(30, TSCMConfig(enabled=False))
    assert len(full) == 1 and full[0].kernel == (1, 2, 2) and len(full[0].sources) == 30


def test_temporal_sampling_keeps_first_and_newest():
    cfg = TSCMConfig(tiers=[(100, (1, 8, 8))], temporal_sample_every=4)
    frames = sorted(i for g in plan_history(41, cfg) for s in g.sources for i in s)
    assert frames[0] == 0 and frames[-1] == 40 and frames[1:] == list(range(4, 41, 4))
    rnd = TSCMConfig(tiers=[(100, (1, 8, 8))], temporal_sample_every=4, temporal_sample_random=True)
    a = plan_history(41, rnd, generator=torch.Generator().manual_seed(3))
    b = plan_history(41, rnd, generator=torch.Generator().manual_seed(3))
    assert a == b and 10 <= sum(len(g.sources) for g in a) <= 11


def test_history_longer_than_all_tiers_runs_with_bounded_tokens():
    cfg = tiny_model_config()
    torch.manual_seed(0)
    model = WanDiT.from_config(cfg).eval()
    x, text = torch.randn(1, 48, 2, 8, 8), torch.randn(1, 5, 32)
    counts = []
    for n in (30, 300, 1500):  # public code crashes past 1,366 history latents
        groups = plan_history(n, cfg.tscm)
        counts.append(history_token_count(groups, 8, 8))
        with torch.no_grad():
            out = model(x, torch.tensor([500.0]), text, history=torch.randn(1, 48, n, 8, 8))
        assert out.shape == x.shape and torch.isfinite(out).all()
    assert counts[0] == counts[1] == counts[2]
    assert channel_token_count(1500, 8, 8, cfg.tscm.channel) == channel_token_count(64, 8, 8, cfg.tscm.channel)
    public = TSCMConfig(tiers="public")
    assert history_token_count(plan_history(1400, public), 44, 80) == history_token_count(
        plan_history(10_000, public), 44, 80)


@pytest.mark.parametrize("kernel", [(1, 4, 4), (1, 8, 8), (1, 16, 16)])
def test_coarse_patchify_of_upsampled_input_equals_fine_patchify(kernel):
    torch.manual_seed(0)
    fine = torch.nn.Conv3d(6, 10, (1, 2, 2), (1, 2, 2))
    emb = TSCMEmbedder(6, 10, (1, 2, 2), TSCMConfig(tiers=[(4, kernel)], channel=ChannelBranchConfig(enabled=False)))
    emb.init_from_fine(fine)
    conv = emb.conv_for(kernel, fine)
    x = torch.randn(2, 6, 3, 8, 12)
    s = kernel[1] // 2
    up = F.interpolate(x, scale_factor=(1, s, s), mode="nearest")
    with torch.no_grad():
        torch.testing.assert_close(patchify(up, conv), patchify(x, fine), atol=1e-5, rtol=1e-5)
        # and the matmul patchify is the conv
        torch.testing.assert_close(patchify(x, fine), fine(x).flatten(2).transpose(1, 2), atol=1e-5, rtol=1e-5)
        # constant input: coarse tokens equal fine tokens (same input energy after the rescale)
        ones = torch.ones(1, 6, 1, kernel[1], kernel[2])
        torch.testing.assert_close(patchify(ones, conv)[0, 0], patchify(ones, fine)[0, 0], atol=1e-5, rtol=1e-5)


def test_zero_padding_crop_is_exact():
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(4, 8, (1, 16, 16), (1, 16, 16))
    x = torch.randn(1, 4, 2, 8, 12)
    with torch.no_grad():
        padded = conv(F.pad(x, (0, 4, 0, 8))).flatten(2).transpose(1, 2)
        torch.testing.assert_close(patchify(x, conv), padded, atol=1e-5, rtol=1e-5)


def test_coarse_positions_are_region_centres_in_fine_coordinates():
    pos = grid_positions([5.0], (1, 4, 4), 8, 8, (1, 2, 2))
    assert pos[:, 1].unique().tolist() == [0.5, 2.5] and pos[:, 0].unique().tolist() == [5.0]
    pos8 = grid_positions([0.0], (1, 8, 8), 16, 16, (1, 2, 2))
    assert pos8[:, 2].unique().tolist() == [1.5, 5.5]
    fine = grid_positions([0.0], (1, 2, 2), 8, 8, (1, 2, 2))
    assert fine[:, 1].unique().tolist() == [0.0, 1.0, 2.0, 3.0]
    tl = grid_positions([0.0], (1, 4, 4), 8, 8, (1, 2, 2), where="top_left")
    assert tl[:, 1].unique().tolist() == [0.0, 2.0]
    # a pooled overflow slot sits at the mean time of its frames
    cfg = TSCMConfig(tiers=[(2, (1, 4, 4))], overflow_slots=1)
    slot = plan_history(10, cfg)[1]
    assert slot.sources == ((1, 2, 3, 4, 5, 6, 7),) and slot.positions_t() == [4.0]


def test_linear_attention_matches_naive_formula():
    torch.manual_seed(0)
    cfg = ChannelBranchConfig(channels=24, heads=2)
    br = LinearAttentionBranch(16, cfg)
    torch.nn.init.normal_(br.fc_up.weight)
    x, z = torch.randn(2, 5, 16), torch.randn(2, 7, 24)
    pos = torch.randn(12, 3) * 3
    rope_all = rope_cos_sin(pos, 12)
    rope_pred = tuple(r[:5] for r in rope_all)
    got = br(x, z, rope_pred, rope_all)
    h = br.fc_down(x)
    seq = torch.cat([h, z], 1)
    q = F.relu(br.norm_q(br.to_q(h)).unflatten(-1, (2, 12)))
    k = F.relu(br.norm_k(br.to_k(seq)).unflatten(-1, (2, 12)))
    v = br.to_v(seq).unflatten(-1, (2, 12))
    qr, kr = apply_rope(q, *rope_pred), apply_rope(k, *rope_all)
    num = torch.einsum("bihd,bjhd,bjhe->bihe", qr, kr, v)  # RoPE in the numerator
    den = torch.einsum("bihd,bjhd->bih", q, k)[..., None]  # plain features in the normaliser
    expected = br.fc_up(br.norm_out((num / (den + cfg.eps)).flatten(2)))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_zero_initialised_branch_equals_branch_off_model():
    torch.manual_seed(0)
    on = WanDiT.from_config(tiny_model_config()).eval()
    off_cfg = tiny_model_config().tscm.model_copy(update={"channel": ChannelBranchConfig(enabled=False)})
    off = WanDiT(on.config, off_cfg).eval()
    missing = off.load_state_dict(on.state_dict(), strict=False)
    assert not missing.missing_keys
    x, text, hist = torch.randn(1, 48, 2, 8, 8), torch.randn(1, 5, 32), torch.randn(1, 48, 20, 8, 8)
    with torch.no_grad():
        assert torch.equal(on(x, torch.tensor([700.0]), text, history=hist),
                           off(x, torch.tensor([700.0]), text, history=hist))


def test_branch_blocks_and_config_validation():
    cfg = tiny_model_config()
    cfg.tscm.channel.blocks = [1, 3]
    model = WanDiT.from_config(cfg)
    assert [b.channel_branch is not None for b in model.blocks] == [False, True, False, True]
    with pytest.raises(ValueError):
        TSCMConfig(tiers="nope")
    with pytest.raises(ValueError):
        TSCMConfig(tiers=[(2, (2, 4, 4))])
    with pytest.raises(ValueError):
        TSCMConfig(unknown_key=1)
    with pytest.raises(ValueError):
        ChannelBranchConfig(channels=96, heads=5)
    with pytest.raises(ValueError):
        ModelConfig.model_validate({**tiny_model_config().model_dump(), "tscm": {"channel": {"blocks": [9]}}})


def test_full_context_mode_uses_every_frame_fine():
    cfg = tiny_model_config()
    model = WanDiT(cfg.dit, TSCMConfig(enabled=False))
    assert model.tscm is None and model.parameter_counts()["tscm"] == 0
    tokens, pos, _ = model._embed_history(torch.randn(1, 48, 5, 8, 8))
    assert tokens.shape[1] == 5 * 16 and pos[:, 0].unique().tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_bench_json_reports_ratios(capsys):
    from yume.models.bench_tscm import main

    assert main(["--json", "--points", "8,32", "--repeats", "1", "--gen-repeats", "1", "--tscm-only",
                 "--height", "8", "--width", "8", "--text-tokens", "16"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["benchmark"] == "tscm" and "tscm_ratio_32_over_8" in result
    assert result["tscm_token_ratio_32_over_8"] == 1.0
    assert torch.get_num_threads() >= 1


def test_time_positions_at_chunk_100_lie_inside_the_trained_range(monkeypatch):
    """A 100-chunk rollout's history (405 latent frames on tiny) asks for no RoPE time position that training's
    longest history did not give; with frame-index positions it would (the option's reason)."""
    import yume.models.wan_dit as wd
    from yume.config import load_profile
    from yume.models.tscm import history_time_positions, next_time_position, plan_history

    prof = load_profile("tiny")
    cfg, chunk = prof.model.tscm, prof.model.chunk_frames
    assert cfg.time_positions == "compressed"
    trained_max = next_time_position(prof.train.long_history_frames[1], cfg) + chunk - 1
    hist_100 = prof.train.still_image_frames + 100 * chunk
    t0 = next_time_position(hist_100, cfg)
    assert t0 + chunk - 1 <= trained_max
    times = [t for g in history_time_positions(plan_history(hist_100, cfg)) for t in g]
    assert 0 <= min(times) and max(times) == t0 - 1
    assert next_time_position(hist_100, cfg.model_copy(update={"time_positions": "absolute"})) > trained_max
    for n in range(1, 25):  # identical to frame indices while the history fits the first frame + tiers
        assert next_time_position(n, cfg) == n
    # The model itself uses them: capture the positions its RoPE is computed from.
    seen = []
    real = wd.rope_cos_sin
    monkeypatch.setattr(wd, "rope_cos_sin", lambda pos, *a, **k: (seen.append(pos.clone()), real(pos, *a, **k))[1])
    model = wd.WanDiT.from_config(prof.model.model_copy(update={"dit_init": "random"})).eval()
    x = torch.randn(1, 48, chunk, 8, 8)
    with torch.no_grad():
        model(x, torch.tensor([500.0]), torch.randn(1, 8, 32), torch.randn(1, 48, hist_100, 8, 8))
    assert float(seen[0][:, 0].max()) == t0 + chunk - 1 <= trained_max
