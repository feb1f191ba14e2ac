"""One writer per work directory.

Every flow that writes under a work directory (each stage, ``retrain``, ``pretrain_base``) holds
``<workdir>/.yume.lock`` while it runs, so a manual ``yume demo`` cannot interleave its writes with the
scheduled weekly retrain on the same directory.

The lock file is JSON naming its holder: pid, host, the process's start time (so a recycled pid is not
mistaken for the holder), when it started, the command, and a heartbeat that a daemon thread refreshes
every ``heartbeat_seconds``. A second run refuses with a message naming the holder, or with ``wait`` polls
until the lock is free. A lock is stale, and is taken over with a warning in the log, when

- its holder's pid is dead (or recycled) on this host, or
- its heartbeat is older than ``stale_after_minutes``: the only test that works for a holder on another
  host of a shared work directory.

Checking and replacing the lock file happens under an ``fcntl.flock`` on ``.yume.lock.guard``, so two
contenders on one host never both take over a stale lock. The lock is reentrant within a process: ``retrain``
holds it and the stage flows it calls take it again.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

LOCK_NAME = ".yume.lock"
GUARD_NAME = ".yume.lock.guard"


class LockConfig(BaseModel):
    """Run control, not content: excluded from the profile's hash."""

    model_config = ConfigDict(extra="forbid")
    wait: bool = Field(False, description="wait for a running holder instead of refusing (`--wait`)")
    wait_timeout_minutes: float | None = Field(None, gt=0, description="give up waiting after this long; None = forever")
    stale_after_minutes: float = Field(10.0, gt=0, description="a heartbeat older than this marks the lock stale")
    heartbeat_seconds: float = Field(30.0, gt=0, description="how often the holder refreshes its heartbeat")
    poll_seconds: float = Field(5.0, gt=0, description="how often a waiting run looks again")


class WorkdirLockedError(RuntimeError):
    """Another live run holds the work directory."""


@dataclass(frozen=True)
class Holder:
    pid: int
    host: str
    proc_start: str | None
    started: float
    heartbeat: float
    command: str
    token: str

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return (f"pid {self.pid} on {self.host} (`{self.command}`, started {started}, "
                f"heartbeat {time.time() - self.heartbeat:.0f} s ago)")


def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), which tells a recycled pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed but unreaped child is a zombie: it holds nothing
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def stale_reason(holder: Holder, stale_after_s: float, now: float | None = None) -> str | None:
    """Why ``holder`` no longer holds the lock, or None while it is live."""
    now = time.time() if now is None else now
    if holder.host == socket.gethostname():
        if not _pid_alive(holder.pid):
            return f"pid {holder.pid} is not running on {holder.host}"
        if holder.proc_start is not None and _proc_start(holder.pid) not in (None, holder.proc_start):
            return f"pid {holder.pid} on {holder.host} is now another process"
    age = now - holder.heartbeat
    if age > stale_after_s:
        return f"its heartbeat is {age:.0f} s old (stale after {stale_after_s:.0f} s)"
    return None


def read_holder(path: Path) -> Holder | None:
    """The lock's holder; None when there is no lock. An unreadable lock file counts as a dead holder."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return Holder(**json.loads(text))
    except (ValueError, TypeError):
        log.warning("lock file %s is unreadable (%r...): treating it as stale", path, text[:60])
        return Holder(pid=-1, host="?", proc_start=None, started=0.0, heartbeat=0.0, command="?", token="?")


def _write_holder(path: Path, holder: Holder) -> None:
    tmp = path.with_name(f"{path.name}.{holder.token}.tmp")
    tmp.write_text(json.dumps(asdict(holder)))
    os.replace(tmp, path)  # readers see the old or the new record, never half of one


@contextmanager
def _guard(workdir: Path) -> Iterator[None]:
    with open(workdir / GUARD_NAME, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class WorkdirLock:
    """The lock on one work directory, held by this process (see the module docstring)."""

    def __init__(self, workdir: Path, config: LockConfig | None = None, command: str | None = None):
        self.workdir = Path(workdir).resolve()
        self.path = self.workdir / LOCK_NAME
        self.config = config or LockConfig()
        self.command = command or " ".join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv))[:200]
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _me(self, started: float) -> Holder:
        pid = os.getpid()
        return Holder(pid=pid, host=socket.gethostname(), proc_start=_proc_start(pid), started=started,
                      heartbeat=time.time(), command=self.command, token=self.token)

    def try_acquire(self) -> Holder | None:
        """Take the lock if it is free or stale; returns the live holder that prevents it, else None."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        with _guard(self.workdir):
            holder = read_holder(self.path)
            if holder is not None:
                reason = stale_reason(holder, self.config.stale_after_minutes * 60)
                if reason is None:
                    return holder
                log.warning("taking over the stale lock on %s from %s: %s", self.workdir, holder.describe(), reason)
            _write_holder(self.path, self._me(time.time()))
        self._start_heartbeat()
        return None

    def acquire(self) -> None:
        deadline = None
        if self.config.wait and self.config.wait_timeout_minutes is not None:
            deadline = time.monotonic() + self.config.wait_timeout_minutes * 60
        announced = False
        while (holder := self.try_acquire()) is not None:
            if not self.config.wait:
                raise WorkdirLockedError(
                    f"work directory {self.workdir} is in use by {holder.describe()}. Wait for it to finish, run "
                    f"again with --wait (or --set lock.wait=true), or use another --workdir. If that run is gone, "
                    f"its lock is taken over once its heartbeat is {self.config.stale_after_minutes:g} min old.")
            if deadline is not None and time.monotonic() > deadline:
                raise WorkdirLockedError(f"gave up waiting for {self.workdir}: still held by {holder.describe()}")
            if not announced:
                log.info("waiting for %s, held by %s", self.workdir, holder.describe())
                announced = True
            time.sleep(self.config.poll_seconds)
        log.debug("holding %s", self.path)

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, name="yume-workdir-heartbeat", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.config.heartbeat_seconds):
            with _guard(self.workdir):
                holder = read_holder(self.path)
                if holder is None or holder.token != self.token:
                    log.error("lost the lock on %s (now %s): another run took it over",
                              self.workdir, holder.describe() if holder else "nobody")
                    return
                _write_holder(self.path, Holder(**{**asdict(holder), "heartbeat": time.time()}))

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        with _guard(self.workdir):
            holder = read_holder(self.path)
            if holder is not None and holder.token == self.token:
                self.path.unlink()


_held: dict[Path, tuple[WorkdirLock, int]] = {}
_held_mutex = threading.Lock()


@contextmanager
def hold_workdir(workdir: Path, config: LockConfig | None = None) -> Iterator[WorkdirLock]:
    """Hold the work directory's lock for the block; reentrant within this process."""
    key = Path(workdir).resolve()
    with _held_mutex:
        entry = _held.get(key)
        if entry is None:
            lock = WorkdirLock(key, config)
            lock.acquire()
            entry = (lock, 0)
        _held[key] = (entry[0], entry[1] + 1)
    try:
        yield entry[0]
    finally:
        with _held_mutex:
            lock, count = _held[key]
            if count == 1:
                del _held[key]
                lock.release()
            else:
                _held[key] = (lock, count - 1)


def locks_workdir(flow_fn):
    """Decorate a flow ``fn(profile, workdir, overrides, ...)`` so its body runs holding the work directory.

    Goes under ``@flow``: ``functools.wraps`` keeps the signature Prefect reads its parameters from.
    """
    import functools

    @functools.wraps(flow_fn)
    def wrapper(profile="tiny", workdir=None, overrides=None, *args, **kwargs):
        from yume.config import load_profile

        cfg = load_profile(profile, workdir, overrides or [])
        with hold_workdir(cfg.workdir_path, cfg.lock):
            return flow_fn(profile, workdir, overrides, *args, **kwargs)

    return wrapper
