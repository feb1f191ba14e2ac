"""Our Wan2.2 DiT (the Wan2.2-TI2V-5B architecture) with TSCM history compression.

Written from the architecture, with module names chosen so the state dict has exactly the keys of diffusers'
``WanTransformer3DModel``: real Wan2.2 weights in diffusers format (``config.json`` + ``*.safetensors``, sharded
or not) load from a local directory with ``WanDiT.from_pretrained``. With no history and TSCM off the forward
is diffusers' forward op for op (parity tested to 1e-5 in float32).

Per block (adaLN with a learned ``scale_shift_table`` added to the projected timestep embedding):
``x += gate * SelfAttn(LN(x) * (1 + scale) + shift)`` (3-axis RoPE, RMSNorm on q/k across heads),
``x += CrossAttn(LN_affine(x), text)``, [TSCM channel branch], ``x += c_gate * FFN(LN(x) * (1 + c_scale) + c_shift)``.

Timesteps are per token (Wan2.2 TI2V): a [B] timestep is broadcast, a [B, L] one gives every prediction token
its own; history tokens get ``history_timestep`` (0: clean). I2V conditioning is a mask, not a channel concat:
``x = M * z_cond + (1 - M) * z`` with M = 1 on conditioning latent frames, whose tokens get t = 0.

New parameters (coarse patch embeddings, channel branch) have names starting with ``tscm.`` or containing
``.channel_branch.``; when a checkpoint lacks them they are initialised as the paper says (see
``init_tscm_params``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from .config import ModelConfig, TSCMConfig, WanDiTConfig
from .tscm import LinearAttentionBranch, TSCMEmbedder, apply_rope, grid_positions, next_time_position, rope_cos_sin

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
WEIGHTS_INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
# diffusers ignores this key of older checkpoints; so do we.
IGNORED_CHECKPOINT_KEYS = ("norm_added_q",)


def is_tscm_param(name: str) -> bool:
    """Parameters TSCM adds on top of the diffusers architecture."""
    return name.startswith("tscm.") or ".channel_branch." in name


# ------------------------------------------------------------------------------------ small modules


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the activations' dtype (as Wan does)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


def timestep_sinusoid(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[N] timesteps -> [N, dim] embedding, cos half first (diffusers Timesteps, flip_sin_to_cos, shift 0)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class TimestepMLP(nn.Module):
    """linear_1 -> SiLU -> linear_2 (diffusers TimestepEmbedding)."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class TextProjection(nn.Module):
    """linear_1 -> GELU(tanh) -> linear_2: text-encoder width to model width."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.act_1 = nn.GELU(approximate="tanh")
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act_1(self.linear_1(x)))


class ConditionEmbedder(nn.Module):
    """Timestep -> (temb for the output head, 6 modulation vectors per block), and text projection."""

    def __init__(self, dim: int, freq_dim: int, text_dim: int):
        super().__init__()
        self.freq_dim = freq_dim
        self.time_embedder = TimestepMLP(freq_dim, dim)
        self.act_fn = nn.SiLU()
        self.time_proj = nn.Linear(dim, dim * 6)
        self.text_embedder = TextProjection(text_dim, dim)

    def embed_time(self, t: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """[N] timesteps -> temb [N, dim], projection [N, 6*dim]. Distinct values are embedded once
        (per-token timesteps of a chunk take only a few values: history 0, prediction t)."""
        uniq, inverse = torch.unique(t, return_inverse=True)
        emb = timestep_sinusoid(uniq, self.freq_dim)
        mlp_dtype = self.time_embedder.linear_1.weight.dtype
        temb = self.time_embedder(emb.to(mlp_dtype)).to(dtype)
        proj = self.time_proj(self.act_fn(temb))
        return temb[inverse], proj[inverse]


class GELUProjection(nn.Module):
    """Linear then tanh-GELU (diffusers' ``GELU`` activation module, key ``proj``)."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    """dim -> ffn_dim (tanh-GELU) -> dim; ``net`` indices match diffusers (0: proj+act, 1: dropout, 2: out)."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.net = nn.ModuleList([GELUProjection(dim, inner), nn.Dropout(0.0), nn.Linear(inner, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class Attention(nn.Module):
    """Multi-head attention with RMSNorm over all heads' q and k (Wan's ``rms_norm_across_heads``)."""

    def __init__(self, dim: int, heads: int, eps: float):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])
        self.norm_q = nn.RMSNorm(dim, eps=eps)
        self.norm_k = nn.RMSNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        context = x if context is None else context
        q = self.norm_q(self.to_q(x)).unflatten(2, (self.heads, -1))
        k = self.norm_k(self.to_k(context)).unflatten(2, (self.heads, -1))
        v = self.to_v(context).unflatten(2, (self.heads, -1))
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        out = out.transpose(1, 2).flatten(2).type_as(q)
        return self.to_out[1](self.to_out[0](out))


class WanBlock(nn.Module):
    """One Wan transformer block, optionally with the TSCM channel branch after cross-attention."""

    def __init__(self, cfg: WanDiTConfig, channel_branch: LinearAttentionBranch | None = None):
        super().__init__()
        dim = cfg.inner_dim
        self.norm1 = FP32LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.attn1 = Attention(dim, cfg.num_attention_heads, cfg.eps)
        self.attn2 = Attention(dim, cfg.num_attention_heads, cfg.eps)
        self.norm2 = FP32LayerNorm(dim, cfg.eps, elementwise_affine=True) if cfg.cross_attn_norm else nn.Identity()
        self.ffn = FeedForward(dim, cfg.ffn_dim)
        self.norm3 = FP32LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)
        self.channel_branch = channel_branch

    def forward(self, x: torch.Tensor, context: torch.Tensor, mod: torch.Tensor, rope, branch: dict | None = None
                ) -> torch.Tensor:
        """x [B, L, dim]; mod [B, L or 1, 6, dim] (projected timestep); rope (cos, sin) per token."""
        shift, scale, gate, c_shift, c_scale, c_gate = (self.scale_shift_table.unsqueeze(0) + mod.float()).unbind(2)
        h = (self.norm1(x.float()) * (1 + scale) + shift).type_as(x)
        x = (x.float() + self.attn1(h, None, rope) * gate).type_as(x)
        x = x + self.attn2(self.norm2(x.float()).type_as(x), context)
        if self.channel_branch is not None and branch is not None:
            n = branch["n_pred"]
            x_pred = x[:, -n:]
            x_pred = x_pred + self.channel_branch(x_pred, branch["z"], branch["rope_pred"], branch["rope_all"])
            x = torch.cat([x[:, :-n], x_pred], dim=1)
        h = (self.norm3(x.float()) * (1 + c_scale) + c_shift).type_as(x)
        return (x.float() + self.ffn(h).float() * c_gate).type_as(x)


# ----------------------------------------------------------------------------------------- the DiT


class WanDiT(nn.Module):
    """Wan2.2 DiT + TSCM. ``forward(latents, timestep, text, history=...) -> velocity of the latents``."""

    def __init__(self, config: WanDiTConfig, tscm: TSCMConfig | None = None):
        super().__init__()
        self.config = config
        self.tscm_config = tscm if tscm is not None else TSCMConfig(enabled=False)
        cfg, dim = config, config.inner_dim
        self.patch_embedding = nn.Conv3d(cfg.in_channels, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.condition_embedder = ConditionEmbedder(dim, cfg.freq_dim, cfg.text_dim)
        branch_cfg = self.tscm_config.channel
        use_branch = self.tscm_config.enabled and branch_cfg.enabled
        branch_blocks = set(range(cfg.num_layers) if branch_cfg.blocks is None else branch_cfg.blocks)
        self.blocks = nn.ModuleList([
            WanBlock(cfg, LinearAttentionBranch(dim, branch_cfg) if use_branch and i in branch_blocks else None)
            for i in range(cfg.num_layers)
        ])
        self.norm_out = FP32LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.proj_out = nn.Linear(dim, cfg.out_channels * math.prod(cfg.patch_size))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)
        self.tscm = (TSCMEmbedder(cfg.in_channels, dim, cfg.patch_size, self.tscm_config)
                     if self.tscm_config.enabled else None)
        self.gradient_checkpointing = False
        self.init_tscm_params()

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block's activations in backward (the 5B model trains this way)."""
        self.gradient_checkpointing = enabled

    @classmethod
    def from_config(cls, config: ModelConfig) -> "WanDiT":
        return cls(config.dit, config.tscm)

    # ---------------------------------------------------------------------------- initialisation

    @torch.no_grad()
    def init_tscm_params(self, only: Iterable[str] | None = None) -> None:
        """The paper's init for TSCM parameters (all, or only the names in ``only``): coarse patch
        embeddings interpolated from the fine patch embedding and rescaled to the same input energy; channel
        branch layers at their default init with the up-projection zeroed (the branch starts as identity)."""
        only = set(only) if only is not None else None
        if self.tscm is not None:
            sub = None if only is None else {n[len("tscm."):] for n in only if n.startswith("tscm.")}
            self.tscm.init_from_fine(self.patch_embedding, sub)
            ce = self.tscm.channel_embedding
            if ce is not None and not ce.weight.is_meta and only is not None and "tscm.channel_embedding.weight" in only:
                ce.reset_parameters()
        for i, block in enumerate(self.blocks):
            br = block.channel_branch
            if br is None or br.fc_up.weight.is_meta:
                continue
            if only is not None and not any(n.startswith(f"blocks.{i}.channel_branch.") for n in only):
                continue
            if only is not None:
                for m in br.modules():
                    if m is not br and hasattr(m, "reset_parameters"):
                        m.reset_parameters()
            br.zero_init()

    # ------------------------------------------------------------------------------------ inputs

    def _check_latents(self, x: torch.Tensor, name: str) -> None:
        if x.ndim != 5:
            raise ValueError(f"{name}: expected [B, C, F, H, W] latents, got shape {tuple(x.shape)}")
        if x.shape[1] != self.config.in_channels:
            raise ValueError(f"{name}: has {x.shape[1]} channels but the model takes in_channels="
                             f"{self.config.in_channels}")

    def apply_cond_mask(self, x: torch.Tensor, cond_latents: torch.Tensor | None, cond_mask: torch.Tensor | None
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """I2V conditioning ``M * z_cond + (1 - M) * z``; returns the input and the per-token mask [B, L].

        ``cond_mask``: [F] or [B, F] per latent frame (1 = conditioning frame), or a latent-shaped
        [B|1, 1|C, F, H|1, W|1] tensor; a token's mask is read at its patch's first element (as diffusers).
        """
        if cond_mask is None and cond_latents is None:
            return x, None
        if cond_mask is None or cond_latents is None:
            raise ValueError("cond_latents and cond_mask must be given together")
        if cond_latents.shape != x.shape:
            raise ValueError(f"cond_latents shape {tuple(cond_latents.shape)} != hidden_states shape {tuple(x.shape)}")
        b, c, f, h, w = x.shape
        m = cond_mask.to(x.dtype)
        if m.ndim == 1 and m.shape[0] == f:
            m = m.view(1, 1, f, 1, 1)
        elif m.ndim == 2 and m.shape == (b, f):
            m = m.view(b, 1, f, 1, 1)
        elif not (m.ndim == 5 and m.shape[2] == f and all(s in (1, t) for s, t in zip(m.shape, x.shape))):
            raise ValueError(f"cond_mask shape {tuple(cond_mask.shape)} does not match hidden_states "
                             f"{tuple(x.shape)}: expected [F]=[{f}], [B, F]=[{b}, {f}] or a tensor broadcastable "
                             f"to [B, 1, F, H, W]")
        x = m * cond_latents + (1 - m) * x
        pt, ph, pw = self.config.patch_size
        token_mask = m[:, :1].expand(b, 1, f, h, w)[:, 0, ::pt, ::ph, ::pw].flatten(1)
        return x, token_mask

    def _prediction_timesteps(self, timestep: torch.Tensor | float, batch: int, n_tokens: int,
                              token_mask: torch.Tensor | None, per_token: bool) -> torch.Tensor:
        """[B] (or [B, L] when per-token is needed) timesteps of the prediction tokens."""
        t = torch.as_tensor(timestep, device=self.patch_embedding.weight.device)
        if t.ndim == 0:
            t = t.expand(batch)
        if t.ndim == 1 and t.shape[0] != batch:
            raise ValueError(f"timestep: 1-D timestep must have batch size {batch}, got {tuple(t.shape)}")
        if t.ndim == 2 and t.shape != (batch, n_tokens):
            raise ValueError(f"timestep: 2-D timestep must be [B, L] = [{batch}, {n_tokens}] (one per prediction "
                             f"token), got {tuple(t.shape)}")
        if t.ndim > 2:
            raise ValueError(f"timestep: expected [B] or [B, L], got {tuple(t.shape)}")
        if (per_token or token_mask is not None) and t.ndim == 1:
            t = t[:, None].expand(batch, n_tokens)
        if token_mask is not None:
            t = (1 - token_mask) * t
        return t

    # ----------------------------------------------------------------------------------- forward

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor | float,
        encoder_hidden_states: torch.Tensor,
        history: torch.Tensor | None = None,
        *,
        history_timestep: float | torch.Tensor = 0.0,
        cond_latents: torch.Tensor | None = None,
        cond_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Velocity [B, C_out, F, H, W] of the prediction chunk ``hidden_states`` [B, C, F, H, W].

        ``history`` [B, C, F_h, H, W]: clean past latents, compressed by TSCM (or all fine if TSCM is off);
        the chunk follows them in time. ``timestep``: [B] or per prediction token [B, L]. ``history_timestep``:
        scalar or [B], the timestep of history tokens (0 = clean).
        """
        x = hidden_states
        self._check_latents(x, "hidden_states")
        b, _, f, h, w = x.shape
        pt, ph, pw = self.config.patch_size
        if f % pt or h % ph or w % pw:
            raise ValueError(f"hidden_states: (F, H, W) = {(f, h, w)} not divisible by patch {self.config.patch_size}")
        if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[-1] != self.config.text_dim:
            raise ValueError(f"encoder_hidden_states: expected [B, S, {self.config.text_dim}], got "
                             f"{tuple(encoder_hidden_states.shape)}")
        if history is not None:
            self._check_latents(history, "history")
            if history.shape[0] != b or history.shape[3:] != x.shape[3:]:
                raise ValueError(f"history shape {tuple(history.shape)} must match hidden_states {tuple(x.shape)} "
                                 "in batch, height and width")
            if pt != 1:
                raise ValueError("history conditioning needs a temporal patch size of 1")
            if history.shape[2] == 0:
                history = None

        x, token_mask = self.apply_cond_mask(x, cond_latents, cond_mask)
        pred = self.patch_embedding(x).flatten(2).transpose(1, 2)
        n_pred = pred.shape[1]
        f_hist = history.shape[2] if history is not None else 0
        t_pred = self._prediction_timesteps(timestep, b, n_pred, token_mask, per_token=history is not None)
        # The chunk's first time position follows the history's newest (TSCMConfig.time_positions: bounded).
        t0 = next_time_position(f_hist, self.tscm_config, self.config.patch_size) if self.tscm is not None else f_hist
        pred_pos = grid_positions([t0 + i for i in range(f // pt)], (pt, ph, pw), h, w, (pt, ph, pw))

        if history is not None:
            hist, hist_pos, _ = self._embed_history(history, generator)
            t_hist = torch.as_tensor(history_timestep, dtype=t_pred.dtype, device=t_pred.device)
            t_hist = t_hist.reshape(-1, 1).expand(b, hist.shape[1]) if t_hist.ndim else t_hist.expand(b, hist.shape[1])
            tokens = torch.cat([hist.to(pred.dtype), pred], dim=1)
            positions = torch.cat([hist_pos, pred_pos], dim=0)
            t_all = torch.cat([t_hist, t_pred], dim=1)
        else:
            tokens, positions, t_all = pred, pred_pos, t_pred

        temb, mod = self.condition_embedder.embed_time(t_all.flatten(), encoder_hidden_states.dtype)
        lead = t_all.shape if t_all.ndim == 2 else (b, 1)
        temb, mod = temb.view(*lead, -1), mod.view(*lead, 6, -1)
        context = self.condition_embedder.text_embedder(encoder_hidden_states)
        head_dim = self.config.attention_head_dim
        rope = rope_cos_sin(positions.to(tokens.device), head_dim, self.config.rope_theta)
        branch = self._branch_inputs(history, pred_pos, n_pred, f_hist - t0)

        for block in self.blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                tokens = torch.utils.checkpoint.checkpoint(block, tokens, context, mod, rope, branch,
                                                           use_reentrant=False)
            else:
                tokens = block(tokens, context, mod, rope, branch)

        tokens = tokens[:, -n_pred:]
        if temb.shape[1] > 1:
            temb = temb[:, -n_pred:]
        shift, scale = (self.scale_shift_table.unsqueeze(0) + temb.unsqueeze(2)).unbind(2)
        out = (self.norm_out(tokens.float()) * (1 + scale) + shift).type_as(tokens)
        out = self.proj_out(out)
        out = out.reshape(b, f // pt, h // ph, w // pw, pt, ph, pw, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return out.flatten(6, 7).flatten(4, 5).flatten(2, 3)

    def _embed_history(self, history: torch.Tensor, generator: torch.Generator | None = None):
        """History tokens and positions: TSCM-compressed, or every frame fine when TSCM is off."""
        if self.tscm is not None:
            return self.tscm.embed_history(history, self.patch_embedding, generator)
        _, _, f, h, w = history.shape
        tokens = self.patch_embedding(history).flatten(2).transpose(1, 2)
        pos = grid_positions(list(range(f)), self.config.patch_size, h, w, self.config.patch_size)
        return tokens, pos, None

    def _branch_inputs(self, history: torch.Tensor | None, pred_pos: torch.Tensor, n_pred: int,
                       time_shift: float = 0.0) -> dict | None:
        """z_linear and the branch's RoPE tables, shared by every block with a channel branch."""
        if history is None or self.tscm is None or self.tscm.channel_embedding is None:
            return None
        z, z_pos = self.tscm.embed_channel(history, time_shift)
        ccfg = self.tscm_config.channel
        head_dim = ccfg.channels // ccfg.heads
        pred_pos, z_pos = pred_pos.to(z.device), z_pos.to(z.device)
        rope_pred = rope_cos_sin(pred_pos, head_dim, self.config.rope_theta)
        rope_all = rope_cos_sin(torch.cat([pred_pos, z_pos]), head_dim, self.config.rope_theta)
        return {"z": z, "n_pred": n_pred, "rope_pred": rope_pred, "rope_all": rope_all}

    # ------------------------------------------------------------------------------- persistence

    def diffusers_config(self) -> dict:
        cfg = self.config.to_diffusers()
        cfg["_yume_tscm"] = self.tscm_config.model_dump(mode="json")
        return cfg

    def save_pretrained(self, directory: str | Path, max_shard_bytes: int | None = None) -> Path:
        """config.json (diffusers keys + ``_yume_tscm``) and safetensors weights, sharded above
        ``max_shard_bytes`` with a diffusers-style index."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / CONFIG_NAME).write_text(json.dumps(self.diffusers_config(), indent=2))
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        if max_shard_bytes is None or sum(v.numel() * v.element_size() for v in state.values()) <= max_shard_bytes:
            save_file(state, str(d / WEIGHTS_NAME), metadata={"format": "pt"})
            return d
        shards, cur, size = [], {}, 0
        for k, v in state.items():
            nbytes = v.numel() * v.element_size()
            if cur and size + nbytes > max_shard_bytes:
                shards.append(cur)
                cur, size = {}, 0
            cur[k] = v
            size += nbytes
        shards.append(cur)
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"diffusion_pytorch_model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(d / name), metadata={"format": "pt"})
            weight_map.update({k: name for k in shard})
        index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in state.values())},
                 "weight_map": weight_map}
        (d / WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2))
        return d

    @classmethod
    def from_pretrained(cls, directory: str | Path, tscm: TSCMConfig | None = None,
                        dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> "WanDiT":
        """Load a diffusers-format transformer directory (ours or Wan2.2's). TSCM settings: ``tscm``, else
        the checkpoint's ``_yume_tscm``, else the defaults; TSCM parameters the checkpoint lacks are
        initialised as the paper says. Any other missing or unexpected key is an error."""
        d = Path(directory)
        if not (d / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{d / CONFIG_NAME} not found (expected a diffusers-format transformer dir)")
        raw = json.loads((d / CONFIG_NAME).read_text())
        if tscm is None:
            tscm = TSCMConfig(**raw["_yume_tscm"]) if "_yume_tscm" in raw else TSCMConfig()
        with torch.device("meta"):
            model = cls(WanDiTConfig.from_diffusers(raw), tscm)
        state = load_safetensors_dir(d, device=device)
        state = {k: v for k, v in state.items() if not any(ign in k for ign in IGNORED_CHECKPOINT_KEYS)}
        expected = set(model.state_dict())
        # TSCM weights this configuration does not use (e.g. a TSCM checkpoint loaded as the full-context
        # baseline) are dropped; anything else unexpected means a different architecture.
        state = {k: v for k, v in state.items() if k in expected or not is_tscm_param(k)}
        unexpected = sorted(set(state) - expected)
        if unexpected:
            raise ValueError(f"{d}: unexpected keys in checkpoint: {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        missing = sorted(expected - set(state))
        base_missing = [k for k in missing if not is_tscm_param(k)]
        if base_missing:
            raise ValueError(f"{d}: checkpoint lacks base weights: {base_missing[:8]}")
        for k, v in state.items():
            ref = model.state_dict()[k]
            if tuple(v.shape) != tuple(ref.shape):
                raise ValueError(f"{d}: {k} has shape {tuple(v.shape)}, the config implies {tuple(ref.shape)}")
        target_dtype = dtype or next(iter(state.values())).dtype
        state = {k: v.to(target_dtype) for k, v in state.items()}
        model.load_state_dict(state, strict=False, assign=True)
        _materialize_meta(model, device, target_dtype)
        model.init_tscm_params(only=missing)
        return model.to(device)

    # --------------------------------------------------------------------------------- reporting

    def parameter_counts(self) -> dict[str, int]:
        base = sum(p.numel() for n, p in self.named_parameters() if not is_tscm_param(n))
        tscm = sum(p.numel() for n, p in self.named_parameters() if is_tscm_param(n))
        return {"total": base + tscm, "base": base, "tscm": tscm}


def _materialize_meta(model: nn.Module, device, dtype: torch.dtype) -> None:
    """Give every parameter still on the meta device real (uninitialised) storage."""
    for mod in model.modules():
        for name, p in list(mod.named_parameters(recurse=False)):
            if p.is_meta:
                setattr(mod, name, nn.Parameter(torch.empty(p.shape, dtype=dtype, device=device),
                                                requires_grad=p.requires_grad))


def load_safetensors_dir(directory: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of a diffusers weights dir: the index's shards, or the single/only safetensors file."""
    from safetensors.torch import load_file

    d = Path(directory)
    indexes = sorted(d.glob("*.safetensors.index.json"))
    if indexes:
        weight_map = json.loads(indexes[0].read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
    elif (d / WEIGHTS_NAME).is_file():
        files = [WEIGHTS_NAME]
    else:
        files = sorted(p.name for p in d.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {d}")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(str(d / name), device=str(device)))
    return state
