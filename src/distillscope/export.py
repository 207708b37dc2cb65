"""Per-token alignment weights for a trainer (`distillscope export-weights`).

One row per token of every representative path: qid, path_id, depth, token_id, token (text,
untrusted), correct (the path's outcome), is_decision, align (NaN/null where undefined or not a
decision point) and a suggested loss weight for distilling from `teacher` with `method`:

    weight = 1.0   where align > threshold        (the teacher pushes toward success)
    weight = 0.0   where align <= threshold       (orthogonal or harmful: skip the token)
    weight = fill  where align is unknown         (not a decision point, or cosine undefined)

`fill` defaults to 1.0, i.e. keep ordinary distillation where the diagnostic has no evidence;
fill = 0.0 distils only where alignment is known to be positive (the oracle of appendix E.3).
`min_sr_range` keeps only high-stakes decision points (SR range >= it); the others count as
unknown and get `fill`.
The format follows the suffix of `out_path`: .parquet (or .pq) or .jsonl. The file is written
atomically (temp file, fsync, rename).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from distillscope.analysis import NODE_KEY, decision_points
from distillscope.report.data import NO_TEACHER, load_run
from distillscope.stakes import high_stakes
from distillscope.store import atomic_write_bytes

SCHEMA = pa.schema([
    ("qid", pa.string()), ("path_id", pa.int32()), ("depth", pa.int32()),
    ("token_id", pa.int32()), ("token", pa.string()), ("correct", pa.bool_()),
    ("is_decision", pa.bool_()), ("align", pa.float64()), ("weight", pa.float64()),
])


def suggested_weight(align: np.ndarray, threshold: float = 0.0, fill: float = 1.0) -> np.ndarray:
    """1 where align > threshold, 0 where align <= threshold, `fill` where align is NaN."""
    a = np.asarray(align, dtype=float)
    w = np.where(a > threshold, 1.0, 0.0)
    return np.where(np.isnan(a), fill, w)


def weights_frame(run_dir: str | Path, teacher: str, method: str = "gkd",
                  threshold: float = 0.0, fill: float = 1.0,
                  min_sr_range: float | None = None) -> pd.DataFrame:
    """The export as a DataFrame (rows in qid, path_id, depth order). With `min_sr_range`,
    a decision point whose SR range is below it counts as no decision point (align NaN,
    weight `fill`)."""
    run = load_run(run_dir, ("paths", "nodes"))
    if teacher not in run.teachers:
        raise ValueError(f"unknown teacher {teacher!r}; this run has: "
                         f"{', '.join(run.teachers) or 'none'}")
    if method not in run.methods:
        raise ValueError(f"unknown method {method!r}; this run has: {', '.join(run.methods)}")
    run.tables["nodes"] = high_stakes(run.nodes, min_sr_range)
    nodes, _ = decision_points(run.nodes, method)
    mine = nodes[nodes["teacher"] == teacher]
    if mine.empty:  # teacher-free rows (Dr. GRPO stored once for all teachers)
        mine = nodes[nodes["teacher"].isin(NO_TEACHER) | nodes["teacher"].isna()]
    align = mine.drop_duplicates(NODE_KEY).set_index(NODE_KEY)["align"]
    all_nodes = run.nodes[(run.nodes["method"] == method)]
    dp = set(map(tuple, decision_points(all_nodes, None)[0][NODE_KEY].itertuples(index=False)))
    rows = []
    for p in run.tables["paths"].sort_values(["qid", "path_id"]).itertuples(index=False):
        toks = list(p.tokens) if p.tokens is not None else []
        ids = list(p.response_ids) if p.response_ids is not None else []
        for d, tok in enumerate(toks):
            key = (p.qid, p.path_id, d)
            a = float(align.get(key, math.nan))
            rows.append({"qid": p.qid, "path_id": int(p.path_id), "depth": d,
                         "token_id": int(ids[d]) if d < len(ids) else -1, "token": str(tok),
                         "correct": bool(p.correct),
                         "is_decision": key in dp or math.isfinite(a), "align": a})
    df = pd.DataFrame(rows, columns=[f.name for f in SCHEMA if f.name != "weight"])
    df["weight"] = suggested_weight(df["align"].to_numpy(float), threshold, fill)
    return df


def export_weights(
    run_dir: str | Path,
    teacher: str,
    out_path: str | Path,
    method: str = "gkd",
    threshold: float = 0.0,
    *,
    fill: float = 1.0,
    min_sr_range: float | None = None,
) -> Path:
    """Write the per-token weights of `teacher` (see the module docstring) to `out_path`
    (.parquet/.pq or .jsonl) atomically and return the path."""
    out = Path(out_path)
    suffix = out.suffix.lower()
    if suffix not in (".parquet", ".pq", ".jsonl"):
        raise ValueError(f"{out}: unknown format {suffix or '(none)'}; use .parquet or .jsonl")
    df = weights_frame(run_dir, teacher, method, threshold, fill, min_sr_range)
    if suffix == ".jsonl":
        lines = []
        for r in df.itertuples(index=False):
            d = r._asdict()
            d["align"] = None if math.isnan(d["align"]) else d["align"]
            d["weight"] = None if math.isnan(d["weight"]) else d["weight"]
            lines.append(json.dumps(d, ensure_ascii=False, allow_nan=False))
        data = ("\n".join(lines) + ("\n" if lines else "")).encode("utf-8")
    else:
        table = pa.Table.from_pandas(df, schema=SCHEMA, preserve_index=False)
        table = table.replace_schema_metadata({
            "distillscope.teacher": teacher, "distillscope.method": method,
            "distillscope.threshold": repr(float(threshold)), "distillscope.fill": repr(fill),
            "distillscope.min_sr_range": repr(min_sr_range),
        })
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        data = sink.getvalue().to_pybytes()
    atomic_write_bytes(out, data)
    return out
