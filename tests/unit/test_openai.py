"""The openai backend against a tiny fake OpenAI-compatible server (http.server on 127.0.0.1,
in a thread), shaped like vLLM 0.32's answers: prompt_logprobs entries {"id": {logprob, rank,
decoded_token}} with the top-k and the prompt token, prompt_token_ids, /tokenize, a 400 above
max_logprobs."""

from __future__ import annotations

import pytest
import torch

from distillscope.models.base import ModelError
from distillscope.models.openai import OpenAIModel
from distillscope.models.topk import REVEALED_KEEP, topk_rows
from fake_http import JSONServer, logprob_entry

V = 10


def full_logp(prefix):
    g = torch.Generator().manual_seed(sum(prefix) * 7 + len(prefix))
    return torch.log_softmax(torch.randn(V, generator=g, dtype=torch.float64) * 2, -1)


class Server:
    def __init__(self, max_logprobs=20, fail_first=0, noise=0.0):
        self.max_logprobs, self.fail_left, self.noise = max_logprobs, fail_first, noise
        self.calls = 0
        self.http = JSONServer(self.count_and_answer)
        self.httpd, self.url = self.http.httpd, self.http.url

    def count_and_answer(self, path, body):
        self.calls += 1
        return self.answer(path, body)

    def answer(self, path, body):
        if self.fail_left > 0:
            self.fail_left -= 1
            return 503, {"error": "busy"}
        if path == "/tokenize":
            return 200, {"tokens": [int(x) for x in body["prompt"].split()]}
        k = body.get("prompt_logprobs")
        if k is not None and k > self.max_logprobs:
            return 400, {"error": {"message": f"Requested prompt logprobs of {k}, which is "
                                              f"greater than max allowed: {self.max_logprobs}"}}
        ids = body["prompt"]
        entries = [None]
        for i in range(1, len(ids)):
            lp = full_logp(ids[:i]) + self.noise * self.calls
            entries.append(logprob_entry(lp, ids[i], k or 0))
        return 200, {"choices": [{"index": 0, "text": "", "prompt_logprobs": entries,
                                  "prompt_token_ids": ids}]}


class Text:
    vocab_size = V

    def encode_chat(self, messages):
        return [1, 2, 3, 4]

    def decode(self, ids):
        return " ".join(map(str, ids))


@pytest.fixture
def server():
    s = Server()
    yield s
    s.httpd.shutdown()


def test_rows_match_topk_rule_and_self_test(server):
    m = OpenAIModel(Text(), server.url, "fake", topk=3, backoff=0.01)
    info = m.self_test()
    assert info["replica_max_diff"] == 0.0
    ctx, resp = [1, 2], [5, 0, 9]
    rows = torch.cat(list(m.logprob_chunks(ctx, resp, chunk_size=2)))
    full = torch.stack([full_logp((ctx + resp)[: len(ctx) + t]) for t in range(len(resp))])
    want = topk_rows(full, 3, resp)
    assert torch.allclose(rows.double(), want.logp, atol=1e-6)
    assert m.revealed_ids[tuple(resp)] == [
        frozenset(want.revealed[t].nonzero().flatten().tolist()) for t in range(3)]


def test_revealed_ids_are_bounded(server):
    m = OpenAIModel(Text(), server.url, "fake", topk=2, backoff=0.01)
    responses = [[a, b] for a in range(V) for b in range(V)][: REVEALED_KEEP + 5]
    for resp in responses:
        list(m.logprob_chunks([1], resp))
    assert len(m.revealed_ids) == REVEALED_KEEP
    assert tuple(responses[0]) not in m.revealed_ids
    assert list(m.revealed_ids)[-1] == tuple(responses[-1])
    assert all(len(sets) == 2 for sets in m.revealed_ids.values())


def test_self_test_result_records_what_was_checked(server):
    m = OpenAIModel(Text(), server.url, "fake", topk=3, backoff=0.01)
    assert m.self_test_result is None
    res = m.self_test()
    assert m.self_test_result is res and res["passed"] is True
    assert res["served_model"] == "fake" and res["topk"] == 3 and res["replica_tol"] == 1e-4
    assert "4-token probe" in res["tokenizer"] and res["seconds"] >= 0


def test_retries_then_succeeds():
    s = Server(fail_first=2)
    try:
        m = OpenAIModel(Text(), s.url, "fake", topk=2, retries=3, backoff=0.01)
        assert len(list(m.logprob_chunks([1], [2, 3]))) == 1
        s.fail_left = 10
        with pytest.raises(ModelError, match="giving up after 2 attempts"):
            OpenAIModel(Text(), s.url, "fake", topk=2, retries=1, backoff=0.01).prompt_logprobs(
                [1, 2])
    finally:
        s.httpd.shutdown()


def test_cap_below_k_is_a_clear_error():
    s = Server(max_logprobs=5)
    try:
        m = OpenAIModel(Text(), s.url, "fake", topk=8, backoff=0.01)
        with pytest.raises(ModelError, match="caps logprobs below k=8"):
            list(m.logprob_chunks([1], [2]))
    finally:
        s.httpd.shutdown()


def test_disagreeing_replicas_reported():
    s = Server(noise=1e-2)
    try:
        with pytest.raises(ModelError, match="replicas"):
            OpenAIModel(Text(), s.url, "fake", topk=2, backoff=0.01).self_test()
    finally:
        s.httpd.shutdown()


def test_unreachable_server_times_out_cleanly():
    m = OpenAIModel(Text(), "http://127.0.0.1:9", "fake", topk=2, retries=1, backoff=0.01,
                    timeout=1)
    with pytest.raises(ModelError, match="giving up"):
        m.prompt_logprobs([1, 2])


def test_registry_and_options():
    from distillscope.config import ModelSpec
    from distillscope.models.registry import load_model

    with pytest.raises(ModelError, match="base_url"):
        load_model(ModelSpec(backend="openai", options={}))
    with pytest.raises(ValueError, match="unknown openai backend option"):
        ModelSpec(backend="openai", options={"bogus": 1})
    with pytest.raises(ModelError, match="unknown openai backend option"):
        load_model(ModelSpec(backend="openai").model_copy(update={"options": {"bogus": 1}}))
