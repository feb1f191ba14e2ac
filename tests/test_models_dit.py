"""Our Wan2.2 DiT against diffusers' WanTransformer3DModel, loading, I2V masking, gradients, errors."""

import json

import pytest
import torch

from yume.models.config import TSCMConfig, WanDiTConfig, tiny_model_config, yume15_model_config
from yume.models.tscm import interpolate_patch_weight
from yume.models.wan_dit import WanDiT, is_tscm_param

import diffusers  # noqa: E402  (required: the parity tests must fail, not skip, on a broken install)

# diffusers' own tiny Wan test config (REFERENCE section 3), with Wan2.2's 48 latent channels.
TINY = WanDiTConfig(num_attention_heads=2, attention_head_dim=12, in_channels=48, out_channels=48, text_dim=32,
                    freq_dim=256, ffn_dim=32, num_layers=2, rope_max_seq_len=32)


def _diffusers_model(cfg: WanDiTConfig, seed: int = 0):
    torch.manual_seed(seed)
    ref = diffusers.WanTransformer3DModel(**{k: v for k, v in cfg.to_diffusers().items() if not k.startswith("_")})
    with torch.no_grad():  # non-trivial values everywhere (zero-init biases would hide key mix-ups)
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return ref.eval()


def _inputs(cfg: WanDiTConfig, b=2, f=3, h=8, w=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, cfg.in_channels, f, h, w, generator=g)
    text = torch.randn(b, 7, cfg.text_dim, generator=g)
    return x, text


@pytest.mark.parametrize("two_d", [False, True])
def test_parity_with_diffusers(two_d):
    ref = _diffusers_model(TINY)
    ours = WanDiT(TINY).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x, text = _inputs(TINY)
    n_tokens = 3 * 4 * 4
    t = torch.rand(2, n_tokens) * 1000 if two_d else torch.tensor([999.0, 37.5])
    with torch.no_grad():
        expected = ref(x, t, text).sample
        got = ours(x, t, text)
    diff = (expected - got).abs().max().item()
    assert diff <= 1e-5, diff


def test_state_dict_keys_and_shapes_match_diffusers_at_5b_scale():
    cfg = yume15_model_config().dit
    with torch.device("meta"):
        ref = diffusers.WanTransformer3DModel(**{k: v for k, v in cfg.to_diffusers().items() if not k.startswith("_")})
        ours = WanDiT(cfg, TSCMConfig(enabled=False))
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    our_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert our_shapes == ref_shapes
    assert 4.9e9 < sum(p.numel() for p in ours.parameters()) < 5.1e9


def test_from_pretrained_diffusers_dir_initialises_tscm(tmp_path):
    ref = _diffusers_model(TINY)
    ref.save_pretrained(tmp_path / "plain", safe_serialization=True)
    ref.save_pretrained(tmp_path / "sharded", safe_serialization=True, max_shard_size="20KB")
    assert list((tmp_path / "sharded").glob("*.index.json"))
    tscm = TSCMConfig(tiers="paper_explicit")
    for sub in ("plain", "sharded"):
        model = WanDiT.from_pretrained(tmp_path / sub, tscm=tscm)
        state = model.state_dict()
        for k, v in ref.state_dict().items():
            assert torch.equal(state[k], v), k
        fine = ref.patch_embedding.weight
        for kernel in ((1, 4, 4), (1, 8, 8)):
            coarse = state["tscm.patch_embeddings." + "_".join(map(str, kernel)) + ".weight"]
            torch.testing.assert_close(coarse, interpolate_patch_weight(fine, kernel))
            # rescaled: a coarse kernel sums to what the fine one sums to (same input energy)
            torch.testing.assert_close(coarse.sum(dim=(2, 3, 4)), fine.sum(dim=(2, 3, 4)), atol=1e-5, rtol=1e-5)
        for name, p in state.items():
            assert torch.isfinite(p).all(), name
            if name.endswith("channel_branch.fc_up.weight") or name.endswith("channel_branch.fc_up.bias"):
                assert not p.any(), name
        x, text = _inputs(TINY)
        with torch.no_grad():
            torch.testing.assert_close(model(x, torch.tensor([500.0, 3.0]), text),
                                       ref(x, torch.tensor([500.0, 3.0]), text).sample, atol=1e-5, rtol=0)


def test_from_pretrained_rejects_bad_checkpoints(tmp_path):
    ref = _diffusers_model(TINY)
    ref.save_pretrained(tmp_path / "m", safe_serialization=True)
    from safetensors.torch import load_file, save_file

    path = tmp_path / "m" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    state.pop("proj_out.weight")
    save_file(state, str(path))
    with pytest.raises(ValueError, match="lacks base weights"):
        WanDiT.from_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["image_dim"] = 1280
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="image_dim"):
        WanDiT.from_pretrained(tmp_path / "m")


@pytest.mark.parametrize("shard", [None, 200_000])
def test_save_load_round_trip(tmp_path, shard):
    cfg = tiny_model_config()
    torch.manual_seed(0)
    model = WanDiT.from_config(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # fc_up non-zero: the branch matters
    model.save_pretrained(tmp_path, max_shard_bytes=shard)
    assert (tmp_path / "config.json").is_file()
    loaded = WanDiT.from_pretrained(tmp_path).eval()
    assert loaded.tscm_config == cfg.tscm
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    x, text = _inputs(cfg.dit, b=1, f=2, h=8, w=8)
    hist = torch.randn(1, 48, 30, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x, torch.tensor([300.0]), text, history=hist),
                           loaded(x, torch.tensor([300.0]), text, history=hist))


def test_i2v_mask_conditioning_equals_mixed_input_with_zero_timesteps():
    torch.manual_seed(0)
    model = WanDiT(TINY).eval()
    x, text = _inputs(TINY, b=2, f=3)
    cond = torch.randn_like(x)
    mask = torch.tensor([1.0, 0.0, 0.0])  # first latent frame is the conditioning image
    with torch.no_grad():
        got = model(x, torch.tensor([800.0, 400.0]), text, cond_latents=cond, cond_mask=mask)
        mixed = mask.view(1, 1, 3, 1, 1) * cond + (1 - mask.view(1, 1, 3, 1, 1)) * x
        per_token = torch.tensor([800.0, 400.0])[:, None].repeat(1, 48)
        per_token[:, :16] = 0.0  # 16 tokens per frame at 8x8 / (2x2)
        expected = model(mixed, per_token, text)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
        # per-sample masks and latent-shaped masks are accepted too
        got2 = model(x, torch.tensor([800.0, 400.0]), text, cond_latents=cond, cond_mask=mask.expand(2, 3))
        got5 = model(x, torch.tensor([800.0, 400.0]), text, cond_latents=cond,
                     cond_mask=mask.view(1, 1, 3, 1, 1).expand(1, 1, 3, 8, 8))
        got_c = model(x, torch.tensor([800.0, 400.0]), text, cond_latents=cond,
                      cond_mask=mask.view(1, 1, 3, 1, 1).expand_as(x))
    torch.testing.assert_close(got_c, got)
    torch.testing.assert_close(got2, got)
    torch.testing.assert_close(got5, got)


def test_clear_errors():
    model = WanDiT(TINY).eval()
    x, text = _inputs(TINY)
    t = torch.tensor([1.0, 2.0])
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(2, 16, 3, 8, 8), t, text)
    with pytest.raises(ValueError, match="history.*channels"):
        model(x, t, text, history=torch.randn(2, 12, 4, 8, 8))
    with pytest.raises(ValueError, match="history shape"):
        model(x, t, text, history=torch.randn(2, 48, 4, 6, 8))
    with pytest.raises(ValueError, match="cond_mask shape"):
        model(x, t, text, cond_latents=torch.randn_like(x), cond_mask=torch.ones(4))
    with pytest.raises(ValueError, match="cond_mask shape"):
        model(x, t, text, cond_latents=torch.randn_like(x), cond_mask=torch.ones(3, 3))
    with pytest.raises(ValueError, match="cond_latents shape"):
        model(x, t, text, cond_latents=torch.randn(2, 48, 2, 8, 8), cond_mask=torch.ones(3))
    with pytest.raises(ValueError, match="together"):
        model(x, t, text, cond_mask=torch.ones(3))
    with pytest.raises(ValueError, match="2-D timestep"):
        model(x, torch.zeros(2, 5), text)
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        model(x, t, torch.randn(2, 7, 31))
    with pytest.raises(ValueError, match="divisible"):
        model(torch.randn(2, 48, 3, 7, 8), t, text)


def test_every_trainable_parameter_gets_a_gradient():
    cfg = tiny_model_config()
    torch.manual_seed(0)
    model = WanDiT.from_config(cfg)
    x, text = _inputs(cfg.dit, b=1, f=2, h=8, w=8)
    history = torch.randn(1, 48, 40, 8, 8)  # first frame + all three tiers + pooled overflow
    # zero-initialised fusion: every parameter is in the graph (grads exist), the branch's inner ones are 0
    model(x, torch.tensor([500.0]), text, history=history).square().mean().backward()
    params = dict(model.named_parameters())
    assert all(p.grad is not None for p in params.values())
    assert all(p.grad.abs().sum() > 0 for n, p in params.items() if not is_tscm_param(n) or "patch_emb" in n)
    # after the fusion layer has moved off zero (one optimiser step), every parameter learns
    model.zero_grad()
    with torch.no_grad():
        for b in model.blocks:
            b.channel_branch.fc_up.weight.normal_(std=0.02)
    model(x, torch.tensor([500.0]), text, history=history).square().mean().backward()
    no_grad = [n for n, p in params.items() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not no_grad
