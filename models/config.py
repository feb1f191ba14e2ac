"""Model configuration as validated data (pydantic, unknown keys rejected).

One ``ModelConfig`` describes the whole world model: the Wan2.2 DiT (``WanDiTConfig``, whose fields mirror
diffusers' ``WanTransformer3DModel`` config so a real ``config.json`` maps onto it 1:1), the history
compression (``TSCMConfig``), the text encoder (``TextConfig``) and the latent codec (``CodecConfig``).
Profiles embed it as their ``model:`` section; ``tiny_model_config()`` and ``yume15_model_config()`` are the
two embedded scales.

Choices the paper (Yume-1.5, REFERENCE.md section 4) leaves open are fields here, with our default and the
reason in the field description, so they are visible in ``yume model info`` and in every resolved profile:

- padding of grids a coarse kernel does not divide: ``TSCMConfig.pad_mode`` (zero-pad bottom/right, as the
  public code does);
- tiers beyond (1,8,8): ``TSCM_SCHEDULES["paper"]`` continues with the public code's deeper tiers;
- what happens past the last tier: ``TSCMConfig.overflow`` ("pool" into a fixed number of slots);
- RoPE positions of coarse tokens: ``TSCMConfig.rope_position`` (centre of the covered region);
- coarse patch-weight interpolation: ``TSCMConfig.weight_interpolation`` (nearest, rescaled);
- channel branch: concat axis (tokens), positions of ``z_linear`` tokens (centre of the covered region),
  linear-attention heads, history window and block set: ``ChannelBranchConfig``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Kernel = tuple[int, int, int]
Tier = tuple[int, Kernel]

# Named tier schedules: (number of history latent frames, patch kernel (t, h, w)), newest tier first.
TSCM_SCHEDULES: dict[str, list[Tier]] = {
    # The paper's explicit tiers: t-1..t-2 at (1,2,2), t-3..t-6 at (1,4,4), t-7..t-23 at (1,8,8).
    "paper_explicit": [(2, (1, 2, 2)), (4, (1, 4, 4)), (17, (1, 8, 8))],
    # The paper's tiers, continued ("further tiers coarser") with the public code's deeper tiers.
    "paper": [(2, (1, 2, 2)), (4, (1, 4, 4)), (17, (1, 8, 8)), (64, (1, 16, 16)), (256, (1, 32, 32))],
    # The public Yume-1.5 code: last 3 fine, 2 at 4x4, 16 at 8x8, 64 at 16x16, 256 at 32x32.
    "public": [(3, (1, 2, 2)), (2, (1, 4, 4)), (16, (1, 8, 8)), (64, (1, 16, 16)), (256, (1, 32, 32))],
}


# Choices the paper leaves open (REFERENCE.md section 4, last item): where each is set. `yume model info`
# prints them with their values and reasons.
OPEN_CHOICES: dict[str, str] = {
    "tscm.pad_mode": "padding of grids a coarse kernel does not divide",
    "tscm.tiers": "tiers beyond (1,8,8)",
    "tscm.overflow": "history older than every tier",
    "tscm.overflow_slots": "size of the pooled overflow",
    "tscm.rope_position": "RoPE positions of coarse tokens",
    "tscm.time_positions": "RoPE time positions of long histories and of the chunk after them (bounded or not)",
    "tscm.weight_interpolation": "coarse patch-weight initialisation",
    "tscm.temporal_sample_every": "1-in-N temporal sampling of the history",
    "tscm.channel.heads": "linear-attention heads of the channel branch",
    "tscm.channel.max_frames": "history window of the channel branch",
    "tscm.channel.blocks": "blocks with the channel branch",
    "fusion concat axis": "fixed: the token axis (prediction tokens then z_linear tokens)",
    "z_linear positions": "fixed: centre of the (8,4,4) region each token covers, fine-grid units",
}


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class WanDiTConfig(StrictModel):
    """The DiT's architecture; field names and meanings are diffusers' ``WanTransformer3DModel`` config."""

    patch_size: Kernel = Field((1, 2, 2), description="fine patch (t, h, w) of the prediction tokens")
    num_attention_heads: int = Field(24, ge=1)
    attention_head_dim: int = Field(128, ge=6, description="split 3 ways for RoPE: t gets the rest, h = w = 2*(d//6)")
    in_channels: int = Field(48, ge=1, description="latent channels in")
    out_channels: int = Field(48, ge=1, description="latent channels out (velocity)")
    text_dim: int = Field(4096, ge=1, description="text-encoder hidden size (umT5-XXL: 4096)")
    freq_dim: int = Field(256, ge=2, description="sinusoidal timestep embedding size")
    ffn_dim: int = Field(14336, ge=1)
    num_layers: int = Field(30, ge=1)
    cross_attn_norm: bool = True
    qk_norm: Literal["rms_norm_across_heads"] = "rms_norm_across_heads"
    eps: float = 1e-6
    rope_max_seq_len: int = Field(
        1024, ge=1, description="kept for diffusers compatibility; our RoPE is computed from positions, so no table limit"
    )
    rope_theta: float = 10000.0

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    def to_diffusers(self) -> dict:
        """The equivalent diffusers ``WanTransformer3DModel`` config (TI2V: no image branch)."""
        return {
            "_class_name": "WanTransformer3DModel",
            "patch_size": list(self.patch_size),
            "num_attention_heads": self.num_attention_heads,
            "attention_head_dim": self.attention_head_dim,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "text_dim": self.text_dim,
            "freq_dim": self.freq_dim,
            "ffn_dim": self.ffn_dim,
            "num_layers": self.num_layers,
            "cross_attn_norm": self.cross_attn_norm,
            "qk_norm": self.qk_norm,
            "eps": self.eps,
            "image_dim": None,
            "added_kv_proj_dim": None,
            "rope_max_seq_len": self.rope_max_seq_len,
            "pos_embed_seq_len": None,
        }

    @classmethod
    def from_diffusers(cls, config: dict) -> "WanDiTConfig":
        """Read a diffusers ``config.json`` dict; I2V-with-CLIP variants (image branch) are rejected."""
        for key in ("image_dim", "added_kv_proj_dim", "pos_embed_seq_len"):
            if config.get(key) is not None:
                raise ValueError(f"config.json: {key}={config[key]!r} (Wan2.1 image branch) is not supported; "
                                 "only Wan2.2 TI2V-style transformers (no image branch) are")
        if config.get("qk_norm") not in (None, "rms_norm_across_heads"):
            raise ValueError(f"config.json: qk_norm={config['qk_norm']!r} is not supported")
        skip = {"_class_name", "_diffusers_version", "_name_or_path", "image_dim", "added_kv_proj_dim",
                "pos_embed_seq_len", "_yume_tscm"}
        fields = {k: v for k, v in config.items() if k not in skip}
        if fields.get("qk_norm") is None:
            fields.pop("qk_norm", None)
        if fields.get("out_channels") is None:
            fields["out_channels"] = fields.get("in_channels", 16)
        return cls(**fields)


class ChannelBranchConfig(StrictModel):
    """The paper's channel-compressed linear-attention branch over the history (not in the public code)."""

    enabled: bool = True
    patch: Kernel = Field((8, 4, 4), description="history patch (t, h, w) of z_linear (paper: (8,4,4))")
    channels: int = Field(96, ge=1, description="z_linear width (paper: 96)")
    heads: int = Field(3, ge=1, description="linear-attention heads (open in the paper; 3 x 32 as in SANA)")
    blocks: list[int] | None = Field(None, description="block indices with the branch; None = every block")
    max_frames: int | None = Field(
        64, ge=1,
        description="most recent history latent frames fed to the branch (open in the paper; bounding it keeps "
        "per-chunk cost flat); older frames are dropped. None = all")
    eps: float = 1e-6

    @model_validator(mode="after")
    def _check(self) -> "ChannelBranchConfig":
        if self.channels % self.heads:
            raise ValueError(f"channels ({self.channels}) must be divisible by heads ({self.heads})")
        if self.channels // self.heads < 6:
            raise ValueError("channel-branch head dim must be >= 6 (3-axis RoPE)")
        return self


class TSCMConfig(StrictModel):
    """Temporal-spatial history compression (TSCM). ``enabled=False`` is the full-context baseline: every
    history latent frame at the fine patch (1,2,2)."""

    enabled: bool = True
    tiers: list[Tier] = Field(
        default_factory=lambda: list(TSCM_SCHEDULES["paper"]),
        description="(frames, kernel) newest first; or a preset name: " + ", ".join(TSCM_SCHEDULES))
    first_frame_fine: bool = Field(True, description="the first history frame (the I2V image) stays at (1,2,2)")
    overflow: Literal["pool", "drop"] = Field(
        "pool",
        description="frames older than all tiers: 'pool' averages them in time into overflow_slots frames "
        "patchified at the last tier's kernel (bounded tokens, nothing ignored); 'drop' discards them")
    overflow_slots: int = Field(4, ge=1, description="frames the overflow is pooled into")
    temporal_sample_every: int = Field(
        1, ge=1, description="keep 1 in N history frames (counting back from the newest; first frame always "
        "kept); the paper mentions 1 in 32 for long histories. 1 = keep all")
    temporal_sample_random: bool = Field(False, description="random phase for 1-in-N sampling (training)")
    pad_mode: Literal["zero", "replicate"] = Field(
        "zero", description="grids a coarse kernel does not divide are padded bottom/right (public code: zero)")
    time_positions: Literal["compressed", "absolute"] = Field(
        "compressed", description="RoPE time positions of history and prediction tokens. compressed: the TSCM "
        "plan's slots are numbered in order (first frame 0, each pooled overflow slot one step, then every tier "
        "frame), and the chunk follows the newest slot, so positions stay bounded however long a rollout runs "
        "and training (whose long histories fill every slot) covers them; the same as absolute until the history "
        "overflows the tiers. absolute: frame indices (a 100-chunk rollout asks for positions never trained)")
    rope_position: Literal["centre", "top_left"] = Field(
        "centre", description="RoPE position of a coarse token in fine-grid coordinates: centre of the covered "
        "region (principled) or its top-left (public code)")
    weight_interpolation: Literal["nearest", "trilinear"] = Field(
        "nearest", description="coarse patch weights from the fine ones; always rescaled by fine/coarse kernel "
        "volume so a coarse kernel sees the same input energy (the public code uses trilinear, unscaled)")
    channel: ChannelBranchConfig = ChannelBranchConfig()

    @field_validator("tiers", mode="before")
    @classmethod
    def _preset(cls, v):
        if isinstance(v, str):
            if v not in TSCM_SCHEDULES:
                raise ValueError(f"unknown tier preset {v!r}; known: {sorted(TSCM_SCHEDULES)}")
            return list(TSCM_SCHEDULES[v])
        return v

    @model_validator(mode="after")
    def _check(self) -> "TSCMConfig":
        for count, kernel in self.tiers:
            if count < 1:
                raise ValueError(f"tier count must be >= 1, got {count}")
            if kernel[0] != 1 or min(kernel) < 1:
                raise ValueError(f"tier kernel {kernel}: temporal size must be 1 and sizes >= 1 "
                                 "(use temporal_sample_every for temporal thinning)")
        if self.enabled and not self.tiers and self.overflow == "pool":
            raise ValueError("overflow 'pool' needs at least one tier (its kernel is the last tier's)")
        return self

    @property
    def kernels(self) -> list[Kernel]:
        return [k for _, k in self.tiers]


class TinyUMT5Config(StrictModel):
    """A random-init umT5 encoder small enough for tests and the tiny profile."""

    d_model: int = 32
    d_kv: int = 8
    d_ff: int = 64
    num_layers: int = 2
    num_heads: int = 4
    relative_attention_num_buckets: int = 8
    seed: int = 0


class TextConfig(StrictModel):
    """umT5 encoder; event and action texts are encoded separately and concatenated (action first)."""

    pretrained_path: str | None = Field(None, description="local umT5 encoder dir (config + weights; tokenizer "
                                        "inside or in ../tokenizer); required when `tiny` is null")
    tiny: TinyUMT5Config | None = Field(TinyUMT5Config(), description="random-init encoder used when no "
                                        "pretrained_path is given; null = real weights required")
    max_length: int = Field(512, ge=1, description="token budget of the concatenated embedding (Wan: 512)")
    vocabulary: str = Field("yume15", description="action-sentence vocabulary (yume.tasks.action_text)")
    action_prefix: str = Field("First-person perspective. ", description="prepended to every action sentence")
    order: Literal["action_first", "event_first"] = "action_first"
    dtype: Literal["float32", "bfloat16"] = "float32"


class CodecConfig(StrictModel):
    """Latent codec: the Wan2.2 VAE, or the lossless space-to-depth patch codec of the tiny profile."""

    kind: Literal["patch", "wan_vae"] = "patch"
    patch_size: int = Field(4, ge=1, description="patch codec: pixels per latent side (3*p*p channels)")
    pretrained_path: str | None = Field(None, description="wan_vae: local AutoencoderKLWan dir")
    tiny_random: bool = Field(False, description="wan_vae without pretrained_path: a tiny random-init VAE "
                              "(tests); otherwise a missing path is an error")
    dtype: Literal["float32", "bfloat16"] = "float32"


class ModelConfig(StrictModel):
    """The world model of one profile."""

    dit: WanDiTConfig = WanDiTConfig()
    tscm: TSCMConfig = TSCMConfig()
    text: TextConfig = TextConfig()
    codec: CodecConfig = CodecConfig()
    chunk_frames: int = Field(8, ge=1, description="latent frames generated per chunk (yume15: 8)")
    dit_init: Literal["pretrained", "random"] = Field(
        "pretrained", description="how training builds the DiT: 'pretrained' loads dit_pretrained_path (Yume never "
        "trains from scratch; a missing path is an error before training), 'random' ignores the path (tests and "
        "shape experiments)")
    dit_pretrained_path: str | None = Field(
        None, description="local diffusers-format transformer dir (config.json + safetensors); a relative path is "
        "resolved against the installed yume package, where the shipped tiny base lives")

    @model_validator(mode="after")
    def _check(self) -> "ModelConfig":
        if self.codec.kind == "patch":
            ch = 3 * self.codec.patch_size ** 2
            if ch != self.dit.in_channels:
                raise ValueError(f"codec patch {self.codec.patch_size} gives {ch} channels but dit.in_channels is "
                                 f"{self.dit.in_channels}")
        if self.text.pretrained_path is None and self.text.tiny is not None and self.text.tiny.d_model != self.dit.text_dim:
            raise ValueError(f"text.tiny.d_model ({self.text.tiny.d_model}) must equal dit.text_dim "
                             f"({self.dit.text_dim})")
        blocks = self.tscm.channel.blocks
        if blocks is not None and any(not 0 <= b < self.dit.num_layers for b in blocks):
            raise ValueError(f"tscm.channel.blocks {blocks} out of range for {self.dit.num_layers} layers")
        return self


def tiny_model_config() -> ModelConfig:
    """A model that trains on CPU in minutes: 4 layers, 4 heads x 32, patch codec 4 (48 channels), 4-frame
    chunks, channel branch 48 wide (3 heads).

    Tiers: the paper's explicit ones only, older frames pooled into 4 slots. On its small latent grids
    (8x8 at 32 px, 16x16 at 64 px) the deeper tiers save at most 3 tokens per frame over (1,8,8) yet add a
    token per frame for up to 320 frames, so the history would keep growing for 80 chunks; with pooling
    it is bounded at 1 + 23 frames + 4 slots (6 chunks), matching the paper's "flat beyond 8 chunks".
    """
    return ModelConfig(
        dit=WanDiTConfig(num_attention_heads=4, attention_head_dim=32, in_channels=48, out_channels=48,
                         text_dim=32, freq_dim=64, ffn_dim=512, num_layers=4),
        tscm=TSCMConfig(tiers="paper_explicit", channel=ChannelBranchConfig(channels=48, heads=3)),
        # 128 text tokens (an action sentence is ~30, an event caption ~100): cross-attention over Wan's 512
        # zero-padded tokens cost the tiny model a third of its training step.
        text=TextConfig(tiny=TinyUMT5Config(d_model=32), max_length=128),
        codec=CodecConfig(kind="patch", patch_size=4),
        chunk_frames=4,
    )


def yume15_model_config() -> ModelConfig:
    """The paper's model: Wan2.2-TI2V-5B (30 layers, 24 x 128, ffn 14336, 48 channels, umT5-XXL 4096)."""
    return ModelConfig(
        dit=WanDiTConfig(),
        tscm=TSCMConfig(tiers="paper"),
        text=TextConfig(tiny=None, dtype="bfloat16"),
        codec=CodecConfig(kind="wan_vae"),
        chunk_frames=8,
    )


MODEL_CONFIGS = {"tiny": tiny_model_config, "yume15": yume15_model_config}


def resolve_model_path(path: str) -> "Path":
    """A model directory named in a profile: absolute as given; relative to the ``yume`` package otherwise
    (``weights/tiny_base`` is the shipped tiny base, found the same way from any working directory)."""
    from pathlib import Path

    import yume

    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(yume.__file__).resolve().parent / p
