"""Profiles: the whole run's configuration as validated data.

A profile is a YAML file: the embedded ones live in ``yume/profiles/`` (``tiny``, the default, and
``yume15``, the paper's settings); any other path works too. Unknown keys and bad values are rejected
with a message naming the key. ``--set a.b=value`` overrides single values (parsed as YAML).

Hashes: ``config_hash`` covers the whole resolved profile except the work directory (so moving a run
does not change it); ``stage_hash`` covers only the sections a stage reads, so a change to training
settings does not invalidate curation. Both go into every manifest row and the run's records.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from yume.datasets.procedural import ProceduralWorldConfig
from yume.models.config import MODEL_CONFIGS, ModelConfig
from yume.tasks.actions import ActionConfig

PROFILE_DIR = Path(__file__).parent / "profiles"


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


class Profile(StrictModel):
    name: str
    workdir: str = Field(description="all of a run lives here; `--workdir` overrides it")
    data: DataConfig = DataConfig()
    world: ProceduralWorldConfig | None = None
    actions: ActionConfig = ActionConfig()
    curate_real: CurateRealConfig = CurateRealConfig()
    prefect: PrefectConfig = PrefectConfig()
    model: ModelConfig | None = Field(
        None, description="the world model; in YAML `preset: tiny|yume15` plus any keys that override it"
    )

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


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def config_hash(profile: Profile) -> str:
    return hashlib.sha256(_canonical(profile.model_dump(mode="json", exclude={"workdir"})).encode()).hexdigest()[:16]


def stage_hash(profile: Profile, *sections: str) -> str:
    """Hash of the named top-level sections only (what one stage's output depends on)."""
    dumped = profile.model_dump(mode="json")
    return hashlib.sha256(_canonical({s: dumped[s] for s in sections}).encode()).hexdigest()[:16]


def _format_error(e: ValidationError, source: str) -> str:
    lines = [f"invalid profile {source}:"]
    for err in e.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        lines.append(f"  {key}: {err['msg']}")
    return "\n".join(lines)


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
        raise ConfigError(_format_error(e, str(path))) from None


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
