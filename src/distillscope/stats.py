"""Question-clustered statistics: the cluster bootstrap and the within-question permutation
test that `analysis` uses, and the paper's node-level Welch test it reports for comparison.

Decision points of one question (and of one path) are far from independent, so every interval
here resamples whole clusters (questions) and the permutation test moves whole paths within a
question (docs/method.md#statistics). Pure numpy; an explicit `seed` gives the same numbers each
time.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

__all__ = [
    "boot_weights",
    "clustered_mean_ci",
    "grouped_spearman",
    "percentile_ci",
    "permutation_test",
    "ratio_boot",
    "weighted_welch",
]


def boot_weights(n_clusters: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(B, Q) counts: how often each question is drawn in each bootstrap resample."""
    if n_clusters == 0:
        return np.zeros((n_boot, 0))
    return rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=n_boot)


def ratio_boot(w_B_Q: np.ndarray, s_Q: np.ndarray, n_Q: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w_B_Q @ s_Q) / (w_B_Q @ n_Q)


def percentile_ci(boot_B: np.ndarray, level: float) -> tuple[float, float]:
    boot_B = boot_B[np.isfinite(boot_B)]
    if boot_B.size == 0:
        return math.nan, math.nan
    a = (1 - level) / 2
    lo, hi = np.quantile(boot_B, [a, 1 - a])
    return float(lo), float(hi)


def clustered_mean_ci(
    values: Sequence[float] | np.ndarray,
    clusters: Sequence[object] | np.ndarray,
    weights: Sequence[float] | np.ndarray | None = None,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float]:
    """(Weighted) mean of `values` with a percentile CI from a cluster bootstrap: resample the
    clusters with replacement, keep all their values, recompute the ratio mean."""
    v = np.asarray(values, dtype=float)
    w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=float)
    codes, uniq = pd.factorize(pd.Series(np.asarray(clusters, dtype=object)), sort=True)
    q = len(uniq)
    s_Q = np.bincount(codes, weights=w * v, minlength=q)
    n_Q = np.bincount(codes, weights=w, minlength=q)
    mean = float(s_Q.sum() / n_Q.sum()) if n_Q.sum() > 0 else math.nan
    if q < 2:
        lo = hi = math.nan
    else:
        boot = ratio_boot(boot_weights(q, n_boot, np.random.default_rng(seed)), s_Q, n_Q)
        lo, hi = percentile_ci(boot, level)
    return {"mean": mean, "ci_low": lo, "ci_high": hi, "n": int(v.size), "n_clusters": q}


def weighted_welch(x, wx, y, wy) -> float:
    """Node-level two-sided p of a difference of (weighted) means, as the paper's Welch test.
    Unweighted: scipy's Welch t-test. Weighted: z-test with sandwich variances."""
    if len(x) < 2 or len(y) < 2:
        return math.nan
    if np.all(wx == 1) and np.all(wy == 1):
        if np.var(x) == 0 and np.var(y) == 0:
            return math.nan
        return float(stats.ttest_ind(x, y, equal_var=False).pvalue)
    mx, my = np.sum(wx * x) / np.sum(wx), np.sum(wy * y) / np.sum(wy)
    vx = np.sum(wx**2 * (x - mx) ** 2) / np.sum(wx) ** 2
    vy = np.sum(wy**2 * (y - my) ** 2) / np.sum(wy) ** 2
    if vx + vy == 0:
        return math.nan
    return float(2 * stats.norm.sf(abs(mx - my) / math.sqrt(vx + vy)))


def permutation_test(
    path_sum: np.ndarray,
    path_n: np.ndarray,
    path_label: np.ndarray,
    path_question: np.ndarray,
    *,
    n_perm: int = 10000,
    seed: int = 0,
    max_exact: int = 20000,
) -> dict[str, float]:
    """Two-sided within-question permutation test of (correct mean - incorrect mean).

    Units are paths (their nodes move together, so within-path correlation is respected);
    labels are permuted only within questions that have both a correct and an incorrect path,
    so between-question differences in difficulty or length cannot masquerade as an effect.
    Single-label questions carry no within-question contrast and are left out of the test
    statistic T = sum_correct(s)/sum_correct(n) - sum_incorrect(s)/sum_incorrect(n) over the
    remaining paths. When the number of label assignments is <= `max_exact` they are
    enumerated (exact p, identity included); otherwise `n_perm` random ones with
    p = (1 + #{|T*| >= |T|}) / (1 + n_perm). `p_min` is the smallest p the design can give."""
    s, n = np.asarray(path_sum, float), np.asarray(path_n, float)
    lab, qs = np.asarray(path_label, bool), np.asarray(path_question, dtype=object)
    keep = n > 0
    s, n, lab, qs = s[keep], n[keep], lab[keep], qs[keep]
    groups = []
    for q in sorted(set(qs.tolist()), key=str):
        idx = np.flatnonzero(qs == q)
        k = int(lab[idx].sum())
        if 0 < k < len(idx):
            groups.append((idx, k))
    nan = {"stat": math.nan, "p": math.nan, "p_min": math.nan, "n_questions": len(groups),
           "n_assignments": 0, "exact": False}
    if not groups:
        return nan
    sel = np.concatenate([g[0] for g in groups])
    s, n, lab = s[sel], n[sel], lab[sel]
    offsets = np.cumsum([0] + [len(g[0]) for g in groups])

    s_tot, n_tot = s.sum(), n.sum()

    def stat(a_M_P: np.ndarray) -> np.ndarray:
        a = a_M_P.astype(float)
        sa, na = a @ s, a @ n
        with np.errstate(invalid="ignore", divide="ignore"):
            return sa / na - (s_tot - sa) / (n_tot - na)

    t_obs = float(stat(lab[None, :])[0])
    total = math.prod(math.comb(len(g[0]), g[1]) for g in groups)
    if total <= max_exact:
        per_q = []
        for idx, k in groups:
            m = len(idx)
            opts = []
            for comb in itertools.combinations(range(m), k):
                v = np.zeros(m, bool)
                v[list(comb)] = True
                opts.append(v)
            per_q.append(opts)
        a_M_P = np.array([np.concatenate(c) for c in itertools.product(*per_q)])
        t_M = stat(a_M_P)
        tol = 1e-12 * max(1.0, abs(t_obs))
        p = float(np.mean(np.abs(t_M) >= abs(t_obs) - tol))
        p_min = float(np.mean(np.abs(t_M) >= np.nanmax(np.abs(t_M)) - tol))
        return {"stat": t_obs, "p": p, "p_min": p_min, "n_questions": len(groups),
                "n_assignments": total, "exact": True}
    rng = np.random.default_rng(seed)
    tol = 1e-12 * max(1.0, abs(t_obs))
    count, done = 0, 0
    # Within-question shuffles for all questions at once: sort (segment + uniform) per row,
    # then the first k_q sorted slots of question q get the k_q "correct" labels.
    seg_P = np.repeat(np.arange(len(groups)), np.diff(offsets))
    template_P = np.concatenate([np.arange(len(g[0])) < g[1] for g in groups])
    while done < n_perm:  # blocks bound the memory of the (permutations x paths) matrix
        m = min(1000, n_perm - done)
        order = np.argsort(seg_P + rng.random((m, len(lab))), axis=1, kind="stable")
        a_M_P = np.empty((m, len(lab)), bool)
        np.put_along_axis(a_M_P, order, np.broadcast_to(template_P, (m, len(lab))), axis=1)
        count += int(np.sum(np.abs(stat(a_M_P)) >= abs(t_obs) - tol))
        done += m
    return {"stat": t_obs, "p": (1 + count) / (1 + n_perm), "p_min": 1 / (1 + n_perm),
            "n_questions": len(groups), "n_assignments": total, "exact": False}


def grouped_spearman(d: pd.DataFrame, keys: list[str], x: str, y: str) -> pd.DataFrame:
    """Per group: n, whether x or y is constant, and Spearman rho (Pearson of average ranks),
    computed with grouped sums rather than a Python loop over groups."""
    g = d.groupby(keys, sort=True)
    rx, ry = g[x].rank(), g[y].rank()
    t = pd.DataFrame({**{k: d[k] for k in keys}, "rx": rx, "ry": ry, "rxx": rx * rx,
                      "ryy": ry * ry, "rxy": rx * ry})
    sums = t.groupby(keys, sort=True).agg(["sum"]).droplevel(1, axis=1)
    n = g.size()
    const = (g[x].max() == g[x].min()) | (g[y].max() == g[y].min())
    cov = n * sums["rxy"] - sums["rx"] * sums["ry"]
    var = (n * sums["rxx"] - sums["rx"] ** 2) * (n * sums["ryy"] - sums["ry"] ** 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = cov / np.sqrt(var)
    return pd.DataFrame({"n": n, "constant": const, "rho": rho.clip(-1, 1)}).reset_index()
