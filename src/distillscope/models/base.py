"""The model protocol every backend implements (`hf`, `vllm`, `toy`).

Two jobs, nothing else:

* `sample(requests, params)`: groups of continuations behind shared prefixes (targeted
  rollouts are ~100 samples behind one long prefix), reproducible per group seed.
* `logprob_chunks(context_ids, response_ids)`: full-vocabulary next-token log-probabilities at
  every response position, yielded in chunks as torch tensors on the model's device. Position t
  is the distribution of response token t given context + response[:t]. Scoring code
  (`distillscope.scoring`) zips the student's and a teacher's chunks, so nothing of size
  (positions x vocabulary) is ever materialised on the host.

The vllm backend samples on its engine and scores by the same weights under hf, loaded on its
first `logprob_chunks` (`models.vllm`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

from distillscope.types import Completion, SampleRequest, SamplingParams


class ModelError(RuntimeError):
    """A model cannot do what was asked (bad input, incompatible tokenizer, ...)."""


class TokenizerMismatchError(ModelError):
    pass


@runtime_checkable
class LanguageModel(Protocol):
    name: str
    """Human-readable identifier (model id or path, plus backend)."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def eos_token_ids(self) -> tuple[int, ...]: ...

    @property
    def max_context(self) -> int:
        """Longest context + response the model accepts, in tokens."""
        ...

    @property
    def device(self) -> str: ...

    def tokenizer_fingerprint(self) -> str:
        """A string equal for two models iff their tokenizers map text to the same ids."""
        ...

    def encode_chat(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """Apply the model's chat template (generation prompt appended) and tokenize."""
        ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def sample(
        self, requests: Sequence[SampleRequest], params: SamplingParams
    ) -> list[list[Completion]]:
        """One list of `req.n` completions per request, in request order."""
        ...

    def logprob_chunks(
        self, context_ids: Sequence[int], response_ids: Sequence[int], chunk_size: int = 1024
    ) -> Iterator[Any]:
        """Yield float32 torch tensors of shape (chunk_T, V): log-softmax over the full
        vocabulary at response positions [start, start + chunk_T), consecutive, covering
        all len(response_ids) positions."""
        ...


def check_same_tokenizer(student: LanguageModel, teacher: LanguageModel, teacher_name: str) -> None:
    """Distillation needs one vocabulary: fail clearly, naming both models, when it differs."""
    if student.tokenizer_fingerprint() != teacher.tokenizer_fingerprint():
        raise TokenizerMismatchError(
            f"teacher '{teacher_name}' ({teacher.name}) does not share the student's tokenizer "
            f"({student.name}); on-policy distillation needs one vocabulary. Use a teacher of "
            f"the same family or the student itself with a self-* context."
        )
