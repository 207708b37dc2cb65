"""`distillscope compare RUN_DIR... --out DIR`: tables, figures and a self-contained
compare.html that put settings side by side (the paper's table 1, figure 3 right, table 5)
and test its second finding (docs/method.md#comparing-settings).

    write_compare(run_dirs, out) -> OUT/compare.html

OUT/compare.json (flat slash keys; a setting label inside a key is escaped by `key_part`,
"/" as "~1" and "~" as "~0"), OUT/tables/*.csv and *.md, OUT/figures/*.png. The page has no
script at all (its CSP forbids any); every string from a run (setting labels, teacher names,
question ids) is escaped by report/html.py's `esc`.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from distillscope import compare as C
from distillscope.analysis import SPEARMAN_FEATURES, _num
from distillscope.report import (
    FEATURE_LABELS,
    METRIC_LABELS,
    _atomic_write,
    key_part,
    to_markdown,
)
from distillscope.report import compare_plots as P
from distillscope.report import html as H
from distillscope.report.findings import Finding, fnum
from distillscope.report.outdir import write_folder
from distillscope.stakes import sr_range_values
from distillscope.store import nearest_existing_parent

__all__ = ["write_compare"]

NULL_TEXT = (
    "<b>Null hypothesis</b>: teacher effects are common to all settings, i.e. the "
    "question-weighted mean of teacher t in setting s is a<sub>s</sub> + b<sub>t</sub> (a "
    "setting may lift or lower every teacher alike, but not reorder them). <b>Statistic</b>: the "
    "residual sum of squares of that additive model fitted by least squares to the observed "
    "(setting, teacher) means; in a complete table, the sum over settings of the squared "
    "deviations of each teacher's setting-centred mean from its across-setting average. "
    "<b>Null distribution</b>: each run's questions are resampled independently "
    "(question-clustered bootstrap); the same statistic on each replicate's deviations from "
    "the observed means (which carry no interaction) gives the noise-only distribution; "
    "p = (1 + #{T* &ge; T}) / (1 + replicates). <i>Residual RMS</i>: the root mean squared "
    "residual per cell, against the same from the median null replicate. Settings with fewer "
    f"than {C.MIN_QUESTIONS} questions and teachers absent from a setting are left out of "
    "that setting's cells (listed below). <b>P(top differs)</b>: the share of joint "
    "replicates (one independent resample of every run) in which the two settings' top "
    "teachers, among the teachers both scored, differ. <b>Universal best</b> is claimed only "
    f"when one teacher is first in every setting in at least {C.CONFIDENCE:.0%} of the joint "
    "replicates.")


def _wide_table(wide: pd.DataFrame, settings: Sequence[str], caption: str) -> str:
    """Table 1 with one column group (mean, 95% CI, rank) per setting; every cell escaped."""
    top = "<th class=l rowspan=2>Teacher</th>" + "".join(
        f'<th colspan=3 class="grp">{H.esc(s)}</th>' for s in settings)
    sub = "".join("<th>Mean</th><th>95% CI</th><th>Rank</th>" for _ in settings)
    body = []
    for _, r in wide.iterrows():
        cells = [f'<td class="l">{H.esc(r["teacher"] or "(no teacher)")}</td>']
        for i in range(len(settings)):
            rank = str(r.get(f"{i}_rank", "absent"))
            if rank in ("absent", "undefined"):
                cells.append(f'<td colspan=3 class="absent">{H.esc(rank)}</td>')
                continue
            lo, hi = H.fmt_value(r[f"{i}_lo"], "+3"), H.fmt_value(r[f"{i}_hi"], "+3")
            ci = "–" if lo == "–" else f"[{lo}, {hi}]"
            cls = ' class="yes"' if rank == "1" else ""
            cells.append(f"<td>{H.esc(H.fmt_value(r[f'{i}_mean'], '+3'))}</td>"
                         f"<td>{H.esc(ci)}</td><td{cls}>{H.esc(rank)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    if not body:
        body.append(f"<tr><td colspan={1 + 3 * len(settings)}>no rows</td></tr>")
    return (f'<div class="tablewrap"><table><caption>{caption}</caption><thead><tr>{top}</tr>'
            f"<tr>{sub}</tr></thead><tbody>{''.join(body)}</tbody></table></div>")


def _spearman_wide(sp: pd.DataFrame, ranking: pd.DataFrame, method: str,
                   settings: Sequence[str]) -> tuple[pd.DataFrame, list[str]]:
    """Table 5 side by side: feature rows; per setting the all-teacher mean rho, then the
    same restricted to the setting's top-ranked teacher."""
    rows, tops = [], []
    for s in settings:
        r = ranking[(ranking["setting"] == s) & (ranking["method"] == method)]
        tops.append(str(r["teacher"].iloc[0]) if len(r) else "")
    for f in SPEARMAN_FEATURES:
        row: dict[str, object] = {"feature": FEATURE_LABELS.get(f, f)}
        for i, s in enumerate(settings):
            d = sp[(sp["setting"] == s) & (sp["feature"] == f)] if len(sp) else sp
            for key, who in ((f"all_{i}", "all"), (f"top_{i}", tops[i])):
                h = d[d["teacher"] == who] if len(d) else d
                row[key] = float(h["rho_mean"].iloc[0]) if len(h) else math.nan
        rows.append(row)
    return pd.DataFrame(rows), tops


def _finding(status: str, title: str, text: str) -> Finding:
    return Finding(title, text, {"universal": "conclusive", "differs": "conclusive"}.get(
        status, "inconclusive"))


def _cvi_finding(cvi: pd.DataFrame, settings: Sequence[str], method: str) -> Finding:
    m = cvi[cvi["metric"] == "mean_cosine"] if len(cvi) else cvi
    parts, neg, sig = [], 0, 0
    for s in settings:
        h = m[m["setting"] == s]
        if h.empty or not math.isfinite(float(h["delta"].iloc[0])):
            parts.append(f"{s}: n/a")
            continue
        r = h.iloc[0]
        excl = r.delta_ci_high < 0 or r.delta_ci_low > 0
        neg += r.delta < 0
        sig += bool(excl)
        parts.append(f"{s}: Δ = {fnum(r.delta)} [{fnum(r.delta_ci_low)}, "
                     f"{fnum(r.delta_ci_high)}]")
    text = (f"Δ = correct − incorrect ({method}, mean cosine, all teachers pooled) is negative "
            f"(incorrect paths align more) in {neg} of {len(settings)} settings; its 95% CI "
            f"excludes 0 in {sig}. " + "; ".join(parts) + ".")
    pooled = m[m["setting"] == C.POOLED]
    pooled_sig = False
    if len(pooled) and math.isfinite(float(pooled["delta"].iloc[0])):
        r = pooled.iloc[0]
        pooled_sig = bool(r.delta_ci_high < 0 or r.delta_ci_low > 0)
        text += (f" Pooled over the settings' questions: Δ = {fnum(r.delta)} "
                 f"[{fnum(r.delta_ci_low)}, {fnum(r.delta_ci_high)}], permutation "
                 f"p = {C.fp(float(r.p_perm))} "
                 f"({fnum(r.n_questions_mixed, 0, signed=False)} questions with both kinds of "
                 f"path).")
    return Finding("Correct vs incorrect across settings", text,
                   "conclusive" if (sig == len(settings) and settings) or pooled_sig
                   else "inconclusive")


def write_compare(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    labels: Sequence[str] | None = None,
    seed: int = 0,
    n_boot: int = 2000,
    n_perm: int = 10000,
    method: str = "gkd",
    min_sr_range: float | None = None,
    min_questions: int = C.MIN_QUESTIONS,
) -> Path:
    """Compare the runs and write OUT/compare.html (and its tables, figures, compare.json).
    `method` is the one the headline, figure 3 and table 5 use; table 1 is written for every
    method the runs have. Returns the path of compare.html.

    OUT must be absent, an empty directory or an earlier comparison (`check_out`: anything
    else is a ValueError before any work). All or nothing: the files are written into a
    temporary folder beside OUT, which replaces OUT once complete; files in an earlier
    comparison that compare does not write (a user's notes) are kept. Disk full or a
    read-only folder: StoreError, and OUT is unchanged."""
    out = Path(out_dir)
    check_out(out, run_dirs)
    settings = C.load_settings(run_dirs, labels, min_sr_range=min_sr_range)

    def build(folder: Path) -> None:
        check_out(out)  # again, under the lock: another compare may have written it
        _build(settings, folder, seed=seed, n_boot=n_boot, n_perm=n_perm, method=method,
               min_sr_range=min_sr_range, min_questions=min_questions)

    write_folder(out, build, what="compare", tool_file=_is_compare_file,
                 looks_ours=is_compare_output)
    return out / "compare.html"


# ---------------------------------------------------------------------------------------------
# Where the files go: OUT is new, empty or an earlier comparison, and is replaced as a whole

COMPARE_KEYS = ("compare/method", "compare/settings", "compare/seed", "compare/n_boot")
COMPARE_TABLES = frozenset(
    {"ranking_long", *(f"ranking_{m}" for m in (*C.TEACHER_METHODS, "drgrpo")),
     "interaction", "top_pairs", "top_shares", "correct_vs_incorrect",
     "per_question_ranking", "sr_range", "spearman"})
COMPARE_FIGURES = frozenset({"ranking", "correct_vs_incorrect", "sr_range"})
_TOP_FILES = ("compare.html", "compare.json")
_SUBDIRS = ("tables", "figures")


def _is_compare_file(rel: Path) -> bool:
    """Whether compare writes a file of this name (relative to OUT): only those are replaced
    or removed in an earlier comparison."""
    parts = rel.parts
    if len(parts) == 1:
        return parts[0] in _TOP_FILES
    if len(parts) == 2 and parts[0] == "tables":
        return rel.suffix in (".csv", ".md") and rel.stem in COMPARE_TABLES
    if len(parts) == 2 and parts[0] == "figures":
        return rel.suffix == ".png" and rel.stem in COMPARE_FIGURES
    return False


def is_compare_output(folder: str | Path) -> bool:
    """Whether `folder` holds a comparison this tool wrote: a compare.json (a plain file) with
    compare's own keys, and tables/ and figures/, where present, plain directories."""
    folder = Path(folder)
    summary = folder / "compare.json"
    if summary.is_symlink() or not summary.is_file():
        return False
    try:
        data = json.loads(summary.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict) or not all(k in data for k in COMPARE_KEYS):
        return False
    return all(not (folder / d).is_symlink() and ((folder / d).is_dir()
                                                 or not (folder / d).exists())
               for d in _SUBDIRS)


def check_out(out: str | Path, run_dirs: Sequence[str | Path] = ()) -> None:
    """ValueError, naming the path, unless OUT can take a comparison of `run_dirs`: absent (its
    parent a directory or absent), an empty directory, or an earlier comparison; and neither
    one of the runs nor inside one."""
    out = Path(out)
    if not str(out).strip():
        raise ValueError("--out is empty: give a directory")
    if out.is_symlink() and not out.exists():
        raise ValueError(f"--out {out} is a broken symbolic link: give a directory")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a directory: give a new directory")
    up = nearest_existing_parent(out)
    if not out.exists() and not up.is_dir():
        raise ValueError(f"--out {out}: {up} is a file, not a directory: give another --out")
    real = out.resolve()
    for d in run_dirs:
        run = Path(d).resolve()
        if real == run or run in real.parents:
            where = "is" if real == run else "is inside"
            raise ValueError(f"--out {out} {where} the run directory {d}: compare writes its "
                             "files outside the runs; give another --out")
    if out.is_dir() and any(out.iterdir()) and not is_compare_output(out):
        raise ValueError(f"--out {out} is a directory that is neither empty nor an earlier "
                         "comparison (no compare.json written by distillscope compare): give a "
                         "new or empty directory, so that no file there is overwritten")


def _build(settings: list[C.Setting], out: Path, *, seed: int, n_boot: int, n_perm: int,
           method: str, min_sr_range: float | None, min_questions: int) -> Path:
    """Compute the comparison of `settings` and write its files into the folder `out`."""
    present = set().union(*(set(s.nodes["method"]) for s in settings)) if settings else set()
    methods = [method] + [m for m in (*C.TEACHER_METHODS, "drgrpo") if m in present
                          and m != method]
    res = C.compare(settings, methods=methods, seed=seed, n_boot=n_boot, n_perm=n_perm,
                    min_questions=min_questions)
    names = res["settings"]

    def save(name: str, df: pd.DataFrame) -> None:
        _atomic_write(out / "tables" / f"{name}.csv", df.to_csv(index=False))
        _atomic_write(out / "tables" / f"{name}.md", to_markdown(df))

    summary: dict[str, object] = {"compare/seed": seed, "compare/n_boot": n_boot,
                                  "compare/method": method, "compare/settings": len(names),
                                  "compare/min_sr_range": min_sr_range,
                                  "compare/min_questions": min_questions}
    for i, s in enumerate(settings):
        summary[f"setting/{i}/label"] = s.label
        summary[f"setting/{i}/run_dir"] = str(s.run_dir)
        if s.incomplete:
            summary[f"setting/{i}/incomplete"] = s.incomplete
    conflicts = C.teacher_conflicts(settings)
    for name, text in conflicts.items():
        summary[f"teacher/{name}/differs"] = text
    save("ranking_long", res["ranking"])
    wides = {}
    for m in methods:
        wides[m] = C.ranking_wide(res["ranking"], m, names)
        save(f"ranking_{m}", C.readable_wide(wides[m], names))
    inter_rows = []
    for m, t in res["tests"].items():
        i = t["interaction"]
        inter_rows.append({k: v for k, v in i.items() if k != "notes"}
                          | {"notes": "; ".join(i["notes"]), "verdict": t["status"],
                             "universal_teacher": t["universal"]["teacher"],
                             "p_universal": t["universal"]["p_universal"]})
        for k in ("stat", "rms", "null_rms", "p", "df", "status"):
            summary[f"interaction/{m}/{k}"] = i[k]
        summary[f"verdict/{m}/status"] = t["status"]
        summary[f"verdict/{m}/text"] = t["text"]
        summary[f"universal/{m}/teacher"] = t["universal"]["teacher"]
        summary[f"universal/{m}/p"] = t["universal"]["p_universal"]
    inter = pd.DataFrame(inter_rows)
    for name, df in (("interaction", inter), ("top_pairs", res["top_pairs"]),
                     ("top_shares", res["top_shares"]),
                     ("correct_vs_incorrect", res["correct_vs_incorrect"]),
                     ("per_question_ranking", res["per_question_ranking"]),
                     ("sr_range", res["sr_range"])):
        save(name, df)
    for r in res["top_pairs"].itertuples():
        summary[f"top_pairs/{r.method}/{key_part(r.setting_a)}/{key_part(r.setting_b)}"
                "/p_top_differs"] = r.p_top_differs
    cvi_all = res["correct_vs_incorrect"]
    for r in (cvi_all[cvi_all["metric"] == "mean_cosine"].itertuples() if len(cvi_all) else []):
        for k in ("delta", "delta_ci_low", "delta_ci_high", "p_perm", "p_perm_min",
                  "n_questions_mixed"):
            summary[f"correct_vs_incorrect/{key_part(r.setting)}/{k}"] = getattr(r, k)
    sp_wide, tops = _spearman_wide(res["spearman"], res["ranking"], method, names)
    save("spearman", sp_wide.rename(columns={
        **{f"all_{i}": f"{s} all" for i, s in enumerate(names)},
        **{f"top_{i}": f"{s} {tops[i]}" for i, s in enumerate(names)}}))
    _atomic_write(out / "compare.json", json.dumps({k: _num(v) for k, v in summary.items()},
                                                   indent=2, sort_keys=True, allow_nan=False))

    cvi = res["correct_vs_incorrect"]
    figs = {
        "ranking": (P.ranking_by_setting_plot(wides[method], names, method),
                    "<b>Figure 1.</b> Teacher ranking per setting (the paper's table 1 as a "
                    "figure): question-weighted mean alignment with 95% question-clustered "
                    "CIs."),
        "correct_vs_incorrect": (P.correct_incorrect_by_setting_plot(
            cvi, names + ([C.POOLED] if len(names) > 1 else [])),
                                 "<b>Figure 2.</b> Correct vs incorrect paths across settings "
                                 "(the paper's figure 3, right): Δ = correct − incorrect with "
                                 "question-clustered 95% CIs."),
        "sr_range": (P.sr_range_plot({s.label: sr_range_values(s.nodes, method)
                                      for s in settings}, min_sr_range),
                     "<b>Figure 3.</b> Distribution of SR range over distinct decision "
                     "points, per setting."),
    }
    for name, (png, _) in figs.items():
        _atomic_write(out / "figures" / f"{name}.png", png)

    # the page
    test = res["tests"].get(method)
    findings = []
    if test is not None:
        findings.append(_finding(test["status"], f"Is there a universal best teacher? ({method})",
                                 test["text"]))
    findings.append(_cvi_finding(cvi, names, method))
    findings += [Finding(f"Incomplete run: {s.label}", f"{s.run_dir}: {s.incomplete}.", "note")
                 for s in settings if s.incomplete]
    findings += [Finding(f"Same name, different teacher: {name}", f"{text}.", "note")
                 for name, text in conflicts.items()]
    if min_sr_range is not None:
        findings.append(Finding("High-stakes nodes only", f"Every table here is computed on the "
                                f"decision points with SR range ≥ {min_sr_range:g}.", "note"))
    sections = []
    meta_rows = []
    for s in settings:
        mq = res["tests"].get(method, {}).get("n_questions", {}).get(s.label, 0) if test else 0
        dp = s.nodes[s.nodes["method"] == method]
        meta_rows.append({"label": s.label, "run": s.run_dir.name, "student": s.student,
                          "task": s.task, "questions": mq,
                          "teachers": ", ".join(C.teachers_of(s.nodes, method)) or "none",
                          "rows": len(dp)})
    sections.append(("Settings", H.table_html(pd.DataFrame(meta_rows), [
        H.Col("label", "Setting", "s"), H.Col("run", "Run directory", "s"),
        H.Col("student", "Student", "s"), H.Col("task", "Task", "s"),
        H.Col("questions", "Questions (with a decision point)", "d"),
        H.Col("teachers", "Teachers", "s"), H.Col("rows", f"{method} rows", "d")],
        "One setting per run; the label is the run's student and task (its directory name "
        "is added when two runs share both).")))
    t1 = []
    for m in methods:
        t1.append(f"<h3>Table 1 · {H.esc(m)}</h3>" + _wide_table(
            wides[m], names, f"Mean {H.esc(m)} alignment per teacher, each question counting "
            "once, with 95% question-clustered bootstrap CIs and the rank within each setting "
            "(the same numbers as each run's own report for this seed). <i>absent</i>: the "
            "run did not score that teacher; <i>undefined</i>: no defined alignment."))
    sections.append(("Teacher ranking across settings", "".join(t1)))
    tcols = [H.Col("method", "Method", "s"), H.Col("verdict", "Verdict", "s"),
             H.Col("stat", "Interaction SS", "4"), H.Col("rms", "Residual RMS", "3"),
             H.Col("null_rms", "Noise RMS", "3"), H.Col("df", "df", "d"), H.Col("p", "p", "p"),
             H.Col("n_cells", "Cells", "d"), H.Col("n_boot_valid", "Replicates", "d"),
             H.Col("universal_teacher", "Most often first everywhere", "s"),
             H.Col("p_universal", "P(first everywhere)", "3")]
    pcols = [H.Col("method", "Method", "s"), H.Col("setting_a", "Setting A", "s"),
             H.Col("top_a", "Top in A", "s"), H.Col("setting_b", "Setting B", "s"),
             H.Col("top_b", "Top in B", "s"), H.Col("p_top_differs", "P(top differs)", "3"),
             H.Col("n_common", "Common teachers", "d"), H.Col("status", "Status", "s")]
    notes = [n for t in res["tests"].values() for n in t["interaction"]["notes"]]
    notes_html = ("<ul class=notes>" + "".join(f"<li>{H.esc(n)}</li>" for n in dict.fromkeys(
        notes)) + "</ul>") if notes else "<p>No setting or teacher was left out.</p>"
    sections.append(("Does the best teacher depend on the setting?",
                     f'<p class="sans">{NULL_TEXT}</p>'
                     + H.table_html(inter, tcols, "Teacher × setting interaction test, per "
                                    "method.") + notes_html
                     + H.table_html(res["top_pairs"], pcols, "Per pair of settings: the "
                                    "observed top teachers and the share of joint bootstrap "
                                    "replicates in which they differ.")))
    fig_html = "".join(H.figure_html(png, cap, name.replace("_", " "))
                       for name, (png, cap) in figs.items())
    sections.append(("Figures", fig_html))
    cv = cvi.assign(metric_label=cvi["metric"].map(METRIC_LABELS).fillna(cvi["metric"])) \
        if len(cvi) else cvi
    sections.append(("Correct vs incorrect paths, per setting", H.table_html(cv, [
        H.Col("setting", "Setting", "s"), H.Col("metric_label", "Metric", "s"),
        H.Col("correct", "Correct", "+3"), H.Col("incorrect", "Incorrect", "+3"),
        H.Col("delta", "Δ", "+3"), H.Col("delta_ci_low|delta_ci_high", "Δ 95% CI", "+3"),
        H.Col("p_perm", "p (perm.)", "p"), H.Col("n_questions_mixed", "Qs with both", "d")],
        "The paper's figure 3 (right) and table 4 side by side: Δ = correct − incorrect, "
        "question-clustered CI, within-question permutation p, as in each run's report.")))
    scols = [H.Col("feature", "Feature", "s")] + [
        H.Col(f"all_{i}", f"{s} · all teachers", "+3") for i, s in enumerate(names)] + [
        H.Col(f"top_{i}", f"{s} · {tops[i] or '–'}", "+3") for i, s in enumerate(names)]
    sections.append(("Table 5 · Within-path Spearman, side by side", H.table_html(
        sp_wide, scols, "Mean within-path Spearman ρ of alignment with each feature: all "
        "teachers pooled, then the setting's top-ranked teacher only (the paper's bottom "
        "block).")))
    sr = res["sr_range"]
    srcols = [H.Col("setting", "Setting", "s"), H.Col("n_nodes", "Decision points", "d"),
              H.Col("mean", "Mean", "3"), H.Col("q25", "25%", "3"), H.Col("q50", "Median", "3"),
              H.Col("q90", "90%", "3"), H.Col("share_ge_0.1", "≥ 0.1", "3"),
              H.Col("share_ge_0.3", "≥ 0.3", "3"), H.Col("share_ge_0.5", "≥ 0.5", "3")]
    pq_html = [H.table_html(sr, srcols, "SR range over distinct decision points; shares at or "
                            "above each threshold (what `--min-sr-range` would keep).")]
    pq = res["per_question_ranking"]
    for s in names:
        d = pq[pq["setting"] == s] if len(pq) else pq
        pq_html.append(f'<details class="question"><summary>Per-question teacher ranking · '
                       f"{H.esc(s)} ({d['qid'].nunique() if len(d) else 0} questions)</summary>"
                       + H.table_html(d, [H.Col("qid", "Question", "s"),
                                          H.Col("rank", "#", "d"), H.Col("teacher", "Teacher", "s"),
                                          H.Col("mean", "Mean align", "+3"),
                                          H.Col("n_nodes", "Nodes", "d"),
                                          H.Col("question_sr_mean", "Question mean SR", "3")],
                                      "Per question: each teacher's mean alignment over its "
                                      "decision points there (the paper's AIME case studies, "
                                      "figures 5-7).") + "</details>")
    sections.append(("Per-question views", "".join(pq_html)))
    return _render(out, names, findings, sections, seed, n_boot, n_perm, method, min_sr_range)


def _render(out: Path, names: Sequence[str], findings: list[Finding],
            sections: list[tuple[str, str]], seed: int, n_boot: int, n_perm: int, method: str,
            min_sr_range: float | None) -> Path:
    title = f"distillscope compare · {len(names)} settings"
    sub = (f"Settings side by side, method {method}: " + ", ".join(names) +
           f". Bootstrap {n_boot} draws per run (independent across runs), permutation up to "
           f"{n_perm}, seed {seed}"
           + (f"; decision points with SR range ≥ {min_sr_range:g} only." if min_sr_range
              is not None else "."))
    csp = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'none'; "
           "base-uri 'none'; form-action 'none'")
    body = "".join(f"<h2>{H.esc(h)}</h2>{b}" for h, b in sections)
    generated = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    css = H._template("report.css") + (
        "th.grp{text-align:center;border-bottom:1px solid #bbb}td.absent{color:#888;"
        "font-style:italic;text-align:center}ul.notes{font-size:12px;color:#5f6368}")
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{H.esc(title)}</title>
<style>{css}</style>
</head>
<body>
<h1>{H.esc(title)}</h1>
<p class="subtitle">{H.esc(sub)}</p>
<h2>Headline findings</h2>
{H.findings_html(findings)}
{body}
<p class="footer">Generated by distillscope on {H.esc(generated)}. Self-contained: no external
resources, no script. Model and run text is shown escaped.</p>
</body>
</html>
"""
    path = out / "compare.html"
    _atomic_write(path, page)
    return path
