"""PNG figures of the report (matplotlib, Agg canvas, no pyplot global state).

Each function takes analysis outputs (DataFrames) and returns PNG bytes, so the caller decides
where they go (a file, and base64 inside report.html). Figures: the teacher ranking with CIs
(paper figure 4), correct vs incorrect (figure 3), the alignment distribution (E.1) and
alignment along depth for a few paths (E.2).
"""

from __future__ import annotations

import functools
import io

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from distillscope.analysis import decision_points

CORRECT, INCORRECT = "#1b7837", "#762a83"  # PRGn ends: colour-blind safe
POS, NEG, NEUTRAL = "#2166ac", "#b2182b", "#555555"
RC = {
    "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "axes.spines.top": False,
    "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.25, "legend.frameon": False,
    "savefig.dpi": 150, "font.family": "DejaVu Sans",
}


def _with_rc(fn):
    """Run a plotting function under the report's rcParams (restored afterwards)."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with matplotlib.rc_context(RC):
            return fn(*args, **kwargs)

    return wrapped


def _figure(w: float, h: float, layout: str | None = "constrained") -> Figure:
    fig = Figure(figsize=(w, h), layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=150, metadata={"Software": None})
    return buf.getvalue()


def _empty(fig: Figure, text: str) -> bytes:
    ax = fig.add_subplot()
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", color=NEUTRAL)
    return _png(fig)


def _style(ax) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(True, alpha=0.25, linewidth=0.6)
    ax.set_axisbelow(True)


# ---------------------------------------------------------------------------------------------


@_with_rc
def ci_bars(center, low, high) -> tuple[np.ndarray, np.ndarray]:
    """Error-bar lengths (below, above) of intervals around `center`. A percentile interval
    may exclude its point estimate (few, skewed questions): that side is drawn as 0, never a
    negative length (which matplotlib refuses); an unknown bound is 0 too."""
    c = np.asarray(center, dtype=float)
    lo = np.maximum(np.nan_to_num(c - np.asarray(low, dtype=float)), 0)
    hi = np.maximum(np.nan_to_num(np.asarray(high, dtype=float) - c), 0)
    return lo, hi


def ranking_plot(ranking: pd.DataFrame, method: str = "gkd") -> bytes:
    """Teachers by question-weighted mean alignment (`mean`), 95% question-clustered bootstrap
    CI as error bars."""
    n = len(ranking)
    fig = _figure(6.0, 1.2 + 0.38 * max(n, 1))
    if n == 0:
        return _empty(fig, "no teacher has a scored decision point")
    ax = fig.add_subplot()
    r = ranking.iloc[::-1]
    y = np.arange(n)
    m = r["mean"].to_numpy(float)
    lo, hi = ci_bars(m, r["ci_low"], r["ci_high"])
    colors = [POS if v > 0 else NEG for v in m]
    ax.errorbar(m, y, xerr=[lo, hi], fmt="none", ecolor="#888888", elinewidth=1.4, capsize=3)
    ax.scatter(m, y, c=colors, s=36, zorder=3)
    ax.axvline(0, color="#333333", linewidth=0.8)
    ax.set_yticks(y, [f"{t}  (n={k})" for t, k in zip(r["teacher"], r["n_nodes"], strict=True)])
    for yi, v in zip(y, m, strict=True):
        if not np.isfinite(v):  # an empty row would otherwise look like a missing point
            ax.text(-1.0, yi, "no defined alignment (zero-norm gradients)", va="center",
                    ha="left", fontsize=8, color=NEUTRAL, style="italic")
    ax.set_xlim(-1.08, 1.08)
    ax.set_ylim(-0.6, n - 0.4)  # every row on the canvas, even one without a point
    ax.set_xlabel(f"mean alignment cos(ideal, {method}), each question once  ·  95% CI, "
                  "questions resampled")
    ax.set_title("Teacher ranking by gradient alignment", loc="left")
    _style(ax)
    ax.grid(False, axis="y")
    return _png(fig)


@_with_rc
def correct_incorrect_plot(nodes: pd.DataFrame, cvi: pd.DataFrame, method: str = "gkd") -> bytes:
    """Left: alignment distribution on correct vs incorrect paths. Right: delta = correct -
    incorrect per metric with its clustered CI and permutation p."""
    df, _ = decision_points(nodes, method)
    fig = _figure(8.0, 3.4)
    if df.empty:
        return _empty(fig, "no scored decision point")
    ax, bx = fig.subplots(1, 2, width_ratios=[1.5, 1])
    bins = np.linspace(-1, 1, 21)
    for flag, color, label in ((True, CORRECT, "correct"), (False, INCORRECT, "incorrect")):
        a = df.loc[df["path_correct"] == flag, "align"].to_numpy(float)
        if a.size == 0:
            continue
        ax.hist(a, bins=bins, density=True, histtype="stepfilled", alpha=0.25, color=color)
        ax.hist(a, bins=bins, density=True, histtype="step", color=color, linewidth=1.4,
                label=f"{label} paths (n={a.size}, mean {a.mean():+.3f})")
        ax.axvline(a.mean(), color=color, linestyle="--", linewidth=1)
    ax.set_xlabel(f"alignment cos(ideal, {method})")
    ax.set_ylabel("density")
    ax.set_title("Alignment on correct vs incorrect paths", loc="left")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), fontsize=8, ncol=1)
    _style(ax)
    names = {"mean_cosine": "mean cos", "weighted_cosine": "SR-weighted",
             "teacher_adv": "teacher adv."}
    c = cvi[cvi["metric"].isin(["mean_cosine", "weighted_cosine"])].reset_index(drop=True)
    y = np.arange(len(c))[::-1]
    d = c["delta"].to_numpy(float)
    lo, hi = ci_bars(d, c["delta_ci_low"], c["delta_ci_high"])
    bx.errorbar(d, y, xerr=[lo, hi], fmt="o", color=NEUTRAL, capsize=3, markersize=5)
    bx.axvline(0, color="#333333", linewidth=0.8)
    labels = []
    for r in c.itertuples():
        p = "n/a" if not np.isfinite(r.p_perm) else f"{r.p_perm:.2g}"
        labels.append(f"{names.get(r.metric, r.metric)}\np_perm={p}")
    bx.set_yticks(y, labels)
    bx.set_ylim(-0.6, len(c) - 0.4)
    bx.set_xlabel("Δ = correct − incorrect (95% CI)")
    bx.set_title("Clustered difference", loc="left")
    _style(bx)
    bx.grid(False, axis="y")
    return _png(fig)


@_with_rc
def alignment_histogram(nodes: pd.DataFrame, methods: list[str]) -> bytes:
    """Distribution of per-node alignment over all teachers, one outline per method."""
    fig = _figure(6.5, 3.4)
    frames = {m: decision_points(nodes, m)[0]["align"].to_numpy(float) for m in methods}
    frames = {m: a for m, a in frames.items() if a.size}
    if not frames:
        return _empty(fig, "no scored decision point")
    ax = fig.add_subplot()
    bins = np.linspace(-1, 1, 41)
    palette = ["#2166ac", "#e08214", "#1b7837", "#762a83", "#555555"]
    for i, (m, a) in enumerate(frames.items()):
        color = palette[i % len(palette)]
        if i == 0:
            ax.hist(a, bins=bins, color=color, alpha=0.3)
        ax.hist(a, bins=bins, histtype="step", color=color, linewidth=1.3,
                label=f"{m}: mean {a.mean():+.3f}, sd {a.std():.2f} (n={a.size})")
    ax.axvline(0, color="#333333", linewidth=0.8)
    ax.set_xlabel("alignment cos(ideal, method) per decision point")
    ax.set_ylabel("decision points")
    ax.set_title("Alignment distribution (all teachers)", loc="left")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)
    _style(ax)
    return _png(fig)


@_with_rc
def path_depth_plot(nodes: pd.DataFrame, teacher: str, method: str = "gkd",
                    max_paths: int = 8) -> bytes:
    """Alignment along depth for up to `max_paths` paths of one teacher (appendix E.2)."""
    df, _ = decision_points(nodes, method)
    df = df[df["teacher"] == teacher]
    keys = df[["qid", "path_id", "path_correct"]].drop_duplicates().sort_values(["qid", "path_id"])
    keys = keys.head(max_paths)
    height = 0.8 + 0.75 * max(len(keys), 1)
    fig = _figure(8.0, height, layout=None)  # fixed margins: constrained layout is slow here
    if keys.empty:
        return _empty(fig, f"no scored decision point for teacher {teacher}")
    fig.subplots_adjust(left=0.09, right=0.86, top=1 - 0.4 / height, bottom=0.5 / height,
                        hspace=0.3)
    axes = fig.subplots(len(keys), 1, sharex=True, squeeze=False)[:, 0]
    for ax, k in zip(axes, keys.itertuples(), strict=True):
        d = df[(df["qid"] == k.qid) & (df["path_id"] == k.path_id)].sort_values("depth")
        x, a = d["depth"].to_numpy(), d["align"].to_numpy(float)
        ax.vlines(x, 0, a, colors=np.where(a > 0, POS, NEG), linewidth=2)
        ax.plot(x, a, color="#999999", linewidth=0.6)
        ax.axhline(0, color="#333333", linewidth=0.6)
        ax.set_ylim(-1.05, 1.05)
        ax.set_yticks([-1, 0, 1])
        tag = "correct" if k.path_correct else "incorrect"
        ax.text(1.02, 0.5, f"{k.qid} / path {k.path_id}\n{tag}", transform=ax.transAxes,
                ha="left", va="center", fontsize=7.5,
                color=CORRECT if k.path_correct else INCORRECT)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _style(ax)
    axes[-1].set_xlabel("depth (token position)")
    fig.supylabel(f"alignment cos(ideal, {method}) at decision points", x=0.01, fontsize=9)
    fig.suptitle(f"Alignment along the path, teacher {teacher}, {method}", x=0.01,
                 ha="left", fontsize=10)
    return _png(fig)
