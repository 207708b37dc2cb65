"""The synthetic world (DESIGN.md s7): a finite-state language model with exact P_succ.

Why: every estimator and alignment score in the package can be checked against the truth only
where the truth is computable. Here it is, by dynamic programming.

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

Teachers are the same world with tilted logits (option `tilt`, strength `strength`):
`helpful` adds strength * f(Q_student), `harmful` subtracts it, `irrelevant` adds independent
N(0, strength) noise to the synonym tokens' logits (fresh per node), `none` is the student.
f is the log-odds of Q clipped to [0.05, 0.95] (`form: logodds`, default) or Q itself
(`form: value`, which makes GKD exactly parallel to the ideal gradient). The irrelevant
teacher's log-ratios to the student, over any set of children, are linear in its noise, so its
alignment with the ideal is odd in the noise and averages to exactly 0 whatever S_u is; its own
pass rate does move (pair masses change at random). Option `noise` adds N(0, noise) to every
response token's logit, per node, for any tilt (a less perfect teacher).

Tokenisation: besides the response tokens the vocabulary holds <bos> <sep> <toy> <demo> <unk> and
the digits #0..#9. `encode_chat(messages)` reads only what matters from the messages: the world
index from the first "toy:<i>" and whether any message mentions a demonstration (the word
"demonstration", any case); it returns [<bos>, <toy>, #d..., (<demo>), <sep>]. Every prefix
handed to `sample` / `logprob_chunks` is such a context plus response tokens (split at the first
<sep>). A context with <demo> acts as a helpful teacher of strength `demo_strength` (default 1.0)
on top of the model's own tilt, so the self-* teacher configurations do something sensible on
the toy backend (here correct and wrong demonstrations help alike). Special tokens get logit -1e4
(probability exactly 0, finite log-probability) and act as no-ops if forced into a response.

Both `models/toy.py` and `tasks/toy.py` build worlds from the same options (seed, n_states,
vocab, synonyms, commit, max_len); give the task and the model the same values (the defaults
agree). Sample with max_new_tokens >= max_len: the task grades a truncated response as if it had
stopped there, which the exact values do not model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from distillscope.models.base import ModelError
from distillscope.types import Completion, SampleRequest, SamplingParams

if TYPE_CHECKING:
    from distillscope.config import ModelSpec

MASKED = -1e4  # logit of an unavailable token: probability exactly 0 in float64
SPECIALS = ("<bos>", "<sep>", "<toy>", "<demo>", "<unk>") + tuple(f"#{d}" for d in range(10))
TILTS = ("none", "helpful", "harmful", "irrelevant")
_TOY_RE = re.compile(r"toy:(\d+)")


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
        p = _softmax(logits)
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
        p = _softmax(logits_T_S_R)
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
            f = _logodds(Q) if form == "logodds" else Q
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


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _logodds(q: np.ndarray, eps: float = 0.05) -> np.ndarray:
    q = np.clip(q, eps, 1 - eps)
    return np.log(q) - np.log1p(-q)


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Context:
    index: int
    demo: bool


class ToyModel:
    """A LanguageModel over toy worlds. One instance serves every question (the world comes from
    the context ids). Worlds and policy tables are built on first use and cached per instance."""

    device = "cpu"

    def __init__(
        self,
        params: WorldParams | None = None,
        tilt: str = "none",
        strength: float = 1.0,
        demo_strength: float = 1.0,
        form: str = "logodds",
        noise: float = 0.0,
        max_context: int = 4096,
        name: str | None = None,
    ) -> None:
        if tilt not in TILTS:
            raise ModelError(f"toy option 'tilt' must be one of {', '.join(TILTS)}; got '{tilt}'")
        if form not in ("logodds", "value"):
            raise ModelError(f"toy option 'form' must be 'logodds' or 'value'; got '{form}'")
        self.params = params or WorldParams()
        self.tilt, self.strength, self.demo_strength = tilt, float(strength), float(demo_strength)
        self.form, self.noise = form, float(noise)
        self.vocab = Vocab(self.params.vocab)
        self._max_context = max_context
        self.name = name or f"toy[tilt={tilt},strength={strength:g}]"
        self._worlds: dict[int, ToyWorld] = {}
        self._tables: dict[tuple[int, bool], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    # --- protocol properties ---------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.vocab.size

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return (self.vocab.eos,)

    @property
    def max_context(self) -> int:
        return self._max_context

    def tokenizer_fingerprint(self) -> str:
        return f"toy-v1:vocab={self.params.vocab}"

    # --- text ------------------------------------------------------------------------------------
    def encode_chat(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        text = "\n".join(str(m.get("content", "")) for m in messages)
        match = _TOY_RE.search(text)
        if match is None:
            raise ModelError("toy model: no 'toy:<index>' question found in the messages")
        ids = [self.vocab.special("<bos>"), self.vocab.special("<toy>")]
        ids += self.vocab.digits(int(match.group(1)))
        if "demonstration" in text.lower():
            ids.append(self.vocab.special("<demo>"))
        return ids + [self.vocab.special("<sep>")]

    def encode(self, text: str) -> list[int]:
        out: list[int] = []
        for word in text.split():
            m = _TOY_RE.fullmatch(word)
            if m is not None:
                out += [self.vocab.special("<toy>"), *self.vocab.digits(int(m.group(1)))]
            else:
                out.append(self.vocab.ids.get(word, self.vocab.special("<unk>")))
        return out

    def decode(self, ids: Sequence[int]) -> str:
        names = self.vocab.names
        return " ".join(names[i] if 0 <= i < len(names) else "<unk>" for i in ids)

    # --- worlds ----------------------------------------------------------------------------------
    def world(self, index: int) -> ToyWorld:
        if index not in self._worlds:
            self._worlds[index] = ToyWorld(index, self.params)
        return self._worlds[index]

    def split(self, prefix_ids: Sequence[int]) -> tuple[_Context, list[int]]:
        """(context, response ids) of a full prefix: context up to the first <sep>."""
        ids = list(prefix_ids)
        v = self.vocab
        try:
            sep = ids.index(v.special("<sep>"))
        except ValueError:
            raise ModelError("toy model: context ids without <sep> (use encode_chat)") from None
        ctx = ids[:sep]
        if v.special("<toy>") not in ctx:
            raise ModelError("toy model: context ids without <toy> (use encode_chat)")
        i = ctx.index(v.special("<toy>")) + 1
        digits = []
        while i < len(ctx) and v.names[ctx[i]].startswith("#"):
            digits.append(v.names[ctx[i]][1:])
            i += 1
        if not digits:
            raise ModelError("toy model: <toy> without a question index")
        demo = v.special("<demo>") in ctx
        return _Context(int("".join(digits)), demo), ids[sep + 1 :]

    def tables(self, index: int, demo: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(logits_T_S_R, V_T1_S, Q_T_S_R) of this model's policy in world `index`."""
        key = (index, demo)
        if key not in self._tables:
            w = self.world(index)
            table = w.teacher_table(self.tilt, self.strength, self.form, self.noise)
            if demo and self.demo_strength != 0:
                _, Qs = w.student_values
                f = _logodds(Qs) if self.form == "logodds" else Qs
                table = table + self.demo_strength * f
                table[-1, :, : w.vocab.eos] = MASKED
            V, Q = w.values(table)
            self._tables[key] = (table, V, Q)
        return self._tables[key]

    def _full_logits(self, logits_N_R: np.ndarray) -> np.ndarray:
        out = np.full((logits_N_R.shape[0], self.vocab.size), MASKED)
        out[:, : self.vocab.n_response] = logits_N_R
        return out

    def _rows(self, ctx: _Context, response_ids: Sequence[int], last: bool = False) -> np.ndarray:
        """logits_T_R at every response position (after EOS: EOS only); with `last`, also the
        node after the whole response (T + 1 rows)."""
        table, _, _ = self.tables(ctx.index, ctx.demo)
        w = self.world(ctx.index)
        states, _ = w.walk(response_ids)
        T, H = len(response_ids) + int(last), w.params.max_len
        t = np.minimum(np.arange(T), H - 1)
        s = states[:T]
        rows = table[t, np.maximum(s, 0)]
        done = np.flatnonzero(s < 0)
        rows[done] = table[H - 1, 0]  # EOS only
        return rows

    # --- sampling --------------------------------------------------------------------------------
    def sample(
        self, requests: Sequence[SampleRequest], params: SamplingParams
    ) -> list[list[Completion]]:
        return [self._sample_one(req, params) for req in requests]

    def _sample_one(self, req: SampleRequest, params: SamplingParams) -> list[Completion]:
        ctx, forced = self.split(req.prefix_ids)
        w = self.world(ctx.index)
        table, _, _ = self.tables(ctx.index, ctx.demo)
        states, first_eos = w.walk(forced)
        n, eos, H = req.n, w.vocab.eos, w.params.max_len
        if first_eos is not None:
            return [Completion((), "", "eos") for _ in range(n)]
        rng = np.random.default_rng(req.seed)
        s_N = np.full(n, states[-1], dtype=np.int64)
        alive = np.ones(n, dtype=bool)
        out = np.full((n, params.max_new_tokens), -1, dtype=np.int64)
        t0 = len(forced)
        probs_T_S_R = _nucleus(_softmax(table / params.temperature), params.top_p)
        for step in range(params.max_new_tokens):
            if not alive.any():
                break
            t = min(t0 + step, H - 1)
            cdf = np.cumsum(probs_T_S_R[t, s_N], axis=1)
            u = rng.random(n) * cdf[:, -1]
            tok = np.minimum((u[:, None] >= cdf).sum(axis=1), eos)
            tok[~alive] = -1
            out[:, step] = tok
            live = alive & (tok != eos)
            s_N[live] = w.next_S_R[s_N[live], tok[live]]
            alive = live
        lengths = (out >= 0).sum(axis=1)
        comps = []
        for row, length in zip(out.tolist(), lengths.tolist(), strict=True):
            ids = tuple(row[:length])
            reason = "eos" if length and ids[-1] == eos else "length"
            comps.append(Completion(ids, self.decode(ids), reason))
        return comps

    # --- scoring ---------------------------------------------------------------------------------
    def logprob_chunks(
        self, context_ids: Sequence[int], response_ids: Sequence[int], chunk_size: int = 1024
    ) -> Iterator[Any]:
        import torch

        ctx, rest = self.split(list(context_ids))
        if rest:
            raise ModelError("toy model: context_ids run past <sep>; pass the response apart")
        rows = self._rows(ctx, response_ids)
        for a in range(0, len(response_ids), chunk_size):
            logp = _log_softmax(self._full_logits(rows[a : a + chunk_size]))
            yield torch.from_numpy(logp.astype(np.float32))

    def next_token_probs(self, context_ids: Sequence[int], response_ids: Sequence[int]) -> Any:
        """probs_T_V in float64 (numpy): the same distributions as `logprob_chunks`."""
        ctx, _ = self.split(list(context_ids))
        return _softmax(self._full_logits(self._rows(ctx, response_ids)))

    def node_probs(self, context_ids: Sequence[int], prefix_ids: Sequence[int]) -> np.ndarray:
        """probs_V (float64) of the next token at the node `prefix_ids`."""
        ctx, _ = self.split(list(context_ids))
        return _softmax(self._full_logits(self._rows(ctx, prefix_ids, last=True)[-1:]))[0]

    # --- exact values ----------------------------------------------------------------------------
    def exact_success(self, context_ids: Sequence[int], prefix_ids: Sequence[int]) -> float:
        """P(success) of this model's own policy (temperature 1) from the node `prefix_ids`."""
        ctx, _ = self.split(list(context_ids))
        w = self.world(ctx.index)
        _, V, _ = self.tables(ctx.index, ctx.demo)
        states, first_eos = w.walk(prefix_ids)
        if first_eos is not None:
            return w.reward(prefix_ids)
        t = len(prefix_ids)
        return float(V[t, states[-1]]) if t < w.params.max_len else 0.0

    def exact_child_success(
        self, context_ids: Sequence[int], prefix_ids: Sequence[int]
    ) -> np.ndarray:
        """P(success | node `prefix_ids`, next token k) for every k (length vocab_size)."""
        ctx, _ = self.split(list(context_ids))
        w = self.world(ctx.index)
        _, V, Q = self.tables(ctx.index, ctx.demo)
        states, first_eos = w.walk(prefix_ids)
        t, s = len(prefix_ids), int(states[-1])
        out = np.zeros(self.vocab.size)
        if first_eos is not None:
            out[:] = w.reward(prefix_ids)
        elif t < w.params.max_len:
            out[: w.vocab.n_response] = Q[t, s]
            out[w.vocab.n_response :] = V[t + 1, s]  # specials are no-ops
        return out


def _nucleus(p: np.ndarray, top_p: float) -> np.ndarray:
    """Keep the smallest set of most likely tokens with mass >= top_p (per row); unnormalised."""
    if top_p >= 1.0:
        return p
    order = np.argsort(-p, axis=-1)
    sorted_p = np.take_along_axis(p, order, axis=-1)
    keep_sorted = (np.cumsum(sorted_p, axis=-1) - sorted_p) < top_p
    keep = np.zeros_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, axis=-1)
    return np.where(keep, p, 0.0)


# ---------------------------------------------------------------------------------------------
_MODEL_KEYS = {"tilt", "strength", "demo_strength", "form", "noise", "max_context"}


def _check_option_types(opts: Mapping[str, Any], where: str) -> None:
    """Toy options have fixed types: integers (not booleans) for counts and seeds, numbers for
    strengths, strings for tilt and form. ModelError naming the option otherwise."""
    ints = {"seed", "n_states", "vocab", "synonyms", "max_len", "max_context", "n_questions"}
    nums = {"commit", "strength", "demo_strength", "noise"}
    for k, v in opts.items():
        if k in ints and (isinstance(v, bool) or not isinstance(v, int)):
            raise ModelError(f"{where} option '{k}' must be an integer, got {v!r}")
        if k in nums and (isinstance(v, bool) or not isinstance(v, (int, float))
                          or not math.isfinite(v)):
            raise ModelError(f"{where} option '{k}' must be a finite number, got {v!r}")
        if k in ("tilt", "form") and not isinstance(v, str):
            raise ModelError(f"{where} option '{k}' must be a string, got {v!r}")
    if opts.get("noise", 0) < 0:
        raise ModelError(f"{where} option 'noise' must be >= 0, got {opts['noise']!r}")
    if opts.get("max_context", 2) < 2:
        raise ModelError(f"{where} option 'max_context' must be >= 2, got {opts['max_context']!r}")


def load_toy_model(spec: ModelSpec) -> ToyModel:
    """Options (spec.options): world keys of `WorldParams` (seed, n_states, vocab, synonyms,
    commit, max_len) and tilt, strength, demo_strength, form, noise, max_context."""
    opts = dict(spec.options)
    unknown = set(opts) - _MODEL_KEYS - set(WorldParams.__dataclass_fields__)
    if unknown:
        allowed = sorted(_MODEL_KEYS | set(WorldParams.__dataclass_fields__))
        raise ModelError(f"unknown toy option(s) {sorted(unknown)}; allowed: {allowed}")
    _check_option_types(opts, "toy model")
    try:
        params = WorldParams.from_options(opts)
    except (TypeError, ValueError) as err:
        raise ModelError(str(err)) from None
    kwargs = {k: opts[k] for k in _MODEL_KEYS if k in opts}
    base = spec.model if spec.model.startswith("toy") else "toy"
    tilt = kwargs.get("tilt", "none")
    # the world options that differ from the defaults are part of the name, so that two toy
    # models that differ (e.g. in vocab) are told apart in messages
    world = [f"{k}={v}" for k, v in params.to_dict().items()
             if k != "seed" and v != getattr(WorldParams(), k)]
    name = f"{base}[{','.join([*world, f'tilt={tilt}'])},strength=" \
           f"{float(kwargs.get('strength', 1.0)):g}]"
    return ToyModel(params, name=name, **kwargs)
