"""The generation tree along representative paths, with unbiased child counts
(docs/method.md#unbiased-counting).

A representative path P (a response, token ids) defines nodes: the node at depth t is the prefix
P[:t], for t in [0, len(P)). A rollout *passes* node t when its response starts with P[:t] and
has a token at position t; that token is the child it takes there. Only the nodes on P are kept
(the analysis never needs the rest of the tree), but every child seen at those nodes is counted,
on-path (the child P[t]) or not.

Each rollout was launched with a forced response prefix of length m (0 for initial rollouts,
t + 1 for a targeted rollout at depth t). Three counts are kept per (depth, child), always:

    paper     every rollout at every node it passes (the paper's section 2.5 counting, which is
              biased: a targeted rollout was not sampled by the student above its launch node)
    unbiased  only at depths t' >= m - 1, from the launch child downward
              (docs/method.md#unbiased-counting, default)
    rl        only at depths t' >= m, where the choice at the node itself was sampled; these are
              the rollouts Dr. GRPO's finite-sample estimator (eq 2.4) may use

The tree's `estimator` ("unbiased" or "paper") chooses which of the first two is reported as
`visits`/`successes`; `rl_visits`/`rl_successes` do not depend on it. A rollout is a success when
its reward is >= 0.5 (rewards are 0/1 in every task here).

Construction is vectorised for 10^5 rollouts of 10^3 tokens per question: the longest common
prefix of every rollout with P is computed on flat (ragged) token arrays in bounded chunks,
on-path visits of a depth range [lo, lcp) go through difference arrays and a cumulative sum,
and the one off-path child (at depth lcp) through a sort-and-bincount. Counts are integer sums,
so the tree does not depend on the order or batching in which rollouts are added.

`backup_on_path` below is the stratified `backup` estimate (docs/method.md#estimators): it
needs the student's probabilities along the path, so it is a function of a tree, not a counting
mode. The pipeline does not offer it (it did not lower the alignment error on the synthetic
world; `benchmarks/budget.py` recomputes it after a run). A PathTree built with estimator
"backup" counts like "unbiased"; `to_frame(p_hat_on_path=...)` writes the backed-up estimates of
the on-path children into `p_hat`.

Shape letters (types.py): N rollouts, K children of one node, L path length, C (depth, token)
pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any, Literal

import numpy as np

Estimator = Literal["unbiased", "paper", "backup"]
ESTIMATORS: tuple[str, ...] = ("unbiased", "paper", "backup")

PExact = Mapping[int, np.ndarray] | Callable[[int, np.ndarray], np.ndarray]
_PAPER, _UNBIASED, _RL = 0, 1, 2  # rows of the count arrays
_SHIFT = np.int64(32)  # off-path key = depth << 32 | token
_CHUNK_TOKENS = 1 << 22  # tokens compared per LCP chunk (bounds temporary memory)


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ragged:
    """Token ids of N responses, concatenated: response i is flat[offsets[i]:offsets[i + 1]]."""

    flat: np.ndarray  # (sum of lengths,) int64
    offsets: np.ndarray  # (N + 1,) int64, offsets[0] == 0

    @classmethod
    def from_sequences(cls, seqs: Sequence[Sequence[int]]) -> Ragged:
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        if any(isinstance(s, np.ndarray) for s in seqs):
            parts = [np.asarray(s, dtype=np.int64) for s in seqs if len(s)]
            flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        else:  # lists / tuples of ints: one pass, no per-sequence arrays
            flat = np.fromiter(chain.from_iterable(seqs), dtype=np.int64, count=int(offsets[-1]))
        return cls(flat, offsets)

    @classmethod
    def from_lengths(cls, flat: np.ndarray, lengths: np.ndarray) -> Ragged:
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(np.asarray(lengths, dtype=np.int64), out=offsets[1:])
        if offsets[-1] != len(flat):
            raise ValueError(f"lengths sum to {offsets[-1]}, flat has {len(flat)} tokens")
        return cls(np.asarray(flat, dtype=np.int64), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def as_ragged(responses: Ragged | Sequence[Sequence[int]]) -> Ragged:
    return responses if isinstance(responses, Ragged) else Ragged.from_sequences(responses)


def common_prefix_lengths(responses: Ragged, path_L: np.ndarray) -> np.ndarray:
    """lcp_N: the length of the longest common prefix of each response with the path.

    Galloping windows: all rollouts compare their first 32 tokens with the path at once (a 2-d
    gather), those that match the whole window compare the next 64, then 128, ... So the work
    per rollout is O(its lcp), not O(its length): a rollout that left the path early costs
    little, however long it goes on. Rollouts are taken in chunks of about _CHUNK_TOKENS
    tokens (bounded temporary memory)."""
    path_L = np.asarray(path_L, dtype=np.int64)
    L = len(path_L)
    path_ext = np.concatenate([path_L, [-1]])  # position >= L never matches a (>= 0) token
    lengths = responses.lengths
    starts = responses.offsets[:-1]
    flat = responses.flat
    lcp = np.minimum(lengths, L)  # the answer when nothing mismatches
    n = len(responses)
    chunk = max(1, _CHUNK_TOKENS // max(1, int(lengths.mean()) if n else 1))
    for c0 in range(0, n, chunk):
        active = np.arange(c0, min(n, c0 + chunk))
        active = active[lcp[active] > 0]
        pos0, width = 0, 32
        while len(active):
            pos_W = pos0 + np.arange(width)
            limit_A = lcp[active]  # min(length, L): compare only below it
            inside = pos_W[None, :] < limit_A[:, None]
            idx = np.minimum(starts[active][:, None] + pos_W[None, :], max(len(flat) - 1, 0))
            same = inside & (flat[idx] == path_ext[np.minimum(pos_W, L)][None, :])
            stop = ~same.all(axis=1)  # a mismatch or the end inside this window
            first = np.argmin(same[stop], axis=1)
            lcp[active[stop]] = pos0 + first
            active = active[~stop]
            pos0 += width
            width *= 2
    return lcp


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChildCounts:
    """Counts of K children (of one node, or of arbitrary (depth, token) pairs)."""

    tokens: np.ndarray
    visits: np.ndarray
    successes: np.ndarray
    rl_visits: np.ndarray
    rl_successes: np.ndarray

    @property
    def p_hat(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.visits > 0, self.successes / np.maximum(self.visits, 1), np.nan)


class PathTree:
    """Child counts at the nodes of one representative path. See the module docstring.

    `add` may be called any number of times (initial rollouts, then targeted batches); queries
    reflect everything added so far.
    """

    def __init__(self, path_ids: Sequence[int], estimator: Estimator = "unbiased") -> None:
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator '{estimator}'; allowed: {', '.join(ESTIMATORS)}")
        self.path = np.asarray(path_ids, dtype=np.int64)
        if self.path.ndim != 1 or (len(self.path) and self.path.min() < 0):
            raise ValueError("path_ids must be a 1-d sequence of non-negative token ids")
        self.estimator: Estimator = estimator
        self._row = _PAPER if estimator == "paper" else _UNBIASED
        L = len(self.path)
        self._on_n = np.zeros((3, L), dtype=np.int64)  # on-path child at each depth
        self._on_s = np.zeros((3, L), dtype=np.int64)
        self._off_key = np.zeros(0, dtype=np.int64)  # sorted unique depth << 32 | token
        self._off_n = np.zeros((3, 0), dtype=np.int64)
        self._off_s = np.zeros((3, 0), dtype=np.int64)
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.n_rollouts = 0

    def __len__(self) -> int:
        return len(self.path)

    # --- building --------------------------------------------------------------------------------
    def add(
        self,
        responses: Ragged | Sequence[Sequence[int]],
        forced_len: int | Sequence[int] | np.ndarray,
        reward: float | Sequence[float] | np.ndarray,
        lcp: np.ndarray | None = None,
    ) -> None:
        """Count rollouts: whole responses (forced prefix included), the forced prefix length m
        of each, and the reward of each (scalars broadcast). `lcp` (from
        `common_prefix_lengths`) may be passed when already computed."""
        r = as_ragged(responses)
        n = len(r)
        if n == 0:
            return
        m = np.broadcast_to(np.asarray(forced_len, dtype=np.int64), (n,))
        rew = np.broadcast_to(np.asarray(reward, dtype=np.float64), (n,))
        if np.any(m < 0):
            raise ValueError("forced_len must be >= 0")
        if np.any(m > r.lengths):
            raise ValueError("forced_len exceeds the response length")
        if lcp is None:
            lcp = common_prefix_lengths(r, self.path)
        succ = (rew >= 0.5).astype(np.int64)
        L = len(self.path)
        lo_R_N = np.stack([np.zeros(n, dtype=np.int64), np.maximum(m - 1, 0), m])
        for row in (_PAPER, _UNBIASED, _RL):
            lo = lo_R_N[row]
            ok = lo < lcp  # on-path children at depths [lo, lcp)
            for arr, w in ((self._on_n, None), (self._on_s, succ[ok])):
                d = np.bincount(lo[ok], weights=w, minlength=L + 1)
                d -= np.bincount(lcp[ok], weights=w, minlength=L + 1)
                arr[row] += np.rint(np.cumsum(d[:L])).astype(np.int64)
        # the one off-path child, at depth lcp, when the rollout goes on and the path does too
        off = (lcp < r.lengths) & (lcp < L)
        if np.any(off):
            d = lcp[off]
            tok = r.flat[r.offsets[:-1][off] + d]
            key = (d << _SHIFT) | tok
            counted = d[None, :] >= lo_R_N[:, off]  # (3, n_off)
            self._pending.append((key, counted.astype(np.int64), counted * succ[off][None, :]))
        self.n_rollouts += n

    def _consolidate(self) -> None:
        if not self._pending:
            return
        keys = np.concatenate([self._off_key] + [p[0] for p in self._pending])
        n = np.concatenate([self._off_n] + [p[1] for p in self._pending], axis=1)
        s = np.concatenate([self._off_s] + [p[2] for p in self._pending], axis=1)
        self._pending = []
        uniq, inv = np.unique(keys, return_inverse=True)
        K = len(uniq)
        self._off_key = uniq
        self._off_n = np.stack([np.bincount(inv, weights=n[i], minlength=K) for i in range(3)])
        self._off_s = np.stack([np.bincount(inv, weights=s[i], minlength=K) for i in range(3)])
        self._off_n = np.rint(self._off_n).astype(np.int64)
        self._off_s = np.rint(self._off_s).astype(np.int64)

    # --- queries ---------------------------------------------------------------------------------
    def counts(self, depth: int, estimator: Estimator | None = None) -> ChildCounts:
        """Children of the node at `depth`: the on-path child first (always, even unvisited),
        then the off-path children with any count, by token id."""
        if not 0 <= depth < len(self.path):
            raise IndexError(f"depth {depth} outside the path [0, {len(self.path)})")
        row = self._row_of(estimator)
        self._consolidate()
        a = np.searchsorted(self._off_key, np.int64(depth) << _SHIFT)
        b = np.searchsorted(self._off_key, np.int64(depth + 1) << _SHIFT)
        sl = slice(a, b)
        keep = (self._off_n[row, sl] > 0) | (self._off_n[_RL, sl] > 0)
        idx = np.arange(a, b)[keep]
        tok = self._off_key[idx] & 0xFFFFFFFF
        return ChildCounts(
            tokens=np.concatenate([[self.path[depth]], tok]),
            visits=np.concatenate([[self._on_n[row, depth]], self._off_n[row, idx]]),
            successes=np.concatenate([[self._on_s[row, depth]], self._off_s[row, idx]]),
            rl_visits=np.concatenate([[self._on_n[_RL, depth]], self._off_n[_RL, idx]]),
            rl_successes=np.concatenate([[self._on_s[_RL, depth]], self._off_s[_RL, idx]]),
        )

    def lookup(
        self, depth_C: np.ndarray, token_C: np.ndarray, estimator: Estimator | None = None
    ) -> ChildCounts:
        """Counts of arbitrary (depth, token) pairs, vectorised; zero for unseen children."""
        depth_C = np.asarray(depth_C, dtype=np.int64).ravel()
        token_C = np.asarray(token_C, dtype=np.int64).ravel()
        if len(depth_C) != len(token_C):
            raise ValueError("depth_C and token_C differ in length")
        if np.any((depth_C < 0) | (depth_C >= len(self.path))):
            raise IndexError(f"a depth lies outside the path [0, {len(self.path)})")
        row = self._row_of(estimator)
        self._consolidate()
        on = token_C == self.path[depth_C]
        key = (depth_C << _SHIFT) | token_C
        j = np.minimum(np.searchsorted(self._off_key, key), max(len(self._off_key) - 1, 0))
        found = (~on) & (len(self._off_key) > 0)
        if len(self._off_key):
            found &= self._off_key[j] == key

        def pick(on_arr: np.ndarray, off_arr: np.ndarray) -> np.ndarray:
            out = np.zeros(len(depth_C), dtype=np.int64)
            out[on] = on_arr[depth_C[on]]
            out[found] = off_arr[j[found]]
            return out

        return ChildCounts(
            tokens=token_C,
            visits=pick(self._on_n[row], self._off_n[row]),
            successes=pick(self._on_s[row], self._off_s[row]),
            rl_visits=pick(self._on_n[_RL], self._off_n[_RL]),
            rl_successes=pick(self._on_s[_RL], self._off_s[_RL]),
        )

    def visits(self, depth: int | np.ndarray, token: int | np.ndarray) -> Any:
        """Counted visits of (depth, token): an int for scalars, an array for arrays."""
        c = self.lookup(np.atleast_1d(depth), np.atleast_1d(token)).visits
        return int(c[0]) if np.ndim(depth) == 0 and np.ndim(token) == 0 else c

    def on_path(self, estimator: Estimator | None = None) -> ChildCounts:
        """Counts of the on-path child at every depth (arrays of length L)."""
        row = self._row_of(estimator)
        return ChildCounts(
            tokens=self.path.copy(),
            visits=self._on_n[row].copy(),
            successes=self._on_s[row].copy(),
            rl_visits=self._on_n[_RL].copy(),
            rl_successes=self._on_s[_RL].copy(),
        )

    def _row_of(self, estimator: Estimator | None) -> int:
        if estimator is None:
            return self._row
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator '{estimator}'; allowed: {', '.join(ESTIMATORS)}")
        return _PAPER if estimator == "paper" else _UNBIASED

    # --- export ----------------------------------------------------------------------------------
    def to_frame(
        self,
        qid: str,
        path_id: int,
        decode: Callable[[int], str] | None = None,
        p_exact: PExact | None = None,
        depths: Sequence[int] | None = None,
        p_hat_on_path: np.ndarray | None = None,
    ) -> Any:
        """A pandas DataFrame with the columns of `schemas.CHILDREN`, one row per child.

        `decode(token) -> str` fills token_text (default: the id). `p_exact` fills p_exact
        (default NaN): either a mapping depth -> full-vocabulary array of exact child success
        probabilities (what `ToyModel.exact_child_success` returns), or a callable
        `(depth, tokens_K) -> values_K`. `p_hat_on_path` (length L, e.g. `backup_on_path`)
        replaces p_hat of the on-path children where it is finite."""
        import pandas as pd

        rows: dict[str, list[np.ndarray]] = {
            k: []
            for k in ("depth", "token", "on_path", "visits", "successes", "rl_visits",
                      "rl_successes", "p_exact")
        }
        for d in range(len(self.path)) if depths is None else depths:
            c = self.counts(int(d))
            K = len(c.tokens)
            rows["depth"].append(np.full(K, d, dtype=np.int32))
            rows["token"].append(c.tokens.astype(np.int32))
            rows["on_path"].append(np.arange(K) == 0)
            rows["visits"].append(c.visits)
            rows["successes"].append(c.successes)
            rows["rl_visits"].append(c.rl_visits)
            rows["rl_successes"].append(c.rl_successes)
            rows["p_exact"].append(_exact_values(p_exact, int(d), c.tokens))
        cols = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in rows.items()}
        n = len(cols["depth"])
        visits = cols["visits"].astype(np.int64)
        successes = cols["successes"].astype(np.int64)
        with np.errstate(invalid="ignore", divide="ignore"):
            p_hat = np.where(visits > 0, successes / np.maximum(visits, 1), np.nan)
        if p_hat_on_path is not None:
            on = cols["on_path"].astype(bool)
            repl = np.asarray(p_hat_on_path, dtype=np.float64)[cols["depth"][on].astype(np.int64)]
            p_hat[np.flatnonzero(on)[np.isfinite(repl)]] = repl[np.isfinite(repl)]
        decode = decode or str
        return pd.DataFrame(
            {
                "qid": [qid] * n,
                "path_id": np.full(n, path_id, dtype=np.int32),
                "depth": cols["depth"].astype(np.int32),
                "token": cols["token"].astype(np.int32),
                "token_text": [decode(int(t)) for t in cols["token"]],
                "on_path": cols["on_path"].astype(bool),
                "visits": visits,
                "successes": successes,
                "p_hat": p_hat,
                "rl_visits": cols["rl_visits"].astype(np.int64),
                "rl_successes": cols["rl_successes"].astype(np.int64),
                "p_exact": cols["p_exact"].astype(np.float64),
            }
        )


def _exact_values(p_exact: PExact | None, depth: int, tokens_K: np.ndarray) -> np.ndarray:
    if p_exact is None:
        return np.full(len(tokens_K), np.nan)
    if isinstance(p_exact, Mapping):
        if depth not in p_exact:
            return np.full(len(tokens_K), np.nan)
        return np.asarray(p_exact[depth], dtype=np.float64)[tokens_K]
    return np.asarray(p_exact(depth, tokens_K), dtype=np.float64).reshape(len(tokens_K))


# ---------------------------------------------------------------------------------------------
class QuestionTree:
    """The PathTrees of one question. A rollout may pass nodes of every path (paths share
    prefixes), so `add` counts each rollout against all of them."""

    def __init__(
        self, paths: dict[int, Sequence[int]], estimator: Estimator = "unbiased"
    ) -> None:
        self.trees = {pid: PathTree(p, estimator) for pid, p in paths.items()}
        self.estimator = estimator

    def __getitem__(self, path_id: int) -> PathTree:
        return self.trees[path_id]

    def add(
        self,
        responses: Ragged | Sequence[Sequence[int]],
        forced_len: int | Sequence[int] | np.ndarray,
        reward: float | Sequence[float] | np.ndarray,
    ) -> None:
        r = as_ragged(responses)
        for tree in self.trees.values():
            tree.add(r, forced_len, reward)

    def to_frame(
        self,
        qid: str,
        decode: Callable[[int], str] | None = None,
        p_exact: Callable[[int, int, np.ndarray], np.ndarray] | None = None,
    ) -> Any:
        """All paths' children; `p_exact(path_id, depth, tokens_K)`."""
        import pandas as pd

        frames = []
        for pid, tree in self.trees.items():
            pe = None
            if p_exact is not None:
                pe = (lambda p: lambda d, toks: p_exact(p, d, toks))(pid)
            frames.append(tree.to_frame(qid, pid, decode=decode, p_exact=pe))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# ---------------------------------------------------------------------------------------------
def backup_on_path(
    tree: PathTree, p_student: Callable[[int, np.ndarray], np.ndarray], n_sig: int = 20
) -> np.ndarray:
    """The stratified `backup` estimate (docs/method.md#estimators) for the on-path child at every
    depth.

    Q(t, P[t]) is the value of node t + 1, estimated as sum_{j in S} pi_j Qhat(t+1, j) +
    (1 - sum_S pi_j) Qhat_rest, where S are the children of node t + 1 with >= n_sig unbiased
    visits, pi the student's probabilities there (`p_student(depth, tokens_K)`, full-vocabulary,
    not renormalised), Qhat(t+1, P[t+1]) itself backed up from below, and Qhat_rest the success
    rate of the naturally sampled rollouts (rl counts) at node t + 1 that took a child outside S.
    Falls back to the direct unbiased estimate where node t + 1 has no such data (no S, or rest
    mass without rl visits) and at the last depth. Returns q_L (NaN where nothing is known).
    """
    L = len(tree)
    direct = tree.on_path().p_hat
    q = direct.copy()
    for t in range(L - 2, -1, -1):
        c = tree.counts(t + 1, "unbiased")
        in_s = c.visits >= n_sig
        in_s[0] = in_s[0] and not np.isnan(q[t + 1])
        if not np.any(in_s):
            continue
        pi = np.asarray(p_student(t + 1, c.tokens), dtype=np.float64)
        qk = c.p_hat.copy()
        qk[0] = q[t + 1]
        mass_s = float(pi[in_s].sum())
        rest_n = c.rl_visits[~in_s].sum()
        rest_s = c.rl_successes[~in_s].sum()
        rest_mass = max(0.0, 1.0 - mass_s)
        if rest_mass > 1e-12 and rest_n == 0:
            continue
        q_rest = rest_s / rest_n if rest_n > 0 else 0.0
        q[t] = float(np.dot(pi[in_s], qk[in_s]) + rest_mass * q_rest)
    return q
