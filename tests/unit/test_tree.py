"""The generation tree's counting (docs/method.md#unbiased-counting): brute-force reference, order
independence,
the worked example, and the estimators against exact P_succ on the toy world."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distillscope.schemas import CHILDREN
from distillscope.tree import (
    PathTree,
    QuestionTree,
    Ragged,
    backup_on_path,
    common_prefix_lengths,
)

# ---------------------------------------------------------------------------------------------
# brute-force reference: loops over rollouts and depths, straight from the definitions


def reference_counts(path, rollouts, estimator):
    """{(depth, token): [visits, successes, rl_visits, rl_successes]}."""
    out: dict[tuple[int, int], list[int]] = {}
    for resp, m, reward in rollouts:
        succ = int(reward >= 0.5)
        for t in range(len(path)):
            if list(resp[:t]) != list(path[:t]) or t >= len(resp):
                break  # the rollout does not pass node t (nor any deeper node)
            k = int(resp[t])
            c = out.setdefault((t, k), [0, 0, 0, 0])
            counted = True if estimator == "paper" else t >= m - 1
            if counted:
                c[0] += 1
                c[1] += succ
            if t >= m:
                c[2] += 1
                c[3] += succ
    return {key: v for key, v in out.items() if v[0] or v[2]}


def tree_counts(tree: PathTree):
    out = {}
    for d in range(len(tree)):
        c = tree.counts(d)
        assert c.tokens[0] == tree.path[d]  # the on-path child comes first
        for i, k in enumerate(c.tokens):
            v = [int(c.visits[i]), int(c.successes[i]), int(c.rl_visits[i]),
                 int(c.rl_successes[i])]
            if any(v):
                out[(d, int(k))] = v
    return out


def random_rollouts(rng, path, n, vocab=4, share=0.7):
    """Rollouts that follow the path for a while (some forced), then wander."""
    rolls = []
    for _ in range(n):
        keep = int(rng.integers(0, len(path) + 1)) if rng.random() < share else 0
        tail = rng.integers(0, vocab, size=int(rng.integers(0, 6))).tolist()
        resp = list(path[:keep]) + tail
        m = int(rng.integers(0, len(resp) + 1)) if rng.random() < 0.6 else 0
        rolls.append((resp, m, float(rng.random() < 0.5)))
    return rolls


@pytest.mark.parametrize("estimator", ["unbiased", "paper"])
@pytest.mark.parametrize("seed", range(6))
def test_counts_match_brute_force(estimator, seed):
    rng = np.random.default_rng(seed)
    path = rng.integers(0, 4, size=int(rng.integers(1, 9))).tolist()
    rolls = random_rollouts(rng, path, 120)
    tree = PathTree(path, estimator)
    tree.add([r for r, _, _ in rolls], [m for _, m, _ in rolls], [w for _, _, w in rolls])
    assert tree_counts(tree) == reference_counts(path, rolls, estimator)
    assert tree.n_rollouts == 120


@settings(max_examples=60, deadline=None)
@given(
    path=st.lists(st.integers(0, 3), min_size=1, max_size=6),
    rolls=st.lists(
        st.tuples(st.lists(st.integers(0, 3), max_size=8), st.integers(0, 8), st.booleans()),
        max_size=25,
    ),
    prefix_from_path=st.lists(st.integers(0, 6), max_size=25),
)
def test_counts_match_brute_force_property(path, rolls, prefix_from_path):
    rollouts = []
    for i, (tail, m, ok) in enumerate(rolls):
        keep = prefix_from_path[i] if i < len(prefix_from_path) else 0
        resp = path[:keep] + tail
        rollouts.append((resp, min(m, len(resp)), float(ok)))
    for estimator in ("unbiased", "paper"):
        tree = PathTree(path, estimator)
        if rollouts:
            tree.add([r for r, _, _ in rollouts], [m for _, m, _ in rollouts],
                     [w for _, _, w in rollouts])
        assert tree_counts(tree) == reference_counts(path, rollouts, estimator)


def test_lcp_matches_python():
    rng = np.random.default_rng(3)
    path = rng.integers(0, 3, size=12)
    seqs = [list(path[: rng.integers(0, 13)]) + rng.integers(0, 3, size=rng.integers(0, 5)).tolist()
            for _ in range(300)]

    def lcp(a, b):
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return n

    expect = [lcp(s, list(path)) for s in seqs]
    assert common_prefix_lengths(Ragged.from_sequences(seqs), path).tolist() == expect


def test_lcp_chunking_does_not_matter(monkeypatch):
    import distillscope.tree as tree_mod

    rng = np.random.default_rng(4)
    path = rng.integers(0, 3, size=30)
    seqs = [list(path[: rng.integers(0, 31)]) + [int(rng.integers(0, 3))] for _ in range(200)]
    r = Ragged.from_sequences(seqs)
    whole = common_prefix_lengths(r, path)
    monkeypatch.setattr(tree_mod, "_CHUNK_TOKENS", 7)  # chunks of a few rollouts (or one)
    assert np.array_equal(common_prefix_lengths(r, path), whole)


# ---------------------------------------------------------------------------------------------
def frame_of(tree):
    return tree.to_frame("q", 0)


def test_order_and_batching_independence():
    rng = np.random.default_rng(7)
    path = rng.integers(0, 4, size=10).tolist()
    rolls = random_rollouts(rng, path, 400)
    a = PathTree(path)
    a.add([r for r, _, _ in rolls], [m for _, m, _ in rolls], [w for _, _, w in rolls])
    b = PathTree(path)
    order = rng.permutation(len(rolls))
    for chunk in np.array_split(order, 9):
        sel = [rolls[i] for i in chunk]
        b.add([r for r, _, _ in sel], [m for _, m, _ in sel], [w for _, _, w in sel])
        b.visits(0, path[0])  # queries in between must not disturb later adds
    pd.testing.assert_frame_equal(frame_of(a), frame_of(b))


def test_input_forms_agree():
    path = [1, 2, 3, 0]
    seqs = [[1, 2, 3, 0], [1, 4, 0], [1, 2, 5, 0], [2, 0], []]
    m, w = [0, 0, 2, 0, 0], [1.0, 0.0, 1.0, 0.0, 1.0]
    a, b, c = PathTree(path), PathTree(path), PathTree(path)
    a.add(seqs, m, w)
    b.add(Ragged.from_sequences(seqs), np.array(m), np.array(w))
    c.add([np.array(s, dtype=np.int32) for s in seqs], m, w)
    for other in (b, c):
        pd.testing.assert_frame_equal(frame_of(a), frame_of(other))


def test_small_example_by_hand():
    # path 1 2 3 <0>; rollout [1,2,5,0] was forced to [1,2] (m = 2)
    t = PathTree([1, 2, 3, 0])
    t.add([[1, 2, 3, 0], [1, 4, 0], [1, 2, 5, 0], [2, 0]], [0, 0, 2, 0], [1, 0, 1, 0])
    c0, c1, c2 = t.counts(0), t.counts(1), t.counts(2)
    assert c0.tokens.tolist() == [1, 2] and c0.visits.tolist() == [2, 1]  # forced: not counted
    assert c1.tokens.tolist() == [2, 4] and c1.visits.tolist() == [2, 1]  # m - 1 = 1: counted
    assert c1.rl_visits.tolist() == [1, 1]  # Dr. GRPO: the choice at depth 1 was forced
    assert c2.tokens.tolist() == [3, 5] and c2.rl_visits.tolist() == [1, 1]
    paper = PathTree([1, 2, 3, 0], "paper")
    paper.add([[1, 2, 3, 0], [1, 4, 0], [1, 2, 5, 0], [2, 0]], [0, 0, 2, 0], [1, 0, 1, 0])
    assert paper.counts(0).visits.tolist() == [3, 1]
    assert paper.counts(0).rl_visits.tolist() == [2, 1]  # rl counts ignore the estimator


def test_edge_cases():
    t = PathTree([5, 6])
    t.add([[], [5, 6, 7, 8], [5]], 0, 1.0)  # empty; longer than the path; stops mid-path
    assert t.counts(0).visits.tolist() == [2]
    assert t.counts(1).visits.tolist() == [1]  # [5] has no token at depth 1
    assert t.visits(1, 9) == 0
    assert t.lookup(np.array([0, 1, 1]), np.array([5, 6, 7])).visits.tolist() == [2, 1, 0]
    with pytest.raises(ValueError, match="forced_len"):
        t.add([[5]], 2, 1.0)
    with pytest.raises(IndexError):
        t.counts(2)
    with pytest.raises(ValueError, match="estimator"):
        PathTree([1], "naive")
    assert PathTree([1], "backup").counts(0).visits.tolist() == [0]  # counts like unbiased


def test_question_tree_counts_each_path():
    qt = QuestionTree({0: [1, 2, 0], 1: [1, 3, 0]})
    qt.add([[1, 2, 0], [1, 3, 0], [1, 3, 4, 0]], [0, 0, 2], [1.0, 0.0, 1.0])
    assert qt[0].counts(0).visits.tolist() == [2]  # third rollout forced at depth 0
    assert qt[1].counts(1).tokens.tolist() == [3, 2]
    assert qt[1].counts(1).visits.tolist() == [2, 1]
    assert qt[0].counts(1).tokens.tolist() == [2, 3]
    df = qt.to_frame("q")
    assert set(df.path_id) == {0, 1}


def test_to_frame_matches_schema():
    t = PathTree([1, 2, 0])
    t.add([[1, 2, 0], [1, 3, 0], [2, 0]], [0, 2, 0], [1.0, 0.0, 1.0])
    exact = {0: np.array([0.0, 0.7, 0.4, 0.1]), 1: np.array([0.0, 0.0, 0.9, 0.2])}
    df = t.to_frame("q7", 3, decode=lambda k: "abcd"[k], p_exact=exact)
    table = pa.Table.from_pandas(df, schema=CHILDREN, preserve_index=False)
    assert table.num_rows == len(df) == 5
    assert df.token_text.tolist() == ["b", "c", "c", "d", "a"]
    assert df.on_path.tolist() == [True, False, True, False, True]
    assert df.p_exact.iloc[0] == 0.7 and df.p_exact.iloc[3] == 0.2 and np.isnan(df.p_exact.iloc[4])
    same = t.to_frame("q7", 3, p_exact=lambda d, toks: exact[d][toks] if d in exact else
                      np.full(len(toks), np.nan))
    np.testing.assert_array_equal(same.p_exact.to_numpy(), df.p_exact.to_numpy())
    assert df.p_hat.iloc[0] == 1.0  # [1,3,0] was forced at depth 1: not counted at depth 0
    over = t.to_frame("q7", 3, p_hat_on_path=np.array([0.25, np.nan, 0.5]))
    assert over.p_hat.tolist()[:2] == [0.25, df.p_hat.iloc[1]]


# ---------------------------------------------------------------------------------------------
def test_design_worked_example():
    """The counting bias: node 0 -> a | b (.5 each); under a, c (.98, succeeds) or d (.02, fails).
    Enrich (a, d) with 100 targeted rollouts. paper: P_hat(a) ~ .49; unbiased: ~ .98."""
    a, b, c, d, e, eos = range(6)
    rng = np.random.default_rng(0)
    G = 200
    first = rng.choice([a, b], size=G)
    seqs, rewards = [], []
    for f in first:
        if f == a:
            second = c if rng.random() < 0.98 else d
            seqs.append([a, second, eos])
            rewards.append(1.0 if second == c else 0.0)
        else:
            seqs.append([b, e, eos])
            rewards.append(float(rng.random() < 0.5))
    path = [a, c, eos]
    targeted = [[a, d, eos]] * 100
    trees = {est: PathTree(path, est) for est in ("paper", "unbiased")}
    for tree in trees.values():
        tree.add(seqs, 0, rewards)
        tree.add(targeted, 2, 0.0)  # forced prefix (a, d): m = 2
    n_a = int((first == a).sum())
    se = np.sqrt(0.98 * 0.02 / n_a)
    p_unb = trees["unbiased"].counts(0).p_hat[0]
    p_pap = trees["paper"].counts(0).p_hat[0]
    assert abs(p_unb - 0.98) < 4 * se
    assert trees["unbiased"].counts(0).visits[0] == n_a
    expect_paper = 0.98 * n_a / (n_a + 100)  # ~ .49 at n_a ~ 100
    assert abs(p_pap - expect_paper) < 4 * np.sqrt(0.98 * 0.02 * n_a) / (n_a + 100)
    assert abs(p_pap - 0.49) < 0.06
    # at node 1 (under a) both count the targeted rollouts for child d; Dr. GRPO does not
    for est in ("paper", "unbiased"):
        c1 = trees[est].counts(1)
        i_d = c1.tokens.tolist().index(d)
        assert c1.visits[i_d] == c1.rl_visits[i_d] + 100


# ---------------------------------------------------------------------------------------------
# the toy world: estimators against exact P_succ


def _enriched_trees(model, index, n_initial=200, n_min=100, tau=0.02, seed=0):
    """Initial rollouts, one correct and one incorrect path, every child with P > tau along each
    path enriched to n_min counted visits (the pipeline's fixed allocation, simplified)."""
    from distillscope.types import SampleRequest, SamplingParams

    world = model.world(index)
    ctx = model.encode_chat([{"role": "user", "content": f"toy:{index}"}])
    sp = SamplingParams(max_new_tokens=64)
    init = model.sample([SampleRequest(tuple(ctx), n_initial, seed * 1000 + index)], sp)[0]
    resp = [list(c.token_ids) for c in init]
    rew = world.rewards(resp)
    paths = [resp[int(np.argmax(rew == 1))], resp[int(np.argmax(rew == 0))]]
    trees = [{est: PathTree(p, est) for est in ("unbiased", "paper")} for p in paths]
    all_rolls = [(resp, np.zeros(len(resp), dtype=int), rew)]
    for tr in trees:
        for t in tr.values():
            t.add(resp, 0, rew)
    R = model.vocab.n_response
    for pi, p in enumerate(paths):
        probs = model.next_token_probs(ctx, p)[:, :R]
        reqs, prefixes = [], []
        for d in range(len(p)):
            for k in np.flatnonzero(probs[d] > tau):
                need = n_min - trees[pi]["unbiased"].visits(d, int(k))
                if need > 0:
                    prefixes.append(p[:d] + [int(k)])
                    reqs.append(SampleRequest(tuple(ctx + prefixes[-1]), need,
                                              seed * 10**6 + index * 10**4 + pi * 1000 + d))
        res = model.sample(reqs, sp)
        pairs = list(zip(prefixes, res, strict=True))
        new = [pre + list(c.token_ids) for pre, comps in pairs for c in comps]
        m = np.array([len(pre) for pre, comps in pairs for _ in comps])
        r = world.rewards(new)
        all_rolls.append((new, m, r))
        for tr in trees:
            for t in tr.values():
                t.add(new, m, r)
    return ctx, paths, trees


def _z_scores(model, ctx, path, tree, estimator, n_sig=20):
    zs = []
    for d in range(len(path)):
        c = tree.counts(d, estimator)
        q = np.clip(model.exact_child_success(ctx, path[:d])[c.tokens], 0.0, 1.0)
        ok = c.visits >= n_sig
        n, p_hat, q = c.visits[ok], c.successes[ok] / c.visits[ok], q[ok]
        sd = np.sqrt(q * (1 - q) / n)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(sd > 1e-9, (p_hat - q) / sd, np.where(np.abs(p_hat - q) < 1e-9, 0, np.inf))
        zs.extend(z.tolist())
    return np.array(zs)


def _all_z_scores(model, worlds, estimator):
    return np.concatenate([
        _z_scores(model, ctx, p, tr[estimator], estimator)
        for ctx, paths, trees in worlds
        for p, tr in zip(paths, trees, strict=True)
    ])


@pytest.fixture(scope="module")
def toy_trees():
    from distillscope.models.toy import ToyModel

    model = ToyModel()
    return model, [_enriched_trees(model, i) for i in range(6)]


def test_unbiased_matches_exact_within_binomial_error(toy_trees):
    model, worlds = toy_trees
    z = _all_z_scores(model, worlds, "unbiased")
    assert len(z) > 300  # many children with >= 20 counted visits
    assert np.mean(np.abs(z) < 3) >= 0.97
    assert abs(np.mean(z[np.isfinite(z)])) < 0.25  # no systematic offset


def test_paper_counting_is_biased_on_the_toy_world(toy_trees):
    """Over the same enriched trees, the paper's counting misses the exact values far more often
    than the unbiased counting does."""
    model, worlds = toy_trees
    frac = {}
    for est in ("unbiased", "paper"):
        z = _all_z_scores(model, worlds, est)
        frac[est] = float(np.mean(np.abs(z) < 3))
    assert frac["unbiased"] >= 0.97
    assert frac["paper"] < 0.95


def test_paper_ancestor_bias_constructed_case():
    """Initial rollouts, then 400 targeted rollouts at a failing child below a good on-path
    child: the paper's count drags the ancestor's P_hat toward the failing child, the unbiased
    count does not move (the bias of naive counting, on the toy world)."""
    from distillscope.models.toy import ToyModel
    from distillscope.types import SampleRequest, SamplingParams

    model = ToyModel()
    sp = SamplingParams(max_new_tokens=64)
    for index in range(20):
        ctx = model.encode_chat([{"role": "user", "content": f"toy:{index}"}])
        init = model.sample([SampleRequest(tuple(ctx), 300, index)], sp)[0]
        resp = [list(c.token_ids) for c in init]
        # a path whose first token is common and leads to a node with a failing child
        for p in resp:
            if len(p) < 2:
                continue
            q_anc = model.exact_child_success(ctx, [])[p[0]]
            q_node = model.exact_child_success(ctx, p[:1])
            p_node = model.node_probs(ctx, p[:1])
            bad = [k for k in range(model.vocab.n_response)
                   if q_node[k] < q_anc - 0.4 and p_node[k] > 0.02]
            n_anc = sum(r[:1] == p[:1] for r in resp)
            if bad and n_anc >= 50:
                break
        else:
            continue
        break
    else:
        pytest.fail("no suitable node in 20 toy worlds")
    world = model.world(index)
    prefix = p[:1] + [bad[0]]
    comps = model.sample([SampleRequest(tuple(ctx + prefix), 400, 7)], sp)[0]
    targeted = [prefix + list(c.token_ids) for c in comps]
    z = {}
    for est in ("unbiased", "paper"):
        tree = PathTree(p, est)
        tree.add(resp, 0, world.rewards(resp))
        tree.add(targeted, 2, world.rewards(targeted))
        c = tree.counts(0)
        n, s = int(c.visits[0]), int(c.successes[0])
        z[est] = (s / n - q_anc) / np.sqrt(q_anc * (1 - q_anc) / n)
    assert abs(z["unbiased"]) < 4
    assert z["paper"] < -6


def test_backup_estimator_is_closer_to_exact(toy_trees):
    model, worlds = toy_trees
    err_direct, err_backup = [], []
    for ctx, paths, trees in worlds:
        for p, tr in zip(paths, trees, strict=True):
            probs = model.next_token_probs(ctx, p)
            q_b = backup_on_path(tr["unbiased"], lambda d, toks, pr=probs: pr[d][toks], n_sig=20)
            on = tr["unbiased"].on_path()
            for d in range(len(p)):
                if on.visits[d] >= 20:
                    q = model.exact_child_success(ctx, p[:d])[p[d]]
                    err_direct.append(on.p_hat[d] - q)
                    err_backup.append(q_b[d] - q)
    rmse_d = float(np.sqrt(np.mean(np.square(err_direct))))
    rmse_b = float(np.sqrt(np.mean(np.square(err_backup))))
    assert len(err_direct) > 40
    assert rmse_b < rmse_d
    assert abs(np.mean(err_backup)) < 0.02


# ---------------------------------------------------------------------------------------------
def test_construction_is_vectorised():
    """2M tokens (1000 rollouts x 2000 tokens, sharing long prefixes with the path) in well
    under a second on a laptop; the bound is generous. benchmarks/tree_scale.py runs 200k x 2k."""
    rng = np.random.default_rng(0)
    T, N = 2000, 1000
    path = rng.integers(0, 50_000, size=T)
    launch = rng.integers(0, T, size=N)
    flat = np.tile(path, N).reshape(N, T).copy()
    cols = np.arange(T)[None, :]
    flat[cols > launch[:, None]] = rng.integers(0, 50_000, size=int((cols > launch[:, None]).sum()))
    tree = PathTree(path)
    start = time.perf_counter()
    tree.add(Ragged.from_lengths(flat.ravel(), np.full(N, T)), launch + 1, rng.random(N))
    tree.counts(T // 2)
    elapsed = time.perf_counter() - start
    assert tree.n_rollouts == N
    assert elapsed < 5.0, f"tree construction took {elapsed:.2f}s for 2M tokens"
