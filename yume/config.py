"""Profiles: the whole run's configuration as validated data.

A profile is a YAML file: the embedded ones live in ``yume/profiles/`` (``tiny``, the default, and
``yume15``, the paper's settings); any other path works too. Unknown keys and bad values are rejected
with a message naming the key. ``--set a.b=value`` overrides single values (parsed as YAML).

Hashes: ``config_hash`` covers the whole resolved profile except the work directory and the lock settings (so moving a run
or waiting for it does not change it); ``stage_hash`` covers only the sections a stage reads, so a change to training
settings does not invalidate curation. Both go into every manifest row and the run's records.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from yume.datasets.procedural import ProceduralWorldConfig
from yume.models.config import MODEL_CONFIGS, ModelConfig
from yume.models.train_config import PretrainBaseConfig, SamplerConfig, TrainConfig, TrainingSetConfig
from yume.models.distill_config import DistillConfig
from yume.tasks.actions import ActionConfig
from yume.workdir_lock import LockConfig

PROFILE_DIR = Path(__file__).parent / "profiles"
# Profiles whose VBench scores select real training data: score_and_filter.vbench_weights=random is refused there.
REAL_WEIGHTS_ONLY = ("yume15",)


class ConfigError(ValueError):
    """A profile is missing, malformed or invalid; the message names the offending key."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(StrictModel):
    sekai_root: str | None = Field(
        None, description="Sekai-format directory (CSV + videos + cameras); None renders procedural worlds"
    )


class CurateRealConfig(StrictModel):
    stage_version: str = "1"
    shard_size: int = Field(200, ge=1, description="clips per Prefect task / manifest shard")
    frame_count_tolerance: int = Field(
        0, ge=0, description="allowed |video frames - camera poses| before a clip is quarantined"
    )


class PrefectConfig(StrictModel):
    task_retries: int = Field(2, ge=0)
    retry_delay_seconds: float = Field(2.0, ge=0)
    result_storage: str | None = Field(
        None,
        description="where `retrain` persists its per-stage cache records: None = <workdir>/cache/prefect; a local "
        "path; an fsspec URL (s3://bucket/prefix, gs://..., credentials from the environment); or "
        "block:<type>/<name>, a saved Prefect filesystem block",
    )


# --- model-driven curation stages: recaption, synthesize_t2v, synthesize_events, score_and_filter ----


class StageResources(StrictModel):
    """What one Ray actor of a stage's pool declares, and how many of them run (DESIGN: "Execution model")."""

    actors: int = Field(1, ge=1, description="actors in the stage's pool; each loads the model once")
    num_cpus: float = Field(1.0, ge=0, description="CPUs per actor (Ray scheduling)")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor; > 0 runs the model on CUDA")
    accelerator_type: str | None = Field(None, description='Ray accelerator type per actor, e.g. "A100"')
    batch_size: int = Field(4, ge=1, description="items per actor call (batched generation)")
    max_restarts: int = Field(1, ge=0, description="Ray restarts of a lost actor")
    max_task_retries: int = Field(2, ge=0, description="Ray retries of an actor call lost with its actor")


class RayConfig(StrictModel):
    address: str | None = Field(None, description="cluster address; None: $RAY_ADDRESS, else an in-process local Ray")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the local Ray (None: all); ignored on a cluster")
    log_to_driver: bool = Field(False, description="stream actors' stdout/stderr to the driver")


class CaptionQualityConfig(StrictModel):
    min_words: int = Field(8, ge=1, description="fewer words: caption_too_short")
    ngram: int = Field(3, ge=2, description="n of the repeated-n-gram test")
    max_repeated_ngram_fraction: float = Field(0.3, gt=0, le=1, description="above: caption_degenerate")
    max_same_word_run: int = Field(3, ge=2, description="a word repeated more times in a row: caption_degenerate")
    min_distinct_word_ratio: float = Field(0.35, ge=0, le=1, description="distinct/total words (>= 20 words)")
    min_alpha_fraction: float = Field(0.6, ge=0, le=1, description="letters among non-space characters")


class RecaptionConfig(StrictModel):
    stage_version: str = "1"
    shard_size: int = Field(64, ge=1, description="segments per Prefect task / manifest shard")
    backend: Literal["internvl", "metadata"] = Field(
        "metadata", description="internvl: InternVL3 (HF format) from `model`; metadata: from annotations"
    )
    model: str | None = Field(None, description="internvl: local HF-format directory, or tiny:internvl3")
    torch_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    frames_per_segment: int = Field(4, ge=1, le=32, description="frames sampled evenly per segment")
    max_new_tokens: int = Field(160, ge=8, description="a caption that hits this mid-sentence is truncated")
    target_words: int = Field(70, ge=10, description="asked-for caption length")
    events_table: str | None = Field(
        "ground_truth/clips.parquet",
        description="metadata backend: per-clip event table relative to the data root (skipped if absent)",
    )
    quality: CaptionQualityConfig = CaptionQualityConfig()
    resources: StageResources = StageResources()


class WanSamplerConfig(StrictModel):
    height: int = Field(32, ge=16)
    width: int = Field(32, ge=16)
    num_frames: int = Field(17, ge=1, description="4k+1 (Wan's VAE)")
    num_inference_steps: int = Field(2, ge=1)
    guidance_scale: float = Field(1.0, ge=0, description="<= 1: no classifier-free guidance")
    flow_shift: float | None = Field(None, gt=0, description="scheduler shift; None keeps the checkpoint's")
    negative_prompt: str = ""
    max_sequence_length: int = Field(64, ge=8, description="umT5 tokens (Wan: 512)")

    @field_validator("num_frames")
    @classmethod
    def _four_k_plus_one(cls, v: int) -> int:
        if (v - 1) % 4:
            raise ValueError("must be 4k+1 (Wan's VAE compresses time 4x)")
        return v


class SynthesizeT2VConfig(StrictModel):
    stage_version: str = "1"
    shard_size: int = Field(16, ge=1)
    caption_table: str | None = Field(
        None, description="OpenVid-style CSV/Parquet; None writes a small table with planted near-duplicates"
    )
    id_column: str = Field("video", description="the table's unique key column (OpenVid: video)")
    caption_column: str = "caption"
    tiny_table_rows: int = Field(24, ge=4, description="rows of the generated table (caption_table: null)")
    dedup_threshold: float = Field(0.9, gt=0, le=1, description="cosine similarity; >= drops the later caption")
    num_videos: int = Field(6, ge=0, description="N: captions sampled after dedup (seeded)")
    seed: int = Field(0, ge=0, description="sampling seed; per-video seeds derive from it and the caption key")
    model: str = Field("tiny:wan2.1-t2v", description="diffusers Wan T2V directory, or tiny:wan2.1-t2v")
    model_id: str | None = Field(None, description="name recorded in the manifest (default: the directory name)")
    torch_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    sampler: WanSamplerConfig = WanSamplerConfig()
    fps: int = Field(16, ge=1)
    crf: int = Field(18, ge=0, le=51)
    resources: StageResources = StageResources()


EVENT_CATEGORIES = ("urban daily life", "sci-fi", "fantasy", "weather")


class SynthesizeEventsConfig(StrictModel):
    stage_version: str = "1"
    shard_size: int = Field(16, ge=1)
    prompts_table: str | None = Field(
        None, description="CSV (image, category, event): None builds one from the procedural worlds"
    )
    num_items: int = Field(8, ge=1, description="procedural prompts built (prompts_table: null)")
    categories: list[str] = Field(default_factory=lambda: list(EVENT_CATEGORIES))
    model: str = Field("tiny:wan2.2-ti2v", description="diffusers Wan I2V directory, or tiny:wan2.2-ti2v")
    model_id: str | None = None
    torch_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    seed: int = Field(0, ge=0)
    sampler: WanSamplerConfig = WanSamplerConfig(height=64, width=64)
    fps: int = Field(16, ge=1)
    crf: int = Field(18, ge=0, le=51)
    decisions: str | None = Field(
        None, description="reviewers' decisions (CSV/JSON); None: <workdir>/review/events/decisions.csv"
    )
    derive_decisions: bool = Field(
        False, description="write the decisions file from the procedural ground truth when it is missing"
    )
    resources: StageResources = StageResources()

    @field_validator("categories")
    @classmethod
    def _known_categories(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - set(EVENT_CATEGORIES))
        if unknown or not v:
            raise ValueError(f"categories must be a non-empty subset of {list(EVENT_CATEGORIES)}; unknown: {unknown}")
        return v


class SelectRule(StrictModel):
    """Keep the best ``top_k`` or ``top_fraction`` of a source by composite score; neither keeps all."""

    top_k: int | None = Field(None, ge=0)
    top_fraction: float | None = Field(None, ge=0, le=1)

    @model_validator(mode="after")
    def _one(self) -> "SelectRule":
        if self.top_k is not None and self.top_fraction is not None:
            raise ValueError("give top_k or top_fraction, not both")
        return self


class ScoreAndFilterConfig(StrictModel):
    stage_version: str = "1"
    shard_size: int = Field(32, ge=1)
    scorer: Literal["lite", "vbench"] = "lite"
    policy: str = Field("lite@1", description="normalisation policy tag (tasks/scoring.py POLICIES)")
    sources: list[Literal["real", "synthetic", "events"]] = Field(
        default_factory=lambda: ["real", "synthetic", "events"]
    )
    max_frames: int = Field(32, ge=2, description="frames scored per video (evenly spaced)")
    score_fps: float = Field(16.0, gt=0, description="real segments are subsampled towards this frame rate")
    selection: dict[Literal["real", "synthetic", "events"], SelectRule] = Field(default_factory=dict)
    vbench_python: str = Field(".venv-vbench/bin/python", description="interpreter of the vbench environment")
    vbench_dimensions: list[str] | None = Field(None, description="None: all six")
    vbench_weights: Literal["cache", "random"] = Field(
        "cache", description="cache: the real VBench weights from VBENCH_CACHE_DIR (missing files fail the run); random: "
        "random-init backbones, to run vbench's code without the weights (tiny only; every row labelled 'weights: "
        "random, values not meaningful')")
    resources: StageResources = StageResources()

    @model_validator(mode="after")
    def _policy_matches_scorer(self) -> "ScoreAndFilterConfig":
        from yume.tasks.scoring import POLICIES

        if self.policy not in POLICIES:
            raise ValueError(f"policy {self.policy!r} unknown; known: {sorted(POLICIES)}")
        if POLICIES[self.policy].is_vbench != (self.scorer == "vbench"):
            raise ValueError(f"policy {self.policy!r} belongs to another scorer family than {self.scorer!r}")
        return self


class Profile(StrictModel):
    name: str
    workdir: str = Field(description="all of a run lives here; `--workdir` overrides it")
    data: DataConfig = DataConfig()
    world: ProceduralWorldConfig | None = None
    actions: ActionConfig = ActionConfig()
    curate_real: CurateRealConfig = CurateRealConfig()
    prefect: PrefectConfig = PrefectConfig()
    ray: RayConfig = RayConfig()
    recaption: RecaptionConfig = RecaptionConfig()
    synthesize_t2v: SynthesizeT2VConfig = SynthesizeT2VConfig()
    synthesize_events: SynthesizeEventsConfig = SynthesizeEventsConfig()
    score_and_filter: ScoreAndFilterConfig = ScoreAndFilterConfig()
    model: ModelConfig | None = Field(
        None, description="the world model; in YAML `preset: tiny|yume15` plus any keys that override it"
    )
    # Foundation training: build_training_set, train_foundation, generation.
    training_set: TrainingSetConfig = TrainingSetConfig()
    train: TrainConfig = TrainConfig()
    sampler: SamplerConfig = SamplerConfig()
    # The tiny base train_foundation fine-tunes (tiny only; yume15 starts from Wan2.2-TI2V-5B).
    pretrain_base: PretrainBaseConfig | None = None
    # Distillation: the 4-step generator; `distill.evaluate` configures the evaluate stage.
    distill: DistillConfig = DistillConfig()
    # One writer per work directory (yume/workdir_lock.py); run control, so outside the profile's hash.
    lock: LockConfig = LockConfig()
    shared_workdir: bool = Field(
        False, description="cluster profiles: the work directory must be an absolute path on storage every node "
        "mounts (a relative one would land in the worker's checkout, on one node's local disk)")

    @model_validator(mode="after")
    def _random_vbench_weights_not_on_yume15(self) -> "Profile":
        if self.name in REAL_WEIGHTS_ONLY and self.score_and_filter.vbench_weights == "random":
            raise ValueError(f"score_and_filter.vbench_weights: 'random' is refused on profile {self.name!r}: its "
                             "selection must come from the real VBench weights (random-init scores are not meaningful)")
        return self

    @model_validator(mode="after")
    def _shared_workdir_is_absolute(self) -> "Profile":
        if self.shared_workdir and not Path(self.workdir).expanduser().is_absolute():
            raise ValueError(f"workdir: profile {self.name!r} runs on a cluster: give an absolute work directory on "
                             f"storage every node mounts (--workdir /shared/...), not {self.workdir!r}")
        return self

    @property
    def workdir_path(self) -> Path:
        return Path(self.workdir).expanduser().resolve()

    def sekai_root(self) -> Path:
        """The Sekai-format data root: the configured one, or the procedural worlds' directory."""
        if self.data.sekai_root:
            return Path(self.data.sekai_root).expanduser().resolve()
        if self.world is None:
            raise ConfigError("data.sekai_root: required when the profile has no `world` section")
        return self.workdir_path / "data" / "sekai"

    def media_root(self) -> Path:
        """Root of the media the pipeline itself writes (synthetic videos, event images, generated tables)."""
        return self.workdir_path / "data"


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def config_hash(profile: Profile) -> str:
    return hashlib.sha256(_canonical(profile.model_dump(mode="json", exclude={"workdir", "lock"})).encode()).hexdigest()[:16]


def stage_hash(profile: Profile, *sections: str) -> str:
    """Hash of the named top-level sections only (what one stage's output depends on)."""
    dumped = profile.model_dump(mode="json")
    return hashlib.sha256(_canonical({s: dumped[s] for s in sections}).encode()).hexdigest()[:16]


def _override_for(key: str, overrides) -> str | None:
    """The ``--set`` assignment that set ``key`` (or a section above or below it), the last one winning."""
    for assignment in reversed(list(overrides)):
        dotted = assignment.split("=", 1)[0].strip()
        if key == dotted or key.startswith(dotted + ".") or dotted.startswith(key + "."):
            return assignment
    return None


def _format_error(e: ValidationError, source: str, overrides=()) -> str:
    """One line per problem, blaming the ``--set`` argument that caused it when one did, else the profile file."""
    lines = []
    for err in e.errors():
        key, msg = ".".join(str(p) for p in err["loc"]) or "<root>", err["msg"]
        named = re.fullmatch(r"Value error, ([\w.]+): (.*)", msg, re.S) if key == "<root>" else None
        if named:  # a whole-profile check that names the key it refuses
            key, msg = named.groups()
        culprit = _override_for(key, overrides)
        lines.append(f"--set {culprit}: {msg}" if culprit else f"{key} (in {source}): {msg}")
    return "invalid configuration:\n  " + "\n  ".join(lines) if len(lines) > 1 else "invalid configuration: " + lines[0]


def _apply_override(data: dict, assignment: str) -> None:
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like section.key=value")
    dotted, raw = assignment.split("=", 1)
    keys = dotted.strip().split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {k!r} is not a section")
    node[keys[-1]] = yaml.safe_load(raw)


def profile_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ConfigError(f"profile file {p} does not exist")
        return p
    embedded = PROFILE_DIR / f"{name_or_path}.yaml"
    if not embedded.is_file():
        known = sorted(q.stem for q in PROFILE_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown profile {name_or_path!r}; embedded profiles: {known}, or pass a .yaml path")
    return embedded


def load_profile(name_or_path: str = "tiny", workdir: str | Path | None = None, overrides: list[str] = ()) -> Profile:
    """Load, override and validate a profile. ``workdir`` replaces the profile's work directory."""
    path = profile_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"profile {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"profile {path} must be a mapping at the top level")
    for assignment in overrides:
        _apply_override(data, assignment)
    _expand_model_preset(data)
    if workdir is not None:
        data["workdir"] = str(workdir)
    try:
        return Profile.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(e, str(path), overrides)) from None


def _deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _expand_model_preset(data: dict) -> None:
    """``model: {preset: NAME, ...}`` -> the preset's full config with the other keys merged over it."""
    model = data.get("model")
    if not isinstance(model, dict) or "preset" not in model:
        return
    rest = dict(model)
    name = rest.pop("preset")
    if name not in MODEL_CONFIGS:
        raise ConfigError(f"model.preset: unknown model preset {name!r}; known: {sorted(MODEL_CONFIGS)}")
    data["model"] = _deep_merge(MODEL_CONFIGS[name]().model_dump(mode="json"), rest)


def record_config(profile: Profile, directory: Path) -> str:
    """Write the resolved profile and its hash into ``directory``; returns the hash."""
    directory.mkdir(parents=True, exist_ok=True)
    h = config_hash(profile)
    resolved = {"config_hash": h, "profile": profile.model_dump(mode="json")}
    tmp = directory / ".config.resolved.json.tmp"
    tmp.write_text(json.dumps(resolved, indent=1, ensure_ascii=False))
    tmp.replace(directory / "config.resolved.json")
    return h
