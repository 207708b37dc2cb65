"""The per-node gradients and alignment (docs/method.md#gradients), as pure numpy maths.

Why this module exists: every number the diagnostic reports is a cosine between two of these
vectors, so their sign conventions are the whole story. They are written once here, in float64,
and pinned by name in `tests/unit/test_gradients.py`.

Conventions (docs/method.md#gradients; they depart from the paper where the paper is
inconsistent):

* Every gradient is an **update direction** on the student's logits z_j, j in S_u: the way the
  method moves them. A positive cosine with `ideal_gradient` means helpful. So `gkd_gradient` is
  the *descent* direction of KL(student || teacher), i.e. eq 2.8 with its sign flipped (as the
  paper's text says), `sampled_gradient` is eq 2.9 as written (already an update), and
  `minillm_gradient` is eq 2.10 *without* its leading minus (the paper writes a loss gradient).
* The KL is always KL(pi_theta || pi_te) = sum_k P_theta^k (log P_theta^k - log P_te^k).
* Inputs are vectors over S_u (K children, index k), shape (K,). Under ``restrict="renorm"``
  (the default) both distributions are renormalised over S_u inside every function, so callers
  may pass full-vocabulary probabilities of the S_u tokens, or anything proportional to them.
  Under ``restrict="project"`` the inputs must be the full-vocabulary probabilities of the S_u
  tokens: the function computes the full-vocabulary gradient and keeps its S_u coordinates.
  Those coordinates need one full-vocabulary mean each (P_bar for ideal, the KL for gkd);
  callers pass them (`p_bar=`, `kl=`). Projected gradients do not sum to zero over S_u, and
  since f_j - mean is then a difference of two O(1) numbers, their absolute precision is
  ~1e-16 (renorm keeps full relative precision even for tiny gradients).

Numerics: everything happens in log space where it matters. Probabilities are floored at the
smallest normal float64 (`_TINY`) before logs, so a zero probability gives a huge but finite log
and never NaN/inf. Centred terms P_j (f_j - f_bar) are computed as P_j sum_k P_k (f_j - f_k),
which avoids the cancellation in f_j - f_bar when one P_k dominates (a 1e-30 coordinate keeps
its exact direction). Differences f_j - f_k within a few ulps of their operands' magnitude are
rounding residue and are set to exactly 0: a "zero gradient" (identical teacher and student,
equal success rates) is then exactly zero and `cosine` reports NaN for it, without an absolute
threshold that would misjudge tiny but real gradients.

The full-vocabulary features (`kl`, `js`, ..., `overlap_token_advantage`) live in
`distillscope.features` and are re-exported here, so `gradients.kl` keeps working.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from distillscope.features import (
    entropy,
    entropy_gap,
    js,
    kl,
    l2,
    overlap_ratio,
    overlap_token_advantage,
    prob_cosine,
)

Restrict = Literal["renorm", "project"]

_TINY = float(np.finfo(np.float64).tiny)
_EPS = float(np.finfo(np.float64).eps)
_SNAP_ULPS = 8.0
"""Differences smaller than this many ulps of their operands count as rounding residue (0)."""
_PAIRWISE_MAX = 2048

__all__ = [
    "Restrict",
    "cosine",
    "drgrpo_gradient",
    "drgrpo_gradient_from_counts",
    "entropy",
    "entropy_gap",
    "gkd_gradient",
    "ideal_gradient",
    "js",
    "kl",
    "l2",
    "minillm_gradient",
    "overlap_ratio",
    "overlap_token_advantage",
    "prob_cosine",
    "sampled_gradient",
    "teacher_advantage",
]


# --- helpers ---------------------------------------------------------------------------------


def _probs_K(x: ArrayLike, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D vector over S_u, got shape {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError(f"{name} must hold finite, non-negative probabilities")
    return a


def _values_K(x: ArrayLike, name: str, size: int) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.shape != (size,):
        raise ValueError(f"{name} must have shape ({size},), got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite")
    return a


def _check_restrict(restrict: str) -> None:
    if restrict not in ("renorm", "project"):
        raise ValueError(f"restrict must be 'renorm' or 'project', got {restrict!r}")


def _log(p: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(p, _TINY))


def _logsumexp(logp: np.ndarray) -> float:
    m = float(np.max(logp))
    return m + float(np.log(np.sum(np.exp(logp - m))))


def _renorm(p_K: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray, float]:
    """(P renormalised over S_u, raw log P, log of the S_u mass) computed in log space."""
    if not np.any(p_K > 0):
        raise ValueError(f"{name} puts no mass on S_u: cannot renormalise")
    logp = _log(p_K)
    lse = _logsumexp(logp)
    return np.exp(logp - lse), logp, lse


def _snap(d: np.ndarray, scale: np.ndarray | float) -> np.ndarray:
    """Zero the differences that are rounding residue relative to their operands' scale."""
    return np.where(np.abs(d) <= _SNAP_ULPS * _EPS * scale, 0.0, d)


def _deviation(P_K: np.ndarray, f_K: np.ndarray, scale_K: np.ndarray) -> np.ndarray:
    """f_j - sum_k P_k f_k for normalised P, as sum_k P_k (f_j - f_k) (no cancellation).

    O(K^2): S_u is a handful of children. Past _PAIRWISE_MAX (a whole vocabulary passed as
    S_u) it falls back to the direct difference, which loses precision for tiny gradients."""
    if f_K.size > _PAIRWISE_MAX:
        mean = float(P_K @ f_K)
        return _snap(f_K - mean, scale_K + float(P_K @ scale_K))
    d_KK = _snap(f_K[:, None] - f_K[None, :], scale_K[:, None] + scale_K[None, :])
    return d_KK @ P_K


def _onehot_minus(P_K: np.ndarray, r: int, *, renormalised: bool) -> np.ndarray:
    """delta_rj - P_j. For normalised P, 1 - P_r is summed from the other coordinates, which
    keeps its precision when P_r is close to 1."""
    d_K = -P_K
    d_K[r] = np.sum(np.delete(P_K, r)) if renormalised else 1.0 - P_K[r]
    return d_K


def _token(token: int, size: int) -> int:
    r = int(token)
    if r != token or not 0 <= r < size:
        raise ValueError(f"token must index the S_u vectors (0..{size - 1}), got {token}")
    return r


# --- gradients over S_u ----------------------------------------------------------------------


def ideal_gradient(
    p_student: ArrayLike,
    p_succ: ArrayLike,
    *,
    restrict: Restrict = "renorm",
    p_bar: float | None = None,
) -> np.ndarray:
    """Eq 2.3: g_j = P_theta^j (P_succ^j - P_bar), P_bar = sum_k P_theta^k P_succ^k.

    The ascent direction of the node's expected success sum_k P_theta^k P_succ^k: the reference
    every other method is compared with.

    restrict="renorm": P_theta renormalised over S_u; P_bar is the S_u mean (`p_bar` ignored).
    restrict="project": P_theta are full-vocabulary probabilities; P_bar should be the
    full-vocabulary mean success. Success is only estimated on S_u, so when `p_bar` is None the
    S_u-renormalised mean sum_S P P_succ / sum_S P is used instead, i.e. the children outside
    S_u are assumed to succeed as often as the S_u average.
    """
    _check_restrict(restrict)
    p_K = _probs_K(p_student, "p_student")
    f_K = _values_K(p_succ, "p_succ", p_K.size)
    if restrict == "renorm" or p_bar is None:
        P_K = _renorm(p_K, "p_student")[0]
        d_K = _deviation(P_K, f_K, np.abs(f_K))
        return (P_K if restrict == "renorm" else p_K) * d_K
    return p_K * _snap(f_K - float(p_bar), np.abs(f_K) + abs(float(p_bar)))


def gkd_gradient(
    p_student: ArrayLike,
    p_teacher: ArrayLike,
    *,
    restrict: Restrict = "renorm",
    kl: float | None = None,
) -> np.ndarray:
    """Eq 2.8 as a descent direction of KL(student || teacher): g_j = -P_theta^j (l_j - l_bar),
    l_k = log P_theta^k - log P_te^k, l_bar = sum_k P_theta^k l_k = KL(student || teacher).

    It raises the logits of tokens the teacher prefers relatively more than the student does.

    restrict="renorm": both renormalised over S_u, l_bar is the KL of the renormalised pair
    (`kl` ignored). restrict="project": full-vocabulary probabilities, and `kl` (required) is
    the full-vocabulary KL(student || teacher), e.g. the `kl` feature of `score_path`.
    """
    _check_restrict(restrict)
    p_K = _probs_K(p_student, "p_student")
    q_K = _probs_K(p_teacher, "p_teacher")
    if q_K.size != p_K.size:
        raise ValueError("p_student and p_teacher must have the same length")
    logp, logq = _log(p_K), _log(q_K)
    # log x carries an absolute rounding error of ~eps (1 + |log x|).
    scale_K = np.abs(logp) + np.abs(logq) + 2.0
    if restrict == "renorm":
        if not np.any(q_K > 0):
            raise ValueError("p_teacher puts no mass on S_u: cannot renormalise")
        P_K = _renorm(p_K, "p_student")[0]
        # The renormalisation constants cancel in l_j - l_k: use the raw logs.
        return -P_K * _deviation(P_K, logp - logq, scale_K)
    if kl is None:
        raise ValueError("restrict='project' needs kl=, the full-vocabulary KL(student||teacher)")
    d_K = _snap((logp - logq) - float(kl), scale_K + abs(float(kl)))
    return -p_K * d_K


def sampled_gradient(
    p_student: ArrayLike,
    p_teacher: ArrayLike,
    token: int,
    *,
    restrict: Restrict = "renorm",
) -> np.ndarray:
    """Eq 2.9, the single-sample estimator at the token r the path took (index into S_u):
    g_j = (log P_te^r - log P_theta^r - 1)(delta_rj - P_theta^j).

    An update direction as written; over r ~ P_theta its mean is `gkd_gradient` (appendix B.4;
    the -1 baseline averages out). Under "renorm" both log-probabilities at r are renormalised
    over S_u; under "project" they are the full-vocabulary ones.
    """
    _check_restrict(restrict)
    p_K = _probs_K(p_student, "p_student")
    q_K = _probs_K(p_teacher, "p_teacher")
    if q_K.size != p_K.size:
        raise ValueError("p_student and p_teacher must have the same length")
    r = _token(token, p_K.size)
    if restrict == "renorm":
        P_K, logp, lse_p = _renorm(p_K, "p_student")
        _, logq, lse_q = _renorm(q_K, "p_teacher")
        ratio = (logq[r] - logp[r]) - (lse_q - lse_p)
        scale = abs(logq[r]) + abs(logp[r]) + abs(lse_q) + abs(lse_p) + 1.0
    else:
        P_K, logp, logq = p_K, _log(p_K), _log(q_K)
        ratio = logq[r] - logp[r]
        scale = abs(logq[r]) + abs(logp[r]) + 1.0
    w = float(_snap(np.asarray(ratio - 1.0), scale))
    return w * _onehot_minus(P_K, r, renormalised=restrict == "renorm")


def minillm_gradient(
    p_student: ArrayLike,
    token: int,
    reward_to_go: float,
    *,
    restrict: Restrict = "renorm",
) -> np.ndarray:
    """Eq 2.10 as an update direction: g_j = (delta_rj - P_theta^j)(R - 1), with
    R = sum_{t' >= t} (log P_te - log P_theta)(o_t') over the tokens the path took from this
    node on, from full-vocabulary log-probabilities (the caller sums them).

    The paper writes the loss gradient, with a leading minus; we drop it so that, like every
    method here, the vector is the direction the logits move. R > 1 raises the taken token.
    `restrict` only changes P_theta (renormalised over S_u or not); R is always full-vocabulary.
    """
    _check_restrict(restrict)
    p_K = _probs_K(p_student, "p_student")
    r = _token(token, p_K.size)
    R = float(reward_to_go)
    if not np.isfinite(R):
        raise ValueError("reward_to_go must be finite")
    P_K = _renorm(p_K, "p_student")[0] if restrict == "renorm" else p_K
    w = float(_snap(np.asarray(R - 1.0), abs(R) + 1.0))
    return w * _onehot_minus(P_K, r, renormalised=restrict == "renorm")


def drgrpo_gradient_from_counts(
    p_student: ArrayLike,
    n_k: ArrayLike,
    adv_sum_k: ArrayLike,
    n_total: int,
    adv_sum_total: float,
    *,
    restrict: Restrict = "renorm",
) -> np.ndarray:
    """Eq 2.4 from per-child sums: g_j = (1/N_u) [sum_{i: r_i = j} A_i - P_theta^j sum_i A_i].

    `n_k[j]` and `adv_sum_k[j]` are the number of usable rollouts through u that chose child j
    and the sum of their advantages; `n_total` = N_u and `adv_sum_total` count *every* usable
    rollout through u, including those whose child is outside S_u (they contribute only the
    -P_theta^j A_i part). The gradient then sums to zero over S_u only when no rollout left S_u.
    Usable rollouts are those where the choice at u was sampled (docs/method.md#unbiased-counting:
    depth >= m).
    With n_total == 0 (no rollout) the RL update is zero. `n_k` is used for checks only.
    """
    _check_restrict(restrict)
    p_K = _probs_K(p_student, "p_student")
    K = p_K.size
    n = np.asarray(n_k)
    if n.shape != (K,) or np.any(n < 0):
        raise ValueError(f"n_k must be {K} non-negative counts")
    a_K = _values_K(adv_sum_k, "adv_sum_k", K)
    N = int(n_total)
    n_inside = int(np.sum(n))
    if n_inside > N:
        raise ValueError(f"n_total ({N}) is smaller than the S_u visits ({n_inside})")
    if np.any((n == 0) & (a_K != 0)):
        raise ValueError("adv_sum_k is non-zero for a child with no rollout")
    A = float(adv_sum_total)
    if not np.isfinite(A):
        raise ValueError("adv_sum_total must be finite")
    if N == 0:
        return np.zeros(K)
    P_K = _renorm(p_K, "p_student")[0] if restrict == "renorm" else p_K
    return (a_K - P_K * A) / N


def drgrpo_gradient(
    p_student: ArrayLike,
    chosen_tokens: ArrayLike,
    advantages: ArrayLike,
    *,
    restrict: Restrict = "renorm",
) -> np.ndarray:
    """Eq 2.4 from the rollouts through u: g_j = (1/N_u) sum_i A_i (delta_{r_i j} - P_theta^j).

    `chosen_tokens` (N,) holds each rollout's child as an index into S_u, or -1 for a child
    outside S_u; `advantages` (N,) the A_i (normalised by the question's initial rollouts).
    Over rollouts sampled from the student its mean is proportional to `ideal_gradient` (eq 2.5).
    See `drgrpo_gradient_from_counts`, which this delegates to.
    """
    p_K = _probs_K(p_student, "p_student")
    K = p_K.size
    r_N = np.asarray(chosen_tokens)
    if r_N.ndim != 1 or (r_N.size and not np.issubdtype(r_N.dtype, np.integer)):
        raise ValueError("chosen_tokens must be a 1-D integer array")
    r_N = r_N.astype(np.int64)
    if np.any((r_N < -1) | (r_N >= K)):
        raise ValueError(f"chosen_tokens must lie in -1..{K - 1}")
    A_N = _values_K(advantages, "advantages", r_N.size)
    inside = r_N >= 0
    n_K = np.bincount(r_N[inside], minlength=K)
    a_K = np.bincount(r_N[inside], weights=A_N[inside], minlength=K).astype(np.float64)
    return drgrpo_gradient_from_counts(
        p_K, n_K, a_K, r_N.size, float(np.sum(A_N)), restrict=restrict
    )


def teacher_advantage(p_student: ArrayLike, p_teacher: ArrayLike, p_succ: ArrayLike) -> float:
    """Eq 2.1: sum_{k in S_u} (P_te^k - P_theta^k) P_succ^k, both renormalised over S_u.

    Positive: the teacher puts more of its S_u mass on success-leading children.
    """
    p_K = _probs_K(p_student, "p_student")
    q_K = _probs_K(p_teacher, "p_teacher")
    if q_K.size != p_K.size:
        raise ValueError("p_student and p_teacher must have the same length")
    f_K = _values_K(p_succ, "p_succ", p_K.size)
    P_K = _renorm(p_K, "p_student")[0]
    Q_K = _renorm(q_K, "p_teacher")[0]
    return float(np.sum((Q_K - P_K) * f_K))


def cosine(a: ArrayLike, b: ArrayLike) -> float:
    """Eq 2.12: cos(a, b) in [-1, 1]; NaN (never 0) when either vector is zero or not finite.

    Zero means exactly zero. The tolerance is applied where the scale is known, inside the
    gradient functions: a difference within a few ulps of its operands (rounding residue)
    becomes exactly 0 there, so a gradient that should vanish does. An absolute threshold here
    would wrongly discard real gradients whose coordinates are all tiny (student P ~ 1e-30).
    Each vector is divided by its largest magnitude first, so tiny or huge entries neither
    underflow nor overflow.
    """
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"cosine of vectors of different lengths: {x.shape} vs {y.shape}")
    if x.size == 0 or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return float("nan")
    mx, my = float(np.max(np.abs(x))), float(np.max(np.abs(y)))
    if mx == 0.0 or my == 0.0:
        return float("nan")
    x, y = x / mx, y / my
    c = float(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y)))
    return min(1.0, max(-1.0, c))
