"""The generation tree of one representative path (the paper's figure 1): every node of the
path with its children (token, visits, P̂ with a 95% Wilson interval, P_θ and P_te), decision
points highlighted. `tree_html` gives collapsible HTML for report.html (nested <details>, no
script; runs of non-decision nodes fold into one line), `tree_rich` a rich Tree for
`distillscope show --tree`.

Token texts are model output: escaped here for HTML (report/html.py's `esc`) and made visible
(`visible`) for the terminal, never parsed as markup.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
from rich.text import Text
from rich.tree import Tree

from distillscope.report.data import Run, visible
from distillscope.report.html import colour, esc

Z = 1.959964  # 95%


@dataclass
class TreeChild:
    text: str
    visits: int
    successes: int
    p_hat: float
    lo: float
    hi: float
    p_student: float
    p_teacher: float
    on_path: bool
    in_su: bool


@dataclass
class TreeNode:
    depth: int
    token: str
    decision: bool
    align: float
    sr_range: float
    children: list[TreeChild]


def wilson(s: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval of s successes in n trials (NaN for n = 0)."""
    if n <= 0:
        return math.nan, math.nan
    p = s / n
    den = 1 + Z * Z / n
    mid = (p + Z * Z / (2 * n)) / den
    half = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def path_tree(run: Run, qid: str, path_id: int, teacher: str,
              method: str = "gkd") -> list[TreeNode]:
    """One node per token of the path, with every child the tree recorded there (most visited
    first). A decision point is a node of the (possibly filtered) nodes table with |S_u| >= 2
    and SR range > 0; its alignment is `teacher`'s under `method` (Dr. GRPO: teacher-free)."""
    paths = run.tables["paths"]
    p = paths[(paths["qid"] == qid) & (paths["path_id"] == path_id)]
    if p.empty:
        return []
    tokens = [str(t) for t in (p.iloc[0]["tokens"] if p.iloc[0]["tokens"] is not None else [])]
    sel = lambda df: df[(df["qid"] == qid) & (df["path_id"] == path_id)]  # noqa: E731
    nodes, kids, dist = sel(run.nodes), sel(run.tables["children"]), sel(
        run.tables["distributions"])
    nodes = nodes[(nodes["n_children"] >= 2) & (nodes["sr_range"] > 0)
                  & (nodes["method"] == method)]
    mine = nodes[(nodes["teacher"] == teacher) | (nodes["teacher"].astype(str) == "")]
    align = dict(zip(mine["depth"].astype(int), mine["align"].astype(float), strict=True))
    sr = dict(zip(nodes["depth"].astype(int), nodes["sr_range"].astype(float), strict=True))
    probs: dict[tuple[int, int, str], float] = {}
    for d, k, m, pr in zip(dist["depth"], dist["token"], dist["model"], dist["prob"], strict=True):
        probs[(int(d), int(k), str(m))] = float(pr)
    by_depth: dict[int, pd.DataFrame] = {int(d): g for d, g in kids.groupby("depth")}
    out = []
    for d, tok in enumerate(tokens):
        g = by_depth.get(d)
        children = []
        if g is not None:
            for r in g.sort_values(["visits", "token"], ascending=[False, True]).itertuples():
                lo, hi = wilson(int(r.successes), int(r.visits))
                children.append(TreeChild(
                    str(r.token_text), int(r.visits), int(r.successes), float(r.p_hat), lo, hi,
                    probs.get((d, int(r.token), "student"), math.nan),
                    probs.get((d, int(r.token), teacher), math.nan), bool(r.on_path),
                    int(r.visits) >= run.n_sig))
        out.append(TreeNode(d, tok, d in sr, align.get(d, math.nan), sr.get(d, math.nan),
                            children))
    return out


def _f(x: float, signed: bool = False) -> str:
    if not math.isfinite(x):
        return "–"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def _child_line(c: TreeChild) -> str:
    return (f"{'▸ ' if c.on_path else ''}{visible(c.text)!r}  n={c.visits}  P̂={_f(c.p_hat)} "
            f"[{_f(c.lo)}, {_f(c.hi)}]  P_θ={_f(c.p_student)}  P_te={_f(c.p_teacher)}"
            + ("" if c.in_su else "  (below N_sig)"))


def _segments(tree: list[TreeNode]) -> list[list[TreeNode]]:
    """Decision points alone; runs of other nodes grouped."""
    segs: list[list[TreeNode]] = []
    for n in tree:
        if n.decision or not segs or segs[-1][0].decision:
            segs.append([n])
        else:
            segs[-1].append(n)
    return segs


def tree_html(tree: list[TreeNode], teacher: str, method: str, heading: str) -> str:
    """Collapsible HTML of the path's tree; every text escaped. `heading` is plain text."""
    if not tree:
        return "<p>No representative path in this run.</p>"
    parts = []
    for seg in _segments(tree):
        if seg[0].decision:
            n = seg[0]
            a = n.align
            bg = colour(a) if math.isfinite(a) else "#ddd"
            kids = "".join(
                f'<li class="{"on" if c.on_path else ""}{" su" if c.in_su else ""}">'
                f"{esc(_child_line(c))}</li>" for c in n.children)
            parts.append(
                f'<details class="tnode dp" open><summary><span class="tdot" style="background:'
                f'{bg}"></span>depth {n.depth} · {esc(repr(visible(n.token)))} · align '
                f"{esc(_f(a, True))} · SR range {esc(_f(n.sr_range))} · "
                f"{len(n.children)} children</summary><ul>{kids}</ul></details>")
        else:
            text = "".join(n.token for n in seg)
            inner = "".join(
                f"<li>depth {n.depth} · {esc(repr(visible(n.token)))}: "
                + (esc("; ".join(_child_line(c) for c in n.children)) or "no child recorded")
                + "</li>" for n in seg)
            parts.append(f'<details class="tnode"><summary>depths {seg[0].depth}–{seg[-1].depth}'
                         f" · {len(seg)} node(s), no decision point: "
                         f"{esc(repr(visible(text[:80])))}</summary><ul>{inner}</ul></details>")
    return (f'<div class="gtree"><p class="sans">{esc(heading)} · teacher {esc(teacher)} · '
            f"{esc(method)}. Decision points open, coloured by alignment; ▸ marks the path's own "
            "child; P̂ with a 95% Wilson interval.</p>" + "".join(parts) + "</div>")


TREE_CSS = (".gtree details.tnode{margin:2px 0 2px 14px;border-left:2px solid #ddd;"
            "padding-left:8px;font-size:12px}.gtree details.dp{border-left-color:#2166ac}"
            ".gtree .tdot{display:inline-block;width:10px;height:10px;border-radius:50%;"
            "margin-right:6px;border:1px solid #888}.gtree li.on{font-weight:bold}"
            ".gtree ul{margin:2px 0 4px 0;font-family:monospace;white-space:pre-wrap}")


def tree_rich(tree: list[TreeNode], teacher: str, method: str, heading: str) -> Tree:
    """The same tree for the terminal (rich Tree; model text as plain Text)."""
    root = Tree(Text(f"{heading} · teacher {visible(teacher)} · {method}", style="bold"))
    for seg in _segments(tree):
        if seg[0].decision:
            n = seg[0]
            label = Text(f"depth {n.depth} {visible(n.token)!r}  align {_f(n.align, True)}  "
                         f"SR {_f(n.sr_range)}", style="bold cyan")
            branch = root.add(label)
            for c in n.children:
                branch.add(Text(_child_line(c), style="bold" if c.on_path else ""))
        else:
            text = "".join(n.token for n in seg)
            root.add(Text(f"depths {seg[0].depth}-{seg[-1].depth}: {visible(text[:60])!r} "
                          f"({len(seg)} node(s), no decision point)", style="grey50"))
    return root
