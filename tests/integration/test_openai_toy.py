"""A whole toy run with teachers served over HTTP (the openai backend, through the registry and
its start-up self-test) by a fake OpenAI-compatible server whose log-probabilities are the toy
`helpful` teacher's, next to that teacher scored directly: with k >= V the served teacher's
rows are the direct ones, so every node matches; with k = 3 the nodes whose S_u is inside the
revealed set still match (restrict renorm); the self-tests reach provenance.json and the
report header."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from distillscope.config import ModelSpec, load_config
from distillscope.models import openai as openai_mod
from distillscope.models.registry import load_model
from distillscope.pipeline import run
from distillscope.report.data import load_run
from distillscope.report.header import provenance_items
from distillscope.store import RunStore
from fake_http import JSONServer, logprob_entry

ROOT = Path(__file__).resolve().parents[2]
TOY = {"seed": 0}
HELPFUL = {"seed": 0, "tilt": "helpful", "strength": 1.0}
KEY = ["qid", "path_id", "depth", "method"]


class ToyServer:
    """/tokenize and /v1/completions (echo + prompt_logprobs) answered by a toy model, shaped
    like vLLM 0.32's answers (tests/unit/test_openai.py has the field-by-field version)."""

    def __init__(self, model):
        self.model = model
        self.sep = model.vocab.special("<sep>")
        self.http = JSONServer(lambda path, body: (200, self.answer(path, body)))
        self.httpd, self.url = self.http.httpd, self.http.url

    def answer(self, path, body):
        if path == "/tokenize":
            return {"tokens": self.model.encode(body["prompt"])}
        ids, k = [int(x) for x in body["prompt"]], body.get("prompt_logprobs") or 0
        cut = ids.index(self.sep) + 1
        resp = ids[cut:]
        rows = (torch.cat(list(self.model.logprob_chunks(ids[:cut], resp))).double()
                if resp else torch.zeros((0, self.model.vocab_size)))
        # context positions: the prompt token only (the client reads the response's)
        entries = [None] + [{str(t): {"logprob": 0.0, "rank": 1, "decoded_token": "x"}}
                            for t in ids[1:cut]]
        entries += [logprob_entry(lp, t, k) for t, lp in zip(resp, rows, strict=True)]
        return {"choices": [{"index": 0, "text": "", "prompt_logprobs": entries,
                             "prompt_token_ids": ids}]}


def served(name, url, k, **extra):
    return {"name": name, "mode": "external", "model": {
        "backend": "openai", "model": "toy",
        "options": {"base_url": url, "served_model": "toy", "topk": k, "backoff": 0.01,
                    **extra}}}


@pytest.fixture(scope="module")
def served_run(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    # the toy tokenizer stands in for the hf one; the probe must be a toy prompt
    import distillscope.models.hf as hf

    mp.setattr(hf, "load_hf_text", lambda spec: load_model(ModelSpec(backend="toy",
                                                                     options=TOY)))
    mp.setattr(openai_mod, "PROBE", [{"role": "user", "content": "toy:0"}])
    server = ToyServer(load_model(ModelSpec(backend="toy", options=HELPFUL)))
    try:
        out = tmp_path_factory.mktemp("openai-toy") / "run"
        cfg = load_config(ROOT / "configs" / "toy.yaml", {
            "task.options.n_questions": 2, "tree.G": 100,
            "teachers": [{"name": "helpful", "mode": "external",
                          "model": {"backend": "toy", "options": HELPFUL}},
                         served("served-all", server.url, 64),
                         served("served-top3", server.url, 3),
                         served("served-untested", server.url, 64, self_test=False)]})
        run(cfg, out)
        yield out, server.url
    finally:
        server.httpd.shutdown()
        mp.undo()


def _pair(nodes, name):
    a = nodes[nodes.teacher == "helpful"].set_index(KEY)
    b = nodes[nodes.teacher == name].set_index(KEY)
    assert len(a) > 20 and a.index.sort_values().equals(b.index.sort_values())
    return a, b.loc[a.index]


def test_k_at_least_v_matches_direct_teacher_at_every_node(served_run):
    out, _ = served_run
    a, b = _pair(RunStore(out).read("nodes"), "served-all")
    assert (b.su_bounded == 0).all() and (b.teacher_topk == 64).all()
    ok = a["align"].notna()
    assert ok.sum() > 20 and b["align"][ok].notna().all()
    assert np.allclose(b["align"][ok], a["align"][ok], atol=1e-9, rtol=0)
    for f in ("kl", "js", "teacher_adv"):
        assert np.allclose(b[f], a[f], atol=1e-9, rtol=0, equal_nan=True), f


def test_top3_matches_where_su_is_revealed(served_run):
    out, _ = served_run
    a, b = _pair(RunStore(out).read("nodes"), "served-top3")
    ok = a["align"].notna() & b["align"].notna()
    inside, outside = ok & (b.su_bounded == 0), ok & (b.su_bounded > 0)
    assert inside.sum() >= 3 and outside.sum() >= 3  # both kinds of node occur
    assert np.allclose(b["align"][inside], a["align"][inside], atol=1e-6, rtol=0)
    # outside the revealed set the tail bucket moves the alignment
    assert float((b["align"][outside] - a["align"][outside]).abs().max()) > 1e-3


def test_self_tests_reach_provenance_and_header(served_run):
    out, url = served_run
    prov = json.loads((out / "provenance.json").read_text())
    recs = prov["teachers"]
    assert sorted(recs) == ["served-all", "served-top3", "served-untested"]  # not helpful
    for name, k in (("served-all", 64), ("served-top3", 3)):
        st = recs[name]["self_test"]
        assert recs[name]["backend"] == "openai" and recs[name]["model"].endswith(f"/top{k}")
        assert st["passed"] is True and st["topk"] == k and st["base_url"] == url
        assert st["replica_max_diff"] == 0.0 and st["replica_tol"] == 1e-4
        assert "same ids" in st["tokenizer"]
    assert recs["served-untested"]["self_test"]["passed"] is None
    header = dict(provenance_items(load_run(out)))
    assert "served-all" in header["served teachers"]
    assert "self-test passed" in header["served teachers"]
    assert "served-untested: self-test not run" in header["served teachers"]
