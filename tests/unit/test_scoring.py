"""score_path against the numpy reference maths, with fake models over fixed logits."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch
from scipy.special import softmax

from distillscope import gradients as G
from distillscope.models.base import ModelError, TokenizerMismatchError
from distillscope.schemas import FEATURES
from distillscope.scoring import PathScores, score_path, score_student_path

T, V = 37, 50
REFERENCE = {
    "kl": G.kl,
    "js": G.js,
    "l2": G.l2,
    "prob_cos": G.prob_cosine,
    "ent_student": lambda p, q: G.entropy(p),
    "ent_teacher": lambda p, q: G.entropy(q),
    "entropy_gap": G.entropy_gap,
    "overlap_ratio": lambda p, q: G.overlap_ratio(p, q, k=16),
    "overlap_adv": lambda p, q: G.overlap_token_advantage(p, q, k=16),
}


class FakeModel:
    """`logprob_chunks` over a fixed (T, V) logits array; records the contexts it was given.
    `fixed_chunk` ignores the requested chunk size (a backend that cuts chunks its own way)."""

    def __init__(self, logits_T_V: np.ndarray, name: str = "fake", fixed_chunk: int | None = None):
        self.logits = torch.as_tensor(logits_T_V, dtype=torch.float32)
        self.name = name
        self.fixed_chunk = fixed_chunk
        self.contexts: list[list[int]] = []

    @property
    def vocab_size(self) -> int:
        return int(self.logits.shape[1])

    @property
    def device(self) -> str:
        return "cpu"

    def logprob_chunks(
        self, context_ids: Sequence[int], response_ids: Sequence[int], chunk_size: int = 1024
    ):
        self.contexts.append(list(context_ids))
        assert len(response_ids) == self.logits.shape[0]
        lp = torch.log_softmax(self.logits, dim=-1)
        step = self.fixed_chunk or chunk_size
        for start in range(0, lp.shape[0], step):
            yield lp[start : start + step]


def probs(model: FakeModel) -> np.ndarray:
    """The float64 distributions the fake model's float32 log-probs stand for."""
    return softmax(torch.log_softmax(model.logits, -1).numpy().astype(np.float64), axis=-1)


def pairs(scores: PathScores) -> list[tuple[int, int]]:
    return list(zip(scores.cand_pos_C.tolist(), scores.cand_tok_C.tolist(), strict=True))


@pytest.fixture
def world():
    rng = np.random.default_rng(0)
    student = FakeModel(rng.normal(size=(T, V)) * 2.5, "student")
    teacher = FakeModel(rng.normal(size=(T, V)) * 2.5, "teacher")
    response = rng.integers(0, V, size=T)
    return student, teacher, response


def run(world, **kw) -> PathScores:
    student, teacher, response = world
    return score_path(student, [1, 2, 3], teacher, [9, 8, 7, 6], response, **kw)


def test_features_equal_the_numpy_reference(world):
    student, teacher, _ = world
    scores = run(world, chunk_size=8)
    p_TV, q_TV = probs(student), probs(teacher)
    assert tuple(scores.features) == FEATURES
    for name, ref in REFERENCE.items():
        expected = np.array([ref(p_TV[t], q_TV[t]) for t in range(T)])
        assert scores.features[name].shape == (T,)
        np.testing.assert_allclose(scores.features[name], expected, rtol=1e-6, atol=1e-9)
    # Each model saw its own context.
    assert student.contexts == [[1, 2, 3]] and teacher.contexts == [[9, 8, 7, 6]]


def test_overlap_adv_on_the_device_by_hand():
    """Companion eq 7 on the device path, the case of test_gradients' overlap_adv_by_hand:
    TopK3(p) = {0, 1, 2} (mass 0.85), TopK3(q) = {1, 2, 3}, shared {1, 2}; p and q both
    renormalised over TopK3(p), so q_bar = q / 0.75 (not q / q(TopK3(q)) = q / 0.85)."""
    p = np.array([0.40, 0.25, 0.20, 0.10, 0.05])
    q = np.array([0.10, 0.30, 0.35, 0.20, 0.05])
    a1 = (0.25 / 0.85) * np.log((0.30 / 0.75) / (0.25 / 0.85))
    a2 = (0.20 / 0.85) * np.log((0.35 / 0.75) / (0.20 / 0.85))
    student = FakeModel(np.log(p)[None, :], "student")
    teacher = FakeModel(np.log(q)[None, :], "teacher")
    f = score_path(student, [1], teacher, [2], [0], topk=3).features
    assert f["overlap_ratio"][0] == pytest.approx(2 / 3)
    assert f["overlap_adv"][0] == pytest.approx((a1 + a2) / 2, rel=1e-6)


def test_taken_token_logprobs(world):
    student, teacher, response = world
    scores = run(world, chunk_size=8)
    idx = np.arange(T)
    np.testing.assert_allclose(
        scores.logp_student_taken_T, np.log(probs(student)[idx, response]), atol=1e-9
    )
    np.testing.assert_allclose(
        scores.logp_teacher_taken_T, np.log(probs(teacher)[idx, response]), atol=1e-9
    )


def test_candidates_are_the_threshold_tokens_the_path_and_the_extras(world):
    student, teacher, response = world
    p_TV, q_TV = probs(student), probs(teacher)
    tau = 0.05
    low = np.argwhere((p_TV < tau) & (q_TV < tau))[:3]  # pairs only `extra` can bring in
    extra = [(int(a), int(b)) for a, b in low] + [(0, int(response[0]))]  # and a duplicate
    scores = run(world, tau=tau, extra=extra, chunk_size=8)

    want = {tuple(x) for x in np.argwhere((p_TV > tau) | (q_TV > tau))}
    want |= {(t, int(response[t])) for t in range(T)}
    want |= set(extra)
    got = pairs(scores)
    assert got == sorted(want)  # unique, sorted by (position, token)
    np.testing.assert_allclose(scores.p_student_C, p_TV[scores.cand_pos_C, scores.cand_tok_C])
    np.testing.assert_allclose(scores.p_teacher_C, q_TV[scores.cand_pos_C, scores.cand_tok_C])
    for pair in low:
        assert tuple(pair) in got


def test_result_is_independent_of_chunking(world):
    student, teacher, response = world
    ref = run(world, chunk_size=T + 5)
    variants = [run(world, chunk_size=c) for c in (1, 3, 8)]
    # A teacher backend that cuts its chunks elsewhere than the student's.
    odd = FakeModel(teacher.logits.numpy(), "odd", fixed_chunk=5)
    variants.append(score_path(student, [1], odd, [2], response, chunk_size=7))
    for other in variants:
        for field in ("cand_pos_C", "cand_tok_C"):
            np.testing.assert_array_equal(getattr(other, field), getattr(ref, field))
        for field in ("logp_student_taken_T", "logp_teacher_taken_T", "p_student_C"):
            np.testing.assert_allclose(getattr(other, field), getattr(ref, field), rtol=1e-12)
        for name in FEATURES:
            np.testing.assert_allclose(other.features[name], ref.features[name], rtol=1e-10)


def test_student_only_scoring(world):
    student, _, response = world
    tau = 0.05
    scores = score_student_path(student, [1, 2], response, tau=tau, chunk_size=8)
    p_TV = probs(student)
    assert all(np.all(np.isnan(scores.features[name])) for name in FEATURES)
    assert np.all(np.isnan(scores.logp_teacher_taken_T)) and scores.n_positions == T
    assert np.all(np.isnan(scores.p_teacher_C))
    want = {tuple(x) for x in np.argwhere(p_TV > tau)} | {(t, int(response[t])) for t in range(T)}
    assert set(pairs(scores)) == want
    np.testing.assert_allclose(scores.p_student_C, p_TV[scores.cand_pos_C, scores.cand_tok_C])


def test_identical_models_give_zero_divergence(world):
    student, _, response = world
    scores = score_path(student, [1], student, [1], response, chunk_size=8)
    f = scores.features
    np.testing.assert_allclose(f["kl"], 0.0, atol=1e-12)
    np.testing.assert_allclose(f["js"], 0.0, atol=1e-12)
    np.testing.assert_allclose(f["prob_cos"], 1.0, atol=1e-12)
    np.testing.assert_allclose(f["overlap_ratio"], 1.0)
    np.testing.assert_allclose(f["overlap_adv"], 0.0, atol=1e-12)


def test_float32_compute_agrees(world):
    ref = run(world, chunk_size=8)
    fast = run(world, chunk_size=8, dtype=torch.float32)
    for name in FEATURES:
        np.testing.assert_allclose(fast.features[name], ref.features[name], rtol=1e-4, atol=1e-5)


def test_topk_is_capped_at_the_vocabulary(world):
    scores = run(world, topk=10 * V)
    np.testing.assert_allclose(scores.features["overlap_ratio"], 1.0)
    np.testing.assert_allclose(scores.features["overlap_adv"], -scores.features["kl"] / V)


def test_vocabulary_mismatch_is_refused(world):
    student, _, response = world
    other = FakeModel(np.zeros((T, V + 3)), "bigger-vocab")
    with pytest.raises(TokenizerMismatchError):
        score_path(student, [1], other, [1], response)


def test_wrong_position_counts_are_refused(world):
    student, teacher, response = world
    short = FakeModel(teacher.logits.numpy(), "short")
    short.logprob_chunks = lambda ctx, resp, chunk_size=1024: iter([short.logits[: T - 2]])
    with pytest.raises(ModelError, match="fewer positions"):
        score_path(student, [1], short, [1], response)
    with pytest.raises(ValueError):
        score_path(student, [1], teacher, [1], response, extra=[(T, 0)])
