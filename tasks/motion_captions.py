"""Plain-language camera-motion words for the tiny base's pretraining captions (``pretrain_base``).

Wan's pretraining captions state camera motion in words ("the camera pans left", "a tracking shot moving
forward"); the tiny base's captions do the same, so the base learns to draw motion that text asks for. These
phrases are deliberately NOT the action vocabulary (``yume.tasks.action_text``): no sentence is shared with
any vocabulary there (a test checks it). Teaching the Yume action sentences is ``train_foundation``'s job.

``motion_phrase(keys, mouse, variant)`` gives one sentence for a (keys, mouse) label; ``variant`` picks among
a few paraphrases, so the base does not see a single fixed wording per motion.
"""

from __future__ import annotations

import hashlib

# Paraphrases of the walker's translation, per key label.
WALK_PHRASES: dict[str, tuple[str, ...]] = {
    "None": ("the walker stands still", "no steps are taken", "the viewpoint stays in place"),
    "W": ("the walker strides straight ahead", "the view travels forward along the ground",
          "a steady walk towards the horizon"),
    "S": ("the walker steps backwards", "the view retreats, walking back", "a slow walk in reverse"),
    "A": ("the walker sidesteps to the left", "the view slides sideways to the left", "a sideways walk leftwards"),
    "D": ("the walker sidesteps to the right", "the view slides sideways to the right",
          "a sideways walk rightwards"),
    "W+A": ("the walker strides ahead while drifting left", "the view travels forward and to the left",
            "a diagonal walk ahead and leftwards"),
    "W+D": ("the walker strides ahead while drifting right", "the view travels forward and to the right",
            "a diagonal walk ahead and rightwards"),
    "S+A": ("the walker steps back while drifting left", "the view retreats backwards and to the left",
            "a diagonal walk back and leftwards"),
    "S+D": ("the walker steps back while drifting right", "the view retreats backwards and to the right",
            "a diagonal walk back and rightwards"),
}

# Paraphrases of the view's rotation, per mouse label.
LOOK_PHRASES: dict[str, tuple[str, ...]] = {
    "·": ("the gaze holds steady", "the head does not turn", "eyes stay fixed ahead"),
    "→": ("the gaze swings to the right", "the head turns rightwards", "the view sweeps round to the right"),
    "←": ("the gaze swings to the left", "the head turns leftwards", "the view sweeps round to the left"),
    "↑": ("the gaze rises towards the sky", "the head tips upwards", "the view lifts upwards"),
    "↓": ("the gaze drops towards the ground", "the head tips downwards", "the view sinks downwards"),
    "↑→": ("the gaze rises and swings right", "the head tips up and turns rightwards",
           "the view lifts and sweeps to the right"),
    "↑←": ("the gaze rises and swings left", "the head tips up and turns leftwards",
           "the view lifts and sweeps to the left"),
    "↓→": ("the gaze drops and swings right", "the head tips down and turns rightwards",
           "the view sinks and sweeps to the right"),
    "↓←": ("the gaze drops and swings left", "the head tips down and turns leftwards",
           "the view sinks and sweeps to the left"),
}

VARIANTS = 3


def motion_phrase(keys: str, mouse: str, variant: int = 0) -> str:
    """One sentence describing the (keys, mouse) motion, e.g. "The walker strides straight ahead; the gaze
    swings to the right." ``variant`` (any int) picks the paraphrase of each half independently."""
    if keys not in WALK_PHRASES or mouse not in LOOK_PHRASES:
        raise ValueError(f"unknown action label ({keys!r}, {mouse!r})")
    walk = WALK_PHRASES[keys][variant % VARIANTS]
    look = LOOK_PHRASES[mouse][(variant // VARIANTS) % VARIANTS]
    return f"{walk[0].upper()}{walk[1:]}; {look}."


def stable_fraction(*parts: str) -> float:
    """A deterministic number in [0, 1) from strings (row ids): per-row choices that do not depend on order."""
    digest = hashlib.sha256("\0".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def caption_with_motion(caption: str, keys: str | None, mouse: str | None, row_id: str, p: float) -> str:
    """The scene caption, preceded (with probability ``p``, decided per row) by the motion sentence. The motion
    comes first so a token budget that truncates the caption never cuts it."""
    if keys is None or mouse is None or stable_fraction(row_id, "motion") >= p:
        return caption
    variant = int(stable_fraction(row_id, "variant") * VARIANTS * VARIANTS)
    return f"{motion_phrase(keys, mouse, variant)} {caption}"
