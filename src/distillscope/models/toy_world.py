"""One question's synthetic world: states, tokens and exact success probabilities.

The finite-state language model of `models/toy.py` (docs/method.md#the-synthetic-world) is
built from these worlds; `tasks/toy.py` grades against them.

The world of question i (prompt "toy:<i>") is built from a generator seeded by (seed, i):

* Response tokens: `vocab` content tokens named "a", "b", ... plus EOS ("<eos>"). The first
  `synonyms` pairs (a, b), (c, d), ... are synonyms: in every state they lead to the same next
  state, so they have the same success probability (success-neutral choices, like wording).
* States: `n_states` transient states (start = 0) plus two absorbing ones, WON (accepting) and
  LOST. From a transient state a token group commits to WON or LOST with probability `commit`,
  else moves to a uniform transient state. Commitment gives the decision points real stakes.
* The student's logits depend on the state only: N(0, 1) on content tokens, EOS around +0.3
  (mean length ~6), higher in WON/LOST. At response position max_len - 1 only EOS is allowed,
  so every response ends with EOS within `max_len` tokens.
* A response succeeds iff it contains EOS and the state at the first EOS is accepting. The
  accepting subset of transient states is chosen so that the start value lies near a target drawn
  uniformly from [0.25, 0.75] (questions have both correct and incorrect rollouts).

Exact values: V[t, s] (success probability from state s at response position t) and Q[t, s, k]
(after taking child k) by backward induction over t = max_len - 1 ... 0, under the policy of the
model asked, at temperature 1. `exact_success` / `exact_child_success` use them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

import numpy as np

__all__ = ["MASKED", "SPECIALS", "TILTS", "ToyWorld", "Vocab", "WorldParams", "log_softmax",
           "logodds", "softmax"]

MASKED = -1e4  # logit of an unavailable token: probability exactly 0 in float64
SPECIALS = ("<bos>", "<sep>", "<toy>", "<demo>", "<unk>") + tuple(f"#{d}" for d in range(10))
TILTS = ("none", "helpful", "harmful", "irrelevant")


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorldParams:
    """What defines the family of worlds (shared by the toy model and the toy task)."""

    seed: int = 0
    n_states: int = 6
    vocab: int = 8  # content tokens (EOS comes on top)
    synonyms: int = 2  # synonym pairs among the content tokens
    commit: float = 0.15  # chance a (state, token group) transition commits to WON / LOST
    max_len: int = 24

    def __post_init__(self) -> None:
        if not 1 <= self.n_states <= 12:
            raise ValueError("toy option 'n_states' must be in [1, 12]")
        if not 2 <= self.vocab <= 26:
            raise ValueError("toy option 'vocab' must be in [2, 26]")
        if not 0 <= 2 * self.synonyms <= self.vocab:
            raise ValueError("toy option 'synonyms': at most vocab / 2 pairs")
        if not 0.0 <= self.commit <= 1.0:
            raise ValueError("toy option 'commit' must be in [0, 1]")
        if self.max_len < 2:
            raise ValueError("toy option 'max_len' must be >= 2")

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> WorldParams:
        keys = set(cls.__dataclass_fields__)
        return cls(**{k: options[k] for k in keys if k in options})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Vocab:
    """Token ids: content tokens 0..vocab-1, EOS = vocab, then the specials."""

    def __init__(self, n_content: int) -> None:
        self.n_content = n_content
        self.eos = n_content
        self.n_response = n_content + 1
        self.names = [chr(ord("a") + i) for i in range(n_content)] + ["<eos>", *SPECIALS]
        self.ids = {name: i for i, name in enumerate(self.names)}
        self.size = len(self.names)

    def special(self, name: str) -> int:
        return self.ids[name]

    def digits(self, number: int) -> list[int]:
        return [self.ids[f"#{c}"] for c in str(number)]


# ---------------------------------------------------------------------------------------------
class ToyWorld:
    """One question's world. Arrays: next_S_R (next state, -1 after EOS), logits_S_R (student),
    accept_S. States: transient 0..n-1, WON = n, LOST = n + 1."""

    def __init__(self, index: int, params: WorldParams) -> None:
        self.index = index
        self.params = params
        self.vocab = Vocab(params.vocab)
        n, R = params.n_states, self.vocab.n_response
        self.won, self.lost = n, n + 1
        self.n_total = n + 2
        rng = np.random.default_rng([params.seed, index, 0x70F])
        self.synonym_pairs = [(2 * i, 2 * i + 1) for i in range(params.synonyms)]
        group_R = np.concatenate(  # token -> transition group (synonyms share one)
            [
                np.repeat(np.arange(params.synonyms), 2),
                params.synonyms + np.arange(params.vocab - 2 * params.synonyms),
            ]
        )
        n_groups = int(group_R.max()) + 1
        best: tuple[float, np.ndarray, np.ndarray, np.ndarray] | None = None
        target = float(rng.uniform(0.25, 0.75))
        for _ in range(30):  # redraw until the start value can be placed near the target
            nxt_G = rng.integers(0, n, size=(self.n_total, n_groups))
            u = rng.random((self.n_total, n_groups))
            nxt_G[u < params.commit / 2] = self.won
            nxt_G[(u >= params.commit / 2) & (u < params.commit)] = self.lost
            nxt_G[self.won], nxt_G[self.lost] = self.won, self.lost
            logits = rng.normal(0.0, 1.0, size=(self.n_total, R))
            logits[:, self.vocab.eos] = rng.normal(0.3, 0.5, size=self.n_total)
            logits[[self.won, self.lost], self.vocab.eos] += 1.5
            nxt = np.concatenate([nxt_G[:, group_R], np.full((self.n_total, 1), -1)], axis=1)
            w = self._end_distribution(nxt, logits)
            accept, value = self._closest_accepting(w, target)
            if best is None or abs(value - target) < abs(best[0] - target):
                best = (value, nxt, logits, accept)
            if abs(value - target) < 0.03:
                break
        assert best is not None
        self.start_value, self.next_S_R, self.logits_S_R, self.accept_S = best
        self.noise_seed = (params.seed, index)

    # --- construction helpers --------------------------------------------------------------------
    def _end_distribution(self, nxt: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """Probability that the first EOS happens in each state (student policy)."""
        H, eos = self.params.max_len, self.vocab.eos
        p = softmax(logits)
        dist = np.zeros(self.n_total)
        dist[0] = 1.0
        w = np.zeros(self.n_total)
        for t in range(H):
            if t == H - 1:
                w += dist
                break
            w += dist * p[:, eos]
            new = np.zeros(self.n_total)
            for k in range(eos):
                np.add.at(new, nxt[:, k], dist * p[:, k])
            dist = new
        return w

    def _closest_accepting(self, w: np.ndarray, target: float) -> tuple[np.ndarray, float]:
        n = self.params.n_states
        subsets = (np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1
        values = w[self.won] + subsets @ w[:n]
        i = int(np.argmin(np.abs(values - target)))
        accept = np.zeros(self.n_total, dtype=bool)
        accept[:n] = subsets[i].astype(bool)
        accept[self.won] = True
        return accept, float(values[i])

    # --- policies and exact values ---------------------------------------------------------------
    def student_table(self) -> np.ndarray:
        """logits_T_S_R of the student: state logits, only EOS at the last position."""
        H = self.params.max_len
        table = np.broadcast_to(self.logits_S_R, (H, *self.logits_S_R.shape)).copy()
        table[H - 1, :, : self.vocab.eos] = MASKED
        return table

    def values(self, logits_T_S_R: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(V_T1_S, Q_T_S_R) under the policy softmax(logits) (temperature 1). V[max_len] = 0."""
        H, eos = self.params.max_len, self.vocab.eos
        p = softmax(logits_T_S_R)
        V = np.zeros((H + 1, self.n_total))
        Q = np.zeros(logits_T_S_R.shape)
        nxt_content = self.next_S_R[:, :eos]
        for t in range(H - 1, -1, -1):
            Q[t, :, :eos] = V[t + 1][nxt_content] if t < H - 1 else 0.0
            Q[t, :, eos] = self.accept_S
            V[t] = (p[t] * Q[t]).sum(axis=1)
        return V, Q

    @cached_property
    def student_values(self) -> tuple[np.ndarray, np.ndarray]:
        return self.values(self.student_table())

    def teacher_table(self, tilt: str, strength: float, form: str, noise: float) -> np.ndarray:
        """logits_T_S_R of a teacher built from this world (see the module docstring)."""
        table = self.student_table()
        H, R = table.shape[0], table.shape[2]
        _, Q = self.student_values
        if tilt in ("helpful", "harmful"):
            f = logodds(Q) if form == "logodds" else Q
            sign = 1.0 if tilt == "helpful" else -1.0
            table = table + sign * strength * f
        elif tilt == "irrelevant" and self.synonym_pairs:
            # independent N(0, strength) on each synonym's logit: log-ratios over any child set
            # are linear in the noise, so cos(ideal, gkd) is odd in it and has mean exactly 0
            rng = np.random.default_rng([*self.noise_seed, 0x1BB])
            syn = np.array([k for pair in self.synonym_pairs for k in pair])
            table[:, :, syn] += rng.normal(0.0, strength, size=(H, self.n_total, len(syn)))
        if noise > 0:
            rng = np.random.default_rng([*self.noise_seed, 0x401])
            table = table + rng.normal(0.0, noise, size=(H, self.n_total, R))
        table[H - 1, :, : self.vocab.eos] = MASKED
        return table

    # --- walking a response ----------------------------------------------------------------------
    def walk(self, response_ids: Sequence[int]) -> tuple[np.ndarray, int | None]:
        """States before each response token (length T + 1) and the index of the first EOS
        (None if absent). After EOS the state is -1; special tokens leave it unchanged."""
        states = np.empty(len(response_ids) + 1, dtype=np.int64)
        s, first_eos = 0, None
        states[0] = s
        for i, tok in enumerate(response_ids):
            if s >= 0 and 0 <= tok < self.vocab.n_response:
                if tok == self.vocab.eos:
                    first_eos = i if first_eos is None else first_eos
                    s = -1
                else:
                    s = int(self.next_S_R[s, tok])
            states[i + 1] = s
        return states, first_eos

    def rewards(self, responses: Sequence[Sequence[int]]) -> np.ndarray:
        """reward of each response, vectorised over responses (same rule as `reward`)."""
        n = len(responses)
        T = max((len(r) for r in responses), default=0)
        ids = np.full((n, T), -1, dtype=np.int64)
        for i, r in enumerate(responses):
            ids[i, : len(r)] = r
        s = np.zeros(n, dtype=np.int64)
        out = np.zeros(n)
        alive = np.ones(n, dtype=bool)
        eos = self.vocab.eos
        for t in range(min(T, self.params.max_len)):
            tok = ids[:, t]
            end = alive & (tok == eos)
            out[end] = self.accept_S[s[end]]
            move = alive & (tok >= 0) & (tok < eos)
            s[move] = self.next_S_R[s[move], tok[move]]
            alive &= ~end
        return out

    def reward(self, response_ids: Sequence[int]) -> float:
        states, first_eos = self.walk(response_ids)
        if first_eos is None or first_eos >= self.params.max_len:
            return 0.0
        return float(self.accept_S[states[first_eos]])


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def logodds(q: np.ndarray, eps: float = 0.05) -> np.ndarray:
    q = np.clip(q, eps, 1 - eps)
    return np.log(q) - np.log1p(-q)
