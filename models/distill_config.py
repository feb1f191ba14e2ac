"""Distillation and evaluation configuration as validated data (torch-free, so profiles load fast).

Profile section ``distill`` (``DistillConfig``): the ``distill`` stage (Self-Forcing DMD with TSCM, REFERENCE.md
section 6) and, nested as ``distill.evaluate`` (``EvaluateConfig``), the ``evaluate`` stage (Yume-Bench-style
benchmark, REFERENCE.md section 8) with its promotion tolerances. Defaults are REFERENCE section 6's; the
few-step list and its shift, the rollout length, the start source and the update ratio are configurable.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .train_config import RayTrainConfig


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DistillStartsConfig(StrictModel):
    """Where the rollouts start: first frames (and their conditioning), no video beyond them (REFERENCE 6)."""

    source: Literal["procedural", "cache"] = Field(
        "procedural", description="procedural: first frames of freshly rendered procedural worlds (seed below, "
        "distinct from training and evaluation); cache: history windows of the training set's latent cache "
        "(build_training_set) with their rows' event captions")
    count: int = Field(64, ge=1, description="start histories prepared once per run")
    seed: int = Field(30_000, ge=0, description="procedural worlds' seed (training 0/1000, train.eval 20000, "
                      "evaluate 40000)")
    supersample: int = Field(1, ge=1, le=4)
    event_p: float = Field(0.5, ge=0, le=1, description="probability that a chunk's text carries the start's event "
                           "caption (when it has one); the action text is always there")


class PromotionFloors(StrictModel):
    """Absolute floors a candidate must clear before it is compared with anything: a broken first run of the
    weekly retrain (nothing promoted yet) is never promoted."""

    joint_over_chance: float | None = Field(3.0, ge=0, description="joint accuracy >= this x the evaluation's "
                                            "chance_joint_accuracy (None: no floor)")
    first_chunk_mse_below_copy_last: bool = Field(True, description="first-chunk MSE < copy_last_first_chunk_mse")
    finite: bool = Field(True, description="no NaN / inf in the generated latents")


class PromotionConfig(StrictModel):
    """A new generator is promoted only if it clears the floors and no metric regresses beyond its tolerance
    against the promoted one."""

    enabled: bool = True
    floors: PromotionFloors = PromotionFloors()
    # metric -> (direction, tolerance): "max" = higher is better, "min" = lower is better; tolerance absolute.
    tolerances: dict[str, tuple[Literal["max", "min"], float]] = Field(
        default_factory=lambda: {
            "joint_accuracy": ("max", 0.05),
            "if_score": ("max", 0.05),
            "quality_score": ("max", 0.05),
            "first_chunk_mse": ("min", 0.005),
            "latency_ratio_16_over_8": ("min", 0.15),
            "drift_joint_abs": ("min", 0.05),
            "drift_quality_abs": ("min", 0.05),
        },
        description="metric -> [direction, absolute tolerance]; a metric missing from either side is skipped "
        "(and listed)")
    candidate: str = Field("distilled_4step", description="the evaluate candidate the flow proposes for promotion")


class EvaluateConfig(StrictModel):
    """Yume-Bench-style evaluation (REFERENCE section 8) on held-out procedural worlds."""

    stage_version: str = "1"
    clips: int = Field(8, ge=1, description="held-out worlds (start images); clips x chunks >= 81 covers every "
                       "(keys, mouse) label")
    chunks: int = Field(16, ge=16, description="rollout length in chunks (>= 16: the long-rollout drift test)")
    segments: int = Field(4, ge=2, description="rollout segments for drift (first vs last)")
    seed: int = Field(40_000, ge=0, description="world seed, distinct from training (0, 1000), train.eval (20000) "
                      "and distill starts (30000)")
    supersample: int = Field(2, ge=1, le=4)
    event_probability: float = Field(0.75, ge=0, le=1, description="worlds with an event; its text is the event "
                                     "prompt of the chunks from its start frame on")
    euler_steps: int = Field(20, ge=1, description="the foundation's many-step reference")
    euler_shift: float | None = Field(None, gt=0, description="shift of the Euler grid (None: sampler.shift)")
    guidance: float = Field(1.0, ge=0, description="CFG of every candidate (Yume's 4-step inference: none)")
    batch_size: int = Field(8, ge=1)
    device: str = Field("auto", description="where candidates run: auto (cuda if available), cpu, cuda, cuda:N")
    latency_repeats: int = Field(3, ge=1, description="batch-1 rollouts timed per candidate (median per chunk)")
    strip_chunks: int = Field(6, ge=1, description="chunks shown in each report frame strip")
    scorer: Literal["lite", "vbench", "auto"] = Field("auto", description="auto: score_and_filter.scorer")
    include_promoted: bool = Field(True, description="also evaluate the currently promoted generator")
    metric: dict = Field(default_factory=dict, description="IFMetricConfig overrides (as train.eval.metric)")
    promotion: PromotionConfig = PromotionConfig()

    @model_validator(mode="after")
    def _check(self) -> "EvaluateConfig":
        if self.chunks % self.segments:
            raise ValueError(f"chunks ({self.chunks}) must be a multiple of segments ({self.segments})")
        return self


class DistillConfig(StrictModel):
    stage_version: str = "1"
    seed: int = 0
    foundation: str | None = Field(None, description="foundation weights: an exported dir or a training "
                                   ".safetensors (None: <workdir>/checkpoints/foundation/final)")
    # --- few-step generator
    timesteps: list[float] = Field(default_factory=lambda: [1000.0, 750.0, 500.0, 250.0],
                                   description="few-step list before the shift warp (REFERENCE 6)")
    shift: float = Field(5.0, gt=0, description="warp of the few-step list: 5 -> [1000, 937.5, 833.3, 625]; "
                         "yume15: 7 -> [1000, 954.5, 875, 700]")
    chunks: int = Field(3, ge=1, description="chunks per self-rollout (own outputs as TSCM history, detached)")
    batch_size: int = Field(8, ge=1, description="rollouts per worker per iteration")
    # --- DMD
    dmd_t_shift: float | None = Field(None, gt=0, description="shift of the DMD noise level t (None: shift)")
    t_min: float = Field(20.0, ge=0, lt=1000, description="DMD t clamp (of 1000)")
    t_max: float = Field(980.0, gt=0, le=1000)
    real_guidance: float = Field(3.0, ge=0, description="real score CFG: cond + g (cond - uncond)")
    critic_t_shift: float | None = Field(None, gt=0, description="critic flow-matching t shift (None: train.t_shift)")
    # --- optimisation
    critic_per_generator: int = Field(5, ge=1, description="critic updates per generator update (critic every "
                                      "iteration, generator every n-th)")
    lr_generator: float = Field(2e-6, gt=0)
    lr_critic: float = Field(4e-7, gt=0)
    betas: tuple[float, float] = (0.0, 0.999)
    weight_decay: float = Field(0.01, ge=0)
    grad_clip: float | None = Field(10.0, gt=0)
    ema: bool = True
    ema_decay: float = Field(0.99, gt=0, lt=1)
    ema_start_step: int = Field(200, ge=0, description="iteration from which the EMA averages (a copy before)")
    max_steps: int = Field(600, ge=1, description="iterations (paper: 600)")
    max_minutes: float | None = Field(None, gt=0)
    precision: Literal["32-true", "bf16-mixed", "16-mixed", "bf16-true"] = "32-true"
    activation_checkpointing: bool = False
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    torch_threads: int | None = Field(None, ge=1)
    log_every_n_steps: int = Field(10, ge=1)
    checkpoint_every_n_steps: int = Field(100, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    resume: bool = True
    ray: RayTrainConfig = RayTrainConfig()
    starts: DistillStartsConfig = DistillStartsConfig()
    evaluate: EvaluateConfig = EvaluateConfig()

    @field_validator("timesteps")
    @classmethod
    def _desc(cls, v: list[float]) -> list[float]:
        if not v or any(b >= a for a, b in zip(v, v[1:])) or v[0] > 1000 or v[-1] <= 0:
            raise ValueError("timesteps must be strictly decreasing within (0, 1000]")
        return v

    @model_validator(mode="after")
    def _check(self) -> "DistillConfig":
        if self.t_min >= self.t_max:
            raise ValueError("t_min must be below t_max")
        return self


def evaluate_config(profile) -> EvaluateConfig:
    """The evaluate stage's section: a top-level ``evaluate`` if the profile has one, else ``distill.evaluate``."""
    top = getattr(profile, "evaluate", None)
    if isinstance(top, EvaluateConfig):
        return top
    return distill_config(profile).evaluate


def distill_config(profile) -> DistillConfig:
    d = getattr(profile, "distill", None)
    return d if isinstance(d, DistillConfig) else DistillConfig()
