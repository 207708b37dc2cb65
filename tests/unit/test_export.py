"""export_weights: one row per path token, the weight rule, both formats, atomic writes."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from synthetic_run import SCRIPT_TOKEN, make_synthetic_run
from typer.testing import CliRunner

from distillscope import export
from distillscope.cli import app
from distillscope.export import export_weights, suggested_weight, weights_frame

runner = CliRunner(env={"COLUMNS": "300"})  # no line wrapping in messages


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _one_line_error(res, *names: str) -> None:
    """Exit code 2, one line starting with 'error:' that names each of `names`, no traceback."""
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit), res.exception  # not a traceback
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    for name in names:
        assert name in lines[0], (name, res.output)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_synthetic_run(tmp_path_factory.mktemp("run") / "run")


def test_suggested_weight_rule():
    a = np.array([0.5, 0.0, -0.2, 0.31, math.nan])
    assert list(suggested_weight(a)) == [1.0, 0.0, 0.0, 1.0, 1.0]
    assert list(suggested_weight(a, threshold=0.3, fill=0.0)) == [1.0, 0.0, 0.0, 1.0, 0.0]


def test_weights_frame_rows_and_values(run_dir):
    df = weights_frame(run_dir, "self-1c")
    assert len(df) == 14 * 20  # every token of every representative path
    first = df[(df.qid == "q0") & (df.path_id == 0)].set_index("depth")
    assert first.loc[4, "token"] == SCRIPT_TOKEN and first.loc[4, "token_id"] == 104
    assert bool(first.loc[4, "is_decision"]) and not bool(first.loc[5, "is_decision"])
    assert math.isnan(first.loc[5, "align"]) and first.loc[5, "weight"] == 1.0
    nodes = pd.read_parquet(run_dir / "tables" / "nodes")
    n = nodes[(nodes.qid == "q0") & (nodes.path_id == 0) & (nodes.depth == 4)
              & (nodes.teacher == "self-1c") & (nodes.method == "gkd")]
    a = float(n["align"].iloc[0])
    assert first.loc[4, "align"] == pytest.approx(a)
    assert first.loc[4, "weight"] == (1.0 if a > 0 else 0.0)
    dp = df[df["is_decision"] & df["align"].notna()]
    assert ((dp["align"] > 0) == (dp["weight"] == 1.0)).all()


def test_undefined_cosine_at_a_decision_point_gets_fill(run_dir):
    df = weights_frame(run_dir, "qwen3-8b", fill=0.25).set_index(["qid", "path_id", "depth"])
    row = df.loc[("q1", 1, 4)]
    assert bool(row["is_decision"]) and math.isnan(row["align"]) and row["weight"] == 0.25


def test_export_jsonl_and_parquet_round_trip(run_dir, tmp_path):
    j = export_weights(run_dir, "self-1c", tmp_path / "w.jsonl", threshold=0.3)
    rows = [json.loads(line) for line in j.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 280 and rows[4]["token"] == SCRIPT_TOKEN
    assert rows[1]["align"] is None and rows[1]["weight"] == 1.0
    p = export_weights(run_dir, "self-1c", tmp_path / "w.parquet", threshold=0.3)
    back = pd.read_parquet(p)
    assert list(back.columns) == ["qid", "path_id", "depth", "token_id", "token", "correct",
                                  "is_decision", "align", "weight"]
    assert back["weight"].tolist() == [r["weight"] for r in rows]
    import pyarrow.parquet as pq

    meta = pq.read_schema(p).metadata
    assert meta[b"distillscope.teacher"] == b"self-1c" and meta[b"distillscope.threshold"] == b"0.3"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["w.jsonl", "w.parquet"]  # no temp left


def test_export_drgrpo_uses_teacher_free_rows(run_dir, tmp_path):
    df = weights_frame(run_dir, "self-1c", method="drgrpo")
    assert df["align"].notna().sum() == 14 * 10


def test_export_rejects_bad_arguments(run_dir, tmp_path):
    with pytest.raises(ValueError, match="parquet or .jsonl"):
        export_weights(run_dir, "self-1c", tmp_path / "w.csv")
    with pytest.raises(ValueError, match="qwen3-8b, self-1c"):
        export_weights(run_dir, "nobody", tmp_path / "w.jsonl")
    with pytest.raises(ValueError, match="unknown method"):
        export_weights(run_dir, "self-1c", tmp_path / "w.jsonl", method="ppo")
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------
# Hostile-user sweep: never overwrite a file the tool did not write, one-line errors before any
# work, no silently wrong weights, Dr. GRPO said to be teacher-free.


@pytest.mark.parametrize("name, content", [
    ("mine.parquet", b"precious\n"),
    ("mine.jsonl", b"precious\n"),
    ("mine.jsonl", b'{"qid": "q0", "note": "my own rows"}\n'),  # JSON, but not our keys
    ("mine.pq", None),  # a Parquet table of the user's, other columns
])
def test_export_refuses_to_overwrite_a_file_it_did_not_write(run_dir, tmp_path, name, content):
    out = tmp_path / name
    if content is None:
        pq.write_table(pa.table({"qid": ["q0"], "score": [0.5]}), out)
        content = out.read_bytes()
    else:
        out.write_bytes(content)
    res = invoke("export-weights", run_dir, "--teacher", "self-1c", "--out", out)
    _one_line_error(res, str(out), "not an export")
    assert out.read_bytes() == content
    assert [x.name for x in tmp_path.iterdir()] == [name]  # no temp file left
    with pytest.raises(ValueError, match="refusing to overwrite"):
        export_weights(run_dir, "self-1c", out)


def _strip_marker(path):
    """`path` as an export of an earlier version wrote it: the columns, no MARKER key."""
    table = pq.read_table(path)
    meta = {k: v for k, v in (table.schema.metadata or {}).items()
            if k != export.MARKER.encode()}
    pq.write_table(table.replace_schema_metadata(meta), path)


@pytest.mark.parametrize("name", ["w.parquet", "w.jsonl"])
def test_export_replaces_an_earlier_export_and_an_old_versions_one(run_dir, tmp_path, name):
    out = tmp_path / name
    export_weights(run_dir, "self-1c", out)
    assert export.is_export(out)
    if name.endswith(".parquet"):
        assert pq.read_schema(out).metadata[export.MARKER.encode()] == b"weights"
        _strip_marker(out)
        assert export.MARKER.encode() not in (pq.read_schema(out).metadata or {})
    before = out.read_bytes()
    res = invoke("export-weights", run_dir, "--teacher", "self-1c", "--out", out, "--fill", "0")
    assert res.exit_code == 0, res.output
    assert out.read_bytes() != before
    df = pd.read_parquet(out) if name.endswith(".parquet") else pd.read_json(out, lines=True)
    assert (df.loc[df["align"].isna(), "weight"] == 0).all()
    empty = tmp_path / "empty.jsonl"  # what an export of a run without paths leaves
    empty.write_bytes(b"")
    assert export.is_export(empty)
    export_weights(run_dir, "self-1c", empty)
    assert len(empty.read_text(encoding="utf-8").splitlines()) == 280


def test_export_out_that_is_a_directory_or_under_a_file_is_one_line(run_dir, tmp_path,
                                                                    monkeypatch):
    def no_work(*a, **k):
        raise AssertionError("the run was read before --out was checked")

    monkeypatch.setattr(export, "load_run", no_work)
    d = tmp_path / "x.parquet"
    d.mkdir()
    _one_line_error(invoke("export-weights", run_dir, "--teacher", "self-1c", "--out", d),
                    str(d), "is a directory")
    assert not list(d.iterdir())
    f = tmp_path / "file"
    f.write_bytes(b"mine")
    _one_line_error(invoke("export-weights", run_dir, "--teacher", "self-1c",
                           "--out", f / "w.jsonl"), str(f), "not a directory")
    assert f.read_bytes() == b"mine"
    (tmp_path / "real.jsonl").write_bytes(b"")
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "real.jsonl")
    _one_line_error(invoke("export-weights", run_dir, "--teacher", "self-1c", "--out",
                           tmp_path / "link.jsonl"), "link.jsonl", "symbolic link")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["file", "link.jsonl", "real.jsonl",
                                                           "x.parquet"]


@pytest.mark.parametrize("option, value", [
    ("--threshold", "nan"), ("--threshold", "inf"), ("--threshold", "1.5"),
    ("--threshold", "-2"), ("--fill", "nan"), ("--fill", "inf"), ("--fill", "-1"),
    ("--fill", "2"),
])
@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_export_rejects_threshold_and_fill_outside_their_range(run_dir, tmp_path, option,
                                                               value, suffix):
    out = tmp_path / f"w{suffix}"
    res = invoke("export-weights", run_dir, "--teacher", "self-1c", "--out", out,
                 f"{option}={value}")
    _one_line_error(res, option, "[-1, 1]" if option == "--threshold" else "[0, 1]")
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match=option):
        weights_frame(run_dir, "self-1c", **{option[2:]: float(value)})


def test_export_threshold_and_fill_at_their_bounds(run_dir):
    assert (weights_frame(run_dir, "self-1c", threshold=1.0, fill=0.0)["weight"] == 0).all()
    df = weights_frame(run_dir, "self-1c", threshold=-1.0, fill=1.0)
    assert (df["weight"] == 1).all()  # no synthetic alignment is exactly -1


def test_export_drgrpo_says_its_weights_are_teacher_free(run_dir, tmp_path):
    outs = []
    for teacher in ("self-1c", "qwen3-8b"):
        out = tmp_path / f"{teacher}.parquet"
        res = invoke("export-weights", run_dir, "--teacher", teacher, "--out", out,
                     "--method", "drgrpo")
        assert res.exit_code == 0, res.output
        assert "note: --method drgrpo uses no teacher: these weights are the same for every " \
               "--teacher" in res.output
        assert pq.read_schema(out).metadata[b"distillscope.teacher"] == b""  # not `teacher`
        outs.append(pd.read_parquet(out))
    pd.testing.assert_frame_equal(outs[0], outs[1])
    res = invoke("export-weights", run_dir, "--teacher", "self-1c", "--out", tmp_path / "g.jsonl")
    assert res.exit_code == 0 and "note:" not in res.output, res.output
    assert "drgrpo" in invoke("export-weights", "--help").output


def test_export_error_after_reading_the_run_leaves_the_earlier_export(run_dir, tmp_path,
                                                                      monkeypatch):
    out = tmp_path / "w.jsonl"
    export_weights(run_dir, "self-1c", out)
    before = out.read_bytes()
    _one_line_error(invoke("export-weights", run_dir, "--teacher", "nobody", "--out", out),
                    "nobody")
    assert out.read_bytes() == before

    import distillscope.storefiles as storefiles

    def disk_full(fd):  # the real write: its temp file is on disk when the fsync fails
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(storefiles.os, "fsync", disk_full)
    _one_line_error(invoke("export-weights", run_dir, "--teacher", "self-1c", "--out", out,
                           "--fill", "0"), str(out), "No space left on device")
    assert out.read_bytes() == before
    assert [x.name for x in tmp_path.iterdir()] == ["w.jsonl"]
