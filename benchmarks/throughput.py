"""Rollout throughput: the hf backend's shared-prefix sampler against `model.generate`.

Same run, same model, same shapes: G groups x n samples behind a random L-token prefix, S new
tokens each, EOS suppressed on both sides so every sample has exactly S tokens. Generated
tokens per second (wall clock, prefill included, graph capture included) for

* ours          `HFModel.sample`, cascade attention (prefix KV once per group)
* ours-copies   `HFModel.sample`, one prefix KV copy per sample (`cascade: false`)
* generate      `model.generate(do_sample=True, num_return_sequences=n, top_k=0)`
* vllm          the vllm backend's engine (`load_vllm_model`: on CPU eager float32, no chunked
                prefill), one request per group with `SamplingParams(n, seed, ignore_eos)`;
                embedded SmolLM2 only. `--vllm-bind all,auto` times one engine per OpenMP
                binding (all = every core, this backend's default; auto = vLLM's own, which
                leaves one core of two idle), each as its own method `vllm[BIND]`, and prints
                each engine's load time

and ours as a fraction of a floor: per decode step the weights are read once and the KV
cache once (each group's prefix once, each sample's suffix), FLOPs = 2 x params x batch +
attention; the floor is max(bytes / bandwidth, FLOPs / matmul rate) summed over steps plus the
prefill's FLOPs, with both ceilings measured in the same run (a large device-to-device copy
counting bytes read + written; a large matrix product in the model's dtype).

    python benchmarks/throughput.py                                   # CPU, embedded SmolLM2
    python benchmarks/throughput.py --device cuda --arch qwen3-0.6b --arch qwen3-1.7b
    python benchmarks/throughput.py --device cuda --check             # correctness first
    .venv-vllm/bin/python benchmarks/throughput.py --methods ours,vllm,generate --vllm-bind all,auto

`--arch qwen3-*` builds a random-initialised Qwen3 from the hand-written configs below (no hub
access). `--check` runs correctness checks on the device before timing (greedy equals
`generate`, batched equals alone, CUDA graphs equal eager, cascade equals copies, scoring
equals a forward, a 30k-token response scores in chunks) and exits non-zero on a failure.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from distillscope.models.hf import HFModel
from distillscope.types import SampleRequest, SamplingParams

QWEN3 = {  # published Qwen3 configurations (config.json of the hub checkpoints)
    "qwen3-0.6b": dict(hidden_size=1024, intermediate_size=3072),
    "qwen3-1.7b": dict(hidden_size=2048, intermediate_size=6144),
}
QWEN3_COMMON = dict(
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    vocab_size=151936,
    tie_word_embeddings=True,
    max_position_embeddings=40960,
    rms_norm_eps=1e-6,
    eos_token_id=None,
    bos_token_id=None,
    pad_token_id=None,
)


@dataclass(frozen=True)
class Shape:
    groups: int
    n: int
    prefix: int
    new: int

    @classmethod
    def parse(cls, text: str) -> Shape:
        """'8x100:256:256' = 8 groups x 100 samples, 256-token prefix, 256 new tokens."""
        gn, prefix, new = text.split(":")
        g, n = gn.split("x")
        return cls(int(g), int(n), int(prefix), int(new))

    def __str__(self) -> str:
        return f"{self.groups}x{self.n} L={self.prefix} S={self.new}"


DEFAULT_SHAPES = {
    "cpu": ["2x8:64:32", "1x8:512:32"],
    "cuda": ["8x100:256:256", "1x100:4096:256"],
}


class _NullTokenizer:
    """Random-weight models have no tokenizer; the sampler only decodes for Completion.text."""

    eos_token_id = None

    def decode(self, ids: Any, skip_special_tokens: bool = False) -> str:
        return ""


# --- models ----------------------------------------------------------------------------------


def build(arch: str, device: torch.device) -> tuple[Any, Any]:
    if arch == "smollm2":
        from distillscope.config import ModelSpec
        from distillscope.models.hf import load_hf_model

        spec = ModelSpec(device=str(device), dtype="auto")
        hf = load_hf_model(spec)
        return hf.model, hf.tokenizer
    from transformers import Qwen3Config, Qwen3ForCausalLM

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    kw = {**QWEN3_COMMON, **QWEN3[arch]}
    try:
        cfg = Qwen3Config(rope_parameters={"rope_type": "default", "rope_theta": 1e6}, **kw)
    except TypeError:
        cfg = Qwen3Config(rope_theta=1e6, **kw)
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen3ForCausalLM(cfg)
    finally:
        torch.set_default_dtype(prev)
    model.generation_config.eos_token_id = None
    return model.eval(), _NullTokenizer()


def param_count(model: Any) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


# --- ceilings and floor ----------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, reps: int, warmup=None, label: str = "") -> float:
    """Best seconds of `reps` calls after one warm-up call (`warmup`, default `fn`): steady
    state. generate's first full-length call is often ~2x slower than its next (the caching
    allocator grows with its concatenated KV cache), so use --repeats 2 or more."""
    (warmup or fn)()
    sync(device)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    if label and reps > 1:
        print(f"    {label}: " + ", ".join(f"{x:.2f}s" for x in times), flush=True)
    return min(times)


def ceilings(device: torch.device, dtype: torch.dtype) -> tuple[float, float]:
    """(bytes/s of a large copy, read + write counted; FLOP/s of a large matmul)."""
    numel = (1 << 30) if device.type == "cuda" else (1 << 26)
    src = torch.randn(numel // 4, device=device).to(torch.float32)
    dst = torch.empty_like(src)
    t_copy = timed(lambda: dst.copy_(src), device, 10)
    bw = 2 * src.numel() * src.element_size() / t_copy
    m = 8192 if device.type == "cuda" else 1024
    a = torch.randn(m, m, device=device, dtype=dtype)
    b = torch.randn(m, m, device=device, dtype=dtype)
    t_mm = timed(lambda: a @ b, device, 10)
    return bw, 2 * m**3 / t_mm


def floor_seconds(model: Any, shape: Shape, bw: float, flops: float) -> float:
    cfg = model.config
    P = param_count(model)
    w_bytes = P * next(model.parameters()).element_size()
    el = next(model.parameters()).element_size()
    layers, kvh = cfg.num_hidden_layers, cfg.num_key_value_heads
    H = cfg.num_attention_heads
    D = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    kv_tok = layers * 2 * kvh * D * el
    G, B, L, S = shape.groups, shape.groups * shape.n, shape.prefix, shape.new
    # prefill: every group once
    pre_flops = G * (2 * P * L + 2 * layers * H * D * L * L)
    total = max(pre_flops / flops, (w_bytes + G * L * kv_tok) / bw)
    for t in range(S - 1):  # decode steps; the first token comes from the prefill
        byts = w_bytes + G * L * kv_tok + B * (t + 1) * kv_tok
        fl = 2 * P * B + 4 * B * layers * H * D * (L + t + 1)
        total += max(byts / bw, fl / flops)
    return total


# --- runs ------------------------------------------------------------------------------------


def prefixes(shape: Shape, vocab: int, seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(100, min(vocab, 30000), (shape.groups, shape.prefix), generator=gen)
    return ids.tolist()


ATTENTION = "torch"  # --triton: the fused cascade kernel (models/triton_attention.py)


def run_ours(
    model, tok, shape: Shape, cascade: bool, graphs: bool, reps: int = 1
) -> tuple[float, dict]:
    hf = HFModel(model, tok, eos_token_ids=(), cascade=cascade, cuda_graphs=graphs,
                 attention=ATTENTION)
    reqs = [SampleRequest(tuple(p), shape.n, seed=i) for i, p in enumerate(prefixes(shape, 30000))]
    params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=shape.new)
    device = torch.device(hf.device)

    def go():
        out = hf.sample(reqs, params)
        assert sum(len(c.token_ids) for g in out for c in g) == shape.groups * shape.n * shape.new

    secs = timed(go, device, reps, label="ours" if cascade else "ours-copies")
    return shape.groups * shape.n * shape.new / secs, dict(hf.last_stats)


def run_generate(model, shape: Shape, reps: int = 1) -> float:
    device = next(model.parameters()).device
    ids = torch.tensor(prefixes(shape, 30000), device=device)
    S = shape.new

    def go():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=True,
            num_return_sequences=shape.n,
            max_new_tokens=S,
            min_new_tokens=S,
            top_k=0,
            top_p=1.0,
            temperature=1.0,
            eos_token_id=None,
            pad_token_id=0,
        )
        assert out.shape == (shape.groups * shape.n, shape.prefix + S), out.shape

    def warmup():  # short: same batch and prefill, 2 new tokens
        model.generate(
            ids, do_sample=True, num_return_sequences=shape.n, max_new_tokens=2, pad_token_id=0
        )

    with torch.inference_mode():
        secs = timed(go, device, reps, warmup=warmup, label="generate")
    return shape.groups * shape.n * S / secs


def load_vllm(bind: str) -> tuple[Any, float]:
    """The vllm backend's engine on the embedded model with this OpenMP binding, and its load
    seconds (engine start, weights, KV cache; the converted checkpoint already cached)."""
    from distillscope.config import ModelSpec
    from distillscope.models.embedded import resolve_embedded
    from distillscope.models.vllm import load_vllm_model

    resolve_embedded("embedded:smollm2-135m")  # the one-time conversion is not load time
    opts = {} if bind == "all" else {"omp_threads_bind": bind}
    t = time.perf_counter()
    model = load_vllm_model(ModelSpec(backend="vllm", options=opts))
    return model, time.perf_counter() - t


def run_vllm(model: Any, shape: Shape, reps: int = 1) -> float:
    vllm = model._vllm
    prompts = [{"prompt_token_ids": p} for p in prefixes(shape, 30000)]
    sampling = [
        vllm.SamplingParams(n=shape.n, seed=i, temperature=1.0, top_p=1.0,
                            max_tokens=shape.new, ignore_eos=True)
        for i in range(shape.groups)
    ]

    def go():
        outs = model.llm.generate(prompts, sampling_params=sampling, use_tqdm=False)
        got = sum(len(o.token_ids) for r in outs for o in r.outputs)
        assert got == shape.groups * shape.n * shape.new, got

    # one warm-up call; prefix caching off between reps would be fairer, but the prompts are
    # the same in every method's reps (ours re-prefills; vLLM may reuse cached prefix blocks)
    return shape.groups * shape.n * shape.new / timed(go, torch.device("cpu"), reps,
                                                       label=f"vllm[{model._bind}]")


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# --- correctness checks on the device --------------------------------------------------------


def check(device: torch.device) -> bool:
    """Print PASS/FAIL lines; True when all pass."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    results: list[tuple[str, bool, str]] = []

    def record(name: str, ok: bool, detail: str = "") -> None:
        results.append((name, ok, detail))
        print(f"{'PASS' if ok else 'FAIL'}  {name}  {detail}", flush=True)

    torch.manual_seed(0)
    cfg = Qwen3Config(
        vocab_size=512,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=1024,
        initializer_range=0.2,
        eos_token_id=None,
    )
    with torch.device(device):
        tiny = Qwen3ForCausalLM(cfg).eval()
    tok = _NullTokenizer()
    prefix = tuple(range(3, 40))
    S = 40
    with torch.inference_mode():
        gen = tiny.generate(
            torch.tensor([prefix], device=device),
            do_sample=False,
            max_new_tokens=S,
            min_new_tokens=S,
            eos_token_id=None,
            pad_token_id=0,
        )[0, len(prefix) :].tolist()
    greedy = SamplingParams(temperature=0.0, max_new_tokens=S)
    for label, kw in [
        ("cascade+graphs", {}),
        ("copies+graphs", {"cascade": False}),
        ("cascade eager", {"cuda_graphs": False}),
    ]:
        hf = HFModel(tiny, tok, eos_token_ids=(), **kw)
        out = hf.sample([SampleRequest(prefix, 3, 0)], greedy)[0]
        ok = all(list(c.token_ids) == gen for c in out)
        record(f"fp32 greedy == generate ({label})", ok, f"graphs={hf.last_stats.get('graphs')}")
    hf = HFModel(tiny, tok, eos_token_ids=())
    reqs = [SampleRequest(tuple(range(5, 5 + k)), 2 + k % 3, seed=k) for k in (3, 17, 60)]
    hot = SamplingParams(temperature=1.0, max_new_tokens=S)
    together = [[c.token_ids for c in g] for g in hf.sample(reqs, hot)]
    alone = [[c.token_ids for c in hf.sample([r], hot)[0]] for r in reqs]
    record("fp32 sampled groups: batched == alone", together == alone)
    eager = HFModel(tiny, tok, eos_token_ids=(), cuda_graphs=False)
    record(
        "fp32 sampled: graphs == eager",
        together == [[c.token_ids for c in g] for g in eager.sample(reqs, hot)],
    )
    ctx, resp = list(range(1, 50)), list(range(50, 300))
    chunks = torch.cat(list(hf.logprob_chunks(ctx, resp, chunk_size=64)))
    with torch.inference_mode():
        ref = torch.log_softmax(tiny(torch.tensor([ctx + resp], device=device)).logits.float(), -1)
    err = (chunks - ref[0, len(ctx) - 1 : -1]).abs().max().item()
    record("fp32 logprob_chunks == forward log_softmax", err < 1e-4, f"max abs diff {err:.2e}")
    del tiny, hf, eager
    free(device)

    if device.type == "cuda":
        model, tok = build("qwen3-0.6b", device)
        reqs = [SampleRequest(tuple(range(100 + g, 400 + g)), 16, seed=g) for g in range(4)]
        hot = SamplingParams(temperature=1.0, max_new_tokens=64)
        outs = {}
        for label, kw in [
            ("graphs", {}),
            ("eager", {"cuda_graphs": False}),
            ("copies", {"cascade": False}),
        ]:
            hf = HFModel(model, tok, eos_token_ids=(), **kw)
            outs[label] = [[c.token_ids for c in g] for g in hf.sample(reqs, hot)]
        same = outs["graphs"] == outs["eager"]
        record("bf16 qwen3-0.6b sampled: graphs == eager (identical kernels)", same)
        agree = sum(
            a == b
            for ga, gb in zip(outs["graphs"], outs["copies"], strict=True)
            for ra, rb in zip(ga, gb, strict=True)
            for a, b in zip(ra, rb, strict=True)
        ) / (4 * 16 * 64)
        # Information, not a check: a random-init model's next-token distribution is nearly
        # uniform over 152k tokens, so bf16 rounding differences between two correct
        # attention layouts move inverse-CDF draws often (both layouts match generate in fp32).
        print(f"INFO  bf16 qwen3-0.6b sampled: cascade vs copies token agreement {agree:.3f}")
        hf = HFModel(model, tok, eos_token_ids=(), max_context=40960)
        torch.cuda.reset_peak_memory_stats(device)
        T = 30000
        t0 = time.perf_counter()
        n_pos, finite = 0, True
        for c in hf.logprob_chunks(list(range(1, 200)), list(range(1000, 1000 + T)), 2048):
            n_pos += c.shape[0]
            finite &= bool(torch.isfinite(c).all())
        sync(device)
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        record(
            "bf16 qwen3-0.6b: 30k-token response scored in chunks",
            n_pos == T and finite,
            f"{time.perf_counter() - t0:.2f}s, peak {peak:.1f} GiB",
        )
        del model, hf
        free(device)
    return all(ok for _, ok, _ in results)


def profile(model, tok, shape: Shape) -> None:
    """Kernel time of ours (eager, no graphs) on a short run of `shape`: where the step goes."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    short = Shape(shape.groups, shape.n, shape.prefix, 33)
    run_ours(model, tok, short, True, False)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with prof(activities=acts) as p:
        run_ours(model, tok, short, True, False)
    key = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
    print(p.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=60))


# --- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--arch", action="append", help="smollm2 (default), qwen3-0.6b, qwen3-1.7b")
    ap.add_argument("--shape", action="append", help="GxN:L:S, e.g. 8x100:256:256")
    ap.add_argument("--methods", default="ours,ours-copies,generate")
    ap.add_argument("--check", action="store_true", help="run correctness checks first")
    ap.add_argument("--json", help="write the rows to this file")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (CPU)")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs (best reported)")
    ap.add_argument("--profile", action="store_true", help="top kernels of one eager run")
    ap.add_argument("--vllm-bind", default="all",
                    help="method vllm: comma-separated OpenMP bindings, one engine each: all "
                    "(every core, the backend's default), auto (vLLM's), or a core list")
    ap.add_argument("--triton", action="store_true", help="ours with the Triton attention kernel")
    args = ap.parse_args(argv)
    global ATTENTION
    ATTENTION = "triton" if args.triton else "torch"

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    archs = args.arch or ["smollm2"]
    shapes = [Shape.parse(s) for s in (args.shape or DEFAULT_SHAPES[device.type])]
    methods = args.methods.split(",")
    if "vllm" in methods:
        binds = args.vllm_bind.split(",")
        at = methods.index("vllm")
        methods[at : at + 1] = [f"vllm[{b}]" for b in binds]
    print(f"torch {torch.__version__}, device {device}", end="")
    if device.type == "cuda":
        print(f" ({torch.cuda.get_device_name(device)})", end="")
    print(f", {platform.processor() or platform.machine()}, threads {torch.get_num_threads()}")
    failed = args.check and not check(device)
    if failed:
        print("CORRECTNESS CHECKS FAILED (timings below are reported anyway)")

    rows: list[dict[str, Any]] = []
    for arch in archs:
        model, tok = build(arch, device)
        dtype = next(model.parameters()).dtype
        bw, peak = ceilings(device, dtype)
        print(
            f"\n{arch}: {param_count(model) / 1e6:.0f}M params, {dtype}; ceilings: copy "
            f"{bw / 1e9:.0f} GB/s, matmul {peak / 1e12:.3g} TFLOP/s",
            flush=True,
        )
        if args.profile:
            profile(model, tok, shapes[0])
        engines: dict[str, Any] = {}
        if arch == "smollm2":
            for method in methods:
                if method.startswith("vllm["):
                    bind = method[5:-1]
                    engine, secs = load_vllm(bind)
                    engine._bind = bind
                    engines[method] = engine
                    print(f"  vllm engine, binding {bind}: loaded in {secs:.1f}s", flush=True)
                    rows.append(dict(arch=arch, shape="load", method=method, tok_s=float("nan"),
                                     vs_generate=float("nan"), floor_tok_s=float("nan"),
                                     of_floor=float("nan"), load_s=secs))
        for shape in shapes:
            floor = shape.groups * shape.n * shape.new / floor_seconds(model, shape, bw, peak)
            res: dict[str, float] = {}
            for method in methods:
                try:
                    if method.startswith("vllm["):
                        if method not in engines:
                            print(f"  {method}: embedded smollm2 only, skipped")
                            continue
                        res[method] = run_vllm(engines[method], shape, args.repeats)
                        stats = {}
                    elif method == "generate":
                        res[method] = run_generate(model, shape, args.repeats)
                        stats: dict = {}
                    else:
                        cascade = method == "ours"
                        res[method], stats = run_ours(
                            model, tok, shape, cascade, True, args.repeats
                        )
                except torch.OutOfMemoryError as err:
                    print(f"  {shape} {method}: out of memory ({str(err)[:80]})")
                    res[method] = float("nan")
                    stats = {}
                free(device)
                print(f"  {shape} {method}: {res[method]:.0f} tok/s {stats}", flush=True)
            base = res.get("generate", float("nan"))
            for method, tps in res.items():
                rows.append(
                    dict(
                        arch=arch,
                        shape=str(shape),
                        method=method,
                        tok_s=tps,
                        vs_generate=tps / base,
                        floor_tok_s=floor,
                        of_floor=tps / floor,
                    )
                )
        for engine in engines.values():
            engine.close()
        del model, engines
        free(device)

    print("\n| arch | shape | method | tok/s | x generate | floor tok/s | of floor |")
    print("|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        if r["shape"] == "load":
            print(f"| {r['arch']} | engine load | {r['method']} | {r['load_s']:.1f} s | | | |")
            continue
        print(
            f"| {r['arch']} | {r['shape']} | {r['method']} | {r['tok_s']:,.0f} | "
            f"{r['vs_generate']:.2f} | {r['floor_tok_s']:,.0f} | {r['of_floor']:.1%} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
