"""VBenchScorer: the scorer of record, wrapping vbench 0.1.5's per-dimension functions.

Runs only in the separate `.venv-vbench` environment (`scripts/setup_vbench_env.sh`): vbench pins
transformers==4.33.2 and numpy<2, which must never reach the main environment. Importing this module
is safe anywhere; constructing a `VBenchScorer` without vbench raises `VBenchUnavailable`.

Choices:
- Models are loaded ONCE per instance (meant to live in a long-lived Ray actor). `VBench.evaluate` reloads
  every model per call, so we do not use it: we load the backbones the way vbench's `compute_<dim>`
  functions do and then call vbench's own per-video functions (`subject_consistency`,
  `background_consistency`, `laion_aesthetic`, `technical_quality`, `MotionSmoothness.motion_score`,
  `DynamicDegree.infer`), so the transforms, frame sampling and formulas are vbench's.
- Frames go in losslessly: vbench reads videos from paths, so during `score` we hand each function a
  placeholder `.mp4` path and substitute vbench's frame readers (`load_video` in the four modules that
  use it, `get_frames` of the AMT and RAFT wrappers) with readers returning the given frames. The
  frames the pipeline decodes from a generated mp4 are what vbench would have decoded from it.
- Weights come only from `VBENCH_CACHE_DIR` (default ~/.cache/vbench) and, for DINO, `TORCH_HOME`
  (default ~/.cache/torch); vbench's own loaders would wget/git-clone a missing file, so every path is
  checked first and a missing one raises `VBenchWeightsMissing` listing the expected paths. Nothing is
  ever downloaded.
- No pickle at scoring time. AMT's published checkpoint (amt-s.pth) is a full pickle that torch>=2.6's
  weights-only loader refuses, so it is converted once to ``amt-s.safetensors`` next to it
  (``python scripts/convert_amt_checkpoint.py``, `convert_amt_checkpoint`): the converter tries the weights-only
  loader first and unpickles only with an explicit ``--trust-pickle``. The scorer reads the safetensors file.
- Raw scores are vbench's per-video values: imaging quality stays on MUSIQ's 0-100 scale (the
  `VBENCH_POLICY_V1` divides by 100), aesthetic is the LAION score /10, dynamic degree is 0.0 or 1.0.

- ``weights="random"`` (the tiny demo's ``score_and_filter.vbench_weights: random``; refused on yume15) runs
  vbench's code on `random_vbench_models`, never as a fallback for missing files; the scorer's name, and so
  every manifest row, then says "weights: random, values not meaningful".
- Frames with a shorter side under 64 px are upscaled (bicubic) before scoring: vbench's RAFT cannot run on
  the tiny profile's 32 px frames.

What ran on this machine (tests/test_scoring_vbench.py, in .venv-vbench, on `random_vbench_models`; no real
weights can be fetched here, so no real vbench number was produced):
- background_consistency, aesthetic_quality: vbench's functions on openai-clip's real CLIP architecture
  (`clip.model.CLIP`, reduced width/depth) with random weights, and a random LAION-style linear head.
- imaging_quality: vbench's `technical_quality` on pyiqa's real MUSIQ architecture, random weights.
- motion_smoothness: vbench's `MotionSmoothness.motion_score` on the real AMT-S network built from
  vbench's own AMT-S.yaml, random weights.
- dynamic_degree: vbench's `DynamicDegree.infer` on the real RAFT network, random weights.
- subject_consistency: vbench's `subject_consistency` function ran with a timm ViT stand-in (random
  weights), NOT DINO's code: DINO ViT-B/16 is built by `torch.hub.load` from a clone of
  facebookresearch/dino (`$VBENCH_CACHE_DIR/dino_model/facebookresearch_dino_main`), which cannot be
  fetched here, so the real subject-consistency loader (`load_dino`) cannot run on this machine at all.
None of the real loaders (`load_*`) ran here: they need the weight files listed in `expected_weight_paths`.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import numpy as np

VBENCH_DIMENSIONS = (
    "subject_consistency",
    "background_consistency",
    "motion_smoothness",
    "dynamic_degree",
    "aesthetic_quality",
    "imaging_quality",
)

# Which backbones each dimension needs (keys of the `models` dict).
MODELS_FOR = {
    "subject_consistency": ("dino",),
    "background_consistency": ("clip_b32",),
    "aesthetic_quality": ("clip_l14", "aesthetic_head"),
    "imaging_quality": ("musiq",),
    "motion_smoothness": ("amt",),
    "dynamic_degree": ("raft",),
}

_PLACEHOLDER = "/in-memory/videos/clip.mp4"  # vbench dispatches on the .mp4 suffix; never opened

# Where the backbones come from: "cache" = the real published weights (VBENCH_CACHE_DIR / TORCH_HOME, checked,
# never downloaded); "random" = `random_vbench_models`, random-init backbones that exercise vbench's code on
# machines without the weights. Random-weight scores are labelled so wherever they are recorded.
WEIGHTS = ("cache", "random")
RANDOM_WEIGHTS_LABEL = "weights: random, values not meaningful"
# vbench's RAFT (dynamic degree) needs a shorter side of at least 64 px: at 32 px its 4-level correlation
# pyramid pools a 4x4 feature map to nothing ("Output size is too small").
MIN_SIDE = 64


class VBenchUnavailable(ImportError):
    """vbench (and its torch/torchvision pair) is not importable in this environment."""


class VBenchWeightsMissing(FileNotFoundError):
    """A weight file (or the DINO hub clone) is missing; vbench would try to download it."""


def cache_dir() -> Path:
    return Path(os.environ.get("VBENCH_CACHE_DIR") or Path.home() / ".cache" / "vbench")


def torch_home() -> Path:
    return Path(os.environ.get("TORCH_HOME") or Path.home() / ".cache" / "torch")


def expected_weight_paths(dimensions=VBENCH_DIMENSIONS) -> dict[str, list[Path]]:
    """The files vbench 0.1.5 (local mode) reads for each dimension, under this process's env vars."""
    c, t = cache_dir(), torch_home()
    paths = {
        "subject_consistency": [
            c / "dino_model" / "facebookresearch_dino_main" / "hubconf.py",
            t / "hub" / "checkpoints" / "dino_vitbase16_pretrain.pth",
        ],
        "background_consistency": [c / "clip_model" / "ViT-B-32.pt"],
        "aesthetic_quality": [
            c / "clip_model" / "ViT-L-14.pt",
            c / "aesthetic_model" / "emb_reader" / "sa_0_4_vit_l_14_linear.pth",
        ],
        "imaging_quality": [c / "pyiqa_model" / "musiq_spaq_ckpt-358bb6af.pth"],
        "motion_smoothness": [c / "amt_model" / AMT_SAFETENSORS],
        "dynamic_degree": [c / "raft_model" / "models" / "raft-things.pth"],
    }
    return {d: paths[d] for d in dimensions}


def require_vbench() -> None:
    try:
        import vbench  # noqa: F401
        import vbench.utils  # noqa: F401  (imports decord, torchvision)
    except ImportError as err:
        raise VBenchUnavailable(
            f"vbench 0.1.5 is not importable here ({err}). It lives in its own environment: run "
            "scripts/setup_vbench_env.sh and use .venv-vbench/bin/python (never install it into .venv: "
            "it pins transformers==4.33.2 and numpy<2)."
        ) from err


def check_weights(dimensions=VBENCH_DIMENSIONS) -> None:
    """Raise VBenchWeightsMissing listing every missing file (so nothing triggers a download)."""
    missing = [(d, p) for d, ps in expected_weight_paths(dimensions).items() for p in ps if not p.is_file()]
    if missing:
        lines = "\n".join(f"  {d}: {p}" + (f" (convert {p.with_name(AMT_PTH)} once: python "
                                           f"scripts/convert_amt_checkpoint.py)" if p.name == AMT_SAFETENSORS else "")
                          for d, p in missing)
        raise VBenchWeightsMissing(
            f"VBench weights missing (VBENCH_CACHE_DIR={cache_dir()}, TORCH_HOME={torch_home()}):\n{lines}\n"
            "Copy them there from a machine with internet access; this scorer never downloads."
        )


# --- loaders: real weights, as vbench's compute_<dimension> functions load them -----------------------


def load_dino(device: str):
    import torch

    # dino's hubconf fetches weights with load_state_dict_from_url, which finds them in TORCH_HOME first.
    repo = cache_dir() / "dino_model" / "facebookresearch_dino_main"
    return torch.hub.load(repo_or_dir=str(repo), model="dino_vitb16", source="local").to(device).eval()


def load_clip(file_name: str, device: str):
    import clip

    model, _preprocess = clip.load(str(cache_dir() / "clip_model" / file_name), device=device)
    return model.eval()


def load_aesthetic_head(device: str):
    from vbench.aesthetic_quality import get_aesthetic_model

    return get_aesthetic_model(str(cache_dir() / "aesthetic_model" / "emb_reader")).to(device)


def load_musiq(device: str):
    from pyiqa.archs.musiq_arch import MUSIQ

    model = MUSIQ(pretrained_model_path=str(expected_weight_paths(["imaging_quality"])["imaging_quality"][0]))
    model.training = False  # vbench's switch: MUSIQ preprocesses (multi-scale patches) only when not training
    return model.to(device)


def build_amt_s():
    """vbench's AMT-S network from its own config (random weights)."""
    from omegaconf import OmegaConf
    from vbench.third_party.amt.utils.build_utils import build_from_cfg

    cfg = Path(__import__("vbench").__file__).parent / "third_party" / "amt" / "cfgs" / "AMT-S.yaml"
    return build_from_cfg(OmegaConf.load(cfg).network)


AMT_PTH, AMT_SAFETENSORS = "amt-s.pth", "amt-s.safetensors"


def convert_amt_checkpoint(src: str | Path, dst: str | Path | None = None, trust_pickle: bool = False) -> Path:
    """AMT's ``.pth`` -> its ``state_dict`` as safetensors (``dst`` defaults to ``amt-s.safetensors`` beside it).

    Loads with torch's weights-only unpickler; a checkpoint that needs more (the published one stores
    non-tensor training state) is refused, naming what it holds, unless ``trust_pickle``: then it is unpickled
    once, here, and never again. The source's sha256 is recorded in the output's metadata.
    """
    import pickle

    import torch
    from safetensors.torch import save_file

    from yume.datasets.manifest import file_sha256

    src = Path(src)
    dst = Path(dst) if dst else src.with_name(AMT_SAFETENSORS)
    try:
        ckpt = torch.load(src, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not trust_pickle:
            first = str(e).strip().splitlines()[0]
            raise VBenchWeightsMissing(
                f"{src} is not loadable weights-only ({first}). If it is the AMT-S checkpoint you meant to "
                f"install, convert it with --trust-pickle (it is unpickled once, by this converter)."
            ) from None
        ckpt = torch.load(src, map_location="cpu", weights_only=False)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"{src}: expected a dict of tensors under 'state_dict'")
    tmp = dst.with_name(f".{dst.name}.tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp),
              metadata={"source": src.name, "source_sha256": file_sha256(src)})
    tmp.replace(dst)
    return dst


def load_amt(device: str):
    from safetensors.torch import load_file

    model = build_amt_s()
    ckpt_path = expected_weight_paths(["motion_smoothness"])["motion_smoothness"][0]
    model.load_state_dict(load_file(str(ckpt_path)))  # converted once by convert_amt_checkpoint: no pickle
    return model.to(device).eval()


def build_raft():
    """vbench's RAFT (large), with the args compute_dynamic_degree uses (random weights)."""
    from easydict import EasyDict
    from vbench.third_party.RAFT.core.raft import RAFT

    return RAFT(EasyDict({"small": False, "mixed_precision": False, "alternate_corr": False}))


def load_raft(device: str):
    import torch

    model = build_raft()
    ckpt = torch.load(expected_weight_paths(["dynamic_degree"])["dynamic_degree"][0], map_location="cpu")
    model.load_state_dict({k.replace("module.", ""): v for k, v in ckpt.items()})
    return model.to(device).eval()


def random_vbench_models(dimensions=VBENCH_DIMENSIONS, seed: int = 0) -> dict:
    """Random-init backbones under the keys of `load_vbench_models`: the real architectures where they can be
    built offline, reduced in size where that keeps them fast. Scores from them are NOT VBench values.

    - clip_b32 / clip_l14: openai-clip's `clip.model.CLIP`, width 64 and 2 vision layers (224 px input as
      vbench's); clip_l14 keeps the 768-d embedding the LAION head expects.
    - aesthetic_head: a random 768 -> 1 linear layer, the LAION head's shape.
    - musiq: pyiqa's full MUSIQ architecture; amt: vbench's AMT-S from its own yaml; raft: vbench's RAFT (large).
    - dino: a small timm ViT/16 returning the CLS feature (DINO's code needs a torch.hub clone of its repo).
    """
    import clip.model
    import timm
    import torch
    from pyiqa.archs.musiq_arch import MUSIQ

    require_vbench()
    torch.manual_seed(seed)

    def small_clip(embed_dim, patch):
        return clip.model.CLIP(
            embed_dim=embed_dim, image_resolution=224, vision_layers=2, vision_width=64, vision_patch_size=patch,
            context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1, transformer_layers=1,
        ).eval()

    def musiq():
        model = MUSIQ(pretrained=False)
        model.training = False  # vbench sets this: MUSIQ builds its multi-scale patches only when not training
        return model

    builders = {
        "dino": lambda: timm.create_model(
            "vit_base_patch16_224", pretrained=False, num_classes=0, embed_dim=64, depth=2, num_heads=2,
            dynamic_img_size=True,
        ).eval(),
        "clip_b32": lambda: small_clip(512, 32),
        "clip_l14": lambda: small_clip(768, 14),
        "aesthetic_head": lambda: torch.nn.Linear(768, 1),
        "musiq": musiq,
        "amt": build_amt_s,
        "raft": build_raft,
    }
    needed = {m for d in dimensions for m in MODELS_FOR[d]}
    return {name: build() for name, build in builders.items() if name in needed}  # fixed order: reproducible


def upscale_frames(frames: np.ndarray, min_side: int = MIN_SIDE) -> np.ndarray:
    """Frames whose shorter side is under ``min_side``, resized (bicubic, aspect kept) so that it is ``min_side``;
    others returned unchanged."""
    t, h, w, _ = frames.shape
    if min(h, w) >= min_side:
        return frames
    import cv2

    scale = min_side / min(h, w)
    size = (max(min_side, round(w * scale)), max(min_side, round(h * scale)))  # cv2 wants (width, height)
    return np.stack([cv2.resize(f, size, interpolation=cv2.INTER_CUBIC) for f in frames])


def load_vbench_models(dimensions=VBENCH_DIMENSIONS, device: str = "cpu") -> dict:
    """Real-weight backbones for `dimensions`, after checking every file exists."""
    require_vbench()
    check_weights(dimensions)
    loaders = {
        "dino": lambda: load_dino(device),
        "clip_b32": lambda: load_clip("ViT-B-32.pt", device),
        "clip_l14": lambda: load_clip("ViT-L-14.pt", device),
        "aesthetic_head": lambda: load_aesthetic_head(device),
        "musiq": lambda: load_musiq(device),
        "amt": lambda: load_amt(device),
        "raft": lambda: load_raft(device),
    }
    needed = dict.fromkeys(m for d in dimensions for m in MODELS_FOR[d])
    return {name: loaders[name]() for name in needed}


# --- the scorer -------------------------------------------------------------------------------------


class VBenchScorer:
    """VBench 0.1.5 dimensions for one video at a time; models held for the instance's lifetime.

    `weights`: "cache" loads the real backbones (`load_vbench_models`, missing files raise
    `VBenchWeightsMissing`), "random" builds `random_vbench_models` and puts `RANDOM_WEIGHTS_LABEL` in the
    scorer's name. `models` injects already-built backbones instead (same keys); `weights` must then say
    what they are. `fps` is the clip's frame rate: dynamic degree samples frames at ~8 fps as vbench does
    from the mp4's fps. Frames with a shorter side under `min_side` are upscaled first (`upscale_frames`).
    """

    is_vbench = True

    def __init__(
        self,
        dimensions=VBENCH_DIMENSIONS,
        device: str | None = None,
        fps: float = 16.0,
        models: dict | None = None,
        imaging_quality_preprocessing_mode: str = "longer",  # vbench's default
        weights: str = "cache",
        min_side: int = MIN_SIDE,
    ):
        require_vbench()
        import torch

        unknown = set(dimensions) - set(VBENCH_DIMENSIONS)
        if unknown:
            raise ValueError(f"unsupported VBench dimensions: {sorted(unknown)}")
        if weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {WEIGHTS}, not {weights!r}")
        self.dimensions = tuple(dimensions)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.fps = fps
        self.iq_mode = imaging_quality_preprocessing_mode
        self.weights = weights
        self.min_side = min_side
        self.name = "vbench-0.1.5" + (f" ({RANDOM_WEIGHTS_LABEL})" if weights == "random" else "")
        if models is None:
            models = (random_vbench_models(self.dimensions) if weights == "random"
                      else load_vbench_models(self.dimensions, self.device))
        self.models = models
        missing = [m for d in self.dimensions for m in MODELS_FOR[d] if m not in self.models]
        if missing:
            raise ValueError(f"models dict lacks {missing}")
        self._motion = self._wrap_amt(self.models["amt"]) if "motion_smoothness" in self.dimensions else None
        self._dynamic = self._wrap_raft(self.models["raft"]) if "dynamic_degree" in self.dimensions else None

    def _wrap_amt(self, network):
        """vbench's MotionSmoothness around an already-loaded network (skips its torch.load)."""
        from vbench.motion_smoothness import MotionSmoothness

        wrapper = MotionSmoothness.__new__(MotionSmoothness)
        wrapper.device, wrapper.niters = self.device, 1
        wrapper.initialization()  # sets the interpolation time step and VRAM-based scaling, as vbench does
        wrapper.model = network.to(self.device).eval()
        return wrapper

    def _wrap_raft(self, network):
        from vbench.dynamic_degree import DynamicDegree

        wrapper = DynamicDegree.__new__(DynamicDegree)
        wrapper.device, wrapper.args = self.device, None
        wrapper.model = network.to(self.device).eval()
        return wrapper

    @contextlib.contextmanager
    def _frames_as_video(self, frames: np.ndarray) -> Iterator[str]:
        """Make vbench's readers return `frames` for the placeholder path, then restore them."""
        import torch
        import vbench.aesthetic_quality as aq
        import vbench.background_consistency as bc
        import vbench.imaging_quality as iq
        import vbench.subject_consistency as sc

        # What load_video's mp4 branch returns: torch.Tensor(uint8 array) -> float32 0-255, (T, C, H, W).
        video = torch.Tensor(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)

        def load_video(path, *args, **kwargs):
            if path != _PLACEHOLDER or args or kwargs:
                raise RuntimeError(f"unexpected vbench load_video call: {path!r} {args} {kwargs}")
            return video.clone()

        # DynamicDegree.get_frames: float (1, 3, H, W) frames every round(fps / 8)-th frame.
        interval = max(1, round(self.fps / 8))
        raft_frames = [video[i : i + 1].contiguous().to(self.device) for i in range(0, len(video), interval)]

        modules = (sc, bc, aq, iq)
        saved = [m.load_video for m in modules]
        try:
            for m in modules:
                m.load_video = load_video
            if self._motion is not None:
                self._motion.fp.get_frames = lambda path: [f for f in frames]  # RGB uint8 (H, W, 3)
            if self._dynamic is not None:
                self._dynamic.get_frames = lambda path: raft_frames
            yield _PLACEHOLDER
        finally:
            for m, fn in zip(modules, saved):
                m.load_video = fn
            if self._motion is not None:
                self._motion.fp.__dict__.pop("get_frames", None)
            if self._dynamic is not None:
                self._dynamic.__dict__.pop("get_frames", None)

    def score(self, frames: np.ndarray) -> dict[str, float]:
        """Raw per-dimension VBench values for one clip (uint8 (T, H, W, 3) RGB, T >= 2); frames with a shorter
        side under `min_side` are upscaled to it first."""
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) < 2:
            raise ValueError(f"expected uint8 (T>=2, H, W, 3) RGB frames, got {frames.dtype} {frames.shape}")
        frames = upscale_frames(frames, self.min_side)
        import torch

        out = {}
        with torch.no_grad(), self._frames_as_video(frames) as path:
            for dim in self.dimensions:
                out[dim] = float(self._score_dimension(dim, path))
        return out

    def _score_dimension(self, dim: str, path: str) -> float:
        m, dev = self.models, self.device
        if dim == "subject_consistency":
            from vbench.subject_consistency import subject_consistency

            return subject_consistency(m["dino"], [path], dev, read_frame=False)[1][0]["video_results"]
        if dim == "background_consistency":
            from vbench.background_consistency import background_consistency

            return background_consistency(m["clip_b32"], None, [path], dev, read_frame=False)[1][0]["video_results"]
        if dim == "aesthetic_quality":
            from vbench.aesthetic_quality import laion_aesthetic

            return laion_aesthetic(m["aesthetic_head"], m["clip_l14"], [path], dev)[1][0]["video_results"]
        if dim == "imaging_quality":
            from vbench.imaging_quality import technical_quality

            results = technical_quality(m["musiq"], [path], dev, imaging_quality_preprocessing_mode=self.iq_mode)
            return results[1][0]["video_results"]  # per-video MUSIQ score, 0-100
        if dim == "motion_smoothness":
            from vbench.motion_smoothness import motion_smoothness

            return motion_smoothness(self._motion, [path])[1][0]["video_results"]
        if dim == "dynamic_degree":
            from vbench.dynamic_degree import dynamic_degree

            return float(dynamic_degree(self._dynamic, [path])[1][0]["video_results"])
        raise ValueError(dim)
