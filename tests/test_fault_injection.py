"""Fault injection: manifest writes that fail (disk full, permission denied), rows that point outside the data
root, and (slow) a real two-node Ray cluster on loopback with token authentication: a curation stage spread over
both nodes, and a worker node killed mid-stage.

Per-item corruption in each curation stage is covered where the stage's worker is tested: curate_real
(test_curate_real: every bad-input reason), recaption (test_recaption: unreadable video, model error, OOM),
synthesize_t2v / synthesize_events (test_synthesis: per-item failures), score_and_filter (test_score_and_filter:
decode_failed, nan_score, oom, model_error). Training kill/resume is tested with training.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from yume.datasets import manifest as m

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")


def _row(i, status="ok", **kw):
    return {"id": f"id{i}", "source_uri": f"videos/{i}.mp4", "content_hash": "h", "stage": "curate_real",
            "stage_version": "1", "config_hash": "c", "status": status,
            "error": None if status == "ok" else "video_unreadable: x", "video_uri": f"videos/{i}.mp4",
            "start_frame": 0, "end_frame": 40, "fps": 30.0, "num_frames": 40, **kw}


def _previous_version_intact(d: Path, rows: list[dict]) -> None:
    assert m.validate_manifest(d) == []
    assert m.read_manifest(d).column("id").to_pylist() == [r["id"] for r in rows]
    assert not [p.name for p in d.iterdir() if p.name.startswith((".tmp-", ".bak-"))]


# --- manifest writes that fail ----------------------------------------------------------------------------------


class _FullDisk:
    """``open`` for the manifest module whose n-th write-mode file takes half the bytes, then ENOSPC."""

    def __init__(self, fail_on: int):
        self.fail_on, self.opened = fail_on, 0

    def __call__(self, path, mode="r", *a, **k):
        f = open(path, mode, *a, **k)
        if "w" not in mode:
            return f
        self.opened += 1
        if self.opened != self.fail_on:
            return f
        real_write = f.write

        def write(data):
            real_write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

        f.write = write
        return f


@pytest.mark.parametrize("fail_on", [1, 2], ids=["parquet-file", "marker"])
def test_disk_full_mid_write_keeps_the_previous_manifest_version(tmp_path, monkeypatch, fail_on):
    old = [_row(0), _row(1, "quarantined")]
    m.write_shard(tmp_path, "00000", old, m.REAL)
    monkeypatch.setattr(m, "open", _FullDisk(fail_on), raising=False)
    with pytest.raises(OSError) as e:
        m.write_shard(tmp_path, "00000", [_row(5), _row(6), _row(7)], m.REAL)
    assert e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    _previous_version_intact(tmp_path, old)
    m.write_shard(tmp_path, "00000", [_row(5)], m.REAL)  # space again: the re-run replaces it
    assert m.read_manifest(tmp_path).column("id").to_pylist() == ["id5"]


def test_failed_marker_rename_restores_the_previous_parquet_file(tmp_path, monkeypatch):
    old = [_row(0)]
    m.write_shard(tmp_path, "00000", old, m.REAL)
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append(Path(dst).name)
        if Path(dst).name.startswith(m.MARKER_PREFIX):
            raise OSError(errno.EIO, "I/O error")
        return real_replace(src, dst)

    monkeypatch.setattr(m.os, "replace", replace)
    with pytest.raises(OSError):
        m.write_shard(tmp_path, "00000", [_row(3), _row(4)], m.REAL)
    monkeypatch.undo()
    assert calls[0] == "part-00000.parquet"  # the new file was already in place when the marker failed
    _previous_version_intact(tmp_path, old)


def test_permission_error_while_writing_keeps_the_previous_version(tmp_path, monkeypatch):
    old = [_row(0)]
    m.write_shard(tmp_path, "00000", old, m.REAL)

    def denied(path, mode="r", *a, **k):
        if "w" in mode:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return open(path, mode, *a, **k)

    monkeypatch.setattr(m, "open", denied, raising=False)
    with pytest.raises(PermissionError):
        m.write_shard(tmp_path, "00000", [_row(9)], m.REAL)
    monkeypatch.undo()
    _previous_version_intact(tmp_path, old)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions (the EACCES variant covers it)")
def test_read_only_manifest_directory_keeps_the_previous_version(tmp_path):
    old = [_row(0)]
    m.write_shard(tmp_path, "00000", old, m.REAL)
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(PermissionError):
            m.write_shard(tmp_path, "00000", [_row(9)], m.REAL)
    finally:
        tmp_path.chmod(0o755)
    _previous_version_intact(tmp_path, old)


# --- rows that point outside the data root ---------------------------------------------------------------------


@pytest.mark.parametrize("uri", ["../../etc/passwd", "/etc/passwd", "videos/../../../etc/passwd"])
def test_escaping_uri_is_rejected_where_manifests_become_files(tmp_path, uri):
    from yume.config import load_profile
    from yume.flows.recaption import build_items
    from yume.tasks.score_and_filter import collect_candidates

    cfg = load_profile("tiny", tmp_path / "work", ["score_and_filter.sources=[real]"])
    rows = [_row(0), _row(1, video_uri=uri)]
    m.write_shard(cfg.workdir_path / "manifests" / "real", "00000", rows, m.REAL)
    with pytest.raises(m.PathEscapeError, match="data root"):
        m.resolve_uri(cfg.sekai_root(), uri)

    items, _ = build_items(cfg, cfg.sekai_root())
    bad = next(it for it in items if it["id"] == "id1")
    assert bad["video_path"] is None and bad["path_error"].startswith("path_escape: ")
    assert next(it for it in items if it["id"] == "id0")["video_path"].startswith(str(cfg.sekai_root()))

    candidates, _ = collect_candidates(cfg)
    bad = next(it for it in candidates if it["id"] == "id1")
    assert bad["video_path"] is None and bad["path_error"].startswith("path_escape: ")


def test_ok_row_with_escaping_uri_fails_validation(tmp_path):
    m.write_shard(tmp_path, "00000", [_row(0), _row(1, video_uri="../../etc/passwd")], m.REAL)
    assert any("video_uri" in p and "escapes" in p for p in m.validate_manifest(tmp_path))
    # A quarantined row may carry the offending path: that is its reason.
    m.write_shard(tmp_path, "00000", [_row(0), _row(1, "quarantined", video_uri="/etc/passwd")], m.REAL)
    assert m.validate_manifest(tmp_path) == []


# --- a real two-node Ray cluster on loopback, with token authentication ----------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopbackCluster:
    """A head and worker nodes on loopback, all with ``RAY_AUTH_MODE=token`` and one random token.

    Every node is ``ray start ... --block`` in its own session, so a node is killed alone (SIGKILL to its process
    group) and teardown touches only this cluster's processes: never ``ray stop``, which would stop every Ray
    on the machine (other tests' and other users' too).
    """

    def __init__(self, head_cpus: int = 1):
        self.tmp = Path(tempfile.mkdtemp(prefix="yray-", dir="/tmp"))  # short: Ray's socket paths must fit 107 chars
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
                    # notice a dead node within seconds, not the default ~30 s
                    "RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "1000",
                    "RAY_health_check_failure_threshold": "3", "RAY_health_check_initial_delay_ms": "0",
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        self.env.pop("RAY_ADDRESS", None)
        self.env.pop("RAY_AUTH_TOKEN_PATH", None)
        self.head: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.head_cpus = head_cpus

    def _node(self, args: list[str], name: str) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "w")
        return subprocess.Popen([RAY, "start", *args, "--num-gpus=0", "--block", "--disable-usage-stats"],
                                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def start(self, workers: int = 1) -> "LoopbackCluster":
        self.head = self._node(["--head", f"--port={self.port}", f"--num-cpus={self.head_cpus}",
                                "--include-dashboard=false", f"--temp-dir={self.tmp}"], "head")
        self.wait_nodes(1)
        for _ in range(workers):
            self.add_worker()
        self.wait_nodes(1 + workers)
        return self

    def add_worker(self) -> subprocess.Popen:
        proc = self._node([f"--address={self.address}", "--num-cpus=1"], f"worker-{len(self.workers)}")
        self.workers.append(proc)
        return proc

    def nodes(self) -> list[dict]:
        out = self.python("import json, ray; ray.init(address=%r, log_to_driver=False); "
                          "print(json.dumps([n for n in ray.nodes() if n['Alive']]))" % self.address, timeout=120)
        return json.loads(out.strip().splitlines()[-1])

    def wait_nodes(self, n: int, timeout: float = 120) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                nodes = self.nodes()
            except AssertionError:
                nodes = []  # the head is not up yet
            if len(nodes) == n or time.monotonic() > deadline:
                assert len(nodes) == n, f"{len(nodes)} of {n} Ray nodes alive"
                return nodes
            time.sleep(1)

    def python(self, code: str, timeout: float = 600, env: dict | None = None) -> str:
        proc = subprocess.run([sys.executable, "-c", code], env={**self.env, **(env or {})}, cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        return proc.stdout

    @staticmethod
    def kill_node(proc: subprocess.Popen) -> None:
        """SIGKILL one node: its `ray start`, GCS / raylet, object store (its worker processes then exit)."""
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def stop(self) -> None:
        for proc in [*self.workers, *([self.head] if self.head else [])]:
            self.kill_node(proc)
        # Ray's worker processes run in sessions of their own: end those that belong to this cluster only.
        me = str(self.tmp)
        for pid in [int(d) for d in os.listdir("/proc") if d.isdigit()]:
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if me in cmd and pid != os.getpid():
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture
def cluster():
    c = LoopbackCluster()
    try:
        yield c
    finally:
        c.stop()


@pytest.mark.slow
def test_token_auth_rejects_a_client_without_the_token(cluster):
    cluster.start(workers=0)
    proc = subprocess.run([sys.executable, "-c", f"import ray; ray.init(address={cluster.address!r})"],
                          env={**cluster.env, "RAY_AUTH_TOKEN": "wrong-" + secrets.token_hex(8)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "auth" in (proc.stdout + proc.stderr).lower()


@pytest.mark.slow
def test_curation_stage_runs_across_two_ray_nodes(cluster, tmp_path, prefect_harness):
    """score_and_filter's two lite-scoring actors, one per node, on a token-authenticated 2-node cluster."""
    from prefect.settings import PREFECT_API_URL

    from yume.flows.curate_real import curate_real

    started = time.perf_counter()
    work = tmp_path / "work"
    small = ["world.n_clips=4", "world.frames_per_clip=96", "world.height=32", "world.width=32",
             "score_and_filter.sources=[real]", "score_and_filter.resources.batch_size=2"]
    curate_real(profile="tiny", workdir=str(work), overrides=small)  # in-process, no Ray
    cluster.start(workers=1)
    code = f"""
import json, ray
from yume.flows.score_and_filter import score_and_filter
out = score_and_filter(profile="tiny", workdir={str(work)!r}, overrides={small!r} + ["ray.address={cluster.address}"])
actors = [a for a in ray._private.state.actors().values() if a["ActorClassName"].endswith("ScoreWorker")]
print(json.dumps({{"out": out, "nodes": sorted({{a["Address"]["NodeID"] for a in actors}})}}))
"""
    result = json.loads(cluster.python(code, env={"PREFECT_API_URL": PREFECT_API_URL.value()}).strip().splitlines()[-1])
    assert len(result["nodes"]) == 2, "the pool's actors should sit on both nodes"
    out = result["out"]
    assert out["candidates"] > 0 and out["scored_ok"] == out["candidates"] and out["rows_quarantined"] == 0
    assert m.validate_manifest(work / "manifests" / "scores") == []
    print(f"two-node score_and_filter: {out['candidates']} videos, {time.perf_counter() - started:.1f} s in all")


SLOW_WORKER = '''
import json, os, time, ray
from pathlib import Path
from yume.config import StageResources
from yume.tasks.ray_pool import ActorPool

class Slow:
    def __init__(self, log_dir):
        self.log, self.node = Path(log_dir), ray.get_runtime_context().get_node_id()
    def run(self, batch):
        out = []
        for item in batch:
            with open(self.log / f"{self.node}.log", "a") as f:
                f.write(f"{item} {os.getpid()}\\n")
            time.sleep(0.4)
            out.append({"item": item, "node": self.node})
        return out

ray.init(address=ADDRESS, log_to_driver=False)
res = StageResources(actors=2, num_cpus=1, batch_size=1, max_restarts=2, max_task_retries=3)
with ActorPool(Slow, LOG_DIR, resources=res) as pool:
    out = pool.map("run", list(range(N)))
print(json.dumps(out))
'''


@pytest.mark.slow
def test_worker_node_killed_mid_stage_loses_and_duplicates_nothing(tmp_path):
    """Kill a worker node while its actor is busy: Ray restarts the actor on the head and retries the lost call;
    every item comes back exactly once, in order."""
    c = LoopbackCluster(head_cpus=2)  # room on the head for the restarted actor
    try:
        c.start(workers=1)
        head = next(n["NodeID"] for n in c.nodes() if n["NodeManagerPort"] and n.get("Resources", {}).get("CPU") == 2)
        logs = tmp_path / "items"
        logs.mkdir()
        n = 24
        code = SLOW_WORKER.replace("ADDRESS", repr(c.address)).replace("LOG_DIR", repr(str(logs))).replace("N", str(n))
        driver = subprocess.Popen([sys.executable, "-c", code], env=c.env, cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # wait until the worker node's actor has done a few items
            done = {p.stem: len(p.read_text().splitlines()) for p in logs.glob("*.log")}
            if any(node != head and k >= 3 for node, k in done.items()):
                break
            time.sleep(0.1)
        else:
            driver.kill()
            pytest.fail(f"the worker node's actor never started: {done}")
        c.kill_node(c.workers[0])
        stdout, stderr = driver.communicate(timeout=300)
        assert driver.returncode == 0, stderr[-5000:]
        out = json.loads(stdout.strip().splitlines()[-1])
        assert [r["item"] for r in out] == list(range(n))  # nothing lost, nothing duplicated, in order
        dead = next(node for node in done if node != head)
        assert {r["node"] for r in out} == {head, dead}
        after = [r for r in out[-4:]]
        assert all(r["node"] == head for r in after), "the last items ran on the surviving node"
    finally:
        c.stop()
