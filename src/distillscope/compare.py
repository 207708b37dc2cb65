"""Across settings: the paper's table 1 side by side, and its second finding as a test.

A *setting* is one run (a student on a task; the label comes from the run's config). Each
run's teacher ranking, correct-vs-incorrect contrast and within-path Spearman are computed
exactly as in its own report (same functions, same seed, so the same numbers); what this
module adds is the comparison:

- **teacher x setting interaction**: does the teacher ranking change across settings more
  than noise allows? Statistic: the residual sum of squares of the additive model
  mean[s, t] = a_s + b_t fitted by least squares to the question-weighted means of the
  (setting, teacher) cells that enter (in a complete table: the sum over settings and
  teachers of the squared deviation of each teacher's setting-centred mean from its
  across-setting average). Null: teacher effects are common to all settings (no
  interaction); its distribution is the bootstrap one of the same statistic computed on
  the replicates' deviations from the observed means, which have no interaction by
  construction. p = (1 + #{T* >= T}) / (1 + valid replicates).
- **P(top teacher differs)** for each pair of settings: the share of joint bootstrap
  replicates in which the argmax teacher (among the teachers both settings scored) differs.
- **universal best**: claimed only when one teacher is the argmax in every setting in at
  least 95% of the joint replicates.

Settings are independent samples of questions, so each run's questions are resampled
independently (question-clustered within the run; seeds spawned from `seed`) and replicate b
of the comparison joins replicate b of every run. A setting with fewer than
`min_questions` questions takes no part in a test ("insufficient"), and a teacher absent
from a setting is left out of that setting's cells, and named (docs/method.md#comparing-settings).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from distillscope import analysis
from distillscope.settings import (  # noqa: F401  (re-exported: compare's public API)
    POOLED,
    Setting,
    check_labels,
    load_settings,
    setting_label,
    teacher_conflicts,
)
from distillscope.stakes import per_question_ranking, sr_range_summary
from distillscope.stats import boot_weights, ratio_boot

MIN_QUESTIONS = 3  # below this, a setting's bootstrap has too few distinct resamples to test
CONFIDENCE = 0.95  # P(top) needed to call a teacher the (universal) best
ALPHA = 0.05
TIE = 12  # decimals: means equal to this many decimals are ties (broken by teacher name)
TEACHER_METHODS = ("gkd", "sampled", "minillm")


def teachers_of(nodes: pd.DataFrame, method: str) -> list[str]:
    names = nodes.loc[nodes["method"] == method, "teacher"]
    return sorted(str(t) for t in set(names.dropna()))


def setting_boot(nodes: pd.DataFrame, method: str, teachers: Sequence[str], n_boot: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    """(point (T,), replicates (B, T), n_questions): the question-weighted mean of each teacher
    (NaN where it has no decision point) and its question-clustered bootstrap replicates."""
    df, _ = analysis.decision_points(nodes, method)
    qids = sorted(set(df["qid"]))
    q_index = {q: i for i, q in enumerate(qids)}
    w_B_Q = boot_weights(len(qids), n_boot, rng)
    point = np.full(len(teachers), np.nan)
    boot = np.full((n_boot, len(teachers)), np.nan)
    for j, t in enumerate(teachers):
        d = df[df["teacher"] == t]
        if d.empty:
            continue
        codes = d["qid"].map(q_index).to_numpy(dtype=int)
        s_Q = np.bincount(codes, weights=d["align"].to_numpy(float), minlength=len(qids))
        n_Q = np.bincount(codes, minlength=len(qids)).astype(float)
        has_Q = (n_Q > 0).astype(float)
        m_Q = np.divide(s_Q, n_Q, out=np.zeros(len(qids)), where=n_Q > 0)
        point[j] = float(m_Q[n_Q > 0].mean())
        if len(qids) >= 2:
            boot[:, j] = ratio_boot(w_B_Q, m_Q, has_Q)
    return point, boot, len(qids)


@dataclass
class Joint:
    """Point estimates and joint bootstrap replicates of every (setting, teacher) cell."""
    method: str
    settings: list[str]
    teachers: list[str]
    point: np.ndarray  # (S, T), NaN = absent
    boot: np.ndarray  # (B, S, T)
    n_questions: list[int]

    def eligible(self, min_questions: int) -> list[int]:
        return [i for i, n in enumerate(self.n_questions) if n >= min_questions]


def joint_boot(settings: Sequence[Setting], method: str = "gkd", *, n_boot: int = 2000,
               seed: int = 0) -> Joint:
    teachers = sorted({t for s in settings for t in teachers_of(s.nodes, method)})
    rngs = [np.random.default_rng(ss) for ss in np.random.SeedSequence(seed).spawn(len(settings))]
    pts, boots, nq = [], [], []
    for s, rng in zip(settings, rngs, strict=True):
        p, b, n = setting_boot(s.nodes, method, teachers, n_boot, rng)
        pts.append(p), boots.append(b), nq.append(n)
    point = np.array(pts).reshape(len(settings), len(teachers))
    boot = np.stack(boots, axis=1) if boots else np.zeros((n_boot, 0, len(teachers)))
    return Joint(method, [s.label for s in settings], teachers, point, boot, nq)


# ---------------------------------------------------------------------------------------------
# The tests


def fp(p: float) -> str:
    if not math.isfinite(p):
        return "n/a"
    return f"{p:.1e}" if p < 1e-3 else (f"{p:.3f}" if p < 0.1 else f"{p:.2f}")


def _argmax(values_BT: np.ndarray) -> np.ndarray:
    """Index of the largest value per row; ties (to TIE decimals) go to the first teacher in
    name order; rows that are all NaN give -1."""
    v = np.round(values_BT, TIE)
    v = np.where(np.isfinite(v), v, -np.inf)
    out = np.argmax(v, axis=1)
    return np.where(np.isfinite(values_BT).any(axis=1), out, -1)


def interaction_test(joint: Joint, *, min_questions: int = MIN_QUESTIONS) -> dict:
    """The teacher x setting interaction test (module docstring). Returns stat, rms (root mean
    squared residual per cell, in alignment units), null_rms (the same from the median null
    replicate: the noise level), p, df, the cells used and every exclusion in words."""
    notes: list[str] = []
    elig = joint.eligible(min_questions)
    for i, n in enumerate(joint.n_questions):
        if i not in elig:
            notes.append(f"setting '{joint.settings[i]}' left out: {n} question(s) with a "
                         f"decision point (fewer than {min_questions})")
    cells = [(i, j) for i in elig for j in range(len(joint.teachers))
             if math.isfinite(joint.point[i, j])]
    for j, t in enumerate(joint.teachers):
        where = [i for i in elig if math.isfinite(joint.point[i, j])]
        missing = [joint.settings[i] for i in elig if i not in where]
        if missing and where:
            notes.append(f"teacher '{t}' absent from {', '.join(repr(m) for m in missing)}: "
                         "left out there")
        if len(where) == 1:
            notes.append(f"teacher '{t}' scored in one setting only: it cannot show an "
                         "interaction")
    out = {"method": joint.method, "stat": math.nan, "rms": math.nan, "null_rms": math.nan,
           "p": math.nan, "df": 0, "n_cells": len(cells), "n_settings": len(elig),
           "n_boot_valid": 0, "status": "insufficient", "notes": notes}
    if not cells:
        return out
    s_idx = {i: k for k, i in enumerate(sorted({c[0] for c in cells}))}
    t_idx = {j: k for k, j in enumerate(sorted({c[1] for c in cells}))}
    X = np.zeros((len(cells), len(s_idx) + len(t_idx)))
    for r, (i, j) in enumerate(cells):
        X[r, s_idx[i]] = 1.0
        X[r, len(s_idx) + t_idx[j]] = 1.0
    rank = int(np.linalg.matrix_rank(X))
    df = len(cells) - rank
    out["df"] = df
    if df == 0 or len(s_idx) < 2:
        notes.append("no interaction can be estimated: it needs two settings with enough "
                     "questions sharing at least two teachers")
        return out
    R = np.eye(len(cells)) - X @ np.linalg.pinv(X)
    m = np.array([joint.point[i, j] for i, j in cells])
    resid = R @ m
    stat = float(resid @ resid)
    stat = 0.0 if stat < 1e-24 else stat
    # the bootstrap variance of a mean of Q questions is (Q - 1)/Q of the unbiased one:
    # inflate each setting's deviations so that the null is not too narrow for few questions
    q = np.array([joint.n_questions[i] for i, _ in cells], float)
    D = (np.stack([joint.boot[:, i, j] for i, j in cells], axis=1) - m) * np.sqrt(q / (q - 1))
    valid = np.isfinite(D).all(axis=1)
    null = ((D[valid] @ R.T) ** 2).sum(axis=1)
    nv = int(valid.sum())
    out.update(stat=stat, rms=math.sqrt(stat / len(cells)), n_boot_valid=nv)
    if nv == 0:
        notes.append("no bootstrap replicate had every cell defined")
        return out
    tol = 1e-12 * max(1.0, stat)
    out["p"] = (1 + int(np.sum(null >= stat - tol))) / (1 + nv)
    out["null_rms"] = math.sqrt(float(np.median(null)) / len(cells))
    out["status"] = "tested"
    return out


def top_teacher_pairs(joint: Joint, *, min_questions: int = MIN_QUESTIONS) -> pd.DataFrame:
    """For each pair of settings: the observed top teacher of each among the teachers both
    scored, and the share of joint replicates in which the two tops differ."""
    cols = ["setting_a", "setting_b", "top_a", "top_b", "p_top_differs", "n_common",
            "n_boot_valid", "status"]
    rows = []
    S = len(joint.settings)
    for a in range(S):
        for b in range(a + 1, S):
            common = [j for j in range(len(joint.teachers))
                      if math.isfinite(joint.point[a, j]) and math.isfinite(joint.point[b, j])]
            row = {"setting_a": joint.settings[a], "setting_b": joint.settings[b],
                   "top_a": "", "top_b": "", "p_top_differs": math.nan,
                   "n_common": len(common), "n_boot_valid": 0, "status": "insufficient"}
            if common:
                ta = _argmax(joint.point[a, common][None])[0]
                tb = _argmax(joint.point[b, common][None])[0]
                row["top_a"], row["top_b"] = joint.teachers[common[ta]], joint.teachers[common[tb]]
            few = min(joint.n_questions[a], joint.n_questions[b]) < min_questions
            if len(common) >= 2 and not few:
                A, B = joint.boot[:, a, common], joint.boot[:, b, common]
                valid = np.isfinite(A).all(axis=1) & np.isfinite(B).all(axis=1)
                if valid.any():
                    diff = _argmax(A[valid]) != _argmax(B[valid])
                    row.update(p_top_differs=float(diff.mean()), n_boot_valid=int(valid.sum()),
                               status="tested")
            rows.append(row)
    return pd.DataFrame(rows, columns=cols)


def top_shares(joint: Joint) -> pd.DataFrame:
    """Per setting and teacher: the share of that setting's replicates in which the teacher is
    the argmax among the setting's own teachers (NaN without replicates)."""
    rows = []
    for i, s in enumerate(joint.settings):
        present = [j for j in range(len(joint.teachers)) if math.isfinite(joint.point[i, j])]
        B = joint.boot[:, i, present]
        valid = np.isfinite(B).all(axis=1) if present else np.zeros(len(B), bool)
        top = _argmax(B[valid]) if valid.any() else np.array([], int)
        for k, j in enumerate(present):
            rows.append({"setting": s, "teacher": joint.teachers[j],
                         "share_top": float(np.mean(top == k)) if top.size else math.nan})
    return pd.DataFrame(rows, columns=["setting", "teacher", "share_top"])


def universal_best(joint: Joint, *, min_questions: int = MIN_QUESTIONS) -> dict:
    """The teacher most often first in every eligible setting at once (joint replicates, each
    setting's argmax among its own teachers), and that probability. Only a teacher scored in
    every eligible setting can be universal."""
    elig = joint.eligible(min_questions)
    out = {"teacher": "", "p_universal": math.nan, "n_settings": len(elig), "tied_with": []}
    if len(elig) < 2:
        return out
    everywhere = [j for j in range(len(joint.teachers))
                  if all(math.isfinite(joint.point[i, j]) for i in elig)]
    if not everywhere:
        return out
    tops, valid = [], np.ones(joint.boot.shape[0], bool)
    for i in elig:
        present = [j for j in range(len(joint.teachers)) if math.isfinite(joint.point[i, j])]
        B = joint.boot[:, i, present]
        valid &= np.isfinite(B).all(axis=1)
        tops.append(np.array(present)[np.maximum(_argmax(B), 0)])
    top_bs = np.stack(tops, axis=1)[valid]  # (B_valid, S): the teacher first in each setting

    def p_all(j: int) -> float:
        return float(np.mean((top_bs == j).all(axis=1)))

    if top_bs.size == 0:
        return out
    best = max(everywhere, key=lambda j: (p_all(j), -j))
    out.update(teacher=joint.teachers[best] if p_all(best) > 0 else "",
               p_universal=p_all(best))
    # teachers equal to it in every eligible setting (ties go to the first name)
    same = [j for j in everywhere if j != best and all(
        round(joint.point[i, j], TIE) == round(joint.point[i, best], TIE) for i in elig)]
    out["tied_with"] = [joint.teachers[j] for j in same] if out["teacher"] else []
    return out


def verdict(inter: dict, pairs: pd.DataFrame, univ: dict, joint: Joint) -> tuple[str, str]:
    """(status, text): 'universal', 'differs', 'inconclusive' or 'insufficient', in words."""
    m = joint.method
    if inter["status"] != "tested" and (pairs.empty or (pairs["status"] != "tested").all()):
        why = "; ".join(inter["notes"]) or "fewer than two settings"
        return "insufficient", f"Not enough data to compare the {m} teacher ranking across " \
                               f"settings: {why}."
    p_txt = (f"teacher x setting interaction p = {fp(inter['p'])} (residual RMS "
             f"{inter['rms']:.3f} vs {inter['null_rms']:.3f} from noise alone)"
             if inter["status"] == "tested" else "interaction not testable")
    if math.isfinite(univ["p_universal"]) and univ["p_universal"] >= CONFIDENCE:
        tie = (f" (tied with {', '.join(univ['tied_with'])}, equal in every setting)"
               if univ["tied_with"] else "")
        return "universal", (f"universal best: {univ['teacher']}{tie} ranks first in all "
                             f"{univ['n_settings']} settings in {univ['p_universal']:.0%} of the "
                             f"joint bootstrap replicates ({p_txt}).")
    tested = pairs[pairs["status"] == "tested"].sort_values("p_top_differs", ascending=False)
    strong = tested[tested["p_top_differs"] >= CONFIDENCE]
    lines = [f"{r.setting_a} ranks {r.top_a} first, {r.setting_b} ranks {r.top_b} first "
             f"(P(top differs) = {r.p_top_differs:.2f})" for r in tested.head(3).itertuples()]
    best = (f" The closest to a universal best is {univ['teacher']}, first everywhere in "
            f"{univ['p_universal']:.0%} of replicates." if univ["teacher"]
            and univ["p_universal"] > 0 else "")
    if inter["status"] == "tested" and inter["p"] < ALPHA:
        head = "No universal best: the teacher ranking changes across settings more than noise " \
               f"allows ({p_txt})."
        if len(strong):
            head += " Settings that disagree on the top teacher: " + "; ".join(
                lines[:len(strong)]) + "."
        else:
            head += " The top teacher itself is not surely different between any two " \
                    "settings: " + "; ".join(lines) + "."
        return "differs", head
    if len(strong):
        return "differs", ("No universal best: " + "; ".join(lines[:len(strong)]) + f" ({p_txt})."
                           + best)
    return "inconclusive", ("No universal best is established, and the data do not show the "
                            f"ranking changing across settings either ({p_txt})."
                            + (" " + "; ".join(lines) + "." if lines else "") + best)


# ---------------------------------------------------------------------------------------------
# Everything at once


def compare(settings: Sequence[Setting], *, methods: Sequence[str] | None = None,
            seed: int = 0, n_boot: int = 2000, n_perm: int = 10000,
            min_questions: int = MIN_QUESTIONS) -> dict:
    """All comparison tables, keyed by name, plus per-method test results (dicts)."""
    if methods is None:
        present = set().union(*(set(s.nodes["method"]) for s in settings)) if settings else set()
        methods = [m for m in (*TEACHER_METHODS, "drgrpo") if m in present]
    kw = {"n_boot": n_boot, "seed": seed}
    rank_rows, cvi_rows, sp_rows, pq_rows, sr_rows = [], [], [], [], []
    m0 = methods[0] if methods else "gkd"  # the method of the per-setting views
    for s in settings:
        for m in methods:
            r = analysis.teacher_ranking(s.nodes, m, **kw)
            rank_rows.append(r.assign(setting=s.label, method=m))
        cvi_rows.append(analysis.correct_vs_incorrect(s.nodes, m0, n_perm=n_perm, **kw)
                        .assign(setting=s.label))
        sp = analysis.within_path_spearman(s.nodes, m0)
        sp_rows.append(sp.assign(setting=s.label))
        pq_rows.append(per_question_ranking(s.nodes, m0).assign(setting=s.label))
        sr_rows.append({"setting": s.label, **sr_range_summary(s.nodes, m0)})
    if len(settings) > 1:
        # the settings' questions are independent units: pooled, the clustered bootstrap and
        # the permutation test resample them all (a qid is made unique per setting)
        pooled = pd.concat([s.nodes.assign(qid=s.label + "::" + s.nodes["qid"].astype(str))
                            for s in settings], ignore_index=True)
        cvi_rows.append(analysis.correct_vs_incorrect(pooled, m0, n_perm=n_perm, **kw)
                        .assign(setting=POOLED))
    ranking = pd.concat(rank_rows, ignore_index=True) if rank_rows else pd.DataFrame()
    tests, pairs, shares = {}, [], []
    for m in methods:
        if m not in TEACHER_METHODS:
            continue
        j = joint_boot(settings, m, n_boot=n_boot, seed=seed)
        inter = interaction_test(j, min_questions=min_questions)
        pr = top_teacher_pairs(j, min_questions=min_questions)
        un = universal_best(j, min_questions=min_questions)
        status, text = verdict(inter, pr, un, j)
        tests[m] = {"interaction": inter, "universal": un, "status": status, "text": text,
                    "teachers": j.teachers, "n_questions": dict(zip(j.settings, j.n_questions,
                                                                    strict=True))}
        pairs.append(pr.assign(method=m))
        shares.append(top_shares(j).assign(method=m))
    return {
        "ranking": ranking,
        "correct_vs_incorrect": pd.concat(cvi_rows, ignore_index=True) if cvi_rows
        else pd.DataFrame(),
        "spearman": pd.concat(sp_rows, ignore_index=True) if sp_rows else pd.DataFrame(),
        "per_question_ranking": pd.concat(pq_rows, ignore_index=True) if pq_rows
        else pd.DataFrame(),
        "sr_range": pd.DataFrame(sr_rows),
        "top_pairs": pd.concat(pairs, ignore_index=True) if pairs else pd.DataFrame(),
        "top_shares": pd.concat(shares, ignore_index=True) if shares else pd.DataFrame(),
        "tests": tests,
        "methods": list(methods),
        "settings": [s.label for s in settings],
    }


def ranking_wide(ranking: pd.DataFrame, method: str, settings: Sequence[str]) -> pd.DataFrame:
    """Table 1 layout: a row per teacher; per setting i the columns `{i}_mean`, `{i}_lo`,
    `{i}_hi` (95% CI) and `{i}_rank` ("absent" where the run did not score the teacher,
    "undefined" where it has no defined alignment). Teachers ordered by their mean rank."""
    r = ranking[ranking["method"] == method] if len(ranking) else ranking
    if r.empty:
        return pd.DataFrame(columns=["teacher"])
    teachers = sorted(set(r["teacher"].astype(str)),
                      key=lambda t: (r.loc[r["teacher"] == t, "rank"].mean(), t))
    rows = []
    for t in teachers:
        row: dict[str, object] = {"teacher": t}
        for i, s in enumerate(settings):
            hit = r[(r["teacher"] == t) & (r["setting"] == s)]
            if hit.empty or not math.isfinite(float(hit["mean"].iloc[0])):
                row.update({f"{i}_mean": math.nan, f"{i}_lo": math.nan, f"{i}_hi": math.nan,
                            f"{i}_rank": "absent" if hit.empty else "undefined"})
            else:
                h = hit.iloc[0]
                row.update({f"{i}_mean": float(h["mean"]), f"{i}_lo": float(h["ci_low"]),
                            f"{i}_hi": float(h["ci_high"]), f"{i}_rank": str(int(h["rank"]))})
        rows.append(row)
    return pd.DataFrame(rows)


def readable_wide(wide: pd.DataFrame, settings: Sequence[str]) -> pd.DataFrame:
    """`ranking_wide` with "<setting> mean|ci_low|ci_high|rank" column names (CSV, Markdown)."""
    names = {"teacher": "teacher"}
    for i, s in enumerate(settings):
        for k, v in (("mean", "mean"), ("lo", "ci_low"), ("hi", "ci_high"), ("rank", "rank")):
            names[f"{i}_{k}"] = f"{s} {v}"
    return wide.rename(columns=names)
