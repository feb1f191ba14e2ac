"""TSCM: compressing the history of a world model so a chunk's cost stops growing with history length.

Two mechanisms (Yume-1.5, REFERENCE.md section 4):

1. **Temporal-spatial** (``plan_history`` + ``TSCMEmbedder.embed_history``): older history latent frames are
   patchified with coarser kernels. The schedule is data, a list of ``(frames, kernel)`` tiers, newest
   first; the first history frame (the I2V image) stays fine; frames older than every tier are either
   pooled in time into a fixed number of slots or dropped, so the token count is bounded for any history
   length. Every coarse token gets the RoPE position of the centre of the region it covers, measured in
   the fine (1,2,2) token grid, so coarse and fine tokens share one coordinate system.
2. **Channel branch** (``TSCMEmbedder.embed_channel`` + ``ChannelBranch``): the history patchified at
   (8,4,4) into a few channels (``z_linear``); in chosen blocks, after cross-attention, the prediction
   tokens are projected down to that width, concatenated (token axis) with ``z_linear``, mixed by ReLU
   linear attention (RMS-normed q/k, RoPE in the numerator only, normed output) and projected back up by a
   zero-initialised layer, added as a residual. Zero init makes the branch an identity on pretrained weights.

Positions are (t, h, w) floats in fine-grid units: t counts history latent frames from the oldest (0), the
prediction chunk continues after the history; h, w count fine (1,2,2) tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ChannelBranchConfig, Kernel, TSCMConfig

# --------------------------------------------------------------------------------------------- RoPE


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Wan's split of a head's channels over (t, h, w): h = w = 2*(d//6), t gets the rest (44/42/42 at 128)."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of the rotation angles for (t, h, w) positions [N, 3] -> two [N, head_dim // 2] float32 tensors.

    Angles are computed in float64 from the positions themselves (not looked up in a table), so
    fractional centre positions and arbitrarily long histories work; for integer positions this equals
    diffusers' precomputed table exactly.
    """
    positions = positions.to(torch.float64)
    angles = []
    for axis, dim in enumerate(rope_axis_dims(head_dim)):
        inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device) / dim))
        angles.append(positions[:, axis : axis + 1] * inv_freq[None])
    angle = torch.cat(angles, dim=1)
    return angle.cos().float(), angle.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs of x [B, N, heads, D] by per-token angles ([N, D/2] cos/sin)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2).type_as(x)


# ---------------------------------------------------------------------------------- tier assignment


@dataclass(frozen=True)
class HistoryGroup:
    """History frames patchified with one kernel. Each source is a tuple of frame indices (oldest = 0)
    averaged into one frame: a single index normally, several for a pooled overflow slot."""

    kernel: Kernel
    sources: tuple[tuple[int, ...], ...]

    def positions_t(self) -> list[float]:
        return [sum(s) / len(s) for s in self.sources]


def _sample_every(indices: list[int], every: int, generator: torch.Generator | None, random: bool) -> list[int]:
    """Keep 1 in ``every`` indices counting back from the newest (random phase when training)."""
    if every <= 1 or not indices:
        return indices
    phase = int(torch.randint(0, every, (1,), generator=generator)) if random else 0
    return indices[::-1][phase::every][::-1]


def plan_history(
    num_frames: int,
    cfg: TSCMConfig,
    fine_kernel: Kernel = (1, 2, 2),
    generator: torch.Generator | None = None,
) -> list[HistoryGroup]:
    """Assign ``num_frames`` history latent frames to kernels; groups are returned oldest first.

    Order of decisions: the first frame is set aside (fine) if ``first_frame_fine``; the rest is thinned
    1-in-N; tiers take frames from the newest backwards; what is left is the overflow (pooled or dropped).
    With TSCM disabled every frame is fine (the full-context baseline).
    """
    if num_frames <= 0:
        return []
    if not cfg.enabled:
        return [HistoryGroup(fine_kernel, tuple((i,) for i in range(num_frames)))]
    rest = list(range(num_frames))
    first = rest.pop(0) if cfg.first_frame_fine else None
    rest = _sample_every(rest, cfg.temporal_sample_every, generator, cfg.temporal_sample_random)

    newest_first: list[HistoryGroup] = []
    end = len(rest)
    for count, kernel in cfg.tiers:
        if end == 0:
            break
        take = rest[max(0, end - count) : end]
        end -= len(take)
        newest_first.append(HistoryGroup(tuple(kernel), tuple((i,) for i in take)))
    overflow = rest[:end]
    if overflow and cfg.overflow == "pool":
        slots = min(cfg.overflow_slots, len(overflow))
        chunks = [tuple(int(i) for i in c) for c in torch.tensor(overflow).tensor_split(slots)]
        newest_first.append(HistoryGroup(tuple(cfg.tiers[-1][1]), tuple(chunks)))
    if first is not None:
        newest_first.append(HistoryGroup(tuple(fine_kernel), ((first,),)))
    return newest_first[::-1]


def history_time_positions(groups: list[HistoryGroup], mode: str = "compressed") -> list[list[float]]:
    """Time positions of each group's sources (groups oldest first). ``absolute``: frame indices (a pooled slot
    at the mean of its frames). ``compressed``: slots numbered 0, 1, ... in plan order, so the newest tier frames
    keep their spacing and everything older than the tiers (first frame, pooled overflow) sits just before
    them; the number of slots, and so every position, is bounded by the tiers whatever the history's length."""
    if mode == "absolute":
        return [g.positions_t() for g in groups]
    out, rank = [], 0
    for g in groups:
        out.append([float(rank + i) for i in range(len(g.sources))])
        rank += len(g.sources)
    return out


def next_time_position(num_frames: int, cfg: TSCMConfig, fine_kernel: Kernel = (1, 2, 2)) -> int:
    """Time position of the first generated frame after ``num_frames`` history frames: ``num_frames``
    (absolute), or the number of slots of the history's plan (compressed; bounded by the tiers)."""
    if num_frames <= 0 or not cfg.enabled or cfg.time_positions == "absolute":
        return max(num_frames, 0)
    if cfg.temporal_sample_every > 1 and cfg.temporal_sample_random:
        raise ValueError("compressed time positions need a deterministic plan: temporal_sample_random with "
                         "temporal_sample_every > 1 is not supported")
    return sum(len(g.sources) for g in plan_history(num_frames, cfg, fine_kernel))


def tokens_per_frame(kernel: Kernel, height: int, width: int) -> int:
    """Tokens one latent frame of (height, width) gives at ``kernel`` (grids padded up to a multiple)."""
    return math.ceil(height / kernel[1]) * math.ceil(width / kernel[2])


def history_token_count(groups: list[HistoryGroup], height: int, width: int) -> int:
    return sum(len(g.sources) * tokens_per_frame(g.kernel, height, width) for g in groups)


def channel_token_count(num_frames: int, height: int, width: int, cfg: ChannelBranchConfig) -> int:
    """Tokens of z_linear for ``num_frames`` history frames (after the ``max_frames`` window)."""
    if num_frames <= 0:
        return 0
    n = min(num_frames, cfg.max_frames or num_frames)
    kt, kh, kw = cfg.patch
    return math.ceil(n / kt) * math.ceil(height / kh) * math.ceil(width / kw)


# ------------------------------------------------------------------------------ patchify + positions


def kernel_key(kernel: Kernel) -> str:
    """Module-name-safe key of a kernel ("1_4_4")."""
    return "_".join(str(k) for k in kernel)


def interpolate_patch_weight(fine: torch.Tensor, kernel: Kernel, mode: str = "nearest") -> torch.Tensor:
    """A coarse patch-embedding weight [out, in, *kernel] from the fine one [out, in, *fine_kernel].

    Interpolated to the coarse size, then multiplied by fine/coarse kernel volume: a coarse kernel sums
    (coarse/fine) times as many inputs, so without the rescale its tokens would be that much louder than
    the fine tokens the pretrained blocks expect. With nearest interpolation the coarse patchify of a
    nearest-upsampled frame equals the fine patchify of the original exactly.
    """
    fine_vol = math.prod(fine.shape[2:])
    w = F.interpolate(fine.float(), size=tuple(kernel), mode=mode,
                      **({"align_corners": False} if mode == "trilinear" else {}))
    return (w * (fine_vol / math.prod(kernel))).to(fine.dtype)


def _pad_to_multiple(x: torch.Tensor, kernel: Kernel, mode: str, front_time: bool = False) -> torch.Tensor:
    """Pad [B, C, T, H, W] so each of T, H, W is a multiple of the kernel: bottom/right in space; in time at
    the end, or at the front (``front_time``, oldest side) so the newest frames form complete groups."""
    pt = (-x.shape[2]) % kernel[0]
    ph = (-x.shape[3]) % kernel[1]
    pw = (-x.shape[4]) % kernel[2]
    if not (pt or ph or pw):
        return x
    pad = (0, pw, 0, ph, pt, 0) if front_time else (0, pw, 0, ph, 0, pt)
    if mode == "replicate":
        return F.pad(x, pad, mode="replicate")
    return F.pad(x, pad)


def grid_positions(t: torch.Tensor | list[float], kernel: Kernel, height: int, width: int,
                   fine_kernel: Kernel, where: str = "centre") -> torch.Tensor:
    """(t, h, w) positions [len(t) * h' * w', 3] of the tokens of a kernel grid, in fine-token units.

    A token covering latent rows [a*kh, (a+1)*kh) spans fine tokens [a*kh/ph, (a+1)*kh/ph); its centre is
    (a + 0.5) * kh/ph - 0.5 (equal to a for the fine kernel itself); the public code uses a*kh/ph.
    """
    t = torch.as_tensor(t, dtype=torch.float64)
    axes = []
    for size, k, f in ((height, kernel[1], fine_kernel[1]), (width, kernel[2], fine_kernel[2])):
        a = torch.arange(math.ceil(size / k), dtype=torch.float64)
        axes.append((a + 0.5) * (k / f) - 0.5 if where == "centre" else a * (k / f))
    grid = torch.meshgrid(t, axes[0], axes[1], indexing="ij")
    return torch.stack([g.flatten() for g in grid], dim=1)


def patchify(x: torch.Tensor, conv: nn.Conv3d, pad_mode: str = "zero") -> torch.Tensor:
    """[B, C, T, H, W] -> tokens [B, T'*H'*W', dim]: the conv with stride = kernel, written as one matmul
    over non-overlapping patches (several times faster than Conv3d on CPU for large kernels).

    Grids the kernel does not divide are padded. With zero padding, an axis shorter than the kernel (one
    token) is handled by cropping the kernel instead, which is exact and skips multiplying the zeros.
    """
    weight, kernel = conv.weight, tuple(conv.kernel_size)
    if pad_mode == "zero":
        crop = tuple(min(k, n) for k, n in zip(kernel, x.shape[2:]))
        if crop != kernel:
            weight, kernel = weight[:, :, : crop[0], : crop[1], : crop[2]], crop
    x = _pad_to_multiple(x, kernel, pad_mode)
    b, c, t, h, w = x.shape
    kt, kh, kw = kernel
    patches = x.reshape(b, c, t // kt, kt, h // kh, kh, w // kw, kw).permute(0, 2, 4, 6, 1, 3, 5, 7)
    patches = patches.reshape(b, (t // kt) * (h // kh) * (w // kw), c * kt * kh * kw)
    return F.linear(patches, weight.reshape(weight.shape[0], -1), conv.bias)


def _gather_sources(history: torch.Tensor, group: HistoryGroup) -> torch.Tensor:
    """The group's frames [B, C, n, H, W]; pooled sources are averaged over their frames."""
    if all(len(s) == 1 for s in group.sources):
        idx = torch.tensor([s[0] for s in group.sources], device=history.device)
        return history.index_select(2, idx)
    return torch.stack([history[:, :, list(s)].mean(dim=2) for s in group.sources], dim=2)


# ------------------------------------------------------------------------------------------ modules


class LinearAttentionBranch(nn.Module):
    """One block's channel branch: FC down -> concat with z_linear -> ReLU linear attention -> norm -> FC up.

    Only prediction tokens need outputs, so queries come from them alone; keys and values come from the
    concatenation [prediction tokens; z_linear] (the fusion's concat axis is the token axis). RoPE rotates
    q and k in the numerator only; the normaliser uses the un-rotated features, which keeps it positive.
    """

    def __init__(self, dim: int, cfg: ChannelBranchConfig):
        super().__init__()
        c = cfg.channels
        self.heads = cfg.heads
        self.eps = cfg.eps
        self.fc_down = nn.Linear(dim, c)
        self.to_q = nn.Linear(c, c)
        self.to_k = nn.Linear(c, c)
        self.to_v = nn.Linear(c, c)
        self.norm_q = nn.RMSNorm(c, eps=cfg.eps)
        self.norm_k = nn.RMSNorm(c, eps=cfg.eps)
        self.norm_out = nn.RMSNorm(c, eps=cfg.eps)
        self.fc_up = nn.Linear(c, dim)
        self.zero_init()

    def zero_init(self) -> None:
        """Zero the up-projection: the branch then adds nothing, so pretrained behaviour is kept at start."""
        if not self.fc_up.weight.is_meta:
            nn.init.zeros_(self.fc_up.weight)
            nn.init.zeros_(self.fc_up.bias)

    def forward(self, x_pred: torch.Tensor, z: torch.Tensor, rope_pred, rope_all) -> torch.Tensor:
        """x_pred [B, Lp, dim], z [B, Lz, c]; rope_* = (cos, sin) for the prediction / all tokens."""
        h = self.fc_down(x_pred)
        seq = torch.cat([h, z.to(h.dtype)], dim=1)
        q = F.relu(self.norm_q(self.to_q(h)).unflatten(-1, (self.heads, -1)))  # [B, Lp, H, d]
        k = F.relu(self.norm_k(self.to_k(seq)).unflatten(-1, (self.heads, -1)))  # [B, L, H, d]
        v = self.to_v(seq).unflatten(-1, (self.heads, -1))
        q_rot, k_rot = apply_rope(q, *rope_pred), apply_rope(k, *rope_all)
        q, k, v, q_rot, k_rot = (t.float() for t in (q, k, v, q_rot, k_rot))
        kv = torch.einsum("blhd,blhe->bhde", k_rot, v)  # sum_j rot(k_j) v_j^T
        num = torch.einsum("bnhd,bhde->bnhe", q_rot, kv)
        den = torch.einsum("bnhd,bhd->bnh", q, k.sum(dim=1)).unsqueeze(-1)
        out = (num / (den + self.eps)).flatten(2).to(x_pred.dtype)
        return self.fc_up(self.norm_out(out))


class TSCMEmbedder(nn.Module):
    """The history's token embeddings: coarse patch embeddings per tier kernel (the fine one is the DiT's own
    ``patch_embedding``) and the channel branch's (8,4,4) embedding to ``z_linear``."""

    def __init__(self, in_channels: int, dim: int, fine_kernel: Kernel, cfg: TSCMConfig):
        super().__init__()
        self.cfg = cfg
        self.fine_kernel = tuple(fine_kernel)
        kernels = sorted({tuple(k) for k in cfg.kernels} - {self.fine_kernel})
        self.patch_embeddings = nn.ModuleDict(
            {kernel_key(k): nn.Conv3d(in_channels, dim, kernel_size=k, stride=k) for k in kernels})
        self.channel_embedding = None
        if cfg.channel.enabled:
            p = cfg.channel.patch
            self.channel_embedding = nn.Conv3d(in_channels, cfg.channel.channels, kernel_size=p, stride=p)

    @torch.no_grad()
    def init_from_fine(self, fine: nn.Conv3d, only: set[str] | None = None) -> None:
        """Coarse patch weights interpolated from the fine ones and rescaled; bias copied (paper's init)."""
        if fine.weight.is_meta:
            return
        for key, conv in self.patch_embeddings.items():
            if only is not None and f"patch_embeddings.{key}.weight" not in only:
                continue
            w = interpolate_patch_weight(fine.weight, tuple(conv.kernel_size), self.cfg.weight_interpolation)
            conv.weight.copy_(w)
            conv.bias.copy_(fine.bias)

    def conv_for(self, kernel: Kernel, fine: nn.Conv3d) -> nn.Conv3d:
        return fine if tuple(kernel) == self.fine_kernel else self.patch_embeddings[kernel_key(kernel)]

    def embed_history(self, history: torch.Tensor, fine: nn.Conv3d, generator: torch.Generator | None = None,
                      ) -> tuple[torch.Tensor, torch.Tensor, list[HistoryGroup]]:
        """History [B, C, T, H, W] -> tokens [B, N, dim], positions [N, 3], and the plan used."""
        _, _, t, h, w = history.shape
        groups = plan_history(t, self.cfg, self.fine_kernel, generator)
        times = history_time_positions(groups, self.cfg.time_positions)
        tokens, positions = [], []
        for g, g_times in zip(groups, times):
            frames = _gather_sources(history, g)
            tokens.append(patchify(frames, self.conv_for(g.kernel, fine), self.cfg.pad_mode))
            positions.append(grid_positions(g_times, g.kernel, h, w, self.fine_kernel, self.cfg.rope_position))
        if not tokens:
            empty = history.new_zeros(history.shape[0], 0, fine.out_channels)
            return empty, torch.zeros(0, 3, dtype=torch.float64), groups
        return torch.cat(tokens, dim=1), torch.cat(positions, dim=0), groups

    def embed_channel(self, history: torch.Tensor, time_shift: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """History -> z_linear tokens [B, Lz, c] and their centre positions [Lz, 3] (the newest
        ``max_frames`` frames; time padded at the oldest side so the newest frames group completely). Time
        positions are frame indices minus ``time_shift`` (``next_time_position``: the compressed timeline)."""
        ccfg = self.cfg.channel
        t_total = history.shape[2]
        start = max(0, t_total - (ccfg.max_frames or t_total))
        x = history[:, :, start:]
        kt, kh, kw = ccfg.patch
        pad_t = (-x.shape[2]) % kt
        x = _pad_to_multiple(x, ccfg.patch, self.cfg.pad_mode, front_time=True)
        z = patchify(x, self.channel_embedding, self.cfg.pad_mode)
        n_t = x.shape[2] // kt
        t_centres = [start - pad_t + g * kt + (kt - 1) / 2 - time_shift for g in range(n_t)]
        pos = grid_positions(t_centres, ccfg.patch, history.shape[3], history.shape[4], self.fine_kernel, "centre")
        return z, pos
