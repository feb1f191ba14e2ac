"""`pretrain_base`: the tiny base's flow (few steps, resume, determinism, export, card, learning curve) and the
shipped base itself (its sha256 against its card, diffusers loads it, the tiny profile fine-tunes from it)."""

import json

import pytest
import torch

from yume.config import load_profile

SMALL = [
    "pretrain_base.worlds={n_clips: 2, seed: 5, height: 32, width: 32, frames_per_clip: 96, supersample: 1,"
    " labels: script, trajectory: {segment_frames: [24, 40]}}",
    "pretrain_base.train.batch_size=4", "pretrain_base.train.checkpoint_every_n_steps=2",
    "pretrain_base.train.long_history_frames=[10, 20]", "pretrain_base.train.warmup_steps=1",
    "pretrain_base.snapshot_every_n_steps=2", "pretrain_base.train.torch_threads=1",
    "pretrain_base.curve={clips: 3, chunks: 6, segment_chunks: 3, steps: 2}",
]


def _weights(d):
    from safetensors.torch import load_file

    return load_file(str(d / "diffusion_pytorch_model.safetensors"))


@pytest.mark.slow
def test_pretrain_base_trains_resumes_deterministically_and_ships_a_card(tmp_path, prefect_harness):
    from yume.flows.pretrain_base import pretrain_base
    from yume.datasets.manifest import file_sha256

    out_a, out_b = tmp_path / "base_a", tmp_path / "base_b"
    # A: 4 steps, then the same run continued to 6 (resumes from its step-4 checkpoint).
    first = pretrain_base(workdir=str(tmp_path / "a"), overrides=SMALL + [f"pretrain_base.out={out_a}",
                                                                         "pretrain_base.train.max_steps=4"])
    assert first["global_step"] == 4 and first["complete"]  # complete against its own max_steps
    second = pretrain_base(workdir=str(tmp_path / "a"), overrides=SMALL + [f"pretrain_base.out={out_a}",
                                                                          "pretrain_base.train.max_steps=6"])
    assert second["global_step"] == 6 and second["resumed_from"].endswith("step-0000004.safetensors")
    # B: 6 steps straight, same seed -> the same weights.
    pretrain_base(workdir=str(tmp_path / "b"), overrides=SMALL + [f"pretrain_base.out={out_b}",
                                                                 "pretrain_base.train.max_steps=6"])
    wa, wb = _weights(out_a), _weights(out_b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    card = json.loads((out_a / "model_card.json").read_text())
    assert card["weights_sha256"] == file_sha256(out_a / "diffusion_pytorch_model.safetensors")
    assert card["training"]["steps"] == 6 and card["training"]["samples"] == 24 and card["training"]["complete"]
    assert card["training"]["cpu_seconds"] > 0 and card["machine"]["device"] == "cpu"
    assert card["encoder_id"].startswith("tiny-umt5:") and card["data"]["seed"] == 5
    assert card["action_sentences_in_pretraining"] is False and len(card["code_commit"]) >= 7
    curve = (out_a / "learning_curve.csv").read_text().splitlines()
    assert curve[0].startswith("step,loss,key_accuracy") and len(curve) == 1 + 3  # snapshots at 2, 4, 6
    assert (out_a / "learning_curve.png").stat().st_size > 5000 and "Learning curve" in (out_a / "MODEL_CARD.md").read_text()
    # The pretraining texts never contain an action sentence; half the I2V rows carry motion words.
    import pandas as pd

    rows = pd.read_parquet(tmp_path / "a" / "pretrain_base" / "manifests" / "train")
    assert not rows.t2v_text.str.contains(r"The camera|\(W\)|\(·\)", regex=True).any()
    # The tiny profile fine-tunes from it: the same architecture loads.
    from yume.models.foundation import build_dit

    m = load_profile("tiny", None, [f"model.dit_pretrained_path={out_a}"]).model
    assert torch.equal(build_dit(m).proj_out.weight, wa["proj_out.weight"])


def test_the_shipped_base_matches_its_card_and_loads_in_diffusers():
    """CI: the committed weights are the ones the card describes, diffusers' WanTransformer3DModel loads them,
    and the tiny profile's training starts from them."""
    import diffusers
    from yume.models.config import resolve_model_path
    from yume.models.foundation import build_dit
    from yume.datasets.manifest import file_sha256

    prof = load_profile("tiny")
    d = resolve_model_path(prof.model.dit_pretrained_path)
    card = json.loads((d / "model_card.json").read_text())
    weights = d / "diffusion_pytorch_model.safetensors"
    assert weights.stat().st_size < 25 * 2**20
    assert file_sha256(weights) == card["weights_sha256"]
    ours = _weights(d)
    ref = diffusers.WanTransformer3DModel.from_pretrained(str(d))
    for k, v in ref.state_dict().items():
        assert torch.equal(v, ours[k]), k
    model = build_dit(prof.model)
    assert torch.equal(model.patch_embedding.weight, ours["patch_embedding.weight"])
    from yume.models.text import TextEncoder

    assert card["encoder_id"] == TextEncoder.from_config(prof.model.text).encoder_id
