"""Latent codecs behind one interface: pixels [B, 3, T, H, W] in [-1, 1] <-> latents [B, C, F, h, w].

- ``WanVAECodec``: the Wan2.2 VAE (diffusers ``AutoencoderKLWan``; 4x16x16 compression, 48 channels).
  Latents are normalised per channel with the VAE config's ``latents_mean`` / ``latents_std`` so the DiT
  sees unit-scale inputs (as Wan's pipelines do). It takes 4k+1 frames (the first frame alone, then groups
  of 4) and gives k+1 latent frames; other frame counts raise a clear error instead of being silently cut.
- ``PatchCodec``: lossless space-to-depth (p x p pixels -> 3*p*p channels), no temporal compression, exact
  inverse. The tiny profile uses it so a tiny world model learns straight from 32-64 px pixels.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import torch

from .config import CodecConfig

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class LatentCodec(ABC):
    """Encode/decode videos; ``latent_frames``/``pixel_frames`` convert frame counts."""

    latent_channels: int
    temporal_factor: int
    spatial_factor: int

    @abstractmethod
    def encode(self, video: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def latent_frames(self, num_frames: int) -> int: ...

    @abstractmethod
    def pixel_frames(self, num_latent_frames: int) -> int: ...

    def _check_video(self, video: torch.Tensor) -> None:
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"video: expected [B, 3, T, H, W], got {tuple(video.shape)}")
        h, w = video.shape[3:]
        if h % self.spatial_factor or w % self.spatial_factor:
            raise ValueError(f"video: height/width {h}x{w} must be multiples of {self.spatial_factor}")

    def _check_latents(self, z: torch.Tensor) -> None:
        if z.ndim != 5 or z.shape[1] != self.latent_channels:
            raise ValueError(f"latents: expected [B, {self.latent_channels}, F, h, w], got {tuple(z.shape)}")


class PatchCodec(LatentCodec):
    """Space-to-depth: [B, 3, T, H, W] -> [B, 3*p*p, T, H/p, W/p]; channel order (c, py, px)."""

    temporal_factor = 1

    def __init__(self, patch_size: int = 4):
        self.p = patch_size
        self.spatial_factor = patch_size
        self.latent_channels = 3 * patch_size * patch_size

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        self._check_video(video)
        b, c, t, h, w = video.shape
        p = self.p
        x = video.reshape(b, c, t, h // p, p, w // p, p).permute(0, 1, 4, 6, 2, 3, 5)
        return x.reshape(b, c * p * p, t, h // p, w // p)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self._check_latents(latents)
        b, _, t, h, w = latents.shape
        p = self.p
        x = latents.reshape(b, 3, p, p, t, h, w).permute(0, 1, 4, 5, 2, 6, 3)
        return x.reshape(b, 3, t, h * p, w * p)

    def latent_frames(self, num_frames: int) -> int:
        return num_frames

    def pixel_frames(self, num_latent_frames: int) -> int:
        return num_latent_frames


class WanVAECodec(LatentCodec):
    """The Wan2.2 VAE with per-channel latent normalisation ``(z - mean) / std``."""

    def __init__(self, vae):
        self.vae = vae.eval()
        cfg = vae.config
        self.latent_channels = cfg.z_dim
        self.temporal_factor = cfg.scale_factor_temporal
        self.spatial_factor = cfg.scale_factor_spatial
        if len(cfg.latents_mean) != cfg.z_dim or len(cfg.latents_std) != cfg.z_dim:
            raise ValueError(f"VAE config: latents_mean/std need {cfg.z_dim} values")
        self.mean = torch.tensor(cfg.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self.std = torch.tensor(cfg.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)

    @classmethod
    def from_config(cls, cfg: CodecConfig) -> "WanVAECodec":
        if cfg.pretrained_path:
            return cls.from_pretrained(cfg.pretrained_path, dtype=_DTYPES[cfg.dtype])
        if not cfg.tiny_random:
            raise ValueError("codec.pretrained_path is required for the Wan VAE (or set codec.tiny_random)")
        return cls.tiny_random()

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype = torch.float32) -> "WanVAECodec":
        from diffusers import AutoencoderKLWan

        p = Path(path)
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"{p}/config.json not found (expected a local AutoencoderKLWan directory)")
        return cls(AutoencoderKLWan.from_pretrained(str(p), torch_dtype=dtype))

    @classmethod
    def tiny_random(cls, z_dim: int = 48, base_dim: int = 8, seed: int = 0) -> "WanVAECodec":
        """A random-init Wan2.2-style VAE (residual, 2x2 pixel patchify, 16x spatial, 4x temporal)."""
        from diffusers import AutoencoderKLWan

        g = torch.Generator().manual_seed(seed)
        mean = (torch.randn(z_dim, generator=g) * 0.1).tolist()
        std = (torch.rand(z_dim, generator=g) + 0.5).tolist()
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            vae = AutoencoderKLWan(base_dim=base_dim, z_dim=z_dim, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                   temperal_downsample=[False, True, True], latents_mean=mean, latents_std=std,
                                   is_residual=True, in_channels=12, out_channels=12, patch_size=2,
                                   scale_factor_temporal=4, scale_factor_spatial=16)
        finally:
            torch.random.set_rng_state(state)
        return cls(vae)

    def latent_frames(self, num_frames: int) -> int:
        if num_frames < 1 or (num_frames - 1) % self.temporal_factor:
            raise ValueError(f"the Wan VAE takes {self.temporal_factor}k+1 frames (1, 5, 9, ...); got {num_frames}")
        return (num_frames - 1) // self.temporal_factor + 1

    def pixel_frames(self, num_latent_frames: int) -> int:
        return (num_latent_frames - 1) * self.temporal_factor + 1

    @torch.no_grad()
    def encode(self, video: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
               ) -> torch.Tensor:
        """Normalised latents; the posterior's mode unless ``sample``."""
        self._check_video(video)
        self.latent_frames(video.shape[2])
        dtype = next(self.vae.parameters()).dtype
        dist = self.vae.encode(video.to(dtype)).latent_dist
        z = dist.sample(generator) if sample else dist.mode()
        return (z.float() - self.mean.to(z.device)) / self.std.to(z.device)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self._check_latents(latents)
        dtype = next(self.vae.parameters()).dtype
        z = latents.float() * self.std.to(latents.device) + self.mean.to(latents.device)
        return self.vae.decode(z.to(dtype)).sample.float()


def build_codec(cfg: CodecConfig) -> LatentCodec:
    """The codec a profile names."""
    if cfg.kind == "patch":
        return PatchCodec(cfg.patch_size)
    return WanVAECodec.from_config(cfg)
