"""Phase 0 on the real embedded model (SmolLM2-135M-Instruct): self-1c demos are sampled,
graded, stored and reused; the retry cap holds and a question without a correct demo is
reported; a tiny screen runs end to end.

Uses the session-scoped `smollm` fixture (tests/integration/conftest.py). Small on purpose:
a few questions, 48 new tokens, max_trials 4, G = 2; the demos are generated once per module.
"""

from __future__ import annotations

import pytest

from distillscope.config import (
    ContextConfig,
    RunConfig,
    SamplingConfig,
    ScreenConfig,
    TaskSpec,
    TeacherSpec,
)
from distillscope.contexts import DemoBank, DemoUnavailable
from distillscope.screening import run_screen
from distillscope.tasks.custom import CustomTask
from distillscope.tasks.quickstart import QuickstartTask
from distillscope.types import Question

pytestmark = pytest.mark.slow

MAX_TRIALS = 4
TOKENS = 48


class Counting:
    """Delegates to a LanguageModel and counts the samples it is asked for."""

    def __init__(self, model):
        self._model = model
        self.samples = 0

    def __getattr__(self, name):
        return getattr(self._model, name)

    def sample(self, requests, params):
        self.samples += sum(r.n for r in requests)
        return self._model.sample(requests, params)


def _questions():
    task = QuickstartTask()
    # easy items for a 135M model (high pass rates in the quickstart measurement)
    easy = task.load(TaskSpec(name="quickstart", ids=["qs-yn-03", "qs-yn-10", "qs-yn-11"]))
    # an integer question whose gold the model will not write: no correct demo can exist
    impossible = Question(
        "impossible",
        "What is 2 + 3? Put your final answer within \\boxed{}.",
        987654321,
        {"verifier": "integer"},
    )
    return task, easy, impossible


@pytest.fixture(scope="module")
def phase0(smollm, tmp_path_factory):
    """Demos for the easy items and the impossible one, generated once for this module."""
    quick, easy, impossible = _questions()
    model = Counting(smollm)
    cfg = ContextConfig(max_trials=MAX_TRIALS, demo_max_new_tokens=TOKENS)
    path = tmp_path_factory.mktemp("phase0") / "demos.parquet"
    bank = DemoBank(path)
    st = bank.generate(model, quick, easy, cfg, need_correct=1)
    st_imp = bank.generate(model, CustomTask(), [impossible], cfg, need_correct=1)[0]
    return quick, easy, impossible, model, cfg, bank, st, st_imp


def test_self_1c_demos_real_model(phase0):
    quick, easy, impossible, model, cfg, bank, st, st_imp = phase0
    first = model.samples
    assert first > 0

    # graded by the task's verifier; at most max_trials trials each; stop once satisfied
    for q, s in zip(easy, st, strict=True):
        demos = bank.demos(q.qid)
        assert 1 <= s.trials <= MAX_TRIALS and len(demos) == s.trials
        for d in demos:
            assert d.correct == (quick.verify(q, d.text).reward == 1.0)
        assert s.has_correct or s.trials == MAX_TRIALS
    assert any(s.has_correct for s in st), "no easy quickstart item got a correct demo"

    # the impossible question: exactly max_trials trials, reported, no context
    assert (st_imp.trials, st_imp.n_correct, st_imp.satisfied) == (MAX_TRIALS, 0, False)
    with pytest.raises(DemoUnavailable, match="impossible"):
        bank.context("self-1c", impossible, impossible.prompt, "student")

    # a self-1c context holds the first correct demo verbatim
    q, s = next((q, s) for q, s in zip(easy, st, strict=True) if s.has_correct)
    demo = next(d for d in bank.demos(q.qid) if d.correct)
    msg = bank.context("self-1c", q, quick.user_message(q), "student")
    assert msg.startswith(quick.user_message(q)) and f'"""\n{demo.text}\n"""' in msg

    # reuse: the same bank, and a bank re-read from disk, sample nothing
    bank.generate(model, quick, easy, cfg, need_correct=1)
    bank.generate(model, CustomTask(), [impossible], cfg, need_correct=1)
    reread = DemoBank(bank.path)
    again = reread.generate(model, quick, easy, cfg, need_correct=1)
    assert model.samples == first
    assert again == st and reread.demos(q.qid) == bank.demos(q.qid)


def test_tiny_screen_real_model(phase0, tmp_path):
    quick, easy, _, model, _, bank, st, _ = phase0
    config = RunConfig(
        teachers=[TeacherSpec(name="self-1c", mode="self-1c")],
        screen=ScreenConfig(G=2),
        context=ContextConfig(max_trials=MAX_TRIALS),
        sampling=SamplingConfig(max_new_tokens=TOKENS),
    )
    before = model.samples
    result = run_screen(model, quick, easy, config.teachers, config, bank, tmp_path / "out")
    # the demos come from the bank: only screening groups of G = 2 were sampled
    base = result.screen[result.screen["variant"] == "baseline"]
    one_c = result.screen[result.screen["variant"] == "self-1c"]
    assert model.samples - before == base["n"].sum() + one_c["n"].sum()
    assert list(base["n"]) == [2, 2, 2]
    assert list(one_c["available"]) == [s.has_correct for s in st]
    assert ((base["pass_rate"] >= 0) & (base["pass_rate"] <= 1)).all()
    assert set(result.tables) == {"table7", "table8", "table9"}
    for name in ("table7", "table8", "table9", "screen"):
        assert (tmp_path / "out" / f"{name}.csv").is_file()
