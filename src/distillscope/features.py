"""Full-vocabulary features of a node: how the teacher's next-token distribution differs from
the student's (docs/method.md#distribution-features).

`kl`, `js`, `l2`, `prob_cosine`, `entropy`, `entropy_gap`, `overlap_ratio` and
`overlap_token_advantage` are the numpy reference versions over full distributions (last axis =
vocabulary, leading axes broadcast); `distillscope.scoring` computes the same quantities on the
device, chunk by chunk, and its tests compare the two. All logs are natural (nats). The KL is
KL(student || teacher), the direction GKD descends.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["entropy", "entropy_gap", "js", "kl", "l2", "overlap_ratio", "overlap_token_advantage",
           "prob_cosine"]

_TINY = float(np.finfo(np.float64).tiny)


def _log(p: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(p, _TINY))


def _dist(x: ArrayLike, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 0 or a.shape[-1] == 0:
        raise ValueError(f"{name} must have a vocabulary axis (last axis)")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError(f"{name} must hold finite, non-negative probabilities")
    return a


def _pair(p: ArrayLike, q: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    P, Q = _dist(p, "p"), _dist(q, "q")
    if P.shape[-1] != Q.shape[-1]:
        raise ValueError(f"vocabulary sizes differ: {P.shape[-1]} vs {Q.shape[-1]}")
    return P, Q


def _out(x: np.ndarray) -> np.ndarray | float:
    return float(x) if np.ndim(x) == 0 else x


def _xlogy_ratio(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """p (log p - log q) with 0 log 0 = 0 and q floored at _TINY."""
    return np.where(p > 0, p * (_log(p) - _log(q)), 0.0)


def kl(p: ArrayLike, q: ArrayLike) -> np.ndarray | float:
    """KL(p || q) = sum_v p_v (log p_v - log q_v), p = student, q = teacher (GKD's direction).
    Rounding below 0 is clipped to 0 (as for `js`)."""
    P, Q = _pair(p, q)
    return _out(np.maximum(np.sum(_xlogy_ratio(P, Q), axis=-1), 0.0))


def js(p: ArrayLike, q: ArrayLike) -> np.ndarray | float:
    """Jensen-Shannon divergence (nats): KL(p||m)/2 + KL(q||m)/2, m = (p + q)/2.
    (scipy's `jensenshannon` returns its square root.)"""
    P, Q = _pair(p, q)
    M = 0.5 * (P + Q)
    value = 0.5 * np.sum(_xlogy_ratio(P, M), -1) + 0.5 * np.sum(_xlogy_ratio(Q, M), -1)
    return _out(np.maximum(value, 0.0))


def l2(p: ArrayLike, q: ArrayLike) -> np.ndarray | float:
    """Euclidean distance between the probability vectors."""
    P, Q = _pair(p, q)
    return _out(np.sqrt(np.sum((P - Q) ** 2, axis=-1)))


def prob_cosine(p: ArrayLike, q: ArrayLike) -> np.ndarray | float:
    """Cosine similarity of the probability vectors (in [0, 1])."""
    P, Q = _pair(p, q)
    return _out(np.sum(P * Q, -1) / (np.sqrt(np.sum(P * P, -1)) * np.sqrt(np.sum(Q * Q, -1))))


def entropy(p: ArrayLike) -> np.ndarray | float:
    """Shannon entropy in nats."""
    P = _dist(p, "p")
    return _out(-np.sum(np.where(P > 0, P * _log(P), 0.0), axis=-1))


def entropy_gap(p: ArrayLike, q: ArrayLike) -> np.ndarray | float:
    """Companion paper eq 8: |H(q) - H(p)|."""
    P, Q = _pair(p, q)
    return _out(np.abs(np.asarray(entropy(Q)) - np.asarray(entropy(P))))


def _topk_V(P: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest entries along the last axis (ties: lowest index first)."""
    return np.argsort(-P, axis=-1, kind="stable")[..., :k]


def _k_eff(k: int, V: int) -> int:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return min(int(k), V)


def overlap_ratio(p: ArrayLike, q: ArrayLike, k: int = 16) -> np.ndarray | float:
    """Companion paper eq 6 at one position: |TopK(p) cap TopK(q)| / k.

    k is capped at the vocabulary size. Ties are broken towards the lower token id here; the
    device version (torch.topk) may break exact ties differently.
    """
    P, Q = _pair(p, q)
    kk = _k_eff(k, P.shape[-1])
    sp, sq = _topk_V(P, kk), _topk_V(Q, kk)
    inter = np.any(sp[..., :, None] == sq[..., None, :], axis=-1)
    return _out(np.sum(inter, axis=-1) / kk)


def overlap_token_advantage(p: ArrayLike, q: ArrayLike, k: int = 16) -> np.ndarray | float:
    """Companion paper eq 7 at one position: the mean over v in S = TopK(p) cap TopK(q) of
    A(v) = p_bar(v) (log q_bar(v) - log p_bar(v)), where p_bar and q_bar are p and q both
    renormalised over the *student's* top-k set TopK(p) (the bars of the paper's eq 5, whose
    support is S_t = TopK(p_t, k)): p_bar = p / p(TopK(p)), q_bar = q / q(TopK(p)).

    Negative where the student over-weights shared tokens relative to the teacher; it rises
    toward 0 as the two align. NaN when the two sets are disjoint, or when the teacher's mass
    on TopK(p) underflows to 0 (q_bar undefined).
    """
    P, Q = _pair(p, q)
    kk = _k_eff(k, P.shape[-1])
    sp, sq = _topk_V(P, kk), _topk_V(Q, kk)
    p_top = np.take_along_axis(P, sp, -1)  # p and q at the student's top-k tokens, in sp order
    q_top = np.take_along_axis(Q, sp, -1)
    logpbar = _log(p_top) - _log(np.sum(p_top, -1))[..., None]
    q_mass = np.sum(q_top, -1)
    logqbar = _log(q_top) - _log(q_mass)[..., None]
    shared = np.any(sp[..., :, None] == sq[..., None, :], axis=-1)
    adv = np.where(shared, np.exp(logpbar) * (logqbar - logpbar), 0.0)
    n = np.sum(shared, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where((n > 0) & (q_mass > 0), np.sum(adv, -1) / np.maximum(n, 1), np.nan)
    return _out(mean)
