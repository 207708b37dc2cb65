"""The vllm backend without vLLM: lazy import, the install hint, the output mapping, and the
calls it makes, against a fake shaped like vLLM 0.8-0.11 (`vllm.LLM`, `SamplingParams`,
`RequestOutput` / `CompletionOutput`). A real run is skipped unless vLLM (and a GPU) is
present."""

from __future__ import annotations

import builtins
import importlib
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from distillscope.config import ModelSpec
from distillscope.models import registry
from distillscope.models import vllm as vllm_backend
from distillscope.models.base import ModelError
from distillscope.types import SampleRequest, SamplingParams

# --- a fake vLLM, shaped like the real API --------------------------------------------------

TOKENIZER_EOS = 2  # what vLLM stops on with stop_reason None
GENCONFIG_EOS = 3  # generation_config.json's extra EOS: vLLM adds it to stop_token_ids
STOP_TEXT_TOKEN = 4  # the fake model's token that "writes" a stop string


class FakeSamplingParams:
    """vllm.SamplingParams: keyword arguments with vLLM's names and defaults, vLLM's checks
    (a wrong name is a TypeError, as with the real msgspec struct)."""

    def __init__(
        self,
        *,
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: str | list[str] | None = None,
        stop_token_ids: list[int] | None = None,
        ignore_eos: bool = False,
        max_tokens: int | None = 16,
        detokenize: bool = True,
        skip_special_tokens: bool = True,
        include_stop_str_in_output: bool = False,
    ) -> None:
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be at least 1, got {n}.")
        if temperature < 0.0:
            raise ValueError(f"temperature must be non-negative, got {temperature}.")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}.")
        if temperature < 1e-5 and n > 1:
            raise ValueError(f"n must be 1 when using greedy sampling, got {n}.")
        stop = [] if stop is None else [stop] if isinstance(stop, str) else list(stop)
        if any(not s for s in stop):
            raise ValueError("stop cannot contain an empty string.")
        if seed is not None and not isinstance(seed, int):
            raise TypeError("seed must be an int")
        self.n, self.temperature, self.top_p, self.seed = n, temperature, top_p, seed
        self.stop, self.stop_token_ids = stop, list(stop_token_ids or [])
        self.ignore_eos, self.max_tokens, self.detokenize = ignore_eos, max_tokens, detokenize
        self.skip_special_tokens = skip_special_tokens
        self.include_stop_str_in_output = include_stop_str_in_output


@dataclass
class FakeCompletionOutput:
    """vllm.outputs.CompletionOutput (the fields every 0.8-0.11 release has)."""

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: Any
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class FakeRequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: Any
    outputs: list[FakeCompletionOutput]
    finished: bool


@dataclass
class FakeModelConfig:
    max_model_len: int = 64
    vocab: int = 10
    generation_config: dict[str, Any] = field(
        default_factory=lambda: {"eos_token_id": [TOKENIZER_EOS, GENCONFIG_EOS]}
    )
    hf_config: Any = field(default_factory=lambda: SimpleNamespace(eos_token_id=TOKENIZER_EOS))

    def get_vocab_size(self) -> int:
        return self.vocab

    def try_get_generation_config(self) -> dict[str, Any]:
        return dict(self.generation_config)


def _child_tokens(seed: int | None) -> list[int]:
    """The fake model: a child's tokens depend on its own seed only; seed % 4 picks how it
    ends (tokenizer EOS, generation-config EOS, the stop-string token, or none)."""
    s = 0 if seed is None else seed
    ending = [[TOKENIZER_EOS], [GENCONFIG_EOS], [STOP_TEXT_TOKEN], [7, 8, 9]][s % 4]
    return [5 + s % 4, 6, *ending]


class FakeLLM:
    """vllm.LLM: keyword-only constructor with EngineArgs names (no **kwargs, so a misspelt
    keyword fails), `get_tokenizer`, `llm_engine.model_config` and `generate`."""

    made: list[dict[str, Any]] = []

    def __init__(
        self,
        model: str,
        *,
        tokenizer: str | None = None,
        trust_remote_code: bool = False,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        seed: int | None = None,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        enable_prefix_caching: bool | None = None,
    ) -> None:
        if dtype not in ("auto", "half", "float16", "bfloat16", "float", "float32"):
            raise ValueError(f"Unknown dtype: {dtype}")
        FakeLLM.made.append(
            dict(
                model=model,
                trust_remote_code=trust_remote_code,
                dtype=dtype,
                seed=seed,
                tensor_parallel_size=tensor_parallel_size,
                max_model_len=max_model_len,
                gpu_memory_utilization=gpu_memory_utilization,
                enable_prefix_caching=enable_prefix_caching,
            )
        )
        self.llm_engine = SimpleNamespace(model_config=FakeModelConfig())
        self.asked: dict[str, Any] = {}

    def get_tokenizer(self) -> Any:
        return SimpleNamespace(eos_token_id=TOKENIZER_EOS)

    def generate(
        self,
        prompts: Any,
        sampling_params: Any = None,
        *,
        use_tqdm: bool = True,
        lora_request: Any = None,
        priority: list[int] | None = None,
    ) -> list[FakeRequestOutput]:
        self.asked.update(prompts=prompts, sampling=sampling_params, use_tqdm=use_tqdm)
        if isinstance(prompts, (str, dict)):
            prompts = [prompts]
        params = sampling_params
        if isinstance(params, list) and len(params) != len(prompts):
            raise ValueError("The lengths of prompts and params must be the same.")
        cfg = self.llm_engine.model_config
        eos_ids = set(cfg.try_get_generation_config()["eos_token_id"]) - {TOKENIZER_EOS}
        results = []
        for i, prompt in enumerate(prompts):
            if not (isinstance(prompt, dict) and set(prompt) == {"prompt_token_ids"}):
                raise TypeError(f"not a TokensPrompt: {prompt!r}")
            ids = prompt["prompt_token_ids"]
            if not all(type(t) is int for t in ids):
                raise TypeError("prompt_token_ids must be a list of int")
            if len(ids) > cfg.max_model_len:
                raise ValueError(
                    f"The decoder prompt (length {len(ids)}) is longer than the maximum model "
                    f"length of {cfg.max_model_len}."
                )
            sp = params[i] if isinstance(params, list) else params
            outs = []
            for k in range(sp.n):  # parallel sampling: child k gets seed + k (vLLM >= 0.7)
                child_seed = None if sp.seed is None else sp.seed + k
                outs.append(self._finish(k, _child_tokens(child_seed), sp, eos_ids))
            results.append(FakeRequestOutput(str(i), None, list(ids), None, outs, True))
        return results

    @staticmethod
    def _finish(k: int, drawn: list[int], sp: FakeSamplingParams, eos_ids: set[int]) -> Any:
        """vLLM's stop checks over the drawn tokens: the stopping token is kept in token_ids;
        the length limit is checked first (so an EOS drawn as the last allowed token ends the
        sample as "length"); EOS -> stop_reason None, a stop token id -> that int, a stop
        string -> the string (the string check comes with detokenizing, after these)."""
        tokens: list[int] = []
        text = ""
        for t in drawn:
            tokens.append(t)
            if sp.max_tokens is not None and len(tokens) >= sp.max_tokens:
                text += "" if t == TOKENIZER_EOS or t in eos_ids else f"<{t}>"
                return FakeCompletionOutput(k, text, tokens, None, None, "length", None)
            if t == TOKENIZER_EOS:
                return FakeCompletionOutput(k, text, tokens, None, None, "stop", None)
            if t in eos_ids or t in sp.stop_token_ids:
                return FakeCompletionOutput(k, text, tokens, None, None, "stop", t)
            text += "Answer: yes" if t == STOP_TEXT_TOKEN else f"<{t}>"
            hit = next((s for s in sp.stop if s in text), None)
            if hit is not None:
                end = text.index(hit) + (len(hit) if sp.include_stop_str_in_output else 0)
                return FakeCompletionOutput(k, text[:end], tokens, None, None, "stop", hit)
        return FakeCompletionOutput(k, text, tokens, None, None, "length", None)


def _fake_vllm(version: str = "0.10.1.1") -> Any:
    return SimpleNamespace(__version__=version, LLM=FakeLLM, SamplingParams=FakeSamplingParams)


def _fake_model() -> tuple[vllm_backend.VLLMModel, FakeLLM]:
    llm = FakeLLM("some/model")
    model = vllm_backend.VLLMModel(
        llm, _fake_vllm(), name="vllm:fake", spec=ModelSpec(backend="vllm")
    )
    return model, llm


# --- lazy import -----------------------------------------------------------------------------


@pytest.fixture
def no_vllm(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "vllm" or name.startswith("vllm."):
            raise ImportError("No module named 'vllm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.setattr(importlib, "import_module", lambda name: fake_import(name))


def test_module_imports_without_vllm_and_names_the_extra(no_vllm):
    with pytest.raises(ImportError) as err:
        vllm_backend.load_vllm_model(ModelSpec(backend="vllm"))
    message = str(err.value)
    assert "pip install 'distillscope[vllm]'" in message
    assert "\n" not in message


def test_registry_resolves_the_backend_lazily():
    factory = registry.backend_factory("vllm")
    assert factory is vllm_backend.load_vllm_model


# --- loading ---------------------------------------------------------------------------------


def test_load_passes_engine_arguments_by_their_vllm_names(monkeypatch):
    monkeypatch.setattr(vllm_backend, "_import_vllm", _fake_vllm)
    FakeLLM.made.clear()
    spec = ModelSpec(
        backend="vllm",
        model="org/model",
        trust_remote_code=True,
        options={"max_context": 48, "gpu_memory_utilization": 0.5},
    )
    model = vllm_backend.load_vllm_model(spec)
    (made,) = FakeLLM.made
    assert made == {
        "model": "org/model",
        "trust_remote_code": True,
        "dtype": "bfloat16",
        "seed": 0,
        "tensor_parallel_size": 1,
        "max_model_len": 48,
        "gpu_memory_utilization": 0.5,
        "enable_prefix_caching": True,
    }
    assert (model.max_context, model.vocab_size) == (64, 10)  # read back from the engine
    assert model.eos_token_ids == (TOKENIZER_EOS, GENCONFIG_EOS)
    FakeLLM.made.clear()
    vllm_backend.load_vllm_model(spec.model_copy(update={"dtype": "float16", "options": {}}))
    assert (FakeLLM.made[0]["dtype"], FakeLLM.made[0]["max_model_len"]) == ("float16", None)


def test_load_refuses_unknown_options_and_old_vllm(monkeypatch):
    monkeypatch.setattr(vllm_backend, "_import_vllm", _fake_vllm)
    with pytest.raises(ModelError, match="unknown vllm backend option"):
        vllm_backend.load_vllm_model(ModelSpec(backend="vllm", model="m", options={"bogus": 1}))
    monkeypatch.setattr(vllm_backend, "_import_vllm", lambda: _fake_vllm("0.6.4.post1"))
    with pytest.raises(ModelError, match=r"need >= 0\.7"):
        vllm_backend.load_vllm_model(ModelSpec(backend="vllm", model="m"))
    for ok in ("0.7.0", "0.8.5.post1", "0.10.1.1", "0.11.0", "0.11.1rc2.dev5+g1234", "weird"):
        vllm_backend.check_vllm_version(ok)


def test_eos_set_follows_the_generation_config_then_the_model_config():
    tok = SimpleNamespace(eos_token_id=2)
    cfg = FakeModelConfig(generation_config={"eos_token_id": 7})
    assert vllm_backend.eos_ids(cfg, tok) == (2, 7)
    cfg = FakeModelConfig(generation_config={}, hf_config=SimpleNamespace(eos_token_id=[5, 2]))
    assert vllm_backend.eos_ids(cfg, tok) == (2, 5)
    cfg = FakeModelConfig(generation_config={}, hf_config=SimpleNamespace())
    assert vllm_backend.eos_ids(cfg, SimpleNamespace(eos_token_id=None)) == ()


# --- outputs ---------------------------------------------------------------------------------


def _out(tokens, reason, stop=None, text="t"):
    return FakeCompletionOutput(0, text, tokens, None, None, reason, stop)


def test_finish_reasons_map_to_the_hf_conventions():
    c = vllm_backend.completion_from_output(_out([5, 6, TOKENIZER_EOS], "stop"))
    assert (c.token_ids, c.finish_reason) == ((5, 6, TOKENIZER_EOS), "eos")
    c = vllm_backend.completion_from_output(_out([5, GENCONFIG_EOS], "stop", GENCONFIG_EOS))
    assert (c.token_ids, c.finish_reason) == ((5, GENCONFIG_EOS), "eos")
    c = vllm_backend.completion_from_output(_out([5, 6], "stop", "Answer:", "x Answer:"))
    assert (c.token_ids, c.finish_reason, c.text) == ((5, 6), "stop", "x Answer:")
    c = vllm_backend.completion_from_output(_out((5, 6, 7), "length"))  # token_ids: any sequence
    assert (c.token_ids, c.finish_reason, c.text) == ((5, 6, 7), "length", "t")
    # vLLM tests the length limit before EOS: an EOS that is the last allowed token is "eos"
    eos = (TOKENIZER_EOS, GENCONFIG_EOS)
    c = vllm_backend.completion_from_output(_out([5, GENCONFIG_EOS], "length"), eos)
    assert (c.token_ids, c.finish_reason) == ((5, GENCONFIG_EOS), "eos")
    c = vllm_backend.completion_from_output(_out([5, 6], "length"), eos)
    assert c.finish_reason == "length"
    for bad in ("abort", None):
        with pytest.raises(ModelError, match="finish_reason"):
            vllm_backend.completion_from_output(_out([5], bad))


# --- sampling --------------------------------------------------------------------------------


def test_sample_sends_one_token_prompt_per_group_with_its_seed():
    model, llm = _fake_model()
    reqs = [
        SampleRequest((1, 2, 3), 3, seed=8),
        SampleRequest((4,), 0, 1),
        SampleRequest((5,), 2, 9),
    ]
    params = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=5, stop_strings=("yes",))
    out = model.sample(reqs, params)
    assert [len(g) for g in out] == [3, 0, 2]
    assert llm.asked["prompts"] == [{"prompt_token_ids": [1, 2, 3]}, {"prompt_token_ids": [5]}]
    assert llm.asked["use_tqdm"] is False
    first = llm.asked["sampling"][0]
    assert (first.n, first.seed, first.temperature, first.top_p) == (3, 8, 0.7, 0.9)
    assert (first.max_tokens, first.stop, first.stop_token_ids) == (5, ["yes"], [])
    assert first.include_stop_str_in_output and first.skip_special_tokens and first.detokenize
    # The fake's children: seed 8 -> tokenizer EOS, 9 -> generation-config EOS, 10 -> stop string.
    assert [c.finish_reason for c in out[0]] == ["eos", "eos", "stop"]
    assert out[0][0].token_ids[-1] == TOKENIZER_EOS
    assert out[0][1].token_ids[-1] == GENCONFIG_EOS
    assert out[0][2].token_ids[-1] == STOP_TEXT_TOKEN and out[0][2].text.endswith("yes")
    # Reproducible per group: the same group alone gives the same samples.
    assert model.sample([reqs[0]], params)[0] == out[0]


def test_length_is_reported_when_max_tokens_cuts_a_sample():
    model, _ = _fake_model()
    (group,) = model.sample([SampleRequest((1,), 1, seed=3)], SamplingParams(max_new_tokens=3))
    assert (group[0].token_ids, group[0].finish_reason) == ((8, 6, 7), "length")


def test_greedy_draws_one_sample_and_repeats_it():
    model, llm = _fake_model()
    (group,) = model.sample([SampleRequest((1, 2), 4, seed=3)], SamplingParams(temperature=0.0))
    (sent,) = llm.asked["sampling"]
    assert (sent.n, sent.temperature) == (1, 0.0)  # vLLM refuses n > 1 when greedy
    assert len(group) == 4 and len(set(group)) == 1


def test_prompt_without_room_is_refused_before_vllm():
    model, llm = _fake_model()
    with pytest.raises(ModelError, match="max_context"):
        model.sample([SampleRequest(tuple(range(64)), 1, 0)], SamplingParams())
    assert llm.asked == {}
    assert model.sample([SampleRequest((1,), 0, 0)], SamplingParams()) == [[]]
    assert llm.asked == {}  # nothing live: vLLM is not called


def test_scoring_says_to_use_hf():
    model, _ = _fake_model()
    with pytest.raises(NotImplementedError, match="hf backend"):
        model.logprob_chunks([1], [2])


@pytest.mark.gpu
@pytest.mark.slow
def test_real_vllm_samples_the_embedded_model():
    pytest.importorskip("vllm")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a GPU")
    model = vllm_backend.load_vllm_model(ModelSpec(backend="vllm"))
    prompt = model.encode_chat([{"role": "user", "content": "Say hi."}])
    params = SamplingParams(temperature=1.0, max_new_tokens=8)
    a = model.sample([SampleRequest(tuple(prompt), 3, seed=1)], params)
    b = model.sample([SampleRequest(tuple(prompt), 3, seed=1)], params)
    assert [c.token_ids for c in a[0]] == [c.token_ids for c in b[0]]
    assert all(1 <= len(c.token_ids) <= 8 for c in a[0])
    for c in a[0]:
        assert (c.finish_reason == "eos") == (c.token_ids[-1] in model.eos_token_ids)
