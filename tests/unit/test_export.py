"""export_weights: one row per path token, the weight rule, both formats, atomic writes."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from synthetic_run import SCRIPT_TOKEN, make_synthetic_run

from distillscope.export import export_weights, suggested_weight, weights_frame


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
