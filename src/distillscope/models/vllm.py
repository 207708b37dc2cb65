"""The vLLM backend: rollouts at scale, sampling only.

vLLM is imported when a model is loaded, never at import time, so this module (and the
registry) import without it; a missing extra gives a one-line install hint. Prefix caching is
on, so a group's n samples share its prefix's KV blocks; each request becomes one vLLM request
with `SamplingParams(n=..., seed=...)`, which makes a group reproducible on its own seed (vLLM's
per-request generator), though not equal to the hf backend's draws for the same seed.

Scoring (`logprob_chunks`) is not offered: vLLM returns top-k log-probabilities, not the full
vocabulary; score with the hf backend (same model, `backend: hf`).

Finish reasons follow the hf backend: "eos" (the EOS id ends `token_ids`), "stop" (a stop
string; `include_stop_str_in_output` keeps it in the text), "length".
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from distillscope.models.base import ModelError
from distillscope.models.chat import ChatTokenizerMixin
from distillscope.types import Completion, FinishReason, SampleRequest, SamplingParams

if TYPE_CHECKING:
    from distillscope.config import ModelSpec

__all__ = ["INSTALL_HINT", "VLLMModel", "completion_from_output", "load_vllm_model"]

INSTALL_HINT = "the vllm backend needs vLLM: pip install 'distillscope[vllm]'"

OPTIONS = ("cache_dir", "max_context", "gpu_memory_utilization", "tensor_parallel_size")


def _import_vllm() -> Any:
    try:
        return importlib.import_module("vllm")
    except ImportError as err:
        raise ImportError(f"{INSTALL_HINT} ({err})") from None


def load_vllm_model(spec: ModelSpec) -> VLLMModel:
    from distillscope.models.embedded import is_embedded, resolve_embedded

    vllm = _import_vllm()
    opts = dict(spec.options)
    unknown = sorted(set(opts) - set(OPTIONS))
    if unknown:
        raise ModelError(f"unknown vllm backend option(s) {unknown}; allowed: {', '.join(OPTIONS)}")
    source = spec.model
    if is_embedded(source):
        source = str(resolve_embedded(source, opts.get("cache_dir")))
    llm = vllm.LLM(
        model=source,
        dtype="auto" if spec.dtype == "auto" else spec.dtype,
        trust_remote_code=spec.trust_remote_code,
        enable_prefix_caching=True,
        max_model_len=opts.get("max_context"),
        gpu_memory_utilization=float(opts.get("gpu_memory_utilization", 0.85)),
        tensor_parallel_size=int(opts.get("tensor_parallel_size", 1)),
        seed=0,
    )
    return VLLMModel(llm, vllm, name=f"vllm:{spec.model}", spec=spec)


def completion_from_output(out: Any, eos_token_ids: Sequence[int]) -> Completion:
    """A vLLM CompletionOutput (token_ids, text, finish_reason, stop_reason) -> Completion."""
    tokens = tuple(int(t) for t in out.token_ids)
    stop = getattr(out, "stop_reason", None)  # None: EOS; str: stop string; int: stop token
    reason: FinishReason = "length"
    if out.finish_reason == "stop":
        reason = "eos" if stop is None or stop in eos_token_ids else "stop"
    if reason == "eos" and eos_token_ids and (not tokens or tokens[-1] not in eos_token_ids):
        tokens = (*tokens, int(stop) if isinstance(stop, int) else int(eos_token_ids[0]))
    return Completion(token_ids=tokens, text=str(out.text), finish_reason=reason)


class VLLMModel(ChatTokenizerMixin):
    """`LanguageModel` over a `vllm.LLM`. Sampling only."""

    def __init__(self, llm: Any, vllm: Any, *, name: str, spec: ModelSpec) -> None:
        self.llm = llm
        self._vllm = vllm
        self.name = name
        self.tokenizer = llm.get_tokenizer()
        self.system_prompt = spec.system_prompt
        self.enable_thinking = spec.enable_thinking
        cfg = llm.llm_engine.model_config
        self._max_context = int(cfg.max_model_len)
        self._vocab = int(cfg.get_vocab_size())
        eos = self.tokenizer.eos_token_id
        self._eos = () if eos is None else (int(eos),)

    @property
    def vocab_size(self) -> int:
        return self._vocab

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return self._eos

    @property
    def max_context(self) -> int:
        return self._max_context

    @property
    def device(self) -> str:
        return "cuda"


    def sample(
        self, requests: Sequence[SampleRequest], params: SamplingParams
    ) -> list[list[Completion]]:
        for r in requests:
            if len(r.prefix_ids) >= self._max_context:
                raise ModelError(
                    f"{self.name}: a prompt of {len(r.prefix_ids)} tokens leaves no room under "
                    f"max_context ({self._max_context})"
                )
        live = [r for r in requests if r.n > 0]
        prompts = [{"prompt_token_ids": list(r.prefix_ids)} for r in live]
        sampling = [
            self._vllm.SamplingParams(
                n=r.n,
                seed=r.seed,
                temperature=max(0.0, params.temperature),
                top_p=params.top_p,
                max_tokens=params.max_new_tokens,
                stop=list(params.stop_strings) or None,
                include_stop_str_in_output=True,
                skip_special_tokens=True,
            )
            for r in live
        ]
        outputs = iter(self.llm.generate(prompts, sampling, use_tqdm=False)) if live else iter(())
        result: list[list[Completion]] = []
        for r in requests:
            if r.n == 0:
                result.append([])
                continue
            out = next(outputs)
            result.append([completion_from_output(o, self._eos) for o in out.outputs])
        return result

    def logprob_chunks(
        self, context_ids: Sequence[int], response_ids: Sequence[int], chunk_size: int = 1024
    ) -> Iterator[Any]:
        raise NotImplementedError(
            "the vllm backend only samples; score with the hf backend (backend: hf, same model)"
        )
