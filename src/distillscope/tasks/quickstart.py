"""The quickstart questions: 36 short items written for this project, shipped in the package.

Half are yes/no questions about a one- or two-sentence passage, half are four-choice
questions (tiny arithmetic, colours, animals). They are easy enough that the embedded
SmolLM2-135M-Instruct is right sometimes and wrong sometimes, which is what the pipeline needs
(questions with both correct and incorrect rollouts).

The prompts have the BoolQ / MMLU layouts (instruction, passage or question, choices) but
shorter instructions for a 135M model, ending with the answer-format line. Verification is the
BoolQ / MMLU verifier by item kind. `task.path` may point to another file of the same format
(rows `id`, `kind` = yesno | choice, `question`, `passage` (yesno), `choices` (choice),
`answer`: boolean or letter).
"""

from __future__ import annotations

import json
from importlib import resources
from typing import TYPE_CHECKING, Any

from distillscope.tasks import verifiers as V
from distillscope.tasks.base import TaskError, select
from distillscope.tasks.custom import as_choices, choice_lines, field, read_records
from distillscope.types import Question, Verdict

if TYPE_CHECKING:
    from distillscope.config import TaskSpec

YESNO_INSTRUCTION = "Read the text and answer the question with yes or no."
YESNO_FORMAT = "End with the line 'Answer: yes' or 'Answer: no'."
CHOICE_INSTRUCTION = "Answer the multiple choice question."
CHOICE_FORMAT = "End with the line 'Answer: X' where X is A, B, C or D."


def quickstart_prompt(kind: str, question: str, passage: str | None, choices: list[str] | None):
    if kind == "yesno":
        return f"{YESNO_INSTRUCTION}\nText: {passage}\nQuestion: {question}\n{YESNO_FORMAT}"
    return f"{CHOICE_INSTRUCTION}\n{question}\n{choice_lines(choices or [])}\n{CHOICE_FORMAT}"


def bundled_records() -> list[dict[str, Any]]:
    text = resources.files("distillscope").joinpath("data/quickstart.jsonl").read_text("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class QuickstartTask:
    name = "quickstart"

    def load(self, spec: TaskSpec) -> list[Question]:
        rows = read_records(spec.path) if spec.path else bundled_records()
        where_file = spec.path or "distillscope/data/quickstart.jsonl"
        questions = []
        for i, row in enumerate(rows):
            qid = str(field(row, ("id",), f"{where_file}: row {i}", "id"))
            where = f"{where_file}: row {i} (id '{qid}')"
            kind = row.get("kind", "choice" if "choices" in row else "yesno")
            question = str(field(row, ("question",), where, "question"))
            raw = field(row, ("answer",), where, "answer")
            meta: dict[str, Any] = {"kind": kind, "question": question}
            try:
                if kind == "yesno":
                    meta["passage"] = str(field(row, ("passage",), where, "passage"))
                    answer: Any = V.to_bool(raw)
                elif kind == "choice":
                    meta["choices"] = as_choices(field(row, ("choices",), where, "choices"), where)
                    answer = V.to_letter(raw, len(meta["choices"]))
                else:
                    raise TaskError(f"unknown kind {kind!r} (yesno or choice)")
            except TaskError as err:
                if str(err).startswith(where):
                    raise
                raise TaskError(f"{where}: {err}") from None
            prompt = quickstart_prompt(kind, question, meta.get("passage"), meta.get("choices"))
            questions.append(Question(qid, prompt, answer, meta))
        return select(questions, spec)

    def user_message(self, question: Question) -> str:
        return question.prompt

    def verify(self, question: Question, text: str) -> Verdict:
        if question.meta.get("kind") == "yesno":
            return V.verify_yesno(text, question.answer)
        return V.verify_letter(text, question.answer, question.meta.get("choices"))
