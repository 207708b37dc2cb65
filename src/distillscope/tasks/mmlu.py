"""MMLU (Hendrycks et al., 2021): four-choice questions, the prompt of the paper's figure 12.

Sources: `task.path` (JSONL/Parquet rows `id`, `subject`, `question`, `choices` (4 strings),
`answer` as a letter or a 0-based index), else the hub dataset `cais/mmlu` (config `all`, split
`test`; ids are `mmlu-<subject>-<row index>`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from distillscope.tasks import verifiers as V
from distillscope.tasks.base import TaskError, select
from distillscope.tasks.custom import as_choices, choice_lines, field, records_for
from distillscope.types import Question, Verdict

if TYPE_CHECKING:
    from distillscope.config import TaskSpec

INSTRUCTION = (
    "Answer the following multiple choice question. The last line of your response should be "
    "of the following format: 'Answer: $LETTER' (without quotes) where LETTER is one of ABCD. "
    "Think step by step before answering."
)


def mmlu_prompt(question: str, choices: list[str]) -> str:
    """Figure 12: instruction, question, `A) ...` lines."""
    return f"{INSTRUCTION}\n{question.strip()}\n{choice_lines(choices)}"


class MMLUTask:
    name = "mmlu"

    def load(self, spec: TaskSpec) -> list[Question]:
        rows = records_for(spec, "cais/mmlu", "all", "test")
        where_file = spec.path or "cais/mmlu"
        questions = []
        for i, row in enumerate(rows):
            subject = str(row.get("subject") or "")
            qid = str(row["id"]) if row.get("id") is not None else f"mmlu-{subject}-{i}"
            where = f"{where_file}: row {i} (id '{qid}')"
            question = str(field(row, ("question",), where, "question"))
            choices = as_choices(field(row, ("choices",), where, "choices"), where)
            if len(choices) != 4:
                raise TaskError(f"{where}: MMLU needs 4 choices, got {len(choices)}")
            raw = field(row, ("answer",), where, "answer")
            try:
                answer = V.to_letter(raw, 4)
            except TaskError as err:
                raise TaskError(f"{where}: {err}") from None
            meta = {"question": question, "choices": choices, "subject": subject}
            questions.append(Question(qid, mmlu_prompt(question, choices), answer, meta))
        return select(questions, spec)

    def user_message(self, question: Question) -> str:
        return question.prompt

    def verify(self, question: Question, text: str) -> Verdict:
        return V.verify_letter(text, question.answer, question.meta.get("choices"))
