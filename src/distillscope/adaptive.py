"""Adaptive allocation of targeted rollouts (`tree.budget: adaptive`).

Why: the paper (section 2.5) enriches every chosen child to N_min = 100 counted visits, whatever
that child does to the alignment score. Most children need far fewer: the alignment is a cosine,
and a child with a small student probability, or a P_succ far from its siblings', hardly moves
it. Meanwhile the children that do move it are often not the chosen ones: a child that entered
S_u with 20-odd natural visits is never enriched by the paper. On the synthetic world
(`benchmarks/budget.py`, benchmarks/RESULTS.md) this allocator reaches a lower alignment error
than the paper's with about a quarter of its targeted rollouts.

How, per question (`AdaptiveAllocator.next_batch`, called by `phase1._targeted` until it
returns []; each call's groups are one committed unit):

1. Seed: every chosen child (`plan.chosen`: the paper's candidates, windows and top-k / top-r,
   shallow first) is enriched to N_sig counted visits, the least that puts it into S_u. So the
   decision points the paper would score exist here too, and shallow launches still cascade
   into deeper nodes.
2. Rounds. Every current decision point u (|S_u| >= 2, SR range > 0) gets a parametric
   bootstrap of its alignment (`node_error`): P*_k drawn from each child's Jeffreys posterior
   Beta(s + 1/2, n - s + 1/2), the ideal gradient recomputed per draw, and its cosine with every
   teacher's gkd gradient over S_u (probabilities from the phase 1 scoring in `plan.scores`).
   The spread around the reported cosine (plug-in P_hat) gives each teacher's RMS error; a node
   whose 95% half-width (widest teacher) is <= `adaptive_ci` is settled. For each child of an
   unsettled node, a look-ahead bootstrap gives the expected drop of the node's squared error
   (mean over teachers) if it received `adaptive_round` more visits at the same P_hat. The
   children with the largest drop per rollout, at least `adaptive_gain`, form the round (one
   group each, at most `max_groups`). Minimising the summed squared error at a price of
   `adaptive_gain` per rollout this way spends where the error is large *and* cheap to reduce:
   a near tie between two children (a sign that no affordable budget settles) gains little.
   A node shared by several paths (a common prefix) is scored once and weighted by the number
   of paths that report it, as the nodes table does.
3. Stop when no child of an unsettled node is worth a round, or all such children reached
   `adaptive_max_child` launched or counted visits.

Determinism (the pipeline's resume guarantee): `next_batch` reads only the plan's trees, its
fixed candidate scores and the allocator's own counters; the bootstrap uniforms of a node are
seeded by (run seed, question, node), and ties are broken by (path, depth, token). Replaying the
committed units therefore rebuilds the same state and the same later units.

Approximations: gradients here are always the renorm versions (also under `restrict: project`);
a child of S_u that is no scoring candidate (P < tau under every model) gets probability tau / 2
where unknown; with no teacher scored, the error of the ideal's own direction
(1 - cos(ideal*, ideal)) replaces the teachers' cosines; the gain ignores the bonus of a launch
on a path token, which also enriches the next node. A node does not stop merely because the
sign of its alignment is settled: a cosine of 0.6 +- 0.3 has a settled sign and a large error.

Config fields (read with getattr, so the allocator works before TreeConfig has them):
`adaptive_round` (default 20), `adaptive_gain` (1e-4), `adaptive_ci` (0.05),
`adaptive_max_child` (None = 2 * n_min). See `AdaptiveSettings`.

Shape letters (types.py) plus: D bootstrap draws, M teachers, R bootstrap variants.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import betaincinv

DRAWS = 256  # bootstrap draws per node and variant
Z95 = 1.959963984540054
MAX_ROUNDS = 100_000  # a guard: rounds per question


def _seed(*parts: Any) -> int:
    digest = hashlib.blake2b(json.dumps(parts, default=str).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 62) - 1)


@dataclass(frozen=True)
class AdaptiveSettings:
    """The allocator's knobs, from `config.tree` (defaults when a field is absent).

    round_size    adaptive_round: rollouts per child per round
    min_gain      adaptive_gain: least expected drop of squared alignment error per rollout
    ci_halfwidth  adaptive_ci: a node stops once its 95% half-width is at most this
    max_child     adaptive_max_child: cap on a child's launched or counted visits
    """

    n_start: int  # chosen children are first enriched to this (N_sig)
    n_sig: int
    round_size: int = 20
    ci_halfwidth: float = 0.05
    max_child: int = 200
    min_gain: float = 1e-4

    @classmethod
    def from_config(cls, config: Any) -> AdaptiveSettings:
        t = config.tree
        max_child = getattr(t, "adaptive_max_child", None)
        return cls(
            n_start=int(t.n_sig),
            n_sig=int(t.n_sig),
            round_size=int(getattr(t, "adaptive_round", 20)),
            ci_halfwidth=float(getattr(t, "adaptive_ci", 0.05)),
            max_child=int(max_child if max_child is not None else 2 * t.n_min),
            min_gain=float(getattr(t, "adaptive_gain", 1e-4)),
        )


# ---------------------------------------------------------------------------------------------
# The maths: bootstrap of the alignment at one node (pure functions)
def ideal_directions(p_K: np.ndarray, succ_XK: np.ndarray) -> np.ndarray:
    """Ideal gradients (renorm) for many P_succ vectors at once: p_k (P_k - sum_j p_j P_j),
    with p the student's probabilities renormalised over S_u. succ_XK has any leading shape."""
    p = p_K / p_K.sum()
    return p * (succ_XK - (succ_XK @ p)[..., None])


def gkd_directions(p_K: np.ndarray, q_MK: np.ndarray) -> np.ndarray:
    """gkd update directions (renorm) of M teachers: -p_k (l_k - sum_j p_j l_j),
    l = log p - log q over S_u, both renormalised."""
    p = p_K / p_K.sum()
    q = q_MK / q_MK.sum(axis=1, keepdims=True)
    ell = np.log(np.maximum(p, 1e-300)) - np.log(np.maximum(q, 1e-300))
    return -p * (ell - (ell @ p)[:, None])


def _cosines(x_XK: np.ndarray, g_MK: np.ndarray) -> np.ndarray:
    """cos(x, g_m) for every x (leading shape X) and teacher m: shape X + (M,); NaN where a
    norm is zero."""
    nx = np.linalg.norm(x_XK, axis=-1)
    ng = np.linalg.norm(g_MK, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (x_XK @ g_MK.T) / (nx[..., None] * ng)


@dataclass(frozen=True)
class NodeError:
    """Bootstrap error of one node's alignment: per-teacher RMS deviation of the cosine
    (`rms_M`), and per child the expected reduction of the node's mean squared error (over
    teachers) if that child received `extra` more rollouts (`gain_K`)."""

    rms_M: np.ndarray
    gain_K: np.ndarray

    @property
    def halfwidth(self) -> float:
        """Half-width of the node's 95% interval, the widest over teachers."""
        return float(Z95 * np.max(self.rms_M)) if len(self.rms_M) else 0.0


def _posterior_draws(n_K: np.ndarray, p_K: np.ndarray, u_DK: np.ndarray) -> np.ndarray:
    """Jeffreys posterior Beta(s + 1/2, n - s + 1/2), s = p n, by inversion of uniforms (the
    same uniforms for every n: common random numbers keep gains smooth in n)."""
    return betaincinv(p_K * n_K + 0.5, (1.0 - p_K) * n_K + 0.5, u_DK)


def node_error(
    p_K: np.ndarray,
    visits_K: np.ndarray,
    successes_K: np.ndarray,
    q_MK: np.ndarray | None,
    rng: np.random.Generator,
    extra: int = 20,
    draws: int = DRAWS,
) -> NodeError:
    """Parametric bootstrap of Align(u) = cos(ideal, gkd_m) around its plug-in value.

    p_K: student probabilities of the S_u children; visits/successes: their counts; q_MK: the
    teachers' probabilities (None or M = 0: the ideal's own direction, 1 - cos(ideal*, ideal),
    replaces the teachers' cosines). Draws of P_succ come from each child's posterior.

    rms_M resamples every child. gain_K is a look-ahead that assumes the estimate will not
    move: child k alone resampled from its posterior now, minus the same from the narrower
    posterior it would have after `extra` more visits with the same P_hat. A child whose
    uncertainty does not move the cosine, or whose node is a coin flip that `extra` rollouts
    cannot settle (two children of nearly equal P_succ), gains little."""
    n = np.asarray(visits_K, dtype=np.float64)
    s = np.asarray(successes_K, dtype=np.float64)
    K = len(n)
    p_hat = s / np.maximum(n, 1)
    u_DK = rng.random((draws, K))
    now_DK = _posterior_draws(n, p_hat, u_DK)
    next_DK = _posterior_draws(n + extra, p_hat, u_DK)
    succ_RDK = np.broadcast_to(p_hat, (2 * K + 1, draws, K)).copy()
    succ_RDK[0] = now_DK
    for k in range(K):
        succ_RDK[1 + k, :, k] = now_DK[:, k]
        succ_RDK[1 + K + k, :, k] = next_DK[:, k]
    x_hat = ideal_directions(p_K, p_hat)
    x_RDK = ideal_directions(p_K, succ_RDK)
    g_MK = gkd_directions(p_K, q_MK) if q_MK is not None and len(q_MK) else np.zeros((0, K))
    g_MK = g_MK[np.linalg.norm(g_MK, axis=1) > 0]
    if len(g_MK):
        dev_RDM = (_cosines(x_RDK, g_MK) - _cosines(x_hat, g_MK)) ** 2
    else:
        dev_RDM = 1.0 - _cosines(x_RDK, x_hat[None, :])
    dev_RDM = np.where(np.isfinite(dev_RDM), dev_RDM, 4.0)  # an undefined cosine: worst case
    rms_M = np.sqrt(dev_RDM[0].mean(axis=0))
    share_R = dev_RDM[1:].mean(axis=(1, 2))
    gain_K = np.maximum(share_R[:K] - share_R[K:], 0.0)
    return NodeError(rms_M=rms_M, gain_K=gain_K)


# ---------------------------------------------------------------------------------------------
# The allocator
class _ProbTable:
    """Candidate probabilities along one path: (depth, token) -> student and per-teacher
    probabilities, from the plan's PathScores (NaN where a model did not list the pair)."""

    def __init__(self, scores: dict[str, Any]) -> None:
        self.teachers = sorted(n for n, s in scores.items()
                               if not np.all(np.isnan(s.p_teacher_C)))
        keys, ps = [], []
        for s in scores.values():
            keys.append((s.cand_pos_C.astype(np.int64) << 32) | s.cand_tok_C.astype(np.int64))
            ps.append(s.p_student_C)
        allk = np.concatenate(keys) if keys else np.zeros(0, dtype=np.int64)
        self.keys, first = np.unique(allk, return_index=True)
        self.p_student = np.concatenate(ps)[first] if keys else np.zeros(0)
        self.p_teacher = np.full((len(self.teachers), len(self.keys)), np.nan)
        for m, name in enumerate(self.teachers):
            s = scores[name]
            k = (s.cand_pos_C.astype(np.int64) << 32) | s.cand_tok_C.astype(np.int64)
            self.p_teacher[m, np.searchsorted(self.keys, k)] = s.p_teacher_C

    def at(self, depth: int, tokens_K: np.ndarray, fill: float) -> tuple[np.ndarray, np.ndarray]:
        """(p_student_K, p_teacher_MK) of children at `depth`; `fill` where unknown."""
        key = (np.int64(depth) << 32) | tokens_K.astype(np.int64)
        j = np.minimum(np.searchsorted(self.keys, key), max(len(self.keys) - 1, 0))
        found = (self.keys[j] == key) if len(self.keys) else np.zeros(len(key), bool)
        ps = np.where(found, self.p_student[j] if len(self.keys) else fill, fill)
        pt = np.full((len(self.teachers), len(key)), fill)
        if len(self.keys):
            pt = np.where(found[None, :], self.p_teacher[:, j], fill)
        ps = np.where(np.isfinite(ps) & (ps > 0), ps, fill)
        pt = np.where(np.isfinite(pt) & (pt > 0), pt, fill)
        return ps, pt


class AdaptiveAllocator:
    """Seed every chosen child to N_sig, then rounds to the children whose uncertainty moves
    the alignment most (module docstring). `next_batch` -> [(path_id, depth, token, n)]."""

    def __init__(self, config: Any, plan: Any) -> None:
        self.settings = AdaptiveSettings.from_config(config)
        self.tau = float(config.tree.tau)
        self.seed = (int(config.seed), str(plan.q.qid))
        self.pos = 0  # seeding position in plan.chosen
        self.rounds = 0
        self.allocated: dict[tuple[int, int, int], int] = {}
        self.done = False
        self._cache: dict[tuple[int, int], tuple[bytes, NodeError]] = {}
        self.pids = sorted(plan.trees)
        self.tables = {pid: _ProbTable(plan.scores.get(pid, {})) for pid in self.pids}
        # canon[pid][d]: the smallest path id sharing the node (prefix path[:d]) with pid
        paths = {pid: plan.trees[pid].path for pid in self.pids}
        self.canon: dict[int, np.ndarray] = {}
        for pid in self.pids:
            c = np.full(len(paths[pid]), pid, dtype=np.int64)
            for other in reversed([o for o in self.pids if o < pid]):
                a, b = paths[pid], paths[other]
                n = min(len(a), len(b))
                diff = np.flatnonzero(a[:n] != b[:n])
                lcp = int(diff[0]) if len(diff) else n
                c[: min(lcp + 1, len(c), len(b))] = other  # nodes d <= lcp share path[:d]
            self.canon[pid] = c

    # --- the two phases -----------------------------------------------------------------------
    def next_batch(self, plan: Any, max_groups: int) -> list[tuple[int, int, int, int]]:
        if self.done:
            return []
        out = self._seed_batch(plan, max_groups)
        if out:
            return out
        out = self._round(plan, max_groups)
        if not out:
            self.done = True
        return out

    def _seed_batch(self, plan: Any, max_groups: int) -> list[tuple[int, int, int, int]]:
        out: list[tuple[int, int, int, int]] = []
        seen: set[tuple[int, int, int]] = set()
        while self.pos < len(plan.chosen) and len(out) < max_groups:
            d, pid, tok = plan.chosen[self.pos]
            self.pos += 1
            cpid = int(self.canon[pid][d])
            if (cpid, d, tok) in seen:
                continue
            need = self.settings.n_start - int(plan.trees[pid].visits(d, tok))
            if need > 0:
                seen.add((cpid, d, tok))
                out.append((cpid, d, tok, need))
                self.allocated[(cpid, d, tok)] = self.allocated.get((cpid, d, tok), 0) + need
        return out

    def _round(self, plan: Any, max_groups: int) -> list[tuple[int, int, int, int]]:
        if self.rounds >= MAX_ROUNDS:
            return []
        st = self.settings
        cands: list[tuple[float, int, int, int, int]] = []
        for (pid, d), (weight, err, tokens, visits) in self.errors(plan).items():
            if err.halfwidth <= st.ci_halfwidth:
                continue
            for k, tok in enumerate(tokens):
                key = (pid, d, int(tok))
                room = st.max_child - max(int(visits[k]), self.allocated.get(key, 0))
                n = min(st.round_size, room)
                gain = weight * err.gain_K[k] / st.round_size  # per rollout
                if n <= 0 or gain <= 0 or gain < st.min_gain:
                    continue
                cands.append((-gain, pid, d, int(tok), n))
        cands.sort()
        out = [(pid, d, tok, n) for _, pid, d, tok, n in cands[:max_groups]]
        for pid, d, tok, n in out:
            self.allocated[(pid, d, tok)] = self.allocated.get((pid, d, tok), 0) + n
        self.rounds += 1
        return out

    # --- node errors ------------------------------------------------------------------------------
    def decision_nodes(self, plan: Any) -> dict[tuple[int, int], tuple[int, np.ndarray,
                                                                       np.ndarray, np.ndarray]]:
        """Current decision points, once per distinct node: (canonical path, depth) ->
        (number of paths reporting it, S_u tokens, visits, successes)."""
        n_sig = self.settings.n_sig
        nodes: dict[tuple[int, int], Any] = {}
        for pid in self.pids:
            tree = plan.trees[pid]
            on = tree.on_path().visits
            # a node can hold |S_u| >= 2 only if rollouts reach it: the root, nodes below an
            # on-path child with >= n_sig visits, and nodes where targeted rollouts start
            depths = {0} | {int(d) + 1 for d in np.flatnonzero(on[:-1] >= n_sig)}
            depths |= {d for (p, d, _t) in self.allocated
                       if d < len(tree) and p == int(self.canon[pid][d])}
            for d in sorted(depths):
                if d >= len(tree):
                    continue
                key = (int(self.canon[pid][d]), d)
                if key in nodes:
                    nodes[key] = (nodes[key][0] + 1, *nodes[key][1:])
                    continue
                c = tree.counts(d)
                s_u = c.visits >= n_sig
                if s_u.sum() < 2:
                    continue
                p_hat = c.successes[s_u] / c.visits[s_u]
                if p_hat.max() - p_hat.min() <= 0:
                    continue
                nodes[key] = (1, c.tokens[s_u], c.visits[s_u], c.successes[s_u])
        return nodes

    def errors(self, plan: Any) -> dict[tuple[int, int], tuple[int, NodeError, np.ndarray,
                                                               np.ndarray]]:
        """Bootstrap error of every current decision point (see `node_error`)."""
        out = {}
        for (pid, d), (weight, tokens, visits, succ) in sorted(self.decision_nodes(plan).items()):
            state = tokens.tobytes() + visits.tobytes() + succ.tobytes()
            hit = self._cache.get((pid, d))
            if hit is not None and hit[0] == state:  # a pure function of the counts
                err = hit[1]
            else:
                p_s, p_t = self.tables[pid].at(d, tokens, self.tau / 2)
                rng = np.random.default_rng(_seed(*self.seed, pid, d))
                err = node_error(p_s, visits, succ, p_t, rng, extra=self.settings.round_size)
                self._cache[(pid, d)] = (state, err)
            out[(pid, d)] = (weight, err, tokens, visits)
        return out
