"""Text conditioning (umT5, event + action, the action cache), latent codecs, configs and `model info`."""

import json

import pytest
import torch

from yume.models.codecs import PatchCodec, WanVAECodec, build_codec
from yume.models.config import CodecConfig, ModelConfig, TextConfig, tiny_model_config, yume15_model_config
from yume.models.text import ActionEmbeddingCache, TextConditioner, TextEncoder, combine_embeddings


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder.tiny_random()


def test_tiny_encoder_is_umt5_and_deterministic(encoder):
    assert type(encoder.model).__name__ == "UMT5EncoderModel" and encoder.dim == 32
    again = TextEncoder.tiny_random()
    assert again.encoder_id == encoder.encoder_id
    a, b = encoder.encode(["The camera pushes forward (W).", "a much longer event text about rain and lights"])
    assert a.shape[1] == 32 and a.shape[0] < b.shape[0]
    torch.testing.assert_close(again.encode(["The camera pushes forward (W)."])[0], a)


def test_action_cache_hit_avoids_reencoding(tmp_path, encoder):
    encoder.calls = 0
    cond = TextConditioner(encoder, TextConfig(), cache_dir=tmp_path)
    actions = [("W", "→"), ("None", "·")]
    out = cond(actions, ["A rainy street at night.", "A rainy street at night."])
    assert out.shape == (2, 512, 32)
    assert encoder.calls == 2  # one pass for all 81 action sentences, one for the event texts
    for _ in range(5):  # chunk after chunk: nothing is re-encoded
        cond([("S+A", "↑←")], ["A rainy street at night."])
    assert encoder.calls == 2
    files = list(tmp_path.glob("action_text_*.safetensors"))
    assert len(files) == 1
    # a fresh process: same encoder weights, cache file on disk -> no action encoding at all
    fresh = TextEncoder.tiny_random()
    cache = ActionEmbeddingCache(fresh, tmp_path)
    emb = cache.get("W", "→")
    assert fresh.calls == 0
    torch.testing.assert_close(out[0, : emb.shape[0]], emb)
    # the action part comes first, then the event, then zeros
    event = encoder.encode(["A rainy street at night."])[0]
    torch.testing.assert_close(out[0, emb.shape[0]: emb.shape[0] + event.shape[0]], event)
    assert not out[0, emb.shape[0] + event.shape[0]:].any()
    # another vocabulary -> another file, encoded once
    other = ActionEmbeddingCache(fresh, tmp_path, vocabulary="yume10")
    other.get("W", "→")
    assert fresh.calls == 1 and len(list(tmp_path.glob("action_text_*.safetensors"))) == 2


def test_combine_keeps_action_and_truncates_event():
    action, event = torch.ones(10, 4), torch.full((30, 4), 2.0)
    out = combine_embeddings(action, event, max_length=16)
    assert out.shape == (16, 4) and (out[:10] == 1).all() and (out[10:] == 2).all()
    out = combine_embeddings(action, event, max_length=64, order="event_first")
    assert (out[:30] == 2).all() and (out[30:40] == 1).all() and not out[40:].any()
    with pytest.raises(ValueError):
        combine_embeddings(None, None)


def test_text_config_requires_weights_for_yume15():
    with pytest.raises(ValueError, match="pretrained_path"):
        TextEncoder.from_config(yume15_model_config().text)
    with pytest.raises(FileNotFoundError):
        TextEncoder.from_pretrained("/nonexistent/umt5")


def test_patch_codec_is_lossless_space_to_depth():
    codec = PatchCodec(4)
    video = torch.rand(2, 3, 5, 32, 64) * 2 - 1
    z = codec.encode(video)
    assert z.shape == (2, 48, 5, 8, 16) and codec.latent_frames(5) == 5
    assert torch.equal(codec.decode(z), video)
    assert torch.equal(z[0, :, 0, 0, 0].view(3, 4, 4), video[0, :, 0, :4, :4])
    with pytest.raises(ValueError):
        codec.encode(torch.rand(1, 3, 2, 30, 32))
    with pytest.raises(ValueError):
        codec.decode(torch.rand(1, 12, 2, 8, 8))


@pytest.fixture(scope="module")
def vae_codec():
    return WanVAECodec.tiny_random()


def test_wan_vae_codec_normalises_per_channel(vae_codec):
    video = torch.rand(1, 3, 9, 32, 32) * 2 - 1
    z = vae_codec.encode(video)
    assert z.shape == (1, 48, 3, 2, 2) and vae_codec.latent_frames(9) == 3 and vae_codec.pixel_frames(3) == 9
    raw = vae_codec.vae.encode(video).latent_dist.mode()
    mean = torch.tensor(vae_codec.vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae_codec.vae.config.latents_std).view(1, -1, 1, 1, 1)
    torch.testing.assert_close(z, (raw - mean) / std)
    out = vae_codec.decode(z)
    assert out.shape == video.shape and out.abs().max() <= 1.0


@pytest.mark.parametrize("frames", [2, 4, 8, 10])
def test_wan_vae_rejects_frame_counts_not_4k_plus_1(vae_codec, frames):
    with pytest.raises(ValueError, match="4k\\+1"):
        vae_codec.encode(torch.zeros(1, 3, frames, 32, 32))


def test_wan_vae_errors(vae_codec):
    with pytest.raises(ValueError, match="latents"):
        vae_codec.decode(torch.zeros(1, 16, 2, 2, 2))
    with pytest.raises(ValueError, match="multiples of 16"):
        vae_codec.encode(torch.zeros(1, 3, 5, 24, 32))
    with pytest.raises(ValueError, match="pretrained_path"):
        build_codec(CodecConfig(kind="wan_vae"))
    assert isinstance(build_codec(CodecConfig(kind="patch", patch_size=2)), PatchCodec)


def test_model_configs_validate_and_round_trip():
    for factory in (tiny_model_config, yume15_model_config):
        cfg = factory()
        again = ModelConfig.model_validate(json.loads(cfg.model_dump_json()))
        assert again == cfg
    with pytest.raises(ValueError):
        ModelConfig.model_validate({"dit": {"num_layers": 2, "bogus": 1}})
    with pytest.raises(ValueError, match="codec patch"):
        ModelConfig.model_validate({**tiny_model_config().model_dump(), "codec": {"kind": "patch", "patch_size": 2}})
    y = yume15_model_config().dit
    assert (y.num_layers, y.num_attention_heads, y.attention_head_dim, y.ffn_dim, y.in_channels, y.text_dim) == (
        30, 24, 128, 14336, 48, 4096)


def test_model_info_prints_config_and_counts(capsys):
    from yume.models.info import main

    assert main(["yume15"]) == 0
    out = capsys.readouterr().out
    assert "DiT parameters: 5,2" in out and "num_layers: 30" in out and "overflow" in out
    assert main(["tiny", "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["parameters"]["dit"]["total"] > 0 and info["config"]["dit"]["num_layers"] == 4
