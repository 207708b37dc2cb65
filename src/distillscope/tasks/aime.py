"""AIME 2024 / 2025: integer answers (0-999), verified through `math-verify`.

The prompt asks for the final answer in `\\boxed{}` (the convention math-verify reads best); the
verifier (`verifiers.verify_math`) falls back to a plain integer reading (`\\boxed{025}`,
`Answer: 25`) when math-verify extracts nothing.

Sources: `task.path` (JSONL/Parquet rows `id`, `problem`, `answer` as an integer or a string of
digits), else the hub: `HuggingFaceH4/aime_2024` (split `train`) and `MathArena/aime_2025`
(split `train`). Ids fall back to `aime<year>-<row index>` (or `problem_idx` when present).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from distillscope.tasks import verifiers as V
from distillscope.tasks.base import TaskError, select
from distillscope.tasks.custom import field, records_for
from distillscope.types import Question, Verdict

if TYPE_CHECKING:
    from distillscope.config import TaskSpec

INSTRUCTION = (
    "Solve the following math problem. Think step by step, and put your final answer, an "
    "integer from 0 to 999, within \\boxed{}."
)


def aime_prompt(problem: str) -> str:
    return f"{INSTRUCTION}\n{problem.strip()}"


class _AIMETask:
    name = "aime"
    year = 0
    hub = ("", "train")

    def load(self, spec: TaskSpec) -> list[Question]:
        dataset, split = self.hub
        rows = records_for(spec, dataset, None, split)
        where_file = spec.path or dataset
        questions = []
        for i, row in enumerate(rows):
            if row.get("id") is not None:
                qid = str(row["id"])
            elif row.get("problem_idx") is not None:
                qid = f"aime{self.year}-{row['problem_idx']}"
            else:
                qid = f"aime{self.year}-{i}"
            where = f"{where_file}: row {i} (id '{qid}')"
            problem = str(field(row, ("problem", "question"), where, "problem"))
            raw = field(row, ("answer",), where, "answer")
            try:
                answer = V.to_int(raw)
            except TaskError as err:
                raise TaskError(f"{where}: {err}") from None
            questions.append(Question(qid, aime_prompt(problem), answer, {"problem": problem}))
        return select(questions, spec)

    def user_message(self, question: Question) -> str:
        return question.prompt

    def verify(self, question: Question, text: str) -> Verdict:
        return V.verify_math(text, question.answer)


class AIME2024Task(_AIMETask):
    name = "aime2024"
    year = 2024
    hub = ("HuggingFaceH4/aime_2024", "train")


class AIME2025Task(_AIMETask):
    name = "aime2025"
    year = 2025
    hub = ("MathArena/aime_2025", "train")
