"""`yume play`: the protocol's mapping of held keys to the model's labels, bad input answered on the socket,
a live session streamed by a real uvicorn server, its recording replayed by `yume generate` to the same
bytes, the handshake token, the session limit, and what a slow or vanished client costs the server."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import shlex
import socket
import threading
import time
import zipfile
from contextlib import contextmanager

import numpy as np
import pytest

from yume.play.protocol import (Event, Input, ProtocolError, Record, Reset, keys_label, look_label,
                                parse_client_message, unpack_binary)

# ------------------------------------------------------------------------------------------ protocol

KEY_CASES = {(): "None", ("W",): "W", ("S",): "S", ("A",): "A", ("D",): "D", ("W", "A"): "W+A", ("W", "D"): "W+D",
             ("S", "A"): "S+A", ("S", "D"): "S+D", ("W", "S"): "None", ("A", "D"): "None", ("W", "S", "D"): "D",
             ("W", "A", "D"): "W", ("S", "A", "D"): "S", ("W", "S", "A"): "A", ("W", "S", "A", "D"): "None"}
LOOK_CASES = {(): "·", ("up",): "↑", ("down",): "↓", ("left",): "←", ("right",): "→", ("up", "right"): "↑→",
              ("down", "left"): "↓←", ("left", "right"): "·", ("up", "down", "left"): "←", ("up", "down"): "·"}


def test_every_set_of_held_keys_maps_to_one_model_label():
    from yume.tasks.action_text import KEY_LABELS, MOUSE_LABELS

    for held in itertools.chain.from_iterable(itertools.combinations("WASD", n) for n in range(5)):
        assert keys_label(set(held)) == KEY_CASES[tuple(sorted(held, key="WSAD".index))]
    for held, label in LOOK_CASES.items():
        assert look_label(set(held)) == label
    assert {keys_label(set(h)) for h in KEY_CASES} == set(KEY_LABELS)
    assert set(LOOK_CASES.values()) <= set(MOUSE_LABELS)


def test_messages_parse_to_commands():
    assert parse_client_message('{"type":"input","seq":3,"keys":["w","d"],"look":["Right"]}', 200) == Input(3, "W+D", "→")
    assert parse_client_message('{"type":"event","text":"  rain   starts "}', 200) == Event("rain starts")
    assert parse_client_message('{"type":"reset"}', 200) == Reset()
    assert parse_client_message('{"type":"record"}', 200) == Record()


@pytest.mark.parametrize("raw, reason", [
    ('{"type":"input","seq":1,"keys":["Q"]}', "unknown key name 'Q'; use W, A, S, D"),
    ('{"type":"input","seq":1,"look":["sideways"]}', "unknown look name 'sideways'"),
    ('{"type":"input","seq":1,"keys":"W"}', "'keys' must be a list"),
    ('{"type":"input","seq":-1}', "'seq' must be a non-negative integer"),
    ('{"type":"input","seq":true}', "'seq' must be a non-negative integer"),
    ("not json", "malformed message (not JSON"),
    ("[1, 2]", "expected a JSON object with a 'type'"),
    ('{"type":"jump"}', "unknown message type 'jump'"),
    ('{"type":"event","text":"' + "x" * 201 + '"}', "event text of 201 characters; the limit is 200"),
    ('{"type":"event","text":5}', "'text' must be a string"),
    ('{"type":"event","text":"' + "x" * 70000 + '"}', "bytes; the limit is 65536"),
    (b"\x00\x01", "binary messages are not accepted"),
])
def test_bad_messages_get_a_clear_reason(raw, reason):
    with pytest.raises(ProtocolError, match=None) as e:
        parse_client_message(raw, 200)
    assert reason in str(e.value)


# ------------------------------------------------------------------------------------------ server


@contextmanager
def running(server):
    """A real uvicorn server on a free loopback port, in a thread."""
    from yume.play.server import serve

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    thread = threading.Thread(target=serve, args=(server, sock), daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not getattr(getattr(server, "uvicorn", None), "started", False):
        assert time.time() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.uvicorn.should_exit = True
        thread.join(30)


@pytest.fixture()
def make_server(distilled_dir, tmp_path):
    from yume.config import load_profile
    from yume.play.launch import build_server
    from yume.play.server import PlayConfig

    profile = load_profile("tiny", tmp_path / "work")

    def make(history_frames: int = 256, **cfg):
        return build_server(distilled_dir, profile, cfg=PlayConfig(port=0, **cfg), history_frames=history_frames)

    return make


def connect(port: int, query: str = "pace=0"):
    from websockets.sync.client import connect as ws_connect

    return ws_connect(f"ws://127.0.0.1:{port}/ws?{query}", max_size=None, open_timeout=30)


def next_chunk(ws, texts: list | None = None, timeout: float = 60) -> tuple[dict, np.ndarray]:
    """The next chunk header and frames; text messages on the way are collected in ``texts``."""
    deadline = time.time() + timeout
    while True:
        msg = ws.recv(timeout=max(0.1, deadline - time.time()))
        if isinstance(msg, str):
            (texts if texts is not None else []).append(json.loads(msg))
            continue
        header, payload = unpack_binary(msg)
        if header["kind"] == "chunk":
            frames = np.frombuffer(payload, np.uint8).reshape(header["frames"], header["height"], header["width"], 3)
            return header, frames


def send_input(ws, seq: int, keys=(), look=()) -> None:
    ws.send(json.dumps({"type": "input", "seq": seq, "keys": list(keys), "look": list(look)}))


def chunk_with_seq(ws, seq: int, texts=None) -> tuple[dict, np.ndarray]:
    while True:
        header, frames = next_chunk(ws, texts)
        if header["seq"] >= seq:
            return header, frames


def test_a_session_streams_the_held_action_and_survives_bad_input(make_server, caplog):
    import logging

    server = make_server()
    with caplog.at_level(logging.INFO, logger="yume.play"), running(server) as port, connect(port) as ws:
        hello = json.loads(ws.recv(timeout=60))
        assert hello["type"] == "hello" and hello["schedule"].startswith("schedule: renoise, 4 steps")
        header, frames = next_chunk(ws)
        assert header["action"] == "None:·" and frames.shape == (4, 32, 32, 3)  # nothing held: the world goes on
        texts: list = []
        ws.send('{"type":"input","seq":1,"keys":["Q"]}')
        ws.send("{not json")
        ws.send(json.dumps({"type": "event", "text": "x" * 500}))
        send_input(ws, 2, ["D"])
        header, _ = chunk_with_seq(ws, 2, texts)
        assert header["action"] == "D:·"
        errors = [t["message"] for t in texts if t["type"] == "error"]
        assert any("unknown key name 'Q'" in e for e in errors)
        assert any("malformed message" in e for e in errors)
        assert any("event text of 500 characters" in e for e in errors)
        send_input(ws, 3, ["W", "A"], ["up", "right"])
        ws.send(json.dumps({"type": "event", "text": "rain starts"}))
        header, _ = chunk_with_seq(ws, 3)
        assert header["action"] == "W+A:↑→"
        while header["event"] != "rain starts":  # from the next chunk on
            header, _ = next_chunk(ws)
        tokens = [next_chunk(ws)[0]["history_tokens"] for _ in range(14)]
        assert tokens[-1] == tokens[-5] > 0  # TSCM: the history's token count stops growing
    received = [r.getMessage().split(" ", 4)[-1] for r in caplog.records if " input #" in r.getMessage()]
    assert received == ["D:·", "W+A:↑→"]  # the bad input changed nothing


def test_a_recording_replays_to_the_same_frames_with_yume_generate(make_server, tmp_path, monkeypatch):
    from yume.cli import main

    server = make_server(history_frames=10)  # the cap drops history within the session: the replay must too
    with running(server) as port, connect(port) as ws:
        json.loads(ws.recv(timeout=60))
        send_input(ws, 1, ["W"])
        assert chunk_with_seq(ws, 1)[0]["chunk"] > 0
        ws.send('{"type":"reset"}')
        texts: list = []
        while not any(t.get("type") == "reset" for t in texts):
            header, _ = next_chunk(ws, texts)
        assert header["chunk"] == 0  # the first chunk after the reset starts the world again
        send_input(ws, 2, ["S", "D"], ["left"])
        chunk_with_seq(ws, 2)
        ws.send(json.dumps({"type": "event", "text": "street lights come on"}))
        while next_chunk(ws)[0]["event"] is None:
            pass
        send_input(ws, 3, [], ["down"])
        chunk_with_seq(ws, 3)
        ws.send('{"type":"record"}')
        while True:
            msg = ws.recv(timeout=60)
            if isinstance(msg, bytes) and unpack_binary(msg)[0]["kind"] == "recording":
                info, data = unpack_binary(msg)
                break
    folder = tmp_path / "rec"
    zipfile.ZipFile(io.BytesIO(data)).extractall(folder)
    actions = json.loads((folder / "actions.json").read_text())
    assert len(actions) == info["chunks"] >= 4 and actions[0] == {"keys": "W", "mouse": "·", "event": None}
    assert {"S+D:←", "None:↓"} <= {f"{a['keys']}:{a['mouse']}" for a in actions}
    assert any(a["event"] == "street lights come on" for a in actions)
    argv = shlex.split((folder / "replay.sh").read_text().splitlines()[-1])
    assert argv[:2] == ["yume", "generate"] and "--seed" in argv and "sampler.max_history_frames=10" in argv
    monkeypatch.chdir(folder)
    assert main(argv[1:]) == 0
    assert (folder / "replay.mp4").read_bytes() == (folder / "session.mp4").read_bytes()


def test_the_token_is_checked_on_the_handshake(make_server):
    from websockets.exceptions import InvalidStatus

    from yume.play.server import PlayConfig

    with pytest.raises(ValueError, match="needs --token"):
        PlayConfig(host="0.0.0.0").check_binding()
    server = make_server(token="s3cret")
    with running(server) as port:
        for query in ("pace=0", "token=wrong"):
            with pytest.raises(InvalidStatus) as e:
                connect(port, query)
            assert e.value.response.status_code == 403
        with connect(port, "token=s3cret") as ws:
            assert json.loads(ws.recv(timeout=60))["type"] == "hello"


def test_sessions_above_the_limit_are_refused_with_a_message(make_server):
    from websockets.exceptions import ConnectionClosed

    server = make_server(max_sessions=1)
    with running(server) as port, connect(port) as first:
        assert json.loads(first.recv(timeout=60))["type"] == "hello"
        with connect(port) as second:
            msg = json.loads(second.recv(timeout=30))
            assert msg["type"] == "error" and "the server is full: 1 sessions at most" in msg["message"]
            with pytest.raises(ConnectionClosed) as e:
                second.recv(timeout=30)
            assert e.value.rcvd.code == 1013
        next_chunk(first)  # the first session is unaffected


def play_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("play-session-")]


def test_a_vanished_client_frees_its_worker_and_recording(make_server):
    import glob
    import tempfile

    before = set(glob.glob(f"{tempfile.gettempdir()}/yume-play-*"))
    server = make_server()
    with running(server) as port:
        ws = connect(port)
        json.loads(ws.recv(timeout=60))
        next_chunk(ws)
        assert play_threads() and server.active == 1
        ws.socket.close()  # gone without a close frame
        deadline = time.time() + 60
        while (play_threads() or server.active) and time.time() < deadline:
            time.sleep(0.1)
        assert not play_threads() and server.active == 0
        assert set(glob.glob(f"{tempfile.gettempdir()}/yume-play-*")) == before
        with connect(port) as again:  # and the server goes on serving
            json.loads(again.recv(timeout=60))
            next_chunk(again)


def test_a_full_queue_drops_the_oldest_chunks_and_keeps_replies():
    from yume.play.server import ChunkQueue
    from yume.play.session import ChunkResult

    def chunk(i):
        return ("chunk", (ChunkResult(i, np.zeros((4, 2, 2, 3), np.uint8), "W", "·", None, 0.1, 0, 0), i))

    async def scenario():
        q = ChunkQueue(2)
        q.put(chunk(0))
        q.put(("error", "bad key"))
        for i in range(1, 5):
            q.put(chunk(i))
        return [await q.get() for _ in range(3)], q.dropped_frames

    items, dropped = asyncio.run(scenario())
    assert items[0] == ("error", "bad key") and [it[1][1] for it in items[1:]] == [3, 4]
    assert dropped == 3 * 4


def test_a_stalled_send_closes_the_session_instead_of_blocking(make_server):
    from yume.play.server import ChunkQueue
    from yume.play.session import ChunkResult

    server = make_server(send_timeout_s=0.5)

    class StalledSocket:  # a client that stopped reading: its sends never complete
        async def send_bytes(self, data):
            await asyncio.sleep(3600)

    async def scenario():
        q = ChunkQueue(2)
        q.put(("chunk", (ChunkResult(0, np.zeros((4, 2, 2, 3), np.uint8), "W", "·", None, 0.1, 0, 0), 0)))
        t0 = time.perf_counter()
        await asyncio.wait_for(server.send_loop(StalledSocket(), q), 10)
        return time.perf_counter() - t0

    assert 0.4 < asyncio.run(scenario()) < 5


def test_play_refuses_remote_checkpoints_and_an_open_host_without_token(distilled_dir, capsys):
    from yume.cli import main

    assert main(["play", "--checkpoint", "https://example.org/model"]) == 2
    assert "a local directory is required" in capsys.readouterr().err
    assert main(["play", "--checkpoint", str(distilled_dir / "missing")]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert main(["play", "--checkpoint", str(distilled_dir), "--host", "0.0.0.0"]) == 2
    assert "needs --token or YUME_PLAY_TOKEN" in capsys.readouterr().err


def test_the_server_serves_its_page_and_nothing_else(make_server):
    import urllib.error
    import urllib.request

    server = make_server()
    with running(server) as port:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/") as r:
            assert r.status == 200 and b"<title>yume play</title>" in r.read()
        for path in ("/page.html", "/docs", "/openapi.json", "/..%2fpyproject.toml", "/yume_model.json"):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(f"http://127.0.0.1:{port}{path}")
            assert e.value.code == 404, path


def test_bench_play_reports_every_figure_from_a_real_server(distilled_dir, capsys):
    from yume.play.bench import main

    assert main(["--checkpoint", str(distilled_dir), "--chunks", "14", "--rss-at", "6", "--change-every", "2",
                 "--inprocess-chunks", "4", "--warmup", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("frames_per_second", "inprocess_frames_per_second", "chunk_seconds", "latency_p50_s",
                "latency_p95_s", "rss_ratio_500_over_50"):
        assert isinstance(out[key], float) and out[key] > 0, key
    assert out["frames_per_chunk"] == 4 and out["latency_samples"] >= 3
    assert out["frames_per_second"] == pytest.approx(4 / out["chunk_seconds"], rel=0.01)
    assert out["goals"]["serving_ratio>=0.9"] is (out["serving_ratio"] >= 0.9)


def test_a_history_cap_keeps_memory_flat_and_the_frames_of_keeping_everything(distilled_dir):
    """With ``max_history_frames`` set, the stream keeps only the frames a later chunk can read; the frames equal
    a reference rollout that keeps every latent and cuts each chunk's conditioning itself."""
    import torch

    from yume.models.sampler import WorldSampler

    sampler = WorldSampler.from_checkpoint(distilled_dir, explicit={"max_history_frames": 6})
    image = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    actions = [("W", "→"), ("None", "·"), ("S+A", "↑")] * 4
    stream = sampler.stream(image, seed=3)
    got = [stream.step([a]) for a in actions]
    assert stream.history.shape[2] == 1 + 5 and stream.history_frames == 5 + 12 * 4

    g = torch.Generator().manual_seed(3)  # reference: all latents kept, the cut applied per chunk
    history, ref = sampler.image_history(image), []
    for a in actions:
        hist = torch.cat([history[:, :, :1], history[:, :, -5:]], 2) if history.shape[2] > 6 else history
        z = sampler.denoise(sampler.latent_shape(1, 32, 32), sampler.text([a], [None]), hist, g)
        ref.append(sampler.decode_chunk(history, z))
        history = torch.cat([history, z], 2)
    assert all(np.array_equal(x, y) for x, y in zip(got, ref))
