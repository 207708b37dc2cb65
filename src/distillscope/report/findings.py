"""Headline findings in plain words, from the analysis tables.

Each finding states the number, its uncertainty, and whether it is conclusive at the question
level; when the data cannot support a conclusion (one question, no question with both correct
and incorrect paths, too few decision points) it says so instead of reporting a bare number.
Strings are plain text; the HTML renderer escapes them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

FEW_NODES = 100  # below this many decision points, every estimate is flagged as fragile
ALPHA = 0.05


@dataclass(frozen=True)
class Finding:
    title: str
    text: str
    status: str  # "conclusive" | "inconclusive" | "note"


def fnum(x: float, digits: int = 3, signed: bool = True) -> str:
    if x is None or not math.isfinite(float(x)):
        return "n/a"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def fp(p: float) -> str:
    if p is None or not math.isfinite(float(p)):
        return "n/a"
    if p < 1e-3:
        return f"{p:.1e}"
    return f"{p:.3f}" if p < 0.1 else f"{p:.2f}"


def _ci(lo: float, hi: float) -> str:
    return f"[{fnum(lo)}, {fnum(hi)}]"


def ranking_finding(ranking: pd.DataFrame, method: str) -> Finding:
    title = "Teacher ranking"
    if ranking.empty or not math.isfinite(ranking["mean"].iloc[0]):
        return Finding(title, f"No teacher has a scored decision point for {method}.",
                       "inconclusive")
    top = ranking.iloc[0]
    pooled = top.get("mean_nodes", math.nan)
    head = (f"{top.teacher} ranks first by question-weighted mean {method} alignment (each "
            f"question counts once): {fnum(top['mean'])} (95% CI "
            f"{_ci(top.ci_low, top.ci_high)}, {top.n_nodes} decision points in "
            f"{top.n_questions} questions; pooled over decision points instead: "
            f"{fnum(pooled)}).")
    if len(ranking) == 1:
        return Finding(title, head + " It is the only teacher scored, so there is no ranking.",
                       "note")
    nxt = ranking.iloc[1]
    if not math.isfinite(top.gap_ci_low):
        return Finding(title, head + f" Next is {nxt.teacher} ({fnum(nxt['mean'])}); with fewer "
                       "than two questions no confidence interval can be formed, so the order "
                       "is not established.", "inconclusive")
    gap = (f" Its lead over {nxt.teacher} ({fnum(nxt['mean'])}) is {fnum(top.gap_to_next)} "
           f"(paired 95% CI {_ci(top.gap_ci_low, top.gap_ci_high)})")
    if bool(top.separated):
        return Finding(title, head + gap + ", which excludes zero: the first place is "
                       "established at the question level.", "conclusive")
    return Finding(title, head + gap + ", which includes zero: the data do not separate the "
                   "two teachers.", "inconclusive")


def correct_incorrect_finding(cvi: pd.DataFrame, method: str) -> Finding:
    title = "Correct vs incorrect paths"
    rows = cvi.set_index("metric") if not cvi.empty else cvi
    if cvi.empty or "mean_cosine" not in rows.index:
        return Finding(title, "No scored decision point.", "inconclusive")
    m = rows.loc["mean_cosine"]
    if m.n_correct == 0 and m.n_incorrect == 0:
        return Finding(title, f"No scored {method} decision point.", "inconclusive")
    if m.n_correct == 0 or m.n_incorrect == 0:
        which = "correct" if m.n_correct == 0 else "incorrect"
        return Finding(title, f"No decision point on {which} paths: the comparison cannot be "
                       "made.", "inconclusive")
    direction = ("Incorrect paths align more than correct ones" if m.delta < 0
                 else "Correct paths align more than incorrect ones")
    who = "all teachers pooled" if m.get("teacher", "all") == "all" else str(m.teacher)
    text = (f"{direction} ({who}): mean {method} alignment {fnum(m.correct)} (correct) vs "
            f"{fnum(m.incorrect)} (incorrect), Δ = {fnum(m.delta)} "
            f"(95% CI {_ci(m.delta_ci_low, m.delta_ci_high)}); question-clustered permutation "
            f"p = {fp(m.p_perm)} over {m.n_questions_mixed} questions with both kinds of path "
            f"(node-level Welch p = {fp(m.p_welch)}, which ignores clustering).")
    if "weighted_cosine" in rows.index:
        w = rows.loc["weighted_cosine"]
        text += f" SR-weighted: Δ = {fnum(w.delta)}, permutation p = {fp(w.p_perm)}."
    if m.n_questions_mixed == 0:
        return Finding(title, text + " No question has both correct and incorrect paths, so "
                       "the permutation test cannot be run: inconclusive.", "inconclusive")
    if math.isfinite(m.p_perm_min) and m.p_perm_min > ALPHA:
        return Finding(title, text + f" With {m.n_questions_mixed} such question(s) the smallest "
                       f"attainable p is {fp(m.p_perm_min)}, so significance at {ALPHA} is "
                       "impossible: inconclusive, whatever the node-level test says.",
                       "inconclusive")
    if m.p_perm < ALPHA:
        return Finding(title, text + " The difference is significant at the question level.",
                       "conclusive")
    return Finding(title, text + f" Not significant at the question level (p ≥ {ALPHA}).",
                   "inconclusive")


def oracle_finding(oracle: pd.DataFrame, best: pd.DataFrame, method: str) -> Finding | None:
    if oracle.empty or not math.isfinite(oracle["mean_signal"].iloc[0]):
        return None
    full = oracle.iloc[0]
    parts = []
    for r in oracle.iloc[1:].itertuples():
        ratio = r.mean_signal / full.mean_signal if full.mean_signal > 0 else math.nan
        times = f" ({ratio:.1f}× full)" if math.isfinite(ratio) else ""
        parts.append(f"keeping align > {r.threshold:g} gives {fnum(r.mean_signal)}{times} with "
                     f"{r.pct_tokens:.0f}% of tokens")
    text = (f"Selective distillation (oracle): full {method} has mean signal "
            f"(SR range × align) {fnum(full.mean_signal)}; " + "; ".join(parts) + ".")
    if not best.empty and (best["teacher"] == "oracle").any():
        o = best[best["teacher"] == "oracle"].iloc[0]
        single = best[best["teacher"] != "oracle"]
        if len(single) > 1:
            b = single.sort_values("mean_align", ascending=False).iloc[0]
            text += (f" Choosing the best teacher at every token would give mean alignment "
                     f"{fnum(o.mean_align)} against {fnum(b.mean_align)} for the best single "
                     f"teacher ({b.teacher}).")
    return Finding("Oracles (upper bounds, not trainable as is)", text, "note")


def data_finding(n_nodes: int, n_nan: int, n_questions: int, method: str) -> Finding | None:
    notes = []
    if n_nodes < FEW_NODES:
        notes.append(f"only {n_nodes} scored {method} decision points in {n_questions} "
                     "question(s): every estimate here is fragile")
    if n_nan:
        notes.append(f"{n_nan} decision point(s) had an undefined alignment (a zero-norm "
                     "gradient) and were dropped, not counted as 0")
    if not notes:
        return None
    return Finding("Data", "; ".join(notes).capitalize() + ".", "note")


def headline_findings(results: dict[str, pd.DataFrame], summary: dict,
                      method: str = "gkd") -> list[Finding]:
    out = [ranking_finding(results["teacher_ranking"], method),
           correct_incorrect_finding(results["correct_vs_incorrect"], method)]
    o = oracle_finding(results["selective_oracle"], results["best_teacher_oracle"], method)
    d = data_finding(int(summary.get(f"align/{method}/n_nodes") or 0),
                     int(summary.get(f"align/{method}/n_nan") or 0),
                     int(summary.get("run/n_questions") or 0), method)
    return out + [f for f in (o, d) if f is not None]
