"""Per-segment work of `recaption`: a few frames of a `real` segment -> an event-focused caption.

The original (Sekai) caption describes the whole scene and stays the T2V text; the event caption added
here is the I2V text: what happens in the world - people, objects, scenery, weather, lighting, activity -
and never the camera's motion (the actions say that). Two backends behind one worker, `CaptionWorker`:

- ``internvl``: InternVL3 through transformers (`InternVLForConditionalGeneration`, HF-format checkpoint
  from a local directory). ``frames_per_segment`` frames, evenly spaced inside the segment, go in as one
  image tile each (448 px for InternVL3, ``crop_to_patches=False``, as InternVL treats video frames), written
  into the prompt as ``Frame1: <img><IMG_CONTEXT>*n</img>`` lines the way `InternVLProcessor` expands video
  frames. We expand the prompt ourselves instead of calling `InternVLProcessor` because the processor's
  constructor requires the torchvision video processor, which the main environment does not have; the
  tokenizer and the (PIL) image processor are the checkpoint's own. Greedy decoding, batched (left padding).
- ``metadata``: the caption is written from the segment's annotation columns (scene, crowd density,
  weather, time of day, location) and, where the data root has one, a per-clip event table (the procedural
  worlds' ``ground_truth/clips.parquet``: event kind, start frame, text), placed relative to the segment:
  an event that starts inside the segment is told as it happens, one that started before as a state, one
  still to come is left out. A random-init InternVL cannot caption, so the `tiny` profile uses this backend.

Every caption, from either backend, passes `check_caption`; failures are quarantined as
``caption_empty``, ``caption_degenerate`` (repeated n-grams, word runs, few distinct words, non-letters),
``caption_truncated`` (hit ``max_new_tokens`` mid-sentence) or ``caption_too_short``. Item failures:
``decode_failed`` (frames unreadable), ``model_error``, ``oom`` (see `yume.tasks.ray_pool`).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from yume.tasks.ray_pool import QuarantineError, failure_result, isolate_failures, torch_device

STAGE = "recaption"
PROMPT_VERSION = "event-v1"
TERMINALS = (".", "!", "?", '"', "'", "”", "’", ")")


def event_prompt(n_frames: int, target_words: int = 70) -> str:
    return (
        f"These {n_frames} frames are sampled in order from a first-person walking video. In about {target_words} "
        "words, describe what is in the world and what happens in it: the people and what they do, the objects, "
        "the scenery, the weather and the lighting, and any event that starts, changes or appears. Describe only "
        "the world itself: do not mention the camera, its movement, the viewer's movement or the frames. Write "
        "one paragraph of plain prose in the present tense."
    )


def sample_frame_indices(start: int, end: int, k: int) -> list[int]:
    """k frame indices evenly spread over [start, end) (centres of k equal parts), unique and sorted."""
    n = max(1, end - start)
    return sorted({start + min(n - 1, int((i + 0.5) * n / k)) for i in range(k)})


# --- caption quality -----------------------------------------------------------------------------------

_WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*", re.UNICODE)


def check_caption(text: str | None, finish_reason: str, quality) -> None:
    """Raise QuarantineError if the caption is empty, degenerate, truncated or too short."""
    stripped = (text or "").strip()
    words = [w.lower() for w in _WORD.findall(stripped)]
    if not words:
        raise QuarantineError("caption_empty", f"no words in {stripped[:60]!r}")
    visible = [c for c in stripped if not c.isspace()]
    alpha = sum(c.isalpha() for c in visible) / len(visible)
    if alpha < quality.min_alpha_fraction:
        raise QuarantineError("caption_degenerate", f"only {alpha:.0%} letters: {stripped[:60]!r}")
    run, longest = 1, 1
    for a, b in zip(words, words[1:]):
        run = run + 1 if a == b else 1
        longest = max(longest, run)
    if longest > quality.max_same_word_run:
        raise QuarantineError("caption_degenerate", f"a word repeated {longest} times in a row: {stripped[:60]!r}")
    n = quality.ngram
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if len(grams) >= 4:
        repeated = 1 - len(set(grams)) / len(grams)
        if repeated > quality.max_repeated_ngram_fraction:
            raise QuarantineError("caption_degenerate", f"{repeated:.0%} of its {n}-grams are repeats: {stripped[:60]!r}")
    if len(words) >= 20 and len(set(words)) / len(words) < quality.min_distinct_word_ratio:
        raise QuarantineError("caption_degenerate", f"{len(set(words))} distinct of {len(words)} words")
    if finish_reason == "length" and not stripped.endswith(TERMINALS):
        raise QuarantineError("caption_truncated", f"hit max_new_tokens mid-sentence: ...{stripped[-40:]!r}")
    if len(words) < quality.min_words:
        raise QuarantineError("caption_too_short", f"{len(words)} words (< {quality.min_words}): {stripped!r}")


# --- metadata backend ----------------------------------------------------------------------------------

SCENERY = {
    "outdoor-urban": "a city street lined with tall buildings and stone, brick and glass pillars",
    "outdoor-natural": "an open natural landscape, with tree trunks and mossy posts across grassy ground",
    "indoor": "an indoor space with walls, floors and furnishings",
    "indoor-public": "a busy indoor public space such as a hall, station or mall",
    "outdoor-rural": "a rural area with fields, lanes and scattered houses",
    "water": "a waterfront with open water beside the path",
}
PEOPLE = {
    "empty": "No people are around and the paths are empty.",
    "sparse": "A few pedestrians walk by at a distance.",
    "low": "A few pedestrians walk by at a distance.",
    "moderate": "A moderate number of people walk along the paths, some chatting, some alone.",
    "medium": "A moderate number of people walk along the paths, some chatting, some alone.",
    "crowded": "The place is crowded, with people walking in every direction.",
    "high": "The place is crowded, with people walking in every direction.",
    "very crowded": "Dense crowds fill the place, shoulder to shoulder.",
}
WEATHER = {
    "sunny": "The weather is clear and sunny",
    "clear": "The weather is clear",
    "cloudy": "The sky is overcast",
    "cloudy/foggy": "The sky is overcast and the air is hazy with fog",
    "foggy": "Fog hangs in the air",
    "rainy": "It is raining",
    "snowy": "Snow is falling",
    "windy": "A strong wind blows",
}
LIGHT = {
    "daytime": "in bright daylight",
    "day": "in bright daylight",
    "night": "at night, with the scene lit only by artificial lights",
    "dawn": "in the soft, low light of dawn",
    "dusk": "in the warm, fading light of dusk",
    "sunset": "in the warm, golden light of sunset",
}
EVENT_STATE = {  # an event that started before the segment, told as the state it left
    "rain": "Rain keeps falling, with grey streaks across the view and dim, cool light.",
    "fog": "Thick fog hangs over everything, hiding the distant pillars and mountains in pale grey.",
    "night_lights": "The windows of the buildings glow warm yellow in the dark.",
    "object_appears": "A bright orange sculpture stands on the ground ahead.",
}
_TIMING = re.compile(r"^\s*about \d+ seconds? in,\s*", re.IGNORECASE)


def _lookup(table: dict, value: str | None, fallback: str) -> str:
    v = (value or "").strip()
    return table.get(v.lower(), fallback.format(v)) if v else ""


def metadata_event_caption(item: dict) -> str:
    """Event caption from annotation columns and, if known, the clip's event relative to the segment."""
    event = item.get("event") or {}
    kind, start = event.get("event"), event.get("event_start_frame")
    seg_start, seg_end = item["start_frame"], item["end_frame"]
    scenery = _lookup(SCENERY, item.get("scene"), "a {} scene")
    location = (item.get("location") or "").strip()
    sentences = []
    if scenery:
        sentences.append(f"The scene is {scenery}" + (f", in {location}." if location else "."))
    people = _lookup(PEOPLE, item.get("crowdDensity"), "The crowd density is {}.")
    if people:
        sentences.append(people)
    not_yet = kind is not None and start is not None and start >= seg_start
    weather = item.get("weather")
    if not_yet and kind in ("rain", "fog"):
        weather = "clear"  # the annotation gives the clip's weather after its event: not so at the start
    weather_s = _lookup(WEATHER, weather, "The weather is {}")
    light = _lookup(LIGHT, item.get("timeOfDay"), "at {}")
    if weather_s or light:
        sentences.append((weather_s + (" " if weather_s else "It is ") + light).strip() + ".")
    if kind and start is not None and seg_start <= start < seg_end:
        core = _TIMING.sub("", event.get("event_text") or "").strip()
        if core:
            sentences.append("Then " + core[0].lower() + core[1:])
    elif kind and start is not None and start < seg_start and kind in EVENT_STATE:
        sentences.append(EVENT_STATE[kind])
    else:
        sentences.append("Nothing unusual happens; the scene stays calm and unchanged.")
    return " ".join(s if s.endswith(TERMINALS) else s + "." for s in sentences)


# --- InternVL backend ----------------------------------------------------------------------------------


class InternVLCaptioner:
    """InternVL3 (HF format) from a local directory; batched greedy captioning of frame sets."""

    def __init__(self, path: str | Path, torch_dtype: str = "float32", device: str = "cpu", max_new_tokens: int = 160):
        import torch
        from transformers import AutoImageProcessor, AutoTokenizer, InternVLForConditionalGeneration

        self.device = device
        self.dtype = getattr(torch, torch_dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.tokenizer.padding_side = "left"
        self.image_processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        self.model = InternVLForConditionalGeneration.from_pretrained(path, dtype=self.dtype, local_files_only=True)
        self.model = self.model.to(device).eval()
        self.image_seq_length = int(self.model.config.image_seq_length)
        self.max_new_tokens = max_new_tokens
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos if eos is not None else self.tokenizer.eos_token_id])

    def prompt(self, n_frames: int, question: str) -> str:
        tok = self.tokenizer
        image = f"{tok.start_image_token}{tok.context_image_token * self.image_seq_length}{tok.end_image_token}"
        frames = "".join(f"Frame{i + 1}: {image}\n" for i in range(n_frames))
        return f"<|im_start|>user\n{frames}{question}<|im_end|>\n<|im_start|>assistant\n"

    def generate(self, frame_sets: list[np.ndarray], question_fn) -> list[dict]:
        """frame_sets: one (K, H, W, 3) uint8 array per item -> [{text, generated_tokens, finish_reason}]."""
        import torch
        from PIL import Image

        texts = [self.prompt(len(f), question_fn(len(f))) for f in frame_sets]
        images = [Image.fromarray(frame) for frames in frame_sets for frame in frames]
        pixels = self.image_processor(images, crop_to_patches=False, return_tensors="pt")["pixel_values"]
        enc = self.tokenizer(texts, padding=True, return_tensors="pt")
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=enc["input_ids"].to(self.device), attention_mask=enc["attention_mask"].to(self.device),
                pixel_values=pixels.to(self.device, self.dtype), max_new_tokens=self.max_new_tokens, do_sample=False,
            )
        return self.decode(out[:, enc["input_ids"].shape[1] :].tolist())

    def decode(self, generated: list[list[int]]) -> list[dict]:
        results = []
        for ids in generated:
            stop = next((i for i, t in enumerate(ids) if t in self.eos_ids), None)
            kept = ids if stop is None else ids[:stop]
            finish = "eos" if stop is not None else ("length" if len(ids) >= self.max_new_tokens else "eos")
            results.append({
                "text": self.tokenizer.decode(kept, skip_special_tokens=True).strip(),
                "generated_tokens": len(kept) + (stop is not None), "finish_reason": finish,
            })
        return results


# --- the actor's worker --------------------------------------------------------------------------------


class CaptionWorker:
    """What one Ray actor holds: the captioner, loaded once. ``caption(items)`` -> one result per item.

    An item: ``{"id", "video_path", "start_frame", "end_frame", "frame_indices", scene..., "event"}``.
    A result: ``{"status", "error", "event_caption", "generated_tokens", "finish_reason", "caption_words"}``.
    """

    def __init__(self, backend: str, settings: dict, model_path: str | None = None, num_gpus: float = 0.0):
        from yume.config import RecaptionConfig

        self.settings = RecaptionConfig.model_validate(settings)
        self.backend = backend
        self.captioner = None
        if backend == "internvl":
            if not model_path:
                raise ValueError("recaption.model: the internvl backend needs a model directory")
            self.captioner = InternVLCaptioner(
                model_path, self.settings.torch_dtype, torch_device(num_gpus), self.settings.max_new_tokens
            )

    def _question(self, n_frames: int) -> str:
        return event_prompt(n_frames, self.settings.target_words)

    def _finish(self, text: str, tokens: int | None, finish: str) -> dict:
        result = {"event_caption": text, "generated_tokens": tokens, "finish_reason": finish,
                  "caption_words": len(_WORD.findall(text or ""))}
        try:
            check_caption(text, finish, self.settings.quality)
        except QuarantineError as e:
            return {**result, "status": "quarantined", "error": str(e)}
        return {**result, "status": "ok", "error": None}

    def caption(self, items: list[dict]) -> list[dict]:
        if self.backend == "metadata":
            return [self._caption_metadata(item) for item in items]
        frames: dict[int, np.ndarray] = {}
        results: dict[int, dict] = {}
        for i, item in enumerate(items):
            try:
                frames[i] = read_segment_frames(item)
            except Exception as exc:  # noqa: BLE001 - decode failures are per item
                results[i] = failure_result(exc)
        order = sorted(frames)

        def batch(positions: list[int]) -> list[dict]:
            generated = self.captioner.generate([frames[p] for p in positions], self._question)
            return [self._finish(g["text"], g["generated_tokens"], g["finish_reason"]) for g in generated]

        for pos, res in zip(order, isolate_failures(order, batch)):
            results[pos] = res
        return [results[i] for i in range(len(items))]

    def _caption_metadata(self, item: dict) -> dict:
        try:
            text = metadata_event_caption(item)
        except Exception as exc:  # noqa: BLE001
            return failure_result(exc)
        return self._finish(text, None, "template")


def read_segment_frames(item: dict) -> np.ndarray:
    from yume.datasets.sekai import read_frames

    frames = read_frames(Path(item["video_path"]), item["frame_indices"])
    if frames.ndim != 4 or frames.shape[0] != len(item["frame_indices"]):
        raise QuarantineError("decode_failed", f"got frames of shape {frames.shape}")
    return frames


def caption_row(upstream: dict, result: dict, backend: str, model_id: str | None, stage_version: str,
                config_hash: str) -> dict:
    """The `captions` manifest row of one `real` segment (same id as the segment)."""
    return {
        "id": upstream["id"], "source_uri": upstream["source_uri"], "content_hash": upstream["content_hash"],
        "stage": STAGE, "stage_version": stage_version, "config_hash": config_hash,
        "status": result["status"], "error": result.get("error"),
        "upstream_id": upstream["id"], "video_uri": upstream["video_uri"], "start_frame": upstream["start_frame"],
        "end_frame": upstream["end_frame"], "frame_indices": upstream["frame_indices"],
        "scene_caption": upstream.get("caption"), "event_caption": result.get("event_caption"),  # kept when quarantined, to inspect
        "caption_words": result.get("caption_words"), "backend": backend, "model_id": model_id,
        "prompt_version": PROMPT_VERSION, "generated_tokens": result.get("generated_tokens"),
        "finish_reason": result.get("finish_reason") or "error",
    }
