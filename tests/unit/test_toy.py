"""The toy backend and task (docs/method.md#the-synthetic-world): protocol, reproducible sampling,
exact dynamic
programming against Monte Carlo, scoring against the world's distribution, and the signs of the
helpful / harmful / irrelevant teachers."""

from __future__ import annotations

import numpy as np
import pytest

from distillscope.config import ModelSpec, TaskSpec
from distillscope.gradients import cosine, gkd_gradient, ideal_gradient
from distillscope.models.base import LanguageModel, ModelError, check_same_tokenizer
from distillscope.models.registry import load_model
from distillscope.models.toy import ToyModel, ToyWorld, WorldParams
from distillscope.tasks import get_task
from distillscope.tasks.base import Task, TaskError
from distillscope.types import SampleRequest, SamplingParams

SP = SamplingParams(max_new_tokens=64)


def ctx_of(model, index, demo=False):
    text = f"Question toy:{index}" + ("\nDemonstration: a b c" if demo else "")
    messages = [{"role": "system", "content": "hi"}, {"role": "user", "content": text}]
    return model.encode_chat(messages)


@pytest.fixture(scope="module")
def student():
    return ToyModel()


# ---------------------------------------------------------------------------------------------
# protocol, tokenisation, registry


def test_protocol_and_registry():
    m = load_model(ModelSpec(backend="toy", options={"tilt": "helpful", "strength": 2.0}))
    assert isinstance(m, LanguageModel)
    assert m.tilt == "helpful" and m.strength == 2.0 and m.device == "cpu"
    assert m.eos_token_ids == (m.vocab.eos,) and m.vocab_size == len(m.vocab.names)
    student = load_model(ModelSpec(backend="toy"))
    check_same_tokenizer(student, m, "helpful")  # same vocabulary: no error
    other = load_model(ModelSpec(backend="toy", options={"vocab": 6}))
    assert other.tokenizer_fingerprint() != m.tokenizer_fingerprint()
    with pytest.raises(ValueError, match="unknown toy backend option"):  # with the config
        ModelSpec(backend="toy", options={"tlit": "helpful"})
    with pytest.raises(ModelError, match="unknown toy backend option"):  # a spec built unchecked
        load_model(ModelSpec(backend="toy").model_copy(update={"options": {"tlit": "helpful"}}))
    with pytest.raises(ModelError, match="tilt"):
        load_model(ModelSpec(backend="toy", options={"tilt": "sideways"}))


def test_encode_chat_and_text_round_trip(student):
    v = student.vocab
    ctx = ctx_of(student, 17)
    assert ctx == [v.ids["<bos>"], v.ids["<toy>"], v.ids["#1"], v.ids["#7"], v.ids["<sep>"]]
    demo = ctx_of(student, 17, demo=True)
    assert v.ids["<demo>"] in demo
    c, rest = student.split(demo + [0, 1])
    assert (c.index, c.demo, rest) == (17, True, [0, 1])
    with pytest.raises(ModelError, match="toy:<index>"):
        student.encode_chat([{"role": "user", "content": "no world here"}])
    ids = [0, 3, 5, v.eos]
    assert student.decode(ids) == "a d f <eos>"
    assert student.encode(student.decode(ids)) == ids
    assert student.encode("toy:5 zz") == [v.ids["<toy>"], v.ids["#5"], v.ids["<unk>"]]


def test_worlds_are_deterministic_and_distinct():
    a, b = ToyWorld(3, WorldParams()), ToyWorld(3, WorldParams())
    assert np.array_equal(a.next_S_R, b.next_S_R) and np.array_equal(a.logits_S_R, b.logits_S_R)
    c = ToyWorld(4, WorldParams())
    assert not np.array_equal(a.logits_S_R, c.logits_S_R)
    d = ToyWorld(3, WorldParams(seed=1))
    assert not np.array_equal(a.logits_S_R, d.logits_S_R)
    for x, y in a.synonym_pairs:  # synonyms lead to the same state everywhere
        assert np.array_equal(a.next_S_R[:, x], a.next_S_R[:, y])


# ---------------------------------------------------------------------------------------------
# sampling


def test_sampling_is_reproducible_per_seed(student):
    ctx = tuple(ctx_of(student, 2))
    r1, r2 = SampleRequest(ctx, 20, 5), SampleRequest(ctx + (0,), 7, 6)
    both = student.sample([r1, r2], SP)
    assert [len(x) for x in both] == [20, 7]
    assert student.sample([r1], SP)[0] == both[0]  # independent of what it is batched with
    assert ToyModel().sample([r2], SP)[0] == both[1]  # and of the instance
    other = student.sample([SampleRequest(ctx, 20, 99)], SP)[0]
    assert [c.token_ids for c in other] != [c.token_ids for c in both[0]]


def test_sampling_honours_params(student):
    ctx = tuple(ctx_of(student, 1))
    eos = student.vocab.eos
    comps = student.sample([SampleRequest(ctx, 200, 0)], SP)[0]
    for c in comps:  # every response ends with EOS within max_len, text = decode(ids)
        assert c.finish_reason == "eos" and c.token_ids[-1] == eos
        assert eos not in c.token_ids[:-1] and len(c.token_ids) <= student.params.max_len
        assert c.text == student.decode(c.token_ids)
    short = student.sample([SampleRequest(ctx, 200, 0)], SamplingParams(max_new_tokens=2))[0]
    assert all(len(c.token_ids) <= 2 for c in short)
    assert {c.finish_reason for c in short} == {"eos", "length"}
    assert all((c.finish_reason == "eos") == (c.token_ids[-1:] == (eos,)) for c in short)
    done = student.sample([SampleRequest(ctx + (eos,), 3, 0)], SP)[0]
    assert [c.token_ids for c in done] == [(), (), ()]  # the forced prefix already ended
    cold = student.sample([SampleRequest(ctx, 50, 1)], SamplingParams(temperature=0.01))[0]
    assert len({c.token_ids for c in cold}) == 1  # near-greedy
    p0 = student.node_probs(list(ctx), [])
    nucleus = student.sample([SampleRequest(ctx, 300, 2)], SamplingParams(top_p=1e-6))[0]
    assert {c.token_ids[0] for c in nucleus} == {int(np.argmax(p0))}


def test_first_token_frequencies_match_logprobs(student):
    ctx = ctx_of(student, 0)
    n = 20_000
    comps = student.sample([SampleRequest(tuple(ctx), n, 11)], SP)[0]
    counts = np.bincount([c.token_ids[0] for c in comps], minlength=student.vocab_size)
    logp = next(iter(student.logprob_chunks(ctx, [0])))[0].double().numpy()
    p = np.exp(logp)
    se = np.sqrt(p * (1 - p) / n) + 1e-12
    assert np.all(np.abs(counts / n - p) < 5 * se)


# ---------------------------------------------------------------------------------------------
# scoring


def test_logprob_chunks_equal_the_world_distribution(student):
    import torch

    ctx = ctx_of(student, 3)
    resp = list(student.sample([SampleRequest(tuple(ctx), 1, 4)], SP)[0][0].token_ids)
    resp = resp + [student.vocab.eos]  # a position after EOS too
    chunks = list(student.logprob_chunks(ctx, resp, chunk_size=3))
    assert all(c.dtype == torch.float32 and c.shape[1] == student.vocab_size for c in chunks)
    assert [c.shape[0] for c in chunks][:-1] == [3] * (len(chunks) - 1)
    logp = torch.cat(chunks).double().numpy()
    assert logp.shape == (len(resp), student.vocab_size)
    whole = torch.cat(list(student.logprob_chunks(ctx, resp))).numpy()
    np.testing.assert_array_equal(logp.astype(np.float32), whole)
    np.testing.assert_allclose(np.exp(logp).sum(axis=1), 1.0, atol=1e-5)
    assert np.all(np.isfinite(logp))  # masked tokens: probability 0, finite log-probability
    world = student.world(3)
    states, _ = world.walk(resp)
    for t in range(len(resp) - 1):  # position t: softmax of the state's logits
        z = world.student_table()[t, states[t]]
        expect = z - np.log(np.exp(z - z.max()).sum()) - z.max()
        np.testing.assert_allclose(logp[t, : world.vocab.n_response], expect, atol=1e-5)
        np.testing.assert_allclose(np.exp(logp[t]), student.node_probs(ctx, resp[:t]), atol=1e-6)
    assert np.argmax(logp[-1]) == student.vocab.eos  # after EOS: EOS only


def test_last_position_forces_eos(student):
    ctx = ctx_of(student, 0)
    H = student.params.max_len
    p = student.node_probs(ctx, [0] * (H - 1))
    assert p[student.vocab.eos] == 1.0


# ---------------------------------------------------------------------------------------------
# exact values


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_exact_success_matches_monte_carlo(student, index):
    ctx = ctx_of(student, index)
    world = student.world(index)
    n = 4000
    comps = student.sample([SampleRequest(tuple(ctx), n, 100 + index)], SP)[0]
    rewards = world.rewards([c.token_ids for c in comps])
    q = student.exact_success(ctx, [])
    assert q == pytest.approx(world.start_value)
    assert abs(rewards.mean() - q) < 4 * np.sqrt(q * (1 - q) / n)
    # a child's exact value against rollouts forced through it
    k = int(np.argmax(student.node_probs(ctx, [])[: world.vocab.eos]))
    qk = student.exact_child_success(ctx, [])[k]
    forced = student.sample([SampleRequest(tuple(ctx) + (k,), n, 200 + index)], SP)[0]
    rk = world.rewards([(k, *c.token_ids) for c in forced]).mean()
    assert abs(rk - qk) < 4 * np.sqrt(qk * (1 - qk) / n) + 1e-12


def test_exact_values_satisfy_bellman(student):
    rng = np.random.default_rng(0)
    for index in range(4):
        ctx = ctx_of(student, index)
        for _ in range(10):
            prefix = rng.integers(0, student.vocab.eos, size=int(rng.integers(0, 10))).tolist()
            v = student.exact_success(ctx, prefix)
            q = student.exact_child_success(ctx, prefix)
            p = student.node_probs(ctx, prefix)
            assert v == pytest.approx(float(p @ q), abs=1e-12)
            assert student.exact_success(ctx, prefix + [student.vocab.eos]) == q[student.vocab.eos]


def test_teacher_tilts_move_the_pass_rate(student):
    helpful, harmful = ToyModel(tilt="helpful"), ToyModel(tilt="harmful")
    for index in range(4):
        ctx = ctx_of(student, index)
        base = student.exact_success(ctx, [])
        assert helpful.exact_success(ctx, []) > base > harmful.exact_success(ctx, [])
        assert student.exact_success(ctx_of(student, index, demo=True), []) > base


# ---------------------------------------------------------------------------------------------
# alignment signs (the point of the synthetic world)


def mean_exact_alignment(student, teacher, demo=False, worlds=8, per_world=30):
    """Mean over nodes on sampled student paths of cos(ideal with exact P_succ, gkd), children =
    the response tokens the student can emit at the node (renormalised)."""
    R = student.vocab.n_response
    cos = []
    for index in range(worlds):
        ctx, tctx = ctx_of(student, index), ctx_of(teacher, index, demo=demo)
        comps = student.sample([SampleRequest(tuple(ctx), per_world, 500 + index)], SP)[0]
        for c in comps:
            ids = list(c.token_ids)
            ps = student.next_token_probs(ctx, ids)[:, :R]
            pt = teacher.next_token_probs(tctx, ids)[:, :R]
            for d in range(len(ids)):
                keep = ps[d] > 0
                if keep.sum() < 2:
                    continue
                q = student.exact_child_success(ctx, ids[:d])[:R][keep]
                cos.append(cosine(ideal_gradient(ps[d][keep], q),
                                  gkd_gradient(ps[d][keep], pt[d][keep])))
    cos = np.array(cos)
    return cos[np.isfinite(cos)]


def test_alignment_signs_of_toy_teachers(student):
    helpful = mean_exact_alignment(student, ToyModel(tilt="helpful"))
    harmful = mean_exact_alignment(student, ToyModel(tilt="harmful"))
    irrelevant = mean_exact_alignment(student, ToyModel(tilt="irrelevant"))
    assert min(len(helpful), len(harmful), len(irrelevant)) > 500
    assert helpful.mean() > 0.5 and np.mean(helpful > 0) > 0.9
    assert harmful.mean() < -0.5 and np.mean(harmful < 0) > 0.9
    # irrelevant noise sits on synonyms (equal P_succ): the cosine is odd in the noise, so its
    # mean is 0 up to sampling error (SE ~ 0.02 here); tolerance 0.1
    assert abs(irrelevant.mean()) < 0.1
    assert 0.3 < np.mean(irrelevant > 0) < 0.7
    noisy = mean_exact_alignment(student, ToyModel(tilt="helpful", noise=1.0))
    assert 0 < noisy.mean() < helpful.mean()  # a less perfect teacher, still helpful


def test_demonstration_context_makes_a_helpful_self_teacher(student):
    cos = mean_exact_alignment(student, student, demo=True, worlds=4, per_world=20)
    assert cos.mean() > 0.5
    none = mean_exact_alignment(student, ToyModel(demo_strength=0.0), demo=True, worlds=2)
    assert len(none) == 0  # a teacher identical to the student: gkd is zero, alignment undefined


# ---------------------------------------------------------------------------------------------
# the toy task


def test_toy_task_loads_and_selects():
    task = get_task("toy")
    assert isinstance(task, Task)
    qs = task.load(TaskSpec(name="toy", options={"n_questions": 16}))
    assert [q.qid for q in qs] == [f"toy-{i}" for i in range(16)]
    assert qs[3].prompt == "toy:3" and task.user_message(qs[3]) == "toy:3"
    rates = np.array([q.meta["exact_pass_rate"] for q in qs])
    assert np.all((rates > 0.2) & (rates < 0.8))
    assert rates.std() > 0.08  # spread, not all alike
    assert len(task.load(TaskSpec(name="toy", limit=3, offset=2))) == 3
    with pytest.raises(TaskError, match="unknown option"):
        task.load(TaskSpec(name="toy", options={"n_question": 3}))
    import json

    json.dumps(qs[0].answer)  # answers are JSON-able (the questions table stores them)


def test_toy_task_verify_round_trip(student):
    task = get_task("toy")
    qs = task.load(TaskSpec(name="toy", options={"n_questions": 4}))
    eos = student.vocab.eos
    for i, q in enumerate(qs):
        ctx = student.encode_chat([{"role": "user", "content": task.user_message(q)}])
        comps = student.sample([SampleRequest(tuple(ctx), 100, i)], SP)[0]
        world = student.world(i)
        rewards = []
        for c in comps:
            expect = world.reward(c.token_ids)
            with_eos = task.verify(q, student.decode(c.token_ids))
            without = task.verify(q, student.decode([t for t in c.token_ids if t != eos]))
            assert with_eos.reward == without.reward == expect
            assert with_eos.parsable and without.parsable
            rewards.append(expect)
        assert 0 < np.mean(rewards) < 1  # both correct and incorrect rollouts
    bad = task.verify(qs[0], "a b zebra")
    assert bad.reward == 0.0 and not bad.parsable
    too_long = task.verify(qs[0], " ".join(["a"] * student.params.max_len))
    assert not too_long.parsable


def test_task_and_model_share_worlds_through_options():
    opts = {"n_states": 4, "vocab": 6, "max_len": 16, "seed": 3}
    task = get_task("toy")
    qs = task.load(TaskSpec(name="toy", options={"n_questions": 2, **opts}))
    model = load_model(ModelSpec(backend="toy", options=opts))
    ctx = model.encode_chat([{"role": "user", "content": qs[1].prompt}])
    assert model.exact_success(ctx, []) == pytest.approx(qs[1].meta["exact_pass_rate"])
    comps = model.sample([SampleRequest(tuple(ctx), 50, 0)], SamplingParams(max_new_tokens=16))[0]
    for c in comps:
        assert task.verify(qs[1], c.text).reward == model.world(1).reward(c.token_ids)
