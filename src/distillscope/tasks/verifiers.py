"""Verifiers shared by the tasks: yes/no, `Answer: X` letter, integer, maths equivalence.

Every verifier takes the raw model output and the gold answer and returns a `Verdict`; none
of them raises on model output (unparsable output is wrong: reward 0, `parsable=False`).

Reading rules, the same for every verifier:

* Thinking first: when the output contains `</think>`, only the text after the LAST `</think>`
  is the answer region. An opened `<think>` that never closes means the model was cut off while
  still thinking: there is no answer region and the output is unparsable (an answer written
  inside unfinished thinking does not count).
* Several candidate answers: the LAST `Answer:` marker in the answer region wins (models often
  restate or correct themselves; the prompts ask for the answer on the last line). `answer is`
  without a colon ("The correct answer is C) Cold") counts as a marker too.
* Case, surrounding punctuation, markdown emphasis (`**B**`, `*yes*`, `` `B` ``), `$...$` and
  brackets (`(B)`, `[B]`) around the answer are ignored.

Fallbacks when no `Answer:` marker is present are documented per verifier.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from typing import Any

from distillscope.tasks.base import TaskError
from distillscope.types import Question, Verdict

UNPARSABLE = Verdict(reward=0.0, parsable=False, extracted=None)
VERIFIER_NAMES: tuple[str, ...] = ("yesno", "letter", "integer", "math")

_THINK_OPEN = re.compile(r"<think>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</think>", re.IGNORECASE)
_ANSWER_MARK = re.compile(r"answer(?:\s+is)?\s*[:：]|answer\s+is\b", re.IGNORECASE)
_EMPHASIS = re.compile(r"[*_`$]+")
_BOXED = re.compile(r"\\boxed\s*\{")
_YES = {"yes", "true"}
_NO = {"no", "false"}
_MATH_TAIL_CHARS = 4000  # math-verify reads the end of the answer region only (speed)


# ---------------------------------------------------------------------------------------------
# Shared text handling


def answer_region(text: str) -> str | None:
    """The part of `text` that may hold the final answer: after the last `</think>`; None when
    a `<think>` block was opened and never closed (cut off mid-thinking)."""
    closes = list(_THINK_CLOSE.finditer(text))
    if closes:
        return text[closes[-1].end() :]
    if _THINK_OPEN.search(text):
        return None
    return text


def strip_emphasis(text: str) -> str:
    """Drop markdown emphasis and inline-maths markers: `**B**` -> `B`, `$42$` -> `42`."""
    return _EMPHASIS.sub("", text)


def last_answer_line(region: str) -> str | None:
    """Text after the last `Answer:` marker (up to the end of that line), or None."""
    clean = strip_emphasis(region)
    marks = list(_ANSWER_MARK.finditer(clean))
    if not marks:
        return None
    rest = clean[marks[-1].end() :]
    line = rest.strip().split("\n", 1)[0] if rest.strip() else ""
    return line.strip()


def last_boxed(region: str) -> str | None:
    """Content of the last `\\boxed{...}` with balanced braces, or None."""
    starts = [m.end() for m in _BOXED.finditer(region)]
    for start in reversed(starts):
        depth, i = 1, start
        while i < len(region) and depth:
            depth += {"{": 1, "}": -1}.get(region[i], 0)
            i += 1
        if depth == 0:
            return region[start : i - 1]
    return None


def _first_word(s: str) -> str:
    s = s.strip().lstrip("([{\"'").strip()
    m = re.match(r"[A-Za-z]+", s)
    return m.group(0).lower() if m else ""


# ---------------------------------------------------------------------------------------------
# Yes / no


def to_bool(value: Any) -> bool:
    """Gold answers: True/False, 1/0, "yes"/"no", "true"/"false" (any case). TaskError else."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _YES | _NO:
        return value.strip().lower() in _YES
    raise TaskError(f"not a yes/no answer: {value!r}")


def read_yesno(text: str) -> bool | None:
    """The model's yes/no: the first word after the last `Answer:`; without a marker, a
    `\\boxed{yes}`, or a last non-empty line that starts with the bare word (`Yes.`, `No, it
    is not`; not `No idea`). None when there is none."""
    region = answer_region(text)
    if region is None:
        return None
    line = last_answer_line(region)
    if line is None:
        boxed = last_boxed(region)
        if boxed is not None:
            line = boxed
        else:
            lines = [ln for ln in strip_emphasis(region).splitlines() if ln.strip()]
            line = lines[-1] if lines else ""
            # a bare "Yes." / "No, because ..." counts; "No idea" does not
            if not re.match(r"\s*(yes|no|true|false)\s*(?:$|[.,!;:])", line, re.IGNORECASE):
                return None
    word = _first_word(line)
    if word in _YES:
        return True
    if word in _NO:
        return False
    return None


def verify_yesno(text: str, gold: Any) -> Verdict:
    try:
        got = read_yesno(text)
        if got is None:
            return UNPARSABLE
        return Verdict(float(got == to_bool(gold)), True, "yes" if got else "no")
    except Exception:  # never raise on model output
        return UNPARSABLE


# ---------------------------------------------------------------------------------------------
# Multiple choice letter


def to_letter(value: Any, n_choices: int = 4) -> str:
    """Gold answers: a letter ("b", "B") or a 0-based index. TaskError else."""
    letters = "ABCDEFGHIJ"[:n_choices]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < n_choices:
        return letters[value]
    if isinstance(value, str):
        v = value.strip().upper()
        if len(v) == 1 and v in letters:
            return v
        if v.isdigit() and 0 <= int(v) < n_choices:
            return letters[int(v)]
    raise TaskError(f"not a choice among {letters}: {value!r}")


def _norm_choice(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", s.lower()).strip()


def read_letter(
    text: str, n_choices: int = 4, choices: Sequence[str] | None = None
) -> str | None:
    """The model's letter after the last `Answer:` (`B`, `(B)`, `**B**`, `B) Paris`, `b`). A
    lower-case letter counts only when it stands alone (`Answer: a dog` is not `A`). When the
    text after the marker is not a letter but equals exactly one choice's text (case and
    punctuation ignored), that choice's letter. Without a marker: `\\boxed{B}`, or the one line
    of the form `B) ...` (a model answering in the choices' own format; two or more such lines
    are an echo of the list and unparsable), or a whole answer equal to one choice's text
    (`Bird.`). None else."""
    region = answer_region(text)
    if region is None:
        return None
    letters = "ABCDEFGHIJ"[:n_choices]
    line = last_answer_line(region)
    if line is None:
        boxed = last_boxed(region)
        if boxed is not None:
            line = strip_emphasis(boxed).replace("\\text{", "").replace("}", "")
        else:
            # the answer written as one choice line, `B) Bird`; several such lines are an
            # echo of the choice list, not an answer
            pattern = rf"\s*\(?([{letters}])\)\s"
            rows = [ln for ln in strip_emphasis(region).splitlines() if re.match(pattern, ln + " ")]
            if len(rows) != 1:
                return _choice_by_text(region, letters, choices)
            line = rows[0]
    s = line.strip().lstrip("([{\"'").strip()
    m = re.match(rf"([{letters}])(?![A-Za-z])", s)
    if m:
        return m.group(1)
    m = re.match(rf"([{letters.lower()}])(?=\s*(?:$|[).:,\]]))", s)
    if m:
        return m.group(1).upper()
    return _choice_by_text(s, letters, choices)


def _choice_by_text(s: str, letters: str, choices: Sequence[str] | None) -> str | None:
    """The letter of the one choice whose text equals `s` (case, punctuation ignored)."""
    if not choices:
        return None
    target = _norm_choice(strip_emphasis(s))
    hits = [i for i, c in enumerate(choices) if target and _norm_choice(c) == target]
    return letters[hits[0]] if len(hits) == 1 and hits[0] < len(letters) else None


def verify_letter(
    text: str, gold: Any, choices: Sequence[str] | None = None, n_choices: int | None = None
) -> Verdict:
    n = n_choices or (len(choices) if choices else 4)
    try:
        got = read_letter(text, n, choices)
        if got is None:
            return UNPARSABLE
        return Verdict(float(got == to_letter(gold, n)), True, got)
    except Exception:
        return UNPARSABLE


# ---------------------------------------------------------------------------------------------
# Integers and maths


_INT = re.compile(r"-?\d[\d,]*")


def to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise TaskError(f"not an integer answer: {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        s = value.strip().replace(",", "").strip("$ ")
        if re.fullmatch(r"-?\d+", s):
            return int(s)
    raise TaskError(f"not an integer answer: {value!r}")


def _int_in(s: str, last: bool) -> int | None:
    s = strip_emphasis(s).replace("\\,", "").replace("\\!", "")
    found = [m.group(0).replace(",", "") for m in _INT.finditer(s)]
    found = [f for f in found if f not in ("-", "")]
    if not found:
        return None
    return int(found[-1] if last else found[0])


def read_integer(text: str) -> int | None:
    """The last `\\boxed{N}`; else the first integer after the last `Answer:`; else the last
    integer in the answer region. Thousands separators (`1,000`, `1\\,000`) and leading zeros
    (`025`) are read as plain integers."""
    region = answer_region(text)
    if region is None:
        return None
    boxed = last_boxed(region)
    if boxed is not None:
        got = _int_in(boxed, last=False)
        if got is not None:
            return got
    line = last_answer_line(region)
    if line is not None:
        got = _int_in(line, last=False)
        if got is not None:
            return got
    return _int_in(region, last=True)


def verify_integer(text: str, gold: Any) -> Verdict:
    try:
        got = read_integer(text)
        if got is None:
            return UNPARSABLE
        return Verdict(float(got == to_int(gold)), True, str(got))
    except Exception:
        return UNPARSABLE


def _math_verify(region: str, gold: Any) -> Verdict | None:
    """math-verify on the tail of the answer region; None when it extracts nothing or fails."""
    try:
        from math_verify import parse, verify
    except ImportError:  # pragma: no cover - a core dependency
        return None
    # math-verify's timeout uses signal.alarm, which only works in the main thread.
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    try:
        gold_s = str(gold)
        gold_p = parse(gold_s if "$" in gold_s or "\\" in gold_s else f"${gold_s}$",
                       parsing_timeout=timeout)
        pred = parse(region[-_MATH_TAIL_CHARS:], parsing_timeout=timeout)
        if not pred or not gold_p:
            return None
        ok = verify(gold_p, pred, timeout_seconds=timeout)
        return Verdict(float(bool(ok)), True, str(pred[-1]))
    except Exception:
        return None


def verify_math(text: str, gold: Any) -> Verdict:
    """Equivalence through `math-verify` (boxed answers first, then the last expression); when
    math-verify extracts nothing or fails, the integer reading above (for integer golds)."""
    try:
        region = answer_region(text)
        if region is None:
            return UNPARSABLE
        # An explicit `Answer:` line is what our prompts ask for; give it to math-verify alone
        # so that a number in later chatter does not win over it.
        marks = list(_ANSWER_MARK.finditer(region))
        boxed = last_boxed(region)
        if boxed is not None:  # math-verify would read every box as a set: keep the last
            target = f"$\\boxed{{{boxed}}}$"
        elif not marks:
            target = region
        else:
            rest = region[marks[-1].end() :].replace("*", "").strip()
            target = rest.split("\n", 1)[0]
        verdict = _math_verify(target, gold)
        if verdict is not None:
            return verdict
        try:
            to_int(gold)
        except TaskError:
            return UNPARSABLE
        return verify_integer(text, gold)
    except Exception:
        return UNPARSABLE


# ---------------------------------------------------------------------------------------------
# By name (custom tasks)


def _yesno(q: Question, text: str) -> Verdict:
    return verify_yesno(text, q.answer)


def _letter(q: Question, text: str) -> Verdict:
    return verify_letter(text, q.answer, q.meta.get("choices"))


def _integer(q: Question, text: str) -> Verdict:
    return verify_integer(text, q.answer)


def _math(q: Question, text: str) -> Verdict:
    return verify_math(text, q.answer)


_BY_NAME: dict[str, Callable[[Question, str], Verdict]] = {
    "yesno": _yesno,
    "letter": _letter,
    "integer": _integer,
    "math": _math,
}


def get_verifier(name: str) -> Callable[[Question, str], Verdict]:
    """`(question, text) -> Verdict` for one of VERIFIER_NAMES."""
    if name not in _BY_NAME:
        raise TaskError(f"unknown verifier '{name}'; allowed: {', '.join(VERIFIER_NAMES)}")
    return _BY_NAME[name]
