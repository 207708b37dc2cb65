"""One representative path in the terminal, token by token (`distillscope show`).

Each token's background is its alignment for the chosen teacher and method (diverging:
red = harmful, blue = helpful, the same scale as report.html); grey text = not a decision point.
A legend and a table of the decision points (S_u children with P_hat, P_theta, P_te) follow.
Model text is appended as rich `Text` (never parsed as console markup) with control characters
made visible, so a token cannot inject markup or terminal escape sequences.
"""

from __future__ import annotations

import math
from pathlib import Path

from rich.console import Console
from rich.style import Style
from rich.table import Table
from rich.text import Text

from distillscope.analysis import decision_points
from distillscope.report.data import PathView, Run, load_run, path_views, visible
from distillscope.report.html import STOPS
from distillscope.stakes import high_stakes

NOT_DECISION = Style(color="grey50")
UNDEFINED = Style(color="black", bgcolor="grey62", italic=True)


def _rgb(a: float) -> tuple[int, int, int]:
    a = max(-1.0, min(1.0, a))
    for (x0, c0), (x1, c1) in zip(STOPS, STOPS[1:], strict=False):
        if a <= x1:
            f = (a - x0) / (x1 - x0)
            r, g, b = (round(u + f * (v - u)) for u, v in zip(c0, c1, strict=True))
            return r, g, b
    return STOPS[-1][1]


def align_style(a: float) -> Style:
    """Background colour of an alignment value (NaN: undefined)."""
    if not math.isfinite(a):
        return UNDEFINED
    r, g, b = _rgb(a)
    return Style(bgcolor=f"rgb({r},{g},{b})", color="white" if abs(a) > 0.65 else "black")


def legend() -> Text:
    t = Text("−1 harmful ")
    for i in range(11):
        t.append("  ", style=align_style(-1 + i * 0.2))
    t.append(" +1 helpful   ")
    t.append("tok", style=NOT_DECISION)
    t.append(" not a decision point   ")
    t.append("tok", style=UNDEFINED)
    t.append(" undefined")
    return t


def path_text(view: PathView, teacher: str, method: str) -> Text:
    text = Text()
    for d, tok in enumerate(view.tokens):
        node = view.nodes.get(d)
        if node is None:
            text.append(visible(tok), style=NOT_DECISION)
        else:
            shown = "∅" if tok == "" else visible(tok).replace("\n", "↵\n")
            text.append(shown, style=align_style(node.align.get((teacher, method), math.nan)))
    return text


def _fmt(x: float, signed: bool = False) -> str:
    if not math.isfinite(x):
        return "n/a"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def decision_table(view: PathView, teacher: str, method: str) -> Table:
    table = Table(title="Decision points", title_justify="left", show_lines=False,
                  header_style="bold")
    for col, just in (("depth", "right"), ("token", "left"), ("align", "right"),
                      ("SR range", "right"), ("visits", "right"),
                      ("S_u: child  P̂  n  P_θ  P_te", "left")):
        table.add_column(col, justify=just)
    for d, node in view.nodes.items():
        tok = view.tokens[d] if d < len(view.tokens) else ""
        a = node.align.get((teacher, method), math.nan)
        kids = Text()
        for i, c in enumerate(node.children):
            if i:
                kids.append("\n")
            kids.append(("▸ " if c.on_path else "  ") + repr(visible(c.token_text)))
            kids.append(f"  {_fmt(c.p_hat)}  {c.visits}  {_fmt(c.p_student)}  "
                        f"{_fmt(c.p_teacher.get(teacher, math.nan))}")
        table.add_row(Text(str(d)), Text(repr(visible(tok))), Text(_fmt(a, True),
                      style=align_style(a)), Text(_fmt(node.sr_range)), Text(str(node.visits)),
                      kids)
    return table


def default_teacher(run_dir: str | Path, method: str = "gkd",
                    min_sr_range: float | None = None) -> str:
    """The report's top teacher: the highest question-weighted mean alignment of `method`
    (per question the mean over its decision points, then the mean over questions; ties to
    the first name), over the nodes with SR range >= `min_sr_range` when given."""
    run = load_run(run_dir, ("nodes",))
    df, _ = decision_points(high_stakes(run.nodes, min_sr_range), method)
    df = df[df["teacher"].isin(run.teachers)]
    if df.empty:
        if not run.scored_teachers:
            raise ValueError(f"{run_dir}: no teacher has been scored")
        return run.scored_teachers[0]  # scored, but without a decision point
    from distillscope.analysis import teacher_ranking

    return str(teacher_ranking(df, method, n_boot=1).iloc[0]["teacher"])  # the report's rank 1


def resolve_question(run: Run, qid: str | int) -> str:
    """The question id meant by `qid`: an id of the run, or else a 0-based index into the
    run's questions (in run order)."""
    qids = [str(q) for q in run.tables["questions"]["qid"]] if "questions" in run.tables else []
    qids = qids or sorted({str(q) for q in run.tables["paths"]["qid"]})
    q = str(qid).strip()
    if q in qids:
        return q
    if q.isdigit():
        if int(q) < len(qids):
            return qids[int(q)]
        raise KeyError(f"question index {q} is out of range: {run.run_dir} has {len(qids)} "
                       f"question(s), indices 0..{len(qids) - 1}")
    shown = ", ".join(qids[:10]) + (f", ... ({len(qids)} in all)" if len(qids) > 10 else "")
    raise KeyError(f"no question {q!r} in {run.run_dir}; questions: {shown or 'none'} "
                   "(--question also takes a 0-based index)")


def render_path(
    run_dir: str | Path,
    qid: str,
    path_id: int,
    teacher: str | None = None,
    console: Console | None = None,
    *,
    method: str = "gkd",
    min_sr_range: float | None = None,
    tree: bool = False,
) -> None:
    """Print path `path_id` of question `qid` (an id, or a 0-based index into the run's
    questions), coloured by the alignment of `teacher` (default: the report's top teacher,
    `default_teacher`) under `method`. With `min_sr_range`, only decision points with SR range
    >= it count as such (the others are shown as plain tokens). `tree`: the path's generation
    tree (every node's children) instead of the decision-point table."""
    run = load_run(run_dir, ("questions", "paths", "children", "distributions", "nodes"))
    console = console or Console()
    if teacher is None:
        teacher = default_teacher(run_dir, method, min_sr_range)
    if teacher not in run.scored_teachers:
        raise run.unknown_teacher(teacher, run.scored_teachers)
    if method not in run.methods and run.methods:
        raise ValueError(f"unknown method {method!r}; this run has: {', '.join(run.methods)}")
    run.tables["nodes"] = high_stakes(run.nodes, min_sr_range)
    qid = resolve_question(run, qid)
    views = path_views(run, only=(qid, int(path_id)))
    if not views:
        paths = run.tables["paths"]
        have = sorted(int(p) for p in paths.loc[paths["qid"] == qid, "path_id"])
        raise KeyError(f"no path {qid}/{path_id} in {run_dir}; question {qid} has "
                       + (f"paths {', '.join(map(str, have))}" if have else
                          "no representative path (excluded, or its tree is not built)"))
    view = views[0]
    scored = [a for n in view.nodes.values()
              if math.isfinite(a := n.align.get((teacher, method), math.nan))]
    mean = f"{sum(scored) / len(scored):+.3f}" if scored else "n/a"
    head = Text()
    head.append(f"question {visible(str(qid))} · path {path_id} · ", style="bold")
    head.append("correct" if view.correct else "incorrect",
                style="bold green" if view.correct else "bold magenta")
    from distillscope.export import TEACHER_FREE

    who = "no teacher" if method in TEACHER_FREE else f"teacher {visible(teacher)}"
    head.append(f" · {who} · {method} · {len(view.tokens)} tokens, "
                f"{len(view.nodes)} decision points, mean align {mean}")
    if min_sr_range is not None:
        head.append(f" · high-stakes only (SR range ≥ {min_sr_range:g})")
    console.print(head)
    console.print(legend())
    console.print()
    console.print(path_text(view, teacher, method))
    console.print()
    if tree:
        from distillscope.report.tree_view import path_tree, tree_rich

        console.print(tree_rich(path_tree(run, qid, int(path_id), teacher, method), teacher,
                                method, f"question {visible(str(qid))} · path {path_id}"))
    elif view.nodes:
        console.print(decision_table(view, teacher, method))
    else:
        console.print(Text("No decision point on this path.", style="italic"))
