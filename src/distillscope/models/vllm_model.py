"""The vLLM model object: sampling on an engine, output mapping, and scoring delegated to the
same weights under `hf`. The engine itself is started by `models/vllm.py`, whose docstring
describes both (and is the one to read first).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from distillscope.models.base import ModelError, TokenizerMismatchError
from distillscope.models.chat import ChatTokenizerMixin, default_eos
from distillscope.types import Completion, FinishReason, SampleRequest, SamplingParams

if TYPE_CHECKING:
    from distillscope.config import ModelSpec
    from distillscope.models.base import LanguageModel

__all__ = ["GREEDY_BELOW", "VLLMModel", "completion_from_output", "eos_ids", "scoring_spec"]

# Options of this backend that the hf scorer of the same weights shares.
_SHARED_WITH_HF = ("cache_dir", "max_context")

# vLLM's `_SAMPLING_EPS` (sampling_params.py): below it a request is greedy and n must be 1.
GREEDY_BELOW = 1e-5


def scoring_spec(spec: ModelSpec) -> ModelSpec:
    """The spec that scores a `vllm` model: the same checkpoint, dtype and device under `hf`
    (vLLM exposes no full-vocabulary log-probabilities); only the options both backends
    share are kept. Other specs are returned as they are."""
    if spec.backend != "vllm":
        return spec
    opts = {k: v for k, v in spec.options.items() if k in _SHARED_WITH_HF}
    return spec.model_copy(update={"backend": "hf", "options": opts})


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 400 else text[:397] + "..."


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

    vLLM 0.32 checks EOS and stop ids before the length limit (`check_stop`,
    v1/core/sched/utils.py), so an EOS drawn as the last allowed token is "stop"; a "length"
    that ends with an EOS token (the order of some older releases) is "eos" all the same, as
    in the hf backend."""
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
    """`LanguageModel` over a `vllm.LLM`: sampling on the engine, scoring by the same weights
    under the hf backend, loaded on the first `logprob_chunks` (`scorer`)."""

    def __init__(
        self,
        llm: Any,
        vllm: Any,
        *,
        name: str,
        spec: ModelSpec,
        device: str = "cuda",
        load_scorer: Any = None,
    ) -> None:
        self.llm = llm
        self._vllm = vllm
        self.name = name
        self.spec = spec
        self.tokenizer = llm.get_tokenizer()
        self.system_prompt = spec.system_prompt
        self.enable_thinking = spec.enable_thinking
        cfg = llm.llm_engine.model_config
        self._max_context = int(cfg.max_model_len)
        self._vocab = int(cfg.get_vocab_size())
        self._eos = eos_ids(cfg, self.tokenizer)
        self._device = device
        self._load_scorer = load_scorer
        self._scorer: LanguageModel | None = None

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
        """Where the engine samples ("cpu" for vLLM's CPU build)."""
        return self._device

    @property
    def scorer(self) -> LanguageModel:
        """The hf model of the same weights (`scoring_spec`), loaded on first use, after one
        check that its tokenizer and vocabulary are the engine's."""
        if self._scorer is None:
            if self._load_scorer is not None:
                scorer = self._load_scorer(scoring_spec(self.spec))
            else:
                from distillscope.models.registry import load_model

                scorer = load_model(scoring_spec(self.spec))
            if scorer.tokenizer_fingerprint() != self.tokenizer_fingerprint():
                raise TokenizerMismatchError(
                    f"{self.name}: the hf scorer of the same weights ({scorer.name}) has "
                    "another tokenizer than the vLLM engine"
                )
            if scorer.vocab_size != self._vocab:
                raise TokenizerMismatchError(
                    f"{self.name}: the hf scorer ({scorer.name}) has {scorer.vocab_size} "
                    f"logits, the vLLM engine {self._vocab}"
                )
            self._scorer = scorer
        return self._scorer

    def close(self) -> None:
        """Stop the engine's processes now (they also stop with this process)."""
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if callable(getattr(core, "shutdown", None)):
            core.shutdown()

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
        try:
            outputs = (
                list(self.llm.generate(prompts, sampling_params=sampling, use_tqdm=False))
                if live
                else []
            )
        except (ValueError, TypeError) as err:  # a request vLLM refuses
            raise ModelError(f"{self.name}: vLLM refused the requests: {_one_line(err)}") from err
        except Exception as err:  # EngineDeadError and kin: the engine is gone
            raise ModelError(
                f"{self.name}: the vLLM engine failed ({type(err).__name__}: {_one_line(err)})"
            ) from err
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
        """Full-vocabulary log-probabilities from the hf scorer of the same weights."""
        n = len(context_ids) + len(response_ids)
        if n > self._max_context:
            raise ModelError(
                f"{self.name}: context + response is {n} tokens, over max_context "
                f"({self._max_context})"
            )
        return self.scorer.logprob_chunks(context_ids, response_ids, chunk_size)
