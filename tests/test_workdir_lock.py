"""One writer per work directory: a second run refuses (naming the holder) or waits; stale locks are taken over.

Holders are real processes: a child Python that takes the lock and sleeps, and the `yume` CLI itself.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cli import run_light

from yume.workdir_lock import (LOCK_NAME, Holder, LockConfig, WorkdirLock, WorkdirLockedError, hold_workdir,
                               read_holder, stale_reason)

HOLD = """
import sys, time
from pathlib import Path
from yume.workdir_lock import LockConfig, hold_workdir
cfg = LockConfig(wait=sys.argv[3] == "wait", poll_seconds=0.1, heartbeat_seconds=float(sys.argv[4]))
with hold_workdir(Path(sys.argv[1]), cfg):
    Path(sys.argv[2]).write_text(str(time.time()))
    time.sleep(float(sys.argv[5]))
Path(sys.argv[2] + ".released").write_text(str(time.time()))
"""


def start_holder(workdir: Path, flag: Path, wait: str = "refuse", heartbeat: float = 30.0, hold: float = 60.0):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(workdir), str(flag), wait, str(heartbeat), str(hold)])
    deadline = time.time() + 60
    while not flag.exists():
        assert proc.poll() is None, "holder died before taking the lock"
        assert time.time() < deadline, "holder never took the lock"
        time.sleep(0.05)
    return proc


def test_a_second_process_refuses_with_the_holder_named_and_takes_over_once_it_is_killed(tmp_path):
    holder = start_holder(tmp_path, tmp_path / "held")
    try:
        record = json.loads((tmp_path / LOCK_NAME).read_text())
        assert record["pid"] == holder.pid and record["host"] == socket.gethostname()
        with pytest.raises(WorkdirLockedError, match=f"pid {holder.pid} on {socket.gethostname()}"):
            WorkdirLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The holder died without releasing: its lock file remains, and is stale because the pid is dead.
    assert read_holder(tmp_path / LOCK_NAME).pid == holder.pid
    with hold_workdir(tmp_path, LockConfig()):
        assert read_holder(tmp_path / LOCK_NAME).pid == os.getpid()
    assert not (tmp_path / LOCK_NAME).exists()


def test_wait_blocks_until_the_holder_releases(tmp_path):
    first = start_holder(tmp_path, tmp_path / "first", hold=2.0)
    second_flag = tmp_path / "second"
    second = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path), str(second_flag), "wait", "30", "0"])
    assert second.wait(timeout=60) == 0 and first.wait(timeout=60) == 0
    released = float((tmp_path / "first.released").read_text())
    assert float(second_flag.read_text()) >= released - 0.05  # the waiter got the lock only after the release


def test_heartbeat_keeps_a_long_run_live_and_an_old_heartbeat_is_stale(tmp_path):
    holder = start_holder(tmp_path, tmp_path / "held", heartbeat=0.2)
    try:
        first = read_holder(tmp_path / LOCK_NAME).heartbeat
        time.sleep(1.0)
        live = read_holder(tmp_path / LOCK_NAME)
        assert live.heartbeat > first
        assert stale_reason(live, stale_after_s=5) is None
    finally:
        holder.kill(), holder.wait()


def write_lock(workdir: Path, **fields) -> None:
    now = time.time()
    record = dict(pid=1, host="other-host", proc_start=None, started=now, heartbeat=now, command="yume demo",
                  token="t")
    record.update(fields)
    (workdir / LOCK_NAME).write_text(json.dumps(record))


def test_a_holder_on_another_host_is_live_until_its_heartbeat_is_old(tmp_path, caplog):
    write_lock(tmp_path)
    with pytest.raises(WorkdirLockedError, match="pid 1 on other-host"):
        WorkdirLock(tmp_path, LockConfig(stale_after_minutes=1)).acquire()
    write_lock(tmp_path, heartbeat=time.time() - 120)
    with caplog.at_level("WARNING"), hold_workdir(tmp_path, LockConfig(stale_after_minutes=1)):
        assert read_holder(tmp_path / LOCK_NAME).host == socket.gethostname()
    assert "taking over the stale lock" in caplog.text and "heartbeat is 12" in caplog.text


def test_a_recycled_pid_and_an_unreadable_lock_file_are_stale(tmp_path):
    me = Holder(pid=os.getpid(), host=socket.gethostname(), proc_start="1", started=0, heartbeat=time.time(),
                command="x", token="t")
    assert "now another process" in stale_reason(me, stale_after_s=60)
    (tmp_path / LOCK_NAME).write_text('{"pid": 12')  # a holder killed mid-write of an older format
    with hold_workdir(tmp_path, LockConfig()):
        assert read_holder(tmp_path / LOCK_NAME).pid == os.getpid()


def test_the_lock_is_reentrant_within_a_process(tmp_path):
    with hold_workdir(tmp_path) as outer:
        with hold_workdir(tmp_path) as inner:  # retrain -> stage flow
            assert inner is outer
        assert (tmp_path / LOCK_NAME).exists()
    assert not (tmp_path / LOCK_NAME).exists()


def test_the_cli_refuses_a_busy_workdir_fast_with_exit_75(tmp_path):
    holder = start_holder(tmp_path, tmp_path / "held")
    try:
        # What was imported, not a wall-time bound (flaky): torch and Prefect never loaded.
        out, heavy = run_light("flow", "curate_real", "--workdir", str(tmp_path), timeout=120)
    finally:
        holder.kill(), holder.wait()
    assert out.returncode == 75, out.stderr
    assert f"pid {holder.pid}" in out.stderr and "--wait" in out.stderr and "Traceback" not in out.stderr
    assert heavy == []  # refused before Prefect's server could start
    assert not (tmp_path / "manifests").exists()
