"""The task protocol: a loader of questions, a prompt builder and a verifier.

Verifiers never raise on model output: unparsable output is wrong (reward 0) and the verdict
says it was unparsable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from distillscope.types import Question, Verdict

if TYPE_CHECKING:
    from distillscope.config import TaskSpec


class TaskError(ValueError):
    """Bad task input: missing file, empty dataset, question without an answer, ..."""


@runtime_checkable
class Task(Protocol):
    name: str

    def load(self, spec: TaskSpec) -> list[Question]:
        """Questions after spec.ids / offset / limit. Raises TaskError on empty or bad data."""
        ...

    def user_message(self, question: Question) -> str:
        """The user turn: instruction + question (+ choices), as in figure 12."""
        ...

    def verify(self, question: Question, text: str) -> Verdict: ...


def select(questions: Sequence[Question], spec: TaskSpec) -> list[Question]:
    """Apply ids / offset / limit, and refuse an empty result or a question with no answer."""
    qs = list(questions)
    if spec.ids is not None:
        wanted = set(spec.ids)
        missing = wanted - {q.qid for q in qs}
        if missing:
            raise TaskError(f"task '{spec.name}': unknown question ids {sorted(missing)[:5]}")
        qs = [q for q in qs if q.qid in wanted]
    qs = qs[spec.offset :]
    if spec.limit is not None:
        qs = qs[: spec.limit]
    if not qs:
        raise TaskError(f"task '{spec.name}': the dataset is empty after selection")
    for q in qs:
        if q.answer is None or (isinstance(q.answer, str) and not q.answer.strip()):
            raise TaskError(f"task '{spec.name}': question '{q.qid}' has no answer")
    ids = [q.qid for q in qs]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = [i for i in ids if i in seen or seen.add(i)]
        raise TaskError(f"task '{spec.name}': question ids are not unique: '{dup[0]}' appears "
                        f"{ids.count(dup[0])} times"
                        + (f" ({len(set(dup))} repeated ids in all)" if len(set(dup)) > 1 else ""))
    return qs
