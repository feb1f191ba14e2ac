"""recaption: caption quality gates on planted bad captions, the metadata backend, and the InternVL backend
(tiny random-init InternVL3) with per-item quarantine of decode failures, model errors and OOM."""

import pytest
import torch

from yume.config import CaptionQualityConfig, RecaptionConfig
from yume.datasets.procedural import ProceduralWorldConfig, write_sekai_dataset
from yume.datasets.sekai import read_annotations
from yume.tasks.ray_pool import QuarantineError
from yume.tasks.recaption import (
    CaptionWorker,
    check_caption,
    event_prompt,
    metadata_event_caption,
    sample_frame_indices,
)

Q = CaptionQualityConfig()
GOOD = ("A woman in a red coat crosses the square while pigeons scatter; rain begins to fall and the wet stones "
        "reflect the warm light of the cafe windows.")

PLANTED_BAD = [
    ("", "eos", "caption_empty"),
    ("   \n\n\t ", "length", "caption_empty"),
    ("... --- !!! ???", "eos", "caption_empty"),
    ("The street is wet and the lights are on and people walk past the shops while a bus", "length",
     "caption_truncated"),
    ("rain rain rain rain rain falls on the street", "eos", "caption_degenerate"),
    ("The street is wet. The street is wet. The street is wet. The street is wet. The street is wet.", "eos",
     "caption_degenerate"),
    ("a b c a b c a b c a b c a b c a b c a b c a b c a b c", "length", "caption_degenerate"),
    ("#### 1234 5678 #### %%%% 9999 @@@@ &&&& 0000 **** ^^^^", "eos", "caption_degenerate"),
    ("A quiet street.", "eos", "caption_too_short"),
]


@pytest.mark.parametrize("text, finish, reason", PLANTED_BAD)
def test_planted_bad_captions_are_quarantined(text, finish, reason):
    with pytest.raises(QuarantineError) as err:
        check_caption(text, finish, Q)
    assert err.value.category == reason, str(err.value)


@pytest.mark.parametrize("finish", ["eos", "template", "length"])
def test_good_captions_pass(finish):
    check_caption(GOOD, finish, Q)  # hitting max_new_tokens exactly at a sentence end is not truncation


def test_prompt_and_frame_sampling():
    prompt = event_prompt(4, 70)
    assert "70 words" in prompt and "camera" in prompt and "weather" in prompt and "lighting" in prompt
    assert sample_frame_indices(0, 120, 4) == [15, 45, 75, 105]
    assert sample_frame_indices(10, 12, 4) == [10, 11]  # unique, inside the span
    assert all(33 <= i < 66 for i in sample_frame_indices(33, 66, 8))


SEGMENT = {"start_frame": 100, "end_frame": 200, "scene": "outdoor-urban", "crowdDensity": "empty",
           "weather": "rainy", "timeOfDay": "daytime", "location": "Procedural World 0-1"}
RAIN = {"event": "rain", "event_text": "About 5 seconds in, rain starts to fall: grey streaks cross the view."}


@pytest.mark.parametrize(
    "start, expect, absent",
    [(150, "Then rain starts to fall", "It is raining"),  # during the segment: told as it happens
     (20, "Rain keeps falling", "Then rain"),  # before: the state it left
     (400, "Nothing unusual happens", "rain")],  # after: not yet, and the weather is still clear
)
def test_metadata_caption_places_the_event_relative_to_the_segment(start, expect, absent):
    text = metadata_event_caption({**SEGMENT, "event": {**RAIN, "event_start_frame": start}})
    assert expect in text and absent not in text
    assert "camera" not in text.lower() and "seconds in" not in text
    assert 25 <= len(text.split()) <= 100
    check_caption(text, "template", Q)


def test_metadata_caption_without_event_table_uses_annotations_only():
    text = metadata_event_caption({**SEGMENT, "crowdDensity": "crowded", "weather": "snowy", "timeOfDay": "dusk",
                                   "event": None})
    assert "crowded" in text and "Snow is falling" in text and "dusk" in text
    check_caption(text, "template", Q)


@pytest.fixture(scope="module")
def segments(tmp_path_factory):
    root = tmp_path_factory.mktemp("recaption") / "sekai"
    write_sekai_dataset(root, ProceduralWorldConfig(n_clips=3, frames_per_clip=48, height=32, width=32, seed=2))
    items = []
    for i, clip in enumerate(read_annotations(root)):
        items.append({"id": f"seg{i}", "video_path": str(root / clip.video_file), "start_frame": 0, "end_frame": 48,
                      "frame_indices": sample_frame_indices(0, 48, 3), "scene": clip.scene, "event": None,
                      "crowdDensity": clip.crowdDensity, "weather": clip.weather, "timeOfDay": clip.timeOfDay,
                      "location": clip.location})
    return root, items


def test_internvl_backend_captions_with_tiny_weights(segments, tiny_models):
    _, items = segments
    settings = RecaptionConfig(max_new_tokens=12).model_dump(mode="json")
    worker = CaptionWorker("internvl", settings, str(tiny_models["internvl3"]))
    assert worker.captioner.image_seq_length == 4
    results = worker.caption(items)
    assert len(results) == len(items)
    for r in results:  # a random-init model cannot caption: its output must be caught, whatever it is
        assert r["finish_reason"] in ("eos", "length") and 0 < r["generated_tokens"] <= 12
        assert r["status"] == "ok" or r["error"].split(":")[0] in (
            "caption_empty", "caption_degenerate", "caption_truncated", "caption_too_short")


def test_internvl_decoding_of_planted_generations(tiny_models):
    worker = CaptionWorker("internvl", RecaptionConfig(max_new_tokens=40).model_dump(mode="json"),
                           str(tiny_models["internvl3"]))
    tok, eos, pad = worker.captioner.tokenizer, worker.captioner.tokenizer.eos_token_id, worker.captioner.tokenizer.pad_token_id
    good = tok(GOOD)["input_ids"]
    cut = tok("The street is wet and the lights are on and people walk past the shops while")["input_ids"]
    loop = tok(" rain" * 40)["input_ids"][:40]
    generated = [good + [eos] + [pad] * 3, (cut * 3)[:40], loop, [eos] + [pad] * 5]
    decoded = worker.captioner.decode(generated)
    assert [d["finish_reason"] for d in decoded] == ["eos", "length", "length", "eos"]
    assert decoded[0]["text"] == GOOD and decoded[0]["generated_tokens"] == len(good) + 1
    results = [worker._finish(d["text"], d["generated_tokens"], d["finish_reason"]) for d in decoded]
    assert [r["status"] for r in results] == ["ok", "quarantined", "quarantined", "quarantined"]
    assert [r["error"].split(":")[0] for r in results[1:]] == ["caption_degenerate", "caption_degenerate",
                                                              "caption_empty"]
    truncated = worker._finish(tok.decode(cut), len(cut), "length")
    assert truncated["error"].startswith("caption_truncated")


def test_item_failures_are_quarantined_while_the_rest_goes_on(segments, tiny_models, monkeypatch, tmp_path):
    _, items = segments
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video" * 50)
    items = [dict(it) for it in items] + [{**items[0], "id": "bad-video", "video_path": str(broken)}]
    worker = CaptionWorker("internvl", RecaptionConfig(max_new_tokens=8).model_dump(mode="json"),
                           str(tiny_models["internvl3"]))
    from yume.tasks.recaption import read_segment_frames

    marks = {"model": int(read_segment_frames(items[1]).sum()), "oom": int(read_segment_frames(items[2]).sum())}

    def flaky(frame_sets, question_fn):
        # frames of clip 1 blow up the model, frames of clip 2 run out of memory; batches are split to find them
        sums = [int(f.sum()) for f in frame_sets]
        if marks["model"] in sums:
            raise RuntimeError("NaN in attention logits")
        if marks["oom"] in sums:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return [{"text": GOOD, "generated_tokens": 30, "finish_reason": "eos"} for _ in frame_sets]

    monkeypatch.setattr(worker.captioner, "generate", flaky)
    results = worker.caption(items)
    assert [r["status"] for r in results] == ["ok", "quarantined", "quarantined", "quarantined"]
    assert results[1]["error"].startswith("model_error: RuntimeError: NaN in attention")
    assert results[2]["error"].startswith("oom: ")
    assert results[3]["error"].startswith("decode_failed: ")
    assert results[0]["event_caption"] == GOOD
