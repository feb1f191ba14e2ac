"""Training starts from a pretrained base (issue 16, part 1) and the tiny base's own pieces: the diffusers
directory is loaded before EMA and optimiser, a wrong base is refused before training with the path and the
first bad key, the text encoder must match, yume15 names real local directories, and the motion captions never
reuse the action vocabulary."""

import json

import pytest
import torch

from yume.config import load_profile
from yume.models.config import tiny_model_config

import diffusers  # noqa: E402  (required, never skipped)


def _diffusers_dir(tmp_path, cfg=None, seed=0):
    cfg = cfg or tiny_model_config().dit
    torch.manual_seed(seed)
    ref = diffusers.WanTransformer3DModel(**{k: v for k, v in cfg.to_diffusers().items() if not k.startswith("_")})
    ref.save_pretrained(tmp_path, safe_serialization=True)
    return ref


def _module(model_cfg, **train):
    from yume.models.foundation import FoundationModule
    from yume.models.train_config import TrainConfig

    return FoundationModule(model_cfg.model_dump(mode="json"),
                            TrainConfig(batch_size=2, **train).model_dump(mode="json"))


def test_training_starts_from_a_diffusers_save_pretrained_dir(tmp_path):
    ref = _diffusers_dir(tmp_path / "base").eval()
    cfg = tiny_model_config().model_copy(update={"dit_init": "pretrained", "dit_pretrained_path": str(tmp_path / "base")})
    module = _module(cfg)
    # The model, its EMA copy and the optimiser's parameters all hold the loaded weights at step 0.
    for k, v in ref.state_dict().items():
        assert torch.equal(module.model.state_dict()[k], v), k
        assert torch.equal(module.ema.state_dict()[k], v), k
    opt = module.configure_optimizers()["optimizer"]
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in module.model.parameters()}
    c = cfg.dit.in_channels
    x, text = torch.randn(2, c, 4, 8, 8), torch.randn(2, 16, cfg.dit.text_dim)
    t = torch.tensor([700.0, 30.0])
    with torch.no_grad():
        torch.testing.assert_close(module.model(x, t, text), ref(x, t, text).sample, atol=1e-5, rtol=0)
    # dit_init: random ignores the path: another model.
    rand = _module(cfg.model_copy(update={"dit_init": "random"}))
    assert not torch.equal(rand.model.patch_embedding.weight, ref.patch_embedding.weight)


def test_a_missing_or_mismatched_base_is_refused_with_the_path_and_the_first_bad_key(tmp_path):
    from safetensors.torch import load_file, save_file

    from yume.models.foundation import PretrainedBaseError

    base = tiny_model_config()
    with pytest.raises(PretrainedBaseError, match="dit_pretrained_path is not set"):
        _module(base.model_copy(update={"dit_init": "pretrained", "dit_pretrained_path": None}))
    with pytest.raises(PretrainedBaseError, match=str(tmp_path / "nowhere")):
        _module(base.model_copy(update={"dit_init": "pretrained", "dit_pretrained_path": str(tmp_path / "nowhere")}))
    # A base of another architecture: the first differing config key is named.
    _diffusers_dir(tmp_path / "two_layers", base.dit.model_copy(update={"num_layers": 2}))
    with pytest.raises(PretrainedBaseError, match=r"num_layers=2 but the profile's model.dit.num_layers is 4"):
        _module(base.model_copy(update={"dit_init": "pretrained", "dit_pretrained_path": str(tmp_path / "two_layers")}))
    # Right config, a tensor of the wrong shape: the tensor is named.
    _diffusers_dir(tmp_path / "bad_shape")
    path = tmp_path / "bad_shape" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    state["proj_out.weight"] = state["proj_out.weight"][:-1]
    save_file(state, str(path))
    with pytest.raises(PretrainedBaseError, match=r"proj_out.weight has shape"):
        _module(base.model_copy(update={"dit_init": "pretrained", "dit_pretrained_path": str(tmp_path / "bad_shape")}))


def test_a_base_trained_with_another_text_encoder_is_refused(tmp_path):
    from yume.models.foundation import PretrainedBaseError
    from yume.tasks.train_foundation import check_pretrained_base

    _diffusers_dir(tmp_path / "base")
    cfg = tiny_model_config().model_copy(update={"dit_init": "pretrained", "dit_pretrained_path": str(tmp_path / "base")})
    check_pretrained_base(cfg, "tiny-umt5:abc")  # no card (Wan2.2's own directory): nothing to compare
    (tmp_path / "base" / "model_card.json").write_text(json.dumps({"encoder_id": "tiny-umt5:abc"}))
    check_pretrained_base(cfg, "tiny-umt5:abc")
    with pytest.raises(PretrainedBaseError, match="tiny-umt5:abc.*tiny-umt5:other"):
        check_pretrained_base(cfg, "tiny-umt5:other")
    (tmp_path / "base" / "model_card.json").write_text("{truncated")
    with pytest.raises(PretrainedBaseError, match="model_card.json is not valid JSON"):
        check_pretrained_base(cfg, "tiny-umt5:abc")
    check_pretrained_base(cfg.model_copy(update={"dit_init": "random"}), "anything")


def test_yume15_names_local_wan22_directories_and_trains_from_them():
    p = load_profile("yume15")
    m = p.model
    assert m.dit_init == "pretrained"
    for path in (m.dit_pretrained_path, m.codec.pretrained_path, m.text.pretrained_path):
        assert path and path.startswith("/"), path
    assert "transformer" in m.dit_pretrained_path and "vae" in m.codec.pretrained_path
    assert "text_encoder" in m.text.pretrained_path


def test_relative_model_paths_resolve_against_the_package():
    import yume
    from yume.models.config import resolve_model_path

    assert resolve_model_path("weights/tiny_base") == (
        __import__("pathlib").Path(yume.__file__).resolve().parent / "weights" / "tiny_base")
    assert str(resolve_model_path("/abs/dir")) == "/abs/dir"


def test_motion_captions_share_no_sentence_with_the_action_vocabularies():
    from yume.tasks.action_text import KEY_LABELS, MOUSE_LABELS, VOCABULARIES, all_action_sentences
    from yume.tasks.motion_captions import VARIANTS, caption_with_motion, motion_phrase

    vocab = {s.strip().lower() for v in VOCABULARIES for s in all_action_sentences(v).values()}
    parts = {p.strip().lower() for s in vocab for p in s.replace(". ", ".|").split("|")}
    phrases = {motion_phrase(k, m, v) for k in KEY_LABELS for m in MOUSE_LABELS for v in range(VARIANTS ** 2)}
    assert len(phrases) == 81 * VARIANTS ** 2  # every label and variant has its own wording
    for ph in phrases:
        assert ph.lower() not in parts and "camera" not in ph.lower() and "(" not in ph
    # Per-row, deterministic: p = 0 never, p = 1 always, and the motion sentence comes first.
    assert caption_with_motion("A walk.", "W", "→", "row-1", 0.0) == "A walk."
    with_words = caption_with_motion("A walk.", "W", "→", "row-1", 1.0)
    assert with_words.endswith(" A walk.") and with_words == caption_with_motion("A walk.", "W", "→", "row-1", 1.0)
    assert caption_with_motion("A walk.", None, None, "row-1", 1.0) == "A walk."
    with pytest.raises(ValueError):
        motion_phrase("Q", "→")
    half = [caption_with_motion("c", "W", "·", f"r{i}", 0.5) != "c" for i in range(400)]
    assert 0.4 < sum(half) / 400 < 0.6
