"""The teacher ranking as a terminal table that fits the terminal's width.

Numbers are never cut: the rank, mean and CI columns keep their full width, long teacher names
stay whole while dropping a low-value column (undefined, nodes, questions, then the separation
column) can make room, and fold onto a second line only after that. A terminal too narrow for
even the four essential columns gets them anyway (the terminal wraps the line).
"""

from __future__ import annotations

import math

import pandas as pd
from rich.table import Table

__all__ = ["contrast_words", "fmt", "in_words", "ranking_table"]

# (header, justify); the order of the table
COLUMNS = (("#", "right"), ("teacher", "left"), ("mean", "right"), ("95% CI", "right"),
           ("beats next?", "right"), ("questions", "right"), ("nodes", "right"),
           ("undefined", "right"))
ESSENTIAL = ("#", "teacher", "mean", "95% CI")
DROP_ORDER = ("undefined", "nodes", "questions", "beats next?")
TEACHER_MIN = 8  # a teacher column narrower than this folds names into unreadable pieces


def fmt(x: float | None, signed: bool = True) -> str:
    x = _f(x)
    if not math.isfinite(x):
        return "n/a"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def _cells(r) -> dict[str, str]:
    if math.isfinite(float(r.gap_to_next)):
        beats = "yes" if str(r.separated).lower() == "true" else "no"
    else:
        beats = "–"  # last place, or no next teacher with a defined mean
    ci = ("n/a" if not math.isfinite(float(r.ci_low))
          else f"[{fmt(r.ci_low)}, {fmt(r.ci_high)}]")
    # a teacher-free row (Dr. GRPO, teacher "": NaN once read back from CSV)
    name = "(no teacher)" if not isinstance(r.teacher, str) or not r.teacher else r.teacher
    return {"#": str(r.rank), "teacher": name, "mean": fmt(r.mean), "95% CI": ci,
            "beats next?": beats, "questions": str(r.n_questions), "nodes": str(r.n_nodes),
            "undefined": str(r.n_nan)}


def _width(cols: list[str], widths: dict[str, int]) -> int:
    """Rendered width of a rich table with the default box: 3 per column + 1."""
    return sum(widths[c] for c in cols) + 3 * len(cols) + 1


def ranking_table(rank: pd.DataFrame, method: str, width: int) -> Table:
    """`rank` is the report's teacher_ranking table; `width` the console's width."""
    rows = [_cells(r) for r in rank.itertuples(index=False)]
    widths = {h: max([len(h)] + [len(row[h]) for row in rows]) for h, _ in COLUMNS}
    cols = [h for h, _ in COLUMNS]
    for col in DROP_ORDER:  # names stay whole while a low-value column can make room
        if _width(cols, widths) <= width:
            break
        cols.remove(col)
    # the teacher column takes what is left, at least TEACHER_MIN (its names fold)
    others = _width([c for c in cols if c != "teacher"], widths) + 3
    teacher_w = max(min(widths["teacher"], width - others), min(TEACHER_MIN, widths["teacher"]))
    title = (f"Teacher ranking: mean {method.upper()} alignment with the ideal gradient\n"
             "(each question counts once; 95% CI: bootstrap over questions)")
    table = Table(title=title)
    for h, justify in COLUMNS:
        if h not in cols:
            continue
        if h == "teacher":
            table.add_column(h, justify=justify, overflow="fold", min_width=teacher_w,
                             max_width=teacher_w)
        else:
            table.add_column(h, justify=justify, no_wrap=True, min_width=widths[h])
    for row in rows:
        table.add_row(*(row[c] for c in cols))
    dropped = [c for c in DROP_ORDER if c not in cols]
    if dropped:
        table.caption = f"(too narrow for: {', '.join(dropped)}; see tables/teacher_ranking.csv)"
    return table


ALPHA = 0.05


def _f(x) -> float:
    """A summary value as a float: None (no value, e.g. a CI of one question) is NaN."""
    try:
        return math.nan if x is None else float(x)
    except (TypeError, ValueError):
        return math.nan


def in_words(summary: dict, method: str = "gkd") -> list[str]:
    """The closing lines of a run: what was found and how sure it is, from `summary.json`
    (the report's numbers): the first teacher and whether its lead is established, then the
    correct-vs-incorrect contrast and whether the question-level test can and does reject."""
    lines = []
    first = summary.get(f"ranking/{method}/first")
    if first == "":  # a teacher-free method (drgrpo): one row, nothing to rank
        r = f"ranking/{method}//"
        lines.append(f"{method} uses no teacher (the RL baseline): mean alignment "
                     f"{fmt(summary.get(r + 'mean'))} (95% CI [{fmt(summary.get(r + 'ci_low'))}"
                     f", {fmt(summary.get(r + 'ci_high'))}]).")
    elif first is not None:
        r = f"ranking/{method}/{first}/"
        line = (f"Best teacher ({method}): {first}, mean alignment "
                f"{fmt(summary.get(r + 'mean'))} (95% CI [{fmt(summary.get(r + 'ci_low'))}, "
                f"{fmt(summary.get(r + 'ci_high'))}]).")
        nxt = [k.split("/")[2] for k, v in summary.items()
               if k.startswith(f"ranking/{method}/") and k.endswith("/rank") and v == 2]
        lo, hi = summary.get(r + "gap_ci_low"), summary.get(r + "gap_ci_high")
        if nxt and math.isfinite(_f(lo)) and math.isfinite(_f(hi)):
            sure = ("established: the paired CI excludes 0" if summary.get(r + "separated")
                    else "not established: the paired CI includes 0")
            line += (f" Its lead over {nxt[0]} is {fmt(summary.get(r + 'gap_to_next'))} "
                     f"[{fmt(lo)}, {fmt(hi)}], {sure}.")
        lines.append(line)
    c = f"correct_vs_incorrect/{method}/mean_cosine/"
    line = contrast_words({k: summary.get(c + k) for k in CONTRAST_KEYS})
    if line:
        lines.append(line)
    return lines


def compare_words(summary: dict, method: str = "gkd") -> list[str]:
    """The closing lines of `compare`, from `compare.json`: the verdict on a universal best,
    then the correct-vs-incorrect contrast pooled over every setting's questions."""
    from distillscope.compare import POOLED
    from distillscope.report import key_part

    verdict = summary.get(f"verdict/{method}/text")
    lines = [str(verdict)] if verdict else []
    pooled = contrast_words({k: summary.get(f"correct_vs_incorrect/{key_part(POOLED)}/{k}")
                             for k in CONTRAST_KEYS})
    if pooled:
        lines.append("Pooled over every setting's questions: " + pooled[0].lower() + pooled[1:])
    return lines


CONTRAST_KEYS = ("delta", "delta_ci_low", "delta_ci_high", "p_perm", "p_perm_min",
                 "n_questions_mixed")


def contrast_words(c: dict) -> str | None:
    """One sentence on Δ = correct − incorrect (mean cosine): its direction, CI, and what the
    question-level permutation test says (or why it cannot say anything). None when the run
    has no such contrast."""
    delta = _f(c.get("delta"))
    if not math.isfinite(delta):
        return None
    which = ("Incorrect paths align more than correct ones" if delta < 0
             else "Correct paths align more than incorrect ones")
    lo, hi = _f(c.get("delta_ci_low")), _f(c.get("delta_ci_high"))
    p, p_min = _f(c.get("p_perm")), _f(c.get("p_perm_min"))
    nq_f = _f(c.get("n_questions_mixed"))
    nq = int(nq_f) if math.isfinite(nq_f) else 0
    if nq == 0:
        sure = "no question has both kinds of path, so this is not tested"
    elif math.isfinite(p_min) and p_min > ALPHA:
        sure = (f"with {nq} questions having both kinds of path the test cannot reach "
                f"p < {ALPHA}: inconclusive")
    elif not math.isfinite(p):
        sure = "the question-level test could not be run"
    elif p < ALPHA:
        sure = f"significant at the question level (permutation p = {p:.3g}, {nq} questions)"
    else:
        sure = (f"not significant at the question level (permutation p = {p:.2f}, "
                f"{nq} questions)")
    if not (math.isfinite(lo) and math.isfinite(hi)):
        ci = "no CI: fewer than two questions"
    else:
        ci = (f"95% CI [{fmt(lo)}, {fmt(hi)}], which "
              f"{'excludes' if hi < 0 or lo > 0 else 'includes'} 0")
    line = f"{which}: Δ = correct − incorrect = {fmt(delta)} ({ci}); {sure}."
    if (hi < 0 or lo > 0) and math.isfinite(p) and p < ALPHA:  # both say so: read it out
        more, less, whose = (("failed", "correct", "the paper's main finding") if delta < 0
                             else ("correct", "failed", "the reverse of the paper's main finding"))
        line += (f" Reading: the teachers' updates agree with the ideal one more on the "
                 f"student's {more} answers than on its {less} ones, {whose}.")
    return line
