"""The whole pipeline on the synthetic world, where exact success probabilities are known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from distillscope.cli import app
from distillscope.config import load_config
from distillscope.phase2 import decision_points
from distillscope.pipeline import run
from distillscope.store import RunStore

ROOT = Path(__file__).resolve().parents[2]


def toy_config(**overrides):
    base = {"task.options.n_questions": 4}
    base.update(overrides)
    return load_config(ROOT / "configs" / "toy.yaml", base)


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory):
    out = {}
    for est in ("unbiased", "paper"):
        d = tmp_path_factory.mktemp(f"toy-{est}")
        run(toy_config(**{"tree.estimator": est}), d)
        out[est] = RunStore(d)
    return out


def _z(children: pd.DataFrame) -> pd.Series:
    v = children[(children.visits >= 20) & (children.p_exact > 0) & (children.p_exact < 1)]
    return (v.p_hat - v.p_exact) / np.sqrt(v.p_exact * (1 - v.p_exact) / v.visits)


def test_tables_carry_exact_values(toy_runs):
    store = toy_runs["unbiased"]
    children, nodes = store.read("children"), store.read("nodes")
    assert len(children) and children.p_exact.notna().all()
    assert len(nodes) and nodes["align_exact"].notna().any()
    assert set(nodes.method) == {"gkd", "sampled", "minillm", "drgrpo"}
    assert set(nodes.teacher) == {"helpful", "harmful", "irrelevant", "self-1c", ""}
    # Dr. GRPO does not depend on the teacher: one row per node, teacher ""
    rl = nodes[nodes.method == "drgrpo"]
    assert set(rl.teacher) == {""} and not rl.duplicated(["qid", "path_id", "depth"]).any()
    assert set(nodes[nodes.teacher == ""].method) == {"drgrpo"}
    assert len(rl) == len(nodes[(nodes.method == "gkd") & (nodes.teacher == "helpful")])


def test_unbiased_agrees_with_exact_and_paper_is_biased(toy_runs):
    z_u = _z(toy_runs["unbiased"].read("children"))
    z_p = _z(toy_runs["paper"].read("children"))
    assert len(z_u) > 50 and len(z_p) > 50
    # binomial error: about 99.7% of |z| < 3 if unbiased (normal approximation; allow slack)
    assert (z_u.abs() < 3).mean() > 0.95
    assert abs(z_u.mean()) < 0.5
    # the naive cascade counts forced rollouts at ancestors: many estimates far off
    assert (z_p.abs() < 3).mean() < 0.8
    assert abs(z_p.mean()) > 1.0


def test_teacher_signs(toy_runs):
    nodes = toy_runs["unbiased"].read("nodes")
    gkd = nodes[nodes.method == "gkd"].groupby("teacher")["align"].mean()
    assert gkd["helpful"] > 0.5
    assert gkd["harmful"] < -0.5
    assert abs(gkd["irrelevant"]) < 0.3
    assert gkd["self-1c"] > 0.5  # on toy, a demonstration in context makes a helpful teacher


def _recount(ro: pd.DataFrame, path: list[int], depth: int, token: int, estimator: str) -> int:
    """Brute force: rollouts whose response extends path[:depth] + [token], counted by rule."""
    n = 0
    prefix = path[:depth] + [token]
    for ids, m in zip(ro.response_ids, ro.forced_len, strict=True):
        ids = list(ids)
        if ids[: depth + 1] == prefix and (estimator == "paper" or depth >= m - 1):
            n += 1
    return n


@pytest.mark.parametrize("estimator", ["unbiased", "paper"])
def test_visits_equal_the_rollouts_the_estimator_counts(toy_runs, estimator):
    store = toy_runs[estimator]
    cfg = store.load_config()
    ro, paths, children = store.read("rollouts"), store.read("paths"), store.read("children")
    rng = np.random.default_rng(0)
    sample = children.iloc[rng.choice(len(children), size=40, replace=False)]
    for c in sample.itertuples():
        path = [int(t) for t in paths[(paths.qid == c.qid) & (paths.path_id == c.path_id)]
                .response_ids.iloc[0]]
        got = _recount(ro[ro.qid == c.qid], path, c.depth, c.token, estimator)
        assert got == c.visits, (c.qid, c.path_id, c.depth, c.token)
    # every child in S_u at a decision point has at least n_sig visits
    nodes = store.read("nodes")
    dp = decision_points(children, cfg.tree.n_sig)
    assert (dp.visits >= cfg.tree.n_sig).all()
    keys = set(zip(nodes.qid, nodes.path_id, nodes.depth, strict=True))
    assert keys == set(zip(dp.qid, dp.path_id, dp.depth, strict=True))


def test_rollout_ids_unique_and_provenance(toy_runs):
    store = toy_runs["unbiased"]
    ro = store.read("rollouts")
    assert not ro.duplicated(["qid", "rollout_id"]).any()
    prov = store.read_json("provenance.json")
    assert prov["rollouts/total"] == len(ro)
    assert prov["rollouts/targeted"] == int((ro.origin == "targeted").sum()) > 0
    assert prov["estimator"] == "unbiased" and "git_commit" in prov


def test_rerun_is_a_no_op_and_score_adds_a_teacher(tmp_path):
    runner = CliRunner()
    cfg = toy_config(**{"task.options.n_questions": 2})
    cfg = cfg.model_copy(update={"teachers": [t for t in cfg.teachers if t.name == "helpful"]})
    (tmp_path / "c.yaml").write_text(cfg.to_yaml())
    out = tmp_path / "run"
    res = runner.invoke(app, ["run", str(tmp_path / "c.yaml"), "--out", str(out), "--no-report"])
    assert res.exit_code == 0, res.output
    store = RunStore(out)
    ro = store.read("rollouts")
    before = store.read("nodes")
    # a second run of the same command resumes: nothing new is sampled or scored
    res = runner.invoke(app, ["run", str(tmp_path / "c.yaml"), "--out", str(out), "--no-report"])
    assert res.exit_code == 0, res.output
    pd.testing.assert_frame_equal(RunStore(out).read("rollouts"), ro)
    # add a teacher afterwards with --no-rollouts: no new rollouts, new nodes for it
    res = runner.invoke(app, ["score", str(out), "--teacher", "demo", "--mode", "self-1c",
                              "--no-rollouts", "--no-report"])
    assert res.exit_code == 0, res.output
    after = RunStore(out)
    pd.testing.assert_frame_equal(after.read("rollouts"), ro)
    nodes = after.read("nodes")
    assert set(nodes.teacher) == {"helpful", "demo", ""}  # "": Dr. GRPO, teacher-free
    pd.testing.assert_frame_equal(
        nodes[nodes.teacher != "demo"].reset_index(drop=True), before)
    assert [t.name for t in after.load_config().teachers] == ["helpful", "demo"]
    assert after.read_json("provenance.json")["enrichment"] == {"demo": "borrowed",
                                                                "helpful": "own"}
    # the default enriches the new teacher's own top tokens first
    res = runner.invoke(app, ["score", str(out), "--teacher", "harm", "--mode", "external",
                              "--model", "toy", "--backend", "toy", "--no-report"])
    assert res.exit_code == 0, res.output
    assert "targeted rollout(s) at its own top tokens" in " ".join(res.output.split())
    grown = RunStore(out)
    assert grown.read_json("provenance.json")["enrichment"]["harm"] == "own"
    assert set(grown.read("nodes").teacher) == {"helpful", "demo", "harm", ""}
    # asking again changes nothing
    res = runner.invoke(app, ["score", str(out), "--teacher", "harm", "--no-report"])
    assert res.exit_code == 0 and "nothing was recomputed" in " ".join(res.output.split())


def test_cli_refuses_a_different_config_and_names_bad_fields(tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    a = toy_config(**{"task.options.n_questions": 1, "tree.G": 20})
    (tmp_path / "a.yaml").write_text(a.to_yaml())
    assert runner.invoke(app, ["run", str(tmp_path / "a.yaml"), "--out", str(out),
                               "--no-report"]).exit_code == 0
    res = runner.invoke(app, ["run", str(tmp_path / "a.yaml"), "--out", str(out), "--no-report",
                              "--set", "tree.G=21"])
    assert res.exit_code == 2 and "different configuration" in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("tree: {estimatr: paper}\n")
    res = runner.invoke(app, ["run", str(bad), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "tree.estimatr" in res.output and "unknown key" in res.output


def test_cli_screen_writes_tables_7_to_9(tmp_path):
    runner = CliRunner()
    out = tmp_path / "screen-run"
    res = runner.invoke(app, ["screen", str(ROOT / "configs" / "toy.yaml"), "--out", str(out),
                              "--set", "screen.G=8", "--set", "task.options.n_questions=3"])
    assert res.exit_code == 0, res.output
    for name in ("table7", "table8", "table9"):
        assert (out / "screen" / f"{name}.csv").is_file()
        assert (out / "screen" / f"{name}.md").is_file()
    t8 = pd.read_csv(out / "screen" / "table8.csv")
    assert set(t8.variant) == {"baseline", "self-1c"}
    # on toy a demonstration in context makes the student better (helpful self-teacher)
    assert float(t8.set_index("variant").loc["self-1c", "acc"]) > float(
        t8.set_index("variant").loc["baseline", "acc"])


@pytest.mark.parametrize("policy", ["paper", "exclude_question", "skip_teacher"])
def test_a_teacher_without_demonstrations_excludes_or_is_skipped(policy, tmp_path):
    """self-3c needs three correct demos; two trials cannot give them. exclude_question leaves
    every question out; skip_teacher keeps them and scores the teachers that have a context;
    paper (the default) keeps a question whose source has a correct demo and skips self-3c
    there, so the external teacher's questions do not depend on which self-* modes exist."""
    cfg = toy_config(**{"task.options.n_questions": 2, "tree.G": 60, "tree.n_min": 20,
                        "context.max_trials": 2, "context.missing_demos": policy})
    teachers = [t for t in cfg.teachers if t.name == "helpful"]
    three = cfg.teachers[-1].model_copy(update={"name": "self-3c", "mode": "self-3c"})
    run(cfg.model_copy(update={"teachers": [*teachers, three]}), tmp_path)
    store = RunStore(tmp_path)
    q, nodes = store.read("questions"), store.read("nodes")
    scored = q[~q.note.str.startswith("excluded")]
    if policy == "exclude_question":
        assert q.note.str.startswith("excluded: no demonstration for self-3c").all()
        assert len(nodes) == 0
    elif policy == "paper":
        demos = pd.read_parquet(tmp_path / "demos.parquet")
        has_correct = set(demos[demos.correct].qid)
        for r in q.itertuples():
            if r.qid in has_correct:
                assert not r.note.startswith("excluded") and "not scored for self-3c" in r.note
            else:
                assert r.note.startswith("excluded: no correct demonstration from source")
        assert has_correct & set(q.qid), "the test needs a question with a correct demo"
        assert set(nodes.teacher) - {""} == {"helpful"} and set(nodes.qid) <= has_correct
    else:
        assert len(scored) == 2 and scored.note.str.contains("not scored for self-3c").all()
        assert len(nodes) and set(nodes.teacher) - {""} == {"helpful"}
    prov = store.read_json("provenance.json")
    assert set(prov["unavailable_demos"]) == set(q.qid)


def test_force_with_another_question_list_refuses_to_mix_questions(tmp_path):
    """Units are keyed by a question's position; a forced rerun whose list starts elsewhere
    must not read question A's rollouts as question B's."""
    from distillscope.store import StoreError

    small = {"task.options.n_questions": 3, "tree.G": 40, "tree.n_min": 10}
    cfg = toy_config(**small)
    cfg = cfg.model_copy(update={"teachers": cfg.teachers[:1]})
    run(cfg, tmp_path)
    grown = toy_config(**small, **{"task.limit": 3})  # same list, other fingerprint: fine
    run(grown.model_copy(update={"teachers": cfg.teachers[:1]}), tmp_path, force=True)
    shifted = toy_config(**small, **{"task.offset": 1})
    # refused: the questions' digest differs (and the unit keys' owner check would follow)
    with pytest.raises(StoreError, match="questions of task 'toy' changed|question list changed"):
        run(shifted.model_copy(update={"teachers": cfg.teachers[:1]}), tmp_path, force=True)


def test_a_child_on_a_shared_prefix_is_enriched_once(toy_runs):
    """The root is shared by every path: each of its children gets targeted rollouts up to
    n_min once, not once per path (it used to reach 18 natural + 4 x 82 = 346 visits)."""
    store = toy_runs["unbiased"]
    n_min = toy_config().tree.n_min
    ro = store.read("rollouts")
    first = ro.response_ids.map(lambda r: int(r[0]) if len(r) else -1)
    natural = first[ro.origin == "initial"].groupby(ro.qid).value_counts()
    at_root = ro[(ro.origin == "targeted") & (ro.launch_depth == 0)]
    targeted = first[at_root.index].groupby(at_root.qid).value_counts()
    assert len(targeted)
    for key, n in targeted.items():
        assert n + natural.get(key, 0) <= n_min, key


def test_run_screens_first_and_keeps_the_selected_bins(tmp_path, monkeypatch):
    """screen.select: the run screens, keeps the analysis questions in those bins, stores the
    choice, and a resumed run reuses it instead of screening again."""
    import distillscope.pipeline as P

    calls = []

    class Result:
        difficulty = {"toy-0": "medium", "toy-1": "hard", "toy-2": "easy"}
        analysis_qids = ["toy-0", "toy-1", "toy-2"]

    def fake_screen(*args, **kw):
        calls.append(1)
        return Result()

    monkeypatch.setattr(P, "screen_run", fake_screen)
    cfg = toy_config(**{"task.options.n_questions": 3, "tree.G": 60, "tree.n_min": 20,
                        "screen.select": ["hard", "easy"]})
    run(cfg, tmp_path)
    store = RunStore(tmp_path)
    assert sorted(store.read("questions").qid) == ["toy-1", "toy-2"]
    sel = store.read_json("screen/selection.json")
    assert sel["counts"] == {"hard": 1, "easy": 1} and sel["screened"] == 3
    run(cfg, tmp_path)  # resume: no second screening
    assert calls == [1]
    Result.difficulty = {"toy-0": "hard", "toy-1": "hard", "toy-2": "easy"}
    with pytest.raises(P.StoreError, match="no question is in the screened bins medium"):
        run(toy_config(**{"task.options.n_questions": 3, "screen.select": ["medium"]}),
            tmp_path / "none")


def _dp_keys(store: RunStore, n_sig: int) -> set:
    dp = decision_points(store.read("children"), n_sig)
    return set(map(tuple, dp[["qid", "path_id", "depth"]].drop_duplicates().to_numpy()))


def test_a_teacher_added_later_gets_its_own_tokens(tmp_path):
    """`score` for a new teacher enriches that teacher's own top tokens (units that resume),
    regrows the children table where new rollouts landed and rescores every teacher there, so
    all scores stand on the same tree; --no-rollouts scores it on the tree as it was."""
    small = {"task.options.n_questions": 3, "tree.G": 80, "tree.n_min": 30}
    full = toy_config(**small)
    first = full.model_copy(update={"teachers": [t for t in full.teachers
                                                 if t.name in ("helpful", "harmful")]})
    run(first, tmp_path / "later")
    run(first, tmp_path / "borrowed")
    before = RunStore(tmp_path / "later").count_rows("rollouts")
    run(full, tmp_path / "borrowed", teachers_only=["irrelevant"], no_new_rollouts=True)
    run(full, tmp_path / "later", enrich=["irrelevant", "self-1c"])
    run(full, tmp_path / "start")
    later, borrowed = RunStore(tmp_path / "later"), RunStore(tmp_path / "borrowed")
    assert later.count_rows("rollouts") > before == borrowed.count_rows("rollouts")
    prov = later.read_json("provenance.json")
    assert prov["enrichment"]["irrelevant"] == "own" and prov["questions_regrown"] >= 1
    assert borrowed.read_json("provenance.json")["enrichment"]["irrelevant"] == "borrowed"
    # every teacher's rows stand on the tree as it is now (the others were rescored)
    nodes, keys = later.read("nodes"), _dp_keys(later, full.tree.n_sig)
    for t in ("helpful", "harmful", "irrelevant", "self-1c"):
        got = set(map(tuple, nodes[nodes.teacher == t][["qid", "path_id", "depth"]]
                      .drop_duplicates().to_numpy()))
        assert got and got <= keys, t
    # the added teacher's own tokens: about as many decision points as from the start
    n = {name: _dp_keys(RunStore(tmp_path / name), full.tree.n_sig)
         for name in ("later", "start", "borrowed")}
    assert len(n["later"]) > len(n["borrowed"])
    assert abs(len(n["later"]) - len(n["start"])) <= 0.15 * len(n["start"])
    # idempotent: a second call samples nothing and rescores nothing
    rows, units = later.count_rows("rollouts"), set(RunStore(tmp_path / "later").done_units())
    run(full, tmp_path / "later", enrich=["irrelevant", "self-1c"])
    assert RunStore(tmp_path / "later").count_rows("rollouts") == rows
    assert set(RunStore(tmp_path / "later").done_units()) == units


def test_score_adds_a_teacher_whose_demo_comes_from_another_source(tmp_path):
    """`score --mode self-1c-src --source M` (it used to fail: "needs a 'source' model")."""
    runner = CliRunner()
    cfg = toy_config(**{"task.options.n_questions": 2, "tree.G": 60, "tree.n_min": 20})
    cfg = cfg.model_copy(update={"teachers": [t for t in cfg.teachers if t.name == "helpful"]})
    (tmp_path / "c.yaml").write_text(cfg.to_yaml())
    out = tmp_path / "run"
    assert runner.invoke(app, ["run", str(tmp_path / "c.yaml"), "--out", str(out),
                               "--no-report"]).exit_code == 0
    res = runner.invoke(app, ["score", str(out), "--teacher", "src", "--mode", "self-1c-src",
                              "--source", "toy", "--source-backend", "toy", "--no-report"])
    assert res.exit_code == 0, res.output
    spec = {t.name: t for t in RunStore(out).load_config().teachers}["src"]
    assert spec.source is not None and (spec.source.backend, spec.source.model) == ("toy", "toy")
    assert "src" in set(RunStore(out).read("nodes").teacher)


def test_force_recomputes_what_changed_or_refuses(tmp_path):
    """--force never lies: scoring fields redo the scores, n_sig the children and scores (no
    new rollout either way); a field that shaped the stored rollouts is refused by name."""
    from distillscope.store import StoreError

    small = {"task.options.n_questions": 2, "tree.G": 60, "tree.n_min": 60}
    cfg = toy_config(**small)
    cfg = cfg.model_copy(update={"teachers": cfg.teachers[:2]})
    run(cfg, tmp_path)
    ro = RunStore(tmp_path).read("rollouts")
    with pytest.raises(StoreError, match=r"--force cannot apply tree\.G, tree\.n_min"):
        run(cfg.model_copy(update={"tree": cfg.tree.model_copy(update={"G": 80, "n_min": 70})}),
            tmp_path, force=True)
    projected = cfg.model_copy(update={"scoring": cfg.scoring.model_copy(
        update={"restrict": "project"})})
    run(projected, tmp_path, force=True)
    store = RunStore(tmp_path)
    pd.testing.assert_frame_equal(store.read("rollouts"), ro)
    assert set(store.read("nodes").restrict) == {"project"}
    assert store.load_config().scoring.restrict == "project"
    stricter = projected.model_copy(update={"tree": projected.tree.model_copy(
        update={"n_sig": 40})})
    run(stricter, tmp_path, force=True)
    store = RunStore(tmp_path)
    pd.testing.assert_frame_equal(store.read("rollouts"), ro)
    nodes = store.read("nodes")
    assert len(nodes) and (nodes.visits >= 40 * nodes.n_children).all()
    assert _dp_keys(store, 40) == set(map(tuple, nodes[["qid", "path_id", "depth"]]
                                          .drop_duplicates().to_numpy()))


def test_edited_questions_are_noticed_on_resume(tmp_path):
    """The questions' content is part of what a run was made from: an edited gold answer is
    refused (with or without --force) instead of reusing rewards graded against the old one."""
    from distillscope.store import StoreError

    f = tmp_path / "q.jsonl"
    f.write_text('{"id": "a", "question": "toy:0 yes or no?", "answer": "yes"}\n')
    cfg = toy_config(**{"task.name": "custom", "task.path": str(f), "task.verifier": "yesno",
                        "task.options": {}, "tree.G": 20})
    cfg = cfg.model_copy(update={"teachers": cfg.teachers[:1]})
    run(cfg, tmp_path / "run")
    run(cfg, tmp_path / "run")  # unchanged: resumes
    f.write_text('{"id": "a", "question": "toy:0 yes or no?", "answer": "no"}\n')
    for force in (False, True):
        with pytest.raises(StoreError, match="questions of task 'custom' changed"):
            run(cfg, tmp_path / "run", force=force)
