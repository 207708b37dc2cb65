"""Phases 0-2 as plain functions over a RunStore (DESIGN.md section 4).

    phase 0  teacher contexts: demonstrations and summaries (contexts.py), stored once
    phase 1  the shared, teacher-independent tree: initial rollouts, representative paths,
             candidates, targeted rollouts, children statistics
    phase 2  per teacher: decision points, every method's gradient, alignment and features
             (the scoring of one question is `phase2.py`)

Every piece of work is a deterministic *unit* committed atomically (store.py), with seeds
derived from (run seed, question, launch node, unit). A killed run resumes by skipping
committed units and redoing the first uncommitted one, which reproduces exactly what an
uninterrupted run would have written.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from distillscope.budget import make_allocator, merge_candidates, select_children
from distillscope.config import ModelSpec, RunConfig, TeacherSpec
from distillscope.models.base import LanguageModel, ModelError, check_same_tokenizer
from distillscope.models.registry import load_model
from distillscope.phase2 import score_teacher_on_question, student_distributions
from distillscope.progress import NullReporter, Reporter, Timer
from distillscope.scoring import score_path
from distillscope.screening import difficulty
from distillscope.store import RunStore, StoreError
from distillscope.tasks import Task, get_task
from distillscope.tree import PathTree
from distillscope.types import Question, SampleRequest, SamplingParams


def stable_seed(*parts: Any) -> int:
    """A seed from any parts, stable across processes and Python versions."""
    digest = hashlib.blake2b(json.dumps(parts, default=str).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 62) - 1)


# ---------------------------------------------------------------------------------------------
@dataclass
class Teacher:
    spec: TeacherSpec
    model: LanguageModel
    contexts: dict[str, list[int]] = field(default_factory=dict)  # qid -> context ids


@dataclass
class Runtime:
    """Everything loaded for a run: config, store, task, questions, models."""

    config: RunConfig
    store: RunStore
    task: Task
    questions: list[Question]
    student: LanguageModel
    teachers: list[Teacher]
    student_ctx: dict[str, list[int]]
    reporter: Reporter
    timer: Timer = field(default_factory=Timer)
    unavailable: dict[str, list[str]] = field(default_factory=dict)  # qid -> teachers lacking demos
    checked_keys: set[str] = field(default_factory=set)  # unit keys checked against their qid

    @property
    def params(self) -> SamplingParams:
        s = self.config.sampling
        return SamplingParams(temperature=s.temperature, top_p=s.top_p,
                              max_new_tokens=s.max_new_tokens, stop_strings=tuple(s.stop_strings))


def _model_cache_key(spec: ModelSpec) -> str:
    return spec.model_dump_json()


def load_runtime(config: RunConfig, store: RunStore, reporter: Reporter | None = None,
                 models: dict[str, LanguageModel] | None = None) -> Runtime:
    """Load task, questions and models. `models` is a cache keyed by ModelSpec JSON, so tests
    and `score` can reuse already-loaded models."""
    reporter = reporter or NullReporter()
    cache = models if models is not None else {}

    def get(spec: ModelSpec) -> LanguageModel:
        key = _model_cache_key(spec)
        if key not in cache:
            reporter.log(f"loading model {spec.model} ({spec.backend})")
            cache[key] = load_model(spec)
        return cache[key]

    task = get_task(config.task.name)
    questions = task.load(config.task)
    student = get(config.student)
    teachers = []
    for tspec in config.teachers:
        model = get(tspec.model) if tspec.mode == "external" and tspec.model else student
        check_same_tokenizer(student, model, tspec.name)
        teachers.append(Teacher(tspec, model))
    student_ctx = {}
    for q in questions:
        ids = student.encode_chat([{"role": "user", "content": task.user_message(q)}])
        if len(ids) >= student.max_context:
            raise ModelError(
                f"question '{q.qid}': the prompt is {len(ids)} tokens, longer than the "
                f"student's context of {student.max_context}"
            )
        student_ctx[q.qid] = ids
    return Runtime(config, store, task, questions, student, teachers, student_ctx, reporter)


# ---------------------------------------------------------------------------------------------
# Phase 0: teacher contexts
def phase0(rt: Runtime, cache: dict[str, LanguageModel] | None = None) -> None:
    """Build every teacher's context for every question. self-* modes need demonstrations
    (and summaries), generated once per (question, source model) and stored in the run
    (RUN_DIR/demos.parquet); a question whose demos cannot be found within
    context.max_trials is recorded in `rt.unavailable` and, by `context.missing_demos`, either
    excluded from the tree or kept without that teacher."""
    from distillscope import contexts

    cfg = rt.config
    models = cache if cache is not None else {}

    def model_for(spec: ModelSpec | None) -> LanguageModel:
        if spec is None:
            return rt.student
        key = _model_cache_key(spec)
        if key not in models:
            rt.reporter.log(f"loading model {spec.model} ({spec.backend})")
            models[key] = load_model(spec)
        return models[key]

    selfs = [t for t in rt.teachers if t.spec.mode != "external"]
    bank = contexts.DemoBank(rt.store.dir / "demos.parquet") if selfs else None
    with rt.timer("phase0"):
        # what each source model must provide: the max over the teachers that use it
        needs: dict[str, dict[str, Any]] = {}
        for t in selfs:
            req = contexts.requirements(t.spec.mode)
            src = contexts.source_name(t.spec)
            n = needs.setdefault(src, {"spec": t.spec.source, "correct": 0, "wrong": 0,
                                       "sum_correct": 0, "sum_wrong": 0})
            n["correct"] = max(n["correct"], req.n_correct)
            n["wrong"] = max(n["wrong"], req.n_wrong)
            if req.summarized:
                n["sum_correct"] = max(n["sum_correct"], req.n_correct)
                n["sum_wrong"] = max(n["sum_wrong"], req.n_wrong)
        for src, n in needs.items():
            with rt.reporter.bar(f"phase 0: demonstrations ({src})", len(rt.questions),
                                 unit="questions") as bar:
                done = [0]

                def progress(_desc: str, k: int, _total: int, bar=bar, done=done) -> None:
                    bar.advance(k - done[0])
                    done[0] = k

                bank.generate(model_for(n["spec"]), rt.task, rt.questions, cfg.context,
                              source=src, need_correct=n["correct"], need_wrong=n["wrong"],
                              max_new_tokens=cfg.sampling.max_new_tokens, seed=cfg.seed,
                              progress=progress)
                bar.skip(len(rt.questions) - done[0])  # questions whose demos were there before
            if n["sum_correct"] or n["sum_wrong"]:
                bank.summarize(model_for(cfg.context.summarizer), rt.task, rt.questions,
                               cfg.context, source=src, n_correct=n["sum_correct"],
                               n_wrong=n["sum_wrong"], max_new_tokens=cfg.sampling.max_new_tokens,
                               seed=cfg.seed)
        for q in rt.questions:
            user = rt.task.user_message(q)
            for t in rt.teachers:
                if t.spec.mode == "external":
                    msg = user
                else:
                    try:
                        msg = bank.context(t.spec.mode, q, user, contexts.source_name(t.spec))
                    except contexts.DemoUnavailable as err:
                        rt.unavailable.setdefault(q.qid, []).append(f"{t.spec.name} ({err})")
                        continue
                ids = t.model.encode_chat([{"role": "user", "content": msg}])
                if len(ids) >= t.model.max_context:
                    raise ModelError(
                        f"teacher '{t.spec.name}', question '{q.qid}': the context is "
                        f"{len(ids)} tokens, longer than the model's {t.model.max_context}"
                    )
                t.contexts[q.qid] = ids


# ---------------------------------------------------------------------------------------------
# Phase 1: the shared tree
def _qkey(rt: Runtime, q: Question) -> str:
    """The unit key of a question: its position in the run's question list. The first use in
    an invocation checks that the units already committed under that key are this question's
    (a list that changed under --force, e.g. other ids, would otherwise mix questions)."""
    key = f"q{rt.questions.index(q):05d}"
    if key not in rt.checked_keys:
        if rt.store.is_done(f"{key}/a-init"):
            owners = set(rt.store.read("rollouts", unit_prefix=f"{key}/a-init").qid)
            if owners - {q.qid}:
                raise StoreError(
                    f"{rt.store.dir}: the work stored for question #{key[1:].lstrip('0') or 0} "
                    f"belongs to '{sorted(owners)[0]}', not '{q.qid}': the question list "
                    f"changed since it was made (task ids / offset / limit); use a new --out"
                )
        rt.checked_keys.add(key)
    return key


def _sample_rows(rt: Runtime, q: Question, requests: list[tuple[SampleRequest, dict]],
                 first_id: int) -> list[dict]:
    """Sample the groups, grade them, and return rollout rows (ids from `first_id`)."""
    eos = set(rt.student.eos_token_ids)
    ctx = rt.student_ctx[q.qid]
    max_new = rt.config.sampling.max_new_tokens
    to_model = []
    for i, (req, _meta) in enumerate(requests):
        forced = list(req.prefix_ids[len(ctx):])
        if (forced and forced[-1] in eos) or len(forced) >= max_new:
            continue  # nothing to sample: the forced prefix already ends the response
        to_model.append((i, req, max_new - len(forced)))
    outputs: dict[int, list] = {}
    # group requests by remaining budget so each model call has one max_new_tokens
    for budget in sorted({b for _, _, b in to_model}):
        batch = [(i, r) for i, r, b in to_model if b == budget]
        p = rt.params
        params = SamplingParams(p.temperature, p.top_p, budget, p.stop_strings)
        res = rt.student.sample([r for _, r in batch], params)
        for (i, _), comps in zip(batch, res, strict=True):
            outputs[i] = comps
    rows = []
    rid = first_id
    for i, (req, meta) in enumerate(requests):
        forced = list(req.prefix_ids[len(ctx):])
        if i in outputs:
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


def _initial_rollouts(rt: Runtime, q: Question, bar) -> pd.DataFrame:
    key = _qkey(rt, q)
    unit = f"{key}/a-init"
    if rt.store.is_done(unit):
        bar.skip(rt.config.tree.G)
    else:
        cfg = rt.config.tree
        ctx = tuple(rt.student_ctx[q.qid])
        reqs = []
        for g, start in enumerate(range(0, cfg.G, cfg.group_size)):
            n = min(cfg.group_size, cfg.G - start)
            seed = stable_seed(rt.config.seed, q.qid, "init", g)
            reqs.append((SampleRequest(ctx, n, seed), {"origin": "initial"}))
        rows = _sample_rows(rt, q, reqs, first_id=0)
        rt.store.commit(unit, {"rollouts": rows})
        bar.advance(rt.config.tree.G)
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


def _candidates(rt: Runtime, q: Question, path_ids: np.ndarray):
    """Score the path under the student and every teacher; choose the children to enrich.
    Returns (chosen (depth, token) pairs, {teacher name or "student": PathScores})."""
    cfg = rt.config.tree
    sc = rt.config.scoring
    depth, token, ps, pt, kl = [], [], [], [], []
    scores = {}
    teachers = [t for t in rt.teachers if q.qid in t.contexts] or [None]
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
    cands = merge_candidates(depth, token, ps, pt, kl)
    chosen = select_children(cands, len(path_ids), base=cfg.window_base, top_k=cfg.top_k,
                             top_r=cfg.top_r)
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


def plan_question(rt: Runtime, q: Question, bar) -> Plan | None:
    """Initial rollouts, representative paths and the children to enrich. None when the
    question is already finished (resume) or excluded (then its row is committed here)."""
    cfg = rt.config.tree
    key = _qkey(rt, q)
    if rt.store.is_done(f"{key}/z-children"):
        bar.skip(cfg.G)
        return None
    init = _initial_rollouts(rt, q, bar)
    if len(init) and (init.finish_reason == "length").all():
        raise ModelError(
            f"question '{q.qid}': none of the {len(init)} initial rollouts ended within "
            f"sampling.max_new_tokens={rt.config.sampling.max_new_tokens} (no EOS): the model "
            f"never stops, or the budget is too small for it; raise sampling.max_new_tokens"
        )
    pass_rate = float(init.reward.mean()) if len(init) else 0.0
    skipped = rt.unavailable.get(q.qid, [])
    if skipped and rt.config.context.missing_demos == "exclude_question":
        note = "excluded: no demonstration for " + ", ".join(skipped)
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
    for p in paths.itertuples():
        chosen, plan.scores[p.path_id] = _candidates(rt, q, np.asarray(p.response_ids))
        plan.chosen += [(d, p.path_id, tok) for d, tok in chosen]
    plan.chosen.sort()  # shallow first: deeper children gain from the cascade of earlier ones
    return plan


def finish_question(rt: Runtime, plan: Plan, bar) -> None:
    """Targeted rollouts (fixed allocation: every chosen child to n_min counted visits), then
    the children statistics and the student's probabilities at the decision points."""
    _targeted(rt, plan, bar)
    q, key = plan.q, _qkey(rt, plan.q)
    ro = rt.store.read("rollouts", unit_prefix=f"{key}/")
    trees = _build_trees(rt, plan.paths, ro)  # rebuilt from the store: what resume sees
    children = _children_frames(rt, q, plan.paths, trees)
    dist = student_distributions(rt, q, plan.paths, children)
    rt.store.commit(f"{key}/z-children", {"questions": [plan.qrow], "paths": plan.paths,
                                          "children": children, "distributions": dist})


def _targeted(rt: Runtime, plan: Plan, bar) -> None:
    """Targeted rollouts in deterministic units. The allocator (budget.make_allocator) decides
    each unit's groups from the tree as committed so far, so a resumed run that replays the
    committed units rebuilds exactly the same later units."""
    cfg = rt.config.tree
    q, key, trees = plan.q, _qkey(rt, plan.q), plan.trees
    ctx = list(rt.student_ctx[q.qid])
    path_ids = {p.path_id: [int(t) for t in p.response_ids] for p in plan.paths.itertuples()}
    allocator = make_allocator(rt.config, plan)
    u = 0
    while True:
        alloc = allocator.next_batch(plan, rt.config.sampling.batch_groups)
        if not alloc:
            break
        unit = f"{key}/b-tgt{u:05d}"
        reqs = []
        for pid, d, tok, need in alloc:
            for g, start in enumerate(range(0, need, cfg.group_size)):
                n = min(cfg.group_size, need - start)
                seed = stable_seed(rt.config.seed, q.qid, "tgt", u, pid, d, tok, g)
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
# Phase 2: per teacher
def phase2_teacher_question(rt: Runtime, t: Teacher, q: Question) -> bool:
    """Score teacher `t` on question `q` unless done before; True when this call scored."""
    key = _qkey(rt, q)
    unit = f"{key}/c-score-{t.spec.name}"
    if rt.store.is_done(unit) or q.qid not in t.contexts:
        return False
    children = rt.store.read("children", unit_prefix=f"{key}/z-children")
    paths = rt.store.read("paths", unit_prefix=f"{key}/z-children")
    init = rt.store.read("rollouts", unit_prefix=f"{key}/a-init")
    if not len(paths):
        rt.store.commit(unit, {})
        return True
    nodes, dists = score_teacher_on_question(rt, t, q, paths, children, init)
    rt.store.commit(unit, {"nodes": nodes, "distributions": dists})
    return True


# ---------------------------------------------------------------------------------------------
def provenance(rt: Runtime) -> dict[str, Any]:
    import importlib.metadata as md

    def version(pkg: str) -> str:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return "absent"

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return {
        "git_commit": commit,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {p: version(p) for p in ("distillscope", "torch", "transformers", "numpy",
                                             "pyarrow", "vllm", "ray")},
        "device": rt.student.device,
        "student": rt.student.name,
        "config_fingerprint": rt.config.fingerprint(),
        "estimator": rt.config.tree.estimator,
        "restrict": rt.config.scoring.restrict,
    }


def rollout_counts(store: RunStore) -> dict[str, int]:
    ro = store.read("rollouts")
    return {"rollouts/total": int(len(ro)),
            "rollouts/initial": int((ro.origin == "initial").sum()),
            "rollouts/targeted": int((ro.origin == "targeted").sum())}


def run(config: RunConfig, out: str | Path, *, reporter: Reporter | None = None,
        force: bool = False, models: dict[str, LanguageModel] | None = None,
        teachers_only: list[str] | None = None, score: bool = True,
        no_new_rollouts: bool = False) -> Runtime:
    """The whole pipeline (phases 0-2); resumes a partial run in `out`.

    `score=False` stops after the shared tree (`distillscope rollout`). `no_new_rollouts`
    (used by `distillscope score`) refuses to sample: the tree must be complete."""
    store = RunStore(out)
    config = store.open_for(config, force=force)
    if teachers_only is not None:
        config_run = config.model_copy(
            update={"teachers": [t for t in config.teachers if t.name in teachers_only]})
    else:
        config_run = config
    rt = load_runtime(config_run, store, reporter, models)
    store.provenance_meta = {"distillscope.config_fingerprint": config.fingerprint()}
    if no_new_rollouts:
        missing = [q.qid for q in rt.questions if not store.is_done(f"{_qkey(rt, q)}/z-children")]
        if missing:
            raise StoreError(f"{out}: the shared tree is not complete ({len(missing)} question(s) "
                             f"without targeted rollouts, e.g. {missing[0]}); finish it with "
                             f"'distillscope run' or 'distillscope rollout' first")
    phase0(rt, models)
    with rt.timer("phase1"):
        plans = []
        with rt.reporter.bar("phase 1: initial rollouts", len(rt.questions) * config.tree.G,
                             unit="rollouts") as bar:
            for q in rt.questions:
                plan = plan_question(rt, q, bar)
                if plan is not None:
                    plans.append(plan)
        # the fixed allocation's need is known; the adaptive one decides as it goes
        need = (sum(p.need(config.tree.n_min) for p in plans)
                if config.tree.budget == "fixed" else None)
        with rt.reporter.bar("phase 1: targeted rollouts", need, unit="rollouts") as bar:
            for plan in plans:
                finish_question(rt, plan, bar)
    if score:
        with rt.timer("phase2"), rt.reporter.bar(
            "phase 2: scoring", len(rt.teachers) * len(rt.questions), unit="questions"
        ) as bar:
            for t in rt.teachers:
                for q in rt.questions:
                    if phase2_teacher_question(rt, t, q):
                        bar.advance()
                    else:
                        bar.skip()
    prov = store.read_json("provenance.json")
    prov.update(provenance(rt))
    prov.update(rollout_counts(store))
    # seconds summed over the invocations that completed (a killed one records nothing)
    for k, v in rt.timer.metrics.items():
        prov[k] = prov.get(k, 0.0) + v
    prov["invocations"] = int(prov.get("invocations", 0)) + 1
    # merged: `score --teacher X` must not drop what earlier invocations recorded for others
    unavailable = {q: list(v) for q, v in prov.get("unavailable_demos", {}).items()}
    for qid, lacking in rt.unavailable.items():
        unavailable[qid] = sorted(set(unavailable.get(qid, [])) | set(lacking))
    prov["unavailable_demos"] = unavailable
    prov["teachers_scored"] = sorted(set(prov.get("teachers_scored", []))
                                     | ({t.spec.name for t in rt.teachers} if score else set()))
    store.write_json("provenance.json", prov)
    return rt


def screen_run(config: RunConfig, out: str | Path, *, reporter: Reporter | None = None,
               models: dict[str, LanguageModel] | None = None):
    """Phase 0 screening (tables 7-9): pass rates per context variant into OUT/screen/.
    Returns the screening.ScreenResult; its files are listed by `screen_files(out)`."""
    from distillscope import contexts, screening

    store = RunStore(out)
    config = store.open_for(config)
    cache = models if models is not None else {}
    rt = load_runtime(config, store, reporter, cache)

    def get(spec: ModelSpec) -> LanguageModel:
        key = _model_cache_key(spec)
        if key not in cache:
            cache[key] = load_model(spec)
        return cache[key]

    sources = {t.name: get(t.source) for t in config.teachers
               if t.mode == "self-1c-src" and t.source is not None}
    summarizer = get(config.context.summarizer) if config.context.summarizer else None
    with rt.reporter.bar("screening", None, unit="steps") as bar:
        def progress(_stage: str, _done: int, _total: int) -> None:
            bar.advance(1)

        return screening.run_screen(
            rt.student, rt.task, rt.questions, config.teachers, config,
            contexts.DemoBank(store.dir / "demos.parquet"), store.dir / "screen",
            progress=progress, sources=sources, summarizer=summarizer)
