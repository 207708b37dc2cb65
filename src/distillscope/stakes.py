"""High-stakes decision points and per-question views (the paper's AIME case studies).

- `high_stakes(nodes, min_sr_range)`: the nodes table restricted to decision points whose SR
  range is at least the threshold, so that every table computed from it is about the
  consequential nodes only (`--min-sr-range` of `report`, `show`, `compare`,
  `export-weights`). Rows of a node are kept or dropped together, whatever the teacher or
  method, because the SR range belongs to the node.
- `per_question_ranking`: the teacher ranking within each question (figures 5-7, appendix A).
- `sr_range_summary`: the distribution of SR range over distinct decision points.

Pure pandas/numpy over the `nodes` table (docs/method.md#comparing-settings).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from distillscope.analysis import NODE_KEY, decision_points

SR_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
SR_THRESHOLDS = (0.1, 0.3, 0.5)


def check_threshold(min_sr_range: float | None) -> float | None:
    """None, or a threshold in [0, 1] (SR range is a difference of two probabilities)."""
    if min_sr_range is None:
        return None
    t = float(min_sr_range)
    if not (math.isfinite(t) and 0.0 <= t <= 1.0):
        raise ValueError(f"--min-sr-range must be in [0, 1] (an SR range); got {min_sr_range}")
    return t


def high_stakes(nodes: pd.DataFrame, min_sr_range: float | None) -> pd.DataFrame:
    """Rows whose node has `sr_range >= min_sr_range` (all rows when None). Dr. GRPO's
    teacher-free rows follow the same rule, so paired comparisons stay paired."""
    t = check_threshold(min_sr_range)
    if t is None or nodes.empty or "sr_range" not in nodes:
        return nodes
    return nodes[nodes["sr_range"].astype(float) >= t]


def per_question_ranking(nodes: pd.DataFrame, method: str = "gkd") -> pd.DataFrame:
    """One row per (question, teacher): the mean alignment over the teacher's decision points
    in that question, their number, the rank within the question (1 = best; ties by name) and
    whether it is the question's top teacher. Teacher-free rows (Dr. GRPO) are left out."""
    cols = ["qid", "teacher", "mean", "n_nodes", "rank", "top", "question_sr_mean",
            "question_nodes"]
    df, _ = decision_points(nodes, method)
    df = df[df["teacher"].astype(str) != ""]
    if df.empty:
        return pd.DataFrame(columns=cols)
    g = df.groupby(["qid", "teacher"], sort=True)["align"].agg(["mean", "size"]).reset_index()
    g = g.rename(columns={"size": "n_nodes"})
    g = g.sort_values(["qid", "mean", "teacher"], ascending=[True, False, True])
    g["rank"] = g.groupby("qid").cumcount() + 1
    g["top"] = g["rank"] == 1
    nd = df.drop_duplicates(NODE_KEY).groupby("qid")["sr_range"].agg(["mean", "size"])
    g["question_sr_mean"] = g["qid"].map(nd["mean"])
    g["question_nodes"] = g["qid"].map(nd["size"]).astype(int)
    return g[cols].reset_index(drop=True)


def sr_range_summary(nodes: pd.DataFrame, method: str = "gkd") -> dict[str, float]:
    """Distribution of SR range over distinct decision points (a node counts once, however
    many teachers scored it): count, mean, quantiles and the share at or above a few
    thresholds."""
    df, _ = decision_points(nodes, method)
    sr = df.drop_duplicates(NODE_KEY)["sr_range"].to_numpy(float) if len(df) else np.array([])
    out: dict[str, float] = {"n_nodes": float(sr.size),
                             "mean": float(sr.mean()) if sr.size else math.nan}
    for q in SR_QUANTILES:
        out[f"q{int(q * 100):02d}"] = float(np.quantile(sr, q)) if sr.size else math.nan
    for t in SR_THRESHOLDS:
        out[f"share_ge_{t:g}"] = float(np.mean(sr >= t)) if sr.size else math.nan
    return out


def sr_range_values(nodes: pd.DataFrame, method: str = "gkd") -> np.ndarray:
    """SR range of each distinct decision point (for histograms)."""
    df, _ = decision_points(nodes, method)
    return df.drop_duplicates(NODE_KEY)["sr_range"].to_numpy(float) if len(df) else np.array([])
