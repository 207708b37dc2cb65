"""Local question files and the custom task.

Two jobs:

* Reading question files, shared by every loader: `read_records` (JSONL or Parquet, chosen by
  the file suffix) and `load_hub_records` (HF `datasets`, imported lazily; when the hub cannot
  be reached the error says to pass `task.path` with a local file instead).
* `CustomTask`: a JSONL/Parquet file whose field names are given in `TaskSpec.fields` and a
  verifier chosen by name (`yesno`, `letter`, `integer`, `math`, see `verifiers.py`).

Custom field roles (`task.fields`, role -> column name; defaults in brackets):
`id` [id], `question` [question], `answer` [answer], `passage` [passage], `choices` [choices].
A `passage` is shown before the question; `choices` (a list) are shown as `A) ...` lines.
Gold answers by verifier: `yesno` a boolean or yes/no text; `letter` a letter or a 0-based
index into the choices (0 = A); `integer` an integer; `math` a string or a number (a list,
mapping or boolean is refused, not turned into its Python text).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distillscope.tasks import verifiers as V
from distillscope.tasks.base import TaskError, select
from distillscope.types import Question, Verdict

if TYPE_CHECKING:
    from distillscope.config import TaskSpec

Record = dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Reading


def read_records(path: str | Path) -> list[Record]:
    """Rows of a `.jsonl` / `.json` (one object per line) or `.parquet` file. TaskError when the
    file is missing, unreadable, not of those formats, or has no rows."""
    p = Path(path)
    if not p.is_file():
        raise TaskError(f"question file not found: {p}")
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        rows: list[Record] = []
        try:
            text = p.read_bytes().decode("utf-8")
        except UnicodeDecodeError as err:
            line = p.read_bytes()[: err.start].count(b"\n") + 1
            raise TaskError(f"{p}: line {line} is not valid UTF-8 (byte {err.start}: "
                            f"{err.reason}); save the file as UTF-8") from None
        except OSError as err:
            raise TaskError(f"{p}: cannot read the file ({err.strerror})") from None
        for lineno, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise TaskError(f"{p}: line {lineno} is not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise TaskError(f"{p}: line {lineno} is not a JSON object")
            rows.append(row)
    elif suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(p).to_pylist()
        except Exception as err:  # pyarrow raises several types
            raise TaskError(f"{p}: cannot read Parquet file ({err})") from None
    else:
        raise TaskError(f"{p}: unknown file type '{suffix}'; use .jsonl or .parquet")
    if not rows:
        raise TaskError(f"{p}: the file has no rows")
    return rows


def load_hub_records(task: str, dataset: str, config: str | None, split: str) -> list[Record]:
    """Rows of a Hugging Face dataset split. TaskError (naming `task.path`) when `datasets` is
    missing or the hub cannot be reached."""
    hint = f"pass task.path with a local JSONL/Parquet file of the '{task}' questions"
    try:
        import datasets
    except ImportError:
        raise TaskError(
            f"task '{task}': loading from the hub needs `pip install 'distillscope[hub]'`; "
            f"or {hint}"
        ) from None
    try:
        ds = datasets.load_dataset(dataset, config, split=split)
    except Exception as err:
        raise TaskError(
            f"task '{task}': cannot load '{dataset}' ({split}) from the Hugging Face hub "
            f"({type(err).__name__}: {str(err)[:200]}); {hint}"
        ) from None
    return [dict(r) for r in ds]


def records_for(spec: TaskSpec, dataset: str, config: str | None, split: str) -> list[Record]:
    """`spec.path` when given, else the hub (`spec.options` may override `hf_dataset`,
    `hf_config`; `spec.split` overrides the split)."""
    if spec.path:
        return read_records(spec.path)
    return load_hub_records(
        spec.name,
        spec.options.get("hf_dataset", dataset),
        spec.options.get("hf_config", config),
        spec.split or split,
    )


def field(row: Record, names: tuple[str, ...], where: str, what: str) -> Any:
    """The first of `names` present (not None) in `row`; TaskError naming `where` else."""
    for n in names:
        if row.get(n) is not None:
            return row[n]
    raise TaskError(f"{where} has no {what} (looked for: {', '.join(names)})")


def row_id(row: Record, prefix: str, index: int, key: str = "id") -> str:
    value = row.get(key)
    return str(value) if value is not None else f"{prefix}-{index}"


def choice_lines(choices: list[str]) -> str:
    return "\n".join(f"{'ABCDEFGHIJ'[i]}) {c}" for i, c in enumerate(choices))


def as_choices(value: Any, where: str) -> list[str]:
    if not isinstance(value, (list, tuple)) or not 2 <= len(value) <= 10:
        raise TaskError(f"{where}: 'choices' must be a list of 2 to 10 strings")
    return [str(c) for c in value]


# ---------------------------------------------------------------------------------------------
# The custom task

_DEFAULT_FIELDS = {
    "id": "id",
    "question": "question",
    "answer": "answer",
    "passage": "passage",
    "choices": "choices",
}

_INSTRUCTIONS = {
    "yesno": "Answer the following yes/no question. The last line of your response should be "
    "of the following format: 'Answer: $ANSWER' (without quotes) where ANSWER is yes or no. "
    "Think step by step before answering.",
    "letter": "Answer the following multiple choice question. The last line of your response "
    "should be of the following format: 'Answer: $LETTER' (without quotes) where LETTER is one "
    "of {letters}. Think step by step before answering.",
    "integer": "Solve the following problem. Think step by step, and put your final answer, an "
    "integer, within \\boxed{}.",
    "math": "Solve the following problem. Think step by step, and put your final answer within "
    "\\boxed{}.",
}


class CustomTask:
    """A local JSONL/Parquet file plus a named verifier (`task.verifier`)."""

    name = "custom"

    def __init__(self) -> None:
        self.verifier_name: str | None = None

    def load(self, spec: TaskSpec) -> list[Question]:
        if not spec.path:
            raise TaskError("task 'custom' needs task.path (a JSONL or Parquet file)")
        if spec.verifier not in V.VERIFIER_NAMES:
            raise TaskError(
                f"task 'custom' needs task.verifier, one of {', '.join(V.VERIFIER_NAMES)}; "
                f"got {spec.verifier!r}"
            )
        unknown = set(spec.fields) - set(_DEFAULT_FIELDS)
        if unknown:
            raise TaskError(
                f"task 'custom': unknown task.fields roles {sorted(unknown)}; "
                f"allowed: {', '.join(_DEFAULT_FIELDS)}"
            )
        self.verifier_name = spec.verifier
        names = {**_DEFAULT_FIELDS, **spec.fields}
        questions = []
        for i, row in enumerate(read_records(spec.path)):
            qid = row_id(row, "custom", i, names["id"])
            where = f"{spec.path}: row {i} (id '{qid}')"
            text = str(field(row, (names["question"],), where, f"'{names['question']}'"))
            answer = field(row, (names["answer"],), where, f"answer '{names['answer']}'")
            meta: dict[str, Any] = {"verifier": spec.verifier, "question": text}
            if row.get(names["passage"]) is not None:
                meta["passage"] = str(row[names["passage"]])
            if row.get(names["choices"]) is not None:
                meta["choices"] = as_choices(row[names["choices"]], where)
            answer = _gold(spec.verifier, answer, meta, where)
            questions.append(Question(qid, _prompt(spec.verifier, meta), answer, meta))
        return select(questions, spec)

    def user_message(self, question: Question) -> str:
        return question.prompt

    def verify(self, question: Question, text: str) -> Verdict:
        name = question.meta.get("verifier") or self.verifier_name
        if name not in V.VERIFIER_NAMES:
            return V.UNPARSABLE
        return V.get_verifier(name)(question, text)


def _gold(verifier: str, answer: Any, meta: Mapping[str, Any], where: str) -> Any:
    try:
        if verifier == "yesno":
            return V.to_bool(answer)
        if verifier == "letter":
            return V.to_letter(answer, len(meta.get("choices") or "ABCD"))
        if verifier == "integer":
            return V.to_int(answer)
    except TaskError as err:
        raise TaskError(f"{where}: {err}") from None
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise TaskError(f"{where}: the {verifier} verifier takes a string or a number as the "
                        f"answer, got {type(answer).__name__} {answer!r}")
    return str(answer)


def _prompt(verifier: str, meta: Mapping[str, Any]) -> str:
    n = len(meta.get("choices") or "ABCD")
    parts = [_INSTRUCTIONS[verifier].replace("{letters}", "ABCDEFGHIJ"[:n])]
    if "passage" in meta:
        parts.append(f"Passage: {meta['passage']}")
    parts.append(meta["question"])
    if "choices" in meta:
        parts.append(choice_lines(meta["choices"]))
    return "\n".join(parts)
