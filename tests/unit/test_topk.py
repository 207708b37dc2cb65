"""models/topk.py: the truncation rule of a top-k teacher, with exact expectations."""

from __future__ import annotations

import math

import pytest
import torch

from distillscope.models.topk import (
    MIN_TAIL,
    REVEALED_KEEP,
    RevealedCache,
    TopkModel,
    fill_rows,
    topk_rows,
)


def _row(probs):
    return torch.log(torch.tensor([probs], dtype=torch.float64))


def test_top2_of_five_tail_bucket_and_bound():
    r = topk_rows(_row([0.5, 0.2, 0.15, 0.1, 0.05]), 2)
    p = r.logp.exp()[0]
    assert p[:2].tolist() == pytest.approx([0.5, 0.2], abs=1e-12)
    assert p[2:].tolist() == pytest.approx([0.1, 0.1, 0.1], abs=1e-12)  # 0.3 over 3 tokens
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-12)
    assert r.revealed[0].tolist() == [True, True, False, False, False]
    assert float(r.kth[0]) == pytest.approx(math.log(0.2))


def test_kept_path_token_is_exact():
    r = topk_rows(_row([0.5, 0.2, 0.15, 0.1, 0.05]), 1, keep_T=[4])
    p = r.logp.exp()[0]
    assert float(p[0]) == pytest.approx(0.5) and float(p[4]) == pytest.approx(0.05)
    assert p[1:4].tolist() == pytest.approx([0.15, 0.15, 0.15])  # 0.45 over 3
    assert r.revealed[0].tolist() == [True, False, False, False, True]


def test_cap_at_kth_guards_inconsistent_served_values():
    # exact revealed values make the uniform share the hidden tokens' mean, <= the k-th; the
    # cap only binds when served values are inconsistent (rounded, another replica's)
    ids, lp = torch.tensor([[0]]), torch.log(torch.tensor([[0.2]], dtype=torch.float64))
    r = fill_rows(3, ids, lp, torch.tensor([[True]]), lp[:, 0])
    assert r.logp.exp()[0].tolist() == pytest.approx([0.2, 0.2, 0.2])  # 0.4 capped to 0.2


def test_k_at_least_v_is_identity():
    lp = torch.log_softmax(torch.randn(3, 7, dtype=torch.float64), -1)
    r = topk_rows(lp, 64)
    assert torch.allclose(r.logp, lp)
    assert bool(r.revealed.all())


def test_tail_floor_and_padding():
    ids = torch.tensor([[0, 1, 0]])
    lp = torch.log(torch.tensor([[0.7, 0.3, 0.0]], dtype=torch.float64))
    valid = torch.tensor([[True, True, False]])
    r = fill_rows(4, ids, lp, valid, torch.tensor([math.log(0.3)], dtype=torch.float64))
    p = r.logp.exp()[0]
    assert p[:2].tolist() == pytest.approx([0.7, 0.3])
    assert p[2:].tolist() == pytest.approx([MIN_TAIL / 2, MIN_TAIL / 2], rel=1e-6)
    with pytest.raises(ValueError):
        fill_rows(2, torch.tensor([[5]]), lp[:, :1], torch.tensor([[True]]), r.kth)


class _Full:
    name = "full"
    vocab_size = 5

    def logprob_chunks(self, ctx, resp, chunk_size=1024):
        lp = _row([0.5, 0.2, 0.15, 0.1, 0.05]).repeat(len(resp), 1)
        for s in range(0, len(resp), chunk_size):
            yield lp[s:s + chunk_size].float()


def test_topk_model_wraps_chunks_and_records_revealed():
    m = TopkModel(_Full(), 2)
    chunks = list(m.logprob_chunks([1], [3, 0, 4], chunk_size=2))
    assert [c.shape[0] for c in chunks] == [2, 1]
    assert m.vocab_size == 5 and m.name == "full@top2"
    assert m.revealed_ids[(3, 0, 4)] == [frozenset({0, 1, 3}), frozenset({0, 1}),
                                         frozenset({0, 1, 4})]


def test_revealed_cache_keeps_the_most_recently_used():
    c = RevealedCache(2)
    c[(1,)], c[(2,)] = [frozenset({1})], [frozenset({2})]
    assert c[(1,)] == [frozenset({1})]  # a read makes (1,) the most recent
    c[(3,)] = [frozenset({3})]
    assert list(c) == [(1,), (3,)] and c.get((2,)) is None
    assert c.get((3,)) == [frozenset({3})]
    c[(4,)] = []
    assert list(c) == [(3,), (4,)]  # get() counted as a use too
    with pytest.raises(ValueError):
        RevealedCache(0)


def test_topk_model_revealed_ids_are_bounded():
    m = TopkModel(_Full(), 2)
    resps = [(a, b, c) for c in range(5) for b in range(5) for a in range(5)]
    resps = resps[: REVEALED_KEEP + 10]
    for resp in resps:
        list(m.logprob_chunks([1], list(resp)))
    assert len(m.revealed_ids) == REVEALED_KEEP
    assert list(m.revealed_ids) == resps[10:]  # the first ten, least recent, dropped
    assert m.revealed_ids[resps[-1]][0] == frozenset({0, 1, resps[-1][0]})
