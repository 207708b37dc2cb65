"""Teacher contexts (phase 0, appendix E.9): prompt layouts, demonstrations and summaries.

A teacher configuration (`TeacherSpec.mode`) decides what the teacher sees in its user turn:

    external       the student's own user message (the teacher is another model)
    self-1c        + 1 correct demonstration                        (figure 13)
    self-1c1w      + 1 correct and 1 wrong, with the WRONG warning  (figure 14)
    self-3c        + 3 correct demonstrations
    self-sum-1c    + 1 summarised correct demonstration             (figure 15)
    self-sum-1c1w  + 1 summarised correct and 1 summarised wrong
    self-1c-src    + 1 correct demonstration written by TeacherSpec.source (figure 13)

Demonstrations are appended to the question's user message, before the chat template is
applied, then a closing line asks for an own response including the thinking process. The
figures put the demos in `\"\"\"` quotes; the ``` fences that figures 14-15 show around them
are how the paper typesets code, and are not reproduced. Layouts for `self-3c` and
`self-sum-1c1w` are not shown in the paper; they follow figures 13-15 (plural heading, one
quoted block per demo, the WRONG warning whenever a wrong demo is present).

Demonstrations are included VERBATIM, thinking blocks included, as in the paper ("prepended
verbatim"; the closing line asks for a response "including the thinking process", which the
demo then exemplifies). Summaries are the summariser's answer with its own thinking removed.

`DemoBank` generates demos once and reuses them: sampled from the context source model at
tau_demo (ContextConfig.demo_temperature), graded by the task's verifier, one trial per
`SampleRequest` with a seed derived from (run seed, qid, source, trial) by a stable hash, so a
trial's text does not depend on how trials were batched. Trials continue in order until the
needed correct / wrong demos exist or ContextConfig.max_trials trials were spent, whichever
comes first; every trial is stored (Parquet, schemas.DEMOS, atomic rewrite after each round
of trials). The demos used are the lowest-numbered correct / wrong trials. A question whose needs
are unmet at the cap is reported (`DemoStatus.satisfied` False; `context()` raises
`DemoUnavailable`), never dropped silently.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from distillscope.config import TEACHER_MODES
from distillscope.schemas import DEMOS
from distillscope.tasks.verifiers import answer_region
from distillscope.types import Question, SampleRequest, SamplingParams

if TYPE_CHECKING:
    from distillscope.config import ContextConfig, TeacherSpec
    from distillscope.models.base import LanguageModel
    from distillscope.tasks.base import Task

Progress = Callable[[str, int, int], None]
"""progress(stage, done, total): called after each model call of a long stage."""

STUDENT_SOURCE = "student"

# ---------------------------------------------------------------------------------------------
# Requirements and prompt layouts


@dataclass(frozen=True)
class Requirements:
    """What a teacher mode needs from phase 0."""

    n_correct: int
    n_wrong: int
    summarized: bool  # the demos are shown as summaries
    external_source: bool  # the demos come from TeacherSpec.source, not the student

    @property
    def needs_demos(self) -> bool:
        return self.n_correct + self.n_wrong > 0


_REQUIREMENTS = {
    "external": Requirements(0, 0, False, False),
    "self-1c": Requirements(1, 0, False, False),
    "self-1c1w": Requirements(1, 1, False, False),
    "self-3c": Requirements(3, 0, False, False),
    "self-sum-1c": Requirements(1, 0, True, False),
    "self-sum-1c1w": Requirements(1, 1, True, False),
    "self-1c-src": Requirements(1, 0, False, True),
}
assert set(_REQUIREMENTS) == set(TEACHER_MODES)


def requirements(mode: str) -> Requirements:
    if mode not in _REQUIREMENTS:
        raise ValueError(f"unknown teacher mode '{mode}'; allowed: {', '.join(TEACHER_MODES)}")
    return _REQUIREMENTS[mode]


CLOSING = "Now answer with a response of your own, including the thinking process:"
WARNING = (
    "Below are example responses to the question. Some are CORRECT and some are WRONG -- the "
    "wrong responses contain mistakes and should NOT be imitated."
)


def _quote(text: str) -> str:
    return f'"""\n{text}\n"""'


def teacher_user_message(
    mode: str, user_message: str, correct: Sequence[str] = (), wrong: Sequence[str] = ()
) -> str:
    """The teacher's user turn for `mode`: the question's user message followed by the demos
    (summaries for self-sum-*), exactly as many as `requirements(mode)` asks for."""
    req = requirements(mode)
    if (len(correct), len(wrong)) != (req.n_correct, req.n_wrong):
        raise ValueError(
            f"mode '{mode}' takes {req.n_correct} correct and {req.n_wrong} wrong demos, "
            f"got {len(correct)} and {len(wrong)}"
        )
    if not req.needs_demos:
        return user_message
    prefix = "Summarized " if req.summarized else ""
    if not wrong and len(correct) == 1:  # figures 13 and 15
        body = [
            f"{prefix}Demonstration",
            "This is a correct response to the question:",
            _quote(correct[0]),
        ]
    elif not wrong:  # self-3c
        body = [f"{prefix}Demonstrations", "These are correct responses to the question:"]
        for i, text in enumerate(correct, 1):
            body += [f"Correct ({i}):", _quote(text)]
    else:  # figure 14
        body = [f"{prefix}Demonstrations", WARNING]
        for text in correct:
            body += ["Correct:", _quote(text)]
        for text in wrong:
            body += ["WRONG (do NOT imitate):", _quote(text)]
    return "\n\n".join([user_message.rstrip(), *body, CLOSING])


SUMMARY_INSTRUCTION = (
    "Condense the response below to its key reasoning steps and its final answer. Keep the "
    "final answer exactly as the response gives it, in the same format, on the last line. "
    "Write only the condensed response."
)


def summary_user_message(user_message: str, response: str) -> str:
    """The summariser's user turn: instruction, the question, the response to condense."""
    return (
        f"{SUMMARY_INSTRUCTION}\n\nQuestion:\n{_quote(user_message.rstrip())}\n\n"
        f"Response:\n{_quote(response)}"
    )


def chat(user: str, system_prompt: str | None) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*msgs, {"role": "user", "content": user}]


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from the parts' string forms (sha256; stable across processes, unlike
    Python's hash())."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def source_name(teacher: TeacherSpec) -> str:
    """Bank key of the model that writes a teacher's demos: "student", or the source model."""
    if requirements(teacher.mode).external_source:
        assert teacher.source is not None  # TeacherSpec validates this
        return f"{teacher.source.backend}:{teacher.source.model}"
    return STUDENT_SOURCE


# ---------------------------------------------------------------------------------------------
# The demo bank


@dataclass(frozen=True)
class Demo:
    qid: str
    source: str
    index: int  # trial number
    correct: bool
    text: str
    seed: int


@dataclass(frozen=True)
class DemoStatus:
    """Where one (question, source) stands after generation."""

    qid: str
    source: str
    trials: int
    n_correct: int
    n_wrong: int
    need_correct: int
    need_wrong: int

    @property
    def satisfied(self) -> bool:
        return self.n_correct >= self.need_correct and self.n_wrong >= self.need_wrong

    @property
    def has_correct(self) -> bool:
        return self.n_correct > 0


class DemoUnavailable(LookupError):
    """The demos (or summaries) a teacher context needs do not exist for this question."""

    def __init__(self, qid: str, source: str, mode: str, reason: str) -> None:
        super().__init__(f"question '{qid}', source '{source}', mode '{mode}': {reason}")
        self.qid, self.source, self.mode, self.reason = qid, source, mode, reason


class DemoBank:
    """Demonstrations and summaries per (question, source), stored in one Parquet file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._demos: dict[tuple[str, str], dict[int, Demo]] = {}
        self._summaries: dict[tuple[str, str, int], tuple[str, int]] = {}
        if self.path.exists():
            import pyarrow as pa
            import pyarrow.parquet as pq

            from distillscope.store import StoreError

            try:
                rows = pq.read_table(self.path).to_pylist()
                for row in rows:
                    self._add_row(row)
            except (pa.ArrowException, OSError, KeyError, TypeError, ValueError) as err:
                first = str(err).splitlines()[0] if str(err) else ""
                raise StoreError(
                    f"{self.path} cannot be read ({type(err).__name__}: {first}): it holds the "
                    "self-* teachers' demonstrations the stored scores were made with; restore "
                    "it, or use a new --out") from None

    # -- reading ------------------------------------------------------------------------------
    def _add_row(self, row: dict) -> None:
        key = (row["qid"], row["source"])
        if row["kind"] == "demo":
            demo = Demo(row["qid"], row["source"], int(row["index"]), bool(row["correct"]),
                        row["text"], int(row["seed"]))
            self._demos.setdefault(key, {})[demo.index] = demo
        else:
            self._summaries[(*key, int(row["index"]))] = (row["text"], int(row["seed"]))

    def demos(self, qid: str, source: str = STUDENT_SOURCE) -> list[Demo]:
        """Every stored trial, in trial order."""
        trials = self._demos.get((qid, source), {})
        return [trials[i] for i in sorted(trials)]

    def trials(self, qid: str, source: str = STUDENT_SOURCE) -> int:
        return len(self._demos.get((qid, source), {}))

    def status(self, qid: str, source: str, need_correct: int, need_wrong: int) -> DemoStatus:
        demos = self.demos(qid, source)
        n_correct = sum(d.correct for d in demos)
        return DemoStatus(qid, source, len(demos), n_correct, len(demos) - n_correct,
                          need_correct, need_wrong)

    def select(
        self, qid: str, source: str, n_correct: int, n_wrong: int
    ) -> tuple[list[Demo], list[Demo]] | None:
        """The lowest-numbered `n_correct` correct and `n_wrong` wrong trials; None if short."""
        demos = self.demos(qid, source)
        good = [d for d in demos if d.correct][:n_correct]
        bad = [d for d in demos if not d.correct][:n_wrong]
        if len(good) < n_correct or len(bad) < n_wrong:
            return None
        return good, bad

    def summary(self, qid: str, source: str, index: int) -> str | None:
        got = self._summaries.get((qid, source, index))
        return got[0] if got else None

    def context(self, mode: str, question: Question, user_message: str, source: str) -> str:
        """The teacher's user message for `mode`; DemoUnavailable when its demos are missing."""
        req = requirements(mode)
        if not req.needs_demos:
            return user_message
        chosen = self.select(question.qid, source, req.n_correct, req.n_wrong)
        if chosen is None:
            st = self.status(question.qid, source, req.n_correct, req.n_wrong)
            raise DemoUnavailable(
                question.qid, source, mode,
                f"needs {req.n_correct} correct + {req.n_wrong} wrong demos, have "
                f"{st.n_correct} correct + {st.n_wrong} wrong after {st.trials} trials",
            )
        good, bad = chosen
        if req.summarized:
            texts = []
            for d in [*good, *bad]:
                s = self.summary(question.qid, source, d.index)
                if s is None:
                    raise DemoUnavailable(question.qid, source, mode,
                                          f"demo {d.index} has no summary yet")
                texts.append(s)
            return teacher_user_message(mode, user_message, texts[: len(good)],
                                        texts[len(good) :])
        return teacher_user_message(
            mode, user_message, [d.text for d in good], [d.text for d in bad]
        )

    # -- writing ------------------------------------------------------------------------------
    def save(self) -> None:
        """Rewrite the whole file atomically (temp file, fsync, os.replace)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = []
        for key in sorted(self._demos):
            for d in self.demos(*key):
                rows.append({"qid": d.qid, "source": d.source, "kind": "demo", "index": d.index,
                             "correct": d.correct, "text": d.text, "seed": d.seed})
        for (qid, source, index) in sorted(self._summaries):
            text, seed = self._summaries[(qid, source, index)]
            demo = self._demos.get((qid, source), {}).get(index)
            rows.append({"qid": qid, "source": source, "kind": "summary", "index": index,
                         "correct": bool(demo.correct) if demo else None, "text": text,
                         "seed": seed})
        table = pa.Table.from_pylist(rows, schema=DEMOS)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                pq.write_table(table, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def generate(
        self,
        model: LanguageModel,
        task: Task,
        questions: Sequence[Question],
        config: ContextConfig,
        *,
        source: str = STUDENT_SOURCE,
        need_correct: int = 1,
        need_wrong: int = 0,
        max_new_tokens: int = 512,
        system_prompt: str | None = None,
        seed: int = 0,
        trials_per_round: int = 4,
        requests_per_call: int = 64,
        progress: Progress | None = None,
    ) -> list[DemoStatus]:
        """Sample demos from `model` until each question has `need_correct` correct and
        `need_wrong` wrong trials, or `config.max_trials` trials were spent. Questions already
        satisfied (or at the cap) sample nothing. Returns one status per question, in order."""
        params = SamplingParams(
            temperature=config.demo_temperature,
            max_new_tokens=config.demo_max_new_tokens or max_new_tokens,
        )
        by_id = {q.qid: q for q in questions}
        prefixes: dict[str, tuple[int, ...]] = {}

        def pending() -> list[str]:
            out = []
            for q in questions:
                st = self.status(q.qid, source, need_correct, need_wrong)
                if not st.satisfied and st.trials < config.max_trials:
                    out.append(q.qid)
            return out

        total = len(pending())
        todo = pending()
        while todo:
            jobs: list[tuple[str, int, SampleRequest]] = []
            for qid in todo:
                if qid not in prefixes:
                    user = task.user_message(by_id[qid])
                    prefixes[qid] = tuple(model.encode_chat(chat(user, system_prompt)))
                start = self.trials(qid, source)
                for trial in range(start, min(start + trials_per_round, config.max_trials)):
                    s = stable_seed(seed, "demo", qid, source, trial)
                    jobs.append((qid, trial, SampleRequest(prefixes[qid], 1, s)))
            for lo in range(0, len(jobs), requests_per_call):
                chunk = jobs[lo : lo + requests_per_call]
                outs = model.sample([j[2] for j in chunk], params)
                for (qid, trial, req), comps in zip(chunk, outs, strict=True):
                    text = comps[0].text
                    ok = task.verify(by_id[qid], text).reward >= 1.0
                    self._add_row({"qid": qid, "source": source, "kind": "demo", "index": trial,
                                   "correct": ok, "text": text, "seed": req.seed})
            self.save()  # once per round: a killed run loses at most this round's trials
            todo = pending()
            if progress is not None:
                progress(f"demos ({source})", total - len(todo), total)
        return [self.status(q.qid, source, need_correct, need_wrong) for q in questions]

    def summarize(
        self,
        summarizer: LanguageModel,
        task: Task,
        questions: Sequence[Question],
        config: ContextConfig,
        *,
        source: str = STUDENT_SOURCE,
        n_correct: int = 1,
        n_wrong: int = 0,
        max_new_tokens: int = 512,
        system_prompt: str | None = None,
        seed: int = 0,
        requests_per_call: int = 64,
        progress: Progress | None = None,
    ) -> int:
        """Summarise the demos a summarised mode uses (the selected `n_correct` correct and
        `n_wrong` wrong trials) where no summary exists yet. Questions without those demos are
        skipped (their status says why). Returns the number of summaries written."""
        params = SamplingParams(
            temperature=config.demo_temperature,
            max_new_tokens=config.demo_max_new_tokens or max_new_tokens,
        )
        jobs: list[tuple[Demo, SampleRequest]] = []
        for q in questions:
            chosen = self.select(q.qid, source, n_correct, n_wrong)
            if chosen is None:
                continue
            for d in [*chosen[0], *chosen[1]]:
                if self.summary(q.qid, source, d.index) is not None:
                    continue
                user = summary_user_message(task.user_message(q), d.text)
                ids = tuple(summarizer.encode_chat(chat(user, system_prompt)))
                jobs.append((d, SampleRequest(ids, 1, stable_seed(seed, "summary", q.qid,
                                                                   source, d.index))))
        for lo in range(0, len(jobs), requests_per_call):
            chunk = jobs[lo : lo + requests_per_call]
            outs = summarizer.sample([j[1] for j in chunk], params)
            for (d, req), comps in zip(chunk, outs, strict=True):
                self._add_row({"qid": d.qid, "source": source, "kind": "summary",
                               "index": d.index, "correct": d.correct,
                               "text": strip_thinking(comps[0].text), "seed": req.seed})
            self.save()
            if progress is not None:
                progress(f"summaries ({source})", min(lo + requests_per_call, len(jobs)),
                         len(jobs))
        return len(jobs)


def strip_thinking(text: str) -> str:
    """The answer after a thinking block; a block cut off unfinished keeps its content (a
    summary that never left its thinking is still the best text there is)."""
    region = answer_region(text)
    if region is None:
        region = text.split("<think>", 1)[-1]
    return region.strip()
