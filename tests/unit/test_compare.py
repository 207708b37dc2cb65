"""`distillscope compare`: the interaction test, P(top differs), the universal-best verdict,
absent teachers, too few questions, the high-stakes filter and the written page."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
import yaml
from synthetic_run import SCRIPT_TOKEN, make_synthetic_run
from typer.testing import CliRunner

from distillscope import compare as C
from distillscope.cli import app
from distillscope.report.compare_page import write_compare
from distillscope.stakes import high_stakes, per_question_ranking, sr_range_summary


def nodes_frame(means: dict[str, float], n_q: int = 6, per_q: int = 5, sd: float = 0.1,
                seed: int = 0) -> pd.DataFrame:
    """A nodes table: each teacher's alignment ~ N(mean, sd) at per_q decision points of each
    of n_q questions (one path per question; paths alternate correct/incorrect)."""
    rng = np.random.default_rng(seed)
    rows = []
    for q in range(n_q):
        for d in range(per_q):
            sr = (d + 1) / (per_q + 1)
            for t, mu in means.items():
                rows.append({"qid": f"q{q}", "path_id": 0, "depth": d, "teacher": t,
                             "method": "gkd", "align": float(np.clip(rng.normal(mu, sd), -1, 1)),
                             "n_children": 2, "sr_range": sr, "path_correct": q % 2 == 0,
                             "teacher_adv": 0.0})
    return pd.DataFrame(rows)


def setting(label: str, nodes: pd.DataFrame) -> C.Setting:
    return C.Setting(label, __import__("pathlib").Path(label), nodes)


BASE = {"a": 0.6, "b": 0.0, "c": -0.5}
SWAP = {"a": -0.5, "b": 0.0, "c": 0.6}


def run_tests(frames: dict[str, pd.DataFrame], n_boot: int = 500, **kw):
    j = C.joint_boot([setting(k, v) for k, v in frames.items()], "gkd", n_boot=n_boot, seed=0)
    inter = C.interaction_test(j, **kw)
    pairs = C.top_teacher_pairs(j, **kw)
    univ = C.universal_best(j, **kw)
    return j, inter, pairs, univ, C.verdict(inter, pairs, univ, j)


def test_a_setting_compared_with_itself_has_no_interaction():
    n = nodes_frame(BASE)
    j, inter, pairs, univ, (status, text) = run_tests({"A": n, "B": n})
    assert inter["status"] == "tested" and inter["stat"] == 0.0 and inter["p"] == 1.0
    assert inter["df"] == 2 and inter["n_cells"] == 6
    assert pairs["p_top_differs"].tolist() == [0.0]  # "a" is far ahead in every replicate
    assert univ == {"teacher": "a", "p_universal": 1.0, "n_settings": 2, "tied_with": []}
    assert status == "universal" and text.startswith("universal best: a ranks first")


def test_swapped_teachers_give_a_strong_interaction_and_differing_tops():
    j, inter, pairs, univ, (status, text) = run_tests(
        {"A": nodes_frame(BASE), "B": nodes_frame(SWAP, seed=1)})
    assert inter["p"] == pytest.approx(1 / 501)  # the smallest p 500 replicates allow
    assert inter["rms"] > 10 * inter["null_rms"]
    r = pairs.iloc[0]
    assert (r.top_a, r.top_b, r.p_top_differs) == ("a", "c", 1.0)
    assert univ["teacher"] == "" and univ["p_universal"] == 0.0
    assert status == "differs" and "A ranks a first, B ranks c first" in text
    assert "P(top differs) = 1.00" in text


def test_interaction_statistic_is_the_balanced_sum_of_squares():
    j, inter, *_ = run_tests({"A": nodes_frame(BASE), "B": nodes_frame(SWAP, seed=1),
                              "C": nodes_frame(BASE, seed=2)})
    m = j.point  # (S, T), complete
    c = m - m.mean(axis=1, keepdims=True)  # centred within each setting
    assert inter["stat"] == pytest.approx(float(((c - c.mean(axis=0)) ** 2).sum()), rel=1e-10)
    assert inter["df"] == (3 - 1) * (3 - 1)


def test_noise_alone_is_not_an_interaction():
    # the same teacher effects in two independent samples of 6 questions: the test's size is
    # near its nominal level (the small-sample correction of the null; docs/method.md)
    ps = np.array([run_tests({"A": nodes_frame(BASE, sd=0.5, seed=s),
                              "B": nodes_frame(BASE, sd=0.5, seed=100 + s)}, n_boot=200)[1]["p"]
                   for s in range(40)])
    assert np.mean(ps < 0.05) <= 0.125 and np.median(ps) > 0.3


def test_absent_teacher_is_shown_and_left_out_of_that_setting():
    b = nodes_frame({"a": 0.6, "b": 0.0})
    j, inter, pairs, univ, _ = run_tests({"A": nodes_frame(BASE), "B": b})
    assert inter["n_cells"] == 5 and inter["df"] == 1
    assert any("teacher 'c' absent from 'B'" in n for n in inter["notes"])
    assert pairs.iloc[0]["n_common"] == 2
    rank = pd.concat([__import__("distillscope.analysis", fromlist=["x"]).teacher_ranking(
        f, n_boot=50).assign(setting=s, method="gkd") for s, f in (("A", nodes_frame(BASE)),
                                                                    ("B", b))])
    wide = C.ranking_wide(rank, "gkd", ["A", "B"])
    assert wide.set_index("teacher").loc["c", "1_rank"] == "absent"
    assert wide.set_index("teacher").loc["a", "0_rank"] == "1"


def test_too_few_questions_is_insufficient_not_a_p_value():
    j, inter, pairs, univ, (status, text) = run_tests(
        {"A": nodes_frame(BASE), "B": nodes_frame(SWAP, n_q=2)})
    assert inter["status"] == "insufficient" and math.isnan(inter["p"])
    assert any("2 question(s)" in n for n in inter["notes"])
    assert pairs.iloc[0]["status"] == "insufficient"
    assert status == "insufficient" and text.startswith("Not enough data")


def test_labels_come_from_the_config_and_are_disambiguated(tmp_path):
    a = make_synthetic_run(tmp_path / "a")
    b = make_synthetic_run(tmp_path / "b", seed=1)
    s = C.load_settings([a, b])
    student = yaml.safe_load((a / "config.yaml").read_text())["student"]["model"]
    task = yaml.safe_load((a / "config.yaml").read_text())["task"]["name"]
    assert [x.label for x in s] == [f"{student} · {task} (a)", f"{student} · {task} (b)"]
    assert [x.label for x in C.load_settings([a, a])][1].endswith("(a) #2")
    assert [x.label for x in C.load_settings([a, b], ["x", "y"])] == ["x", "y"]
    with pytest.raises(ValueError, match="one --label per run"):
        C.load_settings([a, b], ["x"])


def test_high_stakes_filter_and_per_question_views():
    n = nodes_frame(BASE, n_q=3, per_q=5)
    kept = high_stakes(n, 0.5)
    assert set(kept["sr_range"].round(6)) == {0.5, round(4 / 6, 6), round(5 / 6, 6)}
    assert high_stakes(n, None) is n
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        high_stakes(n, 1.5)
    pq = per_question_ranking(n)
    assert len(pq) == 9 and set(pq.loc[pq["top"], "teacher"]) == {"a"}
    assert pq.groupby("qid")["rank"].apply(list).tolist() == [[1, 2, 3]] * 3
    sr = sr_range_summary(n)
    assert sr["n_nodes"] == 15 and sr["share_ge_0.5"] == pytest.approx(9 / 15)


def test_write_compare_files_and_escaped_page(tmp_path):
    a = make_synthetic_run(tmp_path / "a")
    b = make_synthetic_run(tmp_path / "b", seed=1)
    cfg = yaml.safe_load((b / "config.yaml").read_text())
    cfg["student"]["model"] = SCRIPT_TOKEN  # hostile model string in a setting label
    (b / "config.yaml").write_text(yaml.safe_dump(cfg))
    page = write_compare([a, b], tmp_path / "cmp", n_boot=200, n_perm=200)
    out = tmp_path / "cmp"
    for name in ("ranking_gkd", "ranking_sampled", "ranking_long", "interaction", "top_pairs",
                 "correct_vs_incorrect", "spearman", "per_question_ranking", "sr_range"):
        assert (out / "tables" / f"{name}.csv").is_file()
        assert (out / "tables" / f"{name}.md").read_text().startswith("| ")
    for fig in ("ranking", "correct_vs_incorrect", "sr_range"):
        assert (out / "figures" / f"{fig}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = page.read_text(encoding="utf-8")
    assert "<script" not in html and "script-src 'none'" in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert not re.search(r"(src|href)=\"https?:", html)
    summary = json.loads((out / "compare.json").read_text())
    assert summary["compare/settings"] == 2 and summary["verdict/gkd/status"] in (
        "universal", "differs", "inconclusive", "insufficient")
    # the per-run ranking is the run's own table 1 at this seed
    from distillscope.report import write_report

    write_report(a, tmp_path / "rep", seed=0, n_boot=200, n_perm=200)
    own = pd.read_csv(tmp_path / "rep" / "tables" / "teacher_ranking.csv")
    long = pd.read_csv(out / "tables" / "ranking_long.csv")
    mine = long[(long["method"] == "gkd") & (long["setting"] == long["setting"].iloc[0])]
    assert mine["mean"].tolist() == pytest.approx(own["mean"].tolist())
    assert mine["ci_low"].tolist() == pytest.approx(own["ci_low"].tolist())


def test_cli_compare_says_what_it_found(tmp_path):
    a = make_synthetic_run(tmp_path / "a")
    b = make_synthetic_run(tmp_path / "b", seed=1)  # the CLI refuses a run given twice
    res = CliRunner().invoke(app, ["compare", str(a), str(b), "--out", str(tmp_path / "o"),
                                   "--min-sr-range", "0.1"])
    assert res.exit_code == 0, res.output
    assert "universal best" in res.output or "No universal best" in res.output
    assert (tmp_path / "o" / "compare.html").is_file()
    bad = CliRunner().invoke(app, ["compare", str(a), str(tmp_path / "nope"), "--out",
                                   str(tmp_path / "o2")])
    assert bad.exit_code == 2 and "not found" in bad.output


def test_wilson_interval_and_generation_tree(tmp_path):
    from distillscope.report.data import load_run
    from distillscope.report.tree_view import path_tree, tree_html, tree_rich, wilson

    lo, hi = wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    assert wilson(0, 20)[0] == 0.0 and math.isnan(wilson(0, 0)[0])
    run = load_run(make_synthetic_run(tmp_path / "r"))
    tree = path_tree(run, "q0", 0, "self-1c")
    assert len(tree) == 20 and [n.depth for n in tree if n.decision] == list(range(0, 19, 2))
    dp = tree[4]  # the hostile script token sits at this decision point
    assert dp.token == SCRIPT_TOKEN and [c.visits for c in dp.children] == [40, 25, 5]
    assert [c.in_su for c in dp.children] == [True, True, False] and dp.children[0].on_path
    html = tree_html(tree, "self-1c", "gkd", "a <b>path</b>")
    assert SCRIPT_TOKEN not in html and "&lt;script&gt;" in html and "<b>path" not in html
    assert html.count('<details class="tnode dp" open>') == 10
    buf = __import__("io").StringIO()
    __import__("rich.console", fromlist=["Console"]).Console(file=buf, width=160).print(
        tree_rich(tree, "self-1c", "gkd", "q0 · path 0"))
    assert "\x1b[31m" not in buf.getvalue() and "P̂=" in buf.getvalue()


def test_show_tree_and_high_stakes_cli(tmp_path):
    a = make_synthetic_run(tmp_path / "a")
    res = CliRunner().invoke(app, ["show", str(a), "--question", "q1", "--path", "0", "--tree",
                                   "--min-sr-range", "0.2"])
    assert res.exit_code == 0, res.output
    assert "high-stakes only (SR range ≥ 0.2)" in res.output and "P̂=" in res.output
    res = CliRunner().invoke(app, ["export-weights", str(a), "--teacher", "self-1c", "--out",
                                   str(tmp_path / "w.parquet"), "--min-sr-range", "0.2"])
    assert res.exit_code == 0, res.output
    w = pd.read_parquet(tmp_path / "w.parquet")
    full = __import__("distillscope.export", fromlist=["x"]).weights_frame(a, "self-1c")
    assert 0 < w["align"].notna().sum() < full["align"].notna().sum()
    res = CliRunner().invoke(app, ["report", str(a), "--min-sr-range", "0.2"])
    assert res.exit_code == 0, res.output
    s = json.loads((a / "report-sr0.2" / "summary.json").read_text())
    assert s["report/min_sr_range"] == 0.2 and (a / "report-sr0.2" / "tables" /
                                                "per_question_ranking.csv").is_file()
    bad = CliRunner().invoke(app, ["report", str(a), "--min-sr-range", "2"])
    assert bad.exit_code == 2 and "[0, 1]" in bad.output
