"""The adaptive allocation of targeted rollouts (distillscope.adaptive, `tree.budget: adaptive`).

The bootstrap maths on closed cases, then the allocator inside the real pipeline on the
synthetic world (toy backend, exact P_succ known): replaying committed units reproduces every
later batch (the resume guarantee), the allocation stops within its caps, a killed run resumes
to identical tables, and on a fixed seed the adaptive allocation reaches a lower alignment error
than the paper's fixed allocation with under half its rollouts.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from distillscope import gradients as G
from distillscope.adaptive import (
    AdaptiveAllocator,
    AdaptiveSettings,
    gkd_directions,
    ideal_directions,
    node_error,
)
from distillscope.config import load_config
from distillscope.phase0 import phase0
from distillscope.phase1 import plan_question
from distillscope.phase2 import decision_points
from distillscope.pipeline import run
from distillscope.progress import NullReporter
from distillscope.runtime import load_runtime
from distillscope.store import RunStore

ROOT = Path(__file__).resolve().parents[2]
TEACHERS = ("helpful", "irrelevant")


def toy_config(budget: str, n_questions: int = 3):
    cfg = load_config(ROOT / "configs" / "toy.yaml",
                      {"task.options.n_questions": n_questions, "tree.budget": budget})
    return cfg.model_copy(update={"teachers": [t for t in cfg.teachers if t.name in TEACHERS]})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for budget in ("fixed", "adaptive"):
        d = tmp_path_factory.mktemp(budget)
        run(toy_config(budget), d)
        out[budget] = RunStore(d)
    return out


# ---------------------------------------------------------------------------------------------
# The bootstrap of one node
def test_vectorised_gradients_match_the_reference_ones():
    """The bootstrap's batched ideal and gkd directions are gradients.py's (renorm), same sign."""
    p = np.array([0.02, 0.3, 0.1])  # full-vocabulary probabilities of S_u: renormalised
    q = np.array([[0.5, 0.1, 0.05], [0.01, 0.2, 0.3]])
    succ = np.array([[0.9, 0.2, 0.5], [0.1, 0.1, 0.7]])
    np.testing.assert_allclose(ideal_directions(p, succ),
                               [G.ideal_gradient(p, s) for s in succ], atol=1e-15)
    np.testing.assert_allclose(gkd_directions(p, q),
                               [G.gkd_gradient(p, t) for t in q], atol=1e-15)


def test_node_error_shrinks_with_visits_and_is_seeded():
    p = np.array([0.5, 0.3, 0.2])
    q = np.array([[0.6, 0.3, 0.1], [0.3, 0.3, 0.4]])
    rate = np.array([0.75, 0.5, 0.1])
    errs = [node_error(p, np.full(3, n), rate * n, q, np.random.default_rng(0))
            for n in (20, 80, 320)]
    widths = [e.halfwidth for e in errs]
    assert widths[0] > widths[1] > widths[2] > 0
    assert np.all(errs[0].gain_K > errs[2].gain_K)  # more visits: less to gain from a round
    again = node_error(p, np.full(3, 20), rate * 20, q, np.random.default_rng(0))
    np.testing.assert_array_equal(again.rms_M, errs[0].rms_M)
    np.testing.assert_array_equal(again.gain_K, errs[0].gain_K)


def test_gain_follows_the_student_probability():
    # a child the student almost never takes hardly moves the ideal gradient
    p = np.array([0.49, 0.49, 0.02])
    q = np.array([[0.5, 0.3, 0.2]])
    e = node_error(p, np.full(3, 20), np.array([15, 10, 5]), q, np.random.default_rng(1))
    assert e.gain_K[2] < 0.1 * min(e.gain_K[0], e.gain_K[1])


def test_a_coin_flip_node_gains_less_than_a_settleable_one():
    # two children: the cosine is +-1, its error is a sign flip; a round settles a clear gap
    # much more than it settles a near tie
    p, q = np.array([0.5, 0.5]), np.array([[0.7, 0.3]])
    tie = node_error(p, np.array([100, 100]), np.array([50, 49]), q, np.random.default_rng(2))
    gap = node_error(p, np.array([20, 20]), np.array([15, 9]), q, np.random.default_rng(2))
    assert tie.halfwidth > 1.0  # the sign is anyone's guess
    assert gap.gain_K.sum() > tie.gain_K.sum()


def test_without_teachers_the_ideal_direction_is_used():
    p, n, s = np.array([0.5, 0.3, 0.2]), np.full(3, 20), np.array([15, 8, 2])
    e = node_error(p, n, s, None, np.random.default_rng(3))
    assert e.rms_M.shape == (1,) and e.halfwidth > 0 and np.all(e.gain_K > 0)


def test_settings_default_and_read_from_config():
    cfg = toy_config("adaptive")
    st = AdaptiveSettings.from_config(cfg)
    assert (st.n_start, st.round_size, st.max_child) == (cfg.tree.n_sig, 20, 2 * cfg.tree.n_min)
    tree = cfg.tree.model_copy(update={"adaptive_round": 7, "adaptive_ci": 0.2,
                                       "adaptive_gain": 0.0, "adaptive_max_child": 60})
    st = AdaptiveSettings.from_config(cfg.model_copy(update={"tree": tree}))
    assert (st.round_size, st.ci_halfwidth, st.min_gain, st.max_child) == (7, 0.2, 0.0, 60)


# ---------------------------------------------------------------------------------------------
# The allocator in the pipeline
def _launches(rows: pd.DataFrame) -> list[tuple[int, int, int, int]]:
    """(path, depth, token, n) of a unit's groups, in request order (groups of one child are
    consecutive; a child is asked for once per unit)."""
    out: list[list[int]] = []
    for pid, d, m, ids in zip(rows.path_id, rows.launch_depth, rows.forced_len,
                              rows.response_ids, strict=True):
        key = [int(pid), int(d), int(ids[m - 1])]
        if out and out[-1][:3] == key:
            out[-1][3] += 1
        else:
            out.append([*key, 1])
    return [tuple(x) for x in out]


def test_replaying_committed_units_reproduces_every_batch(runs, tmp_path):
    """The resume guarantee: next_batch is a function of the trees and the allocator's own
    state, so feeding the committed units back rebuilds each later unit exactly; and two
    allocators in the same state agree."""
    d = tmp_path / "run"
    shutil.copytree(runs["adaptive"].dir, d)
    store = RunStore(d)
    cfg = store.load_config()
    rt = load_runtime(cfg, store)
    phase0(rt)
    q = rt.questions[0]
    key = "q00000"
    store.uncommit(f"{key}/z-children")  # plan_question rebuilds the plan from the store
    with NullReporter().bar("", None) as bar:
        plan = plan_question(rt, q, bar)
    assert plan is not None and plan.chosen
    units = sorted(u for u in store.done_units() if u.startswith(f"{key}/b-tgt"))
    assert len(units) > 3
    alloc = AdaptiveAllocator(cfg, plan)
    settings = alloc.settings
    launched: dict[tuple[int, int, int], int] = {}
    for i, unit in enumerate(units):
        if i == len(units) // 2:  # a copy in the same state gives the same batch
            twin_alloc, twin_plan = copy.deepcopy((alloc, plan))
            twin = twin_alloc.next_batch(twin_plan, cfg.sampling.batch_groups)
        rows = store.read("rollouts", unit_prefix=unit)
        batch = alloc.next_batch(plan, cfg.sampling.batch_groups)
        if i == len(units) // 2:
            assert twin == batch
        assert batch == _launches(rows), unit
        for pid, dep, tok, n in batch:
            launched[(pid, dep, tok)] = launched.get((pid, dep, tok), 0) + n
        for tree in plan.trees.values():
            tree.add(list(rows.response_ids), rows.forced_len.to_numpy(), rows.reward.to_numpy())
    assert alloc.next_batch(plan, cfg.sampling.batch_groups) == []  # it stopped, and stays so
    assert alloc.next_batch(plan, cfg.sampling.batch_groups) == []
    assert max(launched.values()) <= settings.max_child
    # seeding: every chosen child reached N_sig counted visits
    for dep, pid, tok in plan.chosen:
        assert plan.trees[pid].visits(dep, tok) >= cfg.tree.n_sig


def test_adaptive_run_tables_are_consistent_and_resume(runs, tmp_path):
    store = runs["adaptive"]
    cfg = store.load_config()
    ro, children, nodes = store.read("rollouts"), store.read("children"), store.read("nodes")
    prov = store.read_json("provenance.json")
    assert prov["rollouts/targeted"] == int((ro.origin == "targeted").sum()) > 0
    assert prov["rollouts/total"] == len(ro)
    assert not ro.duplicated(["qid", "rollout_id"]).any()
    dp = decision_points(children, cfg.tree.n_sig)
    assert set(zip(nodes.qid, nodes.path_id, nodes.depth, strict=True)) == set(
        zip(dp.qid, dp.path_id, dp.depth, strict=True))
    assert set(nodes.teacher) - {""} == set(TEACHERS)  # "": the Dr. GRPO rows
    # kill the last question in the middle of its targeted rollouts, then resume
    d = tmp_path / "run"
    shutil.copytree(store.dir, d)
    killed = RunStore(d)
    key = "q00002"
    units = sorted(u for u in killed.done_units() if u.startswith(f"{key}/b-tgt"))
    for u in units[len(units) // 2:]:
        killed.uncommit(u)
    killed.uncommit(f"{key}/z-children")
    killed.uncommit(f"{key}/c-score")
    run(cfg, d)
    resumed = RunStore(d)
    for table in ("rollouts", "children", "nodes"):
        pd.testing.assert_frame_equal(resumed.read(table), store.read(table), obj=table)


def _rmse(store: RunStore) -> tuple[float, set]:
    n = store.read("nodes")
    n = n[n.method == "gkd"]
    err = (n["align"] - n["align_exact"]).to_numpy()
    ok = np.isfinite(err)
    return float(np.sqrt(np.mean(err[ok] ** 2))), set(
        zip(n.qid[ok], n.path_id[ok], n.depth[ok], strict=True))


def test_adaptive_beats_fixed_on_error_and_rollouts(runs):
    """Seed 0, 3 worlds, each teacher's own top tokens enriched (appendix D): fixed (n_min =
    100) has gkd-alignment RMSE 0.45 with ~16.4k targeted rollouts (6 sign flips at near-tie
    two-child nodes, the root among them, counted once per path); adaptive 0.25 with 7.1k.
    (Before the per-teacher selection, 0.066 with 11.5k against 0.05 with 3.2k.)"""
    rmse_f, nodes_f = _rmse(runs["fixed"])
    rmse_a, nodes_a = _rmse(runs["adaptive"])
    spent = {b: runs[b].read_json("provenance.json")["rollouts/targeted"] for b in runs}
    assert rmse_a < 0.75 * rmse_f
    assert spent["adaptive"] < 0.5 * spent["fixed"]
    # like with like: a comparable set of decision points, not a smaller, easier one
    assert len(nodes_a) >= 0.8 * len(nodes_f)
    assert len(nodes_a & nodes_f) >= 0.7 * len(nodes_f)
