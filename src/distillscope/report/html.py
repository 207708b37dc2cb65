"""The self-contained report.html: inline CSS and JS, figures as base64 PNG, no external URL.

Security: token texts, path texts and prompts are untrusted model (or dataset) output.
- In HTML they go through `html.escape` (and control characters become visible symbols).
- The per-token data for tooltips is JSON inside <script type="application/json"> with
  '<', '>' and '&' written as \\u003c, \\u003e, \\u0026, so no text can close the element; the
  inline JS reads it with JSON.parse and writes to the DOM with textContent only.
- A Content-Security-Policy with a per-report nonce lets only the report's own script run, so
  even a missed escape could not execute injected script (defence in depth, not the defence).
"""

from __future__ import annotations

import base64
import html
import json
import math
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import pandas as pd

from distillscope.report.data import PathView, visible
from distillscope.report.findings import Finding

STOPS = ((-1.0, (178, 24, 43)), (-0.5, (239, 138, 98)), (0.0, (247, 247, 247)),
         (0.5, (103, 169, 207)), (1.0, (33, 102, 172)))
NA_BACKGROUND = "repeating-linear-gradient(45deg,#c8c8c8 0 2px,#fff 2px 5px)"


def esc(x: Any) -> str:
    """HTML-escape any value (quotes included), control characters made visible."""
    return html.escape(visible(str(x)), quote=True)


def colour(a: float) -> str:
    """Diverging RdBu scale on [-1, 1] (red = harmful, blue = helpful); same as report.js."""
    a = max(-1.0, min(1.0, a))
    for (x0, c0), (x1, c1) in zip(STOPS, STOPS[1:], strict=False):
        if a <= x1:
            f = (a - x0) / (x1 - x0)
            return "rgb({},{},{})".format(*(round(u + f * (v - u)) for u, v in zip(c0, c1,
                                                                                    strict=True)))
    return "rgb(33,102,172)"


def _clean(x: Any) -> Any:
    """JSON-safe: NaN/inf -> null, numpy scalars -> Python."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def json_for_script(obj: Any) -> str:
    """JSON that is inert inside a <script> element whatever strings it holds."""
    s = json.dumps(_clean(obj), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    for ch, rep in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"),
                    ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        s = s.replace(ch, rep)
    return s


def _template(name: str) -> str:
    return resources.files("distillscope.report").joinpath("templates", name).read_text("utf-8")


# ---------------------------------------------------------------------------------------------
# Tables


def fmt_value(x: Any, kind: str) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if kind == "s":
        return str(x)
    if kind == "d":
        return f"{int(round(float(x))):d}"
    if kind == "b":
        return "yes" if bool(x) else "no"
    if kind == "p":
        x = float(x)
        return f"{x:.1e}" if x < 1e-3 else (f"{x:.3f}" if x < 0.1 else f"{x:.2f}")
    if kind == "pct":
        return f"{float(x):.1f}%"
    if kind.startswith("+"):
        return f"{float(x):+.{int(kind[1:])}f}"
    return f"{float(x):.{int(kind)}f}"


@dataclass(frozen=True)
class Col:
    name: str  # a column, or "a|b" for an interval [a, b]
    label: str
    kind: str = "3"


def table_html(df: pd.DataFrame, cols: Sequence[Col], caption: str = "") -> str:
    """A booktabs-style table; every cell escaped. `caption` is trusted HTML (the report's
    own wording, never data)."""
    left = {c.name for c in cols if c.kind == "s"}
    head = "".join(f'<th{" class=l" if c.name in left else ""}>{esc(c.label)}</th>' for c in cols)
    body = []
    for _, r in df.iterrows():
        cells = []
        for c in cols:
            if "|" in c.name:
                lo, hi = (fmt_value(r.get(n), c.kind) for n in c.name.split("|"))
                text, cls = ("–" if lo == "–" else f"[{lo}, {hi}]"), ""
            else:
                text = fmt_value(r.get(c.name), c.kind)
                cls = ' class="yes"' if c.kind == "b" and text == "yes" else ""
                cls = ' class="l"' if c.name in left else cls
            cells.append(f"<td{cls}>{esc(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    if not body:
        body.append(f'<tr><td colspan="{len(cols)}">no rows</td></tr>')
    cap = f"<caption>{caption}</caption>" if caption else ""
    return (f'<div class="tablewrap"><table>{cap}<thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def figure_html(png: bytes, caption: str, alt: str, dpi: int = 150) -> str:
    """An embedded PNG shown at ~100 CSS px per inch (crisp on high-DPI screens).
    `caption` is trusted HTML."""
    b64 = base64.b64encode(png).decode("ascii")
    width = int.from_bytes(png[16:20], "big") * 100 // dpi if png[:8] == b"\x89PNG\r\n\x1a\n" else 0
    w = f' width="{width}"' if width else ""
    return (f'<figure><img src="data:image/png;base64,{b64}"{w} alt="{esc(alt)}">'
            f"<figcaption>{caption}</figcaption></figure>")


# ---------------------------------------------------------------------------------------------
# Paths


def _token_display(tok: str, decision: bool) -> str:
    if decision:
        tok = "\u2205" if tok == "" else tok.replace("\n", "\u21b5\n")
    return esc(tok)


def path_payload(view: PathView, teachers: Sequence[str], methods: Sequence[str]) -> dict:
    """Compact JSON of one path's decision points: [depth, sr, visits, |S_u|,
    [align per (teacher, method)], [[child text, p_hat, visits, p_student, [p_te per teacher],
    on_path]], token text]."""
    nodes = []
    for d, nv in view.nodes.items():
        align = [nv.align.get((t, m), math.nan) for t in teachers for m in methods]
        kids = [[visible(c.token_text), c.p_hat, c.visits, c.p_student,
                 [c.p_teacher.get(t, math.nan) for t in teachers], c.on_path]
                for c in nv.children]
        tok = visible(view.tokens[d]) if d < len(view.tokens) else ""
        nodes.append([d, nv.sr_range, nv.visits, nv.n_children, align, kids, tok])
    return {"n": nodes}


def path_html(view: PathView, index: int, combo: tuple[str, str]) -> str:
    spans, scored = [], []
    order = {d: i for i, d in enumerate(view.nodes)}
    for d, tok in enumerate(view.tokens):
        if d in order:
            a = view.nodes[d].align.get(combo, math.nan)
            if math.isfinite(a):
                style = f"background:{colour(a)}" + (";color:#fff" if abs(a) > 0.65 else "")
                scored.append(a)
            else:
                style = f"background:{NA_BACKGROUND}"
            spans.append(f'<span class="tk dp" data-n="{order[d]}" style="{style}">'
                         f"{_token_display(tok, True)}</span>")
        else:
            spans.append(f'<span class="tk">{_token_display(tok, False)}</span>')
    kind = "correct" if view.correct else "incorrect"
    mean = f"{sum(scored) / len(scored):+.3f} ({len(scored)} scored)" if scored else "n/a"
    return (f'<section class="path" data-p="{index}"><header>'
            f'<span class="badge {kind}">{kind}</span><span>path {view.path_id}</span>'
            f"<span>{len(view.tokens)} tokens</span><span>{len(view.nodes)} decision points"
            f'</span><span>mean align (<span class="ds-current">{esc(combo[0])} · '
            f'{esc(combo[1])}</span>): <span class="pm">{esc(mean)}</span></span></header>'
            f'<div class="tokens">{"".join(spans)}</div></section>')


def paths_section(views: Sequence[PathView], prompts: dict[str, str], teachers: Sequence[str],
                  methods: Sequence[str], combo: tuple[str, str], open_first: int = 10) -> str:
    out, by_q = [], {}
    for i, v in enumerate(views):
        by_q.setdefault(v.qid, []).append((i, v))
    for qn, (qid, items) in enumerate(by_q.items()):
        n_c = sum(v.correct for _, v in items)
        inner = "".join(path_html(v, i, combo) for i, v in items)
        prompt = prompts.get(qid)
        ptext = f'<div class="prompt">{esc(prompt)}</div>' if prompt else ""
        opened = " open" if qn < open_first else ""
        out.append(f'<details class="question"{opened}><summary>Question {esc(qid)} · '
                   f"{n_c} correct, {len(items) - n_c} incorrect path(s)</summary>"
                   f"{ptext}{inner}</details>")
    t_opts = "".join(f'<option value="{esc(t)}"{" selected" if t == combo[0] else ""}>{esc(t)}'
                     "</option>" for t in teachers)
    m_opts = "".join(f'<option value="{esc(m)}"{" selected" if m == combo[1] else ""}>{esc(m)}'
                     "</option>" for m in methods)
    controls = (
        '<div class="controls"><label>Teacher <select id="ds-teacher">' + t_opts +
        '</select></label><label>Method <select id="ds-method">' + m_opts + "</select></label>"
        '<span class="legend"><span>−1 harmful</span><span class="bar"></span>'
        '<span>+1 helpful</span><span class="sw nd"></span><span>not a decision point</span>'
        '<span class="sw na"></span><span>undefined</span></span></div>'
    )
    return controls + "".join(out)


# ---------------------------------------------------------------------------------------------
# The page


def findings_html(findings: Iterable[Finding]) -> str:
    items = []
    for f in findings:
        items.append(f'<li class="{esc(f.status)}"><b class="ft">{esc(f.title)}</b>'
                     f'<span class="tag">{esc(f.status)}</span><p>{esc(f.text)}</p></li>')
    return f'<ul class="findings">{"".join(items)}</ul>'


def meta_html(items: Sequence[tuple[str, Any]]) -> str:
    cells = "".join(f"<div><b>{esc(k)}</b>{esc(v)}</div>" for k, v in items)
    return f'<div class="meta">{cells}</div>'


def render_page(
    *,
    title: str,
    subtitle: str,
    meta: Sequence[tuple[str, Any]],
    provenance_text: str,
    config_text: str,
    findings: Sequence[Finding],
    body_sections: Sequence[tuple[str, str]],
    paths_block: str,
    payload: dict,
    generated: str,
) -> str:
    """Assemble the page. `body_sections` are (heading, trusted HTML built by this module);
    every other string argument is plain text and escaped here."""
    nonce = secrets.token_urlsafe(18)
    csp = (f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
           f"script-src 'nonce-{nonce}'; base-uri 'none'; form-action 'none'")
    sections = "".join(f"<h2>{esc(h)}</h2>{body}" for h, body in body_sections)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>{_template("report.css")}</style>
</head>
<body>
<h1>{esc(title)}</h1>
<p class="subtitle">{esc(subtitle)}</p>
{meta_html(meta)}
<details class="prov"><summary>Full provenance and configuration</summary>
<pre>{esc(provenance_text)}</pre><pre>{esc(config_text)}</pre></details>
<h2>Headline findings</h2>
{findings_html(findings)}
{sections}
<h2>Representative paths, token by token</h2>
<p class="sans" style="font-size:12px;color:#5f6368">Each token is the choice made at a node
u = (question, prefix). Decision points (|S_u| &ge; 2 children with enough visits and a
non-zero success-rate range) are coloured by the alignment of the chosen teacher and method;
hover for P_&theta;, P_te and P&#770; of every child in S_u. Grey text: not a decision point.
Hatched: cosine undefined (a zero-norm gradient).</p>
{paths_block}
<div id="tip" role="tooltip"></div>
<p class="footer">Generated by distillscope on {esc(generated)}. Self-contained: no external
resources. Model text is shown escaped.</p>
<script type="application/json" id="ds-data">{json_for_script(payload)}</script>
<script nonce="{nonce}">{_template("report.js")}</script>
</body>
</html>
"""
