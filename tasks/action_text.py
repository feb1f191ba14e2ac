"""Action labels and the sentences that describe them (REFERENCE.md section 2).

Labels are exactly the strings of the public Yume code: keys "None", "W", "S", "A", "D", "W+A", "W+D",
"S+A", "S+D"; mouse "·", "→", "←", "↑", "↓", "↑→", "↑←", "↓→", "↓←".

Vocabularies:
- ``yume15`` (default): the Yume-1.5 public code's sentences, verbatim.
- ``yume10``: Yume 1.0's style ("Person moves forward (W).", "Camera turns right (→)."); the two
  sentences REFERENCE quotes are verbatim, the rest follow the same pattern (our reconstruction).
- ``paper``: the compact style of the Yume-1.5 paper's figures; its exact strings are not published in
  full, so this is our reconstruction, kept for experiments on prompt wording.
"""

from __future__ import annotations

import hashlib
import json

KEY_LABELS: tuple[str, ...] = ("None", "W", "S", "A", "D", "W+A", "W+D", "S+A", "S+D")
MOUSE_LABELS: tuple[str, ...] = ("·", "→", "←", "↑", "↓", "↑→", "↑←", "↓→", "↓←")

# (forward sign, lateral sign) -> key label; lateral +1 is D (camera x points right).
KEYS_BY_SIGNS: dict[tuple[int, int], str] = {
    (0, 0): "None", (1, 0): "W", (-1, 0): "S", (0, -1): "A", (0, 1): "D",
    (1, -1): "W+A", (1, 1): "W+D", (-1, -1): "S+A", (-1, 1): "S+D",
}
# (pitch sign, yaw sign) -> mouse label; pitch +1 is up, yaw +1 is right.
MOUSE_BY_SIGNS: dict[tuple[int, int], str] = {
    (0, 0): "·", (0, 1): "→", (0, -1): "←", (1, 0): "↑", (-1, 0): "↓",
    (1, 1): "↑→", (1, -1): "↑←", (-1, 1): "↓→", (-1, -1): "↓←",
}
SIGNS_BY_KEYS = {v: k for k, v in KEYS_BY_SIGNS.items()}
SIGNS_BY_MOUSE = {v: k for k, v in MOUSE_BY_SIGNS.items()}

_KEY_WORDS = {"W": "pushes forward", "S": "pulls back", "A": "moves to the left", "D": "moves to the right"}
_MOUSE_WORDS = {"→": "pans to the right", "←": "pans to the left", "↑": "tilts up", "↓": "tilts down"}
_KEY_WORDS_10 = {"W": "forward", "S": "backward", "A": "left", "D": "right"}
_MOUSE_WORDS_10 = {"→": "turns right", "←": "turns left", "↑": "tilts up", "↓": "tilts down"}


def _parts(label: str, mouse: bool) -> list[str]:
    return list(label) if mouse else label.split("+")


def _yume15_keys(label: str) -> str:
    if label == "None":
        return "The camera's movement direction remains stationary (·)."
    words = " and ".join(_KEY_WORDS[p] for p in _parts(label, False))
    return f"The camera {words} ({label})."


def _yume15_mouse(label: str) -> str:
    if label == "·":
        return "The rotation direction of the camera remains stationary (·)."
    words = " and ".join(_MOUSE_WORDS[p] for p in _parts(label, True))
    return f"The camera {words} ({label})."


def _yume10_keys(label: str) -> str:
    if label == "None":
        return "Person stands still (·)."
    words = " and ".join(_KEY_WORDS_10[p] for p in _parts(label, False))
    return f"Person moves {words} ({label})."


def _yume10_mouse(label: str) -> str:
    if label == "·":
        return "Camera remains still (·)."
    words = " and ".join(_MOUSE_WORDS_10[p] for p in _parts(label, True))
    return f"Camera {words} ({label})."


def _paper_keys(label: str) -> str:
    if label == "None":
        return "Stand still."
    words = " and ".join(_KEY_WORDS_10[p] for p in _parts(label, False))
    return f"Walk {words}."


def _paper_mouse(label: str) -> str:
    if label == "·":
        return "Keep the view steady."
    words = " and ".join(_MOUSE_WORDS_10[p] for p in _parts(label, True))
    return f"View {words}."


VOCABULARIES = {
    "yume15": (_yume15_keys, _yume15_mouse),
    "yume10": (_yume10_keys, _yume10_mouse),
    "paper": (_paper_keys, _paper_mouse),
}


def key_sentence(label: str, vocabulary: str = "yume15") -> str:
    if label not in KEY_LABELS:
        raise ValueError(f"unknown key label {label!r}; expected one of {KEY_LABELS}")
    return VOCABULARIES[vocabulary][0](label)


def mouse_sentence(label: str, vocabulary: str = "yume15") -> str:
    if label not in MOUSE_LABELS:
        raise ValueError(f"unknown mouse label {label!r}; expected one of {MOUSE_LABELS}")
    return VOCABULARIES[vocabulary][1](label)


def action_sentence(keys: str, mouse: str, vocabulary: str = "yume15") -> str:
    """The key sentence and the mouse sentence, as the Yume-1.5 prompt joins them."""
    return f"{key_sentence(keys, vocabulary)} {mouse_sentence(mouse, vocabulary)}"


def action_prompt(keys: str, mouse: str, event: str = "", vocabulary: str = "yume15") -> str:
    """Full prompt: "First-person perspective. " + key + mouse sentences + optional event text."""
    prompt = "First-person perspective. " + action_sentence(keys, mouse, vocabulary)
    return f"{prompt} {event.strip()}" if event.strip() else prompt


def all_action_sentences(vocabulary: str = "yume15") -> dict[tuple[str, str], str]:
    """The 81 (keys, mouse) sentences, for precomputing text embeddings."""
    return {(k, m): action_sentence(k, m, vocabulary) for k in KEY_LABELS for m in MOUSE_LABELS}


def vocabulary_hash(vocabulary: str = "yume15") -> str:
    """Stable hash of a vocabulary's sentences (keys caches of precomputed embeddings)."""
    items = sorted((f"{k}|{m}", s) for (k, m), s in all_action_sentences(vocabulary).items())
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode()).hexdigest()[:16]
