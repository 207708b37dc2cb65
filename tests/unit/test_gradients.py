"""The maths of docs/method.md#gradients against closed forms, finite differences and Monte Carlo.

Sign conventions and the KL direction are pinned by name here: every gradient is an update
direction on the student's logits, and GKD descends KL(student || teacher).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.spatial import distance
from scipy.special import entr, rel_entr, softmax

from distillscope import gradients as G

SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def node(draw, min_k: int = 2, max_k: int = 10):
    """(student logits, teacher logits, success rates, a token index) over one S_u."""
    k = draw(st.integers(min_k, max_k))
    logit = st.floats(-20.0, 20.0, allow_nan=False, allow_infinity=False)
    z_s = draw(hnp.arrays(np.float64, k, elements=logit))
    z_t = draw(hnp.arrays(np.float64, k, elements=logit))
    succ = draw(hnp.arrays(np.float64, k, elements=st.floats(0.0, 1.0)))
    token = draw(st.integers(0, k - 1))
    return z_s, z_t, succ, token


def all_renorm_gradients(p, q, succ, token, rng_seed=0):
    """Every softmax gradient of the module, over S_u, renormalised (the default)."""
    rng = np.random.default_rng(rng_seed)
    chosen = rng.integers(0, p.size, size=30)
    adv = rng.normal(size=30)
    return {
        "ideal": G.ideal_gradient(p, succ),
        "gkd": G.gkd_gradient(p, q),
        "sampled": G.sampled_gradient(p, q, token),
        "minillm": G.minillm_gradient(p, token, 2.5),
        "drgrpo": G.drgrpo_gradient(p, chosen, adv),
    }


def scipy_entropy(p, q=None):
    """Shannon entropy, or KL(p || q), from scipy's elementwise kernels (scipy.stats is slow to
    import)."""
    return float(entr(p).sum()) if q is None else float(rel_entr(p, q).sum())


def kl_of_logits(z, q):
    p = softmax(z)
    return float(np.sum(p * (np.log(p) - np.log(q))))


def num_grad(f, z, h=1e-6):
    g = np.zeros_like(z)
    for j in range(z.size):
        e = np.zeros_like(z)
        e[j] = h
        g[j] = (f(z + e) - f(z - e)) / (2 * h)
    return g


# --- properties ------------------------------------------------------------------------------


@SETTINGS
@given(node())
def test_every_softmax_gradient_sums_to_zero(case):
    z_s, z_t, succ, token = case
    p, q = softmax(z_s), softmax(z_t)
    for name, g in all_renorm_gradients(p, q, succ, token).items():
        assert g.shape == p.shape, name
        assert np.all(np.isfinite(g)), name
        assert abs(g.sum()) <= 1e-12 * np.abs(g).sum() + 1e-300, name


@SETTINGS
@given(node(), st.floats(-40.0, 40.0), st.floats(-40.0, 40.0))
def test_invariant_to_adding_a_constant_to_the_logits(case, c_s, c_t):
    # Under renorm the inputs may be any positive multiple of the probabilities: exp(z + c).
    z_s, z_t, succ, token = case
    ref = all_renorm_gradients(softmax(z_s), softmax(z_t), succ, token)
    shifted = all_renorm_gradients(np.exp(z_s + c_s), np.exp(z_t + c_t), succ, token)
    for name in ref:
        # Shifted logits round differently: allow ~1e-13 absolute (log terms up to ~60).
        np.testing.assert_allclose(shifted[name], ref[name], rtol=1e-9, atol=1e-13, err_msg=name)
    adv_ref = G.teacher_advantage(softmax(z_s), softmax(z_t), succ)
    adv_shift = G.teacher_advantage(np.exp(z_s + c_s), np.exp(z_t + c_t), succ)
    assert adv_shift == pytest.approx(adv_ref, rel=1e-9, abs=1e-13)


@SETTINGS
@given(
    hnp.arrays(np.float64, st.integers(1, 12), elements=st.floats(-1e6, 1e6)),
    st.data(),
)
def test_cosine_lies_in_minus_one_one(a, data):
    b = data.draw(hnp.arrays(np.float64, a.size, elements=st.floats(-1e6, 1e6)))
    c = G.cosine(a, b)
    if not np.any(a) or not np.any(b):
        assert np.isnan(c)
    else:
        assert -1.0 <= c <= 1.0
        assert G.cosine(a, a) == pytest.approx(1.0)
        assert G.cosine(a, -a) == pytest.approx(-1.0)
        if np.min(np.abs(a[a != 0])) > 1e-150:
            assert G.cosine(1e-150 * a, 1e150 * b) == pytest.approx(c, abs=1e-12)


def test_cosine_is_nan_not_zero_when_undefined():
    assert np.isnan(G.cosine([0.0, 0.0, 0.0], [1.0, -1.0, 0.0]))
    assert np.isnan(G.cosine([1.0, -1.0], [0.0, 0.0]))
    assert np.isnan(G.cosine([np.nan, 1.0], [1.0, 1.0]))
    assert G.cosine([1.0, 0.0], [0.0, 1.0]) == 0.0  # orthogonal is 0, not NaN
    with pytest.raises(ValueError):
        G.cosine([1.0, 2.0], [1.0, 2.0, 3.0])


@pytest.mark.filterwarnings("error")
def test_stable_at_probabilities_of_1e_30():
    p = np.array([1e-30, 0.7, 0.3 - 1e-30, 1e-30])
    q = np.array([0.2, 1e-30, 0.0, 0.8 - 1e-30])
    succ = np.array([1.0, 0.2, 0.5, 0.9])
    with np.errstate(all="raise"):
        out = all_renorm_gradients(p, q, succ, token=0)
        out["gkd_project"] = G.gkd_gradient(p, q, restrict="project", kl=G.kl(p, q))
        out["ideal_project"] = G.ideal_gradient(p, succ, restrict="project")
        out["sampled_project"] = G.sampled_gradient(p, q, 3, restrict="project")
        for name, g in out.items():
            assert np.all(np.isfinite(g)), name
        for f in (G.kl, G.js, G.l2, G.prob_cosine, G.entropy_gap, G.overlap_ratio):
            assert np.isfinite(f(p, q))
        assert np.isfinite(G.overlap_token_advantage(p, q, k=3))
        assert np.isfinite(G.teacher_advantage(p, q, succ))
    # A 1e-30 token the teacher loves still gets a positive push under GKD.
    assert out["gkd"][0] > 0


def test_tiny_gradients_keep_their_exact_direction():
    # P = (1 - 1e-20, 1e-20): g = (-1e-21, +1e-21) exactly up to rounding. The naive
    # P_j (f_j - P_bar) loses the first coordinate (1 - 1e-20 == 1 in float64).
    p = np.array([1.0, 1e-20])
    g = G.ideal_gradient(p, [0.5, 0.6])
    np.testing.assert_allclose(g, [-1e-21, 1e-21], rtol=1e-12)
    assert G.cosine(g, [-1.0, 1.0]) == pytest.approx(1.0)


def test_identical_teacher_and_student_give_zero_gkd():
    p = softmax(np.array([0.3, -1.2, 2.0, 0.0]))
    assert np.all(G.gkd_gradient(p, p) == 0.0)
    assert np.all(G.gkd_gradient(p, p, restrict="project", kl=G.kl(p, p)) == 0.0)
    # Proportional on S_u (teacher differs only outside S_u): zero after renormalisation.
    assert np.all(G.gkd_gradient(p, 0.37 * p) == 0.0)
    assert np.isnan(G.cosine(G.ideal_gradient(p, [1.0, 0.0, 0.5, 0.2]), G.gkd_gradient(p, p)))


def test_equal_success_rates_give_zero_ideal_and_nan_alignment():
    p = np.array([0.2, 0.5, 0.3])
    g = G.ideal_gradient(p, [1 / 3, 2 / 6, 3 / 9])
    assert np.all(g == 0.0)
    assert np.isnan(G.cosine(g, G.gkd_gradient(p, [0.6, 0.3, 0.1])))


# --- sign conventions, pinned by name --------------------------------------------------------


def test_teacher_preferring_the_successful_token_aligns_positively():
    p = np.array([0.5, 0.3, 0.2])
    succ = np.array([0.9, 0.2, 0.1])
    helpful = np.array([0.8, 0.1, 0.1])
    harmful = np.array([0.1, 0.5, 0.4])
    ideal = G.ideal_gradient(p, succ)
    assert ideal[0] > 0 > ideal[2]
    assert G.teacher_advantage(p, helpful, succ) > 0
    assert G.teacher_advantage(p, harmful, succ) < 0
    assert G.cosine(ideal, G.gkd_gradient(p, helpful)) > 0.5
    assert G.cosine(ideal, G.gkd_gradient(p, harmful)) < -0.5


def test_gkd_is_the_descent_direction_of_kl_student_to_teacher():
    rng = np.random.default_rng(3)
    z = rng.normal(size=7)
    q = softmax(rng.normal(size=7))
    p = softmax(z)
    g = G.gkd_gradient(p, q)
    # It is minus the logit gradient of KL(student || teacher) ...
    np.testing.assert_allclose(g, -num_grad(lambda x: kl_of_logits(x, q), z), atol=1e-8)
    # ... not of the reversed KL(teacher || student), whose gradient is p - q.
    assert not np.allclose(g, q - p, atol=1e-3)
    # A small step along it lowers the KL, a step against it raises it.
    before = kl_of_logits(z, q)
    assert kl_of_logits(z + 1e-3 * g, q) < before < kl_of_logits(z - 1e-3 * g, q)
    # The feature `kl` is the same direction: KL(student || teacher).
    assert G.kl(p, q) == pytest.approx(before, rel=1e-12)
    assert G.kl(p, q) != pytest.approx(G.kl(q, p), rel=1e-3)
    # It moves logits toward the tokens the teacher prefers relative to the student.
    best = int(np.argmax(np.log(q) - np.log(p)))
    assert g[best] > 0


def test_ideal_step_raises_expected_success():
    rng = np.random.default_rng(4)
    z = rng.normal(size=6)
    succ = rng.uniform(size=6)

    def expected_success(x):
        return float(softmax(x) @ succ)

    g = G.ideal_gradient(softmax(z), succ)
    np.testing.assert_allclose(g, num_grad(expected_success, z), atol=1e-8)
    assert expected_success(z + 1e-3 * g) > expected_success(z)


def test_sampled_and_minillm_signs():
    p = np.array([0.5, 0.3, 0.2])
    # log(P_te/P_theta) at r = 1 is log(3) > 1: the taken token is raised.
    up = G.sampled_gradient(p, [0.0, 0.9, 0.1], 1)
    assert up[1] > 0 and up[0] < 0
    down = G.sampled_gradient(p, [0.5, 0.05, 0.45], 1)
    assert down[1] < 0
    # MiniLLM: reward-to-go R > 1 raises the taken token, R < 1 lowers it.
    assert G.minillm_gradient(p, 2, 3.0)[2] > 0
    assert G.minillm_gradient(p, 2, -3.0)[2] < 0
    np.testing.assert_allclose(G.minillm_gradient(p, 2, 3.0), 2.0 * (np.eye(3)[2] - p))


def test_minillm_with_a_one_step_reward_is_the_sampled_estimator():
    rng = np.random.default_rng(5)
    p, q = softmax(rng.normal(size=5)), softmax(rng.normal(size=5))
    for r in range(5):
        reward = np.log(q[r]) - np.log(p[r])
        np.testing.assert_allclose(
            G.minillm_gradient(p, r, reward), G.sampled_gradient(p, q, r), rtol=1e-10
        )


def test_drgrpo_positive_advantage_raises_the_chosen_token():
    g = G.drgrpo_gradient([0.5, 0.5], [0, 0, 1], [1.0, 1.0, -1.0])
    assert g[0] > 0 > g[1]


# --- expectation identities (appendix B) -----------------------------------------------------


def test_sampled_gradient_averages_to_gkd():
    rng = np.random.default_rng(11)
    p, q = softmax(rng.normal(size=6) * 1.5), softmax(rng.normal(size=6) * 1.5)
    per_token = np.stack([G.sampled_gradient(p, q, r) for r in range(6)])
    # Exact expectation over r ~ P_theta (B.12) ...
    np.testing.assert_allclose(p @ per_token, G.gkd_gradient(p, q), atol=1e-12)
    # ... and Monte Carlo with seeded draws.
    draws = rng.choice(6, size=200_000, p=p)
    mc = np.bincount(draws, minlength=6) @ per_token / draws.size
    assert G.cosine(mc, G.gkd_gradient(p, q)) > 0.99


def test_drgrpo_gradient_averages_to_ideal():
    rng = np.random.default_rng(12)
    K = 5
    p = softmax(rng.normal(size=K))
    succ = np.array([0.9, 0.1, 0.6, 0.3, 0.75])
    initial = rng.uniform(size=64) < 0.5  # the question's initial rewards fix A's scale
    mean0, std0 = initial.mean(), initial.std()
    r = rng.choice(K, size=200_000, p=p)
    reward = (rng.uniform(size=r.size) < succ[r]).astype(float)
    g = G.drgrpo_gradient(p, r, (reward - mean0) / std0)
    ideal = G.ideal_gradient(p, succ)
    assert G.cosine(g, ideal) > 0.99
    # Eq 2.5's proportionality constant is 1 / std(R).
    np.testing.assert_allclose(g, ideal / std0, atol=0.02 * np.abs(ideal / std0).max())


# --- count-based Dr. GRPO, project vs renorm -------------------------------------------------


@SETTINGS
@given(node(), st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_drgrpo_from_counts_equals_per_rollout(case, n, seed):
    z_s, _, _, _ = case
    K = z_s.size
    rng = np.random.default_rng(seed)
    chosen = rng.integers(-1, K, size=n)  # -1: a child outside S_u
    adv = rng.normal(size=n)
    inside = chosen >= 0
    n_k = np.bincount(chosen[inside], minlength=K)
    adv_k = np.bincount(chosen[inside], weights=adv[inside], minlength=K)
    for restrict in ("renorm", "project"):
        p = softmax(z_s) * (0.6 if restrict == "project" else 1.0)
        direct = G.drgrpo_gradient(p, chosen, adv, restrict=restrict)
        counted = G.drgrpo_gradient_from_counts(p, n_k, adv_k, n, adv.sum(), restrict=restrict)
        np.testing.assert_allclose(counted, direct, rtol=1e-10, atol=1e-12)
    # Rollouts leaving S_u still count in N_u and in the total advantage.
    expected = (adv_k - softmax(z_s) * adv.sum()) / n
    np.testing.assert_allclose(G.drgrpo_gradient(softmax(z_s), chosen, adv), expected, atol=1e-12)


def test_drgrpo_without_rollouts_is_zero():
    assert np.all(G.drgrpo_gradient_from_counts([0.4, 0.6], [0, 0], [0.0, 0.0], 0, 0.0) == 0)
    with pytest.raises(ValueError):
        G.drgrpo_gradient_from_counts([0.4, 0.6], [3, 2], [0.0, 0.0], 4, 0.0)


@SETTINGS
@given(node())
def test_project_and_renorm_agree_when_s_u_is_the_whole_vocabulary(case):
    z_s, z_t, succ, token = case
    p, q = softmax(z_s), softmax(z_t)
    pairs = [
        (G.ideal_gradient(p, succ), G.ideal_gradient(p, succ, restrict="project", p_bar=p @ succ)),
        (G.ideal_gradient(p, succ), G.ideal_gradient(p, succ, restrict="project")),
        (G.gkd_gradient(p, q), G.gkd_gradient(p, q, restrict="project", kl=G.kl(p, q))),
        (G.sampled_gradient(p, q, token), G.sampled_gradient(p, q, token, restrict="project")),
        (G.minillm_gradient(p, token, 0.3), G.minillm_gradient(p, token, 0.3, restrict="project")),
    ]
    for renorm, project in pairs:
        # project subtracts a full-vocabulary mean (p_bar, kl): absolute precision ~1e-16.
        np.testing.assert_allclose(project, renorm, rtol=1e-7, atol=1e-13)


def test_project_keeps_the_s_u_coordinates_of_the_full_vocabulary_gradient():
    rng = np.random.default_rng(7)
    V = 9
    p, q = softmax(rng.normal(size=V)), softmax(rng.normal(size=V))
    succ = rng.uniform(size=V)
    S = np.array([0, 3, 4, 8])
    full_gkd = G.gkd_gradient(p, q)  # S_u = whole vocabulary
    np.testing.assert_allclose(
        G.gkd_gradient(p[S], q[S], restrict="project", kl=G.kl(p, q)), full_gkd[S], atol=1e-14
    )
    full_ideal = G.ideal_gradient(p, succ)
    np.testing.assert_allclose(
        G.ideal_gradient(p[S], succ[S], restrict="project", p_bar=p @ succ),
        full_ideal[S],
        atol=1e-14,
    )
    # Without p_bar, the S_u-renormalised mean stands in for the full-vocabulary one.
    p_bar_su = (p[S] @ succ[S]) / p[S].sum()
    np.testing.assert_allclose(
        G.ideal_gradient(p[S], succ[S], restrict="project"), p[S] * (succ[S] - p_bar_su)
    )
    np.testing.assert_allclose(
        G.sampled_gradient(p[S], q[S], 1, restrict="project"),
        G.sampled_gradient(p, q, 3)[S],
        atol=1e-14,
    )
    # Renorm differs from project once mass lies outside S_u.
    assert not np.allclose(G.gkd_gradient(p[S], q[S]), full_gkd[S])
    with pytest.raises(ValueError, match="kl="):
        G.gkd_gradient(p[S], q[S], restrict="project")


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        G.ideal_gradient([0.5, -0.1], [1.0, 0.0])
    with pytest.raises(ValueError):
        G.ideal_gradient([0.0, 0.0], [1.0, 0.0])
    with pytest.raises(ValueError):
        G.sampled_gradient([0.5, 0.5], [0.5, 0.5], 2)
    with pytest.raises(ValueError):
        G.gkd_gradient([0.5, 0.5], [0.5, 0.5], restrict="full")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        G.drgrpo_gradient([0.5, 0.5], [0, 2], [1.0, 1.0])


# --- full-vocabulary features ----------------------------------------------------------------


@SETTINGS
@given(
    hnp.arrays(np.float64, st.integers(2, 40), elements=st.floats(-15.0, 15.0)),
    st.data(),
)
def test_features_match_scipy(z_p, data):
    z_q = data.draw(hnp.arrays(np.float64, z_p.size, elements=st.floats(-15.0, 15.0)))
    p, q = softmax(z_p), softmax(z_q)
    assert G.kl(p, q) == pytest.approx(rel_entr(p, q).sum(), rel=1e-9, abs=1e-12)
    js_closed = scipy_entropy(0.5 * (p + q)) - 0.5 * (scipy_entropy(p) + scipy_entropy(q))
    assert G.js(p, q) == pytest.approx(js_closed, rel=1e-6, abs=1e-12)
    assert G.l2(p, q) == pytest.approx(np.linalg.norm(p - q), rel=1e-12, abs=1e-15)
    assert G.prob_cosine(p, q) == pytest.approx(1 - distance.cosine(p, q), rel=1e-9, abs=1e-12)
    assert G.entropy(p) == pytest.approx(scipy_entropy(p), rel=1e-9, abs=1e-12)
    assert G.entropy_gap(p, q) == pytest.approx(
        abs(scipy_entropy(q) - scipy_entropy(p)), rel=1e-9, abs=1e-12
    )
    assert G.js(p, q) <= np.log(2) + 1e-12


def test_js_matches_scipy_distance_squared():
    p, q = np.array([0.1, 0.6, 0.3]), np.array([0.5, 0.25, 0.25])
    assert G.js(p, q) == pytest.approx(distance.jensenshannon(p, q) ** 2, rel=1e-12)


def test_overlap_features_closed_forms():
    p = np.array([0.4, 0.3, 0.2, 0.1])
    q = np.array([0.1, 0.5, 0.3, 0.1])
    # TopK2(p) = {0, 1}, TopK2(q) = {1, 2}: one shared token (1).
    assert G.overlap_ratio(p, q, k=2) == 0.5
    p_bar, q_bar = 0.3 / 0.7, 0.5 / 0.6  # both renormalised over TopK2(p) = {0, 1}
    assert G.overlap_token_advantage(p, q, k=2) == pytest.approx(
        p_bar * (np.log(q_bar) - np.log(p_bar)), rel=1e-12
    )
    # k >= V: every token shared, no renormalisation: mean of p (log q - log p) = -KL / V.
    assert G.overlap_ratio(p, q, k=16) == 1.0
    assert G.overlap_token_advantage(p, q, k=16) == pytest.approx(-G.kl(p, q) / 4, rel=1e-12)
    # Disjoint top-k sets: ratio 0, advantage undefined (NaN).
    a = np.array([0.45, 0.45, 0.05, 0.05])
    b = np.array([0.05, 0.05, 0.45, 0.45])
    assert G.overlap_ratio(a, b, k=2) == 0.0
    assert np.isnan(G.overlap_token_advantage(a, b, k=2))
    # Identical distributions: full overlap, zero advantage.
    assert G.overlap_ratio(p, p, k=3) == 1.0
    assert G.overlap_token_advantage(p, p, k=3) == 0.0


# Companion paper eq 7 (and eq 5's bars) by hand, with TopK(p) != TopK(q) and q(TopK(p)) !=
# q(TopK(q)) so that renormalising the teacher over the wrong set shows.
OVERLAP_P = np.array([0.40, 0.25, 0.20, 0.10, 0.05])  # TopK3(p) = {0, 1, 2}, mass 0.85
OVERLAP_Q = np.array([0.10, 0.30, 0.35, 0.20, 0.05])  # TopK3(q) = {1, 2, 3}; q({0,1,2}) = 0.75


def overlap_adv_by_hand() -> float:
    """Shared tokens {1, 2}; p_bar = p / 0.85 and q_bar = q / 0.75 over TopK3(p)."""
    a1 = (0.25 / 0.85) * math.log((0.30 / 0.75) / (0.25 / 0.85))
    a2 = (0.20 / 0.85) * math.log((0.35 / 0.75) / (0.20 / 0.85))
    return (a1 + a2) / 2  # = 0.12578...; with q renormalised over TopK3(q) it is 0.09265...


def test_overlap_token_advantage_renormalises_both_over_the_students_top_k():
    assert G.overlap_ratio(OVERLAP_P, OVERLAP_Q, k=3) == pytest.approx(2 / 3)
    got = G.overlap_token_advantage(OVERLAP_P, OVERLAP_Q, k=3)
    assert got == pytest.approx(overlap_adv_by_hand(), rel=1e-12)
    assert got == pytest.approx(0.125781, abs=1e-6)
    # the teacher's mass on the student's top-k underflows to 0: q_bar is undefined
    # (TopK3(q) = {3, 4} plus token 0 by the lowest-index tie rule, so token 0 is shared)
    p0 = np.array([0.5, 0.3, 0.2, 0.0, 0.0])
    q0 = np.array([0.0, 0.0, 0.0, 0.5, 0.5])
    assert G.overlap_ratio(p0, q0, k=3) == pytest.approx(1 / 3)
    assert np.isnan(G.overlap_token_advantage(p0, q0, k=3))


def test_features_broadcast_over_positions():
    rng = np.random.default_rng(9)
    P, Q = softmax(rng.normal(size=(5, 30)), -1), softmax(rng.normal(size=(5, 30)), -1)
    for f in (G.kl, G.js, G.l2, G.prob_cosine, G.entropy_gap, G.overlap_ratio):
        batched = f(P, Q)
        assert batched.shape == (5,)
        np.testing.assert_allclose(batched, [f(P[t], Q[t]) for t in range(5)], rtol=1e-12)
    np.testing.assert_allclose(
        G.overlap_token_advantage(P, Q, k=4),
        [G.overlap_token_advantage(P[t], Q[t], k=4) for t in range(5)],
        rtol=1e-12,
    )


def test_large_s_u_uses_the_direct_formula_and_agrees():
    rng = np.random.default_rng(13)
    z, zq = rng.normal(size=3000), rng.normal(size=3000)
    p, q, succ = softmax(z), softmax(zq), rng.uniform(size=3000)
    expected_ideal = p * (succ - p @ succ)
    l = np.log(p) - np.log(q)
    expected_gkd = -p * (l - p @ l)
    np.testing.assert_allclose(G.ideal_gradient(p, succ), expected_ideal, atol=1e-15)
    np.testing.assert_allclose(G.gkd_gradient(p, q), expected_gkd, atol=1e-15)
