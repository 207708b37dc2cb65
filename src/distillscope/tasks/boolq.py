"""BoolQ (Clark et al., 2019): a passage and a yes/no question about it.

The prompt follows the paper's MMLU prompt (figure 12) with a yes/no answer line: the model is
asked to end with `Answer: yes` or `Answer: no`. The verifier (`verifiers.verify_yesno`) also
accepts `true`/`false` there.

Sources: `task.path` (JSONL/Parquet rows `id`, `question`, `passage`, `answer` as a JSON
boolean, or the SuperGLUE `label` "true"/"false"/1/0), else the hub dataset `google/boolq`
(split `validation`; rows carry no id, so ids are `boolq-<row index>`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from distillscope.tasks import verifiers as V
from distillscope.tasks.base import TaskError, select
from distillscope.tasks.custom import field, records_for, row_id
from distillscope.types import Question, Verdict

if TYPE_CHECKING:
    from distillscope.config import TaskSpec

INSTRUCTION = (
    "Answer the following yes/no question about the passage. The last line of your response "
    "should be of the following format: 'Answer: $ANSWER' (without quotes) where ANSWER is "
    "one of yes or no. Think step by step before answering."
)


def boolq_prompt(passage: str, question: str) -> str:
    q = question.strip()
    if not q.endswith("?"):
        q += "?"
    q = q[:1].upper() + q[1:]
    return f"{INSTRUCTION}\nPassage: {passage.strip()}\nQuestion: {q}"


class BoolQTask:
    name = "boolq"

    def load(self, spec: TaskSpec) -> list[Question]:
        rows = records_for(spec, "google/boolq", None, "validation")
        where_file = spec.path or "google/boolq"
        questions = []
        for i, row in enumerate(rows):
            qid = row_id(row, "boolq", i)
            where = f"{where_file}: row {i} (id '{qid}')"
            question = str(field(row, ("question",), where, "question"))
            passage = str(field(row, ("passage",), where, "passage"))
            raw = field(row, ("answer", "label"), where, "answer")
            try:
                answer = V.to_bool(raw)
            except TaskError as err:
                raise TaskError(f"{where}: {err}") from None
            meta = {"question": question, "passage": passage}
            questions.append(Question(qid, boolq_prompt(passage, question), answer, meta))
        return select(questions, spec)

    def user_message(self, question: Question) -> str:
        return question.prompt

    def verify(self, question: Question, text: str) -> Verdict:
        return V.verify_yesno(text, question.answer)
