"""What a top-k teacher costs in fidelity (issue #18): the same run's teachers scored with the
full vocabulary and with top-k rows (models/topk.py, the rule the served `openai` backend
applies), for k in {1, 5, 20, 64}. No server needed.

Per k, over the (node, teacher, method) rows of the teacher methods (gkd, sampled, minillm):
`su_inside` share of (node, teacher) pairs whose S_u is fully revealed (inside the top-k or the
path's token); `mean_abs_dalign` mean |align_topk - align_full|; `max_abs_dalign_inside` the
same maximum over rows whose S_u is inside (0 up to rounding under `restrict: renorm`);
`sign_flips` share of rows where sign(align) changes; `rank_corr` Spearman correlation of the
teachers' mean alignment, full vs top-k, averaged over methods; `mae_<feature>` mean |Δ| of
kl, js, overlap_ratio, overlap_adv and teacher_adv per (node, teacher).

    python benchmarks/topk_fidelity.py --config configs/toy.yaml --out runs/topk-toy
    python benchmarks/topk_fidelity.py --config configs/quickstart.yaml --out runs/topk-qs \
        --threads 1

`--out` holds the pipeline run; an existing finished run there is resumed (nothing resampled),
so the curve can be recomputed for other k without redoing phase 1.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from distillscope import pipeline
from distillscope.config import load_config
from distillscope.models.topk import TopkModel
from distillscope.phase0 import phase0
from distillscope.phase1 import decision_points
from distillscope.phase2 import TEACHER_METHODS, score_teacher_on_question
from distillscope.runtime import Teacher, load_runtime, question_key
from distillscope.store import RunStore

KS = (1, 5, 20, 64)
FEATS = ("kl", "js", "overlap_ratio", "overlap_adv", "teacher_adv")


def score_all(rt: Any, k: int | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Node rows of every teacher on every question (nothing stored), and with k the
    (qid, path_id, depth, teacher, su_inside) table."""
    rows, inside = [], []
    for t in rt.teachers:
        model = TopkModel(t.model, k) if k is not None else t.model
        tk = Teacher(t.spec, model, t.contexts)
        for q in rt.questions:
            if q.qid not in t.contexts:
                continue
            key = question_key(rt, q)
            children = rt.store.read("children", unit_prefix=f"{key}/z-children")
            paths = rt.store.read("paths", unit_prefix=f"{key}/z-children")
            init = rt.store.read("rollouts", unit_prefix=f"{key}/a-init")
            if not len(paths):
                continue
            nodes, _ = score_teacher_on_question(rt, tk, q, paths, children, init)
            rows.append(nodes)
            if k is None:
                continue
            dp = decision_points(children, rt.config.tree.n_sig)
            for p in paths.itertuples():
                sets = model.revealed_ids.get(tuple(int(x) for x in p.response_ids))
                if sets is None:
                    continue
                for depth, node in dp[dp.path_id == p.path_id].groupby("depth"):
                    ok = all(int(tok) in sets[int(depth)] for tok in node.token)
                    inside.append({"qid": q.qid, "path_id": p.path_id, "depth": int(depth),
                                   "teacher": t.spec.name, "su_inside": ok})
    nodes = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    return nodes, pd.DataFrame(inside)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2:
        return math.nan
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def compare(full: pd.DataFrame, top: pd.DataFrame, inside: pd.DataFrame, k: int) -> dict:
    key = ["qid", "path_id", "depth", "teacher", "method"]
    m = full.merge(top, on=key, suffixes=("_f", "_k"))
    m = m[m.method.isin(TEACHER_METHODS)]
    m = m.merge(inside, on=["qid", "path_id", "depth", "teacher"], how="left")
    ok = m.align_f.notna() & m.align_k.notna()
    d = (m.align_k - m.align_f).abs()[ok]
    flips = (np.sign(m.align_f) != np.sign(m.align_k))[ok]
    corr = []
    for _, g in m[ok].groupby("method"):
        per_t = g.groupby("teacher")[["align_f", "align_k"]].mean()
        corr.append(_spearman(per_t.align_f.to_numpy(), per_t.align_k.to_numpy()))
    node = m[m.method == "gkd"]
    su = inside.su_inside if len(inside) else pd.Series(dtype=bool)
    ins = ok & m.su_inside.fillna(False).astype(bool)
    out = {
        "k": k, "nodes": int(len(node)), "rows": int(ok.sum()),
        "su_inside": float(su.mean()) if len(su) else math.nan,
        "mean_abs_dalign": float(d.mean()) if len(d) else math.nan,
        "max_abs_dalign_inside": float((m.align_k - m.align_f).abs()[ins].max())
        if ins.any() else math.nan,
        "sign_flips": float(flips.mean()) if len(flips) else math.nan,
        "rank_corr": float(np.nanmean(corr)) if corr and not all(map(math.isnan, corr))
        else math.nan,
    }
    for f in FEATS:
        out[f"mae_{f}"] = float((node[f"{f}_k"] - node[f"{f}_f"]).abs().mean())
    return out


def run(config_path: str, out: str | Path, ks: tuple[int, ...] = KS,
        overrides: dict[str, Any] | None = None) -> pd.DataFrame:
    config = load_config(config_path, overrides)
    out = Path(out)
    t0 = time.perf_counter()
    models: dict[str, Any] = {}  # one load of each model for the run and the rescoring
    pipeline.run(config, out, models=models)
    t_run = time.perf_counter() - t0
    store = RunStore(out)
    store.open_for(config)
    rt = load_runtime(config, store, models=models)
    phase0(rt)
    full, _ = score_all(rt, None)
    results = []
    for k in ks:
        top, inside = score_all(rt, k)
        results.append(compare(full, top, inside, k))
    df = pd.DataFrame(results)
    df.attrs["seconds"] = time.perf_counter() - t0
    df.attrs["pipeline_seconds"] = t_run
    df.attrs["vocab_size"] = int(rt.student.vocab_size)
    return df


def markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in df.itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v)
                                       for v in r) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/toy.yaml")
    ap.add_argument("--out", required=True)
    ap.add_argument("--k", type=int, nargs="+", default=list(KS))
    ap.add_argument("--set", nargs="*", default=[], help="dotted overrides key=value (YAML)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (1 on a shared machine)")
    a = ap.parse_args(argv)
    if a.threads is not None and a.threads < 1:
        ap.error(f"--threads must be a positive number of threads, got {a.threads}")
    if min(a.k) < 1:
        ap.error(f"--k values must be >= 1, got {min(a.k)}")
    from distillscope.cliutil import _errors, _overrides

    try:
        overrides = _overrides(a.set)
        if a.threads is not None:
            import torch

            torch.set_num_threads(a.threads)
        df = run(a.config, a.out, tuple(a.k), overrides or None)
    except _errors() as err:  # a user error is one line naming the input, exit 2
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    Path(a.out).mkdir(parents=True, exist_ok=True)
    df.to_csv(Path(a.out) / "topk_fidelity.csv", index=False)
    print(json.dumps({"vocab_size": df.attrs["vocab_size"],
                      "seconds": round(df.attrs["seconds"], 1),
                      "pipeline_seconds": round(df.attrs["pipeline_seconds"], 1)}))
    print(markdown(df))
    return 0


if __name__ == "__main__":
    sys.exit(main())
