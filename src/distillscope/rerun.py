"""What a later invocation may reuse of a run directory: a forced rerun redoes exactly the units
its changed fields affect (or is refused, naming the fields), and every invocation checks that
the questions are the ones the stored work was made from. See
docs/architecture.md#forced-reruns-and-edited-questions.
"""

from __future__ import annotations

from distillscope.config import RunConfig, config_changes
from distillscope.runtime import Runtime
from distillscope.store import RunStore, StoreError

__all__ = ["FORCE_REDO", "check_questions", "forced_changes", "questions_digest",
           "uncommit_everywhere"]


# What a forced rerun may change on a run that holds work, and which units it then redoes
# (`/c-`: every teacher's scores and the RL baseline; `/z-children`: the children tables and
# the student's probabilities at the decision points). task.* may change only as long as the
# questions stay the same (`_check_questions`). Anything else shapes the stored rollouts.
FORCE_REDO = {"scoring.restrict": ["/c-"], "scoring.topk_overlap": ["/c-"],
              "scoring.chunk_size": ["/c-"], "tree.n_sig": ["/z-children", "/c-"]}


def forced_changes(store: RunStore, config: RunConfig) -> list[str]:
    """`--force` on a run with work: the units to redo for the fields that changed, or a
    StoreError naming the fields a forced rerun cannot change without lying (the stored
    rollouts were made under the old values)."""
    if not store.exists() or not store.has_work():
        return []
    changed = config_changes(store.load_config(), config)
    bad = [k for k in changed if k not in FORCE_REDO and not k.startswith("task.")]
    if "tree.n_sig" in changed and config.tree.budget != "fixed":
        bad.append("tree.n_sig (with tree.budget: adaptive, it steers the rollouts)")
    if bad:
        raise StoreError(
            f"{store.dir}: --force cannot apply {', '.join(bad)} to this run: the rollouts "
            f"stored there were made under the old value(s), and its tables would claim the "
            f"new ones. Use a new --out (a forced rerun may change "
            f"{', '.join(sorted(FORCE_REDO))}, and task fields that keep the same questions)"
        )
    return sorted({u for k in changed for u in FORCE_REDO.get(k, [])})


def uncommit_everywhere(store: RunStore, infix: str) -> None:
    """Forget every unit whose key contains `infix` (e.g. '/c-': all scores, every question)."""
    for prefix in sorted({u[: u.index(infix) + len(infix)] for u in store.done_units()
                          if infix in u}):
        store.uncommit(prefix)


def questions_digest(rt: Runtime) -> str:
    """A hash of the questions as loaded (ids, prompts as shown, gold answers, verifier
    options): an edited task file or dataset changes it."""
    import hashlib
    import json

    items = [[q.qid, rt.task.user_message(q), q.answer, q.meta] for q in rt.questions]
    blob = json.dumps(items, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def check_questions(rt: Runtime) -> None:
    """The stored work was made from these very questions, or the run is refused: a gold
    answer edited since would otherwise reuse rewards graded against the old one."""
    digest = questions_digest(rt)
    prov = rt.store.read_json("provenance.json")
    if prov.get("questions_digest") not in (None, digest) and rt.store.has_work():
        raise StoreError(
            f"{rt.store.dir}: the questions of task '{rt.config.task.name}' changed since this "
            f"run was made (digest {prov['questions_digest']} -> {digest}: an edited task "
            f"file, answer or dataset version); its rollouts were graded against the old ones. "
            f"Use a new --out"
        )
    if prov.get("questions_digest") != digest:
        prov["questions_digest"] = digest
        rt.store.write_json("provenance.json", prov)
