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
`threshold` must lie in [-1, 1] (align is a cosine) and `fill` in [0, 1] (a weight).

Dr. GRPO (`method="drgrpo"`) uses no teacher: its weights are the same whatever `teacher`
names, and the Parquet metadata records its teacher as "".

The format follows the suffix of `out_path`: .parquet (or .pq) or .jsonl. The file is written
atomically (temp file, fsync, rename), after every check, so an error leaves no partial file. An
existing `out_path` is replaced only if it is an earlier export (`is_export`: the Parquet
marker `distillscope.export`, or this module's columns / JSONL keys, which earlier versions
wrote too) or empty; anything else (a user's file, a directory, a symbolic link) is refused.
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
from distillscope.store import atomic_write_bytes, nearest_existing_parent

SCHEMA = pa.schema([
    ("qid", pa.string()), ("path_id", pa.int32()), ("depth", pa.int32()),
    ("token_id", pa.int32()), ("token", pa.string()), ("correct", pa.bool_()),
    ("is_decision", pa.bool_()), ("align", pa.float64()), ("weight", pa.float64()),
])
COLUMNS = SCHEMA.names
MARKER = "distillscope.export"  # Parquet schema-metadata key: this file is an export
TEACHER_FREE = ("drgrpo",)  # methods whose alignment does not depend on the teacher
_MAX_LINE = 1 << 20  # the first JSONL line read by is_export (a row is far shorter)


def check_options(threshold: float, fill: float) -> tuple[float, float]:
    """`threshold` in [-1, 1] and `fill` in [0, 1], as floats; ValueError naming the option."""
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        t = math.nan
    if not (math.isfinite(t) and -1.0 <= t <= 1.0):
        raise ValueError(f"--threshold {threshold}: give a number in [-1, 1] (the alignment "
                         "is a cosine; tokens above the threshold get weight 1)")
    try:
        f = float(fill)
    except (TypeError, ValueError):
        f = math.nan
    if not (math.isfinite(f) and 0.0 <= f <= 1.0):
        raise ValueError(f"--fill {fill}: give a weight in [0, 1] (the weight of tokens whose "
                         "alignment is unknown)")
    return t, f


def is_export(path: Path) -> bool:
    """Whether the file `path` is an earlier export (of this or an earlier version): Parquet
    with the MARKER metadata key or exactly COLUMNS, or JSONL whose first line is an object
    with exactly these keys. An empty file counts (the JSONL export of a run with no
    representative path is empty): overwriting it loses nothing."""
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
            if not head:
                return True
            if head == b"PAR1":
                schema = pq.read_schema(path)
                return MARKER.encode() in (schema.metadata or {}) or schema.names == COLUMNS
            fh.seek(0)
            row = json.loads(fh.readline(_MAX_LINE))
        return isinstance(row, dict) and sorted(row) == sorted(COLUMNS)
    except (OSError, ValueError, pa.ArrowException):
        return False


def check_out(out: Path) -> None:
    """Refuse an `out` that cannot be written, or whose file is not an earlier export."""
    if out.is_symlink():
        raise ValueError(f"--out {out} is a symbolic link; give the path of the file itself")
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory; give FILE.parquet or FILE.jsonl")
    if out.exists():
        if not out.is_file():
            raise ValueError(f"--out {out} exists and is not a regular file; give a new "
                             "FILE.parquet or FILE.jsonl")
        if not is_export(out):
            raise ValueError(f"--out {out} exists and is not an export of distillscope "
                             "export-weights; refusing to overwrite it (give a new file name, "
                             "or move it away)")
    if not (folder := nearest_existing_parent(out)).is_dir():
        raise ValueError(f"--out {out}: {folder} is not a directory")


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
    threshold, fill = check_options(threshold, fill)
    run = load_run(run_dir, ("paths", "nodes"))
    if teacher not in run.teachers:
        raise run.unknown_teacher(teacher, run.teachers)
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
    (.parquet/.pq or .jsonl) atomically and return the path. `out_path`, `threshold` and
    `fill` are checked before the run is read; ValueError names the bad argument."""
    out = Path(out_path)
    suffix = out.suffix.lower()
    if suffix not in (".parquet", ".pq", ".jsonl"):
        raise ValueError(f"{out}: unknown format {suffix or '(none)'}; use .parquet or .jsonl")
    threshold, fill = check_options(threshold, fill)
    check_out(out)
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
            MARKER: "weights",
            "distillscope.teacher": "" if method in TEACHER_FREE else teacher,
            "distillscope.method": method,
            "distillscope.threshold": repr(float(threshold)), "distillscope.fill": repr(fill),
            "distillscope.min_sr_range": repr(min_sr_range),
        })
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        data = sink.getvalue().to_pybytes()
    try:
        atomic_write_bytes(out, data)
    except OSError as err:  # permission, disk full, a race with the checks above
        raise ValueError(f"--out {out}: cannot write it ({err.strerror or err})") from None
    return out
