"""Training, sampling and training-set configuration as validated data (torch-free, so profiles load fast).

Profile sections (``yume/config.py``):

- ``training_set`` (``TrainingSetConfig``): the ``build_training_set`` stage: per-source mixture weights, extra
  procedural worlds rendered at training resolution (tiny), the latent + text-embedding cache.
- ``train`` (``TrainConfig``): the ``train_foundation`` stage: sample shapes (resolution, frame rate, chunk,
  history), rectified flow (REFERENCE.md section 5), modes, conditioning dropout, optimisation, wall-time
  budget, checkpoints, Ray Train scaling, and the held-out instruction-following evaluation (``train.eval``).
- ``sampler`` (``SamplerConfig``): chunked autoregressive generation (REFERENCE.md sections 6-7).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SOURCES = ("real", "synthetic", "events", "procedural")
Source = Literal["real", "synthetic", "events", "procedural"]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ------------------------------------------------------------------------------------- training set


class SourceWeights(StrictModel):
    """How often a source is drawn, per training mode (relative to the other sources of that mode; 0 = never)."""

    i2v: float = Field(1.0, ge=0, description="weight in I2V steps (with history)")
    t2v: float = Field(1.0, ge=0, description="weight in T2V steps (no history)")


class TrainingWorldsConfig(StrictModel):
    """Extra procedural worlds rendered at training resolution (tiny): Sekai-format clips labelled by the same
    camera->action rule as ``curate_real``; source ``procedural`` of the mixture."""

    n_clips: int = Field(96, ge=1)
    seed: int = Field(1000, ge=0, description="distinct from the curated worlds' and the evaluation's seeds")
    height: int = Field(32, ge=16)
    width: int = Field(32, ge=16)
    frames_per_clip: int = Field(240, ge=16)
    supersample: int = Field(2, ge=1, le=4)
    event_probability: float = Field(0.0, ge=0, le=1)
    ramp_frames: int | None = Field(None, ge=1, description="trajectory speed ramps (None: the renderer's default)")
    jitter_scale: float | None = Field(None, ge=0, description="trajectory jitter (None: the renderer's default)")
    trajectory: dict = Field(default_factory=dict, description="other TrajectoryConfig overrides (camera speeds: "
                             "step, yaw_rate_range, pitch_rate_range, ...), validated when the worlds are rendered")
    labels: Literal["rule", "script"] = Field(
        "rule", description="rule: curate_real's camera->action code labels the rendered clips (segments of at "
        "least actions.min_segment_frames); script: the renderer's own commanded script (ground_truth/"
        "clips.parquet, pitch flips applied), a row per script segment, for segments shorter than the rule "
        "allows (e.g. one action per chunk, as the held-out evaluation renders)")


class TrainingSetConfig(StrictModel):
    stage_version: str = "1"
    sources: dict[Source, SourceWeights] = Field(
        default_factory=lambda: {"real": SourceWeights(i2v=0.9, t2v=1.0), "synthetic": SourceWeights(i2v=0.1, t2v=1.0),
                                 "events": SourceWeights(i2v=0.0, t2v=1.0)},
        description="mixture weights per source and mode (REFERENCE section 5: I2V 90% Sekai / 10% synthetic; "
        "T2V Sekai + synthetic + events); a source missing here is not used")
    use_scores: bool = Field(True, description="take score_and_filter's selection when manifests/scores exists; "
                             "otherwise every ok row of each upstream manifest")
    worlds: TrainingWorldsConfig | None = Field(None, description="render extra procedural worlds (source procedural)")
    cache: bool = Field(True, description="latent + text-embedding cache (training does no codec/encoder work)")
    cache_dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    clips_per_shard: int = Field(32, ge=1, description="clips per latent-cache shard (one Prefect task each)")
    aligned_per_row: int = Field(
        4, ge=1, description="temporal codecs (Wan VAE): chunk positions per row whose T2V chunk and still-image "
        "sample are cached as inference encodes them (a chunk on its own; the anchor image repeated then the chunk), "
        "not sliced from the whole clip's latents; k positions, not every one (a 17-frame encode per anchor costs "
        "several times the clip's own encode). Frame-wise codecs (tiny's patch codec) slice exactly: unused")


# ---------------------------------------------------------------------------------------- training


class RayTrainConfig(StrictModel):
    """Ray Train (TorchTrainer + Lightning) scaling; ``enabled: false`` trains in the flow's process."""

    enabled: bool = False
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float | None = Field(None, ge=0, description="None: 1 when use_gpu")
    accelerator_type: str | None = Field(None, description='Ray accelerator type, e.g. "A100" (yume15)')
    strategy: Literal["ddp", "fsdp"] = "ddp"
    backend: Literal["gloo", "nccl"] | None = Field(None, description="None: nccl with GPUs, else gloo")
    storage_path: str | None = Field(None, description="None: <workdir>/ray_results")
    max_failures: int = Field(0, ge=0, description="Ray restarts of the whole run from its last checkpoint")


class EvalConfig(StrictModel):
    """Held-out evaluation after training: procedural worlds rendered with one action per chunk."""

    enabled: bool = True
    clips: int = Field(24, ge=1, description="held-out worlds; chunks per clip x clips >= 288 (the evaluation's figure)")
    chunks: int = Field(12, ge=1, description="chunks per world (the rollout length)")
    seed: int = Field(20_000, ge=0, description="world seed (distinct from training)")
    supersample: int = Field(2, ge=1, le=4)
    jitter_scale: float = Field(0.0, ge=0, description="clean commanded motion for evaluation")
    ramp_frames: int = Field(1, ge=1)
    trajectory: dict = Field(default_factory=dict, description="other TrajectoryConfig overrides (camera speeds); "
                             "keep them equal to training_set.worlds.trajectory")
    batch_size: int = Field(48, ge=1, description="chunks generated together")
    metric: dict = Field(default_factory=dict, description="IFMetricConfig overrides (pair_gap is scaled to the "
                         "frame stride unless given)")


class TrainConfig(StrictModel):
    stage_version: str = "1"
    seed: int = 0
    # --- sample shapes
    height: int = Field(32, ge=16, description="training resolution (frames are centre-cropped to the aspect, resized)")
    width: int = Field(32, ge=16)
    fps: float = Field(16.0, gt=0, description="target frame rate: a source at F fps is read every round(F/fps) frames")
    chunk_frames: int | None = Field(None, ge=1, description="latent frames per generated chunk; None: model.chunk_frames")
    history_frames: tuple[int, int] = Field((1, 8), description="I2V: latent history frames before the chunk (range)")
    long_history_p: float = Field(0.4, ge=0, le=1, description="probability of a long history (REFERENCE section 5)")
    long_history_frames: tuple[int, int] = Field((10, 100), description="range of a long history (latent frames)")
    still_image_p: float = Field(0.4, ge=0, le=1, description="I2V: the chunk's anchor frame tiled as the history")
    still_image_frames: int = Field(5, ge=1, description="latent frames of the tiled image (Wan2.2: 17 frames -> 5)")
    # --- rectified flow
    prediction: Literal["x0", "velocity"] = Field(
        "x0", description="what the network outputs: velocity, or x0 converted to velocity v=(x_t-x0)/max(t,t_min) "
        "(REFERENCE section 10: a velocity head narrower than channels x patch cannot carry the noise)")
    x0_t_min: float = Field(0.1, gt=0, le=1, description="t clamp of the x0 -> velocity conversion")
    t_logit_mean: float = 0.0
    t_logit_std: float = Field(1.0, gt=0)
    t_shift: float = Field(3.0, gt=0, description="t' = s t / (1 + (s-1) t); 3 (Yume 1.0) or 7 (5B)")
    history_noise_p: float = Field(0.2, ge=0, le=1)
    history_noise_log_mean: float = -3.5
    history_noise_log_std: float = Field(0.5, ge=0)
    # --- modes (alternating steps) and conditioning
    i2v_fraction: float = Field(0.5, ge=0, le=1, description="fraction of steps in I2V mode (0.5: even I2V, odd T2V)")
    mode_loss_weight: dict[Literal["i2v", "t2v"], float] = Field(default_factory=lambda: {"i2v": 1.0, "t2v": 1.0})
    uncond_p: float = Field(0.1, ge=0, le=1, description="condition dropout to the empty-text embedding (CFG)")
    action_text: bool = Field(True, description="condition on the action sentence of a labelled row (false: the "
                              "tiny base's pretraining, which sees only captions)")
    drop_event_p: float = Field(0.0, ge=0, le=1, description="drop the event text only (action kept)")
    drop_action_p: float = Field(0.0, ge=0, le=1, description="drop the action text only (event kept)")
    # --- optimisation
    batch_size: int = Field(32, ge=1, description="per worker")
    lr: float = Field(1e-5, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(1e-3, ge=0)
    warmup_steps: int = Field(10, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    max_steps: int = Field(10_000, ge=1)
    max_minutes: float | None = Field(None, gt=0, description="wall-time budget of the fit (None: max_steps only)")
    ema: bool = True
    ema_decay: float = Field(0.999, gt=0, lt=1)
    ema_start_step: int = Field(0, ge=0)
    precision: Literal["32-true", "bf16-mixed", "16-mixed", "bf16-true"] = "32-true"
    activation_checkpointing: bool = False
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    devices: int = Field(1, ge=1, description="devices (processes) of a local, non-Ray fit; Ray: train.ray.num_workers")
    strategy: Literal["auto", "ddp", "fsdp"] = Field("auto", description="Lightning strategy of a local fit")
    progress_every_n_steps: int = Field(50, ge=1, description="a progress line (loss, samples/s, time left) every N steps")
    num_workers: int = Field(0, ge=0, description="DataLoader workers")
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads per process (None: default)")
    log_every_n_steps: int = Field(10, ge=1)
    checkpoint_every_n_steps: int = Field(200, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    resume: bool = Field(True, description="resume from the last checkpoint of the same config and data")
    ray: RayTrainConfig = RayTrainConfig()
    eval: EvalConfig = EvalConfig()

    @field_validator("history_frames", "long_history_frames")
    @classmethod
    def _range(cls, v: tuple[int, int]) -> tuple[int, int]:
        if v[0] < 1 or v[1] < v[0]:
            raise ValueError(f"need 1 <= min <= max, got {v}")
        return v

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.uncond_p + self.drop_event_p + self.drop_action_p > 1:
            raise ValueError("uncond_p + drop_event_p + drop_action_p must be <= 1")
        return self


# ------------------------------------------------------------------------------------ pretrained base


class BaseCurveConfig(StrictModel):
    """The base's learning curve: held-out worlds whose actions last ``segment_chunks`` chunks, scored on the
    chunks whose action continues the one before (the history shows the motion to continue)."""

    clips: int = Field(12, ge=1)
    chunks: int = Field(9, ge=2)
    segment_chunks: int = Field(3, ge=2, description="chunks per action segment")
    seed: int = Field(21_000, ge=0, description="distinct from the training, evaluation and fine-tune worlds")
    steps: int = Field(10, ge=1, description="Euler steps of the sampler")
    every_n_snapshots: int = Field(1, ge=1, description="score every n-th snapshot (and the last)")


class PretrainBaseConfig(StrictModel):
    """``pretrain_base`` (tiny): the small Wan DiT that ``train_foundation`` fine-tunes, trained once the way Wan
    was (a general video model of the procedural worlds with scene captions, T2V and I2V/continuation) and
    shipped with a model card. Runs in its own work directory with the same training code as
    ``train_foundation`` (FoundationModule, the data module, safetensors checkpoints, resume)."""

    stage_version: str = "1"
    workdir: str | None = Field(None, description="None: <workdir>/pretrain_base")
    out: str | None = Field(None, description="where the base is exported (None: model.dit_pretrained_path)")
    worlds: TrainingWorldsConfig = Field(default_factory=TrainingWorldsConfig,
                                         description="the pretraining worlds: action segments several chunks long")
    motion_words_t2v_p: float = Field(1.0, ge=0, le=1, description="rows whose T2V caption states the motion")
    motion_words_i2v_p: float = Field(0.5, ge=0, le=1, description="rows whose I2V caption states the motion (the "
                                      "rest must continue the history's motion)")
    train: dict = Field(default_factory=dict, description="TrainConfig overrides over the profile's `train`")
    snapshot_every_n_steps: int = Field(1000, ge=1, description="EMA weights kept for the learning curve")
    curve: BaseCurveConfig = BaseCurveConfig()


# ---------------------------------------------------------------------------------------- sampling


class SamplerConfig(StrictModel):
    """Chunked autoregressive generation."""

    schedule: Literal["euler", "renoise"] = Field(
        "euler", description="euler: N Euler steps on the shifted grid; renoise: few-step predict-x0-and-renoise "
        "on the shift-warped timesteps (REFERENCE sections 6-7)")
    steps: int = Field(10, ge=1, description="Euler steps (schedule euler)")
    shift: float = Field(3.0, gt=0, description="timestep shift of the sampling grid")
    renoise_timesteps: list[float] = Field(default_factory=lambda: [1000.0, 750.0, 500.0, 250.0],
                                           description="before the shift warp (yume15: shift 7 -> 1000, 954.5, 875, 700)")
    guidance: float = Field(1.0, ge=0, description="classifier-free guidance scale (1: none)")
    max_history_frames: int | None = Field(None, ge=1, description="latent history frames kept (None: all; TSCM "
                                           "bounds the tokens)")
    still_image_frames: int | None = Field(None, ge=1, description="I2V: frames the image is tiled to (None: "
                                           "train.still_image_frames)")
    decode_overlap: int = Field(1, ge=0, description="latent frames of context decoded with each chunk (seams)")
    fps: float | None = Field(None, gt=0, description="mp4 frame rate (None: train.fps)")
    seed: int = 0

    @field_validator("renoise_timesteps")
    @classmethod
    def _desc(cls, v: list[float]) -> list[float]:
        if not v or any(b >= a for a, b in zip(v, v[1:])) or v[0] > 1000 or v[-1] <= 0:
            raise ValueError("renoise_timesteps must be strictly decreasing within (0, 1000]")
        return v
