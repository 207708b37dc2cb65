"""The report of a run: summary.json, tables (CSV + Markdown), PNG figures and report.html.

    write_report(run_dir) -> RUN_DIR/report/report.html

Everything is computed from the run's tables by `distillscope.analysis`; no model is loaded.
The report is all or nothing: it is built in a temporary folder beside RUN_DIR/report and
swapped in when complete, so a kill or a full disk leaves the previous report as it was (files
the report does not write, put into RUN_DIR/report by hand, are carried over, never deleted).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from distillscope import analysis
from distillscope.report import html as H
from distillscope.report import plots
from distillscope.report.compare_plots import sr_range_plot
from distillscope.report.data import Run, load_run, path_views
from distillscope.report.findings import Finding, headline_findings
from distillscope.report.header import incomplete_note, provenance_items, truncated_rollouts
from distillscope.report.tree_view import TREE_CSS, path_tree, tree_html
from distillscope.stakes import check_threshold, high_stakes, per_question_ranking, sr_range_values

__all__ = ["truncated_rollouts", "write_report"]

REPORT_TABLES = ("questions", "paths", "children", "distributions", "nodes")

METRIC_LABELS = {"mean_cosine": "Mean cosine", "weighted_cosine": "Weighted cosine (SR range)",
                 "teacher_adv": "Teacher advantage"}
FEATURE_LABELS = {"depth_norm": "Depth (normalised)", "kl": "KL(π_θ ‖ π_te)",
                  "js": "JS divergence", "l2": "L2 distance", "prob_cos": "Cosine(π_θ, π_te)",
                  "entropy_gap": "Entropy gap", "overlap_ratio": "Top-k overlap ratio"}

# How each analysis table appears in the HTML: (heading, caption HTML, columns).
C = H.Col
TABLES: dict[str, tuple[str, str, list]] = {
    "teacher_ranking": (
        "Table 1 · Teacher ranking",
        "<b>Mean alignment per teacher, each question counting once</b> (per question the mean "
        "over its decision points, then the mean over questions): the ranking statistic, 95% "
        "CI from a question-clustered bootstrap of that same mean (questions resampled, not "
        "nodes). <i>Pooled</i>: the plain mean over decision points, in which a question with "
        "more of them weighs more; shown for comparison, not ranked on. <i>Gap</i>: in the "
        "question-weighted mean to the next-ranked teacher, with a paired bootstrap CI; "
        "<i>separated</i> when it excludes 0.",
        [C("rank", "#", "d"), C("teacher", "Teacher", "s"),
         C("mean", "Mean align (per question)", "+3"), C("ci_low|ci_high", "95% CI", "+3"),
         C("mean_nodes", "Mean align (nodes pooled)", "+3"), C("n_nodes", "Nodes", "d"),
         C("n_nan", "NaN dropped", "d"), C("n_questions", "Questions", "d"),
         C("gap_to_next", "Gap to next", "+3"), C("gap_ci_low|gap_ci_high", "Gap CI", "+3"),
         C("separated", "Separated", "b")],
    ),
    "correct_vs_incorrect": (
        "Table 4 · Correct vs incorrect paths (all teachers)",
        "<b>Δ = correct − incorrect.</b> CI: question-clustered bootstrap. <i>p (perm.)</i>: "
        "path labels permuted within questions that have both kinds of path (exact when few "
        "assignments); <i>min p</i> is the smallest p that design allows. <i>p (Welch)</i>: the "
        "paper's node-level test, shown for comparison; it ignores clustering and overstates "
        "significance.",
        [C("metric_label", "Metric", "s"), C("correct", "Correct", "+3"),
         C("incorrect", "Incorrect", "+3"), C("delta", "Δ", "+3"),
         C("delta_ci_low|delta_ci_high", "Δ 95% CI", "+3"), C("p_perm", "p (perm.)", "p"),
         C("p_perm_min", "min p", "p"), C("p_welch", "p (Welch, nodes)", "p"),
         C("n_questions_mixed", "Qs with both", "d"), C("n_correct", "Nodes corr.", "d"),
         C("n_incorrect", "Nodes incorr.", "d")],
    ),
    "correct_vs_incorrect_by_teacher": (
        "Table 6 · Correct vs incorrect, per teacher (mean cosine)",
        "As table 4, one teacher at a time (mean-cosine rows; the CSV has every metric).",
        [C("teacher", "Teacher", "s"), C("correct", "Correct", "+3"),
         C("incorrect", "Incorrect", "+3"), C("delta", "Δ", "+3"),
         C("delta_ci_low|delta_ci_high", "Δ 95% CI", "+3"), C("p_perm", "p (perm.)", "p"),
         C("p_welch", "p (Welch)", "p"), C("n_questions_mixed", "Qs with both", "d")],
    ),
    "teacher_metrics": (
        "Table 3 · Alternative ranking metrics",
        "<b>Fraction positive</b>: share of decision points with align &gt; 0. <b>Weighted "
        "cosine</b>: Σ SR·align / Σ SR. <b>Mean signal</b>: mean of SR range × align. All "
        "four pool decision points (a question with more of them weighs more), unlike table "
        "1's question-weighted mean.",
        [C("teacher", "Teacher", "s"), C("n_nodes", "Nodes", "d"),
         C("mean_cosine", "Mean cosine (nodes pooled)", "+3"),
         C("frac_positive", "Frac. positive", "3"),
         C("weighted_cosine", "Weighted cosine (SR)", "+3"),
         C("mean_signal", "Mean signal", "+4")],
    ),
    "selective_oracle": (
        "Table 2 · Selective distillation (oracle)",
        "Keep only decision points with align &gt; t. <b>Mean signal</b> = mean of SR range × "
        "align over kept points (95% clustered CI); <b>% beats full</b>: share of (path, "
        "teacher) series whose selective signal exceeds their full-GKD signal.",
        [C("strategy", "Strategy", "s"), C("mean_signal", "Mean signal", "+4"),
         C("ci_low|ci_high", "95% CI", "+4"), C("pct_tokens", "% tokens", "pct"),
         C("pct_paths_beat_full", "% beats full", "pct"), C("n_nodes", "Nodes", "d")],
    ),
    "methods_vs_drgrpo": (
        "Methods against the RL baseline (Dr. GRPO)",
        "Paired at the same nodes: align(method) − align(drgrpo), 95% question-clustered CI. "
        "Dr. GRPO uses only the rollouts through each node, so it shows how far finite-sample "
        "RL is from the ideal direction.",
        [C("teacher", "Teacher", "s"), C("method", "Method", "s"), C("n_pairs", "Pairs", "d"),
         C("mean_method", "Align (method)", "+3"), C("mean_drgrpo", "Align (Dr. GRPO)", "+3"),
         C("mean_diff", "Diff.", "+3"), C("ci_low|ci_high", "95% CI", "+3"),
         C("frac_method_better", "Frac. method better", "3")],
    ),
    "best_teacher_oracle": (
        "Per-token best-teacher oracle",
        "At each decision point, the teacher with the highest alignment (ties share credit). "
        "<i>oracle</i>: mean of the per-node maximum.",
        [C("teacher", "Teacher", "s"), C("share_best", "Share best", "3"),
         C("mean_align", "Mean align", "+3"), C("n_nodes", "Nodes", "d")],
    ),
    "estimator_sanity": (
        "Estimator sanity (exact success probabilities known)",
        "align (from estimated P&#770;) against align_exact (from exact P_succ), per method.",
        [C("method", "Method", "s"), C("n", "Nodes", "d"), C("rmse", "RMSE", "3"),
         C("mae", "MAE", "3"), C("bias", "Bias", "+3"), C("pearson_r", "Pearson r", "3"),
         C("sign_agree", "Sign agreement", "3")],
    ),
}


# ---------------------------------------------------------------------------------------------
def _atomic_write(path: Path, data: bytes | str) -> None:
    from distillscope.store import atomic_write_bytes

    atomic_write_bytes(path, data.encode("utf-8") if isinstance(data, str) else data)


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (floats to 4 decimals, or 3 significant digits below
    5e-4 so that small p-values do not print as 0; NaN empty; '|' escaped)."""

    def cell(x: Any) -> str:
        if isinstance(x, float):
            if not math.isfinite(x):
                return ""
            # 4 decimals, but never round a small non-zero value (a p-value) to 0.0000
            return f"{x:.2e}" if 0 < abs(x) < 5e-4 else f"{x:.4f}"
        return str(x).replace("|", "\\|").replace("\n", " ")

    cols = [cell(str(c)) for c in df.columns]  # a header (a setting label) is escaped too
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |"
              for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def key_part(text: str) -> str:
    """`text` as one segment of a flat slash key: "~" -> "~0", then "/" -> "~1" (JSON
    Pointer's escaping), so a label such as "yes/no" cannot split a key in two. A consumer
    splits on "/" and undoes it in the reverse order."""
    return str(text).replace("~", "~0").replace("/", "~1")


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    """Nested config -> flat slash keys; a list of named mappings (teachers) is keyed by
    name, any other list is kept as a JSON string."""
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}/{k}", v, out)
    elif isinstance(value, list):
        if value and all(isinstance(v, dict) and "name" in v for v in value):
            for v in value:
                _flatten(f"{prefix}/{v['name']}", {k: x for k, x in v.items() if k != "name"},
                         out)
        else:
            out[prefix] = json.dumps(value, default=str)
    else:
        out[prefix] = value


def run_summary(run: Run) -> dict[str, Any]:
    """What was run, as flat summary.json keys: the resolved config (`config/...`), the
    provenance (`run/...`, `versions/...`) and the rollouts spent (`rollouts/...`)."""
    p = run.provenance
    out: dict[str, Any] = {}
    _flatten("config", run.config, out)
    for key, label in provenance_items(run):
        if key not in ("versions", "teachers", "rollouts"):
            out[f"run/{key.replace(' ', '_').lower()}"] = label
    out["run/teachers_scored"] = ", ".join(run.scored_teachers)
    out["run/config_fingerprint"] = p.get("config_fingerprint")
    out["run/platform"] = p.get("platform")
    for k, v in p.items():
        if k.startswith("rollouts/"):
            out[k] = v
    versions = p.get("versions") or {}
    if isinstance(versions, dict):
        for k, v in versions.items():
            out[f"versions/{k}"] = v
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
def write_report(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    seed: int = 0,
    *,
    method: str = "gkd",
    n_boot: int = 2000,
    n_perm: int = 10000,
    max_depth_paths: int = 8,
    min_sr_range: float | None = None,
) -> Path:
    """Compute the analysis of `run_dir` and write the report into `out_dir` (default
    RUN_DIR/report/, or RUN_DIR/report-sr<T>/ with `min_sr_range`): summary.json,
    tables/<name>.csv and .md, figures/*.png and report.html. Returns the path of report.html.
    `seed` fixes the bootstrap and permutation draws. `min_sr_range`: every table, figure and
    path view on the decision points with SR range >= that threshold only.

    All or nothing, and only the tool's files replaced (`report/outdir.py`): the files are
    written into a temporary folder beside `out_dir`, which replaces `out_dir` once complete;
    a user's files there are kept. Disk full or a read-only folder: StoreError."""
    from distillscope.report.outdir import write_folder
    from distillscope.store import RunStore

    run = load_run(run_dir, REPORT_TABLES)
    run.truncated = truncated_rollouts(RunStore(run.run_dir))
    run.incomplete = incomplete_note(RunStore(run.run_dir))
    min_sr_range = check_threshold(min_sr_range)
    default = "report" if min_sr_range is None else f"report-sr{min_sr_range:g}"
    final = Path(out_dir) if out_dir is not None else run.run_dir / default
    write_folder(final, lambda out: _build(run, out, seed, method, n_boot, n_perm,
                                           max_depth_paths, min_sr_range),
                 what="report", tool_file=_is_report_file, looks_ours=_looks_like_report)
    return final / "report.html"


def _looks_like_report(folder: Path) -> bool:
    """Whether `folder` is a report of an earlier version (no manifest): its page and summary."""
    return (folder / "report.html").is_file() and (folder / "summary.json").is_file()


def _is_report_file(rel: Path) -> bool:
    """Whether a report writes files of this name (an older report's, to be dropped)."""
    parts = rel.parts
    if len(parts) == 1:
        return parts[0] in ("report.html", "summary.json")
    if len(parts) == 2 and parts[0] == "tables":
        return rel.suffix in (".csv", ".md")
    if len(parts) == 2 and parts[0] == "figures":
        return rel.suffix == ".png"
    return False


def _build(run: Run, out: Path, seed: int, method: str, n_boot: int, n_perm: int,
           max_depth_paths: int, min_sr_range: float | None) -> None:
    all_sr = sr_range_values(run.nodes, method)
    run.tables["nodes"] = high_stakes(run.nodes, min_sr_range)
    nodes = run.nodes
    results = analysis.analyze(nodes, method, seed=seed, n_boot=n_boot, n_perm=n_perm)
    results["per_question_ranking"] = per_question_ranking(nodes, method)
    summary = analysis.summarize(nodes, results, method)
    summary.update(run_summary(run))
    summary["report/seed"] = seed
    summary["report/method"] = method
    summary["report/n_boot"] = n_boot
    summary["report/n_perm"] = n_perm
    n_ro, n_trunc = run.truncated
    summary["rollouts/truncated"] = n_trunc
    summary["rollouts/truncated_fraction"] = (n_trunc / n_ro) if n_ro else None
    summary["report/min_sr_range"] = min_sr_range

    # tables
    for name, df in results.items():
        _atomic_write(out / "tables" / f"{name}.csv", df.to_csv(index=False))
        _atomic_write(out / "tables" / f"{name}.md", to_markdown(df))
    _atomic_write(out / "summary.json", json.dumps(summary, indent=2, sort_keys=True,
                                                   allow_nan=False))

    # figures
    ranking = results["teacher_ranking"]
    teachers = run.teachers
    top = ranking["teacher"].iloc[0] if len(ranking) else (teachers[0] if teachers else "")
    methods = [m for m in run.methods if m != "drgrpo"] + (
        ["drgrpo"] if "drgrpo" in run.methods else [])
    figs = {
        "teacher_ranking": (plots.ranking_plot(ranking, method),
                            "<b>Figure 1.</b> Teacher ranking (cf. paper figure 4): mean "
                            "alignment, each question counting once, with 95% "
                            "question-clustered bootstrap CIs."),
        "correct_vs_incorrect": (plots.correct_incorrect_plot(
            nodes, results["correct_vs_incorrect"], method),
            "<b>Figure 2.</b> Correct vs incorrect paths (cf. figure 3). Left: distribution of "
            "per-node alignment; dashed: means. Right: Δ with clustered CI and permutation p."),
        "alignment_histogram": (plots.alignment_histogram(nodes, methods),
                                "<b>Figure 3.</b> Distribution of per-node alignment, all "
                                "teachers (cf. appendix E.1)."),
        "path_depth": (plots.path_depth_plot(nodes, top, method, max_depth_paths),
                       f"<b>Figure 4.</b> Alignment along depth for the first "
                       f"{max_depth_paths} paths, teacher {H.esc(top)} (cf. appendix E.2)."),
        "sr_range": (sr_range_plot({"all decision points": all_sr}, min_sr_range),
                     "<b>Figure 5.</b> Distribution of SR range over distinct decision points "
                     "(dashed: the --min-sr-range threshold, when set)."),
    }
    for name, (png, _) in figs.items():
        _atomic_write(out / "figures" / f"{name}.png", png)

    # html
    findings = headline_findings(results, summary, method)
    if min_sr_range is not None:
        findings.append(Finding("High-stakes nodes only", f"Every table, figure and path view "
                                f"here uses the decision points with SR range ≥ "
                                f"{min_sr_range:g} ({len(nodes):,} of the run's node rows).",
                                "note"))
    body: list[tuple[str, str]] = []
    fig_html = "".join(H.figure_html(png, cap, name.replace("_", " "))
                       for name, (png, cap) in figs.items())
    body.append(("Figures", fig_html))
    tables_html = []
    for name, (heading, caption, cols) in TABLES.items():
        df = results[name]
        if "metric" in df:
            df = df.assign(metric_label=df["metric"].map(METRIC_LABELS).fillna(df["metric"]))
        if name == "correct_vs_incorrect_by_teacher" and len(df):
            df = df[df["metric"] == "mean_cosine"]
        if name == "estimator_sanity" and df.empty:
            continue
        tables_html.append(f"<h3>{H.esc(heading)}</h3>" + H.table_html(df, cols, caption))
    tables_html.append(_spearman_html(results["within_path_spearman"]))
    tables_html.append(_per_question_html(results["per_question_ranking"]))
    body.append(("Tables", "".join(tables_html)))

    views = path_views(run)
    if views:  # figure 1 of the paper: the tree of the path with the most decision points
        v = max(views, key=lambda v: (len(v.nodes), -views.index(v)))
        body.append((f"Generation tree · question {v.qid}, path {v.path_id}",
                     f"<style>{TREE_CSS}</style>" + tree_html(
                         path_tree(run, v.qid, v.path_id, top, method), top, method,
                         f"{'correct' if v.correct else 'incorrect'} path, {len(v.tokens)} "
                         f"tokens, {len(v.nodes)} decision points")))
    combo = (top, method)
    q = run.tables["questions"]
    prompts = dict(zip(q["qid"].astype(str), q["prompt"].astype(str), strict=True)) \
        if len(q) else {}
    payload = {"teachers": teachers, "methods": methods,
               "paths": [H.path_payload(v, teachers, methods) for v in views]}
    paths_block = H.paths_section(views, prompts, teachers or [""], methods or [method], combo) \
        if views else "<p>No representative path in this run.</p>"
    meta = provenance_items(run)
    n_nodes = summary.get(f"align/{method}/n_nodes") or 0
    page = H.render_page(
        title=f"distillscope report · {meta[0][1]}",
        subtitle=(f"Gradient alignment of on-policy distillation, method {method}: "
                  f"{summary.get('run/n_questions', 0)} questions, "
                  f"{summary.get('run/n_paths', 0)} scored paths, {n_nodes} decision points, "
                  f"{len(teachers)} teacher(s). Bootstrap {n_boot} draws, permutation up to "
                  f"{n_perm}, seed {seed}."
                  + (f" High-stakes nodes only: SR range ≥ {min_sr_range:g}."
                     if min_sr_range is not None else "")),
        meta=meta,
        provenance_text=json.dumps(run.provenance, indent=2, sort_keys=True, default=str),
        config_text=_config_text(run),
        findings=findings,
        body_sections=body,
        paths_block=paths_block,
        payload=payload,
        generated=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )
    _atomic_write(out / "report.html", page)


def _per_question_html(pq: pd.DataFrame) -> str:
    """The teacher ranking within each question (the paper's AIME case studies), collapsed."""
    cols = [H.Col("qid", "Question", "s"), H.Col("rank", "#", "d"),
            H.Col("teacher", "Teacher", "s"), H.Col("mean", "Mean align", "+3"),
            H.Col("n_nodes", "Nodes", "d"), H.Col("question_sr_mean", "Question mean SR", "3")]
    n_q = pq["qid"].nunique() if len(pq) else 0
    return (f'<details class="question"><summary>Per-question teacher ranking ({n_q} '
            "questions)</summary>" + H.table_html(pq, cols, "Per question: each teacher's mean "
            "alignment over its decision points there, ranked within the question.")
            + "</details>")


def _config_text(run: Run) -> str:
    p = run.run_dir / "config.yaml"
    return p.read_text(encoding="utf-8") if p.is_file() else "(no config.yaml)"


def _spearman_html(sp: pd.DataFrame) -> str:
    """Table 5 as feature x teacher (mean within-path rho), with path counts below."""
    head = "<h3>Table 5 · Within-path Spearman correlations with alignment</h3>"
    if sp.empty:
        return head + "<p>No path with enough decision points.</p>"
    wide = sp.pivot(index="feature", columns="teacher", values="rho_mean")
    order = [f for f in analysis.SPEARMAN_FEATURES if f in wide.index]
    wide = wide.loc[order]
    teachers = ["all"] + [t for t in wide.columns if t != "all"]
    wide = wide[teachers].reset_index()
    wide["feature"] = wide["feature"].map(FEATURE_LABELS).fillna(wide["feature"])
    cols = [H.Col("feature", "Feature", "s")] + [H.Col(t, t, "+3") for t in teachers]
    allrows = sp[sp["teacher"] == "all"]
    used = int(allrows["n_paths"].max()) if len(allrows) else 0
    few = int(allrows["n_skipped_few"].max()) if len(allrows) else 0
    const = int(allrows["n_skipped_constant"].max()) if len(allrows) else 0
    caption = (f"Spearman ρ between align and each feature within a path (one series per path "
               f"and teacher), averaged over paths: up to {used} paths used; {few} skipped for "
               f"too few nodes and up to {const} for a constant column. Column <i>all</i> pools "
               "every teacher.")
    return head + H.table_html(wide, cols, caption)
