"""Yume-Bench-style evaluation of world-model candidates, the HTML report and the promotion rule.

Benchmark (``distill.evaluate``, ``EvaluateConfig``; REFERENCE.md section 8, scaled to the tiny profile):

- **Held-out worlds**: ``clips`` procedural worlds of seed ``evaluate.seed`` (distinct from the training worlds,
  ``train.eval`` and the distillation starts), rendered at the training resolution and frame rate with one
  (keys, mouse) action per chunk for ``chunks`` (>= 16) chunks. The action script walks a shuffled list of all
  9 x 9 labels, so with clips x chunks >= 81 every key and every mouse label is commanded (the labels as
  rendered are read back: pitch commands that would tilt too far are flipped by the renderer). Worlds with
  an event (``event_probability``) give its text as the **event prompt** of the chunks from its start on.
- **Candidates**: ``foundation_euler20`` (the foundation, ``euler_steps`` Euler steps), ``foundation_renoise4``
  (the foundation with the distilled generator's few-step renoise schedule), ``distilled_4step`` (the
  distilled generator) and ``promoted`` (the currently promoted generator, if any). Same worlds, same seeds.
- **Metrics** per candidate (``metrics.json`` -> ``candidates.<name>``):
  instruction following on the autoregressive rollout from the first frame (the optical-flow IF metric,
  ``yume.tasks.instruction_following``): ``joint_accuracy``, ``key_accuracy``, ``mouse_accuracy``, ``if_score``;
  quality through the scorer interface of the filtering stage (``quality_<dimension>`` and the policy's
  composite ``quality_score``; on tiny the ``lite`` OpenCV scorer, which is NOT VBench: ``quality_is_vbench``
  says which); ``first_chunk_mse`` against the ground-truth render (pixels in [0, 1]); per-chunk latency of a
  batch-1 rollout (median of ``latency_repeats``) and frames per second, ``latency_chunk8_s``,
  ``latency_chunk16_s``, ``latency_ratio_16_over_8``; long-rollout drift: ``segments`` equal segments of the
  rollout, each with joint accuracy, IF and quality (``segments``), ``drift_joint_delta`` (last - first),
  ``drift_quality_delta``, their absolute values, per-dimension drifts.
- **Comparisons** (``metrics.json`` -> ``comparisons``): the acceptance figures (distilled vs the
  20-step and the 4-step foundation, latency ratio, drift) with pass flags.

Promotion: ``promotion_decision`` compares a candidate's metrics with the promoted generator's under the
configured per-metric tolerances (direction + absolute tolerance); ``promote`` copies the generator into
``<workdir>/checkpoints/generators/<digest>`` and records it in ``<workdir>/checkpoints/promoted.json``
(temporary file + rename); ``maybe_promote`` is what the retrain flow calls after ``evaluate``.
"""

from __future__ import annotations

import html
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
STAGE = "evaluate"

CANDIDATE_ORDER = ("foundation_euler20", "foundation_renoise4", "distilled_4step", "promoted")
# Headline metrics: (key, label, higher is better)
HEADLINE = (("joint_accuracy", "joint accuracy", True), ("if_score", "IF score", True),
            ("key_accuracy", "key accuracy", True), ("mouse_accuracy", "mouse accuracy", True),
            ("quality_score", "quality (composite)", True), ("first_chunk_mse", "first-chunk MSE", False),
            ("latency_mean_s", "latency / chunk (s)", False), ("fps", "frames / s", True),
            ("latency_ratio_16_over_8", "latency chunk16 / chunk8", False),
            ("drift_joint_delta", "drift: joint (last - first)", True),
            ("drift_quality_delta", "drift: quality (last - first)", True))


# ------------------------------------------------------------------------------------------ worlds


@dataclass
class BenchWorlds:
    frames: np.ndarray  # [clips, 1 + chunks * L, H, W, 3]
    commanded: list[list[tuple[str, str]]]
    events: list[list[str | None]]
    chunk_len: int
    stride: int


def action_script(clips: int, chunks: int, seed: int) -> list[list[tuple[str, str]]]:
    """Per clip and chunk a (keys, mouse) label: a shuffled cycle through all 9 x 9 labels, so every label
    appears once clips x chunks >= 81."""
    from yume.tasks.action_text import KEY_LABELS, MOUSE_LABELS

    labels = [(k, m) for k in KEY_LABELS for m in MOUSE_LABELS]
    rng = np.random.default_rng([seed, 81])
    seq: list[tuple[str, str]] = []
    while len(seq) < clips * chunks:
        seq += [labels[i] for i in rng.permutation(len(labels))]
    return [seq[i * chunks : (i + 1) * chunks] for i in range(clips)]


def render_bench_worlds(profile, ecfg, chunk_len: int, stride: int) -> BenchWorlds:
    from yume.datasets.procedural import ProceduralWorldConfig, render_action_clip
    from yume.datasets.training_set import trajectory_with

    t = profile.train
    base = profile.world or ProceduralWorldConfig()
    cfg = base.model_copy(update={
        "seed": ecfg.seed, "height": t.height, "width": t.width, "supersample": ecfg.supersample,
        "event_probability": ecfg.event_probability,
        "trajectory": trajectory_with(base.trajectory, {**t.eval.trajectory, "jitter_scale": t.eval.jitter_scale,
                                                        "ramp_frames": t.eval.ramp_frames}),
    })
    frames, commanded, events = [], [], []
    span = chunk_len * stride
    for i, acts in enumerate(action_script(ecfg.clips, ecfg.chunks, ecfg.seed)):
        clip = render_action_clip(i, cfg, acts, span)
        frames.append(clip.frames[::stride])
        commanded.append([(s.keys, s.mouse) for s in clip.trajectory.script])
        ev = clip.world.event
        first = max(0, (ev.start_frame - 1) // span) if ev else ecfg.chunks
        events.append([ev.text if ev and c >= first else None for c in range(ecfg.chunks)])
    return BenchWorlds(np.stack(frames), commanded, events, chunk_len, stride)


# ------------------------------------------------------------------------------------------ scorer


def build_scorer(profile, ecfg):
    """(scorer, policy) through the filtering stage's interface: lite (OpenCV, NOT VBench) or vbench."""
    from yume.tasks.scoring import LITE_POLICY_V1, VBENCH_POLICY_V1

    kind = profile.score_and_filter.scorer if ecfg.scorer == "auto" else ecfg.scorer
    if kind == "lite":
        from yume.tasks.scoring_lite import LiteScorer

        return LiteScorer(), LITE_POLICY_V1
    from yume.tasks.scoring_service import SubprocessScorer

    s = profile.score_and_filter  # its weights too: random-init ones name themselves in the report's quality label
    return (SubprocessScorer(s.vbench_python, "vbench", dimensions=s.vbench_dimensions, weights=s.vbench_weights),
            VBENCH_POLICY_V1)


def quality(scorer, policy, videos: list[np.ndarray]) -> dict[str, float]:
    """Mean raw score per dimension over ``videos`` and the policy's composite of those means."""
    from yume.tasks.scoring import composite_score

    raws = [scorer.score(v) for v in videos]
    dims = sorted(raws[0])
    mean = {d: float(np.mean([r[d] for r in raws])) for d in dims}
    out = {f"quality_{d}": v for d, v in mean.items()}
    out["quality_score"] = float(composite_score(mean, policy))
    return out


# ------------------------------------------------------------------------------------------ candidates


@dataclass
class Candidate:
    name: str
    path: str
    sampler: dict  # SamplerConfig fields
    description: str


def _recorded_schedule(path: str | Path, default):
    """The schedule a generator recorded in its ``yume_model.json`` (``sampler``: schedule, steps, shift and
    guidance), over ``default``; ``default`` when it records none."""
    meta_file = Path(path) / "yume_model.json"
    if not meta_file.is_file():
        return default
    s = json.loads(meta_file.read_text()).get("sampler") or {}
    from yume.models.sampler import resolve_schedule

    return resolve_schedule(s, default)[0]


def candidates(profile, ecfg, foundation: str | Path | None, distilled: str | Path | None,
               promoted: str | Path | None) -> list[Candidate]:
    """The candidates present on disk. The foundation's few-step run uses the distilled generator's schedule
    (recorded in its ``yume_model.json``; the profile's ``distill.timesteps`` / ``shift`` otherwise)."""
    from yume.tasks.distill import distilled_sampler_config

    base = profile.sampler.model_copy(update={"guidance": ecfg.guidance})
    few = distilled_sampler_config(profile, base).model_copy(update={"guidance": ecfg.guidance})
    has_distilled = bool(distilled and Path(distilled).exists())
    if has_distilled:
        few = _recorded_schedule(distilled, few)
    out = []
    if foundation and Path(foundation).exists():
        euler = base.model_copy(update={"schedule": "euler", "steps": ecfg.euler_steps,
                                        "shift": ecfg.euler_shift or profile.sampler.shift})
        out.append(Candidate("foundation_euler20", str(foundation), euler.model_dump(mode="json"),
                             f"foundation, {ecfg.euler_steps} Euler steps (shift {euler.shift})"))
        out.append(Candidate("foundation_renoise4", str(foundation), few.model_dump(mode="json"),
                             f"foundation, {len(few.renoise_timesteps)}-step renoise (shift {few.shift})"))
    if has_distilled:
        out.append(Candidate("distilled_4step", str(distilled), few.model_dump(mode="json"),
                             f"distilled generator, {len(few.renoise_timesteps)}-step renoise (shift {few.shift})"))
    if promoted and Path(promoted).exists():
        cfg = _recorded_schedule(promoted, few)
        out.append(Candidate("promoted", str(promoted), cfg.model_dump(mode="json"),
                             f"currently promoted generator ({cfg.schedule}, shift {cfg.shift})"))
    return out


def timed_rollout(sampler, image: np.ndarray, actions: list[tuple[str, str]], events: list[str | None], seed: int
                  ) -> tuple[np.ndarray, list[float]]:
    """A batch-1 rollout with ``WorldSampler.generate``'s own stream, timing each chunk (text, denoise, decode)."""
    stream = sampler.stream(image[None], seed=seed)
    times, frames = [], [image[None, None]]
    for c in range(len(actions)):
        _sync(sampler.device)
        t0 = time.perf_counter()
        frames.append(stream.step([actions[c]], [events[c]]))
        _sync(sampler.device)
        times.append(time.perf_counter() - t0)
    return np.concatenate(frames, 1)[0], times


def _sync(device) -> None:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize(device)


def _segments(n_chunks: int, segments: int) -> list[range]:
    per = n_chunks // segments
    return [range(s * per, (s + 1) * per) for s in range(segments)]


def evaluate_candidate(cand: Candidate, worlds: BenchWorlds, profile, ecfg, mcfg, estimator, scorer, policy,
                       text_cache_dir: str | Path | None = None) -> tuple[dict, np.ndarray]:
    """All metrics of one candidate (module docstring) and its rollouts [clips, T, H, W, 3]."""
    from yume.models.sampler import WorldSampler
    from yume.models.train_config import SamplerConfig
    from yume.tasks.instruction_following import label_chunks, score_labels

    started = time.perf_counter()
    import torch

    device = ecfg.device if ecfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    sampler = WorldSampler.from_checkpoint(cand.path, SamplerConfig.model_validate(cand.sampler), device=device,
                                           use_recorded=False,
                                           text_cache_dir=text_cache_dir)
    n, C, L = worlds.frames.shape[0], len(worlds.commanded[0]), worlds.chunk_len
    # Rollouts from the first frame, own history, the event prompts per chunk.
    calls0 = sampler.forward_calls
    roll, nonfinite = [], 0
    for b0 in range(0, n, ecfg.batch_size):
        sl = slice(b0, b0 + ecfg.batch_size)
        video, latents = sampler.generate(worlds.commanded[sl], images=worlds.frames[sl, 0], events=worlds.events[sl],
                                          seed=b0, return_latents=True)
        roll.append(video)
        nonfinite += int((~torch.isfinite(latents)).sum())
    roll = np.concatenate(roll)
    forward_per_chunk = (sampler.forward_calls - calls0) / (C * len(range(0, n, ecfg.batch_size)))
    t_roll = time.perf_counter() - started
    labels = [label_chunks(roll[i], L, mcfg, estimator=estimator) for i in range(n)]
    flat = [lab for clip in labels for lab in clip]
    cmd = [a for clip in worlds.commanded for a in clip]
    s = score_labels(flat, cmd)
    out = {"description": cand.description, "path": cand.path, "sampler": cand.sampler,
           "joint_accuracy": s.joint_accuracy, "key_accuracy": s.key_accuracy, "mouse_accuracy": s.mouse_accuracy,
           "if_score": s.if_score, "chunks_scored": s.chunks, "forward_calls_per_chunk": forward_per_chunk,
           "nonfinite_latents": nonfinite}
    out.update(quality(scorer, policy, list(roll)))
    gt01 = worlds.frames[:, 1 : 1 + L].astype(np.float64) / 255
    out["first_chunk_mse"] = float(np.mean((roll[:, 1 : 1 + L].astype(np.float64) / 255 - gt01) ** 2))
    out["rollout_mse"] = float(np.mean((roll[:, 1:].astype(np.float64) - worlds.frames[:, 1:]) ** 2) / 255 ** 2)
    # Long-rollout drift: per segment IF and quality.
    segs = []
    for r in _segments(C, ecfg.segments):
        lab = [labels[i][c] for i in range(n) for c in r]
        com = [worlds.commanded[i][c] for i in range(n) for c in r]
        ss = score_labels(lab, com)
        clips = [roll[i, 1 + r.start * L : 1 + r.stop * L] for i in range(n)]
        segs.append({"chunks": [r.start, r.stop], "joint_accuracy": ss.joint_accuracy, "if_score": ss.if_score,
                     **quality(scorer, policy, clips)})
    out["segments"] = segs
    first, last = segs[0], segs[-1]
    out["drift_joint_delta"] = last["joint_accuracy"] - first["joint_accuracy"]
    out["drift_if_delta"] = last["if_score"] - first["if_score"]
    out["drift_quality_delta"] = last["quality_score"] - first["quality_score"]
    out["drift_joint_abs"], out["drift_quality_abs"] = abs(out["drift_joint_delta"]), abs(out["drift_quality_delta"])
    for k in first:
        if k.startswith("quality_") and k != "quality_score":
            out[f"drift_{k}_delta"] = last[k] - first[k]
    # Latency: batch-1 rollouts (a warm-up first), median per chunk over the repeats.
    timed_rollout(sampler, worlds.frames[0, 0], worlds.commanded[0][:2], worlds.events[0][:2], 99)
    per = np.median([timed_rollout(sampler, worlds.frames[0, 0], worlds.commanded[0], worlds.events[0], 100 + k)[1]
                     for k in range(ecfg.latency_repeats)], axis=0)
    out["latency_per_chunk_s"] = [float(x) for x in per]
    out["latency_mean_s"] = float(np.mean(per))
    out["latency_chunk8_s"] = float(per[7])
    out["latency_chunk16_s"] = float(per[15])
    out["latency_ratio_16_over_8"] = float(per[15] / per[7])
    out["frames_per_chunk"] = int(L)
    out["fps"] = float(L / np.mean(per))
    out["realtime_factor"] = float(out["fps"] / sampler.fps)  # >= 1: faster than the video plays
    out["eval_seconds"] = round(time.perf_counter() - started, 2)
    out["rollout_seconds"] = round(t_roll, 2)
    return out, roll


def compare(results: dict[str, dict]) -> dict:
    """The acceptance figures (absent candidates give no entry)."""
    out: dict = {}
    d, e, f = results.get("distilled_4step"), results.get("foundation_euler20"), results.get("foundation_renoise4")
    if d and e:
        for k in ("joint_accuracy", "if_score"):
            out[f"distilled_minus_euler20_{k}"] = d[k] - e[k]
            out[f"distilled_within_0.05_of_euler20_{k}"] = bool(abs(d[k] - e[k]) <= 0.05)
        out["distilled_minus_euler20_first_chunk_mse"] = d["first_chunk_mse"] - e["first_chunk_mse"]
        out["distilled_over_euler20_first_chunk_mse"] = d["first_chunk_mse"] / max(e["first_chunk_mse"], 1e-12)
        out["distilled_speedup_over_euler20"] = e["latency_mean_s"] / max(d["latency_mean_s"], 1e-12)
    if d and f:
        for k in ("joint_accuracy", "if_score"):
            out[f"distilled_minus_renoise4_{k}"] = d[k] - f[k]
            out[f"distilled_beats_renoise4_{k}"] = bool(d[k] > f[k])
        out["distilled_minus_renoise4_first_chunk_mse"] = d["first_chunk_mse"] - f["first_chunk_mse"]
        out["distilled_beats_renoise4_first_chunk_mse"] = bool(d["first_chunk_mse"] < f["first_chunk_mse"])
    for name, r in results.items():
        out[f"{name}_latency_flat"] = bool(r["latency_ratio_16_over_8"] <= 1.15)
        out[f"{name}_drift_joint_within_0.05"] = bool(r["drift_joint_abs"] <= 0.05)
        out[f"{name}_drift_quality_within_0.05"] = bool(r["drift_quality_abs"] <= 0.05)
    return out


# ------------------------------------------------------------------------------------------ promotion


def promoted_file(profile) -> Path:
    return profile.workdir_path / "checkpoints" / "promoted.json"


def read_promoted(profile) -> dict | None:
    """The promoted generator's record; None when nothing is promoted (or its directory is gone).

    A corrupt record is an error, never "nothing promoted": that would let the next candidate through with no
    comparison. ``promote`` writes it atomically (fsync + rename), so corruption means a disk fault or a hand edit.
    """
    from yume.errors import StateFileError

    p = promoted_file(profile)
    if not p.is_file():
        return None
    try:
        rec = json.loads(p.read_text())
        if not isinstance(rec, dict):
            raise ValueError(f"expected a JSON object, found {type(rec).__name__}")
    except (OSError, ValueError) as e:
        raise StateFileError(
            f"promotion record {p} is unreadable ({e}). The promoted generators are kept under "
            f"{p.parent / 'generators'}: restore the record from a backup, or move it aside to start over with "
            f"nothing promoted (the next evaluate --promote then promotes its candidate without a comparison)."
        ) from None
    return rec if rec.get("path") and Path(rec["path"]).exists() else None


def floor_failures(cand: dict, metrics: dict, floors) -> list[str]:
    """Which absolute floors (``PromotionFloors``) the candidate misses, as readable reasons; [] = clears all.
    ``metrics`` is the evaluation's top level (chance and copy-last are properties of its worlds)."""
    out = []
    chance = metrics.get("chance_joint_accuracy")
    joint = cand.get("joint_accuracy")
    if floors.joint_over_chance is not None and chance is not None:
        if joint is None or not np.isfinite(joint) or joint < floors.joint_over_chance * chance:
            out.append(f"joint accuracy {joint} < {floors.joint_over_chance:g} x chance {chance:.3f}")
    copy = metrics.get("copy_last_first_chunk_mse")
    mse = cand.get("first_chunk_mse")
    if floors.first_chunk_mse_below_copy_last and copy is not None:
        if mse is None or not np.isfinite(mse) or mse >= copy:
            out.append(f"first-chunk MSE {mse} is not below copy-last {copy:.4f}")
    if floors.finite and cand.get("nonfinite_latents", 0):
        out.append(f"{cand['nonfinite_latents']} non-finite latent values in its rollouts")
    return out


def promotion_decision(new: dict, current: dict | None, tolerances: dict) -> dict:
    """Promote iff no metric regresses beyond its tolerance. ``tolerances``: metric -> (max|min, tolerance)."""
    if current is None:
        return {"promote": True, "reason": "no generator promoted yet", "regressions": [], "checked": [],
                "skipped": []}
    regressions, checked, skipped = [], [], []
    for metric, (direction, tol) in tolerances.items():
        a, b = new.get(metric), current.get(metric)
        if a is None or b is None or not np.isfinite(a) or not np.isfinite(b):
            skipped.append(metric)
            continue
        worse = (b - a) if direction == "max" else (a - b)  # > 0: the new one is worse
        checked.append({"metric": metric, "new": a, "current": b, "worse_by": worse, "tolerance": tol})
        if worse > tol + 1e-12:
            regressions.append(metric)
    ok = not regressions
    return {"promote": ok, "reason": "no metric regresses beyond tolerance" if ok else
            f"regressed beyond tolerance: {', '.join(regressions)}", "regressions": regressions, "checked": checked,
            "skipped": skipped}


def _dir_digest(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def _atomic_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        fh.write(json.dumps(obj, indent=1, sort_keys=True))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def promote(profile, generator_dir: str | Path, metrics: dict, decision: dict | None = None) -> dict:
    """Copy the generator to ``checkpoints/generators/<digest>`` (so later runs cannot overwrite it) and record it
    in ``checkpoints/promoted.json`` atomically; the previous record is kept as ``previous``."""
    src = Path(generator_dir)
    digest = _dir_digest(src)
    dst = profile.workdir_path / "checkpoints" / "generators" / digest
    if not dst.exists():
        tmp = dst.with_name(f".{digest}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        tmp.replace(dst)
    prev = read_promoted(profile)
    rec = {"path": str(dst), "digest": digest, "source": str(src), "promoted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool)) or v is None},
           "decision": decision or {}, "previous": {k: prev[k] for k in ("path", "digest", "promoted_at")} if prev else None}
    _atomic_json(promoted_file(profile), rec)
    return rec


def maybe_promote(profile, metrics: dict | str | Path | None = None, candidate: str | None = None) -> dict:
    """Apply the promotion rule to ``evaluate``'s results (``metrics.json`` of this workdir by default): the
    candidate (``promotion.candidate``) is promoted iff no metric regresses beyond tolerance against the
    promoted generator (as measured in the same evaluation when it was a candidate there, else its recorded
    metrics). Returns the decision (and the new record when promoted). What the retrain flow calls."""
    from yume.models.distill_config import evaluate_config

    pcfg = evaluate_config(profile).promotion
    if metrics is None or isinstance(metrics, (str, Path)):
        path = Path(metrics) if metrics else profile.workdir_path / "reports" / STAGE / "metrics.json"
        metrics = json.loads(path.read_text())
    name = candidate or pcfg.candidate
    cands = metrics.get("candidates", {})
    if name not in cands:
        return {"promote": False, "reason": f"candidate {name!r} was not evaluated", "candidate": name}
    if not pcfg.enabled:
        return {"promote": False, "reason": "promotion disabled (distill.evaluate.promotion.enabled)", "candidate": name}
    current_rec = read_promoted(profile)
    current = None
    if current_rec:
        current = cands.get("promoted") if cands.get("promoted", {}).get("path") == current_rec["path"] else \
            current_rec.get("metrics")
        if _dir_digest(Path(cands[name]["path"])) == current_rec.get("digest"):
            return {"promote": False, "reason": "candidate is the promoted generator already", "candidate": name,
                    "promoted": current_rec}
    failures = floor_failures(cands[name], metrics, pcfg.floors)
    if failures:
        return {"promote": False, "reason": "below the promotion floors: " + "; ".join(failures),
                "floor_failures": failures, "candidate": name}
    decision = {**promotion_decision(cands[name], current, pcfg.tolerances), "candidate": name}
    if decision["promote"]:
        decision["record"] = promote(profile, cands[name]["path"], cands[name], dict(decision))
    return decision


# ------------------------------------------------------------------------------------------ report


def frame_strip(rows: list[np.ndarray], chunk_len: int, n_chunks: int, scale: int = 3) -> np.ndarray:
    """One image: per row (a video [T, H, W, 3], frame 0 the start image) the start frame and the last frame of
    each of the first ``n_chunks`` chunks, 2-px gaps, nearest upscaling."""
    import cv2

    out = []
    for v in rows:
        idx = [0] + [min(len(v) - 1, (c + 1) * chunk_len) for c in range(n_chunks)]
        tiles = []
        for i in idx:
            tiles += [v[i], np.full((v.shape[1], 2, 3), 255, np.uint8)]
        out += [np.concatenate(tiles[:-1], 1), np.full((2, sum(t.shape[1] for t in tiles[:-1]), 3), 255, np.uint8)]
    img = np.concatenate(out[:-1], 0)
    return cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)


def write_png(img: np.ndarray, path: Path) -> Path:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return path


def metric_plots(results: dict[str, dict], out_dir: Path, refs: dict[str, list[tuple[str, float]]] | None = None
                 ) -> dict[str, str]:
    """One PNG per headline metric (bars per candidate) with reference lines (``refs``: metric -> [(label,
    value)], e.g. chance and the metric's ceiling on accuracy, copy-last on MSE), plus per-segment and
    per-chunk-latency lines."""
    refs = refs or {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(results)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    plots = {}
    for key, label, higher in HEADLINE:
        vals = [results[n].get(key) for n in names]
        if any(v is None for v in vals):
            continue
        fig, ax = plt.subplots(figsize=(5.2, 3.2))
        bars = ax.bar(range(len(names)), vals, color=colours[: len(names)])
        ax.bar_label(bars, fmt="%.3g", fontsize=8)
        # Room above and below zero for the value labels (all-negative drifts put them on the title otherwise).
        ref_vals = [v for _, v in refs.get(key, [])]
        lo, hi = min(0.0, *vals, *ref_vals), max(0.0, *vals, *ref_vals)
        pad = 0.15 * ((hi - lo) or 1.0)
        ax.set_ylim(lo - (pad if lo < 0 else 0.0), hi + pad)
        ax.axhline(0.0, color="black", linewidth=0.6)
        for (ref_label, ref_value), style in zip(refs.get(key, []), ("--", ":")):
            ax.axhline(ref_value, color="dimgray", linestyle=style, linewidth=1.0, label=f"{ref_label} {ref_value:.3g}")
        if refs.get(key):
            ax.legend(fontsize=7, loc="upper right")
        ax.set_xticks(range(len(names)), names, rotation=15, fontsize=8)
        ax.set_title(f"{label} ({'higher' if higher else 'lower'} is better)", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        p = out_dir / f"{key}.png"
        fig.savefig(p, dpi=90)
        plt.close(fig)
        plots[key] = p.name
    for key, label in (("joint_accuracy", "joint accuracy per segment"), ("quality_score", "quality per segment")):
        fig, ax = plt.subplots(figsize=(5.2, 3.2))
        for n in names:
            segs = results[n]["segments"]
            ax.plot(range(1, len(segs) + 1), [s[key] for s in segs], marker="o", label=n)
        ax.set_xlabel("rollout segment")
        ax.set_title(label, fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        p = out_dir / f"segments_{key}.png"
        fig.savefig(p, dpi=90)
        plt.close(fig)
        plots[f"segments_{key}"] = p.name
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    for n in names:
        lat = results[n]["latency_per_chunk_s"]
        ax.plot(range(1, len(lat) + 1), lat, marker=".", label=n)
    ax.set_xlabel("chunk")
    ax.set_ylabel("s")
    ax.set_yscale("log")
    ax.set_title("latency per chunk (batch 1)", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "latency_per_chunk.png", dpi=90)
    plt.close(fig)
    plots["latency_per_chunk"] = "latency_per_chunk.png"
    return plots


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def results_table_rows(results: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    header = ["candidate"] + [label for _, label, _ in HEADLINE]
    rows = [[html.escape(n)] + [_fmt(r.get(k, "")) for k, _, _ in HEADLINE] for n, r in results.items()]
    return header, rows


def markdown_report(metrics: dict) -> str:
    header, rows = results_table_rows(metrics["candidates"])
    lines = [f"# Evaluation ({metrics['quality_scorer']['label']})", "", verdict(metrics), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "## Comparisons", ""] + [f"- `{k}`: {_fmt(v)}" for k, v in metrics["comparisons"].items()]
    p = metrics.get("promotion")
    if p:
        lines += ["", f"## Promotion: {'promoted' if p.get('promote') else 'not promoted'} ({p.get('reason')})"]
    return "\n".join(lines)


def verdict(metrics: dict) -> str:
    """One line: does the proposed candidate follow the controls, and by how much."""
    from yume.models.distill_config import PromotionFloors

    cands = metrics["candidates"]
    name = (metrics.get("promotion") or {}).get("candidate") or next(
        (n for n in ("distilled_4step", "foundation_euler20") if n in cands), next(iter(cands)))
    r = cands[name]
    chance, ceiling = metrics.get("chance_joint_accuracy"), metrics.get("metric_ceiling_joint_accuracy")
    joint = r.get("joint_accuracy", float("nan"))
    ratio = joint / chance if chance else float("nan")
    follows = not floor_failures(r, metrics, PromotionFloors(first_chunk_mse_below_copy_last=False, finite=False))
    return (f"{name} {'follows' if follows else 'does not follow'} the controls: joint accuracy {joint:.3f}, "
            f"{ratio:.1f}x chance ({chance:.3f}); the metric reads the ground truth at {ceiling:.3f}; first-chunk "
            f"MSE {r.get('first_chunk_mse', float('nan')):.4f} vs copy-last "
            f"{metrics.get('copy_last_first_chunk_mse', float('nan')):.4f}.")


def write_html(metrics: dict, plots: dict[str, str], strips: dict[str, str], out: Path) -> Path:
    header, rows = results_table_rows(metrics["candidates"])
    table = "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>" + "".join(
        "<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows) + "</table>"
    comp = "".join(f"<li><code>{html.escape(k)}</code>: {_fmt(v)}</li>" for k, v in metrics["comparisons"].items())
    desc = "".join(f"<li><b>{html.escape(n)}</b>: {html.escape(r['description'])}</li>"
                   for n, r in metrics["candidates"].items())
    imgs = "".join(f'<figure><img src="plots/{html.escape(f)}" alt="{html.escape(k)}"></figure>'
                   for k, f in plots.items())
    strip_html = "".join(f'<figure><figcaption>{html.escape(k)}</figcaption><img src="strips/{html.escape(f)}" '
                         f'alt="{html.escape(k)}"></figure>' for k, f in strips.items())
    p = metrics.get("promotion") or {}
    promo = (f"<p><b>Promotion</b>: {'promoted' if p.get('promote') else 'not promoted'} — "
             f"{html.escape(str(p.get('reason', 'not evaluated')))}</p>") if p else ""
    play = metrics.get("play")
    play_html = (f"<h2>Play it</h2><p>Explore {html.escape(play['what'])} live with W/A/S/D and the mouse: run "
                 f"<code>{html.escape(play['command'])}</code>, then open <a href=\"{html.escape(play['url'])}\">"
                 f"{html.escape(play['url'])}</a>.</p>") if play else ""
    w = metrics["worlds"]
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Yume evaluation</title>
<style>body{{font-family:sans-serif;margin:16px;max-width:1400px}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #bbb;padding:3px 6px;text-align:right}} th{{background:#eee}} td:first-child{{text-align:left}}
figure{{display:inline-block;margin:4px}} img{{border:1px solid #ddd}} figcaption{{font-size:12px}}</style></head>
<body><h1>Yume-Bench-style evaluation</h1>
<p class="verdict"><b>{html.escape(verdict(metrics))}</b></p>
<p>{w['clips']} held-out procedural worlds (seed {w['seed']}), {w['chunks']} chunks of {w['chunk_frames']} frames each,
every key and mouse label commanded ({w['key_labels']} keys, {w['mouse_labels']} mouse labels); event prompts on
{w['clips_with_events']} worlds. Quality: <b>{html.escape(metrics['quality_scorer']['label'])}</b>.</p>
<ul>{desc}</ul>
<h2>Results</h2>{table}{promo}{play_html}
<h2>Comparisons</h2><ul>{comp}</ul>
<h2>Plots</h2>{imgs}
<h2>Samples</h2><p>Each strip: the first worlds' ground truth (upper rows), then the candidate's rollouts of the
same worlds in the same order (lower rows); start frame, then the last frame of each chunk.</p>{strip_html}
</body></html>"""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page)
    tmp.replace(out)
    return out


# ------------------------------------------------------------------------------------------ stage


def run_evaluation(profile, foundation: str | Path | None, distilled: str | Path | None, report_dir: Path,
                   promoted: str | Path | None = None) -> dict:
    """Render the worlds, evaluate every candidate, write plots, strips, the HTML report; returns metrics."""
    from yume.datasets.training_set import frame_stride
    from yume.models.codecs import build_codec
    from yume.models.config import ModelConfig
    from yume.models.distill_config import evaluate_config
    from yume.tasks.foundation_eval import copy_last_first_chunk_mse, metric_config
    from yume.tasks.instruction_following import FlowMotionEstimator

    started = time.perf_counter()
    ecfg = evaluate_config(profile)
    cands = candidates(profile, ecfg, foundation, distilled, promoted if ecfg.include_promoted else None)
    if not cands:
        raise ValueError("no candidate to evaluate: train_foundation / distill first")
    meta = json.loads((Path(cands[0].path) / "yume_model.json").read_text())
    mcfg_model = ModelConfig.model_validate(meta["model_config"])
    chunk = meta.get("train_config", {}).get("chunk_frames") or mcfg_model.chunk_frames
    L = chunk * build_codec(mcfg_model.codec).temporal_factor
    stride = frame_stride(profile.world.fps if profile.world else 30, profile.train.fps)
    worlds = render_bench_worlds(profile, ecfg, L, stride)
    mcfg = metric_config(profile, ecfg.metric)
    est = FlowMotionEstimator(mcfg)
    scorer, policy = build_scorer(profile, ecfg)
    results, rolls = {}, {}
    for c in cands:
        log.info("evaluating %s (%s)", c.name, c.description)
        results[c.name], rolls[c.name] = evaluate_candidate(c, worlds, profile, ecfg, mcfg, est, scorer, policy,
                                                            profile.workdir_path / "cache" / "text")
    from yume.tasks.instruction_following import chance_joint_accuracy, label_chunks, score_labels

    gt_labels = [lab for i in range(len(worlds.frames)) for lab in label_chunks(worlds.frames[i], L, mcfg, estimator=est)]
    cmd = [a for clip in worlds.commanded for a in clip]
    ceiling, chance = score_labels(gt_labels, cmd).joint_accuracy, chance_joint_accuracy(cmd)
    copy_mse = copy_last_first_chunk_mse(worlds.frames, L)
    refs = {"joint_accuracy": [("chance", chance), ("metric ceiling", ceiling)],
            "first_chunk_mse": [("copy-last", copy_mse)]}
    plots = metric_plots(results, report_dir / "plots", refs)
    strips = {}
    k = min(2, len(worlds.frames))
    for name, roll in rolls.items():
        img = frame_strip([worlds.frames[i] for i in range(k)] + [roll[i] for i in range(k)], L,
                          min(ecfg.strip_chunks, len(worlds.commanded[0])))
        strips[name] = write_png(img, report_dir / "strips" / f"{name}.png").name
    metrics = {
        "stage": STAGE, "candidates": results, "comparisons": compare(results),
        "quality_scorer": {"name": scorer.name, "is_vbench": bool(scorer.is_vbench), "policy": policy.tag,
                           "label": f"{scorer.name} scorer, policy {policy.tag}" + ("" if scorer.is_vbench else
                                                                                    " (NOT VBench)")},
        "worlds": {"clips": len(worlds.frames), "chunks": len(worlds.commanded[0]), "chunk_frames": L,
                   "frame_stride": stride, "seed": ecfg.seed, "segments": ecfg.segments,
                   "key_labels": len({k for clip in worlds.commanded for k, _ in clip}),
                   "mouse_labels": len({m for clip in worlds.commanded for _, m in clip}),
                   "clips_with_events": sum(any(e) for e in worlds.events)},
        "metric_ceiling_joint_accuracy": ceiling, "chance_joint_accuracy": chance,
        "copy_last_first_chunk_mse": copy_mse,
        "eval_seconds": round(time.perf_counter() - started, 2),
    }
    metrics["_plots"], metrics["_strips"] = plots, strips
    return metrics
