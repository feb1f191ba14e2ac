"""The `yume play` WebSocket protocol: what a browser tab may send, and how chunks and recordings travel back.

Client -> server, JSON text messages (at most ``MAX_MESSAGE_BYTES``):

- ``{"type": "input", "seq": N, "keys": ["W", "D"], "look": ["right"]}``: the keys held now and the look
  direction (arrow keys or mouse drag). Opposite keys cancel (W+S is no movement), so any set of held keys
  maps to one of the model's nine key labels and any set of look directions to one of its nine mouse labels.
  ``seq`` (increasing) comes back on every chunk generated with this input, which is how latency is measured.
- ``{"type": "event", "text": "rain starts"}``: the event text from the next chunk on ("" clears it).
- ``{"type": "reset"}``: back to the start image (same seed: the same keys replay the same frames).
- ``{"type": "record"}``: the session since its start (or last reset) as a zip: mp4, actions JSON, replay command.

Server -> client: JSON text (``hello``, ``error``, ``event``, ``reset``, ``closing``) and binary messages that
are a 4-byte big-endian header length, a JSON header, then the payload: ``kind: "chunk"`` (raw RGB frames,
``frames x height x width x 3`` bytes) or ``kind: "recording"`` (the zip).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

MAX_MESSAGE_BYTES = 1 << 16  # larger messages (up to the server's 1 MB frame limit) get an error
KEY_NAMES = ("W", "A", "S", "D")
LOOK_NAMES = ("up", "down", "left", "right")


class ProtocolError(ValueError):
    """A client message the server cannot act on; its text goes back to the client as an ``error``."""


@dataclass(frozen=True)
class Input:
    seq: int
    keys: str  # one of KEY_LABELS
    mouse: str  # one of MOUSE_LABELS


@dataclass(frozen=True)
class Event:
    text: str


@dataclass(frozen=True)
class Reset:
    pass


@dataclass(frozen=True)
class Record:
    pass


def keys_label(held: set[str]) -> str:
    """Held movement keys -> a key label: forward/back and left/right each cancel when both are held."""
    forward = ("W" in held) - ("S" in held)
    side = ("D" in held) - ("A" in held)
    fb = {1: "W", -1: "S", 0: ""}[forward]
    lr = {1: "D", -1: "A", 0: ""}[side]
    return "+".join(k for k in (fb, lr) if k) or "None"


def look_label(held: set[str]) -> str:
    """Held look directions -> a mouse label (pitch first, as the action vocabulary writes it)."""
    pitch = {1: "↑", -1: "↓", 0: ""}[("up" in held) - ("down" in held)]
    yaw = {1: "→", -1: "←", 0: ""}[("right" in held) - ("left" in held)]
    return pitch + yaw or "·"


def _names(msg: dict, field: str, allowed: tuple[str, ...], fold) -> set[str]:
    value = msg.get(field, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProtocolError(f"'{field}' must be a list of names from {list(allowed)}")
    out = set()
    for v in value:
        name = fold(v)
        if name not in allowed:
            raise ProtocolError(f"unknown {field[:-1] if field.endswith('s') else field} name {v[:20]!r}; "
                                f"use {', '.join(allowed)}")
        out.add(name)
    return out


def parse_client_message(raw: str | bytes, max_event_chars: int) -> Input | Event | Reset | Record:
    """One client message -> a command, or ``ProtocolError`` with a message fit to show the user."""
    if isinstance(raw, bytes):
        raise ProtocolError("binary messages are not accepted; send JSON text")
    if len(raw.encode()) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(raw.encode())} bytes; the limit is {MAX_MESSAGE_BYTES}")
    try:
        msg = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ProtocolError(f"malformed message (not JSON: {e.msg})") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError("malformed message: expected a JSON object with a 'type'")
    kind = msg["type"]
    if kind == "input":
        seq = msg.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise ProtocolError("'seq' must be a non-negative integer")
        keys = _names(msg, "keys", KEY_NAMES, lambda v: v.upper())
        look = _names(msg, "look", LOOK_NAMES, lambda v: v.lower())
        return Input(seq, keys_label(keys), look_label(look))
    if kind == "event":
        text = msg.get("text")
        if not isinstance(text, str):
            raise ProtocolError("'text' must be a string")
        text = " ".join(text.split())
        if len(text) > max_event_chars:
            raise ProtocolError(f"event text of {len(text)} characters; the limit is {max_event_chars}")
        return Event(text)
    if kind == "reset":
        return Reset()
    if kind == "record":
        return Record()
    raise ProtocolError(f"unknown message type {kind[:20]!r}; use input, event, reset or record")


def pack_binary(header: dict, payload: bytes) -> bytes:
    head = json.dumps(header, ensure_ascii=False).encode()
    return struct.pack(">I", len(head)) + head + payload


def unpack_binary(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack(">I", data[:4])
    return json.loads(data[4 : 4 + n]), data[4 + n :]
