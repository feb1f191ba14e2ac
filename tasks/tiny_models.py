"""Tiny random-init checkpoints of the curation models, built offline and saved like real ones.

The `tiny` profile (and the tests) name models ``tiny:<name>``; `resolve_model` builds the checkpoint once
into ``<workdir>/models/tiny/<name>`` and returns that directory, so the stages always load from a local
path exactly as they load real weights (``yume15`` gives real HF/diffusers directories):

- ``tiny:internvl3``: transformers' `InternVLForConditionalGeneration` (InternViT-style vision tower,
  pixel-shuffle projector, Qwen2 language model), 1 layer each, 32x32 images, 4 image tokens per frame;
  with its tokenizer (InternVL's special tokens ``<img>``, ``</img>``, ``<IMG_CONTEXT>``) and the
  GotOcr2 image processor InternVL uses.
- ``tiny:wan2.1-t2v``: diffusers `WanPipeline` layout (umT5 encoder, `AutoencoderKLWan` with z_dim 16 and
  8x spatial compression, `WanTransformer3DModel` with 16 channels) - Wan2.1 T2V's architecture.
- ``tiny:wan2.2-ti2v``: diffusers `WanImageToVideoPipeline` with ``expand_timesteps=True`` and no image
  encoder (Wan2.2-TI2V-5B's conditioning: the first latent frame is clean, its tokens get t=0), the Wan2.2
  VAE (z_dim 48, 2x2 patchify, 16x spatial) and a 48-channel transformer.

The sizes are diffusers' own test configs (REFERENCE section 3). Tokenizers are byte-level BPE trained here
with the `tokenizers` library on a small built-in corpus (no hub): any text tokenizes, nothing is unknown.
Everything is seeded, so a rebuilt checkpoint is the same model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

TINY_VERSION = "1"
TINY_MODELS = ("internvl3", "wan2.1-t2v", "wan2.2-ti2v")
MARKER = "_TINY.json"

CORPUS = [
    "A first-person walk through a quiet urban street with tall buildings, shops, trees and parked bicycles.",
    "People walk past on the pavement; a few pedestrians carry umbrellas while rain starts to fall.",
    "Fog rolls in and the distant mountains fade into a pale grey haze under a cloudy sky.",
    "At night the street lights come on and the windows of the buildings glow warm yellow.",
    "A bright orange sculpture suddenly appears on the ground ahead, next to a stone pillar.",
    "A silver drone descends slowly and hovers above the square, its lights blinking blue and red.",
    "Snow begins to fall over the meadow; the grass turns white and the light becomes soft and cold.",
    "A dragon glides over the forest canopy and lands on a rock by the river.",
    "The sun sets behind the hills; long shadows stretch across the tiled ground and the sky turns orange.",
    "A market stall opens, a vendor arranges fruit, and children run across the plaza laughing.",
    "Describe the people, objects, scenery, weather, lighting and activity. Do not mention the camera.",
    "sunny cloudy foggy rainy snowy daytime night dawn dusk empty sparse moderate crowded indoor outdoor natural",
]


def _train_bpe(specials: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=specials[0]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    return tok


def internvl_tokenizer():
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
    return PreTrainedTokenizerFast(
        tokenizer_object=_train_bpe(specials, 512), unk_token="<unk>", eos_token="<|im_end|>", pad_token="<|endoftext|>",
        padding_side="left",
        extra_special_tokens={"start_image_token": "<img>", "end_image_token": "</img>",
                              "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"},
    )


def umt5_tokenizer():
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=_train_bpe(["<pad>", "</s>", "<unk>"], 512), pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
    )


def build_internvl3(out: Path) -> None:
    import torch
    from transformers import InternVLConfig, InternVLForConditionalGeneration
    from transformers.models.got_ocr2 import GotOcr2ImageProcessorPil

    tok = internvl_tokenizer()
    image_size, patch, downsample = 32, 8, 0.5
    seq_len = int((image_size // patch) ** 2 * downsample**2)
    cfg = InternVLConfig(
        vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                           image_size=image_size, patch_size=patch),
        text_config=dict(model_type="qwen2", vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, intermediate_size=64,
                         max_position_embeddings=1024, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         bos_token_id=None),
        image_token_id=tok.context_image_token_id, image_seq_length=seq_len, downsample_ratio=downsample,
    )
    torch.manual_seed(0)
    model = InternVLForConditionalGeneration(cfg).eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.do_sample = False
    model.save_pretrained(out)
    tok.save_pretrained(out)
    GotOcr2ImageProcessorPil(size={"height": image_size, "width": image_size}, crop_to_patches=False).save_pretrained(out)


def _umt5(vocab: int):
    import torch
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    return UMT5EncoderModel(UMT5Config(
        vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )).eval()


def _transformer(channels: int):
    import torch
    from diffusers import WanTransformer3DModel

    torch.manual_seed(1)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=channels,
        out_channels=channels, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    )


def build_wan21_t2v(out: Path) -> None:
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline

    tok = umt5_tokenizer()
    torch.manual_seed(2)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    pipe = WanPipeline(tokenizer=tok, text_encoder=_umt5(len(tok)), vae=vae, transformer=_transformer(16),
                       scheduler=scheduler)
    pipe.save_pretrained(out)


def build_wan22_ti2v(out: Path) -> None:
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline

    tok = umt5_tokenizer()
    torch.manual_seed(3)
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=48, in_channels=12, out_channels=12, is_residual=True, patch_size=2,
        latents_mean=[0.0] * 48, latents_std=[1.0] * 48, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
        scale_factor_spatial=16, scale_factor_temporal=4, temperal_downsample=[False, True, True],
    )
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    pipe = WanImageToVideoPipeline(
        tokenizer=tok, text_encoder=_umt5(len(tok)), vae=vae, transformer=_transformer(48), scheduler=scheduler,
        image_encoder=None, image_processor=None, expand_timesteps=True,
    )
    pipe.save_pretrained(out)


BUILDERS = {"internvl3": build_internvl3, "wan2.1-t2v": build_wan21_t2v, "wan2.2-ti2v": build_wan22_ti2v}


def ensure_tiny_model(name: str, root: Path) -> Path:
    """The directory of tiny model ``name`` under ``root``, built (atomically, once) if missing or stale."""
    if name not in BUILDERS:
        raise ValueError(f"unknown tiny model {name!r}; known: {list(BUILDERS)}")
    out = Path(root) / name
    marker = out / MARKER
    want = {"name": name, "version": TINY_VERSION}
    if marker.is_file() and json.loads(marker.read_text()) == want:
        return out
    tmp = Path(root) / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    BUILDERS[name](tmp)
    (tmp / MARKER).write_text(json.dumps(want))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def resolve_model(spec: str, workdir: Path, key: str = "model") -> Path:
    """A model spec from the profile -> a local directory. ``tiny:<name>`` builds into <workdir>/models/tiny;
    anything else must be an existing directory (nothing is ever downloaded)."""
    from yume.config import ConfigError

    if spec.startswith("tiny:"):
        return ensure_tiny_model(spec.removeprefix("tiny:"), Path(workdir) / "models" / "tiny")
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise ConfigError(f"{key}: model directory {str(path)!r} does not exist (local paths only, no downloads)")
    return path.resolve()


def model_fingerprint(path: Path) -> str:
    """Cheap identity of a checkpoint directory for cache keys: names, sizes and mtimes of its files."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(Path(path).rglob("*")):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.relative_to(path).as_posix()}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]
