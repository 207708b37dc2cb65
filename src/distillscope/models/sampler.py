"""Shared-prefix group sampling for the hf backend (`GroupSampler`, mixed into `HFModel`).

A request is a group: n continuations of one prefix (a targeted
rollout is ~100 samples behind one long prefix). Each prefix is prefilled ONCE; its n samples
decode from that KV cache; several groups decode together in one batch. Batch slots are laid
out (group, sample) with every group padded to the batch's largest n (pad slots start finished).

* Llama-family decoders (llama, qwen2, qwen3, mistral; `DecodeRunner.supports`) run on our own
  decode loop (`distillscope.models.decode`) over the model's weights: static KV buffers, one
  decode step = one function without host syncs, captured as CUDA graphs (one per 32-slot bucket
  of generated length, so attention reads only the slots in use, rounded up). Attention is
  *cascade* attention: each group's prefix KV is stored once and its scores for all the group's
  queries come from one matrix product; each sample's suffix KV separately; one softmax over both.
  Nothing of the prefix is copied or re-read per sample. `options={"cascade": False}` stores a
  copy of the prefix KV per sample instead (the plain approach; kept for benchmarks and tests).
  The fast runner re-lays each layer's q/k/v and gate/up weights into one buffer each and points
  the model's own parameters at views of it (values and memory unchanged).
* Any other architecture runs the generic path: HF forward with a DynamicCache, one group at a
  time, the cache repeated n times after the prefill.

Randomness: a group's noise is one uniform per (sample, step), drawn up front from a CPU
`torch.Generator` seeded with the group's seed (rows = samples). The token is the inverse-CDF
draw of that uniform (after temperature and top-p). So a group's samples depend on its seed,
n and max_new_tokens only, not on what else is batched, nor on the device, up to floating-point
differences in the logits themselves (matrix shapes change with the batch; a draw flips only if
its uniform lands within that rounding of a CDF boundary). temperature <= 0 is greedy (argmax).

Stopping: EOS (included in `token_ids`, finish "eos"), `max_new_tokens` or the model's
`max_context` (finish "length"), stop strings (finish "stop"; `token_ids` end with the token
that completes the first stop string and `text` is their decoding, so the stop string is in
it). Finished samples keep their slot (static shapes) and are masked; the loop exits when all
are done (checked every few steps on CUDA, every step on CPU).

The mixin needs from its host: `model`, `tokenizer`, `name`, `cascade`, `cuda_graphs`,
`check_every`, `last_stats`, `_blocks` (a `prefix_cache.BlockCache`), `_device`, `_eos`,
`_max_context`, `_max_batch_samples`,
`_runner` (a `DecodeRunner` or None) and `_check_length` (see `hf.HFModel`).

Shape letters: B batch slots, G groups, L prefix positions, S generated positions (slots),
V vocabulary, H query heads, K key/value heads, R = H / K, D head dim.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from distillscope.models.base import ModelError
from distillscope.models.decode import DecodeState, KVBuffers, group_uniforms
from distillscope.models.prefix_cache import prefill_cached
from distillscope.types import Completion, FinishReason, SampleRequest, SamplingParams

__all__ = ["GroupSampler"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Job:
    """A slice [start, start + count) of the samples of request `req`."""

    req: int
    start: int
    count: int


class GroupSampler:
    """`sample()` of the `LanguageModel` protocol for an HF causal LM (see the module doc)."""

    def sample(
        self,
        requests: Sequence[SampleRequest],
        params: SamplingParams,
        budgets: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        """`budgets` (an extension of the protocol, hf backend only): request i's own
        max_new_tokens (<= params.max_new_tokens). Its samples are those of a call with
        max_new_tokens = budgets[i] (its noise is drawn for its own budget), so groups of
        different budgets share one batch."""
        S = int(params.max_new_tokens)
        if S < 1:
            raise ModelError(f"max_new_tokens must be >= 1, got {S}")
        if not 0.0 < params.top_p <= 1.0:
            raise ModelError(f"top_p must be in (0, 1], got {params.top_p}")
        for r in requests:
            if len(r.prefix_ids) < 1:
                raise ModelError("a sampling prefix must hold at least one token")
            if len(r.prefix_ids) >= self._max_context:
                raise ModelError(
                    f"{self.name}: a prompt of {len(r.prefix_ids)} tokens leaves no room to "
                    f"generate under max_context ({self._max_context}); shorten it or raise "
                    f"options.max_context"
                )
            if r.n < 0:
                raise ModelError(f"n must be >= 0, got {r.n}")
        own = [S] * len(requests) if budgets is None else [int(b) for b in budgets]
        if len(own) != len(requests) or any(not 1 <= b <= S for b in own):
            raise ModelError(f"budgets must give each request a value in [1, {S}]")
        self._budgets = own
        uniforms = [F.pad(group_uniforms(r.seed, r.n, b), (0, S - b))
                    for r, b in zip(requests, own, strict=True)]
        results: list[list[Completion | None]] = [[None] * r.n for r in requests]
        stats = {"time/prefill": 0.0, "time/decode": 0.0, "tokens": 0.0, "steps": 0.0}
        with torch.inference_mode():
            for batch in self._plan(requests, S):
                if self._runner is not None:
                    outs = self._sample_fast(requests, batch, uniforms, params, stats)
                else:
                    outs = self._sample_generic(requests, batch, uniforms, params, stats)
                for job, rows in zip(batch, outs, strict=True):
                    for j, tokens in enumerate(rows):
                        comp = self._completion(tokens, params.stop_strings)
                        results[job.req][job.start + j] = comp
                        stats["tokens"] += len(comp.token_ids)
        self.last_stats = stats
        return [[c for c in row if c is not None] for row in results]

    def _plan(self, requests: Sequence[SampleRequest], S: int) -> list[list[_Job]]:
        """Split groups into jobs of at most `cap` samples and pack consecutive jobs into
        batches of at most `cap` slots (slots = jobs x largest job)."""
        longest = max((len(r.prefix_ids) for r in requests), default=1)
        cap = self._batch_cap(S, longest)
        jobs = [
            _Job(i, s, min(cap, r.n - s))
            for i, r in enumerate(requests)
            for s in range(0, r.n, cap)
        ]
        batches: list[list[_Job]] = []
        for job in jobs:
            cur = batches[-1] if batches else None
            if cur is not None and (len(cur) + 1) * max(job.count, *(j.count for j in cur)) <= cap:
                cur.append(job)
            else:
                batches.append([job])
        return batches if self._runner is not None else [[j] for j in jobs]

    def _batch_cap(self, S: int, longest: int) -> int:
        if self._max_batch_samples is not None:
            return max(1, int(self._max_batch_samples))
        if self._device.type != "cuda" or self._runner is None:
            return 256
        free, _ = torch.cuda.mem_get_info(self._device)
        per_slot = self._runner.kv_bytes_per_token() * (S + (0 if self.cascade else longest))
        per_slot += self.vocab_size * 4 * 4  # float32 logits, probabilities, cdf, temporaries
        return int(max(1, min(4096, 0.6 * free // per_slot)))

    def _new_state(self, n_slots: int, S: int, params: SamplingParams) -> DecodeState:
        dev = self._device
        return DecodeState(
            out_B_S=torch.full((n_slots, S), -1, dtype=torch.long, device=dev),
            done_B=torch.zeros(n_slots, dtype=torch.bool, device=dev),
            limit_B=torch.zeros(n_slots, dtype=torch.long, device=dev),
            u_B_S=torch.zeros(n_slots, S, dtype=torch.float32, device=dev),
            step=torch.zeros(1, dtype=torch.long, device=dev),
            pos0_B=torch.zeros(n_slots, dtype=torch.long, device=dev),
            eos_E=torch.tensor(self._eos, dtype=torch.long, device=dev),
            bad_B=torch.zeros(n_slots, dtype=torch.bool, device=dev),
            temperature=float(params.temperature),
            top_p=float(params.top_p),
        )

    def _fill_slots(self, st, batch, requests, uniforms, width: int, S: int) -> None:
        """Slots (job, j) for j < width; those with j >= job.count start finished."""
        done, limit, u, pos0 = [], [], [], []
        for job in batch:
            L = len(requests[job.req].prefix_ids)
            rows = uniforms[job.req][job.start : job.start + job.count]
            u.append(F.pad(rows, (0, 0, 0, width - job.count)))
            done += [False] * job.count + [True] * (width - job.count)
            limit += [min(S, self._budgets[job.req], self._max_context - L)] * width
            pos0 += [L] * width
        st.done_B.copy_(torch.tensor(done))
        st.limit_B.copy_(torch.tensor(limit))
        st.u_B_S.copy_(torch.cat(u))
        st.pos0_B.copy_(torch.tensor(pos0))

    # -- fast path --

    def _sample_fast(self, requests, batch, uniforms, params, stats) -> list[list[list[int]]]:
        run = self._runner
        assert run is not None
        S = int(params.max_new_tokens)
        n = max(job.count for job in batch)
        G, B = len(batch), len(batch) * n
        t0 = time.perf_counter()
        prefixes = [requests[job.req].prefix_ids for job in batch]
        Lmax = max(len(p) for p in prefixes)
        n_layers, K, D = len(run.layers), run.K, run.D
        new = {"dtype": run.dtype, "device": run.device}
        pre_k = [torch.zeros(G, K, Lmax, D, **new) for _ in range(n_layers)]
        pre_v = [torch.zeros(G, K, Lmax, D, **new) for _ in range(n_layers)]
        lengths = torch.tensor([len(p) for p in prefixes], device=run.device)
        pad_G_L = torch.arange(Lmax, device=run.device)[None] >= lengths[:, None]
        first = []
        for g, prefix in enumerate(prefixes):
            ks, vs, logits_V = prefill_cached(run, prefix, self._blocks)
            for li in range(n_layers):
                pre_k[li][g, :, : len(prefix)] = ks[li]
                pre_v[li][g, :, : len(prefix)] = vs[li]
            first.append(logits_V)
        per_group, Gp = n, G
        if not self.cascade:  # one prefix copy per slot
            slot_group = torch.arange(G, device=run.device).repeat_interleave(n)
            pre_k = [k.index_select(0, slot_group) for k in pre_k]
            pre_v = [v.index_select(0, slot_group) for v in pre_v]
            pad_G_L = pad_G_L.index_select(0, slot_group)
            lengths = lengths.index_select(0, slot_group)
            per_group, Gp = 1, B
        pre_pad = pad_G_L[:, None, None, None] if bool(pad_G_L.any()) else None
        suf = (Gp, K, per_group, max(S - 1, 1), D)
        kv = KVBuffers(
            [k.view(Gp * K, Lmax, D) for k in pre_k],
            [v.view(Gp * K, Lmax, D) for v in pre_v],
            pre_pad,
            [torch.zeros(suf, **new) for _ in range(n_layers)],
            [torch.zeros(suf, **new) for _ in range(n_layers)],
            per_group,
            lengths,
        )
        st = self._new_state(B, S, params)
        self._fill_slots(st, batch, requests, uniforms, n, S)
        st.advance(torch.stack(first).repeat_interleave(n, dim=0))
        self._sync()
        t1 = time.perf_counter()
        stats["time/prefill"] += t1 - t0
        compact = self._device.type != "cuda"  # CUDA graphs need the static shapes

        def step(upto: int) -> None:
            rows_A = None
            if compact:
                running = (~st.done_B).nonzero().squeeze(1)
                if running.numel() < B:
                    rows_A = running
            st.advance(run.decode(st, kv, upto, rows_A), rows_A)

        self._decode_loop(st, S, step, stats, params.stop_strings)
        stats["time/decode"] += time.perf_counter() - t1
        out = st.out_B_S.cpu()
        return [[_row(out[g * n + j]) for j in range(job.count)] for g, job in enumerate(batch)]

    def _decode_loop(
        self,
        st: DecodeState,
        S: int,
        step_fn,
        stats,
        stop_strings: tuple[str, ...],
        bucket: int = 32,
    ) -> None:
        """Steps 1 .. S-1 (step 0 came from the prefill). `step_fn(upto)` is one step that
        reads suffix slots [0, upto); on CUDA it is captured once per `upto` and replayed."""
        graphs: dict[int, Any] = {}
        pool = None
        use_graphs = self.cuda_graphs
        for i in range(1, S):
            if (i - 1) % self.check_every == 0 and self._finished(st, i, stop_strings):
                break
            upto = min(S - 1, ((i - 1) // bucket + 1) * bucket)
            if not use_graphs:
                step_fn(upto)
            elif upto in graphs:
                graphs[upto].replay()
            else:
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    step_fn(upto)  # a real step, and the warm-up before capture
                torch.cuda.current_stream().wait_stream(side)
                try:
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=pool):
                        step_fn(upto)
                    pool = graph.pool()
                    graphs[upto] = graph
                except RuntimeError as err:  # pragma: no cover - depends on the CUDA stack
                    log.warning("CUDA graph capture failed (%s); decoding eagerly", err)
                    use_graphs = self.cuda_graphs = False
            stats["steps"] += 1
        self._finished(st, S, stop_strings)
        stats["graphs"] = float(len(graphs))

    def _finished(self, st: DecodeState, i: int, stop_strings: tuple[str, ...]) -> bool:
        """Host check: raise on bad logits, mark stop-string hits done, all done?"""
        if bool(st.bad_B.any()):
            raise ModelError(f"{self.name}: non-finite logits while sampling (NaN or inf)")
        if stop_strings:
            lo = max(0, i - self.check_every - 16)
            window = st.out_B_S[:, lo:i].cpu()
            running = (~st.done_B).nonzero().flatten().cpu().tolist()
            hit = [b for b in running if _has_stop(self.tokenizer, _row(window[b]), stop_strings)]
            if hit:
                st.done_B[torch.tensor(hit, device=st.done_B.device)] = True
        return bool(st.done_B.all())

    def _sync(self) -> None:
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)

    # -- generic path --

    def _sample_generic(self, requests, batch, uniforms, params, stats) -> list[list[list[int]]]:
        (job,) = batch
        S = int(params.max_new_tokens)
        t0 = time.perf_counter()
        ids = torch.tensor([requests[job.req].prefix_ids], dtype=torch.long, device=self._device)
        out = self.model(input_ids=ids, use_cache=True)
        cache = output_cache(out)
        cache.batch_repeat_interleave(job.count)
        cache_kw = cache_kwarg(self.model)
        st = self._new_state(job.count, S, params)
        self._fill_slots(st, batch, requests, uniforms, job.count, S)
        st.advance(out.logits[:, -1].expand(job.count, -1))
        t1 = time.perf_counter()
        stats["time/prefill"] += t1 - t0

        def step(_upto: int) -> None:
            logits = self.model(
                input_ids=st.last_tokens()[:, None], use_cache=True, **{cache_kw: cache}
            ).logits
            st.advance(logits[:, -1])

        graphs, self.cuda_graphs = self.cuda_graphs, False
        try:
            self._decode_loop(st, S, step, stats, params.stop_strings)
        finally:
            self.cuda_graphs = graphs
        stats["time/decode"] += time.perf_counter() - t1
        out_B_S = st.out_B_S.cpu()
        return [[_row(out_B_S[j]) for j in range(job.count)]]

    # -- results --

    def _completion(self, tokens: list[int], stop_strings: tuple[str, ...]) -> Completion:
        reason: FinishReason = "eos" if tokens and tokens[-1] in self._eos else "length"
        cut = _stop_at(self.tokenizer, tokens, stop_strings) if stop_strings else None
        if cut is not None:
            tokens, reason = tokens[:cut], "stop"
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return Completion(token_ids=tuple(tokens), text=text, finish_reason=reason)


def cache_kwarg(model: Any) -> str:
    """The forward's name for the KV cache: `cache` (transformers >= 5.24; `past_key_values`
    is removed in 5.40) or `past_key_values` (older versions)."""
    try:
        names = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - exotic wrappers
        names = {}
    return "cache" if "cache" in names else "past_key_values"


def output_cache(out: Any) -> Any:
    """The KV cache of a forward's output, under its new name (`cache`) or its old one."""
    cache = out.get("cache") if hasattr(out, "get") else getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _row(t: torch.Tensor) -> list[int]:
    """Generated tokens of one slot: everything before the first -1."""
    vals = t.tolist()
    return vals[: vals.index(-1)] if -1 in vals else vals


def _has_stop(tokenizer: Any, tokens: list[int], stop_strings: Sequence[str]) -> bool:
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    return any(s in text for s in stop_strings)


def _stop_at(tokenizer: Any, tokens: list[int], stop_strings: Sequence[str]) -> int | None:
    """Smallest k such that tokens[:k] decodes to text containing a stop string, or None."""
    if not tokens or not _has_stop(tokenizer, tokens, stop_strings):
        return None
    lo, hi = 1, len(tokens)
    while lo < hi:
        mid = (lo + hi) // 2
        if _has_stop(tokenizer, tokens[:mid], stop_strings):
            hi = mid
        else:
            lo = mid + 1
    return lo
