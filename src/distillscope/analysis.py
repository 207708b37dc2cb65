"""Phase 3: the paper's tables 1-6 and figures 3, 4, E.1, E.2 as computed artefacts.

Every function here is pure: it takes the run's tables as pandas DataFrames (columns as in
`schemas.py`) and returns DataFrames or flat dicts with slash-namespaced keys. Nothing needs a
model, and nothing plots (that is `report/plots.py`).

Where this departs from the paper (docs/method.md#statistics):

- Uncertainty is clustered by question. Decision points of one question (and of one path) are
  far from independent, so node-level tests overstate significance. Confidence intervals come
  from a question-clustered bootstrap (resample questions with replacement, keep all their
  nodes) and the correct-vs-incorrect test is a within-question permutation of path labels.
  The paper's node-level Welch t-test is reported next to it for comparison only.
- NaN alignments (cosine undefined: a zero-norm gradient) are dropped, never read as 0, and
  counted (`n_nan`).
- Only decision points enter (|S_u| >= 2 and SR range > 0) when the columns allow the check.

The cluster bootstrap and the permutation test live in `stats.py`; both take an explicit `seed`
(np.random.default_rng(seed)); the same seed gives the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from distillscope.schemas import SCHEMAS
from distillscope.stats import (
    boot_weights,
    clustered_mean_ci,
    grouped_spearman,
    percentile_ci,
    permutation_test,
    ratio_boot,
    weighted_welch,
)

NODE_KEY = ["qid", "path_id", "depth"]
PATH_KEY = ["qid", "path_id"]
METHODS = ("gkd", "sampled", "minillm", "drgrpo")
SPEARMAN_FEATURES = ("depth_norm", "kl", "js", "l2", "prob_cos", "entropy_gap", "overlap_ratio")
CI_METRICS = ("mean_cosine", "weighted_cosine", "teacher_adv")


# ---------------------------------------------------------------------------------------------
# Reading a run (one place, so the store's reader can replace it)


def read_table(run_dir: str | Path, name: str) -> pd.DataFrame:
    """One table of a run (committed rows only) as a DataFrame; empty with the schema's
    columns when absent. The one place this module touches the run store."""
    from distillscope.store import RunStore

    if name not in SCHEMAS:
        raise KeyError(f"unknown table {name!r}; known: {sorted(SCHEMAS)}")
    return RunStore(run_dir).read(name)


# ---------------------------------------------------------------------------------------------
# Selection and the clustered bootstrap


def decision_points(nodes: pd.DataFrame, method: str | None = "gkd") -> tuple[pd.DataFrame, int]:
    """Rows of `method` at decision points with a defined alignment, and the number of rows
    dropped because `align` was NaN."""
    df = nodes if method is None else nodes[nodes["method"] == method]
    if "n_children" in df and "sr_range" in df:
        df = df[(df["n_children"] >= 2) & (df["sr_range"] > 0)]
    nan = df["align"].isna()
    return df[~nan].copy(), int(nan.sum())


# ---------------------------------------------------------------------------------------------
# Table 1 / figure 4: teacher ranking


def teacher_ranking(
    nodes: pd.DataFrame,
    method: str = "gkd",
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """Teachers ranked by `mean`, the question-weighted mean alignment: per question, the mean
    over that teacher's decision points in it (whatever paths they lie on); then the plain mean
    over the questions where it has any, so each question counts once. `mean_nodes` is the
    node-pooled mean (a question with more decision points weighs more), for comparison.

    CIs: question-clustered bootstrap of `mean` itself (each resample recomputes the
    question-weighted mean over the drawn questions). All teachers share the same resampled
    questions, so the gap to the next-ranked teacher gets a paired CI (`gap_ci_*`);
    `separated` says whether that CI excludes 0. The gap is paired on the questions both
    teachers scored (`gap_questions`; a self-* teacher may lack its demonstrations on some):
    the mean over those questions of the difference of the two question means. Row order =
    rank."""
    df, _ = decision_points(nodes, method)
    nan_by_t = (
        nodes[(nodes["method"] == method) & nodes["align"].isna()].groupby("teacher").size()
    )
    teachers = sorted(set(nodes.loc[nodes["method"] == method, "teacher"]))
    cols = ["rank", "teacher", "mean", "ci_low", "ci_high", "ci_half", "mean_nodes", "n_nodes",
            "n_nan", "n_questions", "gap_to_next", "gap_ci_low", "gap_ci_high", "gap_questions",
            "separated"]
    if not teachers:
        return pd.DataFrame(columns=cols)
    qids = sorted(set(df["qid"]))
    q_index = {q: i for i, q in enumerate(qids)}
    w_B_Q = boot_weights(len(qids), n_boot, np.random.default_rng(seed))
    rows, per_q = [], {}
    for t in teachers:
        d = df[df["teacher"] == t]
        codes = d["qid"].map(q_index).to_numpy(dtype=int)
        s_Q = np.bincount(codes, weights=d["align"].to_numpy(), minlength=len(qids))
        n_Q = np.bincount(codes, minlength=len(qids)).astype(float)
        has_Q = (n_Q > 0).astype(float)  # a question counts once where the teacher has nodes
        m_Q = np.divide(s_Q, n_Q, out=np.zeros(len(qids)), where=n_Q > 0)
        boot = ratio_boot(w_B_Q, m_Q, has_Q) if len(qids) >= 2 else np.full(n_boot, np.nan)
        lo, hi = percentile_ci(boot, level)
        per_q[t] = (m_Q, has_Q)
        mean = float(m_Q[n_Q > 0].mean()) if len(d) else math.nan
        rows.append({"teacher": t, "mean": mean, "ci_low": lo, "ci_high": hi,
                     "ci_half": (hi - lo) / 2,
                     "mean_nodes": float(d["align"].mean()) if len(d) else math.nan,
                     "n_nodes": len(d), "n_nan": int(nan_by_t.get(t, 0)),
                     "n_questions": d["qid"].nunique()})
    out = pd.DataFrame(rows)
    out = out.sort_values(["mean", "teacher"], ascending=[False, True], na_position="last")
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    order = list(out["teacher"])
    gaps, glo, ghi, n_gap = [], [], [], []
    for a, b in zip(order, order[1:] + [None], strict=True):
        both = per_q[a][1] * per_q[b][1] if b is not None else np.zeros(len(qids))
        if not both.any():
            gaps.append(math.nan), glo.append(math.nan), ghi.append(math.nan)
            n_gap.append(int(both.sum()))
            continue
        diff_Q = (per_q[a][0] - per_q[b][0]) * both
        boot = ratio_boot(w_B_Q, diff_Q, both) if len(qids) >= 2 else np.full(n_boot, np.nan)
        lo, hi = percentile_ci(boot, level)
        gaps.append(float(diff_Q.sum() / both.sum())), glo.append(lo), ghi.append(hi)
        n_gap.append(int(both.sum()))
    out["gap_to_next"], out["gap_ci_low"], out["gap_ci_high"] = gaps, glo, ghi
    out["gap_questions"] = n_gap
    # a bound within rounding of zero (ties at most nodes) does not exclude zero
    eps = 1e-9
    out["separated"] = (out["gap_ci_low"] > eps) | (out["gap_ci_high"] < -eps)
    return out[cols].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Figure 3, tables 4 and 6: correct vs incorrect paths


def _metric_values(df: pd.DataFrame, metric: str) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """(value, weight, rows) of one metric: mean_cosine = align, weighted_cosine = align with
    weight sr_range, teacher_adv = teacher advantage."""
    if metric == "mean_cosine":
        return df["align"].to_numpy(float), np.ones(len(df)), df
    if metric == "weighted_cosine":
        return df["align"].to_numpy(float), df["sr_range"].to_numpy(float), df
    if metric == "teacher_adv":
        d = df[df["teacher_adv"].notna()]
        return d["teacher_adv"].to_numpy(float), np.ones(len(d)), d
    raise ValueError(f"unknown metric {metric!r}; expected one of {CI_METRICS}")


def correct_vs_incorrect(
    nodes: pd.DataFrame,
    method: str = "gkd",
    *,
    teacher: str | None = None,
    n_perm: int = 10000,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """Correct vs incorrect paths under three metrics (mean cosine, SR-weighted cosine,
    teacher advantage), all teachers pooled unless `teacher` is given.

    delta = correct - incorrect (the paper's sign: negative when incorrect paths align more)
    over all nodes, with a question-clustered bootstrap CI; `p_perm` from `permutation_test`
    (statistic `delta_within`: the same difference restricted to questions having both kinds
    of path); `p_welch`: the paper's node-level Welch test, which ignores clustering."""
    df, n_nan = decision_points(nodes, method)
    if teacher is not None:
        n_nan = int(nodes.loc[(nodes["method"] == method) & (nodes["teacher"] == teacher),
                              "align"].isna().sum())
        df = df[df["teacher"] == teacher]
    rows = []
    for metric in CI_METRICS:
        v, w, d = _metric_values(df, metric)
        corr = d["path_correct"].to_numpy(bool)
        row = {"metric": metric, "teacher": teacher or "all", "method": method}
        sc, nc = np.sum(w[corr] * v[corr]), np.sum(w[corr])
        si, ni = np.sum(w[~corr] * v[~corr]), np.sum(w[~corr])
        row["correct"] = sc / nc if nc > 0 else math.nan
        row["incorrect"] = si / ni if ni > 0 else math.nan
        row["delta"] = row["correct"] - row["incorrect"]
        qcodes, quniq = pd.factorize(d["qid"], sort=True)
        q = len(quniq)
        if q >= 2:
            w_B_Q = boot_weights(q, n_boot, np.random.default_rng(seed))
            s_Q2 = [np.bincount(qcodes[m], (w * v)[m], q) for m in (corr, ~corr)]
            n_Q2 = [np.bincount(qcodes[m], w[m], q) for m in (corr, ~corr)]
            b = ratio_boot(w_B_Q, s_Q2[0], n_Q2[0]) - ratio_boot(w_B_Q, s_Q2[1], n_Q2[1])
            row["delta_ci_low"], row["delta_ci_high"] = percentile_ci(b, level)
        else:
            row["delta_ci_low"] = row["delta_ci_high"] = math.nan
        paths = (
            d.assign(_s=w * v, _n=w)
            .groupby(PATH_KEY, sort=True)
            .agg(s=("_s", "sum"), n=("_n", "sum"), label=("path_correct", "first"))
            .reset_index()
        )
        perm = permutation_test(paths["s"].to_numpy(), paths["n"].to_numpy(),
                                paths["label"].to_numpy(bool), paths["qid"].to_numpy(object),
                                n_perm=n_perm, seed=seed)
        row.update({"delta_within": perm["stat"], "p_perm": perm["p"], "p_perm_min": perm["p_min"],
                    "perm_exact": perm["exact"], "n_questions_mixed": perm["n_questions"],
                    "p_welch": weighted_welch(v[corr], w[corr], v[~corr], w[~corr]),
                    "n_correct": int(corr.sum()), "n_incorrect": int((~corr).sum()),
                    "n_questions": q, "n_nan": n_nan})
        rows.append(row)
    return pd.DataFrame(rows)


def correct_vs_incorrect_by_teacher(nodes: pd.DataFrame, method: str = "gkd", **kw) -> pd.DataFrame:
    """Table 6: `correct_vs_incorrect` for each teacher separately (all three metrics)."""
    mine = nodes[nodes["method"] == method]
    frames = [correct_vs_incorrect(g, method, teacher=t, **kw)
              for t, g in mine.groupby("teacher", sort=True)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# ---------------------------------------------------------------------------------------------
# Table 3, table 5, table 2


def teacher_metrics(nodes: pd.DataFrame, method: str = "gkd") -> pd.DataFrame:
    """Table 3 per teacher: mean cosine, fraction positive (align > 0), SR-weighted cosine
    (sum sr*align / sum sr) and mean signal (mean of sr*align, appendix E.3)."""
    df, _ = decision_points(nodes, method)
    rows = []
    for t, d in df.groupby("teacher", sort=True):
        a, sr = d["align"].to_numpy(float), d["sr_range"].to_numpy(float)
        rows.append({"teacher": t, "n_nodes": len(d), "mean_cosine": a.mean(),
                     "frac_positive": float(np.mean(a > 0)),
                     "weighted_cosine": float(np.sum(sr * a) / np.sum(sr)),
                     "mean_signal": float(np.mean(sr * a))})
    cols = ["teacher", "n_nodes", "mean_cosine", "frac_positive", "weighted_cosine", "mean_signal"]
    return pd.DataFrame(rows, columns=cols)


def within_path_spearman(
    nodes: pd.DataFrame,
    method: str = "gkd",
    *,
    features: Sequence[str] = SPEARMAN_FEATURES,
    min_nodes: int = 5,
    by_teacher: bool = True,
) -> pd.DataFrame:
    """Table 5: Spearman rho between align and each feature within each path (a path = one
    (question, path, teacher) series), averaged over paths. A path is skipped, and counted,
    when it has fewer than `min_nodes` nodes with both values finite (`n_skipped_few`) or when
    either column is constant on it (`n_skipped_constant`). Rows for teacher "all" pool every
    teacher's paths; with `by_teacher`, one block per teacher follows."""
    df, _ = decision_points(nodes, method)
    keys = ["qid", "path_id", "teacher"]
    parts = []
    for f in features:
        if f not in df:
            continue
        d = df.loc[np.isfinite(df[f].astype(float)), keys + ["align", f]]
        r = grouped_spearman(d, keys, "align", f) if len(d) else pd.DataFrame(
            columns=keys + ["n", "constant", "rho"])
        r["why"] = np.where(r["n"] < min_nodes, "few", np.where(r["constant"], "constant", ""))
        r.loc[r["why"] != "", "rho"] = np.nan
        parts.append(r.assign(feature=f))
    cols = keys + ["feature", "rho", "why"]
    pp = pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)
    blocks = [("all", pp)]
    if by_teacher:
        blocks += [(t, g) for t, g in pp.groupby("teacher", sort=True)]
    rows = []
    for label, g in blocks:
        for f in features:
            h = g[g["feature"] == f]
            rho = h["rho"].dropna().astype(float)
            rows.append({"teacher": label, "feature": f,
                         "rho_mean": float(rho.mean()) if len(rho) else math.nan,
                         "rho_sem": float(rho.std(ddof=1) / math.sqrt(len(rho)))
                         if len(rho) > 1 else math.nan,
                         "n_paths": len(rho), "n_skipped_few": int((h["why"] == "few").sum()),
                         "n_skipped_constant": int((h["why"] == "constant").sum())})
    return pd.DataFrame(rows)


def selective_oracle(
    nodes: pd.DataFrame,
    method: str = "gkd",
    *,
    thresholds: Sequence[float] = (0.0, 0.3),
    teacher: str | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """Table 2 (oracle): keep only decision points with align > t. Mean signal = mean of
    sr_range * align over kept nodes (CI: question-clustered bootstrap); % tokens = kept / all
    decision points; % paths beating full = share of (question, path, teacher) series whose
    selective mean signal exceeds their full mean signal (a series with nothing kept has
    signal 0: training on no token moves nothing)."""
    df, _ = decision_points(nodes, method)
    if teacher is not None:
        df = df[df["teacher"] == teacher]
    df = df.assign(signal=df["sr_range"] * df["align"])
    full_by_path = df.groupby(["qid", "path_id", "teacher"])["signal"].mean()
    rows = []
    for t in [None, *thresholds]:
        kept = df if t is None else df[df["align"] > t]
        ci = clustered_mean_ci(kept["signal"], kept["qid"], n_boot=n_boot, seed=seed, level=level)
        row = {"strategy": "full" if t is None else f"selective (t={t:g})",
               "threshold": math.nan if t is None else float(t),
               "teacher": teacher or "all", "mean_signal": ci["mean"],
               "ci_low": ci["ci_low"], "ci_high": ci["ci_high"], "n_nodes": len(kept),
               "pct_tokens": 100 * len(kept) / len(df) if len(df) else math.nan,
               "pct_paths_beat_full": math.nan}
        if t is not None and len(full_by_path):
            sel = kept.groupby(["qid", "path_id", "teacher"])["signal"].mean()
            sel = sel.reindex(full_by_path.index).fillna(0.0)
            row["pct_paths_beat_full"] = 100 * float(np.mean(sel > full_by_path))
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# Methods against the RL baseline, the best-teacher oracle, estimator sanity


def methods_vs_drgrpo(
    nodes: pd.DataFrame,
    methods: Sequence[str] = ("gkd", "sampled", "minillm"),
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """Paired per node: align(method) - align(drgrpo) at the same (question, path, depth).
    Dr. GRPO rows are matched on teacher when stored per teacher, otherwise (teacher-free
    rows) on the node alone. CI: question-clustered bootstrap of the mean difference."""
    base, _ = decision_points(nodes, "drgrpo")
    rows = []
    for m in methods:
        df, _ = decision_points(nodes, m)
        for t, d in df.groupby("teacher", sort=True):
            b = base[base["teacher"] == t]
            if b.empty:
                b = base.drop_duplicates(NODE_KEY)
            j = d.merge(b[NODE_KEY + ["align"]].drop_duplicates(NODE_KEY), on=NODE_KEY,
                        suffixes=("", "_rl"))
            diff = (j["align"] - j["align_rl"]).to_numpy(float)
            ci = clustered_mean_ci(diff, j["qid"], n_boot=n_boot, seed=seed, level=level)
            rows.append({"teacher": t, "method": m, "n_pairs": len(j),
                         "mean_method": float(j["align"].mean()) if len(j) else math.nan,
                         "mean_drgrpo": float(j["align_rl"].mean()) if len(j) else math.nan,
                         "mean_diff": ci["mean"], "ci_low": ci["ci_low"], "ci_high": ci["ci_high"],
                         "frac_method_better": float(np.mean(diff > 0)) if len(j) else math.nan})
    cols = ["teacher", "method", "n_pairs", "mean_method", "mean_drgrpo", "mean_diff",
            "ci_low", "ci_high", "frac_method_better"]
    return pd.DataFrame(rows, columns=cols)


def best_teacher_oracle(nodes: pd.DataFrame, method: str = "gkd") -> pd.DataFrame:
    """Per-token best-teacher oracle: at each decision point take the teacher with the highest
    alignment. One row per teacher: how often it is best (ties share the credit) and its own
    mean on the same nodes; the row "oracle" holds the mean of the per-node maximum."""
    df, _ = decision_points(nodes, method)
    cols = ["teacher", "share_best", "n_best", "mean_align", "n_nodes"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    wide = df.pivot_table(index=NODE_KEY, columns="teacher", values="align", aggfunc="first")
    best = wide.max(axis=1)
    is_best = wide.ge(best - 1e-12, axis=0) & wide.notna()
    credit = is_best.div(is_best.sum(axis=1), axis=0)
    rows = [{"teacher": t, "share_best": float(credit[t].mean()), "n_best": float(credit[t].sum()),
             "mean_align": float(wide[t].mean()), "n_nodes": int(wide[t].notna().sum())}
            for t in wide.columns]
    rows.sort(key=lambda r: (-r["share_best"], r["teacher"]))
    rows.append({"teacher": "oracle", "share_best": 1.0, "n_best": float(len(wide)),
                 "mean_align": float(best.mean()), "n_nodes": len(wide)})
    return pd.DataFrame(rows, columns=cols)


def estimator_sanity(nodes: pd.DataFrame) -> pd.DataFrame:
    """When `align_exact` is known (toy backend): align vs align_exact per method, over rows
    where both are finite. Empty frame when no row has an exact value."""
    cols = ["method", "n", "rmse", "mae", "bias", "pearson_r", "sign_agree"]
    if "align_exact" not in nodes:
        return pd.DataFrame(columns=cols)
    ok = nodes["align"].notna() & nodes["align_exact"].notna()
    rows = []
    for m, d in nodes[ok].groupby("method", sort=True):
        a, e = d["align"].to_numpy(float), d["align_exact"].to_numpy(float)
        err = a - e
        ok_r = len(a) > 1 and a.std() > 0 and e.std() > 0
        r = float(np.corrcoef(a, e)[0, 1]) if ok_r else math.nan
        rows.append({"method": m, "n": len(a), "rmse": float(np.sqrt(np.mean(err**2))),
                     "mae": float(np.mean(np.abs(err))), "bias": float(np.mean(err)),
                     "pearson_r": r, "sign_agree": float(np.mean(np.sign(a) == np.sign(e)))})
    return pd.DataFrame(rows, columns=cols)


# ---------------------------------------------------------------------------------------------
# Everything at once, and the flat summary


def analyze(
    nodes: pd.DataFrame,
    method: str = "gkd",
    *,
    seed: int = 0,
    n_boot: int = 2000,
    n_perm: int = 10000,
) -> dict[str, pd.DataFrame]:
    """All phase-3 tables for one method, keyed by artefact name."""
    kw = {"n_boot": n_boot, "seed": seed}
    present = [m for m in ("gkd", "sampled", "minillm") if (nodes["method"] == m).any()]
    return {
        "teacher_ranking": teacher_ranking(nodes, method, **kw),
        "correct_vs_incorrect": correct_vs_incorrect(nodes, method, n_perm=n_perm, **kw),
        "correct_vs_incorrect_by_teacher": correct_vs_incorrect_by_teacher(
            nodes, method, n_perm=n_perm, **kw),
        "teacher_metrics": teacher_metrics(nodes, method),
        "within_path_spearman": within_path_spearman(nodes, method),
        "selective_oracle": selective_oracle(nodes, method, **kw),
        "methods_vs_drgrpo": methods_vs_drgrpo(nodes, present, **kw),
        "best_teacher_oracle": best_teacher_oracle(nodes, method),
        "estimator_sanity": estimator_sanity(nodes),
    }


def _num(x: object) -> object:
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return None if not math.isfinite(float(x)) else float(x)
    return x


def summarize(nodes: pd.DataFrame, results: dict[str, pd.DataFrame], method: str = "gkd") -> dict:
    """Flat, JSON-ready dict with slash-namespaced keys (NaN -> None)."""
    out: dict[str, object] = {}
    for m in sorted(set(nodes["method"])):
        df, n_nan = decision_points(nodes, m)
        out[f"align/{m}/mean"] = df["align"].mean() if len(df) else math.nan
        out[f"align/{m}/std"] = df["align"].std() if len(df) > 1 else math.nan
        out[f"align/{m}/n_nodes"] = len(df)
        out[f"align/{m}/n_nan"] = n_nan
    out["run/n_questions"] = nodes["qid"].nunique()
    out["run/n_paths"] = len(nodes[PATH_KEY].drop_duplicates())
    for r in results["teacher_ranking"].itertuples():
        for k in ("rank", "mean", "ci_low", "ci_high", "mean_nodes", "n_nodes", "n_nan",
                  "gap_to_next", "gap_ci_low", "gap_ci_high", "separated"):
            out[f"ranking/{method}/{r.teacher}/{k}"] = getattr(r, k)
    if len(results["teacher_ranking"]):
        out[f"ranking/{method}/first"] = results["teacher_ranking"]["teacher"].iloc[0]
    for r in results["correct_vs_incorrect"].itertuples():
        for k in ("correct", "incorrect", "delta", "delta_ci_low", "delta_ci_high", "p_perm",
                  "p_perm_min", "p_welch", "n_questions_mixed", "n_correct", "n_incorrect"):
            out[f"correct_vs_incorrect/{method}/{r.metric}/{k}"] = getattr(r, k)
    for r in results["teacher_metrics"].itertuples():
        for k in ("frac_positive", "weighted_cosine", "mean_signal"):
            out[f"teacher/{method}/{r.teacher}/{k}"] = getattr(r, k)
    for r in results["selective_oracle"].itertuples():
        name = "full" if r.strategy == "full" else f"t{r.threshold:g}"
        for k in ("mean_signal", "pct_tokens", "pct_paths_beat_full"):
            out[f"oracle/{method}/{name}/{k}"] = getattr(r, k)
    sp = results["within_path_spearman"]
    for r in sp[sp["teacher"] == "all"].itertuples():
        out[f"spearman/{method}/{r.feature}"] = r.rho_mean
    for r in results["methods_vs_drgrpo"].itertuples():
        out[f"vs_drgrpo/{r.method}/{r.teacher}/mean_diff"] = r.mean_diff
    bt = results["best_teacher_oracle"]
    for r in bt.itertuples():
        if r.teacher == "oracle":
            out[f"best_teacher/{method}/oracle_mean"] = r.mean_align
        else:
            out[f"best_teacher/{method}/{r.teacher}/share_best"] = r.share_best
            out[f"best_teacher/{method}/{r.teacher}/mean"] = r.mean_align
    for r in results["estimator_sanity"].itertuples():
        out[f"estimator/{r.method}/rmse"] = r.rmse
        out[f"estimator/{r.method}/pearson_r"] = r.pearson_r
    return {k: _num(v) for k, v in out.items()}
