"""Top-k teachers: full-vocabulary log-softmax rows from what a top-k teacher reveals.

A served teacher (an OpenAI-compatible server with `prompt_logprobs=k`) reveals, per position,
its k most likely tokens with their log-probabilities, plus the token the path took (vLLM adds
the prompt token to its top-k when it is not among them). `scoring.score_path` wants
full-vocabulary rows; this module builds them by one rule (docs/method.md#top-k-teachers):

* every revealed token keeps its served log-probability (exact);
* every other token gets an equal share of the tail mass m = 1 - sum(revealed probabilities):
  log(m / n_tail), the "tail bucket", **capped at the k-th log-probability** (no hidden token
  can be more likely than the k-th revealed one). When the cap binds (a vocabulary so small
  that m / n_tail exceeds the k-th probability) the row sums to less than one and the scorer's
  log-softmax renormalises it; m is floored at `MIN_TAIL` so a hidden token never has
  probability exactly zero.

`fill_rows` is the rule; `topk_rows` applies it to full rows (what the benchmark does to an hf
or toy teacher, so that benchmark and served backend truncate identically); `TopkModel` wraps a
model so that its `logprob_chunks` are truncated. Values of hidden tokens are bounds, not
measurements: `revealed_ids` says which ids were exact at each position. It is a
`RevealedCache`, bounded to the `REVEALED_KEEP` most recently scored responses: phase 2 reads a
path's entry right after scoring it, the fidelity benchmark after scoring a question's paths,
and a run scores thousands of paths per teacher (each entry holds T sets of k + 1 ids).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["MIN_TAIL", "REVEALED_KEEP", "RevealedCache", "TopkModel", "TopkRows", "fill_rows",
           "topk_rows"]

MIN_TAIL = 1e-12  # floor of the tail mass (a hidden token never gets probability zero)
REVEALED_KEEP = 64  # responses whose revealed ids a top-k model keeps (most recent first)


class RevealedCache(OrderedDict):
    """response ids -> per-position sets of exact ids, keeping the `maxsize` most recently
    written or read responses (least recently used dropped first)."""

    def __init__(self, maxsize: int = REVEALED_KEEP) -> None:
        super().__init__()
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self.maxsize = int(maxsize)

    def __setitem__(self, key: tuple[int, ...], value: list[frozenset[int]]) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.maxsize:
            self.popitem(last=False)

    def __getitem__(self, key: tuple[int, ...]) -> list[frozenset[int]]:
        value = super().__getitem__(key)
        self.move_to_end(key)
        return value

    def get(self, key: tuple[int, ...], default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default


@dataclass(frozen=True, eq=False)
class TopkRows:
    """Rows (T, V) of log-probabilities, the revealed mask (T, V) (True = exact value), the
    k-th log-probability (T,) (upper bound of every hidden token) and the tail log-probability
    given to each hidden token (T,)."""

    logp: torch.Tensor
    revealed: torch.Tensor
    kth: torch.Tensor
    tail: torch.Tensor


def fill_rows(vocab_size: int, ids_T_K: torch.Tensor, logp_T_K: torch.Tensor,
              valid_T_K: torch.Tensor, kth_T: torch.Tensor) -> TopkRows:
    """The rule. `ids_T_K` / `logp_T_K`: the revealed (token, log-probability) pairs per
    position, `valid_T_K` False for padding; `kth_T` the k-th log-probability (the bound).
    Duplicated ids within a row must carry the same value."""
    T = int(ids_T_K.shape[0])
    dtype = logp_T_K.dtype if logp_T_K.is_floating_point() else torch.float64
    dev = ids_T_K.device
    shown = ids_T_K[valid_T_K]
    if int(shown.numel()) and (int(shown.min()) < 0 or int(shown.max()) >= vocab_size):
        raise ValueError(f"revealed token ids must lie in 0..{vocab_size - 1}")
    # padding entries write to a spare column V, dropped afterwards
    rows = torch.zeros((T, vocab_size + 1), dtype=dtype, device=dev)
    revealed = torch.zeros((T, vocab_size + 1), dtype=torch.bool, device=dev)
    ids = torch.where(valid_T_K, ids_T_K, torch.full_like(ids_T_K, vocab_size)).to(torch.int64)
    revealed.scatter_(1, ids, valid_T_K)
    rows.scatter_(1, ids, logp_T_K.to(dtype))
    rows, revealed = rows[:, :vocab_size], revealed[:, :vocab_size]
    known_mass = torch.where(revealed, rows.exp(), torch.zeros_like(rows)).sum(-1)
    n_tail = (vocab_size - revealed.sum(-1)).to(dtype)
    mass = (1.0 - known_mass).clamp(min=MIN_TAIL)
    tail = torch.where(n_tail > 0, mass.log() - n_tail.clamp(min=1).log(),
                       torch.full_like(mass, -math.inf))
    tail = torch.minimum(tail, kth_T.to(dtype))
    logp = torch.where(revealed, rows, tail[:, None].expand(T, vocab_size))
    return TopkRows(logp=logp, revealed=revealed, kth=kth_T.to(dtype), tail=tail)


def topk_rows(logp_T_V: torch.Tensor, k: int,
              keep_T: Sequence[int] | torch.Tensor | None = None) -> TopkRows:
    """Truncate full rows to what a top-k server reveals: the k most likely tokens per row,
    plus `keep_T[t]` (the path's token, which vLLM's prompt_logprobs always includes).
    k >= V keeps the rows as they are (every value exact)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    T, V = int(logp_T_V.shape[0]), int(logp_T_V.shape[1])
    lp = torch.log_softmax(logp_T_V.to(torch.float64), dim=-1)
    kk = min(int(k), V)
    top_v, top_i = lp.topk(kk, dim=-1)
    ids, vals = top_i, top_v
    if keep_T is not None:
        keep = torch.as_tensor(keep_T, dtype=torch.int64, device=lp.device).reshape(T, 1)
        ids = torch.cat([ids, keep], 1)
        vals = torch.cat([vals, lp.gather(1, keep)], 1)
    valid = torch.ones_like(ids, dtype=torch.bool)
    return fill_rows(V, ids, vals, valid, top_v[:, -1])


class TopkModel:
    """A model whose `logprob_chunks` are truncated to top-k by `topk_rows` (the path's token
    kept exact). Everything else is the wrapped model's. `revealed_ids[tuple(response)]` holds,
    per position of the last scoring of that response, the set of exact ids."""

    def __init__(self, inner: Any, k: int) -> None:
        self.inner = inner
        self.k = int(k)
        self.name = f"{inner.name}@top{k}"
        self.revealed_ids = RevealedCache()

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)

    def logprob_chunks(self, context_ids: Sequence[int], response_ids: Sequence[int],
                       chunk_size: int = 1024) -> Iterator[torch.Tensor]:
        resp = [int(x) for x in response_ids]
        sets: list[frozenset[int]] = []
        self.revealed_ids[tuple(resp)] = sets
        start = 0
        for chunk in self.inner.logprob_chunks(context_ids, resp, chunk_size):
            c = int(chunk.shape[0])
            rows = topk_rows(chunk, self.k, resp[start:start + c])
            for r in range(c):
                sets.append(frozenset(rows.revealed[r].nonzero().flatten().tolist()))
            start += c
            yield rows.logp.to(chunk.dtype)
