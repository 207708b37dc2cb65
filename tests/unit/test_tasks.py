"""Tasks: verifiers on hand-written outputs, loaders on small files written into tmp_path."""

from __future__ import annotations

import json
import sys
import types

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distillscope.config import TaskSpec
from distillscope.tasks import get_task
from distillscope.tasks import verifiers as V
from distillscope.tasks.base import TaskError
from distillscope.types import Question


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


# ---------------------------------------------------------------------------------------------
# Verifiers


@pytest.mark.parametrize(
    ("text", "gold", "reward", "parsable", "extracted"),
    [
        ("The passage says so.\nAnswer: yes", True, 1.0, True, "yes"),
        ("Answer: no", True, 0.0, True, "no"),
        ("Answer: False", False, 1.0, True, "no"),  # true/false accepted too
        ("answer: TRUE.", True, 1.0, True, "yes"),  # case, punctuation
        ("**Answer:** **Yes**", True, 1.0, True, "yes"),  # markdown bold
        ("I am not sure about this one.", True, 0.0, False, None),
        ("", False, 0.0, False, None),
        ("<think>Answer: no? The text says yes.</think>\nAnswer: yes", True, 1.0, True, "yes"),
        ("<think>Answer: yes, clearly", True, 0.0, False, None),  # cut off while thinking
        ("Answer: yes\nHmm, wait. Re-reading it.\nAnswer: no", True, 0.0, True, "no"),  # last
        ("Yes, it is blue.", True, 1.0, True, "yes"),  # no marker: first word of last line
        ("so \\boxed{no}", False, 1.0, True, "no"),
    ],
)
def test_yesno(text, gold, reward, parsable, extracted):
    assert V.verify_yesno(text, gold) == V.Verdict(reward, parsable, extracted)


CHOICES = ["Rome", "Berlin", "Paris", "Oslo"]


@pytest.mark.parametrize(
    ("text", "reward", "parsable", "extracted"),
    [
        ("Paris is the capital.\nAnswer: C", 1.0, True, "C"),
        ("Answer: B", 0.0, True, "B"),
        ("Answer: (c)", 1.0, True, "C"),
        ("**Answer: C**", 1.0, True, "C"),
        ("Answer: **C) Paris**", 1.0, True, "C"),
        ("Answer: paris", 1.0, True, "C"),  # the text of exactly one choice
        ("Answer: a city", 0.0, False, None),  # a lone article is not a letter
        ("Answer: $LETTER", 0.0, False, None),  # the instruction echoed back
        ("I think it is a big city.", 0.0, False, None),
        ("<think>Answer: A. No wait.</think>The capital is Paris.\nAnswer: C", 1.0, True, "C"),
        ("<think>Answer: C", 0.0, False, None),
        ("Answer: A\nActually, let me reconsider.\nAnswer: C", 1.0, True, "C"),
        ("\\boxed{C}", 1.0, True, "C"),
        ("C) Paris", 1.0, True, "C"),  # no marker: the one line in the choices' format
        ("I pick\n(B) Berlin", 0.0, True, "B"),
        ("A) Rome\nB) Berlin\nC) Paris\nD) Oslo", 0.0, False, None),  # the list echoed
        ("Paris.", 1.0, True, "C"),  # no marker: the whole answer is one choice's text
        ("The correct answer is C) Paris, since", 1.0, True, "C"),  # "answer is", no colon
    ],
)
def test_letter(text, reward, parsable, extracted):
    assert V.verify_letter(text, "C", CHOICES) == V.Verdict(reward, parsable, extracted)


@pytest.mark.parametrize(
    ("text", "reward", "parsable", "extracted"),
    [
        ("So the total is \\boxed{204}.", 1.0, True, "204"),
        ("\\boxed{205}", 0.0, True, "205"),
        ("Answer: 204", 1.0, True, "204"),
        ("Answer: $204$", 1.0, True, "204"),
        ("\\boxed{0204}", 1.0, True, "204"),  # leading zero
        ("no idea", 0.0, False, None),
        ("<think>maybe \\boxed{100}</think> Final: \\boxed{204}", 1.0, True, "204"),
        ("<think>it is \\boxed{204}", 0.0, False, None),
        ("First \\boxed{100}, then corrected: \\boxed{204}", 1.0, True, "204"),  # last box
    ],
)
def test_integer(text, reward, parsable, extracted):
    assert V.verify_integer(text, 204) == V.Verdict(reward, parsable, extracted)


def test_integer_thousands_separator():
    assert V.verify_integer("Answer: 1,000", 1000).reward == 1.0
    assert V.verify_integer("\\boxed{1\\,000}", 1000).reward == 1.0


@pytest.mark.parametrize(
    ("text", "reward", "parsable"),
    [
        ("So the answer is $\\boxed{70}$.", 1.0, True),
        ("\\boxed{\\frac{140}{2}}", 1.0, True),  # equivalent expression (math-verify)
        ("\\boxed{71}", 0.0, True),
        ("Answer: 70", 1.0, True),
        ("**Answer:** $70$", 1.0, True),
        ("nothing numeric here", 0.0, False),
        ("<think>\\boxed{12}</think>\\boxed{70}", 1.0, True),
        ("<think>\\boxed{70}", 0.0, False),
        ("\\boxed{12} ... no, \\boxed{70}", 1.0, True),
    ],
)
def test_math(text, reward, parsable):
    v = V.verify_math(text, 70)
    assert (v.reward, v.parsable) == (reward, parsable)


def test_math_integer_fallback(monkeypatch):
    """When math-verify extracts nothing, the plain integer reading of the box decides."""
    monkeypatch.setattr(V, "_math_verify", lambda region, gold: None)
    assert V.verify_math("\\boxed{025}", 25) == V.Verdict(1.0, True, "25")
    assert V.verify_math("\\boxed{24}", 25) == V.Verdict(0.0, True, "24")
    assert V.verify_math("nothing", 25) == V.UNPARSABLE


@pytest.mark.parametrize("name", V.VERIFIER_NAMES)
@pytest.mark.parametrize("junk", ["\x00\x01", "}" * 50 + "\\boxed{", "<think></think>" * 3,
                                  "Answer:", "\\boxed{\\frac{", "A" * 10000])
def test_verifiers_never_raise(name, junk):
    gold = {"yesno": True, "letter": "A", "integer": 3, "math": 3}[name]
    q = Question("q", "p", gold, {"choices": ["x", "y", "z", "w"]})
    v = V.get_verifier(name)(q, junk)
    assert v.reward in (0.0, 1.0)
    assert v.parsable or v.reward == 0.0


def test_unknown_verifier_name():
    with pytest.raises(TaskError, match="allowed: yesno, letter, integer, math"):
        V.get_verifier("regex")


@pytest.mark.parametrize(("value", "expected"), [(True, True), ("false", False), ("Yes", True),
                                                 (0, False)])
def test_to_bool(value, expected):
    assert V.to_bool(value) is expected


def test_gold_conversion_errors():
    with pytest.raises(TaskError):
        V.to_bool("maybe")
    with pytest.raises(TaskError):
        V.to_letter("E", 4)
    with pytest.raises(TaskError):
        V.to_int("twelve")
    assert V.to_letter(2) == "C"
    assert V.to_int("025") == 25


# ---------------------------------------------------------------------------------------------
# Loaders

BOOLQ_ROWS = [
    {"id": "b0", "question": "is the sky blue", "passage": "Sky -- The sky is blue.",
     "answer": True},
    {"id": "b1", "question": "is snow hot", "passage": "Snow -- Snow is cold.", "answer": False},
    {"id": "b2", "question": "do fish swim", "passage": "Fish -- Fish swim.", "answer": True},
]
MMLU_ROWS = [
    {"id": "m0", "subject": "geo", "question": "Capital of France?",
     "choices": ["Rome", "Berlin", "Paris", "Oslo"], "answer": "C"},
    {"id": "m1", "subject": "math", "question": "2 + 2 = ?", "choices": ["3", "4", "5", "6"],
     "answer": 1},
]
AIME_ROWS = [
    {"id": "a0", "problem": "Find $1+1$.", "answer": 2},
    {"id": "a1", "problem": "Find $10 \\cdot 7$.", "answer": "070"},
]


def test_boolq_jsonl(tmp_path):
    task = get_task("boolq")
    qs = task.load(TaskSpec(name="boolq", path=write_jsonl(tmp_path / "b.jsonl", BOOLQ_ROWS)))
    assert [q.qid for q in qs] == ["b0", "b1", "b2"]
    assert [q.answer for q in qs] == [True, False, True]
    msg = task.user_message(qs[0])
    assert msg.startswith("Answer the following yes/no question")
    assert "'Answer: $ANSWER'" in msg and "yes or no" in msg
    assert msg.index("Passage: Sky -- The sky is blue.") < msg.index("Question: Is the sky blue?")
    assert task.verify(qs[1], "Snow is cold.\nAnswer: no").reward == 1.0


def test_boolq_superglue_label_and_selection(tmp_path):
    rows = [{"idx": i, "question": "q", "passage": "p", "label": lab}
            for i, lab in enumerate(["true", "false", "true", "false"])]
    spec = TaskSpec(name="boolq", path=write_jsonl(tmp_path / "b.jsonl", rows), offset=1,
                    limit=2)
    qs = get_task("boolq").load(spec)
    assert [(q.qid, q.answer) for q in qs] == [("boolq-1", False), ("boolq-2", True)]


def test_mmlu_parquet(tmp_path):
    path = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist(
        [{**r, "answer": str(r["answer"])} for r in MMLU_ROWS]), path)
    task = get_task("mmlu")
    qs = task.load(TaskSpec(name="mmlu", path=str(path)))
    assert [q.answer for q in qs] == ["C", "B"]
    # figure 12: instruction, question, A) ... D) lines, nothing else
    assert task.user_message(qs[0]).splitlines() == [
        "Answer the following multiple choice question. The last line of your response should "
        "be of the following format: 'Answer: $LETTER' (without quotes) where LETTER is one of "
        "ABCD. Think step by step before answering.",
        "Capital of France?", "A) Rome", "B) Berlin", "C) Paris", "D) Oslo",
    ]
    assert task.verify(qs[1], "Answer: B").reward == 1.0


@pytest.mark.parametrize("name", ["aime2024", "aime2025"])
def test_aime_jsonl(tmp_path, name):
    task = get_task(name)
    qs = task.load(TaskSpec(name=name, path=write_jsonl(tmp_path / "a.jsonl", AIME_ROWS),
                            ids=["a1"]))
    assert [(q.qid, q.answer) for q in qs] == [("a1", 70)]
    assert "\\boxed{}" in task.user_message(qs[0])
    assert task.verify(qs[0], "<think>7*10</think>\n\\boxed{70}").reward == 1.0
    assert task.verify(qs[0], "\\boxed{69}").reward == 0.0


@pytest.mark.parametrize("name", ["boolq", "mmlu", "aime2025", "quickstart"])
def test_empty_file(tmp_path, name):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(TaskError, match="no rows"):
        get_task(name).load(TaskSpec(name=name, path=str(path)))


def test_empty_parquet(tmp_path):
    path = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"id": pa.array([], pa.string())}), path)
    with pytest.raises(TaskError, match="no rows"):
        get_task("boolq").load(TaskSpec(name="boolq", path=str(path)))


@pytest.mark.parametrize(
    ("name", "rows"),
    [("boolq", BOOLQ_ROWS), ("mmlu", MMLU_ROWS), ("aime2024", AIME_ROWS)],
)
def test_row_without_answer_is_named(tmp_path, name, rows):
    bad = [dict(r) for r in rows]
    del bad[1]["answer"]
    with pytest.raises(TaskError, match=f"id '{bad[1]['id']}'.*no answer"):
        get_task(name).load(TaskSpec(name=name, path=write_jsonl(tmp_path / "x.jsonl", bad)))


def test_bad_files(tmp_path):
    with pytest.raises(TaskError, match="not found"):
        get_task("boolq").load(TaskSpec(name="boolq", path=str(tmp_path / "nope.jsonl")))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1}\n{oops\n', encoding="utf-8")
    with pytest.raises(TaskError, match="line 2"):
        get_task("boolq").load(TaskSpec(name="boolq", path=str(bad)))
    csv = tmp_path / "x.csv"
    csv.write_text("a,b\n", encoding="utf-8")
    with pytest.raises(TaskError, match="unknown file type"):
        get_task("boolq").load(TaskSpec(name="boolq", path=str(csv)))
    wrong = [{"id": "a", "question": "q", "passage": "p", "answer": "maybe"}]
    with pytest.raises(TaskError, match="id 'a'.*not a yes/no"):
        get_task("boolq").load(TaskSpec(name="boolq", path=write_jsonl(tmp_path / "w.jsonl",
                                                                       wrong)))


def test_hub_unreachable_says_pass_path(monkeypatch):
    def fail(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=fail))
    with pytest.raises(TaskError, match="pass task.path"):
        get_task("mmlu").load(TaskSpec(name="mmlu"))


def test_hub_rows_are_used(monkeypatch):
    rows = [{"question": "do fish swim", "passage": "Fish swim.", "answer": True}]
    seen = {}

    def load_dataset(name, config, split):
        seen["args"] = (name, config, split)
        return rows

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    qs = get_task("boolq").load(TaskSpec(name="boolq"))
    assert seen["args"] == ("google/boolq", None, "validation")
    assert [(q.qid, q.answer) for q in qs] == [("boolq-0", True)]


# ---------------------------------------------------------------------------------------------
# Custom and quickstart


def test_custom_task(tmp_path):
    rows = [{"key": "c1", "q": "What is 6*7?", "gold": "42"},
            {"key": "c2", "q": "What is 2+2?", "gold": 4}]
    spec = TaskSpec(name="custom", path=write_jsonl(tmp_path / "c.jsonl", rows),
                    fields={"id": "key", "question": "q", "answer": "gold"}, verifier="integer")
    task = get_task("custom")
    qs = task.load(spec)
    assert [(q.qid, q.answer) for q in qs] == [("c1", 42), ("c2", 4)]
    assert "What is 6*7?" in task.user_message(qs[0])
    assert task.verify(qs[0], "\\boxed{42}") == V.Verdict(1.0, True, "42")
    assert task.verify(qs[1], "hmm") == V.UNPARSABLE


def test_custom_letter_with_choices(tmp_path):
    rows = [{"id": "x", "question": "Pick blue.", "choices": ["red", "blue", "green"],
             "answer": "B"}]
    spec = TaskSpec(name="custom", path=write_jsonl(tmp_path / "c.jsonl", rows),
                    verifier="letter")
    task = get_task("custom")
    (q,) = task.load(spec)
    assert "one of ABC." in task.user_message(q) and "C) green" in task.user_message(q)
    assert task.verify(q, "Answer: blue").reward == 1.0


def test_custom_errors(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": "x", "question": "q"}])
    with pytest.raises(TaskError, match="task.verifier"):
        get_task("custom").load(TaskSpec(name="custom", path=path))
    with pytest.raises(TaskError, match="id 'x'.*no answer"):
        get_task("custom").load(TaskSpec(name="custom", path=path, verifier="math"))
    with pytest.raises(TaskError, match="unknown task.fields"):
        get_task("custom").load(TaskSpec(name="custom", path=path, verifier="math",
                                         fields={"solution": "s"}))
    with pytest.raises(TaskError, match="task.path"):
        get_task("custom").load(TaskSpec(name="custom", verifier="math"))
    for bad in ({"x": 1}, [1, 2], True):  # never graded against their Python text
        path = write_jsonl(tmp_path / "m.jsonl", [{"id": "m", "question": "q", "answer": bad}])
        with pytest.raises(TaskError, match="math verifier takes a string or a number"):
            get_task("custom").load(TaskSpec(name="custom", path=path, verifier="math"))
    path = write_jsonl(tmp_path / "n.jsonl", [{"id": "n", "question": "q", "answer": 2.5}])
    (q,) = get_task("custom").load(TaskSpec(name="custom", path=path, verifier="math"))
    assert q.answer == "2.5"


def test_custom_letter_takes_a_0_based_index(tmp_path):
    rows = [{"id": "i", "question": "Pick.", "choices": ["a", "b", "c"], "answer": 1}]
    (q,) = get_task("custom").load(TaskSpec(
        name="custom", path=write_jsonl(tmp_path / "c.jsonl", rows), verifier="letter"))
    assert q.answer == "B"


def test_quickstart_bundled():
    task = get_task("quickstart")
    qs = task.load(TaskSpec(name="quickstart"))
    kinds = [q.meta["kind"] for q in qs]
    assert len(qs) >= 30 and kinds.count("yesno") == kinds.count("choice")
    yes = [q.answer for q in qs if q.meta["kind"] == "yesno"]
    assert 0 < sum(yes) < len(yes)  # both answers occur
    assert {q.answer for q in qs if q.meta["kind"] == "choice"} == {"A", "B", "C", "D"}
    for q in qs:
        msg = task.user_message(q)
        assert msg.rstrip().endswith("'Answer: no'." if q.meta["kind"] == "yesno"
                                     else "A, B, C or D.")
        gold = ("yes" if q.answer else "no") if q.meta["kind"] == "yesno" else q.answer
        assert task.verify(q, f"Answer: {gold}").reward == 1.0
        assert task.verify(q, "no idea").parsable is False


def test_quickstart_local_file(tmp_path):
    rows = [{"id": "y", "kind": "yesno", "passage": "Fire is hot.", "question": "Is fire hot?",
             "answer": True},
            {"id": "c", "kind": "choice", "question": "1+1?", "choices": ["1", "2", "3", "4"],
             "answer": "B"}]
    qs = get_task("quickstart").load(TaskSpec(name="quickstart",
                                              path=write_jsonl(tmp_path / "q.jsonl", rows)))
    assert [q.answer for q in qs] == [True, "B"]
    assert "Text: Fire is hot." in qs[0].prompt and "B) 2" in qs[1].prompt
