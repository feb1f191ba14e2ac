"""`yume model info PROFILE`: a model's configuration and parameter counts.

The DiT is built on the ``meta`` device, so even the 5B ``yume15`` model costs no memory. Counts: the DiT
split into base (the diffusers/Wan2.2 keys) and TSCM additions; the text encoder and the codec are counted
from their configs where that is cheap (tiny) and stated as external weights otherwise. Token budgets per
history frame are printed for the profile's latent grid so the effect of each tier is visible.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from .config import OPEN_CHOICES, ModelConfig
from .tscm import channel_token_count, history_token_count, plan_history, tokens_per_frame
from .wan_dit import WanDiT

# Latent grids the profiles generate at: yume15 704x1280 -> 44x80 (Wan2.2 VAE /16); tiny 64 px -> 16x16.
LATENT_GRIDS = {"tiny": (16, 16), "yume15": (44, 80)}


def describe(name: str, config: ModelConfig) -> dict:
    """Config, parameter counts and token budget of one model, as plain data."""
    with torch.device("meta"):
        dit = WanDiT.from_config(config)
    h, w = LATENT_GRIDS.get(name, (16, 16))
    pt, ph, pw = config.dit.patch_size
    chunk_tokens = config.chunk_frames // pt * tokens_per_frame(config.dit.patch_size, h, w)
    budget = {}
    for chunks in (1, 8, 32, 128):
        frames = chunks * config.chunk_frames
        groups = plan_history(frames, config.tscm, config.dit.patch_size)
        budget[f"history_{chunks}_chunks"] = {
            "frames": frames,
            "tokens": history_token_count(groups, h, w),
            "z_linear_tokens": channel_token_count(frames, h, w, config.tscm.channel)
            if config.tscm.enabled and config.tscm.channel.enabled else 0,
            "full_context_tokens": frames * tokens_per_frame(config.dit.patch_size, h, w),
        }
    dumped = config.model_dump(mode="json")
    choices = {}
    for path, what in OPEN_CHOICES.items():
        choices[path] = {"what": what}
        if path.startswith("tscm."):  # a config field; the others are fixed by the code
            node = dumped
            for part in path.split("."):
                node = node[part]
            choices[path]["value"] = node
    return {
        "profile": name,
        "open_choices": choices,
        "config": config.model_dump(mode="json"),
        "parameters": {"dit": dit.parameter_counts()},
        "latent_grid": [h, w],
        "tokens_per_frame": {"x".join(map(str, k)): tokens_per_frame(k, h, w)
                             for k in [config.dit.patch_size, *config.tscm.kernels]},
        "chunk_tokens": chunk_tokens,
        "budget": budget,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="yume model info", description=__doc__.splitlines()[0])
    p.add_argument("profile", help="profile name (tiny, yume15) or a profile .yaml; its `model` section is described")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    from yume.config import load_profile

    return report(load_profile(args.profile), args.json)


def report(profile, as_json: bool = False) -> int:
    """Print the profile's model: its config, the paper's open choices, parameter counts, token budgets."""
    from yume.config import ConfigError

    if profile.model is None:
        raise ConfigError(f"profile {profile.name!r} has no `model` section")
    info = describe(profile.name, profile.model)
    if as_json:
        sys.stdout.write(json.dumps(info) + "\n")
        return 0
    cfg = info["config"]
    print(f"model profile {profile.name!r}")
    for section in ("dit", "tscm", "text", "codec"):
        print(f"[{section}]")
        for k, v in cfg[section].items():
            print(f"  {k}: {json.dumps(v, ensure_ascii=False)}")
    print(f"chunk_frames: {cfg['chunk_frames']}")
    print("choices the paper leaves open:")
    for path, c in info["open_choices"].items():
        value = f" = {json.dumps(c['value'], ensure_ascii=False)}" if "value" in c else ""
        print(f"  {path}{value}  ({c['what']})")
    counts = info["parameters"]["dit"]
    print(f"DiT parameters: {counts['total']:,} (base {counts['base']:,} + TSCM {counts['tscm']:,})")
    h, w = info["latent_grid"]
    print(f"latent grid {h}x{w}: tokens/frame " + ", ".join(f"{k}: {v}" for k, v in info["tokens_per_frame"].items())
          + f"; chunk {info['chunk_tokens']} tokens")
    for key, b in info["budget"].items():
        print(f"  {key}: {b['frames']} frames -> {b['tokens']} TSCM tokens (+{b['z_linear_tokens']} z_linear) "
              f"vs {b['full_context_tokens']} full-context")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
