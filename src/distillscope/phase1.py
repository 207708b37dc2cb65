"""Phase 1: the shared, teacher-independent generation tree of each question.

    1. initial rollouts   G samples of the student's response to the question, graded (several
                          questions per sampler call, one unit each)
    2. paths              representative responses (n_correct_paths + n_incorrect_paths)
    3. candidates         along each path, the children worth enriching: tokens the student
                          or any teacher gives probability > tau, ranked per depth window
                          (budget.py)
    4. targeted rollouts  each chosen child (prefix = prompt + path[:t] + [token]) sampled
                          to the end until it has n_min counted visits (fixed allocation) or
                          as the adaptive allocator decides (adaptive.py)
    5. children           per path node: visits, successes and P-hat of every child (tree.py,
                          with the unbiased counting rule of docs/method.md#unbiased-counting),
                          and the student's probabilities at the decision points

Each step is a unit committed to the run store (`q00003/a-init`, `q00003/b-tgt00000`, ...,
`q00003/z-children`); a resumed run replays the committed units and redoes the first missing
one, so it writes exactly what an uninterrupted run would have. Nothing here depends on which
teachers are scored later except the candidate ranking of step 3.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from distillscope.budget import make_allocator, select_per_teacher
from distillscope.models.base import ModelError
from distillscope.runtime import Runtime, question_key, stable_seed
from distillscope.scoring import score_path
from distillscope.screening import difficulty
from distillscope.tree import PathTree
from distillscope.types import Question, SampleRequest, SamplingParams

__all__ = ["Plan", "decision_points", "enrich_added_teacher", "finish_question", "lookup",
           "phase1", "plan_question", "student_distributions"]


def phase1(rt: Runtime) -> None:
    """The shared tree of every question: initial rollouts of all questions first (so the
    targeted phase's total is known), then each question's targeted rollouts."""
    cfg = rt.config.tree
    with rt.timer("phase1"):
        plans = []
        with rt.reporter.bar("phase 1: initial rollouts", len(rt.questions) * cfg.G,
                             unit="rollouts") as bar:
            fresh = _initial_rollouts_batched(rt, bar)
            for q in rt.questions:
                plan = plan_question(rt, q, bar, counted=fresh)
                if plan is not None:
                    plans.append(plan)
        # the fixed allocation's need is known; the adaptive one decides as it goes
        need = sum(p.need(cfg.n_min) for p in plans) if cfg.budget == "fixed" else None
        with rt.reporter.bar("phase 1: targeted rollouts", need, unit="rollouts") as bar:
            for plan in plans:
                finish_question(rt, plan, bar)


# ---------------------------------------------------------------------------------------------
Requests = list[tuple[SampleRequest, dict]]


def _sample_rows(rt: Runtime, q: Question, requests: Requests, first_id: int) -> list[dict]:
    """Sample the groups, grade them, and return rollout rows (ids from `first_id`)."""
    return _sample_questions(rt, [(q, requests, first_id)])[0]


def _sample_questions(rt: Runtime, jobs: list[tuple[Question, Requests, int]]) -> list[list[dict]]:
    """`_sample_rows` of several questions in one sampler call (each request keeps its own
    seed, so each question draws what it would draw alone)."""
    flat = [(q, req, meta) for q, reqs, _ in jobs for req, meta in reqs]
    outputs = _sample_flat(rt, flat)
    out, i = [], 0
    for q, reqs, first_id in jobs:
        out.append(_grade_rows(rt, q, reqs, outputs[i:i + len(reqs)], first_id))
        i += len(reqs)
    return out


def _sample_flat(rt: Runtime, flat: list[tuple[Question, SampleRequest, dict]]) -> list:
    """The completions of each request (None where its forced prefix already ends it)."""
    eos = set(rt.student.eos_token_ids)
    max_new = rt.config.sampling.max_new_tokens
    to_model = []
    for i, (q, req, _meta) in enumerate(flat):
        forced = list(req.prefix_ids[len(rt.student_ctx[q.qid]):])
        if (forced and forced[-1] in eos) or len(forced) >= max_new:
            continue  # nothing to sample: the forced prefix already ends the response
        to_model.append((i, req, max_new - len(forced)))
    outputs: dict[int, list] = {}
    p = rt.params
    if to_model and _takes_budgets(rt.student):
        # one call: each group with its own remaining budget (hf backend), so a unit's groups
        # decode in one batch instead of one small batch per distinct budget
        params = SamplingParams(p.temperature, p.top_p, max_new, p.stop_strings)
        res = rt.student.sample([r for _, r, _ in to_model], params,
                                budgets=[b for _, _, b in to_model])
        outputs = {i: comps for (i, _, _), comps in zip(to_model, res, strict=True)}
    else:
        # one call per distinct remaining budget, so each call has one max_new_tokens
        for budget in sorted({b for _, _, b in to_model}):
            batch = [(i, r) for i, r, b in to_model if b == budget]
            params = SamplingParams(p.temperature, p.top_p, budget, p.stop_strings)
            res = rt.student.sample([r for _, r in batch], params)
            for (i, _), comps in zip(batch, res, strict=True):
                outputs[i] = comps
    return [outputs.get(i) for i in range(len(flat))]


def _grade_rows(rt: Runtime, q: Question, requests: Requests, outputs: list,
                first_id: int) -> list[dict]:
    eos = set(rt.student.eos_token_ids)
    ctx = rt.student_ctx[q.qid]
    rows = []
    rid = first_id
    for i, (req, meta) in enumerate(requests):
        forced = list(req.prefix_ids[len(ctx):])
        if outputs[i] is not None:
            comps = [(forced + list(c.token_ids), c.finish_reason) for c in outputs[i]]
        else:
            reason = "eos" if forced and forced[-1] in eos else "length"
            comps = [(forced, reason)] * req.n
        for ids, reason in comps:
            text = rt.student.decode([t for t in ids if t not in eos])
            verdict = rt.task.verify(q, text)
            rows.append({
                "qid": q.qid, "rollout_id": rid, "origin": meta["origin"],
                "path_id": meta.get("path_id", -1), "launch_depth": meta.get("depth", -1),
                "forced_len": len(forced), "response_ids": ids, "text": text,
                "reward": float(verdict.reward), "parsable": bool(verdict.parsable),
                "finish_reason": reason, "seed": req.seed,
            })
            rid += 1
    return rows


def _takes_budgets(model: Any) -> bool:
    """Whether `model.sample` accepts per-request budgets (an extension of the protocol)."""
    import inspect

    try:
        return "budgets" in inspect.signature(model.sample).parameters
    except (TypeError, ValueError):
        return False


def _initial_requests(rt: Runtime, q: Question) -> Requests:
    cfg = rt.config.tree
    ctx = tuple(rt.student_ctx[q.qid])
    reqs = []
    for g, start in enumerate(range(0, cfg.G, cfg.group_size)):
        n = min(cfg.group_size, cfg.G - start)
        seed = stable_seed(rt.config.seed, q.qid, "init", g)
        reqs.append((SampleRequest(ctx, n, seed), {"origin": "initial"}))
    return reqs


def _initial_rollouts_batched(rt: Runtime, bar) -> set[str]:
    """The initial rollouts of every question that lacks them, several questions per sampler
    call (up to `sampling.batch_groups` groups), one unit (`q#####/a-init`) per question.
    Returns the qids sampled here."""
    todo = [q for q in rt.questions
            if not rt.store.is_done(f"{question_key(rt, q)}/z-children")
            and not rt.store.is_done(f"{question_key(rt, q)}/a-init")]
    groups = len(range(0, rt.config.tree.G, rt.config.tree.group_size))  # per question
    per_call = max(1, rt.config.sampling.batch_groups // max(1, groups))
    for start in range(0, len(todo), per_call):
        _sample_initial(rt, todo[start:start + per_call], bar)
    return {q.qid for q in todo}


def _sample_initial(rt: Runtime, qs: list[Question], bar) -> None:
    """The initial rollouts of `qs` in one sampler call, committed one unit per question."""
    rows = _sample_questions(rt, [(q, _initial_requests(rt, q), 0) for q in qs])
    for q, r in zip(qs, rows, strict=True):
        rt.store.commit(f"{question_key(rt, q)}/a-init", {"rollouts": r})
        bar.advance(rt.config.tree.G)


def _initial_rollouts(rt: Runtime, q: Question, bar, counted: Collection[str]) -> pd.DataFrame:
    key = question_key(rt, q)
    if not rt.store.is_done(f"{key}/a-init"):
        _sample_initial(rt, [q], bar)
    elif q.qid not in counted:
        bar.skip(rt.config.tree.G)
    return rt.store.read("rollouts", unit_prefix=f"{key}/a-init")


def _choose_paths(rt: Runtime, q: Question, init: pd.DataFrame) -> pd.DataFrame:
    cfg = rt.config.tree
    rng = np.random.default_rng(stable_seed(rt.config.seed, q.qid, "paths"))
    chosen = []
    for correct, n in ((True, cfg.n_correct_paths), (False, cfg.n_incorrect_paths)):
        pool = init[(init.reward > 0.5) == correct]
        # distinct responses only: two identical paths would duplicate every node
        pool = pool.loc[~pool.response_ids.map(tuple).duplicated()]
        if len(pool):
            pick = rng.choice(len(pool), size=min(n, len(pool)), replace=False)
            chosen += [(correct, pool.iloc[i]) for i in sorted(pick)]
    eos = set(rt.student.eos_token_ids)
    rows = []
    for pid, (correct, r) in enumerate(chosen):
        ids = [int(t) for t in r.response_ids]
        rows.append({
            "qid": q.qid, "path_id": pid, "rollout_id": int(r.rollout_id), "correct": correct,
            "length": len(ids), "response_ids": ids,
            "tokens": [rt.student.decode([t]) if t not in eos else "<eos>" for t in ids],
            "text": r.text,
        })
    return pd.DataFrame(rows)


def _build_trees(rt: Runtime, paths: pd.DataFrame, ro: pd.DataFrame) -> dict[int, PathTree]:
    trees = {}
    for p in paths.itertuples():
        tree = PathTree(np.asarray(p.response_ids, dtype=np.int64), rt.config.tree.estimator)
        if len(ro):
            tree.add(list(ro.response_ids), ro.forced_len.to_numpy(), ro.reward.to_numpy())
        trees[p.path_id] = tree
    return trees


def _candidates(rt: Runtime, q: Question, path_ids: np.ndarray, only: list[str] | None = None):
    """Score the path under the student and every teacher (or the teachers named in `only`);
    choose the children to enrich. Returns (chosen (depth, token) pairs, {teacher name or
    "student": PathScores})."""
    cfg = rt.config.tree
    sc = rt.config.scoring
    depth, token, ps, pt, kl = [], [], [], [], []
    scores = {}
    teachers = [t for t in rt.teachers
                if q.qid in t.contexts and (only is None or t.spec.name in only)]
    teachers = teachers or ([None] if only is None else [])
    for t in teachers:
        s = score_path(rt.student, rt.student_ctx[q.qid], t.model if t else None,
                       t.contexts[q.qid] if t else None, path_ids, tau=cfg.tau,
                       topk=sc.topk_overlap, chunk_size=sc.chunk_size)
        scores[t.spec.name if t else "student"] = s
        depth.append(s.cand_pos_C)
        token.append(s.cand_tok_C)
        ps.append(s.p_student_C)
        pt.append(s.p_teacher_C)
        kl.append(s.features["kl"])
    chosen = select_per_teacher(depth, token, ps, pt, kl, len(path_ids), base=cfg.window_base,
                                top_k=cfg.top_k, top_r=cfg.top_r)
    return chosen, scores


@dataclass
class Plan:
    """Phase 1 state of one question between its initial and its targeted rollouts."""

    q: Question
    qrow: dict[str, Any]
    paths: pd.DataFrame
    trees: dict[int, PathTree] = field(default_factory=dict)
    chosen: list[tuple[int, int, int]] = field(default_factory=list)  # (depth, path, token)
    scores: dict[int, dict[str, Any]] = field(default_factory=dict)  # path -> model -> PathScores
    next_id: int = 0

    def need(self, n_min: int) -> int:
        return sum(max(0, n_min - self.trees[p].visits(d, k)) for d, p, k in self.chosen)


def plan_question(rt: Runtime, q: Question, bar,
                  counted: Collection[str] = ()) -> Plan | None:
    """Initial rollouts, representative paths and the children to enrich. None when the
    question is already finished (resume) or excluded (then its row is committed here).
    `counted`: qids whose initial rollouts the bar has counted already."""
    cfg = rt.config.tree
    key = question_key(rt, q)
    if rt.store.is_done(f"{key}/z-children"):
        bar.skip(cfg.G)
        return None
    init = _initial_rollouts(rt, q, bar, counted)
    if len(init) and (init.finish_reason == "length").all():
        raise ModelError(
            f"question '{q.qid}': none of the {len(init)} initial rollouts ended within "
            f"sampling.max_new_tokens={rt.config.sampling.max_new_tokens} (no EOS): the model "
            f"never stops, or the budget is too small for it; raise sampling.max_new_tokens"
        )
    pass_rate = float(init.reward.mean()) if len(init) else 0.0
    skipped = rt.unavailable.get(q.qid, [])
    no_correct = rt.no_correct_demo.get(q.qid, [])
    policy = rt.config.context.missing_demos
    if skipped and policy == "exclude_question":
        note = "excluded: no demonstration for " + ", ".join(skipped)
        paths = pd.DataFrame()
    elif no_correct and policy == "paper":
        note = ("excluded: no correct demonstration from source " + ", ".join(no_correct)
                + " (not scored: " + ", ".join(skipped) + ")")
        paths = pd.DataFrame()
    elif pass_rate == 0 and cfg.exclude_extremely_hard:
        note = "excluded: extremely hard (no correct initial rollout)"
        paths = pd.DataFrame()
    else:
        paths = _choose_paths(rt, q, init)
        n_c = int(paths.correct.sum()) if len(paths) else 0
        n_i = len(paths) - n_c
        notes = []
        if n_c < cfg.n_correct_paths:
            notes.append(f"only {n_c} correct path(s) exist")
        if n_i < cfg.n_incorrect_paths:
            notes.append(f"only {n_i} incorrect path(s) exist")
        if skipped:
            notes.append("not scored for " + ", ".join(skipped))
        note = "; ".join(notes)
    qrow = {
        "qid": q.qid, "prompt": rt.task.user_message(q), "answer": json.dumps(q.answer),
        "n_initial": len(init), "pass_rate": pass_rate, "difficulty": difficulty(pass_rate),
        "n_correct_paths": int(paths.correct.sum()) if len(paths) else 0,
        "n_incorrect_paths": int((~paths.correct).sum()) if len(paths) else 0, "note": note,
    }
    if not len(paths):
        rt.store.commit(f"{key}/z-children", {"questions": [qrow]})
        return None
    ro = rt.store.read("rollouts", unit_prefix=f"{key}/a-init")
    plan = Plan(q, qrow, paths, _build_trees(rt, paths, ro), next_id=len(ro))
    _choose(rt, plan)
    return plan


def _choose(rt: Runtime, plan: Plan, only: list[str] | None = None) -> None:
    """plan.chosen and plan.scores from every path's candidates (of the teachers in `only`)."""
    seen: set[tuple[tuple[int, ...], int]] = set()
    for p in plan.paths.itertuples():
        ids = [int(t) for t in p.response_ids]
        chosen, plan.scores[p.path_id] = _candidates(rt, plan.q, np.asarray(ids), only)
        for d, tok in chosen:
            # a node on a prefix shared by several paths (the root, a common opening) is one
            # node: its child is enriched once, under the first path that chose it
            if (child := (tuple(ids[:d]), tok)) not in seen:
                seen.add(child)
                plan.chosen.append((d, p.path_id, tok))
    plan.chosen.sort()  # shallow first: deeper children gain from the cascade of earlier ones


def finish_question(rt: Runtime, plan: Plan, bar) -> None:
    """Targeted rollouts (fixed allocation: every chosen child to n_min counted visits), then
    the children statistics and the student's probabilities at the decision points."""
    _targeted(rt, plan, bar)
    q, key = plan.q, question_key(rt, plan.q)
    ro = rt.store.read("rollouts", unit_prefix=f"{key}/")
    trees = _build_trees(rt, plan.paths, ro)  # rebuilt from the store: what resume sees
    children = _children_frames(rt, q, plan.paths, trees)
    dist = student_distributions(rt, q, plan.paths, children)
    rt.store.commit(f"{key}/z-children", {"questions": [plan.qrow], "paths": plan.paths,
                                          "children": children, "distributions": dist})


def _targeted(rt: Runtime, plan: Plan, bar, tag: str = "tgt") -> None:
    """Targeted rollouts in deterministic units (`q#####/b-<tag>#####`). The allocator
    (budget.make_allocator) decides each unit's groups from the tree as committed so far, so a
    resumed run that replays the committed units rebuilds exactly the same later units."""
    cfg = rt.config.tree
    q, key, trees = plan.q, question_key(rt, plan.q), plan.trees
    ctx = list(rt.student_ctx[q.qid])
    path_ids = {p.path_id: [int(t) for t in p.response_ids] for p in plan.paths.itertuples()}
    allocator = make_allocator(rt.config, plan)
    u = 0
    while True:
        alloc = allocator.next_batch(plan, rt.config.sampling.batch_groups)
        if not alloc:
            break
        unit = f"{key}/b-{tag}{u:05d}"
        reqs = []
        for pid, d, tok, need in alloc:
            for g, start in enumerate(range(0, need, cfg.group_size)):
                n = min(cfg.group_size, need - start)
                seed = stable_seed(rt.config.seed, q.qid, tag, u, pid, d, tok, g)
                prefix = tuple(ctx + path_ids[pid][:d] + [tok])
                reqs.append((SampleRequest(prefix, n, seed),
                             {"origin": "targeted", "path_id": pid, "depth": d}))
        if rt.store.is_done(unit):
            rows = rt.store.read("rollouts", unit_prefix=unit)
            bar.skip(len(rows))
        else:
            rows = pd.DataFrame(_sample_rows(rt, q, reqs, first_id=plan.next_id))
            rt.store.commit(unit, {"rollouts": rows})
            bar.advance(len(rows))
        plan.next_id += len(rows)
        for tree in trees.values():
            tree.add(list(rows.response_ids), rows.forced_len.to_numpy(), rows.reward.to_numpy())
        u += 1


def enrich_added_teacher(rt: Runtime, name: str) -> list[str]:
    """Targeted rollouts at teacher `name`'s own top tokens on a finished tree: what a run with
    that teacher from the start would have enriched (`distillscope score`). Every rollout
    already in the tree counts (a child enriched for another teacher needs nothing more); new
    ones are committed as units `q#####/b-tgt+<name>/#####`, so a killed call resumes. Where
    the tree grew, its children table is rebuilt and every teacher's scores on that question
    are dropped (phase 2 redoes them on the grown tree); `q#####/y-grown-<name>` marks the
    question done. Returns the qids whose tree grew in this call."""
    grown = []
    tag = f"tgt+{name}/"
    with rt.timer("phase1"), rt.reporter.bar(f"phase 1: targeted rollouts for '{name}'", None,
                                             unit="rollouts") as bar:
        for q in rt.questions:
            key = question_key(rt, q)
            done, marker = f"{key}/z-children", f"{key}/y-grown-{name}"
            if rt.store.is_done(marker) or not any(t.spec.name == name and q.qid in t.contexts
                                                   for t in rt.teachers):
                continue
            paths = rt.store.read("paths", unit_prefix=done)
            if not len(paths):
                continue
            ro = rt.store.read("rollouts", unit_prefix=f"{key}/")
            # the tree as it was before this teacher: its own units are replayed, as on resume
            own = ro.rollout_id.isin(rt.store.read("rollouts", unit_prefix=f"{key}/b-{tag}")
                                     .rollout_id)
            base = ro[~own]
            qrow = rt.store.read("questions", unit_prefix=done).iloc[0].to_dict()
            plan = Plan(q, qrow, paths, _build_trees(rt, paths, base),
                        next_id=int(base.rollout_id.max()) + 1)
            _choose(rt, plan, only=[name])
            _targeted(rt, plan, bar, tag=tag)
            if any(u.startswith(f"{key}/b-{tag}") for u in rt.store.done_units()):
                grown.append(q.qid)
                ro = rt.store.read("rollouts", unit_prefix=f"{key}/")
                children = _children_frames(rt, q, paths, _build_trees(rt, paths, ro))
                dist = student_distributions(rt, q, paths, children)
                rt.store.uncommit(f"{key}/c-")  # every teacher's scores and the RL baseline
                rt.store.uncommit(done)
                rt.store.commit(done, {"questions": [qrow], "paths": paths,
                                       "children": children, "distributions": dist})
            rt.store.commit(marker, {})
    return grown


def _children_frames(rt: Runtime, q: Question, paths: pd.DataFrame,
                     trees: dict[int, PathTree]) -> pd.DataFrame:
    exact = getattr(rt.student, "exact_child_success", None)
    ctx = rt.student_ctx[q.qid]
    frames = []
    for p in paths.itertuples():
        ids = [int(t) for t in p.response_ids]
        p_exact = None
        if exact is not None:
            p_exact = {d: np.asarray(exact(ctx, ids[:d])) for d in range(len(ids))}
        frames.append(trees[p.path_id].to_frame(q.qid, p.path_id, decode=_token_text(rt),
                                                 p_exact=p_exact))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _token_text(rt: Runtime):
    eos = set(rt.student.eos_token_ids)
    return lambda t: "<eos>" if t in eos else rt.student.decode([int(t)])


# ---------------------------------------------------------------------------------------------
# The decision points of a finished tree, and the student's probabilities there
def decision_points(children: pd.DataFrame, n_sig: int) -> pd.DataFrame:
    """Children in S_u (visits >= n_sig) at nodes with |S_u| >= 2 and SR range > 0."""
    s = children[children.visits >= n_sig]
    g = s.groupby(["qid", "path_id", "depth"]).p_hat
    keep = (g.transform("size") >= 2) & (g.transform("max") - g.transform("min") > 0)
    return s[keep].sort_values(["qid", "path_id", "depth", "token"]).reset_index(drop=True)


def student_distributions(rt: Runtime, q: Question, paths: pd.DataFrame,
                           children: pd.DataFrame) -> pd.DataFrame:
    dp = decision_points(children, rt.config.tree.n_sig)
    rows = []
    for p in paths.itertuples():
        d = dp[dp.path_id == p.path_id]
        if not len(d):
            continue
        s = score_path(rt.student, rt.student_ctx[q.qid], None, None,
                       np.asarray(p.response_ids), tau=rt.config.tree.tau,
                       extra=np.stack([d.depth.to_numpy(), d.token.to_numpy()], axis=1),
                       chunk_size=rt.config.scoring.chunk_size)
        look = lookup(s.cand_pos_C, s.cand_tok_C, s.p_student_C)
        for r in d.itertuples():
            rows.append({"qid": q.qid, "path_id": p.path_id, "depth": r.depth,
                         "model": "student", "token": r.token,
                         "prob": look[(r.depth, r.token)]})
    return pd.DataFrame(rows)


def lookup(pos, tok, val) -> dict[tuple[int, int], float]:
    return {(int(a), int(b)): float(c) for a, b, c in zip(pos, tok, val, strict=True)}
