"""The `yume play` server: FastAPI + uvicorn, one WebSocket session per browser tab.

Per session, three parts that never wait on each other:

- the **reader** (event loop) parses client messages into the session's ``Control`` (latest input wins;
  events, resets and record requests are picked up before the next chunk) and answers bad ones with an
  ``error`` message; the session goes on;
- the **worker** (one thread per session) generates chunk after chunk with the action in force, off the
  event loop. With pacing on (the page) it stays at most ``lead_chunks`` of video ahead of real time; with
  it off (``?pace=0``, the benchmark) it generates as fast as it can;
- the **sender** (event loop) drains a bounded queue of ``queue_chunks`` chunks. When the client reads too
  slowly the oldest queued chunk is dropped (counted in ``dropped_frames``); a send that stalls for
  ``send_timeout_s`` closes the session. A vanished client stops its worker and frees its recording.

The model is loaded once and shared by every session (inference only; each session has its own stream).
Security: the checkpoint is a local directory; the server serves its own page and nothing from the
filesystem; binding anything but loopback needs a token, checked on the WebSocket handshake.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import logging
import threading
import time
from dataclasses import dataclass, field
from importlib import resources

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from .protocol import Event, Input, ProtocolError, Record, Reset, pack_binary, parse_client_message
from .session import PlaySession, PlayStart, ReplayCommand

log = logging.getLogger("yume.play")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class PlayConfig(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(8765, ge=0, le=65535)
    token: str | None = Field(None, description="required on the WebSocket handshake; mandatory off loopback")
    max_sessions: int = Field(4, ge=1)
    queue_chunks: int = Field(3, ge=1, description="chunks queued for a client before the oldest is dropped")
    lead_chunks: float = Field(2.0, gt=0, description="paced sessions generate at most this much video ahead")
    send_timeout_s: float = Field(10.0, gt=0, description="a send stalled this long closes the session")
    max_event_chars: int = Field(200, ge=1)
    max_record_chunks: int = Field(2000, ge=1, description="a recording keeps at most this many chunks")
    seed: int = 0

    def check_binding(self) -> None:
        if self.host not in LOOPBACK and not self.token:
            raise ValueError(f"binding {self.host} (not loopback) needs --token or YUME_PLAY_TOKEN: anyone who "
                             "can reach the port could otherwise drive the model")


@dataclass
class Control:
    """What the reader hands the worker: the input in force and one-shot requests."""

    keys: str = "None"
    mouse: str = "·"
    seq: int = 0
    event: str | None = None
    reset: bool = False
    record: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self) -> tuple[str, str, int, str | None, bool, bool]:
        with self.lock:
            out = (self.keys, self.mouse, self.seq, self.event, self.reset, self.record)
            self.reset = self.record = False
            return out


class SessionWorker(threading.Thread):
    """Generates the session's chunks off the event loop and hands each message to ``deliver``."""

    def __init__(self, session: PlaySession, control: Control, deliver, pace: bool, lead_chunks: float,
                 name: str):
        super().__init__(name=name, daemon=True)
        self.session, self.control, self.deliver = session, control, deliver
        self.pace, self.lead_chunks = pace, lead_chunks
        self.stop = threading.Event()
        self.error: str | None = None

    def run(self) -> None:
        try:
            self._loop()
        except Exception as e:  # noqa: BLE001 - reported to the client, logged, session closed
            log.exception("%s: generation failed", self.name)
            self.error = f"generation failed: {type(e).__name__}: {e}"
            self.deliver(("error", self.error))

    def _loop(self) -> None:
        s = self.session
        clock_start, video_seconds = time.perf_counter(), 0.0
        while not self.stop.is_set():
            keys, mouse, seq, event, reset, record = self.control.take()
            if reset:
                s.reset()
                clock_start, video_seconds = time.perf_counter(), 0.0
                self.deliver(("reset", None))
            if record:
                try:
                    self.deliver(("recording", s.recording_zip()))
                except ValueError as e:
                    self.deliver(("error", str(e)))
            result = s.step(keys, mouse, event)
            self.deliver(("chunk", (result, seq)))
            if self.pace:
                video_seconds += len(result.frames) / s.sampler.fps
                ahead = video_seconds - (time.perf_counter() - clock_start)
                lead = self.lead_chunks * len(result.frames) / s.sampler.fps
                if ahead < 0:  # slower than real time: no catching up in bursts later
                    clock_start -= ahead
                elif ahead > lead:
                    self.stop.wait(ahead - lead)


class ChunkQueue:
    """The bounded queue between a session's worker and its sender, used on the event loop's thread. Past
    ``max_chunks`` queued chunks the oldest chunk is dropped (its frames counted in ``dropped_frames``);
    replies (errors, recordings) are never dropped. A slow client loses frames, the worker never waits and
    memory stays bounded."""

    def __init__(self, max_chunks: int):
        self.items: collections.deque = collections.deque()
        self.max_chunks = max_chunks
        self.dropped_frames = 0
        self._ready = asyncio.Event()

    def put(self, item: tuple) -> None:
        self.items.append(item)
        chunks = [i for i in self.items if i[0] == "chunk"]
        for old in chunks[: max(0, len(chunks) - self.max_chunks)]:
            self.items.remove(old)
            self.dropped_frames += len(old[1][0].frames)
        self._ready.set()

    async def get(self) -> tuple:
        while not self.items:
            self._ready.clear()
            await self._ready.wait()
        return self.items.popleft()


class PlayServer:
    """The app and its shared state; ``app`` is what uvicorn serves."""

    def __init__(self, cfg: PlayConfig, sampler, start: PlayStart, replay: ReplayCommand, checkpoint_name: str):
        cfg.check_binding()
        self.cfg, self.sampler, self.start, self.replay = cfg, sampler, start, replay
        self.checkpoint_name = checkpoint_name
        self.active = 0
        self.sessions_started = 0
        self.app = FastAPI(title="yume play", docs_url=None, redoc_url=None, openapi_url=None)
        self.app.get("/", response_class=HTMLResponse)(self.page)
        self.app.websocket("/ws")(self.play)

    async def page(self) -> HTMLResponse:
        html = resources.files("yume.play").joinpath("page.html").read_text()
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    def _authorised(self, websocket: WebSocket) -> bool:
        if not self.cfg.token:
            return True
        given = websocket.query_params.get("token", "")
        return hmac.compare_digest(given.encode(), self.cfg.token.encode())

    async def play(self, websocket: WebSocket) -> None:
        if not self._authorised(websocket):
            log.warning("refused a session from %s: bad or missing token", websocket.client)
            await websocket.close(code=1008)  # before accept: the handshake fails with HTTP 403
            return
        await websocket.accept()
        if self.active >= self.cfg.max_sessions:
            await websocket.send_json({"type": "error", "message": f"the server is full: {self.cfg.max_sessions} "
                                       "sessions at most (--max-sessions); try again later"})
            await websocket.close(code=1013)
            return
        self.active += 1
        self.sessions_started += 1
        number = self.sessions_started
        try:
            await self._run_session(websocket, number, websocket.query_params.get("pace", "1") != "0")
        finally:
            self.active -= 1
            log.info("session %d closed", number)

    async def _run_session(self, websocket: WebSocket, number: int, pace: bool) -> None:
        cfg, loop = self.cfg, asyncio.get_running_loop()
        queue = ChunkQueue(cfg.queue_chunks)
        session = await asyncio.to_thread(PlaySession, self.sampler, self.start, cfg.seed, self.replay,
                                          cfg.max_record_chunks)
        control = Control()
        worker = SessionWorker(session, control, lambda item: loop.call_soon_threadsafe(queue.put, item), pace,
                               cfg.lead_chunks, name=f"play-session-{number}")
        await websocket.send_json({
            "type": "hello", "session": number, "checkpoint": self.checkpoint_name,
            "schedule": self.sampler.schedule_line, "fps": self.sampler.fps, "height": session.height,
            "width": session.width, "chunk_frames": self.sampler.chunk * self.sampler.codec.temporal_factor,
            "seed": cfg.seed, "start": self.start.description, "pace": pace, "max_event_chars": cfg.max_event_chars})
        log.info("session %d opened (pace %s)", number, "on" if pace else "off")
        worker.start()
        sender = asyncio.create_task(self.send_loop(websocket, queue))
        try:
            await self._read_loop(websocket, control, number, sender)
        finally:
            worker.stop.set()
            sender.cancel()
            await asyncio.to_thread(worker.join)
            session.close()

    async def _read_loop(self, websocket: WebSocket, control: Control, number: int, sender: asyncio.Task) -> None:
        receive = asyncio.ensure_future(websocket.receive())
        try:
            while True:
                done, _ = await asyncio.wait({receive, sender}, return_when=asyncio.FIRST_COMPLETED)
                if sender in done:  # the sender gave up (stalled client) or the worker failed
                    return
                msg = receive.result()
                if msg["type"] == "websocket.disconnect":
                    return
                receive = asyncio.ensure_future(websocket.receive())
                raw = msg.get("text") if msg.get("text") is not None else msg.get("bytes", b"")
                try:
                    cmd = parse_client_message(raw, self.cfg.max_event_chars)
                except ProtocolError as e:
                    await websocket.send_json({"type": "error", "message": str(e)})
                    continue
                self._apply(cmd, control, number)
                if isinstance(cmd, Event):
                    await websocket.send_json({"type": "event", "text": cmd.text})
        except WebSocketDisconnect:
            return
        finally:
            receive.cancel()

    def _apply(self, cmd, control: Control, number: int) -> None:
        with control.lock:
            if isinstance(cmd, Input):
                if cmd.seq >= control.seq:  # a stale (reordered) input never overrides a newer one
                    control.keys, control.mouse, control.seq = cmd.keys, cmd.mouse, cmd.seq
                    log.info("session %d input #%d %s:%s", number, cmd.seq, cmd.keys, cmd.mouse)
            elif isinstance(cmd, Event):
                control.event = cmd.text or None
                log.info("session %d event %r", number, cmd.text)
            elif isinstance(cmd, Reset):
                control.reset = True
            elif isinstance(cmd, Record):
                control.record = True

    async def send_loop(self, websocket, queue: ChunkQueue) -> None:
        """Sends queued items until a send stalls for ``send_timeout_s`` or generation failed."""
        timeout = self.cfg.send_timeout_s
        while True:
            kind, payload = await queue.get()
            try:
                if kind == "chunk":
                    result, seq = payload
                    header = {"kind": "chunk", "chunk": result.index, "seq": seq, "frames": len(result.frames),
                              "height": result.frames.shape[1], "width": result.frames.shape[2],
                              "action": f"{result.keys}:{result.mouse}", "event": result.event,
                              "generate_seconds": round(result.generate_seconds, 4),
                              "history_frames": result.history_frames, "history_tokens": result.history_tokens,
                              "dropped_frames": queue.dropped_frames}
                    await asyncio.wait_for(websocket.send_bytes(pack_binary(header, result.frames.tobytes())), timeout)
                elif kind == "recording":
                    data, info = payload
                    await asyncio.wait_for(websocket.send_bytes(pack_binary({"kind": "recording", **info}, data)),
                                           timeout)
                elif kind == "error":
                    await websocket.send_json({"type": "error", "message": payload})
                    if payload.startswith("generation failed"):
                        return
                elif kind == "reset":
                    await websocket.send_json({"type": "reset"})
            except asyncio.TimeoutError:
                log.warning("a client stopped reading for %.0f s: closing its session", timeout)
                return


def serve(server: PlayServer, sock=None) -> None:
    """Run uvicorn in this thread until interrupted (``sock``: an already bound socket, e.g. port 0)."""
    import uvicorn

    config = uvicorn.Config(server.app, host=server.cfg.host, port=server.cfg.port, log_level="warning",
                            ws="websockets-sansio", ws_max_size=1 << 20)
    uv = uvicorn.Server(config)
    server.uvicorn = uv
    uv.run(sockets=[sock] if sock is not None else None)
