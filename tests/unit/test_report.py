"""The report, its HTML safety, the findings' wording and `show` on a synthetic run."""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console
from synthetic_run import ESC_TOKEN, IMG_TOKEN, SCRIPT_TOKEN, make_synthetic_run

from distillscope.report import html as H
from distillscope.report import to_markdown, write_report
from distillscope.report.data import load_run, path_views, visible
from distillscope.report.findings import correct_incorrect_finding, ranking_finding
from distillscope.show import align_style, default_teacher, render_path

TABLES = ("teacher_ranking", "correct_vs_incorrect", "correct_vs_incorrect_by_teacher",
          "teacher_metrics", "within_path_spearman", "selective_oracle", "methods_vs_drgrpo",
          "best_teacher_oracle", "estimator_sanity")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_synthetic_run(tmp_path_factory.mktemp("run") / "run")


@pytest.fixture(scope="module")
def report(run_dir):
    return write_report(run_dir, seed=0, n_boot=300, n_perm=500)


def test_report_files_exist(report, run_dir):
    out = run_dir / "report"
    assert report == out / "report.html" and report.is_file()
    for name in TABLES:
        assert (out / "tables" / f"{name}.csv").is_file()
        assert (out / "tables" / f"{name}.md").read_text().startswith("| ")
    for fig in ("teacher_ranking", "correct_vs_incorrect", "alignment_histogram", "path_depth"):
        assert (out / "figures" / f"{fig}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.rglob(".*.tmp"))  # atomic writes leave no temp file behind


def test_summary_is_flat_and_matches_tables(report, run_dir):
    summary = json.loads((run_dir / "report" / "summary.json").read_text())
    assert all("/" in k and not isinstance(v, (dict, list)) for k, v in summary.items())
    assert summary["ranking/gkd/first"] == "self-1c"
    ranking = pd.read_csv(run_dir / "report" / "tables" / "teacher_ranking.csv")
    assert summary["ranking/gkd/self-1c/mean"] == pytest.approx(ranking.loc[0, "mean"])
    assert summary["ranking/gkd/self-1c/mean_nodes"] == pytest.approx(
        ranking.loc[0, "mean_nodes"])
    assert summary["align/gkd/n_nan"] == 1  # the synthetic run's one undefined cosine
    assert summary["report/seed"] == 0


def test_report_is_reproducible_for_a_seed(run_dir, tmp_path):
    a = write_report(run_dir, tmp_path / "a", seed=3, n_boot=200, n_perm=200)
    write_report(run_dir, tmp_path / "b", seed=3, n_boot=200, n_perm=200)
    assert a == tmp_path / "a" / "report.html"
    for name in ("summary.json", "tables/teacher_ranking.csv", "tables/correct_vs_incorrect.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_html_escapes_model_text_everywhere(report):
    page = report.read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert SCRIPT_TOKEN not in page
    assert IMG_TOKEN not in page and "<img src=x" not in page
    assert "\x1b" not in page and visible(ESC_TOKEN) in page
    assert "&lt;b&gt;bold?&lt;/b&gt;" in page  # the question prompt (dataset text)
    data = re.search(r'<script type="application/json" id="ds-data">(.*?)</script>', page, re.S)
    assert data and "<" not in data.group(1) and ">" not in data.group(1)
    payload = json.loads(data.group(1))
    texts = [n[6] for p in payload["paths"] for n in p["n"]]
    assert SCRIPT_TOKEN in texts  # intact after JSON decoding, for textContent
    # every script element is either the inert data block or the report's own (nonce'd) code
    tags = re.findall(r"<script[^>]*>", page)
    assert len(tags) == 2 and all('type="application/json"' in t or "nonce=" in t for t in tags)


def test_html_is_self_contained_and_carries_provenance(report):
    page = report.read_text(encoding="utf-8")
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', page)
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    for text in ("synthetic-boolq", "0123abcd4567", "unbiased", "renorm", "cpu (test)",
                 "torch 2.13.0", "embedded:smollm2-135m"):
        assert text in page
    assert page.index("Headline findings") < page.index("Table 1")
    assert "self-1c ranks first" in page
    assert '<select id="ds-teacher">' in page and 'value="qwen3-8b"' in page


def test_report_of_an_empty_run_says_so(tmp_path):
    page = write_report(tmp_path, n_boot=20, n_perm=20).read_text(encoding="utf-8")
    assert "No teacher has a scored decision point" in page
    assert "No representative path in this run" in page
    assert json.loads((tmp_path / "report" / "summary.json").read_text())["run/n_paths"] == 0


def test_path_views_carry_s_u_children_and_probabilities(run_dir):
    run = load_run(run_dir)
    (view,) = path_views(run, only=("q0", 0))
    assert view.tokens[4] == SCRIPT_TOKEN and sorted(view.nodes) == list(range(0, 19, 2))
    node = view.nodes[4]
    assert len(node.children) == 2  # the third child has 5 < N_sig visits
    assert {c.visits for c in node.children} == {40, 25}
    on_path = [c for c in node.children if c.on_path][0]
    assert on_path.token_text == SCRIPT_TOKEN
    d = run.tables["distributions"]
    row = d[(d.qid == "q0") & (d.path_id == 0) & (d.depth == 4) & (d.model == "student")
            & (d.token == 104)]
    assert on_path.p_student == pytest.approx(float(row["prob"].iloc[0]))
    # drgrpo rows are teacher-free in this run: every teacher sees them
    assert ("self-1c", "drgrpo") in node.align and ("qwen3-8b", "drgrpo") in node.align
    # the undefined cosine stays NaN, distinct from a missing node
    (v11,) = path_views(run, only=("q1", 1))
    assert math.isnan(v11.nodes[4].align[("qwen3-8b", "gkd")])


def test_json_for_script_is_inert_and_round_trips():
    obj = {"t": ["</script><script>alert(1)</script>", "a & b", "\u2028", math.nan]}
    s = H.json_for_script(obj)
    assert "<" not in s and ">" not in s and "&" not in s
    assert json.loads(s) == {"t": ["</script><script>alert(1)</script>", "a & b", "\u2028", None]}


def test_colour_scale_endpoints_and_escaping_helpers():
    assert H.colour(-1) == "rgb(178,24,43)" and H.colour(0) == "rgb(247,247,247)"
    assert H.colour(1) == "rgb(33,102,172)" and H.colour(5) == H.colour(1)
    assert H.esc('<a href="x">\x00') == "&lt;a href=&quot;x&quot;&gt;\u2400"
    assert H.fmt_value(float("nan"), "+3") == "–" and H.fmt_value(0.00001, "p") == "1.0e-05"
    assert to_markdown(pd.DataFrame({"a": ["x|y"], "b": [math.nan]})).splitlines()[2] == \
        "| x\\|y |  |"


# ---------------------------------------------------------------------------------------------
def _cvi_row(**kw) -> pd.DataFrame:
    row = {"metric": "mean_cosine", "correct": 0.1, "incorrect": 0.3, "delta": -0.2,
           "delta_ci_low": math.nan, "delta_ci_high": math.nan, "p_perm": 1 / 3,
           "p_perm_min": 1 / 3, "p_welch": 1e-12, "n_questions_mixed": 1, "n_correct": 400,
           "n_incorrect": 400}
    row.update(kw)
    return pd.DataFrame([row])


def test_findings_are_honest_when_inconclusive():
    f = correct_incorrect_finding(_cvi_row(), "gkd")
    assert f.status == "inconclusive" and "smallest attainable p is 0.33" in f.text
    assert "Welch p = 1.0e-12" in f.text
    assert correct_incorrect_finding(_cvi_row(n_questions_mixed=0, p_perm=math.nan,
                                              p_perm_min=math.nan), "gkd").status == "inconclusive"
    ok = correct_incorrect_finding(_cvi_row(p_perm=0.001, p_perm_min=0.0001), "gkd")
    assert ok.status == "conclusive" and ok.text.startswith("Incorrect paths align more")
    rk = pd.DataFrame([
        {"teacher": "a", "mean": 0.05, "mean_nodes": 0.02, "ci_low": 0.0, "ci_high": 0.1,
         "n_nodes": 50,
         "n_questions": 5, "gap_to_next": 0.01, "gap_ci_low": -0.02, "gap_ci_high": 0.04,
         "separated": False},
        {"teacher": "b", "mean": 0.04, "ci_low": 0.0, "ci_high": 0.1, "n_nodes": 50,
         "n_questions": 5, "gap_to_next": math.nan, "gap_ci_low": math.nan,
         "gap_ci_high": math.nan, "separated": False}])
    f = ranking_finding(rk, "gkd")
    assert f.status == "inconclusive" and "do not separate" in f.text
    # the headline says which mean it is, and gives the node-pooled one beside it
    assert "question-weighted mean gkd alignment (each question counts once): +0.050" in f.text
    assert "pooled over decision points instead: +0.020" in f.text


# ---------------------------------------------------------------------------------------------
def _console() -> Console:
    return Console(file=io.StringIO(), record=True, width=140, force_terminal=True,
                   color_system="truecolor")


def test_show_renders_path_legend_and_decision_table(run_dir):
    con = _console()
    render_path(run_dir, "q0", 0, console=con)
    text = con.export_text(styles=False, clear=False)
    assert "teacher self-1c" in text and "correct" in text and "+1 helpful" in text
    assert SCRIPT_TOKEN in text  # shown as text; rich markup is not interpreted
    assert "Decision points" in text and "▸" in text
    assert "\x1b" not in text and visible(ESC_TOKEN) in text
    styled = con.export_text(styles=True)
    r, g, b = H.colour(-1)[4:-1].split(",")
    assert align_style(-1).bgcolor.triplet == (int(r), int(g), int(b))
    assert "48;2;" in styled  # true-colour backgrounds were emitted


def test_show_errors_name_the_choices(run_dir):
    with pytest.raises(ValueError, match="self-1c"):
        render_path(run_dir, "q0", 0, teacher="nobody", console=_console())
    with pytest.raises(KeyError, match="q0, q1"):
        render_path(run_dir, "q9", 0, console=_console())
    with pytest.raises(KeyError, match="question q0 has paths 0, 1"):
        render_path(run_dir, "q0", 7, console=_console())
    assert default_teacher(run_dir) == "self-1c"


def test_show_defaults_to_the_report_s_top_teacher_not_the_node_pooled_one(run_dir, tmp_path):
    """A question with many decision points must not outvote the others: show's default
    teacher is the report's rank 1 (question-weighted mean)."""
    import shutil

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from distillscope.analysis import decision_points, teacher_ranking

    run = shutil.copytree(run_dir, tmp_path / "run")
    part = run / "tables" / "nodes" / "part-0.parquet"
    table = pq.read_table(part)
    nodes = table.to_pandas()
    dp, _ = decision_points(nodes, "gkd")
    busiest = dp[dp["teacher"] == "self-1c"]["qid"].value_counts().idxmax()
    gkd = nodes["method"] == "gkd"
    # self-1c: +1 on the busiest question, -1 elsewhere; qwen3-8b: between its two means
    nodes.loc[gkd & (nodes["teacher"] == "self-1c"), "align"] = np.where(
        nodes.loc[gkd & (nodes["teacher"] == "self-1c"), "qid"] == busiest, 1.0, -1.0)
    d = decision_points(nodes, "gkd")[0].query("teacher == 'self-1c'")
    pooled, weighted = d["align"].mean(), d.groupby("qid")["align"].mean().mean()
    assert pooled > weighted  # the precondition: the two orders differ
    nodes.loc[gkd & (nodes["teacher"] == "qwen3-8b"), "align"] = (pooled + weighted) / 2
    pq.write_table(pa.Table.from_pandas(nodes, schema=table.schema, preserve_index=False), part)
    ranking = teacher_ranking(decision_points(nodes, None)[0], "gkd", n_boot=10)
    assert ranking.iloc[0]["teacher"] == "qwen3-8b"
    assert ranking.set_index("teacher")["mean_nodes"].idxmax() == "self-1c"
    assert default_teacher(run) == "qwen3-8b"


def test_ranking_plot_survives_a_mean_outside_its_percentile_interval():
    """A percentile bootstrap interval can exclude its point estimate (two skewed questions):
    the figure draws it instead of failing the whole report ('xerr' must not be negative)."""
    import pandas as pd

    from distillscope.report import plots

    ranking = pd.DataFrame([{"rank": 1, "teacher": "a", "mean": 0.5, "ci_low": 0.6,
                             "ci_high": 0.9, "n_nodes": 3}])
    fig = plots.ranking_plot(ranking, "gkd")
    assert fig is not None


def test_report_header_names_top_k_teachers_and_their_bounded_nodes():
    import pandas as pd

    from distillscope.report.header import topk_items

    nodes = pd.DataFrame([
        {"teacher": "served", "method": "gkd", "teacher_topk": 20, "su_bounded": 1},
        {"teacher": "served", "method": "gkd", "teacher_topk": 20, "su_bounded": 0},
        {"teacher": "served", "method": "sampled", "teacher_topk": 20, "su_bounded": 1},
        {"teacher": "full", "method": "gkd", "teacher_topk": 0, "su_bounded": 0}])
    (key, text), = topk_items(nodes)
    assert key == "top-k teachers" and "full" not in text
    assert "served (k=20): 1 of 2 decision points" in text and "Top-k teacher fidelity" in text
    assert topk_items(nodes[nodes.teacher == "full"]) == []
    assert topk_items(nodes.drop(columns=["teacher_topk", "su_bounded"])) == []


def test_served_items_from_provenance():
    from distillscope.report.header import served_items

    assert served_items({}) == [] and served_items({"teachers": "odd"}) == []
    assert served_items({"teachers": {"t": {"backend": "openai"}}}) == []  # no self_test
    (label, text), = served_items({"teachers": {
        "b": {"self_test": {"passed": None, "skipped": "options.self_test is false"}},
        "a": {"self_test": {"passed": True, "base_url": "http://h:1", "topk": 20,
                            "replica_max_diff": 0.0, "replica_tol": 1e-4}}}})
    assert label == "served teachers"
    assert text.startswith("a (http://h:1, k=20): self-test passed")
    assert "b: self-test not run (options.self_test is false)" in text


def test_a_new_report_drops_only_files_the_last_one_wrote(run_dir, tmp_path):
    """The report folder's manifest lists what the tool wrote: a rerun replaces those and
    moves every other file across, even one named like a report table or figure."""
    import shutil

    from distillscope.report.outdir import MANIFEST

    run = shutil.copytree(run_dir, tmp_path / "run")
    page = write_report(run, n_boot=50, n_perm=50)
    folder = page.parent
    written = json.loads((folder / MANIFEST).read_text())["files"]
    assert "report.html" in written and "summary.json" in written
    mine = {"tables/mine.md": "m", "tables/extra.csv": "c", "figures/extra.png": "p",
            "notes.txt": "n"}
    for rel, text in mine.items():
        (folder / rel).write_text(text)
    stale = folder / "tables" / "dropped_table.csv"  # one the last report wrote, not this one
    stale.write_text("old")
    (folder / MANIFEST).write_text(json.dumps({"files": [*written, "tables/dropped_table.csv"]}))
    write_report(run, n_boot=50, n_perm=50)
    assert {rel: (folder / rel).read_text() for rel in mine} == mine
    assert not stale.exists()
    assert json.loads((folder / MANIFEST).read_text())["files"] == written


def test_a_user_file_in_a_killed_report_build_goes_back(run_dir, tmp_path):
    """Killed inside `_swap_in` after it moved a user's file into its build folder: the next
    report puts the file back instead of deleting the build folder with it."""
    import shutil

    from distillscope.report.outdir import MANIFEST, build_prefix

    run = shutil.copytree(run_dir, tmp_path / "run")
    folder = write_report(run, n_boot=50, n_perm=50).parent
    dead = run / f"{build_prefix('report')}999999999-report"  # no such pid
    shutil.copytree(folder, dead)
    (dead / "notes.txt").write_text("mine")  # moved in, then the process died
    (dead / "half.csv").write_text("x")
    written = json.loads((dead / MANIFEST).read_text())["files"]
    (dead / MANIFEST).write_text(json.dumps({"files": [*written, "half.csv"]}))
    write_report(run, n_boot=50, n_perm=50)
    assert (folder / "notes.txt").read_text() == "mine"
    assert not (folder / "half.csv").exists() and not dead.exists()


def test_a_first_report_into_a_folder_of_the_user_s_keeps_everything(run_dir, tmp_path):
    """No manifest and no earlier report there: nothing is taken for the tool's, even files
    named like a report's tables and figures; only a report of an earlier version (page and
    summary, no manifest) has its report-named files replaced."""
    import shutil

    from distillscope.report.outdir import MANIFEST

    run = shutil.copytree(run_dir, tmp_path / "run")
    mine = {"tables/mine.md": "m", "figures/plot.png": "p", "tables/extra.csv": "c"}
    for rel, text in mine.items():
        (run / "report" / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / "report" / rel).write_text(text)
    folder = write_report(run, n_boot=50, n_perm=50).parent
    assert {rel: (folder / rel).read_text() for rel in mine} == mine
    (folder / MANIFEST).unlink()  # now it looks like an earlier version's report
    write_report(run, n_boot=50, n_perm=50)
    assert not (folder / "tables" / "mine.md").exists()  # report-named: taken for its own


def test_a_failed_swap_puts_the_user_s_entries_back(run_dir, tmp_path, monkeypatch):
    import os
    import shutil

    from distillscope.report import outdir

    run = shutil.copytree(run_dir, tmp_path / "run")
    folder = write_report(run, n_boot=50, n_perm=50).parent
    (folder / "a_mine.txt").write_text("a")
    (folder / "b_dir").mkdir()
    (folder / "b_dir" / "f.txt").write_text("b")
    real = os.replace
    calls = []

    def flaky(src, dst):  # os.replace everywhere: count only the moves out of the folder
        if Path(src).parent in (folder, folder / "b_dir"):
            calls.append(src)
            if len(calls) == 2:  # the second user entry moved across
                raise PermissionError(13, "Permission denied")
        return real(src, dst)

    monkeypatch.setattr(outdir.os, "replace", flaky)
    with pytest.raises(Exception, match="Permission denied|cannot write"):
        write_report(run, n_boot=50, n_perm=50)
    assert (folder / "a_mine.txt").read_text() == "a"
    assert (folder / "b_dir" / "f.txt").read_text() == "b"
    assert (folder / "report.html").is_file() and len(calls) == 2  # it failed in the swap
