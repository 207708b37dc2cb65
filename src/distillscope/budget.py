"""Where targeted rollouts go: candidates, exponential depth windows, per-window top-k / top-r.

Section 2.5 and appendix D of the paper. Candidates at depth t are the tokens with P > tau under
the student or any teacher, plus the path's own token. Depth windows grow exponentially
([0, b), [b, 3b), [3b, 7b), ... with b = 50), so early, branch-rich positions are sampled densely.
In each window, *for each teacher separately* (appendix D), we keep its top k candidates by
|gkd gradient| = |P_theta^j (l_j - KL)| (full vocabulary, l_j = log P_theta^j - log P_te^j) and
its top r by |P_te^j - P_theta^j|; the union over teachers is enriched to N_min counted visits,
once (`select_per_teacher`). So every teacher's own important tokens are in the tree, not only
those of the teacher that diverges most from the student.

Departure from the paper: the path's own token is always a candidate but is ranked like any
other (the paper does not say whether it is enriched unconditionally).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def depth_windows(length: int, base: int = 50) -> list[tuple[int, int]]:
    """[(start, end)) windows of sizes base * 2**i covering [0, length)."""
    out, start, size = [], 0, base
    while start < length:
        out.append((start, min(start + size, length)))
        start += size
        size *= 2
    return out


@dataclass(frozen=True)
class Candidates:
    """Candidate children along one path: flattened (depth, token) pairs with their scores."""

    depth_C: np.ndarray
    token_C: np.ndarray
    gkd_C: np.ndarray  # max over teachers of |gkd gradient| (0 with no teachers)
    dprob_C: np.ndarray  # max over teachers of |P_te - P_theta|
    p_student_C: np.ndarray


def merge_candidates(
    depth: list[np.ndarray],
    token: list[np.ndarray],
    p_student: list[np.ndarray],
    p_teacher: list[np.ndarray],
    kl_at_depth: list[np.ndarray],
) -> Candidates:
    """Union the candidate pairs of several teachers (one list entry per teacher's scoring),
    scoring each pair by the max over teachers. `kl_at_depth[i][t]` is KL(student||teacher i)."""
    if not depth:
        return Candidates(*(np.zeros(0, dtype=int),) * 2, *(np.zeros(0),) * 3)
    d_all = np.concatenate(depth)
    k_all = np.concatenate(token)
    ps_all = np.concatenate(p_student)
    gk, dp = [], []
    for d, p_s, p_t, kl in zip(depth, p_student, p_teacher, kl_at_depth, strict=True):
        if np.all(np.isnan(p_t)):
            gk.append(np.zeros(len(d)))
            dp.append(np.zeros(len(d)))
            continue
        ell = np.log(np.maximum(p_s, 1e-300)) - np.log(np.maximum(p_t, 1e-300))
        gk.append(np.abs(p_s * (ell - kl[d])))
        dp.append(np.abs(p_t - p_s))
    g_all, dp_all = np.concatenate(gk), np.concatenate(dp)
    key = d_all.astype(np.int64) * (1 << 32) + k_all.astype(np.int64)
    uniq, inv = np.unique(key, return_inverse=True)
    g = np.zeros(len(uniq))
    dpr = np.zeros(len(uniq))
    ps = np.zeros(len(uniq))
    np.maximum.at(g, inv, g_all)
    np.maximum.at(dpr, inv, dp_all)
    ps[inv] = ps_all
    return Candidates(
        depth_C=(uniq >> 32).astype(np.int64),
        token_C=(uniq & 0xFFFFFFFF).astype(np.int64),
        gkd_C=g,
        dprob_C=dpr,
        p_student_C=ps,
    )


def select_children(
    cands: Candidates, length: int, *, base: int, top_k: int, top_r: int
) -> list[tuple[int, int]]:
    """Per window: top_k by gkd magnitude, top_r by probability difference; union, sorted by
    (depth, token). Ties are broken by (depth, token) so the choice is deterministic. With no
    teacher scores (all zero) the student's own probability ranks instead, so a teacher-free run
    still enriches the student's likely branches."""
    chosen: set[tuple[int, int]] = set()
    no_teacher = not np.any(cands.gkd_C) and not np.any(cands.dprob_C)
    for start, end in depth_windows(length, base):
        idx = np.flatnonzero((cands.depth_C >= start) & (cands.depth_C < end))
        if len(idx) == 0:
            continue
        for score, n in ((cands.gkd_C, top_k), (cands.dprob_C, top_r)):
            if n <= 0:
                continue
            s = cands.p_student_C[idx] if no_teacher else score[idx]
            order = np.lexsort((cands.token_C[idx], cands.depth_C[idx], -s))
            for i in idx[order[:n]]:
                chosen.add((int(cands.depth_C[i]), int(cands.token_C[i])))
    return sorted(chosen)


def select_per_teacher(
    depth: list[np.ndarray],
    token: list[np.ndarray],
    p_student: list[np.ndarray],
    p_teacher: list[np.ndarray],
    kl_at_depth: list[np.ndarray],
    length: int,
    *,
    base: int,
    top_k: int,
    top_r: int,
) -> list[tuple[int, int]]:
    """Each teacher's own top_k / top_r per window (one list entry per teacher's scoring, as
    `merge_candidates` takes them), then the union, sorted by (depth, token)."""
    chosen: set[tuple[int, int]] = set()
    for i in range(len(depth)):
        cands = merge_candidates([depth[i]], [token[i]], [p_student[i]], [p_teacher[i]],
                                 [kl_at_depth[i]])
        chosen.update(select_children(cands, length, base=base, top_k=top_k, top_r=top_r))
    return sorted(chosen)


# ---------------------------------------------------------------------------------------------
# Allocation of targeted rollouts
class FixedAllocator:
    """The paper's allocation: each chosen child, shallow first, enriched once to n_min counted
    visits (need = n_min - visits at the moment its unit is formed, so cascades from earlier
    units are not paid twice)."""

    def __init__(self, n_min: int):
        self.n_min = n_min
        self.pos = 0

    def next_batch(self, plan, max_groups: int) -> list[tuple[int, int, int, int]]:
        out = []
        while self.pos < len(plan.chosen) and len(out) < max_groups:
            d, pid, tok = plan.chosen[self.pos]
            self.pos += 1
            need = self.n_min - int(plan.trees[pid].visits(d, tok))
            if need > 0:
                out.append((pid, d, tok, need))
        return out


def make_allocator(config, plan):
    """`tree.budget`: fixed (the paper) or adaptive (distillscope.adaptive)."""
    if config.tree.budget == "adaptive":
        from distillscope.adaptive import AdaptiveAllocator

        return AdaptiveAllocator(config, plan)
    return FixedAllocator(config.tree.n_min)
