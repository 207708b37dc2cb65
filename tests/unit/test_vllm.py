"""The vllm backend without vLLM: lazy import, the install hint, the output mapping. A real run
is skipped unless vLLM (and a GPU) is present."""

from __future__ import annotations

import builtins
import importlib
from types import SimpleNamespace

import pytest

from distillscope.config import ModelSpec
from distillscope.models import registry
from distillscope.models import vllm as vllm_backend
from distillscope.models.base import ModelError
from distillscope.types import SampleRequest, SamplingParams


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


def _out(tokens, reason, stop=None, text="t"):
    return SimpleNamespace(token_ids=tokens, text=text, finish_reason=reason, stop_reason=stop)


def test_finish_reasons_map_to_the_hf_conventions():
    eos = (2,)
    c = vllm_backend.completion_from_output(_out([5, 6, 2], "stop"), eos)
    assert (c.token_ids, c.finish_reason) == ((5, 6, 2), "eos")
    c = vllm_backend.completion_from_output(_out([5, 6], "stop"), eos)  # EOS not echoed
    assert (c.token_ids, c.finish_reason) == ((5, 6, 2), "eos")
    c = vllm_backend.completion_from_output(_out([5, 6], "stop", stop="Answer:"), eos)
    assert (c.token_ids, c.finish_reason) == ((5, 6), "stop")
    c = vllm_backend.completion_from_output(_out([5, 9], "stop", stop=9), eos)
    assert c.finish_reason == "stop"
    c = vllm_backend.completion_from_output(_out([5, 6, 7], "length"), eos)
    assert (c.token_ids, c.finish_reason, c.text) == ((5, 6, 7), "length", "t")


def _fake_model():
    """A VLLMModel over a stand-in LLM that records what it was asked."""
    asked = {}

    class LLM:
        llm_engine = SimpleNamespace(
            model_config=SimpleNamespace(max_model_len=64, get_vocab_size=lambda: 10)
        )

        def get_tokenizer(self):
            return SimpleNamespace(eos_token_id=2)

        def generate(self, prompts, sampling, use_tqdm):
            asked["prompts"], asked["sampling"] = prompts, sampling
            return [
                SimpleNamespace(outputs=[_out([7, 2], "stop") for _ in range(sp.n)])
                for sp in sampling
            ]

    fake = SimpleNamespace(SamplingParams=lambda **kw: SimpleNamespace(**kw))
    model = vllm_backend.VLLMModel(LLM(), fake, name="vllm:fake", spec=ModelSpec(backend="vllm"))
    return model, asked


def test_sample_sends_one_request_per_group_with_its_seed():
    model, asked = _fake_model()
    reqs = [
        SampleRequest((1, 2, 3), 2, seed=7),
        SampleRequest((4,), 0, 1),
        SampleRequest((5,), 1, 9),
    ]
    out = model.sample(reqs, SamplingParams(temperature=0.7, max_new_tokens=5, stop_strings=("x",)))
    assert [len(g) for g in out] == [2, 0, 1]
    assert asked["prompts"] == [{"prompt_token_ids": [1, 2, 3]}, {"prompt_token_ids": [5]}]
    first = asked["sampling"][0]
    assert (first.n, first.seed, first.max_tokens, first.stop) == (2, 7, 5, ["x"])
    assert out[0][0].finish_reason == "eos"
    with pytest.raises(ModelError, match="max_context"):
        model.sample([SampleRequest(tuple(range(64)), 1, 0)], SamplingParams())


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
