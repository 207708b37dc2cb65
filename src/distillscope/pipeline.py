"""The pipeline: phases 0-2 in sequence over a run store, and screening.

    phase 0  teacher contexts: demonstrations and summaries             phase0.py
    phase 1  the shared, teacher-independent tree: initial rollouts,    phase1.py
             representative paths, candidates, targeted rollouts,
             children statistics
    phase 2  per teacher: decision points, every method's gradient,     phase2.py
             alignment and features
    phase 3  analysis and report, from the stored tables                analysis.py, report/

This module only sequences them. Every piece of work is a deterministic *unit* committed
atomically (store.py), with seeds derived from (run seed, question, launch node, unit). A
killed run resumes by skipping committed units and redoing the first uncommitted one, which
reproduces exactly what an uninterrupted run would have written. docs/architecture.md draws
the whole data flow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distillscope.config import RunConfig
from distillscope.models.base import LanguageModel
from distillscope.phase0 import phase0
from distillscope.phase1 import enrich_added_teacher, phase1
from distillscope.phase2 import phase2
from distillscope.progress import Reporter
from distillscope.rerun import check_questions, forced_changes, uncommit_everywhere
from distillscope.runtime import (
    Runtime,
    get_model,
    load_runtime,
    provenance,
    question_key,
    teacher_records,
)
from distillscope.store import PLAN_FILE, RunStore, StoreError, run_lock

__all__ = ["Runtime", "rollout_counts", "run", "screen_run"]


def run(config: RunConfig, out: str | Path, *, reporter: Reporter | None = None,
        force: bool = False, models: dict[str, LanguageModel] | None = None,
        teachers_only: list[str] | None = None, score: bool = True,
        no_new_rollouts: bool = False, enrich: list[str] | None = None) -> Runtime:
    """The whole pipeline (phases 0-2); resumes a partial run in `out`.

    `score=False` stops after the shared tree (`distillscope rollout`). `no_new_rollouts`
    (`distillscope score --no-rollouts`) refuses to sample: the tree must be complete, and the
    teachers of `teachers_only` are scored on it as it is ("borrowed" enrichment). `enrich`
    (`distillscope score`) names teachers added to a finished run: their own top tokens get
    targeted rollouts first (`phase1.enrich_added_teacher`), and every teacher is rescored where
    the tree grew."""
    RunStore(out).check_is_a_run_or_new()  # before the lock file is made
    with run_lock(out):  # held for the whole call, released at a fixed point
        return _run(config, out, reporter=reporter, force=force, models=models,
                    teachers_only=teachers_only, score=score, no_new_rollouts=no_new_rollouts,
                    enrich=enrich)


def _run(config: RunConfig, out: str | Path, *, reporter: Reporter | None,
         force: bool, models: dict[str, LanguageModel] | None,
         teachers_only: list[str] | None, score: bool, no_new_rollouts: bool,
         enrich: list[str] | None) -> Runtime:
    store = RunStore(out)
    redo = forced_changes(store, config) if force else []
    config = store.open_for(config, force=force)
    for unit_infix in redo:
        uncommit_everywhere(store, unit_infix)
    if teachers_only is not None:
        config_run = config.model_copy(
            update={"teachers": [t for t in config.teachers if t.name in teachers_only]})
    else:
        config_run = config
    rt = load_runtime(config_run, store, reporter, models)
    if kept := store.kept_teachers:
        rt.reporter.log(f"note: teacher(s) {', '.join(kept)} of {store.dir} are not in this "
                        "configuration but stay in the run (its teachers are only ever added; "
                        "their scores are kept and reported)")
    for line in store.damage_report():
        rt.reporter.log(f"warning: {line}: it will be recomputed")
    store.provenance_meta = {"distillscope.config_fingerprint": config.fingerprint()}
    check_questions(rt)
    if config.screen.select:
        _select_by_screening(rt, models)
    # what this run is to analyse, so a report of a stopped run can say how far it got
    store.write_json(PLAN_FILE, {"qids": [q.qid for q in rt.questions]})
    if no_new_rollouts or enrich:
        missing = [q.qid for q in rt.questions
                   if not store.is_done(f"{question_key(rt, q)}/z-children")]
        if missing:
            raise StoreError(f"{out}: the shared tree is not complete ({len(missing)} question(s) "
                             f"without targeted rollouts, e.g. {missing[0]}); finish it with "
                             f"'distillscope run' or 'distillscope rollout' first")
    phase0(rt, models)
    phase1(rt)
    grown: set[str] = set()
    for name in enrich or []:
        grown.update(enrich_added_teacher(rt, name))
    if score:
        phase2(rt)
    _record_provenance(rt, score, borrowed=teachers_only if no_new_rollouts else None,
                       own=enrich, grown=len(grown))
    return rt


def _select_by_screening(rt: Runtime, models: dict[str, LanguageModel] | None) -> None:
    """`screen.select`: screen the questions (the paper's selection: the student's pass rate
    from screen.G rollouts, difficulty bins) and keep the analysis questions in those bins.
    The choice is stored (RUN_DIR/screen/selection.json, keyed by the config fingerprint) so a
    resumed run does not screen again."""
    cfg, store = rt.config, rt.store
    fp = cfg.fingerprint()
    saved = store.read_json("screen/selection.json")
    if saved.get("fingerprint") != fp:
        result = screen_run(cfg, store.dir, reporter=rt.reporter, models=models, runtime=rt)
        bins = {q: result.difficulty[q] for q in result.analysis_qids}
        keep = [q.qid for q in rt.questions if bins.get(q.qid) in cfg.screen.select]
        counts = {b: sum(1 for q in keep if bins[q] == b) for b in cfg.screen.select}
        saved = {"fingerprint": fp, "bins": list(cfg.screen.select), "qids": keep,
                 "counts": counts, "screened": len(rt.questions),
                 "analysable": len(result.analysis_qids)}
        store.write_json("screen/selection.json", saved)
    keep_set = set(saved["qids"])
    rt.questions = [q for q in rt.questions if q.qid in keep_set]
    rt.reporter.log(f"screening: {len(rt.questions)} of {saved['screened']} questions in "
                    f"{', '.join(saved['bins'])} ({saved['counts']})")
    if not rt.questions:
        raise StoreError(f"{store.dir}: no question is in the screened bins "
                         f"{', '.join(saved['bins'])}; widen screen.select")


def rollout_counts(store: RunStore) -> dict[str, int]:
    ro = store.read("rollouts")
    return {"rollouts/total": int(len(ro)),
            "rollouts/initial": int((ro.origin == "initial").sum()),
            "rollouts/targeted": int((ro.origin == "targeted").sum()),
            "rollouts/truncated": int((ro.finish_reason == "length").sum())}


def _record_provenance(rt: Runtime, scored: bool, *, borrowed: list[str] | None = None,
                       own: list[str] | None = None, grown: int = 0) -> None:
    """Merge this invocation into RUN_DIR/provenance.json (earlier ones stay counted).
    `enrichment` says, per teacher, whether its own top tokens were enriched ("own": in the
    run from the start, or added with `score`) or it was scored on a tree enriched for the
    others ("borrowed": `score --no-rollouts`)."""
    store = rt.store
    prov: dict[str, Any] = store.read_json("provenance.json")
    prov.update(provenance(rt))
    prov.update(rollout_counts(store))
    # seconds summed over the invocations that completed (a killed one records nothing)
    for k, v in rt.timer.metrics.items():
        prov[k] = prov.get(k, 0.0) + v
    prov["invocations"] = int(prov.get("invocations", 0)) + 1
    sel = store.read_json("screen/selection.json") if rt.config.screen.select else {}
    if sel:
        prov["screen_selection"] = {k: sel[k] for k in ("bins", "counts", "screened")}
    # merged: `score --teacher X` must not drop what earlier invocations recorded for others
    unavailable = {q: list(v) for q, v in prov.get("unavailable_demos", {}).items()}
    for qid, lacking in rt.unavailable.items():
        unavailable[qid] = sorted(set(unavailable.get(qid, [])) | set(lacking))
    prov["unavailable_demos"] = unavailable
    enrichment = dict(prov.get("enrichment", {}))
    for t in rt.teachers if scored else []:
        lent = borrowed is not None and t.spec.name in borrowed
        enrichment.setdefault(t.spec.name, "borrowed" if lent else "own")
    for name in own or []:
        enrichment[name] = "own"
    prov["enrichment"] = dict(sorted(enrichment.items()))
    if grown:
        prov["questions_regrown"] = int(prov.get("questions_regrown", 0)) + grown
    # served teachers' self-tests, this invocation's replacing earlier ones of the same name
    served = {**prov.get("teachers", {}), **teacher_records(rt)}
    if served:
        prov["teachers"] = dict(sorted(served.items()))
    prov["teachers_scored"] = sorted(set(prov.get("teachers_scored", []))
                                     | ({t.spec.name for t in rt.teachers} if scored else set()))
    store.write_json("provenance.json", prov)


def screen_run(config: RunConfig, out: str | Path, *, reporter: Reporter | None = None,
               models: dict[str, LanguageModel] | None = None, runtime: Runtime | None = None):
    """Phase 0 screening (tables 7-9): pass rates per context variant into OUT/screen/.
    Returns the screening.ScreenResult; its files are listed by `screen_files(out)`.
    `runtime`: an already loaded run (`run` with `screen.select`), reused as it is."""
    from distillscope import contexts, screening

    cache = models if models is not None else {}
    if runtime is None:
        store = RunStore(out)
        config = store.open_for(config)
        rt = load_runtime(config, store, reporter, cache)
    else:
        rt, store = runtime, runtime.store
    sources = {t.name: get_model(cache, t.source) for t in config.teachers
               if t.mode == "self-1c-src" and t.source is not None}
    summarizer = (get_model(cache, config.context.summarizer)
                  if config.context.summarizer else None)
    with rt.reporter.bar("screening", None, unit="steps") as bar:
        def progress(_stage: str, _done: int, _total: int) -> None:
            bar.advance(1)

        return screening.run_screen(
            rt.student, rt.task, rt.questions, config.teachers, config,
            contexts.DemoBank(store.dir / "demos.parquet"), store.dir / "screen",
            progress=progress, sources=sources, summarizer=summarizer)
