"""Phase 0: every teacher's context for every question.

An `external` teacher reads the student's own prompt. A `self-*` teacher is the student (or a
`source` model) shown worked solutions of the same question before it: demonstrations sampled
from the source model, graded, and retried until enough correct (and, for the `1c1w` layouts,
wrong) ones exist, optionally summarised by a summarizer model (`contexts.py` holds the banks
and the prompt layouts). Demonstrations are stored once per (question, source) in
RUN_DIR/demos.parquet, so a resumed run or a teacher added later reuses them.
"""

from __future__ import annotations

from typing import Any

from distillscope import contexts
from distillscope.config import ModelSpec
from distillscope.models.base import LanguageModel, ModelError
from distillscope.runtime import Runtime, get_model

__all__ = ["phase0"]


def phase0(rt: Runtime, cache: dict[str, LanguageModel] | None = None) -> None:
    """Build every teacher's context for every question. self-* modes need demonstrations
    (and summaries), generated once per (question, source model) and stored in the run
    (RUN_DIR/demos.parquet); a question whose demos cannot be found within
    context.max_trials is recorded in `rt.unavailable` (and, when a source has no correct
    demonstration at all, in `rt.no_correct_demo`); `context.missing_demos` then decides in
    phase 1 whether the question is excluded or kept without that teacher."""
    cfg = rt.config
    models = cache if cache is not None else {}

    def model_for(spec: ModelSpec | None) -> LanguageModel:
        return rt.student if spec is None else get_model(models, spec, rt.reporter)

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
            # the paper's filter: a correct demonstration available under every source
            lacking = [src for src in needs if bank.status(q.qid, src, 1, 0).n_correct < 1]
            if lacking:
                rt.no_correct_demo[q.qid] = lacking
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
