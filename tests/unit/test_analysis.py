"""Phase-3 statistics on small hand-made node tables with known answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from distillscope import analysis as A
from distillscope.schemas import FEATURES, NODES


def node(qid="q0", path_id=0, depth=0, teacher="t1", method="gkd", align=0.0, **kw) -> dict:
    row = {"qid": qid, "path_id": path_id, "depth": depth, "depth_norm": 0.0,
           "teacher": teacher, "method": method, "align": align, "align_exact": math.nan,
           "teacher_adv": 0.0, "sr_range": 0.5, "n_children": 2, "visits": 60,
           "path_correct": True, "path_token": 1, "restrict": "renorm", "estimator": "unbiased",
           "teacher_topk": 0, "su_bounded": 0}
    row.update({f: 0.0 for f in FEATURES})
    row.update(kw)
    return row


def frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    assert set(df.columns) == set(NODES.names)
    return df


# ---------------------------------------------------------------------------------------------
def test_decision_points_drop_and_count_nan_and_non_decisions():
    df = frame([node(align=0.5), node(depth=1, align=math.nan), node(depth=2, sr_range=0.0),
                node(depth=3, n_children=1), node(depth=4, method="sampled")])
    kept, n_nan = A.decision_points(df, "gkd")
    assert list(kept["depth"]) == [0]
    assert n_nan == 1


def test_clustered_mean_ci_weighted_mean_and_degenerate_cases():
    r = A.clustered_mean_ci([1.0, 0.0, 0.5], ["a", "a", "b"], weights=[3, 1, 0])
    assert r["mean"] == pytest.approx(0.75)
    assert r["n_clusters"] == 2
    one = A.clustered_mean_ci([0.1, 0.2, 0.3], ["a", "a", "a"])
    assert one["mean"] == pytest.approx(0.2) and math.isnan(one["ci_low"])
    same = A.clustered_mean_ci([0.4, 0.6, 0.5, 0.5], ["a", "a", "b", "b"], seed=3)
    assert same["ci_low"] == pytest.approx(0.5) and same["ci_high"] == pytest.approx(0.5)


def test_cluster_bootstrap_resamples_questions_not_nodes():
    # Two questions of 100 identical values each (0 and 1). Resampling questions gives means
    # 0, .5, 1 with probabilities 1/4, 1/2, 1/4: the 95% CI is [0, 1]. A node-level bootstrap
    # would give roughly [.43, .57].
    values = [0.0] * 100 + [1.0] * 100
    clusters = ["a"] * 100 + ["b"] * 100
    r = A.clustered_mean_ci(values, clusters, n_boot=4000, seed=0)
    assert r["mean"] == pytest.approx(0.5)
    assert (r["ci_low"], r["ci_high"]) == (0.0, 1.0)


def test_clustered_mean_ci_is_reproducible_by_seed():
    rng = np.random.default_rng(1)
    v, c = rng.normal(size=60), np.repeat(np.arange(6), 10)
    a, b = A.clustered_mean_ci(v, c, seed=7), A.clustered_mean_ci(v, c, seed=7)
    other = A.clustered_mean_ci(v, c, seed=8)
    assert a == b
    assert (a["ci_low"], a["ci_high"]) != (other["ci_low"], other["ci_high"])


# ---------------------------------------------------------------------------------------------
def test_teacher_ranking_means_order_nan_count_and_paired_gap():
    # Questions differ a lot in level (so marginal CIs are wide and overlap), but teacher "a"
    # is exactly 0.1 above "b" at every node: the paired gap CI is [0.1, 0.1], separated.
    rows = []
    for q, level in enumerate([-0.6, 0.0, 0.6, 0.3]):
        for d in range(3):
            rows.append(node(qid=f"q{q}", depth=d, teacher="b", align=level))
            rows.append(node(qid=f"q{q}", depth=d, teacher="a", align=level + 0.1))
    rows.append(node(qid="q0", depth=9, teacher="b", align=math.nan))
    r = A.teacher_ranking(frame(rows), n_boot=500, seed=0)
    assert list(r["teacher"]) == ["a", "b"] and list(r["rank"]) == [1, 2]
    assert r.loc[0, "mean"] == pytest.approx(0.175)
    assert r.loc[1, "mean"] == pytest.approx(0.075)
    assert list(r["n_nan"]) == [0, 1] and list(r["n_nodes"]) == [12, 12]
    assert r.loc[0, "ci_low"] < r.loc[1, "ci_high"]  # marginal CIs overlap
    assert r.loc[0, "gap_to_next"] == pytest.approx(0.1)
    assert r.loc[0, "gap_ci_low"] == pytest.approx(0.1)
    assert r.loc[0, "gap_ci_high"] == pytest.approx(0.1)
    assert bool(r.loc[0, "separated"]) is True
    assert math.isnan(r.loc[1, "gap_to_next"])


def test_teacher_ranking_weighs_each_question_once_and_reports_the_pooled_mean():
    # q0 has one decision point, q1 three (on two paths). Teacher "b" has a node on only one
    # of q1's paths: a question's value is the mean over the teacher's nodes in it, whatever
    # paths they are on; then each question counts once.
    rows = [node(qid="q0", teacher="a", align=0.9), node(qid="q0", teacher="b", align=0.8),
            node(qid="q1", path_id=0, depth=0, teacher="a", align=-0.1),
            node(qid="q1", path_id=0, depth=1, teacher="a", align=0.2),
            node(qid="q1", path_id=1, depth=0, teacher="a", align=0.5),
            node(qid="q1", path_id=1, depth=0, teacher="b", align=0.1)]
    r = A.teacher_ranking(frame(rows), n_boot=2000, seed=0).set_index("teacher")
    # a: questions (0.9 + (-0.1 + 0.2 + 0.5) / 3) / 2 = 0.55; nodes (0.9 - 0.1 + 0.2 + 0.5) / 4
    assert r.loc["a", "mean"] == pytest.approx(0.55, abs=1e-12)
    assert r.loc["a", "mean_nodes"] == pytest.approx(0.375, abs=1e-12)
    assert r.loc["b", "mean"] == pytest.approx(0.45, abs=1e-12)
    assert r.loc["b", "mean_nodes"] == pytest.approx(0.45, abs=1e-12)
    assert list(r.index) == ["a", "b"]  # node-pooled, b (0.45) would lead a (0.375)
    assert list(r["n_nodes"]) == [4, 2] and list(r["n_questions"]) == [2, 2]
    # The bootstrap is of the same statistic: resamples {q0,q0}, {q0,q1}, {q1,q1} give a
    # 0.9, 0.55, 0.2 (node-pooled it would be 0.9, 0.375, 0.2), and b is 0.1 below a in every
    # question, so the paired gap is 0.1 in every resample (node-pooled: 0.1 or -0.075).
    assert (r.loc["a", "ci_low"], r.loc["a", "ci_high"]) == pytest.approx((0.2, 0.9))
    assert r.loc["a", "gap_to_next"] == pytest.approx(0.1, abs=1e-12)
    assert r.loc["a", "gap_ci_low"] == pytest.approx(0.1, abs=1e-12)
    assert r.loc["a", "gap_ci_high"] == pytest.approx(0.1, abs=1e-12)
    assert bool(r.loc["a", "separated"]) is True
    s = A.summarize(frame(rows), A.analyze(frame(rows), n_boot=50, n_perm=10))
    assert s["ranking/gkd/a/mean"] == pytest.approx(0.55)
    assert s["ranking/gkd/a/mean_nodes"] == pytest.approx(0.375)


def test_teacher_gap_is_paired_on_the_questions_both_scored():
    # b has no context on q1 (a self-* teacher without its demos there): the gap compares the
    # two on q0 only, 0.5 - 0.2 = 0.3, not mean(a) - mean(b) = 0.7 - 0.2 = 0.5
    rows = [node(qid="q0", teacher="a", align=0.5), node(qid="q0", teacher="b", align=0.2),
            node(qid="q1", teacher="a", align=0.9), node(qid="q2", teacher="a", align=0.7),
            node(qid="q2", teacher="b", align=0.4)]
    r = A.teacher_ranking(frame(rows), n_boot=500, seed=0).set_index("teacher")
    assert r.loc["a", "mean"] == pytest.approx(0.7) and r.loc["b", "mean"] == pytest.approx(0.3)
    assert r.loc["a", "gap_to_next"] == pytest.approx(0.3, abs=1e-12)
    assert r.loc["a", "gap_questions"] == 2
    assert (r.loc["a", "gap_ci_low"], r.loc["a", "gap_ci_high"]) == pytest.approx((0.3, 0.3))
    assert math.isnan(r.loc["b", "gap_to_next"]) and r.loc["b", "gap_questions"] == 0


def test_teacher_ranking_teacher_without_a_defined_alignment():
    df = frame([node(qid="q0", teacher="a", align=0.3), node(qid="q1", teacher="a", align=0.1),
                node(qid="q0", teacher="z", align=math.nan)])
    r = A.teacher_ranking(df, n_boot=100).set_index("teacher")
    assert list(r.index) == ["a", "z"]
    assert r.loc["a", "mean"] == pytest.approx(0.2)
    assert r.loc["z", ["mean", "mean_nodes", "ci_low"]].isna().all()
    assert r.loc["z", "n_nodes"] == 0 and r.loc["z", "n_nan"] == 1


def test_teacher_ranking_single_question_has_no_ci():
    df = frame([node(teacher="a", align=0.3), node(teacher="b", align=0.1)])
    r = A.teacher_ranking(df, n_boot=100)
    assert list(r["teacher"]) == ["a", "b"]
    assert r["ci_low"].isna().all() and not r["separated"].any()


# ---------------------------------------------------------------------------------------------
def test_permutation_exact_one_question_two_by_two():
    # path means: correct 1.0, 0.9; incorrect 0.0, 0.1. Of the 6 label assignments, the
    # observed one and its mirror reach |T| = 0.9: p = 2/6 exactly, also the minimum.
    r = A.permutation_test(np.array([1.0, 0.9, 0.0, 0.1]), np.ones(4),
                           np.array([True, True, False, False]), np.array(["q"] * 4))
    assert r["exact"] and r["n_assignments"] == 6
    assert r["stat"] == pytest.approx(0.9)
    assert r["p"] == pytest.approx(1 / 3) and r["p_min"] == pytest.approx(1 / 3)


def test_permutation_monte_carlo_consistent_effect_reaches_min_p():
    # 12 questions (6**12 assignments: Monte Carlo); in each, both correct paths beat both
    # incorrect ones, so no random relabelling is as extreme: p = 1 / (n_perm + 1).
    s, lab, qs = [], [], []
    for q in range(12):
        s += [1.0, 0.8, 0.1, 0.0]
        lab += [True, True, False, False]
        qs += [f"q{q}"] * 4
    r = A.permutation_test(np.array(s), np.ones(48), np.array(lab), np.array(qs),
                           n_perm=999, seed=0)
    assert not r["exact"]
    assert r["p"] == pytest.approx(1 / 1000)


def test_permutation_monte_carlo_matches_a_plain_loop_and_is_reproducible():
    rng = np.random.default_rng(0)
    s = rng.normal(size=48)
    lab = np.tile([True, True, False, False], 12)
    qs = np.repeat([f"q{i}" for i in range(12)], 4)
    a = A.permutation_test(s, np.ones(48), lab, qs, n_perm=4000, seed=4)
    assert a == A.permutation_test(s, np.ones(48), lab, qs, n_perm=4000, seed=4)
    # the same test written as the obvious loop: shuffle each question's labels
    loop_rng, t0, hits = np.random.default_rng(1), s[lab].mean() - s[~lab].mean(), 0
    for _ in range(4000):
        perm = np.concatenate([loop_rng.permutation(lab[i:i + 4]) for i in range(0, 48, 4)])
        hits += abs(s[perm].mean() - s[~perm].mean()) >= abs(t0) - 1e-12
    assert a["stat"] == pytest.approx(t0)
    assert a["p"] == pytest.approx((hits + 1) / 4001, abs=0.02)


def test_permutation_ignores_single_label_questions():
    # q0 only correct (high), q1 only incorrect (low), q2 mixed with no difference: the naive
    # difference is large, the within-question statistic is 0 and p = 1.
    r = A.permutation_test(np.array([1.0, 1.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5]), np.ones(8),
                           np.array([True, True, False, False, True, True, False, False]),
                           np.array(["q0", "q0", "q1", "q1", "q2", "q2", "q2", "q2"]))
    assert r["n_questions"] == 1 and r["stat"] == pytest.approx(0.0) and r["p"] == 1.0
    none = A.permutation_test(np.ones(2), np.ones(2), np.array([True, True]), np.array(["a", "b"]))
    assert none["n_questions"] == 0 and math.isnan(none["p"])


def test_clustering_changes_the_conclusion():
    # One question, two correct and two incorrect paths of 200 nodes each; correct paths sit
    # clearly higher. Node-level Welch calls it overwhelming; with one question the clustered
    # permutation test cannot go below p = 1/3.
    rng = np.random.default_rng(0)
    rows = []
    for pid, correct in enumerate([True, True, False, False]):
        mu = 0.5 if correct else 0.0
        for d in range(200):
            rows.append(node(path_id=pid, depth=d, path_correct=correct,
                             align=float(rng.normal(mu, 0.1))))
    cvi = A.correct_vs_incorrect(frame(rows), n_boot=200, seed=0).set_index("metric")
    m = cvi.loc["mean_cosine"]
    assert m["p_welch"] < 0.01
    assert m["perm_exact"] and m["p_perm"] == pytest.approx(1 / 3)
    assert m["p_perm_min"] == pytest.approx(1 / 3)
    assert m["delta"] == pytest.approx(0.5, abs=0.03)
    assert math.isnan(m["delta_ci_low"])  # one question: no clustered CI


def test_correct_vs_incorrect_metrics_by_hand():
    rows = [
        node(qid="q0", path_id=0, depth=0, align=1.0, sr_range=0.3, teacher_adv=0.2),
        node(qid="q0", path_id=0, depth=1, align=0.0, sr_range=0.1, teacher_adv=0.0),
        node(qid="q0", path_id=1, depth=0, align=0.5, sr_range=0.2, teacher_adv=-0.1,
             path_correct=False),
        node(qid="q1", path_id=0, depth=0, align=math.nan, path_correct=False),
    ]
    cvi = A.correct_vs_incorrect(frame(rows), n_boot=100).set_index("metric")
    assert cvi.loc["mean_cosine", "correct"] == pytest.approx(0.5)
    assert cvi.loc["mean_cosine", "incorrect"] == pytest.approx(0.5)
    assert cvi.loc["weighted_cosine", "correct"] == pytest.approx(0.75)  # (.3*1 + .1*0) / .4
    assert cvi.loc["weighted_cosine", "delta"] == pytest.approx(0.25)
    assert cvi.loc["teacher_adv", "delta"] == pytest.approx(0.2)  # .1 - (-.1)
    assert (cvi["n_nan"] == 1).all()
    assert cvi.loc["mean_cosine", "n_questions_mixed"] == 1
    # one correct and one incorrect path: 2 assignments, both equally extreme
    assert cvi.loc["weighted_cosine", "p_perm"] == pytest.approx(1.0)


def test_correct_vs_incorrect_by_teacher_splits_rows():
    rows = [node(teacher=t, path_id=p, path_correct=p == 0, align=a)
            for t, p, a in [("a", 0, 0.1), ("a", 1, 0.4), ("b", 0, 0.2), ("b", 1, 0.2)]]
    out = A.correct_vs_incorrect_by_teacher(frame(rows), n_boot=50)
    d = out[out["metric"] == "mean_cosine"].set_index("teacher")["delta"]
    assert d["a"] == pytest.approx(-0.3) and d["b"] == pytest.approx(0.0)


# ---------------------------------------------------------------------------------------------
def test_teacher_metrics_table3():
    rows = [node(teacher="a", depth=d, align=a, sr_range=s)
            for d, (a, s) in enumerate([(0.5, 0.2), (-0.5, 0.6), (1.0, 0.2)])]
    m = A.teacher_metrics(frame(rows)).set_index("teacher").loc["a"]
    assert m["mean_cosine"] == pytest.approx(1 / 3)
    assert m["frac_positive"] == pytest.approx(2 / 3)
    assert m["weighted_cosine"] == pytest.approx((0.1 - 0.3 + 0.2) / 1.0)
    assert m["mean_signal"] == pytest.approx((0.1 - 0.3 + 0.2) / 3)


def test_within_path_spearman_average_and_skips():
    rows = []
    for d in range(6):  # path 0: align rises with depth; path 1: falls; kl constant on path 1
        rows.append(node(path_id=0, depth=d, align=d / 10, depth_norm=d / 5, kl=float(d % 2)))
        rows.append(node(path_id=1, depth=d, align=-d / 10, depth_norm=d / 5, kl=1.0))
    for d in range(3):  # path 2: too few nodes
        rows.append(node(path_id=2, depth=d, align=d / 10, depth_norm=d / 2))
    for d in range(6):  # another teacher, rising
        rows.append(node(path_id=0, depth=d, teacher="t2", align=d / 10, depth_norm=d / 5))
    sp = A.within_path_spearman(frame(rows), features=("depth_norm", "kl"), min_nodes=5)
    allrows = sp[sp["teacher"] == "all"].set_index("feature")
    assert allrows.loc["depth_norm", "rho_mean"] == pytest.approx(1 / 3)  # (1 - 1 + 1) / 3
    assert allrows.loc["depth_norm", "n_paths"] == 3
    assert allrows.loc["depth_norm", "n_skipped_few"] == 1
    assert allrows.loc["kl", "n_skipped_constant"] == 2  # path 1 (t1) and path 0 (t2)
    t1 = sp[sp["teacher"] == "t1"].set_index("feature")
    assert t1.loc["depth_norm", "rho_mean"] == pytest.approx(0.0)
    expected = pd.Series(np.arange(6) / 10).corr(pd.Series(np.arange(6) % 2.0), method="spearman")
    assert t1.loc["kl", "rho_mean"] == pytest.approx(expected)


def test_selective_oracle_table2():
    rows = [node(path_id=0, depth=0, align=0.5, sr_range=1.0),
            node(path_id=0, depth=1, align=-0.5, sr_range=1.0),
            node(path_id=1, depth=0, align=0.2, sr_range=1.0),
            node(path_id=1, depth=1, align=0.4, sr_range=1.0)]
    o = A.selective_oracle(frame(rows), n_boot=50).set_index("strategy")
    assert o.loc["full", "mean_signal"] == pytest.approx(0.15)
    assert o.loc["full", "pct_tokens"] == pytest.approx(100)
    assert o.loc["selective (t=0)", "mean_signal"] == pytest.approx(1.1 / 3)
    assert o.loc["selective (t=0)", "pct_tokens"] == pytest.approx(75)
    assert o.loc["selective (t=0)", "pct_paths_beat_full"] == pytest.approx(50)  # path 1 ties
    assert o.loc["selective (t=0.3)", "mean_signal"] == pytest.approx(0.45)
    assert o.loc["selective (t=0.3)", "pct_tokens"] == pytest.approx(50)
    assert o.loc["selective (t=0.3)", "pct_paths_beat_full"] == pytest.approx(100)


def test_methods_vs_drgrpo_paired_per_teacher_and_teacher_free():
    rows = [node(depth=0, align=0.5), node(depth=1, align=0.1),
            node(depth=0, method="drgrpo", align=0.3), node(depth=1, method="drgrpo", align=0.3),
            node(depth=2, method="drgrpo", align=0.9)]  # unpaired: ignored
    r = A.methods_vs_drgrpo(frame(rows), ("gkd",), n_boot=50).iloc[0]
    assert r["n_pairs"] == 2 and r["mean_diff"] == pytest.approx(0.0)
    assert r["frac_method_better"] == pytest.approx(0.5)
    rows = [node(depth=0, align=0.5), node(depth=0, teacher="", method="drgrpo", align=0.1)]
    r = A.methods_vs_drgrpo(frame(rows), ("gkd",), n_boot=50).iloc[0]
    assert r["n_pairs"] == 1 and r["mean_diff"] == pytest.approx(0.4)


def test_best_teacher_oracle_shares_and_mean():
    rows = [node(depth=d, teacher=t, align=a) for d, (x, y) in enumerate([(0.5, 0.3), (0.1, 0.4),
                                                                         (0.2, 0.2)])
            for t, a in (("a", x), ("b", y))]
    b = A.best_teacher_oracle(frame(rows)).set_index("teacher")
    assert b.loc["oracle", "mean_align"] == pytest.approx((0.5 + 0.4 + 0.2) / 3)
    assert b.loc["a", "share_best"] == pytest.approx(0.5)  # 1 + 0 + tie 1/2 over 3 nodes
    assert b.loc["b", "n_best"] == pytest.approx(1.5)


def test_estimator_sanity_rmse_and_empty_without_exact():
    rows = [node(depth=0, align=0.6, align_exact=0.5),
            node(depth=1, align=-0.1, align_exact=0.0),
            node(depth=2, align=0.9, align_exact=1.0)]  # errors +.1, -.1, -.1
    e = A.estimator_sanity(frame(rows)).set_index("method").loc["gkd"]
    assert e["rmse"] == pytest.approx(0.1) and e["bias"] == pytest.approx(-0.1 / 3)
    assert e["sign_agree"] == pytest.approx(2 / 3)  # sign(0) != sign(-0.1)
    assert A.estimator_sanity(frame([node()])).empty


# ---------------------------------------------------------------------------------------------
def test_analyze_and_summarize_are_flat_and_json_ready():
    rows = []
    for q in range(3):
        for pid, corr in enumerate([True, False]):
            for d in range(6):
                for t, base in (("good", 0.4), ("bad", -0.1)):
                    rows.append(node(qid=f"q{q}", path_id=pid, depth=d, teacher=t,
                                     align=base + 0.05 * d - (0 if corr else -0.1),
                                     path_correct=corr, depth_norm=d / 5, kl=float(d)))
    df = frame(rows)
    res = A.analyze(df, n_boot=200, n_perm=200, seed=0)
    s = A.summarize(df, res)
    json.dumps(s, allow_nan=False)
    assert all("/" in k for k in s)
    assert all(not isinstance(v, (dict, list)) for v in s.values())
    assert s["ranking/gkd/first"] == "good"
    assert s["align/gkd/mean"] == pytest.approx(df["align"].mean())
    assert s["spearman/gkd/depth_norm"] == pytest.approx(1.0)
    assert A.analyze(df, n_boot=200, n_perm=200, seed=0)["teacher_ranking"].equals(
        res["teacher_ranking"])


def test_analyze_empty_nodes_does_not_crash():
    empty = NODES.empty_table().to_pandas()
    res = A.analyze(empty, n_boot=10, n_perm=10)
    assert res["teacher_ranking"].empty
    assert A.summarize(empty, res)["run/n_questions"] == 0


def test_ranking_gap_at_rounding_noise_is_not_separated():
    """Regression: two teachers equal at every node up to float noise must not be reported as
    separated (a CI bound of 1e-17 does not exclude zero)."""
    import pandas as pd

    from distillscope.analysis import teacher_ranking

    rng = np.random.default_rng(0)
    rows = []
    for q in range(6):
        for d in range(5):
            a = float(rng.uniform(-1, 1))
            for t, x in (("a", float(np.nextafter(a, 2.0))), ("b", a)):  # one ulp apart
                rows.append({"qid": f"q{q}", "path_id": 0, "depth": d, "teacher": t,
                             "method": "gkd", "align": x, "sr_range": 0.5,
                             "path_correct": True})
    rank = teacher_ranking(pd.DataFrame(rows), n_boot=200, seed=0)
    assert not rank["separated"].any()
