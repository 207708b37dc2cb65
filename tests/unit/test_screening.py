"""Screening: difficulty bins, the intersection filter and tables 7-9 on a fake model whose
pass rates are known exactly."""

from __future__ import annotations

import math
import random

import pandas as pd
import pyarrow.parquet as pq
import pytest
from test_contexts import YesTask  # a yes/no task whose answer is always yes

from distillscope.config import (
    ContextConfig,
    ModelSpec,
    RunConfig,
    SamplingConfig,
    ScreenConfig,
    TeacherSpec,
)
from distillscope.contexts import DemoBank
from distillscope.schemas import SCREEN
from distillscope.screening import (
    analysis_questions,
    difficulty,
    run_screen,
    table8,
    table9,
    to_markdown,
    write_tables,
)
from distillscope.types import Completion, Question

G = 10
# qid -> (baseline pass rate, chance that a single demo sample is right)
STUDENT = {"e1": (0.9, 0.5), "e2": (1.0, 1.0), "m1": (0.5, 0.5), "m2": (0.5, 0.5),
           "h1": (0.1, 0.5), "z": (0.0, 0.0)}
SOURCE_FAILS = {"m2", "z"}  # the other source never writes a correct demo for these


class RateModel:
    """Groups of n samples: exactly round(p * n) are right, p read from the prompt (the
    variant's markers decide p). Single samples (demos): right with a seeded chance."""

    name = "rate"

    def __init__(self, demo_fails=frozenset()):
        self.calls: list[int] = []  # number of requests per call
        self.group_sizes: list[int] = []
        self.demo_fails = demo_fails

    def encode_chat(self, messages):
        return [ord(c) for c in "\n".join(m["content"] for m in messages)]

    def decode(self, ids):
        return "".join(map(chr, ids))

    def rate(self, prompt):
        qid = prompt.split("[", 1)[1].split("]", 1)[0]
        base, demo = STUDENT[qid]
        if "Condense the response" in prompt:
            return None, qid
        if "WRONG (do NOT imitate)" in prompt:
            return base, qid
        if "Summarized Demonstration" in prompt:
            return 0.8, qid
        if "Demonstration" in prompt:
            return 1.0, qid
        return base, qid

    def sample(self, requests, params):
        self.calls.append(len(requests))
        out = []
        for req in requests:
            p, qid = self.rate(self.decode(req.prefix_ids))
            self.group_sizes.append(req.n)
            comps = []
            for i in range(req.n):
                if p is None:
                    text = "Key steps.\nAnswer: yes"
                elif req.n == 1:
                    demo_p = 0.0 if qid in self.demo_fails else STUDENT[qid][1]
                    ok = random.Random(req.seed).random() < demo_p
                    text = "Answer: " + ("yes" if ok else "no")
                else:
                    text = "Answer: " + ("yes" if i < round(p * req.n) else "no")
                comps.append(Completion((), text, "eos"))
            out.append(comps)
        return out




def questions():
    return [Question(qid, f"Is it? [{qid}]", True) for qid in STUDENT]


@pytest.mark.parametrize(("p", "bin_"), [(1.0, "easy"), (0.8, "easy"), (0.79, "medium"),
                                         (0.25, "medium"), (0.2499, "hard"), (0.01, "hard"),
                                         (0.0, "extremely_hard")])
def test_difficulty_bins(p, bin_):
    assert difficulty(p) == bin_


def test_analysis_questions_filter():
    screen = pd.DataFrame({"qid": ["a", "b", "c", "d"], "variant": ["baseline"] * 4,
                           "pass_rate": [0.5, 0.0, 0.9, 0.3]})
    demos = {"student": {"a", "b", "c"}, "src": {"a", "b", "d"}}
    assert analysis_questions(screen, demos, require_all_sources=True) == ["a"]
    assert analysis_questions(screen, demos, require_all_sources=False) == ["a", "c", "d"]


TEACHERS = [
    TeacherSpec(name="self-1c", mode="self-1c"),
    TeacherSpec(name="self-1c1w", mode="self-1c1w"),
    TeacherSpec(name="self-sum-1c", mode="self-sum-1c"),
    TeacherSpec(name="self-1c-src", mode="self-1c-src",
                source=ModelSpec(backend="toy", model="big")),
    TeacherSpec(name="ext", mode="external", model=ModelSpec(backend="toy", model="other")),
]


def config(**screen):
    return RunConfig(teachers=TEACHERS, screen=ScreenConfig(G=G, **screen),
                     context=ContextConfig(max_trials=12),
                     sampling=SamplingConfig(max_new_tokens=8, batch_groups=8))


@pytest.fixture()
def screened(tmp_path):
    student, source = RateModel(), RateModel(demo_fails=SOURCE_FAILS)
    bank = DemoBank(tmp_path / "demos.parquet")
    result = run_screen(student, YesTask(), questions(), TEACHERS, config(), bank,
                        tmp_path / "out", sources={"self-1c-src": source})
    return result, student, source, bank, tmp_path


def test_screen_table(screened):
    result, *_ = screened
    s = result.screen
    assert list(s.columns) == SCREEN.names
    base = s[s["variant"] == "baseline"].set_index("qid")
    assert base["pass_rate"].to_dict() == {q: STUDENT[q][0] for q in STUDENT}
    assert (base["n"] == G).all()
    assert result.difficulty == {"e1": "easy", "e2": "easy", "m1": "medium", "m2": "medium",
                                 "h1": "hard", "z": "extremely_hard"}
    # intersection (correct demo under both sources) minus extremely hard
    assert result.analysis_qids == ["e1", "e2", "m1", "h1"]
    assert result.skipped == ["ext"]
    one_c = s[s["variant"] == "self-1c"].set_index("qid")
    assert one_c.loc["e1", "pass_rate"] == 1.0 and one_c.loc["e1", "n"] == G
    # outside the analysis set: not screened (n = 0), availability still recorded
    assert one_c.loc["m2", "n"] == 0 and bool(one_c.loc["m2", "available"])
    assert one_c.loc["z", "n"] == 0 and not bool(one_c.loc["z", "available"])
    assert math.isnan(one_c.loc["z", "pass_rate"])


def test_table7(screened):
    result, *_ = screened
    t7 = result.tables["table7"]
    assert t7.to_dict("records") == [
        {"source": "student", "n_questions": 6, "with_correct_demo": 5},
        {"source": "toy:big", "n_questions": 6, "with_correct_demo": 4},
        {"source": "all sources", "n_questions": 6, "with_correct_demo": 4},
    ]


def test_table8(screened):
    result, *_ = screened
    t8 = result.tables["table8"].set_index("variant")
    assert list(t8.index) == ["baseline", "self-1c", "self-1c1w", "self-sum-1c", "self-1c-src"]
    assert t8.loc["baseline", "acc"] == 62.5 and t8.loc["baseline", "n"] == 4
    assert (t8.loc["self-1c", "acc"], t8.loc["self-1c", "delta"]) == (100.0, 37.5)
    # e2 is always right: no wrong demo in 12 trials, so self-1c1w runs on 3 questions,
    # compared with the baseline on those 3
    assert t8.loc["self-1c1w", "n"] == 3
    assert t8.loc["self-1c1w", "baseline_acc"] == 50.0 and t8.loc["self-1c1w", "delta"] == 0.0
    assert (t8.loc["self-sum-1c", "acc"], t8.loc["self-sum-1c", "delta"]) == (80.0, 17.5)
    assert (t8.loc["self-1c-src", "acc"], t8.loc["self-1c-src", "n"]) == (100.0, 4)
    assert any(e.qid == "e2" and e.mode == "self-1c1w" for e in result.unavailable)


def test_table9(screened):
    result, *_ = screened
    t9 = result.tables["table9"].set_index("variant")
    b = t9.loc["baseline"]
    assert (b["hard_acc"], b["hard_n"], b["medium_acc"], b["medium_n"]) == (10.0, 1, 50.0, 1)
    assert (b["easy_acc"], b["easy_n"], b["all_acc"], b["all_n"]) == (95.0, 2, 62.5, 4)
    assert math.isnan(b["delta"])
    c = t9.loc["self-1c"]
    assert (c["hard_acc"], c["easy_n"], c["all_acc"], c["delta"]) == (100.0, 2, 100.0, 37.5)
    w = t9.loc["self-1c1w"]
    assert (w["easy_acc"], w["easy_n"], w["all_n"]) == (90.0, 1, 3)


def test_model_calls_are_batched_and_demos_reused(screened):
    result, student, source, bank, tmp_path = screened
    # screening groups: G samples each, several groups per call (batch_groups = 8)
    groups = [n for n in student.group_sizes if n > 1]
    # baseline on 6 questions; 4 variants on the 4 analysis questions, self-1c1w on 3 of them
    assert set(groups) == {G} and len(groups) == 6 + 4 + 3 + 4 + 4
    assert max(student.calls) > 1
    assert source.group_sizes and set(source.group_sizes) == {1}  # the source writes demos only
    # again with the same bank file: no demo or summary is sampled again
    student2, source2 = RateModel(), RateModel(demo_fails=SOURCE_FAILS)
    again = run_screen(student2, YesTask(), questions(), TEACHERS, config(),
                       DemoBank(tmp_path / "demos.parquet"), None,
                       sources={"self-1c-src": source2})
    assert set(student2.group_sizes) == {G} and source2.calls == []
    pd.testing.assert_frame_equal(again.screen, result.screen)


def test_written_files(screened):
    result, _, _, _, tmp_path = screened
    out = tmp_path / "out"
    for name in ("table7", "table8", "table9"):
        back = pd.read_csv(out / f"{name}.csv")
        assert list(back.columns) == list(result.tables[name].columns)
        md = (out / f"{name}.md").read_text()
        assert md.startswith("| " + " | ".join(result.tables[name].columns) + " |")
    assert pq.read_table(out / "screen.parquet").schema.equals(SCREEN, check_metadata=False)
    status = pd.read_csv(out / "demo_status.csv")
    z = status[(status["qid"] == "z") & (status["source"] == "student")].iloc[0]
    assert (z["trials"], z["n_correct"], bool(z["satisfied"])) == (12, 0, False)


def test_missing_source_model_is_named(tmp_path):
    with pytest.raises(ValueError, match="self-1c-src"):
        run_screen(RateModel(), YesTask(), questions(), TEACHERS, config(),
                   DemoBank(tmp_path / "d.parquet"), None)


def test_no_intersection_filter(tmp_path):
    result = run_screen(RateModel(), YesTask(), questions(), TEACHERS,
                        config(require_all_sources=False), DemoBank(tmp_path / "d.parquet"),
                        None, sources={"self-1c-src": RateModel(demo_fails=SOURCE_FAILS)})
    assert result.analysis_qids == ["e1", "e2", "m1", "m2", "h1"]
    t8 = result.tables["table8"].set_index("variant")
    assert t8.loc["self-1c-src", "n"] == 4  # m2 has no source demo: not available there


def test_tables_pure_and_markdown(tmp_path):
    screen = pd.DataFrame([
        {"qid": "a", "variant": "baseline", "n": 4, "n_correct": 1, "pass_rate": 0.25,
         "available": True},
        {"qid": "a", "variant": "v", "n": 4, "n_correct": 4, "pass_rate": 1.0,
         "available": True},
        {"qid": "b", "variant": "baseline", "n": 4, "n_correct": 4, "pass_rate": 1.0,
         "available": True},
        {"qid": "b", "variant": "v", "n": 0, "n_correct": 0, "pass_rate": float("nan"),
         "available": False},
    ])
    t8 = table8(screen, ["a", "b"], ["v"])
    assert t8.to_dict("records")[1] == {"variant": "v", "n": 1, "acc": 100.0,
                                        "baseline_acc": 25.0, "delta": 75.0}
    t9 = table9(screen, {"a": "medium", "b": "easy"}, ["a", "b"], ["v"])
    assert t9.loc[0, "easy_n"] == 1 and t9.loc[1, "easy_n"] == 0
    assert math.isnan(t9.loc[1, "easy_acc"])
    md = to_markdown(t8)
    assert md.splitlines()[1] == "|---|---|---|---|---|"
    assert "| baseline | 2 | 62.5 | — | — |" in md
    paths = write_tables({"t8": t8}, tmp_path / "x")
    assert sorted(p.name for p in paths) == ["t8.csv", "t8.md"]
