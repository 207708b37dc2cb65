"""What batching more groups per `sample()` call would give the quickstart (CPU, embedded model).

phase1 calls `HFModel.sample` once per question for the initial rollouts (one group of G = 32)
and, per targeted unit, once per distinct remaining budget (`_sample_rows` groups requests by
max_new_tokens), so the quickstart's targeted calls hold 1-3 groups of ~20 samples. This
measures, in one process and interleaved (best of `--repeats`), the same samples drawn

* initial   per question (Q calls of 1 x 32)            vs  all Q questions in one call
* targeted  one call per remaining budget (as phase1)   vs  the unit's groups in one call
            with per-request budgets (`sample(..., budgets=)`: the same samples)

and the batched calls with `matmul_dtype: bfloat16` (the quickstart preset's; the float32 rows
are the same model without it). Prefixes are the quickstart's real prompts; targeted prefixes append
random tokens (depths 0-24) as forced path prefixes.

    .venv/bin/python benchmarks/batching.py --threads 1 --questions 4
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

import torch

from distillscope.presets import quickstart_config
from distillscope.runtime import load_runtime
from distillscope.store import RunStore
from distillscope.types import SampleRequest, SamplingParams

MAX_NEW = 32


def timed(fn) -> tuple[float, int]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, sum(len(c.token_ids) for g in out for c in g)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--questions", type=int, default=4)
    ap.add_argument("--groups", type=int, default=8, help="groups of a targeted unit")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-bf16", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rt = load_runtime(quickstart_config(), RunStore(tempfile.mkdtemp()))
    m = rt.student
    qs = rt.questions[: args.questions]
    hot = SamplingParams(1.0, 1.0, MAX_NEW, ())
    init = [SampleRequest(tuple(rt.student_ctx[q.qid]), 32, 1000 + i) for i, q in enumerate(qs)]
    rnd = random.Random(0)
    ctx = list(rt.student_ctx[qs[0].qid])
    depths = sorted(rnd.randrange(0, 25) for _ in range(args.groups))
    unit = [(SampleRequest(tuple(ctx + [rnd.randrange(1000, 20000) for _ in range(d + 1)]), 20,
                           50 + g), MAX_NEW - d - 1) for g, d in enumerate(depths)]

    def per_budget():
        out = []
        for b in sorted({b for _, b in unit}):
            out += m.sample([r for r, bb in unit if bb == b], SamplingParams(1.0, 1.0, b, ()))
        return out

    cases = {
        "initial: one call per question": lambda: [m.sample([r], hot)[0] for r in init],
        "initial: all questions in one call": lambda: m.sample(init, hot),
        "targeted: one call per budget": per_budget,
        "targeted: the unit in one call": lambda: m.sample(
            [r for r, _ in unit], SamplingParams(1.0, 1.0, max(b for _, b in unit), ()),
            budgets=[b for _, b in unit]),
    }
    m.sample(init[:1], SamplingParams(1.0, 1.0, 2, ()))  # warm-up (builds the runner)
    best: dict[str, tuple[float, int]] = {}
    variants = [("float32", None)] + ([] if args.no_bf16 else [("bfloat16", torch.bfloat16)])
    for _ in range(args.repeats):
        for dname, dt in variants:
            m.matmul_dtype, m._fast = dt, None  # rebuild the runner in this dtype
            m.sample(init[:1], SamplingParams(1.0, 1.0, 2, ()))
            for name, fn in cases.items():
                if dt is not None and "one call per" in name:
                    continue
                key = f"{name} [{dname}]"
                sec, tok = timed(fn)
                if key not in best or sec < best[key][0]:
                    best[key] = (sec, tok)
                print(f"  {key}: {sec:.2f} s, {tok} tokens", flush=True)
    m.matmul_dtype, m._fast = torch.bfloat16, None
    print(f"\n{len(qs)} questions x 32 initial; targeted unit of {args.groups} groups x 20, "
          f"depths {depths}; best of {args.repeats}")
    print("| case | s | tokens | tok/s | x per-call |\n|---|---:|---:|---:|---:|")
    for key, (sec, tok) in best.items():
        base_key = ("initial: one call per question" if key.startswith("initial")
                    else "targeted: one call per budget") + " [float32]"
        base = best[base_key]
        ratio = (tok / sec) / (base[1] / base[0])
        print(f"| {key} | {sec:.2f} | {tok} | {tok / sec:.0f} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
