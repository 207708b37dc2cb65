"""The transformers backend: loading, the model object, and chunked full-vocabulary scoring.

`load_hf_model` loads an HF id, a local folder or the embedded model ('embedded:smollm2-135m',
converted once and cached by `embedded.py`); `load_hf_text` loads only its text side (what a
Ray driver needs when the actors hold the weights). `HFModel` is the `LanguageModel` of the
protocol: its tokenizer side comes from `ChatTokenizerMixin`, its sampling from
`GroupSampler` (`sampler.py`: shared-prefix group sampling on our own decode loop), and its
scoring is here.

Scoring (`HFModel.logprob_chunks`): one forward of the base model over context + response
(hidden states only), then lm_head and a float32 log-softmax chunk by chunk on the device;
memory is O(T x hidden + chunk x V), so a 30k-token response fits. The response's hidden
states of the last few sequences are kept (`prefix_cache.ByteLRU`, bounded in bytes): the
pipeline scores the student on a path once per teacher and again in phase 2, and each of those
is now one forward.
The cached values are the ones the forward computes, so a run gives the same numbers with or
without it (a resumed run starts with an empty cache).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from distillscope.models.base import ModelError
from distillscope.models.chat import ChatTokenizerMixin, default_eos
from distillscope.models.decode import DecodeRunner, draw_tokens, group_uniforms
from distillscope.models.options import OPTIONS_BY_BACKEND, unknown_options
from distillscope.models.prefix_cache import BlockCache, ByteLRU, tensor_bytes
from distillscope.models.sampler import GroupSampler

if TYPE_CHECKING:
    from distillscope.config import ModelSpec

__all__ = [
    "HFModel",
    "HFText",
    "draw_tokens",
    "group_uniforms",
    "load_hf_model",
    "load_hf_text",
]

OPTIONS = OPTIONS_BY_BACKEND["hf"]  # the names are checked with the configuration


# --- loading ---------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device '{name}' asked for, but CUDA is not available here")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _source(spec: ModelSpec) -> tuple[dict[str, Any], str]:
    """The spec's options (checked) and the path or id transformers loads from."""
    from distillscope.models.embedded import is_embedded, resolve_embedded

    opts = dict(spec.options)
    if (msg := unknown_options("hf", opts)) is not None:
        raise ModelError(msg)
    source = spec.model
    if is_embedded(spec.model):
        source = str(resolve_embedded(spec.model, opts.get("cache_dir")))
    return opts, source


def load_hf_text(spec: ModelSpec) -> HFText:
    """The text side of `spec` (tokenizer, chat template, vocabulary size, EOS, context length)
    without its weights: what a Ray driver needs when the actors hold the models."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    opts, source = _source(spec)
    trust = bool(spec.trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust)
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust)
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot load the tokenizer of '{spec.model}': {err}") from err
    try:
        generation_config = GenerationConfig.from_pretrained(source)
    except (OSError, ValueError):  # optional file
        generation_config = None
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return HFText(
        tokenizer,
        name=f"hf:{spec.model}",
        system_prompt=spec.system_prompt,
        enable_thinking=spec.enable_thinking,
        vocab_size=int(text_config.vocab_size),
        eos_token_ids=default_eos(config, generation_config, tokenizer),
        max_context=int(
            opts.get("max_context") or getattr(text_config, "max_position_embeddings", 4096)
        ),
    )


class HFText(ChatTokenizerMixin):
    """Identity and text side of an hf model (no weights, no sampling, no scoring)."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        name: str,
        system_prompt: str | None,
        enable_thinking: bool,
        vocab_size: int,
        eos_token_ids: Sequence[int],
        max_context: int,
    ) -> None:
        self.tokenizer = tokenizer
        self.name = name
        self.system_prompt = system_prompt
        self.enable_thinking = enable_thinking
        self.vocab_size = vocab_size
        self.eos_token_ids = tuple(int(i) for i in eos_token_ids)
        self.max_context = max_context


def load_hf_model(spec: ModelSpec) -> HFModel:
    """Load `spec.model` (HF id, local folder, or 'embedded:smollm2-135m')."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    opts, source = _source(spec)
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    trust = bool(spec.trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust)
        model = AutoModelForCausalLM.from_pretrained(
            source,
            dtype=dtype,
            trust_remote_code=trust,
            attn_implementation=opts.pop("attn_implementation", "sdpa"),
        )
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot load model '{spec.model}': {err}") from err
    model.to(device).eval()
    opts.pop("cache_dir", None)
    return HFModel(
        model,
        tokenizer,
        name=f"hf:{spec.model}",
        system_prompt=spec.system_prompt,
        enable_thinking=spec.enable_thinking,
        **opts,
    )


def _dtype_option(value: str | torch.dtype | None) -> torch.dtype | None:
    if value is None or isinstance(value, torch.dtype):
        return value
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if value not in names:
        raise ModelError(f"matmul_dtype must be one of {', '.join(names)}, got '{value}'")
    return names[value]


# --- the model -------------------------------------------------------------------------------


class HFModel(ChatTokenizerMixin, GroupSampler):
    """A transformers causal LM behind the `LanguageModel` protocol.

    Options (keyword arguments; `ModelSpec.options` for `load_hf_model`) are listed in
    `OPTIONS`. `eos_token_ids` overrides the model's EOS set (an empty tuple disables EOS, as the
    throughput benchmark does)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str = "hf",
        system_prompt: str | None = None,
        enable_thinking: bool = True,
        max_context: int | None = None,
        max_batch_samples: int | None = None,
        cascade: bool = True,
        cuda_graphs: bool = True,
        runner: str = "auto",
        eos_token_ids: Sequence[int] | None = None,
        check_every: int | None = None,
        matmul_dtype: str | torch.dtype | None = None,
        attention: str = "torch",
    ) -> None:
        if runner not in ("auto", "fast", "generic"):
            raise ModelError(f"runner must be auto, fast or generic, got '{runner}'")
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.system_prompt = system_prompt
        self.enable_thinking = enable_thinking
        cfg = model.config
        self._max_context = int(max_context or getattr(cfg, "max_position_embeddings", 4096))
        self._max_batch_samples = max_batch_samples
        self.cascade = bool(cascade)
        self._device = next(model.parameters()).device
        self.cuda_graphs = bool(cuda_graphs) and self._device.type == "cuda"
        self.check_every = check_every or (16 if self._device.type == "cuda" else 1)
        if eos_token_ids is None:
            eos_token_ids = default_eos(cfg, getattr(model, "generation_config", None), tokenizer)
        self._eos = tuple(int(i) for i in eos_token_ids)
        fast_ok = DecodeRunner.supports(model)
        if runner == "fast" and not fast_ok:
            raise ModelError(f"runner 'fast' does not support model type '{cfg.model_type}'")
        self._use_fast = fast_ok and runner != "generic"
        self._fast: DecodeRunner | None = None  # built on the first sample() call
        self.matmul_dtype = _dtype_option(matmul_dtype)
        if self.matmul_dtype == next(model.parameters()).dtype:
            self.matmul_dtype = None
        if self.matmul_dtype is not None and not self._use_fast:
            raise ModelError(
                f"matmul_dtype needs the fast runner, which model type '{cfg.model_type}' "
                f"does not have (or runner is 'generic')"
            )
        self.attention = attention
        self.last_stats: dict[str, float] = {}
        self._hidden = ByteLRU(tensor_bytes)  # (context length, sequence) -> response states
        self._blocks = BlockCache()

    @property
    def _runner(self) -> DecodeRunner | None:
        if self._use_fast and self._fast is None:
            # ordinary tensors even when first asked for inside sample()'s inference mode: the
            # model's own parameters become views of the fused weights
            with torch.inference_mode(False), torch.no_grad():
                self._fast = DecodeRunner(
                    self.model, self._max_context, self.matmul_dtype, self.attention
                )
        return self._fast

    # -- protocol: identity and text --

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return self._eos

    @property
    def max_context(self) -> int:
        return self._max_context

    @property
    def device(self) -> str:
        return str(self._device)

    # -- protocol: scoring --

    def logprob_chunks(
        self, context_ids: Sequence[int], response_ids: Sequence[int], chunk_size: int = 1024
    ) -> Iterator[torch.Tensor]:
        n_ctx, T = len(context_ids), len(response_ids)
        if n_ctx < 1:
            raise ModelError("logprob_chunks needs at least one context token")
        self._check_length(n_ctx + T, "context + response")
        if chunk_size < 1:
            raise ModelError(f"chunk_size must be >= 1, got {chunk_size}")
        seq = (*context_ids, *response_ids)
        key = (n_ctx, seq)
        run = self._runner if self.matmul_dtype is not None else None
        # the sampler's products (runner.forward_hidden, runner.head) when matmul_dtype is
        # set, so that the probabilities scored are those the samples were drawn from
        head = run.head if run is not None else self.model.get_output_embeddings()
        h_T = self._hidden.get(key)
        if h_T is None:
            ids = torch.tensor([seq], dtype=torch.long, device=self._device)
            with torch.inference_mode():
                if run is not None:
                    h_T = run.forward_hidden(ids[0])[n_ctx - 1 : n_ctx - 1 + T]
                else:
                    out = self.model.base_model(input_ids=ids, use_cache=False)
                    h_T = out.last_hidden_state[0, n_ctx - 1 : n_ctx - 1 + T]
            h_T = h_T.clone()  # not a view: the context's rows are not kept
            self._hidden.put(key, h_T)
        return self._chunks(h_T, chunk_size, head)

    def _chunks(self, h_T: torch.Tensor, chunk_size: int, head: Any) -> Iterator[torch.Tensor]:
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        for start in range(0, h_T.shape[0], chunk_size):
            with torch.inference_mode():
                logits = head(h_T[start : start + chunk_size]).float()
                if cap:
                    logits = torch.tanh(logits / cap) * cap
                if not bool(torch.isfinite(logits).all()):
                    raise ModelError(
                        f"{self.name}: non-finite logits at response positions from {start}"
                    )
                lp = torch.log_softmax(logits, dim=-1)
            yield lp

    def _check_length(self, n: int, what: str) -> None:
        if n > self._max_context:
            raise ModelError(
                f"{self.name}: {what} of {n} tokens is longer than max_context "
                f"({self._max_context}); shorten the prompt or raise options.max_context"
            )

