"""Every GPU timing of issue #19 in one short run (a lent GPU session runs only this).

1. correctness first: the Triton cascade kernel equals the torch reference on the device
   (bf16 and fp32), and `attention=triton` greedy-samples what `attention=torch` does (fp32);
2. throughput (benchmarks/throughput.py) of qwen3-0.6b at 8x100:256:256 and 1x100:4096:256:
   ours (torch attention), ours with the Triton kernel, generate; x generate and % of floor
   (targets: 10x generate, 40% of the floor at the first shape);
3. the paper-scale dry run (benchmarks/paper_scale.py --scale 1), targeted phase capped at
   `--units` units and extrapolated, with the projected suite cost.

    python benchmarks/gpu_check.py --out $OUT            # ~6-8 minutes on an H100/H200
    python benchmarks/gpu_check.py --device cpu --smoke  # the CPU path (tests use it)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def kernel_check(device: torch.device, dtype: torch.dtype) -> dict:
    from distillscope.models import triton_attention as ta

    g = torch.Generator().manual_seed(0)
    Gp, K, n, R, D, L, S = 4, 8, 100, 2, 128, 256, 256
    if device.type == "cpu":  # the interpreter is slow: small shapes
        Gp, K, n, R, D, L, S = 2, 2, 3, 2, 16, 24, 16

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    q = rnd(Gp, K, n, R, D) * 0.1
    args = (q, rnd(Gp * K, L, D), rnd(Gp * K, L, D),
            torch.tensor([L] + [L // 2] * (Gp - 1), device=device),
            rnd(Gp, K, n, S, D), rnd(Gp, K, n, S, D), torch.tensor([S // 2 + 1], device=device))
    ref = ta.cascade_attention_reference(*args).float()
    got = ta.cascade_attention(*args).float()
    res = {"max_abs_diff": float((got - ref).abs().max()), "dtype": str(dtype)}
    if device.type == "cuda":
        fns = (("torch", ta.cascade_attention_reference), ("triton", ta.cascade_attention))
        for name, fn in fns:
            fn(*args)
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(20):
                fn(*args)
            torch.cuda.synchronize()
            res[f"us_{name}"] = (time.perf_counter() - t) / 20 * 1e6
    return res


def sampler_check(device: torch.device) -> dict:
    import throughput as tp
    from distillscope.models.hf import HFModel
    from distillscope.types import SampleRequest, SamplingParams

    if device.type == "cuda":
        model, tok = tp.build("qwen3-0.6b", device)
        model = model.float()
    else:
        from transformers import Qwen3Config, Qwen3ForCausalLM

        torch.manual_seed(0)
        model = Qwen3ForCausalLM(Qwen3Config(
            vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, initializer_range=0.2,
            max_position_embeddings=128)).eval()
        tok = tp._NullTokenizer()
    greedy = SamplingParams(temperature=0.0, max_new_tokens=16)
    reqs = [SampleRequest(tuple(range(5, 40)), 3, 0), SampleRequest(tuple(range(9, 20)), 2, 1)]
    a = HFModel(model, tok, eos_token_ids=(), attention="torch").sample(reqs, greedy)
    b = HFModel(model, tok, eos_token_ids=(), attention="triton").sample(reqs, greedy)
    same = [[c.token_ids for c in g] for g in a] == [[c.token_ids for c in g] for g in b]
    return {"greedy_equal": same}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default=".")
    ap.add_argument("--units", type=int, default=3, help="targeted units timed at scale 1")
    ap.add_argument("--smoke", action="store_true", help="checks only, tiny shapes (CPU)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res: dict = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"}
    dtypes = [torch.float32] + ([torch.bfloat16] if device.type == "cuda" else [])
    res["kernel"] = [kernel_check(device, dt) for dt in dtypes]
    res["sampler"] = sampler_check(device)
    ok = all(k["max_abs_diff"] < (1e-4 if "float32" in k["dtype"] else 3e-2)
             for k in res["kernel"]) and res["sampler"]["greedy_equal"]
    res["ok"] = ok
    print(json.dumps(res, indent=1), flush=True)
    if not args.smoke and device.type == "cuda":
        import paper_scale
        import throughput

        for extra in ([], ["--triton"]):
            throughput.main(["--device", "cuda", "--arch", "qwen3-0.6b", "--shape",
                             "8x100:256:256", "--shape", "1x100:4096:256", "--methods",
                             "ours,generate", "--repeats", "2",
                             "--json", str(out / f"throughput{'-triton' if extra else ''}.json"),
                             *extra])
        paper_scale.main(["--device", "cuda", "--scale", "1", "--max-units", str(args.units),
                          "--json", str(out / "paper_scale.json")])
    (out / "gpu_check.json").write_text(json.dumps(res, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
