"""Manifest contract: schema, ids, atomic shards, markers, validation, path escapes."""

import json
import uuid

import duckdb
import pandas as pd
import pyarrow as pa
import pytest

from yume.datasets import manifest as m


def make_row(i: int, status: str = "ok", error: str | None = None, **over) -> dict:
    uri = f"videos/clip{i}.mp4"
    row = {
        "id": m.row_id(uri, f"0-{40 + i}"), "source_uri": uri, "content_hash": "ab" * 32,
        "stage": "curate_real", "stage_version": "1", "config_hash": "cfg", "status": status, "error": error,
        "video_uri": uri, "camera_uri": f"cameras/clip{i}.npz", "start_frame": 0, "end_frame": 40 + i,
        "fps": 30.0, "num_frames": 300, "label_mode": "robust", "keys": "W", "mouse": "·",
        "action_text": "t", "speed": 0.1, "distance": 1.0, "turn_rate_deg": 0.0, "view_rotation_deg": 0.0,
        "caption": "c", "location": "l", "scene": "s", "crowdDensity": "empty", "weather": "sunny",
        "timeOfDay": "day",
    }
    row.update(over)
    return row


def test_row_ids_are_stable_uuid5():
    a = m.row_id("videos/x.mp4", "0-40")
    assert a == m.row_id("videos/x.mp4", "0-40")
    assert a != m.row_id("videos/x.mp4", "0-41")
    assert uuid.UUID(a).version == 5
    assert a == str(uuid.uuid5(m.PROJECT_NAMESPACE, "videos/x.mp4#0-40"))


def test_write_read_roundtrip_and_plain_parquet(tmp_path):
    rows = [make_row(i) for i in range(3)] + [make_row(9, "quarantined", "camera_missing: no file")]
    marker = m.write_shard(tmp_path, "00000", rows, m.REAL, extra={"cache_key": "k"})
    assert marker["rows"] == 4 and marker["status_counts"] == {"ok": 3, "quarantined": 1}
    table = m.read_manifest(tmp_path, m.REAL)
    assert table.num_rows == 4
    assert table.schema.metadata[m.META_KIND] == b"real"
    # Plain Parquet: pandas and DuckDB read the directory, markers are skipped.
    assert len(pd.read_parquet(tmp_path)) == 4
    n = duckdb.sql(f"select count(*) from read_parquet('{tmp_path}/*.parquet')").fetchall()[0][0]
    assert n == 4
    assert m.validate_manifest(tmp_path) == []
    summary = m.summarize_manifest(tmp_path)
    assert summary["status"] == {"ok": 3, "quarantined": 1}
    assert summary["by_keys"] == {"W": 3}
    assert summary["quarantine_reasons"] == {"camera_missing": 1}


def test_rows_that_break_the_schema_are_refused_and_nothing_is_written(tmp_path):
    with pytest.raises(m.ManifestError, match="schema"):
        m.write_shard(tmp_path, "00000", [make_row(0, start_frame="zero")], m.REAL)
    with pytest.raises(m.ManifestError, match="needs an error"):
        m.write_shard(tmp_path, "00000", [make_row(0, status="quarantined")], m.REAL)
    with pytest.raises(m.ManifestError, match="status"):
        m.write_shard(tmp_path, "00000", [make_row(0, status="maybe")], m.REAL)
    with pytest.raises(m.PathEscapeError):
        m.write_shard(tmp_path, "00000", [make_row(0, source_uri="../outside.mp4")], m.REAL)
    assert list(tmp_path.iterdir()) == []


def test_shard_without_marker_is_ignored_and_reported(tmp_path):
    m.write_shard(tmp_path, "00000", [make_row(0)], m.REAL)
    m.write_shard(tmp_path, "00001", [make_row(1)], m.REAL)
    m.marker_path(tmp_path, "00001").unlink()  # a run killed between the Parquet file and its marker
    assert m.completed_shards(tmp_path) == ["00000"]
    assert m.read_manifest(tmp_path).num_rows == 1
    problems = m.validate_manifest(tmp_path)
    assert any("00001" in p and "marker" in p for p in problems)


def test_modified_shard_fails_its_marker(tmp_path):
    m.write_shard(tmp_path, "00000", [make_row(0)], m.REAL)
    path = m.shard_path(tmp_path, "00000")
    path.write_bytes(path.read_bytes()[:-10])
    assert m.completed_shards(tmp_path) == []
    assert m.validate_manifest(tmp_path)


def test_failed_write_keeps_the_previous_shard(tmp_path, monkeypatch):
    m.write_shard(tmp_path, "00000", [make_row(0)], m.REAL)
    before = m.shard_path(tmp_path, "00000").read_bytes()

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(m.os, "replace", boom)
    with pytest.raises(OSError):
        m.write_shard(tmp_path, "00000", [make_row(1), make_row(2)], m.REAL)
    monkeypatch.undo()
    assert m.shard_path(tmp_path, "00000").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_duplicate_ids_and_wrong_schema_version_are_invalid(tmp_path):
    m.write_shard(tmp_path / "a", "00000", [make_row(0)], m.REAL)
    m.write_shard(tmp_path / "a", "00001", [make_row(0)], m.REAL)
    assert any("duplicate" in p for p in m.validate_manifest(tmp_path / "a"))

    old = m.ManifestKind("real", 0, m.REAL.fields, m.REAL.label_columns)
    table = pa.Table.from_pylist([make_row(0)], schema=old.schema)
    import pyarrow.parquet as pq

    (tmp_path / "b").mkdir()
    pq.write_table(table, m.shard_path(tmp_path / "b", "00000"))
    sha = m.file_sha256(m.shard_path(tmp_path / "b", "00000"))
    m.marker_path(tmp_path / "b", "00000").write_text(json.dumps({"sha256": sha}))
    assert any("schema version 0" in p for p in m.validate_manifest(tmp_path / "b"))


@pytest.mark.parametrize("uri", ["../x.mp4", "/etc/passwd", "a/../../x.mp4"])
def test_paths_cannot_escape_the_root(tmp_path, uri):
    with pytest.raises(m.PathEscapeError):
        m.resolve_uri(tmp_path, uri)


def test_symlink_escape_is_rejected(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "link").symlink_to(tmp_path)
    with pytest.raises(m.PathEscapeError):
        m.resolve_uri(tmp_path / "root", "link/secret.mp4")
    assert m.resolve_uri(tmp_path / "root", "videos/a.mp4") == (tmp_path / "root" / "videos/a.mp4").resolve()


def test_the_cli_knows_every_manifest_kind_the_pipeline_writes(tmp_path):
    """`yume manifest` in a fresh process (no stage module imported) reads a `train` manifest: every kind is
    registered in one place the readers load (it said "unknown manifest kind 'train'")."""
    import subprocess
    import sys

    from yume.datasets.training_set import TRAIN

    kinds = m.all_kinds()
    assert {"real", "captions", "synthetic", "events", "scores", "train"} <= set(kinds)
    row = {"id": str(uuid.uuid4()), "source_uri": "v.mp4", "content_hash": "h", "stage": "build_training_set",
           "stage_version": "1", "config_hash": "c", "status": "ok", "error": None, "source": "procedural",
           "video_root": "media", "video_uri": "v.mp4", "clip_key": "k", "start_frame": 0, "end_frame": 8,
           "clip_frames": 9, "fps": 30.0, "keys": "W", "mouse": "·", "t2v_text": "t", "i2v_text": None,
           "image_uri": None, "composite": None, "weight_i2v": 1.0, "weight_t2v": 1.0}
    m.write_shard(tmp_path / "train", "procedural", [row], TRAIN)
    code = "import sys; from yume.cli import main; sys.exit(main(sys.argv[1:]))"
    for action in ("validate", "show"):
        r = subprocess.run([sys.executable, "-c", code, "manifest", action, str(tmp_path / "train")],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "unknown manifest kind" not in r.stdout + r.stderr
