"""Teacher contexts: prompt layouts (figures 13-15), requirements, the DemoBank (fake model)."""

from __future__ import annotations

import random

import pyarrow.parquet as pq
import pytest

from distillscope.config import TEACHER_MODES, ContextConfig, ModelSpec, TeacherSpec
from distillscope.contexts import (
    CLOSING,
    WARNING,
    DemoBank,
    DemoUnavailable,
    requirements,
    source_name,
    stable_seed,
    summary_user_message,
    teacher_user_message,
)
from distillscope.schemas import DEMOS
from distillscope.tasks import verifiers as V
from distillscope.types import Completion, Question

USER = "Answer the following yes/no question.\nQuestion: Is it?"
C1 = "<think>\nIt says so.\n</think>\nIt is.\nAnswer: yes"
C2, C3 = "Second correct.\nAnswer: yes", "Third correct.\nAnswer: yes"
W1 = "<think>hmm</think>\nIt is not.\nAnswer: no"


# ---------------------------------------------------------------------------------------------
# Requirements and layouts


def test_requirements_of_every_mode():
    got = {m: (r.n_correct, r.n_wrong, r.summarized, r.external_source)
           for m in TEACHER_MODES for r in [requirements(m)]}
    assert got == {
        "external": (0, 0, False, False),
        "self-1c": (1, 0, False, False),
        "self-1c1w": (1, 1, False, False),
        "self-3c": (3, 0, False, False),
        "self-sum-1c": (1, 0, True, False),
        "self-sum-1c1w": (1, 1, True, False),
        "self-1c-src": (1, 0, False, True),
    }
    with pytest.raises(ValueError, match="unknown teacher mode"):
        requirements("self-2c")


def test_external_is_the_students_prompt():
    assert teacher_user_message("external", USER) == USER


@pytest.mark.parametrize("mode", ["self-1c", "self-1c-src"])
def test_self_1c_layout_figure_13(mode):
    expected = (
        f"{USER}\n\nDemonstration\n\nThis is a correct response to the question:\n\n"
        f'"""\n{C1}\n"""\n\n'
        "Now answer with a response of your own, including the thinking process:"
    )
    assert teacher_user_message(mode, USER, [C1]) == expected


def test_self_1c1w_layout_figure_14():
    msg = teacher_user_message("self-1c1w", USER, [C1], [W1])
    parts = [USER, "Demonstrations", WARNING, "Correct:", C1, "WRONG (do NOT imitate):", W1,
             CLOSING]
    positions = [msg.index(p) for p in parts]
    assert positions == sorted(positions)  # in this order
    assert "Some are CORRECT and some are WRONG -- the wrong responses contain mistakes and " \
           "should NOT be imitated." in msg
    assert f'"""\n{C1}\n"""' in msg and f'"""\n{W1}\n"""' in msg  # verbatim, quoted
    assert msg.endswith(CLOSING) and msg.startswith(USER)


def test_self_3c_layout():
    msg = teacher_user_message("self-3c", USER, [C1, C2, C3])
    assert msg.startswith(f"{USER}\n\nDemonstrations\n\n")
    positions = [msg.index(f'"""\n{c}\n"""') for c in (C1, C2, C3)]
    assert positions == sorted(positions)
    assert "WRONG" not in msg and msg.endswith(CLOSING)


def test_summarized_layouts_figure_15():
    msg = teacher_user_message("self-sum-1c", USER, ["Short: yes."])
    assert msg == (f'{USER}\n\nSummarized Demonstration\n\nThis is a correct response to the '
                   f'question:\n\n"""\nShort: yes.\n"""\n\n{CLOSING}')
    msg = teacher_user_message("self-sum-1c1w", USER, ["Short: yes."], ["Short: no."])
    assert msg.index("Summarized Demonstrations") < msg.index(WARNING)
    assert msg.index("Short: yes.") < msg.index("WRONG (do NOT imitate):") < msg.index(
        "Short: no.")


@pytest.mark.parametrize(("mode", "correct", "wrong"),
                         [("self-1c", [], []), ("self-1c", [C1, C2], []),
                          ("self-1c1w", [C1], []), ("self-3c", [C1], []),
                          ("external", [C1], [])])
def test_wrong_number_of_demos_is_refused(mode, correct, wrong):
    with pytest.raises(ValueError, match="takes"):
        teacher_user_message(mode, USER, correct, wrong)


def test_summary_prompt_contains_question_and_response():
    msg = summary_user_message(USER, C1)
    assert msg.startswith("Condense the response below to its key reasoning steps and its "
                          "final answer.")
    assert msg.index(USER) < msg.index(C1)


def test_stable_seed_is_pinned():
    # sha256-based: the same in every process and Python version (unlike hash()).
    parts = (0, "demo", "q1", "student")
    assert stable_seed(*parts, 3) == stable_seed(*parts, 3) != stable_seed(*parts, 4)
    assert stable_seed("a") == 5385491284112807882
    assert 0 <= stable_seed(1, 2, 3) < 2**63


def test_source_name():
    assert source_name(TeacherSpec(name="t", mode="self-1c")) == "student"
    t = TeacherSpec(name="t", mode="self-1c-src", source=ModelSpec(backend="toy", model="big"))
    assert source_name(t) == "toy:big"


# ---------------------------------------------------------------------------------------------
# The demo bank, with a fake model


class FakeModel:
    """A LanguageModel stand-in: the prompt is its characters; the answer is 'Answer: yes'
    with a probability read from the question's tag `[p=0.5]` (deterministic per seed)."""

    name = "fake"

    def __init__(self, reply=None):
        self.calls = 0
        self.requests: list = []
        self.reply = reply

    def encode_chat(self, messages):
        return [ord(c) for c in "\n".join(m["content"] for m in messages)]

    def decode(self, ids):
        return "".join(map(chr, ids))

    def sample(self, requests, params):
        self.calls += 1
        self.requests += list(requests)
        out = []
        for req in requests:
            prompt = self.decode(req.prefix_ids)
            comps = []
            for i in range(req.n):
                rng = random.Random(req.seed * 1000 + i)
                if self.reply is not None:
                    text = self.reply(prompt, rng)
                else:
                    p = float(prompt.split("[p=", 1)[1].split("]", 1)[0])
                    text = f"Reasoning {rng.random():.6f}\nAnswer: " + (
                        "yes" if rng.random() < p else "no")
                comps.append(Completion((), text, "eos"))
            out.append(comps)
        return out


class YesTask:
    name = "fake-yes"

    def user_message(self, q):
        return q.prompt

    def verify(self, q, text):
        return V.verify_yesno(text, True)


def qs(*ps):
    return [Question(f"q{i}", f"Is it? [p={p}]", True) for i, p in enumerate(ps)]


def test_generate_and_reuse(tmp_path):
    model, task, questions = FakeModel(), YesTask(), qs(0.5, 1.0)
    cfg = ContextConfig(max_trials=30)
    bank = DemoBank(tmp_path / "demos.parquet")
    st = bank.generate(model, task, questions, cfg, need_correct=1, need_wrong=1)
    assert all(s.satisfied for s in st[:1])
    assert model.calls > 0
    # every trial is a one-sample request at the demo temperature with its own derived seed
    assert all(r.n == 1 for r in model.requests)
    seeds = [r.seed for r in model.requests]
    assert len(set(seeds)) == len(seeds)
    assert set(seeds) == {d.seed for q in questions for d in bank.demos(q.qid)}
    assert all(d.seed == stable_seed(0, "demo", d.qid, "student", d.index)
               for q in questions for d in bank.demos(q.qid))

    # second call, same bank: nothing sampled
    calls = model.calls
    again = bank.generate(model, task, questions, cfg, need_correct=1, need_wrong=1)
    assert model.calls == calls and again == st
    # a new bank from the same file: nothing sampled, same demos
    reloaded = DemoBank(tmp_path / "demos.parquet")
    again = reloaded.generate(model, task, questions, cfg, need_correct=1, need_wrong=1)
    assert model.calls == calls and again == st
    assert reloaded.demos("q0") == bank.demos("q0")
    # stored as schemas.DEMOS, graded by the task's verifier
    table = pq.read_table(tmp_path / "demos.parquet")
    assert table.schema.equals(DEMOS, check_metadata=False)
    for row in table.to_pylist():
        assert row["correct"] == (V.verify_yesno(row["text"], True).reward == 1.0)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_demos_do_not_depend_on_batching(tmp_path):
    model, task, questions = FakeModel(), YesTask(), qs(0.3, 0.6)
    cfg = ContextConfig(max_trials=40)
    a, b = DemoBank(tmp_path / "a.parquet"), DemoBank(tmp_path / "b.parquet")
    a.generate(model, task, questions, cfg, need_correct=2, need_wrong=1, trials_per_round=1)
    b.generate(model, task, questions, cfg, need_correct=2, need_wrong=1, trials_per_round=7,
               requests_per_call=3)
    for q in questions:
        assert a.select(q.qid, "student", 2, 1) == b.select(q.qid, "student", 2, 1)
    # trials_per_round=1 stops at the first trial that meets the need
    for q in questions:
        demos = a.demos(q.qid)
        assert sum(d.correct for d in demos[:-1]) < 2 or sum(not d.correct
                                                             for d in demos[:-1]) < 1


def test_retry_cap_is_exact_and_failure_reported(tmp_path):
    model, task = FakeModel(), YesTask()
    questions = qs(0.0, 1.0)  # q0 is never right, q1 always
    cfg = ContextConfig(max_trials=7)
    bank = DemoBank(tmp_path / "demos.parquet")
    st = bank.generate(model, task, questions, cfg, need_correct=1, trials_per_round=4)
    by_q = {s.qid: s for s in st}
    assert by_q["q0"].trials == 7 and not by_q["q0"].satisfied and not by_q["q0"].has_correct
    assert by_q["q1"].trials == 4 and by_q["q1"].satisfied  # one round of 4, all stored
    q0_prompt = tuple(model.encode_chat([{"role": "user", "content": questions[0].prompt}]))
    assert sum(r.n for r in model.requests if r.prefix_ids == q0_prompt) == 7
    assert model.calls == 2  # 4 + 4 trials in one call, then the remaining 3 of q0
    with pytest.raises(DemoUnavailable, match="q0.*0 correct \\+ 7 wrong after 7 trials") as e:
        bank.context("self-1c", questions[0], questions[0].prompt, "student")
    assert (e.value.qid, e.value.mode) == ("q0", "self-1c")
    # at the cap nothing more is sampled, even when asked again
    calls = model.calls
    bank.generate(model, task, questions, cfg, need_correct=1)
    assert model.calls == calls
    # a raised cap resumes at trial 7
    bank.generate(model, task, questions, ContextConfig(max_trials=9), need_correct=1)
    assert [d.index for d in bank.demos("q0")] == list(range(9))


def test_wrong_demo_missing_for_an_always_right_question(tmp_path):
    model, task, questions = FakeModel(), YesTask(), qs(1.0)
    bank = DemoBank(tmp_path / "demos.parquet")
    (st,) = bank.generate(model, task, questions, ContextConfig(max_trials=5), need_correct=1,
                          need_wrong=1)
    assert st.has_correct and not st.satisfied and st.trials == 5
    q = questions[0]
    msg = bank.context("self-1c", q, q.prompt, "student")
    assert msg.startswith(q.prompt) and bank.demos("q0")[0].text in msg
    with pytest.raises(DemoUnavailable, match="1 wrong"):
        bank.context("self-1c1w", q, q.prompt, "student")


def test_context_uses_lowest_trials_verbatim(tmp_path):
    model, task, questions = FakeModel(), YesTask(), qs(0.5)
    bank = DemoBank(tmp_path / "demos.parquet")
    bank.generate(model, task, questions, ContextConfig(max_trials=60), need_correct=3,
                  need_wrong=1)
    q = questions[0]
    good = [d for d in bank.demos("q0") if d.correct][:3]
    bad = [d for d in bank.demos("q0") if not d.correct][:1]
    assert bank.context("self-3c", q, q.prompt, "student") == teacher_user_message(
        "self-3c", q.prompt, [d.text for d in good])
    assert bank.context("self-1c1w", q, q.prompt, "student") == teacher_user_message(
        "self-1c1w", q.prompt, [good[0].text], [bad[0].text])
    assert bank.context("external", q, q.prompt, "student") == q.prompt


def test_summaries(tmp_path):
    model, task, questions = FakeModel(), YesTask(), qs(0.5, 0.0)
    summarizer = FakeModel(reply=lambda prompt, rng: "<think>condensing</think>\nKey: yes")
    bank = DemoBank(tmp_path / "demos.parquet")
    bank.generate(model, task, questions, ContextConfig(max_trials=20), need_correct=1,
                  need_wrong=1)
    q = questions[0]
    with pytest.raises(DemoUnavailable, match="no summary"):
        bank.context("self-sum-1c1w", q, q.prompt, "student")
    n = bank.summarize(summarizer, task, questions, ContextConfig(), n_correct=1, n_wrong=1)
    assert n == 2  # q0's correct and wrong demo; q1 has no correct demo and is skipped
    assert all(r.n == 1 for r in summarizer.requests)
    assert "Condense the response" in summarizer.decode(summarizer.requests[0].prefix_ids)
    msg = bank.context("self-sum-1c1w", q, q.prompt, "student")
    assert msg == teacher_user_message("self-sum-1c1w", q.prompt, ["Key: yes"], ["Key: yes"])
    # reused, also from disk
    assert DemoBank(tmp_path / "demos.parquet").summarize(
        summarizer, task, questions, ContextConfig(), n_correct=1, n_wrong=1) == 0
    kinds = [r["kind"] for r in pq.read_table(tmp_path / "demos.parquet").to_pylist()]
    assert kinds.count("summary") == 2


def test_sources_are_kept_apart(tmp_path):
    task, questions = YesTask(), qs(0.5)
    student, other = FakeModel(), FakeModel(reply=lambda prompt, rng: "Answer: yes")
    bank = DemoBank(tmp_path / "demos.parquet")
    bank.generate(student, task, questions, ContextConfig(max_trials=10))
    bank.generate(other, task, questions, ContextConfig(max_trials=10), source="toy:big")
    assert bank.demos("q0", "toy:big")[0].text == "Answer: yes"
    assert bank.demos("q0", "toy:big")[0].seed != bank.demos("q0", "student")[0].seed
    q = questions[0]
    assert "Answer: yes" in bank.context("self-1c-src", q, q.prompt, "toy:big")
