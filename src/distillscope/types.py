"""Plain data that crosses module boundaries: frozen dataclasses, no behaviour.

Shape suffixes used across the package (written down once, here):
    G  rollouts of a question          T  response positions (tokens)
    V  vocabulary                       K  children / candidate tokens at one node
    N  rollouts through one node        C  flattened (position, candidate) pairs
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

FinishReason = Literal["eos", "length", "stop"]


@dataclass(frozen=True)
class Question:
    """One benchmark item. `answer` is whatever the task's verifier compares against."""

    qid: str
    prompt: str
    answer: Any
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    """A verifier's decision. Unparsable output is wrong (reward 0) and says so."""

    reward: float
    parsable: bool
    extracted: str | None = None


@dataclass(frozen=True)
class SampleRequest:
    """Sample `n` continuations of `prefix_ids` (the full context: prompt plus any forced
    response prefix). `seed` makes the group reproducible on its own, whatever else is batched
    with it."""

    prefix_ids: tuple[int, ...]
    n: int
    seed: int


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 512
    stop_strings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Completion:
    """One sampled continuation: the generated token ids only (not the prefix)."""

    token_ids: tuple[int, ...]
    text: str
    finish_reason: FinishReason


@dataclass(frozen=True)
class Rollout:
    """A graded student rollout. `forced_len` is the length m of the response prefix that was
    forced (0 for initial rollouts; t + 1 for a targeted rollout at depth t), see
    docs/method.md#unbiased-counting.
    `response_ids` is the whole response, forced prefix included."""

    qid: str
    rollout_id: int
    origin: str
    forced_len: int
    response_ids: tuple[int, ...]
    text: str
    reward: float
    parsable: bool
    finish_reason: str
    seed: int
