"""The Yume-1.5 world model (installed as ``yume.models``).

- ``config``: pydantic configs (``ModelConfig`` = DiT + TSCM + text + codec; ``tiny_model_config``,
  ``yume15_model_config``) with the paper's open choices as documented fields.
- ``wan_dit``: ``WanDiT``, our Wan2.2-TI2V DiT (diffusers-compatible state dict) with TSCM history input.
- ``tscm``: tier plans, coarse patchify, RoPE positions, the channel branch's linear attention.
- ``text``: umT5 encoder, event + action conditioning, the action-embedding cache.
- ``codecs``: ``LatentCodec``, ``WanVAECodec``, ``PatchCodec``.
- ``info`` / ``bench_tscm``: ``yume model info`` and ``yume bench tscm`` (``main(argv) -> int``).

Submodules import torch; import them directly (this package file stays import-free so ``yume --help``
stays fast).
"""
