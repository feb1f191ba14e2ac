"""Parquet manifests: the contract between stages (DESIGN.md, "Manifests").

A manifest is a directory of per-shard Parquet files, one schema per manifest kind (declared here with
pyarrow and versioned in the schema metadata). A shard is written atomically: the Parquet file goes to a
hidden temp name and is renamed into place, then a completion marker ``_SUCCESS.<shard>.json`` records
its row count and sha256. Readers only trust shards whose marker matches the file, so a killed run never
exposes half a shard, and a re-run redoes exactly the shards without a valid marker. Marker and temp names
start with ``_`` or ``.``, so pandas, pyarrow and DuckDB read the directory as one plain dataset.

Every row carries: a stable ``id`` (uuid5 of the source URI and span under the project namespace),
``source_uri`` (relative to a configured data root; escaping paths are rejected), ``content_hash`` of the
source bytes, ``stage``, ``stage_version``, ``config_hash``, ``status`` (``ok``/``quarantined``) and
``error`` (the reason, for quarantined rows).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

# Fixed namespace for row ids: uuid5(NAMESPACE_URL, "yume-1.5 pipeline").
PROJECT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://yume.pipeline/manifest")
STATUSES = ("ok", "quarantined")
MARKER_PREFIX = "_SUCCESS."
META_KIND = b"yume.manifest.kind"
META_VERSION = b"yume.manifest.schema_version"


class ManifestError(ValueError):
    """A manifest, shard or row violates the contract."""


class PathEscapeError(ManifestError):
    """A path points outside its configured data root."""


COMMON_FIELDS = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("source_uri", pa.string(), nullable=False),
    pa.field("content_hash", pa.string(), nullable=False),
    pa.field("stage", pa.string(), nullable=False),
    pa.field("stage_version", pa.string(), nullable=False),
    pa.field("config_hash", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),
    pa.field("error", pa.string(), nullable=True),
]


@dataclass(frozen=True)
class ManifestKind:
    """One manifest kind: its name, schema version and stage-specific columns."""

    name: str
    version: int
    fields: tuple[pa.Field, ...]
    label_columns: tuple[str, ...] = ()  # columns `manifest show` counts by

    @property
    def schema(self) -> pa.Schema:
        meta = {META_KIND: self.name.encode(), META_VERSION: str(self.version).encode()}
        return pa.schema(COMMON_FIELDS + list(self.fields), metadata=meta)


REAL = ManifestKind(
    name="real",
    version=1,
    fields=(
        pa.field("video_uri", pa.string(), nullable=False),
        pa.field("camera_uri", pa.string()),
        pa.field("start_frame", pa.int64()),  # first transition of the segment
        pa.field("end_frame", pa.int64()),  # exclusive
        pa.field("fps", pa.float64()),
        pa.field("num_frames", pa.int64()),  # frames in the whole clip
        pa.field("label_mode", pa.string()),
        pa.field("keys", pa.string()),
        pa.field("mouse", pa.string()),
        pa.field("action_text", pa.string()),
        pa.field("speed", pa.float64()),  # units/s (Yume 1.0's v)
        pa.field("distance", pa.float64()),
        pa.field("turn_rate_deg", pa.float64()),
        pa.field("view_rotation_deg", pa.float64()),
        pa.field("caption", pa.string()),
        pa.field("location", pa.string()),
        pa.field("scene", pa.string()),
        pa.field("crowdDensity", pa.string()),
        pa.field("weather", pa.string()),
        pa.field("timeOfDay", pa.string()),
    ),
    label_columns=("keys", "mouse"),
)

KINDS: dict[str, ManifestKind] = {REAL.name: REAL}


def register_kind(kind: ManifestKind) -> ManifestKind:
    """Stages declare their manifest kinds here (one schema per kind)."""
    if kind.name in KINDS and KINDS[kind.name] != kind:
        raise ManifestError(f"manifest kind {kind.name!r} is already registered with another schema")
    KINDS[kind.name] = kind
    return kind


def row_id(source_uri: str, span: str) -> str:
    """Stable id of a row: uuid5 of the relative source URI and its span (e.g. "0-120" or "clip")."""
    return str(uuid.uuid5(PROJECT_NAMESPACE, f"{source_uri}#{span}"))


def relative_uri(root: Path, path: Path | str) -> str:
    """``path`` relative to ``root`` as a POSIX URI; raises PathEscapeError if it leaves the root."""
    root = Path(root).resolve()
    full = (root / path).resolve() if not Path(path).is_absolute() else Path(path).resolve()
    try:
        return full.relative_to(root).as_posix()
    except ValueError:
        raise PathEscapeError(f"path {str(path)!r} escapes the data root {str(root)!r}") from None


def resolve_uri(root: Path, uri: str) -> Path:
    """Absolute path of a manifest URI under ``root``; rejects absolute URIs and ``..`` escapes."""
    if PurePosixPath(uri).is_absolute() or Path(uri).is_absolute():
        raise PathEscapeError(f"URI {uri!r} must be relative to the data root")
    relative_uri(root, uri)  # raises if it escapes (symlinks included, via resolve)
    return Path(root).resolve() / uri


def recordable_uri(root: Path, uri: str) -> str:
    """The URI as written if it stays under the root; an escaping one (a quarantined row's input) is recorded
    under an ``escaped/`` prefix so that the row itself never points outside the data root."""
    try:
        return relative_uri(root, uri)
    except PathEscapeError:
        return "escaped/" + uri.replace("..", "__").lstrip("/")


def file_sha256(*paths: Path, chunk: int = 1 << 20) -> str:
    """sha256 over the bytes of one or more files, in order (streamed)."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    return h.hexdigest()


def _write_temp(path: Path, data: bytes) -> Path:
    """``data`` fully written and fsynced to a hidden temp file beside ``path`` (removed again on failure)."""
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = _write_temp(path, data)
    try:
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def shard_path(manifest_dir: Path, shard: str) -> Path:
    return Path(manifest_dir) / f"part-{shard}.parquet"


def marker_path(manifest_dir: Path, shard: str) -> Path:
    return Path(manifest_dir) / f"{MARKER_PREFIX}{shard}.json"


def write_shard(
    manifest_dir: Path, shard: str, rows: list[dict[str, Any]], kind: ManifestKind, extra: dict | None = None
) -> dict:
    """Validate ``rows`` against the kind's schema and write them as one shard, atomically.

    Returns the completion marker (rows, status counts, sha256, plus ``extra`` such as a cache key).
    """
    manifest_dir = Path(manifest_dir)
    manifest_dir.mkdir(parents=True, exist_ok=True)
    for row in rows:
        _check_row(row)
    try:
        table = pa.Table.from_pylist(rows, schema=kind.schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError) as e:
        raise ManifestError(f"rows do not match the {kind.name!r} v{kind.version} schema: {e}") from e
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    data = sink.getvalue().to_pybytes()
    marker = {
        "shard": shard,
        "kind": kind.name,
        "schema_version": kind.version,
        "rows": len(rows),
        "status_counts": dict(Counter(r["status"] for r in rows)),
        "sha256": hashlib.sha256(data).hexdigest(),
        **(extra or {}),
    }
    _commit_shard(manifest_dir, shard, data, json.dumps(marker, indent=1).encode())
    return marker


def _commit_shard(manifest_dir: Path, shard: str, data: bytes, marker: bytes) -> None:
    """Replace a shard and its marker so that a write error leaves the previous version valid and readable.

    Both new files are written in full (and fsynced) to temp names first: a full disk or a read-only directory
    fails there, before anything readers see has changed. Then two renames (no data to write): the Parquet file,
    then its marker. Between the two the old marker does not match the new file (readers skip the shard, a re-run
    redoes it); should the second rename fail, the previous Parquet file is put back from a hard link.
    """
    part, mark = shard_path(manifest_dir, shard), marker_path(manifest_dir, shard)
    tmp_part = _write_temp(part, data)
    backup = part.with_name(f".bak-{part.name}-{os.getpid()}")
    try:
        tmp_mark = _write_temp(mark, marker)
        try:
            if part.exists() and mark.exists():
                backup.unlink(missing_ok=True)
                os.link(part, backup)
            os.replace(tmp_part, part)
            try:
                os.replace(tmp_mark, mark)
            except BaseException:
                if backup.exists():
                    os.replace(backup, part)  # the old file matches the old marker again
                raise
        finally:
            tmp_mark.unlink(missing_ok=True)
    finally:
        tmp_part.unlink(missing_ok=True)
        backup.unlink(missing_ok=True)


def _check_row(row: dict[str, Any]) -> None:
    if row.get("status") not in STATUSES:
        raise ManifestError(f"row {row.get('id')}: status must be one of {STATUSES}, got {row.get('status')!r}")
    if row["status"] == "quarantined" and not row.get("error"):
        raise ManifestError(f"row {row.get('id')}: a quarantined row needs an error text")
    uri = row.get("source_uri") or ""
    if _escapes(uri):
        raise PathEscapeError(f"row {row.get('id')}: source_uri {uri!r} must be relative to the data root")


def read_marker(manifest_dir: Path, shard: str) -> dict | None:
    """The shard's completion marker if the shard is complete and intact, else None."""
    mp, sp = marker_path(manifest_dir, shard), shard_path(manifest_dir, shard)
    if not (mp.is_file() and sp.is_file()):
        return None
    try:
        marker = json.loads(mp.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return marker if marker.get("sha256") == file_sha256(sp) else None


def completed_shards(manifest_dir: Path) -> list[str]:
    """Names of the shards whose marker matches their Parquet file, sorted."""
    d = Path(manifest_dir)
    names = sorted(p.name[len(MARKER_PREFIX) : -len(".json")] for p in d.glob(f"{MARKER_PREFIX}*.json"))
    return [n for n in names if read_marker(d, n) is not None]


# Every module that declares manifest kinds: the one place readers (the CLI, validate, show) load them from.
KIND_MODULES = ("yume.datasets.manifest_kinds", "yume.datasets.training_set")


def all_kinds() -> dict[str, ManifestKind]:
    """Every manifest kind the pipeline writes (importing the modules that declare them)."""
    import importlib

    for module in KIND_MODULES:
        importlib.import_module(module)
    return KINDS


def _kind_of(schema: pa.Schema) -> ManifestKind:
    meta = schema.metadata or {}
    name = meta.get(META_KIND, b"").decode()
    if name not in all_kinds():
        raise ManifestError(f"unknown manifest kind {name!r} (known: {sorted(KINDS)})")
    kind = KINDS[name]
    version = int(meta.get(META_VERSION, b"0"))
    if version != kind.version:
        raise ManifestError(f"{name!r} manifest has schema version {version}, this code reads {kind.version}")
    if not schema.equals(kind.schema, check_metadata=False):
        raise ManifestError(f"schema of this {name!r} manifest differs from the declared v{kind.version} schema")
    return kind


def read_manifest(manifest_dir: Path, kind: ManifestKind | None = None) -> pa.Table:
    """All complete shards of a manifest as one table, schema-validated. Incomplete shards are ignored."""
    d = Path(manifest_dir)
    if not d.is_dir():
        raise ManifestError(f"no manifest directory at {d}")
    tables = []
    for shard in completed_shards(d):
        t = pq.read_table(shard_path(d, shard))
        found = _kind_of(t.schema)
        if kind is not None and found.name != kind.name:
            raise ManifestError(f"{shard_path(d, shard)} is a {found.name!r} manifest, expected {kind.name!r}")
        kind = found
        tables.append(t)
    if not tables:
        if kind is None:
            raise ManifestError(f"manifest {d} has no complete shards")
        return kind.schema.empty_table()
    return pa.concat_tables(tables)


def validate_manifest(manifest_dir: Path) -> list[str]:
    """Every contract violation found, as messages (empty list = valid)."""
    d = Path(manifest_dir)
    if not d.is_dir():
        return [f"no manifest directory at {d}"]
    problems: list[str] = []
    parts = sorted(p.name[len("part-") : -len(".parquet")] for p in d.glob("part-*.parquet"))
    complete = set(completed_shards(d))
    for shard in parts:
        if shard not in complete:
            problems.append(f"shard {shard!r} has no valid completion marker (incomplete or modified)")
    if not complete:
        problems.append("no complete shards")
        return problems
    try:
        table = read_manifest(d)
    except (ManifestError, pa.ArrowException, OSError) as e:
        return problems + [str(e)]
    problems += _validate_rows(table)
    return problems


def _validate_rows(table: pa.Table) -> list[str]:
    problems = []
    ids = table.column("id").to_pylist()
    dup = [i for i, c in Counter(ids).items() if c > 1]
    if dup:
        problems.append(f"{len(dup)} duplicate row ids (e.g. {dup[0]})")
    uri_columns = [c for c in table.column_names if c.endswith("_uri") and c != "source_uri"]
    for row in table.select(["id", "source_uri", "status", "error"] + uri_columns).to_pylist():
        try:
            _check_row(row)
        except ManifestError as e:
            problems.append(str(e))
        if row["status"] == "ok" and row["error"]:
            problems.append(f"row {row['id']}: status ok but error {row['error']!r}")
        if row["status"] == "ok":  # a quarantined row may carry the offending path as its reason
            for col in uri_columns:
                if row[col] and _escapes(row[col]):
                    problems.append(f"row {row['id']}: {col} {row[col]!r} escapes its data root")
    return problems


def _escapes(uri: str) -> bool:
    """True for a URI that is absolute or climbs out with ``..`` (checked without touching the filesystem)."""
    return PurePosixPath(uri).is_absolute() or Path(uri).is_absolute() or ".." in PurePosixPath(uri).parts


def summarize_manifest(manifest_dir: Path) -> dict:
    """Counts by status and by label columns, plus kind and schema version (for `yume manifest show`)."""
    table = read_manifest(manifest_dir)
    kind = _kind_of(table.schema)
    summary: dict[str, Any] = {
        "path": str(manifest_dir),
        "kind": kind.name,
        "schema_version": kind.version,
        "shards": len(completed_shards(manifest_dir)),
        "rows": table.num_rows,
        "status": dict(Counter(table.column("status").to_pylist())),
    }
    ok = table.filter(pc.equal(table.column("status"), "ok"))
    for col in kind.label_columns:
        summary[f"by_{col}"] = dict(Counter(ok.column(col).to_pylist()).most_common())
    errors = Counter(e.split(":")[0] for e in table.column("error").to_pylist() if e)
    summary["quarantine_reasons"] = dict(errors.most_common())
    return summary


# The model-driven curation stages' kinds (captions, synthetic, events, scores) register themselves on import;
# importing them here makes every reader of this module (`yume manifest show`, validate) know them.
from yume.datasets import manifest_kinds as _manifest_kinds  # noqa: E402,F401
