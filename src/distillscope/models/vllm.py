"""The vLLM backend: rollouts at scale, sampling only.

vLLM is imported when a model is loaded, never at import time, so this module (and the
registry) import without it; a missing extra gives a one-line install hint. The calls were
checked against vLLM's source (`vllm/entrypoints/llm.py` of the 0.9 line; `sampling_params.py`,
`outputs.py`, `v1/engine/parallel_sampling.py`, `v1/core/sched/utils.py` of later main) and
the 0.8-0.11 release notes; releases before 0.7 are refused (see `MIN_VLLM`).

Sampling: each group is one vLLM request, a token-id prompt with `SamplingParams(n, seed)`.
vLLM fans it out into n child requests with seeds seed, seed+1, ..., seed+n-1 (V0 and V1
alike since 0.7), each drawn from its own torch generator, so a group depends on its own
seed and not on what else is batched, up to floating-point differences in the logits when
the batch changes (for exact reruns vLLM documents `VLLM_ENABLE_V1_MULTIPROCESSING=0` or its
batch-invariant mode, on the same hardware and version). Draws differ from the hf backend's
for the same seed. Prefix caching is on, so the n children share the prefix's KV blocks.
Temperatures below 1e-5 are greedy in vLLM, which refuses n > 1 there: one sample is drawn
and repeated. Temperatures in (0, 0.01) are raised to 0.01 by vLLM.

Scoring (`logprob_chunks`) is not offered: vLLM returns top-k log-probabilities, not the full
vocabulary; score with the hf backend (same model, `backend: hf`).

Finish reasons follow the hf backend: "eos" (the EOS id ends `token_ids`), "stop" (a stop
string; `token_ids` end with the token that completed it, `text` keeps the stop string but,
unlike hf, ends right after it), "length" (`max_new_tokens` or `max_context`). vLLM reports
finish_reason "stop" in three cases: the tokenizer's EOS (stop_reason None), a generation
config EOS (vLLM adds those as stop_token_ids, so stop_reason is the int id) and a stop string
(stop_reason is the string). This backend passes no stop_token_ids of its own, so an int is
always an EOS. vLLM keeps the stopping token in `token_ids`.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator, Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from distillscope.models.base import ModelError
from distillscope.models.chat import ChatTokenizerMixin, default_eos
from distillscope.types import Completion, FinishReason, SampleRequest, SamplingParams

if TYPE_CHECKING:
    from distillscope.config import ModelSpec

__all__ = [
    "INSTALL_HINT",
    "VLLMModel",
    "check_vllm_version",
    "completion_from_output",
    "eos_ids",
    "load_vllm_model",
]

INSTALL_HINT = "the vllm backend needs vLLM: pip install 'distillscope[vllm]'"

OPTIONS = ("cache_dir", "max_context", "gpu_memory_utilization", "tensor_parallel_size")

# 0.6.4-0.6.6 gave the n samples of a seeded request one seed, hence n equal samples
# (fixed in vLLM PR #11898, released in 0.7.0).
MIN_VLLM = (0, 7)

# vLLM's `_SAMPLING_EPS` (sampling_params.py): below it a request is greedy and n must be 1.
GREEDY_BELOW = 1e-5


def _import_vllm() -> Any:
    try:
        return importlib.import_module("vllm")
    except ImportError as err:
        raise ImportError(f"{INSTALL_HINT} ({err})") from None


def check_vllm_version(version: str) -> None:
    """Refuse vLLM releases older than `MIN_VLLM`; unparsable versions pass."""
    m = re.match(r"(\d+)\.(\d+)", version)
    if m and (int(m[1]), int(m[2])) < MIN_VLLM:
        need = ".".join(map(str, MIN_VLLM))
        raise ModelError(
            f"vLLM {version} is too old for the vllm backend (need >= {need}: earlier releases "
            "give identical samples for a seeded request with n > 1)"
        )


def load_vllm_model(spec: ModelSpec) -> VLLMModel:
    from distillscope.models.embedded import is_embedded, resolve_embedded

    vllm = _import_vllm()
    check_vllm_version(str(getattr(vllm, "__version__", "")))
    opts = dict(spec.options)
    unknown = sorted(set(opts) - set(OPTIONS))
    if unknown:
        raise ModelError(f"unknown vllm backend option(s) {unknown}; allowed: {', '.join(OPTIONS)}")
    source = spec.model
    if is_embedded(source):
        source = str(resolve_embedded(source, opts.get("cache_dir")))
    max_len = opts.get("max_context")
    # Keywords of vllm.LLM / EngineArgs, the same in 0.8-0.11. dtype "auto" means bfloat16 on
    # CUDA (ModelSpec, and what the hf scorer uses); vLLM's own "auto" picks float16 for a
    # float32 checkpoint such as the embedded model's cache (LLM docstring, 0.9).
    llm = vllm.LLM(
        model=source,
        dtype="bfloat16" if spec.dtype == "auto" else spec.dtype,
        trust_remote_code=spec.trust_remote_code,
        enable_prefix_caching=True,
        max_model_len=None if max_len is None else int(max_len),
        gpu_memory_utilization=float(opts.get("gpu_memory_utilization", 0.85)),
        tensor_parallel_size=int(opts.get("tensor_parallel_size", 1)),
        seed=0,
    )
    return VLLMModel(llm, vllm, name=f"vllm:{spec.model}", spec=spec)


def eos_ids(model_config: Any, tokenizer: Any) -> tuple[int, ...]:
    """The EOS set, made as the hf backend makes it (`chat.default_eos`) from vLLM's model
    config. vLLM stops on the tokenizer's EOS and on the generation config's ids
    (`update_from_generation_config`)."""
    generation = model_config.try_get_generation_config() or {}
    return default_eos(
        getattr(model_config, "hf_config", None),
        SimpleNamespace(eos_token_id=generation.get("eos_token_id")),
        tokenizer,
    )


def completion_from_output(out: Any, eos_token_ids: Sequence[int] = ()) -> Completion:
    """A vLLM `CompletionOutput` (token_ids, text, finish_reason, stop_reason) -> Completion.

    vLLM checks the length limit before EOS (`check_stop`, v1/core/sched/utils.py), so an EOS
    drawn as the last allowed token comes back as "length"; like the hf backend, a sample that
    ends with an EOS token is "eos"."""
    reason: FinishReason
    if out.finish_reason == "length":
        last = out.token_ids[-1] if len(out.token_ids) else None
        reason = "eos" if last is not None and int(last) in eos_token_ids else "length"
    elif out.finish_reason == "stop":
        reason = "stop" if isinstance(out.stop_reason, str) else "eos"
    else:  # "abort" (and, in later releases, "error" or "repetition")
        raise ModelError(f"vLLM ended a sample with finish_reason {out.finish_reason!r}")
    tokens = tuple(int(t) for t in out.token_ids)
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
        self._eos = eos_ids(cfg, self.tokenizer)

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

    def _sampling_params(self, r: SampleRequest, params: SamplingParams, greedy: bool) -> Any:
        return self._vllm.SamplingParams(
            n=1 if greedy else r.n,
            seed=r.seed,
            temperature=0.0 if greedy else params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_new_tokens,
            stop=list(params.stop_strings) or None,
            include_stop_str_in_output=True,
            skip_special_tokens=True,
        )

    def sample(
        self, requests: Sequence[SampleRequest], params: SamplingParams
    ) -> list[list[Completion]]:
        for r in requests:
            if len(r.prefix_ids) >= self._max_context:
                raise ModelError(
                    f"{self.name}: a prompt of {len(r.prefix_ids)} tokens leaves no room under "
                    f"max_context ({self._max_context})"
                )
        greedy = params.temperature < GREEDY_BELOW
        live = [r for r in requests if r.n > 0]
        # A TokensPrompt is a TypedDict, so the plain dict is the same object to vLLM; it is
        # accepted from 0.4.3 on, while the old `prompt_token_ids=` keyword of generate was
        # removed in 0.10.2. Outputs come back in prompt order (LLM._run_engine sorts them).
        prompts = [{"prompt_token_ids": [int(t) for t in r.prefix_ids]} for r in live]
        sampling = [self._sampling_params(r, params, greedy) for r in live]
        outputs = (
            list(self.llm.generate(prompts, sampling_params=sampling, use_tqdm=False))
            if live
            else []
        )
        if len(outputs) != len(live):
            raise ModelError(f"{self.name}: vLLM answered {len(outputs)} of {len(live)} requests")
        by_request = iter(outputs)
        result: list[list[Completion]] = []
        for r in requests:
            if r.n == 0:
                result.append([])
                continue
            group = [completion_from_output(o, self._eos) for o in next(by_request).outputs]
            if greedy:
                group = group * r.n
            if len(group) != r.n:
                raise ModelError(f"{self.name}: vLLM returned {len(group)} of {r.n} samples")
            result.append(group)
        return result

    def logprob_chunks(
        self, context_ids: Sequence[int], response_ids: Sequence[int], chunk_size: int = 1024
    ) -> Iterator[Any]:
        raise NotImplementedError(
            "the vllm backend only samples; score with the hf backend (backend: hf, same model)"
        )
