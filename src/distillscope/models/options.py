"""The options of each model backend (`ModelSpec.options`): their names and what each does.

Light on purpose (no torch, vLLM or HTTP), so that `config.py` checks a configuration's
option names when it is read: a misspelt teacher option, or one left over from another
backend after `--set student.backend=vllm`, is refused before a run directory is created,
not after the student's rollouts when the teacher is loaded. Each backend's loader checks
its options' values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

HF: dict[str, str] = {
    "cache_dir": "folder for the embedded model's converted weights (~/.cache/distillscope)",
    "max_context": "longest context + response in tokens (default: the model config's)",
    "max_batch_samples": "most samples decoded together (default: 256 on CPU, by memory on CUDA)",
    "cascade": "shared-prefix attention (default true); false = a prefix KV copy per sample",
    "cuda_graphs": "capture the decode step as CUDA graphs (default true on CUDA)",
    "runner": "auto | fast | generic (fast = our Llama-family decode loop)",
    "matmul_dtype": "dtype of the weight matrix products, in sampling and in scoring alike "
    "(default: the model's; bfloat16 = weight copies, norms/attention/softmax in the model's "
    "dtype; needs the fast runner)",
    "attention": "decode attention of the fast runner: torch (default) | triton (the fused "
    "cascade kernel of models/triton_attention.py; needs triton)",
    "attn_implementation": "transformers attention of scoring and generic-runner forwards (sdpa)",
}

VLLM: dict[str, str] = {
    "cache_dir": "folder for the embedded model's converted weights (~/.cache/distillscope)",
    "max_context": "longest context + response in tokens (vLLM's max_model_len; default: the "
    "model config's)",
    "gpu_memory_utilization": "CUDA: share of GPU memory vLLM reserves (default 0.85); not "
    "used on CPU",
    "kv_cache_gib": "KV cache size in GiB (default on CPU: 4 full-context sequences, at most "
    "4 GiB and a quarter of the free memory; on CUDA: by gpu_memory_utilization)",
    "tensor_parallel_size": "GPUs (or CPU ranks) per engine (default 1)",
    "enforce_eager": "no torch.compile / CUDA graphs (default: true on CPU, false on CUDA)",
    "max_num_batched_tokens": "tokens per engine step (default on CPU: max_context, with "
    "chunked prefill off)",
    "max_num_seqs": "most sequences decoded together (vLLM's default)",
    "omp_threads_bind": "CPU: VLLM_CPU_OMP_THREADS_BIND for the engine, e.g. '0-1' or "
    "'nobind' (default: the environment's, else every core this process may use)",
}

OPENAI: dict[str, str] = {
    "base_url": "server root, e.g. http://127.0.0.1:8000 (required)",
    "served_model": "the model name the server knows (default: the spec's model)",
    "topk": "prompt_logprobs k (default 20, vLLM's default --max-logprobs)",
    "timeout": "seconds per HTTP request (default 120)",
    "retries": "retries of a failed request (connection errors, 429, 5xx; default 3)",
    "backoff": "first retry delay in seconds, doubled each retry (default 0.5)",
    "self_test": "check tokenizer and determinism at start-up (default true)",
    "replica_tol": "largest |Δ log-probability| two identical requests may differ by (1e-4)",
    "cache_dir": "hf option for the local tokenizer of the embedded model",
}

TOY: dict[str, str] = {
    # the world (models/toy_world.py WorldParams)
    "seed": "the world's seed (integer)",
    "n_states": "hidden states, 1-12",
    "vocab": "content tokens, 2-26 (EOS comes on top)",
    "synonyms": "synonym pairs among the content tokens (at most vocab / 2)",
    "commit": "chance a transition commits to a won or lost state, in [0, 1]",
    "max_len": "longest response in tokens (>= 2)",
    # the model on it (models/toy.py)
    "tilt": "none (the student) | helpful | harmful | irrelevant: how a teacher's logits lean",
    "strength": "how far they lean (a finite number, default 1.0)",
    "demo_strength": "a context with a demonstration acts as a helpful teacher this strong "
    "(default 1.0)",
    "form": "logodds (default) | value: what the tilt adds, the clipped log-odds of the "
    "success probability or the probability itself",
    "noise": "N(0, noise) added to every response token's logit, per node (>= 0)",
    "max_context": "longest context + response in tokens (>= 2)",
}

OPTIONS_BY_BACKEND: dict[str, dict[str, str]] = {"hf": HF, "vllm": VLLM, "openai": OPENAI,
                                                 "toy": TOY}

# Options that change how a model runs (where, how fast, with which kernels), not the
# distribution it gives: two specs that differ only in these are the same model.
# (matmul_dtype and topk do change the numbers; served_model names the model.)
RUNTIME_OPTIONS: dict[str, frozenset[str]] = {
    "hf": frozenset({"cache_dir", "max_context", "max_batch_samples", "cascade", "cuda_graphs",
                     "runner", "attention", "attn_implementation"}),
    "vllm": frozenset(VLLM),
    "openai": frozenset({"base_url", "timeout", "retries", "backoff", "self_test",
                         "replica_tol", "cache_dir"}),
    "toy": frozenset(),
}


def unknown_options(backend: str, options: Mapping[str, Any]) -> str | None:
    """None when every name in `options` is an option of `backend`; else the message, which
    names the unknown ones, lists the allowed ones and says when they belong to another
    backend (options left over from a change of backend)."""
    allowed = OPTIONS_BY_BACKEND[backend]
    unknown = sorted(set(options) - set(allowed))
    if not unknown:
        return None
    msg = f"unknown {backend} backend option(s) {unknown}; allowed: {', '.join(sorted(allowed))}"
    others = [b for b, names in OPTIONS_BY_BACKEND.items()
              if b != backend and set(unknown) <= set(names)]
    if others:
        msg += (f" ({', '.join(unknown)}: an option of the {' and '.join(others)} backend; "
                "after a change of backend, give its options anew, e.g. options={})")
    return msg
