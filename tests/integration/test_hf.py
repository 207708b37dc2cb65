"""The hf backend on the real embedded model (SmolLM2-135M-Instruct, float32, CPU).

Few tokens on purpose: each test runs in seconds once the session's model is loaded.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distillscope import gradients
from distillscope.types import SampleRequest, SamplingParams

pytestmark = pytest.mark.slow

YES_NO = [{"role": "user", "content": "Is the sky blue? Answer yes or no."}]
HELLO = [{"role": "user", "content": "Say hi."}]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: small matrices, and immune to a busy machine's oversubscription."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _generate(model, prefix, n_new: int) -> list[int]:
    with torch.no_grad():
        out = model.model.generate(
            torch.tensor([prefix]),
            attention_mask=torch.ones(1, len(prefix), dtype=torch.long),
            do_sample=False,
            max_new_tokens=n_new,
        )
    return out[0, len(prefix) :].tolist()


def test_chat_template_has_the_system_prompt_and_the_generation_prompt(smollm):
    text = smollm.decode(smollm.encode_chat(HELLO))
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")
    assert text.endswith("<|im_start|>assistant\n")


def test_same_seed_same_samples_n_and_length_respected(smollm):
    prefix = tuple(smollm.encode_chat(HELLO))
    params = SamplingParams(temperature=1.0, max_new_tokens=8)
    a = smollm.sample([SampleRequest(prefix, 3, seed=1), SampleRequest(prefix[:-3], 2, 2)], params)
    b = smollm.sample([SampleRequest(prefix, 3, seed=1)], params)
    assert [len(g) for g in a] == [3, 2]
    assert [c.token_ids for c in a[0]] == [c.token_ids for c in b[0]]
    assert all(1 <= len(c.token_ids) <= 8 for g in a for c in g)
    eos = smollm.eos_token_ids
    for c in (c for g in a for c in g):
        assert c.finish_reason == ("eos" if c.token_ids[-1] in eos else "length")
    other = smollm.sample([SampleRequest(prefix, 3, seed=2)], params)
    assert [c.token_ids for c in other[0]] != [c.token_ids for c in a[0]]


def test_eos_ends_a_sample_and_is_kept(smollm):
    prefix = tuple(smollm.encode_chat(YES_NO))
    (c,) = smollm.sample([SampleRequest(prefix, 1, 0)], SamplingParams(0.0, 1.0, 20))[0]
    assert c.finish_reason == "eos"
    assert c.token_ids[-1] in smollm.eos_token_ids and len(c.token_ids) < 20
    assert "<|im_end|>" not in c.text and c.text.strip().lower().rstrip(".") in ("yes", "no")


def test_greedy_equals_generate(smollm):
    prefix = smollm.encode_chat(HELLO)
    want = _generate(smollm, prefix, 16)
    params = SamplingParams(temperature=0.0, max_new_tokens=16)
    out = smollm.sample([SampleRequest(tuple(prefix), 2, 0)], params)[0]
    assert [list(c.token_ids) for c in out] == [want, want]


def test_stop_string_cuts_a_real_sample(smollm):
    prefix = tuple(smollm.encode_chat(HELLO))
    free = smollm.sample([SampleRequest(prefix, 1, 0)], SamplingParams(0.0, 1.0, 16))[0][0]
    stop = free.text.split()[1]
    params = SamplingParams(temperature=0.0, max_new_tokens=16, stop_strings=(stop,))
    (c,) = smollm.sample([SampleRequest(prefix, 1, 0)], params)[0]
    assert c.finish_reason == "stop" and stop in c.text
    assert c.token_ids == free.token_ids[: len(c.token_ids)]
    assert stop not in smollm.tokenizer.decode(c.token_ids[:-1], skip_special_tokens=True)


def _direct_probs(model, ctx, resp) -> torch.Tensor:
    with torch.no_grad():
        logits = model.model(torch.tensor([list(ctx) + list(resp)])).logits[0]
    return torch.softmax(logits[len(ctx) - 1 : -1].double(), dim=-1)


def test_scoring_equals_a_forward_softmax(smollm):
    ctx = smollm.encode_chat(HELLO)
    resp = smollm.encode("Hello! How can I help you today?")
    chunks = list(smollm.logprob_chunks(ctx, resp, chunk_size=4))
    assert [c.shape[0] for c in chunks] == [4, 4, len(resp) - 8]
    probs = torch.cat(chunks).exp()
    ref = _direct_probs(smollm, ctx, resp).float()
    torch.testing.assert_close(probs, ref, atol=1e-5, rtol=0)


def test_score_path_features_match_the_numpy_reference(smollm):
    scoring = pytest.importorskip("distillscope.scoring")
    student_ctx = smollm.encode_chat(HELLO)
    teacher_ctx = smollm.encode_chat(
        [{"role": "system", "content": "You are a pirate."}, *HELLO]
    )  # a self-teacher: same model, another context
    resp = smollm.encode("Hello there! How are you?")
    scores = scoring.score_path(smollm, student_ctx, smollm, teacher_ctx, resp, chunk_size=3)
    p = _direct_probs(smollm, student_ctx, resp).numpy()
    q = _direct_probs(smollm, teacher_ctx, resp).numpy()
    want = {
        "kl": gradients.kl(p, q),
        "js": gradients.js(p, q),
        "l2": gradients.l2(p, q),
        "prob_cos": gradients.prob_cosine(p, q),
        "ent_student": gradients.entropy(p),
        "ent_teacher": gradients.entropy(q),
        "entropy_gap": gradients.entropy_gap(p, q),
        "overlap_ratio": gradients.overlap_ratio(p, q, 16),
        "overlap_adv": gradients.overlap_token_advantage(p, q, 16),
    }
    for name, ref in want.items():
        np.testing.assert_allclose(scores.features[name], ref, atol=2e-5, rtol=0, err_msg=name)
    assert float(np.max(scores.features["kl"])) > 1e-3  # the two contexts do differ
    taken = p[np.arange(len(resp)), resp]  # float32 logits: compare probabilities
    np.testing.assert_allclose(np.exp(scores.logp_student_taken_T), taken, atol=1e-5, rtol=0)


def test_cached_weights_reproduce_the_gguf_logits(smollm):
    """The safetensors cache equals a fresh dequantization of the GGUF (this reloads the GGUF:
    ~30-40 s on CPU, the cost the cache saves on every other load)."""
    from distillscope.models.embedded import load_gguf

    fresh, _ = load_gguf()
    probe = torch.tensor([smollm.encode_chat(HELLO)])
    with torch.no_grad():
        assert torch.equal(fresh(probe).logits, smollm.model(probe).logits)


def test_text_side_without_weights_matches_the_loaded_model(smollm):
    """`load_hf_text` (what a Ray driver loads) agrees with the full model on everything the
    driver asks of it, and loads no weights."""
    from distillscope.config import ModelSpec
    from distillscope.models.hf import HFText, load_hf_text

    spec = ModelSpec(model="embedded:smollm2-135m", device="cpu", dtype="float32")
    text = load_hf_text(spec)
    assert isinstance(text, HFText) and not hasattr(text, "model")
    assert text.name == smollm.name
    assert text.vocab_size == smollm.vocab_size
    assert text.eos_token_ids == smollm.eos_token_ids
    assert text.max_context == smollm.max_context
    assert text.tokenizer_fingerprint() == smollm.tokenizer_fingerprint()
    assert text.encode_chat(YES_NO) == smollm.encode_chat(YES_NO)
    ids = smollm.encode("The answer is yes.")
    assert text.decode(ids) == smollm.decode(ids) == "The answer is yes."


def test_ray_driver_proxy_reads_text_without_loading_weights(smollm, monkeypatch):
    """The driver's proxy answers tokenizer questions from `load_hf_text`; the weights are
    loaded only when something on the driver scores."""
    from distillscope import distributed as D
    from distillscope.config import ModelSpec

    loads = []
    monkeypatch.setattr(D, "load_model", lambda spec: loads.append(spec) or smollm)
    spec = ModelSpec(model="embedded:smollm2-135m", device="cpu", dtype="float32")
    proxy = D.RayModel(spec, pool=object())  # type: ignore[arg-type]
    assert proxy.encode_chat(HELLO) == smollm.encode_chat(HELLO)
    assert (proxy.vocab_size, proxy.eos_token_ids) == (smollm.vocab_size, smollm.eos_token_ids)
    assert proxy.tokenizer_fingerprint() == smollm.tokenizer_fingerprint()
    assert getattr(proxy, "exact_child_success", None) is None  # the pipeline's toy probe
    assert loads == []
    ctx, resp = smollm.encode_chat(HELLO), smollm.encode("Hi!")
    chunk = next(iter(proxy.logprob_chunks(ctx, resp)))
    assert len(loads) == 1 and chunk.shape == (len(resp), smollm.vocab_size)
