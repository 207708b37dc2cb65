"""PNG figures of `distillscope compare`: the teacher ranking per setting (table 1 as a
figure), figure 3's right panel across settings (correct - incorrect with CIs) and the SR range
distribution per setting. Same style as report/plots.py; each returns PNG bytes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from distillscope.report.plots import (
    NEUTRAL,
    _empty,
    _figure,
    _png,
    _style,
    _with_rc,
    ci_bars,
)

PALETTE = ("#2166ac", "#e08214", "#1b7837", "#762a83", "#b2182b", "#555555", "#8c510a",
           "#01665e")


@_with_rc
def ranking_by_setting_plot(wide: pd.DataFrame, settings: Sequence[str], method: str) -> bytes:
    """One row per teacher, one marker per setting (offset vertically), 95% CIs."""
    n = len(wide)
    fig = _figure(7.0, 1.4 + 0.45 * max(n, 1) * max(1, len(settings)) ** 0.5)
    if n == 0 or not settings:
        return _empty(fig, "no teacher has a scored decision point")
    ax = fig.add_subplot()
    y0 = np.arange(n)[::-1]
    k = len(settings)
    offs = np.linspace(-0.3, 0.3, k) if k > 1 else np.zeros(1)
    for i, s in enumerate(settings):
        m = wide[f"{i}_mean"].to_numpy(float)
        lo, hi = wide[f"{i}_lo"].to_numpy(float), wide[f"{i}_hi"].to_numpy(float)
        ok = np.isfinite(m)
        c = PALETTE[i % len(PALETTE)]
        below, above = ci_bars(m, lo, hi)
        err = [below[ok], above[ok]]
        ax.errorbar(m[ok], (y0 + offs[i])[ok], xerr=err, fmt="o", color=c, markersize=4,
                    capsize=2, elinewidth=1.1, label=s)
    ax.axvline(0, color="#333333", linewidth=0.8)
    ax.set_yticks(y0, list(wide["teacher"].astype(str)))
    ax.set_ylim(-0.6, n - 0.4)
    ax.set_xlabel(f"mean alignment cos(ideal, {method}), each question once · 95% CI")
    ax.set_title("Teacher ranking per setting", loc="left")
    ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=min(k, 3))
    _style(ax)
    ax.grid(False, axis="y")
    return _png(fig)


@_with_rc
def correct_incorrect_by_setting_plot(cvi: pd.DataFrame, settings: Sequence[str]) -> bytes:
    """Figure 3, right panel: Δ = correct − incorrect with its clustered CI, per setting, for
    the mean and the SR-weighted cosine."""
    fig = _figure(7.0, 1.2 + 0.5 * max(len(settings), 1))
    c = cvi[cvi["metric"].isin(["mean_cosine", "weighted_cosine"])] if len(cvi) else cvi
    if c.empty:
        return _empty(fig, "no scored decision point")
    ax = fig.add_subplot()
    y0 = np.arange(len(settings))[::-1]
    for off, metric, color, name in ((0.12, "mean_cosine", "#2166ac", "mean cosine"),
                                     (-0.12, "weighted_cosine", "#e08214", "SR-weighted")):
        rows = c[c["metric"] == metric].set_index("setting").reindex(list(settings))
        d = rows["delta"].to_numpy(float)
        lo, hi = ci_bars(d, rows["delta_ci_low"], rows["delta_ci_high"])
        ok = np.isfinite(d)
        ax.errorbar(d[ok], (y0 + off)[ok], xerr=[lo[ok], hi[ok]], fmt="o", color=color,
                    capsize=3, markersize=4, label=name)
    ax.axvline(0, color="#333333", linewidth=0.8)
    ax.set_yticks(y0, list(settings))
    ax.set_ylim(-0.6, len(settings) - 0.4)
    ax.set_xlabel("Δ = correct − incorrect (95% question-clustered CI)")
    ax.set_title("Correct vs incorrect paths across settings", loc="left")
    ax.legend(fontsize=8, loc="lower right")
    _style(ax)
    ax.grid(False, axis="y")
    return _png(fig)


@_with_rc
def sr_range_plot(values: dict[str, np.ndarray], threshold: float | None = None) -> bytes:
    """Histogram of SR range over distinct decision points, one outline per setting."""
    fig = _figure(6.5, 3.2)
    values = {k: v for k, v in values.items() if v.size}
    if not values:
        return _empty(fig, "no scored decision point")
    ax = fig.add_subplot()
    bins = np.linspace(0, 1, 26)
    for i, (s, v) in enumerate(values.items()):
        ax.hist(v, bins=bins, histtype="step", density=True, linewidth=1.3,
                color=PALETTE[i % len(PALETTE)],
                label=f"{s} (n={v.size}, median {np.median(v):.2f})")
    if threshold is not None:
        ax.axvline(threshold, color=NEUTRAL, linestyle="--", linewidth=1)
    ax.set_xlabel("SR range (max − min P̂ over S_u) per decision point")
    ax.set_ylabel("density")
    ax.set_title("How much is at stake at the decision points", loc="left")
    ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=1)
    _style(ax)
    return _png(fig)
