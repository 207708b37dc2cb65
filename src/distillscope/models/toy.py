"""The synthetic world (docs/method.md#the-synthetic-world): a finite-state language model with
exact P_succ.

Why: every estimator and alignment score in the package can be checked against the truth only
where the truth is computable. Here it is, by dynamic programming.

The worlds themselves (states, tokens, exact values) are in `models/toy_world.py`.

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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from distillscope.models.base import ModelError
from distillscope.models.options import unknown_options
from distillscope.models.toy_world import (
    MASKED,
    TILTS,
    ToyWorld,
    Vocab,
    WorldParams,
    log_softmax,
    logodds,
    softmax,
)
from distillscope.types import Completion, SampleRequest, SamplingParams

if TYPE_CHECKING:
    from distillscope.config import ModelSpec

_TOY_RE = re.compile(r"toy:(\d+)")


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
                f = logodds(Qs) if self.form == "logodds" else Qs
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
        probs_T_S_R = _nucleus(softmax(table / params.temperature), params.top_p)
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
            logp = log_softmax(self._full_logits(rows[a : a + chunk_size]))
            yield torch.from_numpy(logp.astype(np.float32))

    def next_token_probs(self, context_ids: Sequence[int], response_ids: Sequence[int]) -> Any:
        """probs_T_V in float64 (numpy): the same distributions as `logprob_chunks`."""
        ctx, _ = self.split(list(context_ids))
        return softmax(self._full_logits(self._rows(ctx, response_ids)))

    def node_probs(self, context_ids: Sequence[int], prefix_ids: Sequence[int]) -> np.ndarray:
        """probs_V (float64) of the next token at the node `prefix_ids`."""
        ctx, _ = self.split(list(context_ids))
        return softmax(self._full_logits(self._rows(ctx, prefix_ids, last=True)[-1:]))[0]

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
    if (msg := unknown_options("toy", opts)) is not None:
        raise ModelError(msg)
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
