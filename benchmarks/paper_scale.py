"""A paper-scale dry run, priced: one question at the paper's budget, timed phase by phase.

The workload of one question, with the pipeline's own sampler (`HFModel.sample`), scorer
(`scoring.score_path`) and child selection (`budget.select_per_teacher`), in the order phase 1
and phase 2 run it:

    initial     G = 200 rollouts of the prompt (groups of 100)
    paths       2 correct + 2 incorrect rollouts (synthetic verifier)
    candidates  each path scored under the student and 8 teachers (own contexts: prompt + a
                demonstration), children chosen per teacher (top_k = top_r = 8, windows 50*2^i)
    targeted    every chosen child to N_min = 100 rollouts, batch_groups = 8 children per
                unit, one sample() call per distinct remaining budget (as phase1 calls it;
                `--one-call-per-unit` prices the recommended change); no cascade credit from
                earlier rollouts, so an upper bound on the fixed allocation's count
    phase 2     each path scored again per teacher (nodes and distributions)

The model is a random-initialised Qwen3-0.6B-shaped model (`--arch`; no hub access) with a
synthetic tokenizer (token ids as text) and a synthetic verifier (a hash of the response:
~40% correct). Its lm_head is rescaled so next-token distributions are peaked like a trained
model's (logit std `--logit-std`: a few tokens above tau) and given an EOS bias calibrated to
a per-step EOS rate of 1/`--mean-len`, so rollouts end at geometric lengths (median ~0.7 x
mean) capped at `--max-len` (4,096).

`--scale s` shrinks every budget (G, N_min, lengths, windows) by s and, below 0.2, the model
to a tiny one: `--scale 0.01` runs in seconds on a CPU (the test), `--scale 1` is the real
thing on a GPU. It prints wall time per phase, rollouts, generated and scored tokens, peak
memory, and the cost of the paper's suite (`--suite-questions` x `--suite-settings`, both
assumptions to edit: the suite's size is not in this repository) against ~72 A100-days.

    python benchmarks/paper_scale.py --scale 0.01                    # CPU smoke (seconds)
    python benchmarks/paper_scale.py --device cuda --scale 1 --json paper_scale.json
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from distillscope.budget import select_per_teacher  # noqa: E402
from distillscope.models.hf import HFModel  # noqa: E402
from distillscope.scoring import score_path  # noqa: E402
from distillscope.types import SampleRequest, SamplingParams  # noqa: E402
from throughput import QWEN3, QWEN3_COMMON  # noqa: E402

PAPER = dict(G=200, group=100, n_correct=2, n_incorrect=2, n_min=100, top_k=8, top_r=8,
             window_base=50, teachers=8, max_len=4096, prompt=256, demo=1024, batch_groups=8)
PAPER_A100_DAYS = 72.0
EOS = 0


class SyntheticTokenizer:
    """Token ids as text: all the sampler needs (decode) and nothing more."""

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return " ".join(str(int(i)) for i in ids if not (skip_special_tokens and i == EOS))


def reward(ids) -> float:
    """Synthetic verifier: a hash of the response, ~40% correct."""
    h = 0
    for t in ids:
        h = (h * 1_000_003 + int(t)) & 0xFFFF_FFFF
    return float((h >> 7) % 5 < 2)


def budgets(scale: float) -> dict[str, int]:
    b = dict(PAPER)
    for key in ("G", "group", "n_min"):
        b[key] = max(4, round(PAPER[key] * scale))
    for key, low in (("max_len", 48), ("prompt", 16), ("demo", 16), ("window_base", 4)):
        b[key] = max(low, round(PAPER[key] * scale))
    return b


def build_model(arch: str, scale: float, device, dtype, logit_std: float, mean_len: float,
                seed: int = 0):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    if scale < 0.2:  # a tiny model of the same family
        kw = dict(QWEN3_COMMON, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=2048)
    else:
        kw = dict(QWEN3_COMMON, **QWEN3[arch])
    kw.update(tie_word_embeddings=False, max_position_embeddings=8192 + 2 * PAPER["demo"])
    model = Qwen3ForCausalLM(Qwen3Config(**kw)).to(device=device, dtype=dtype).eval()
    head = model.lm_head
    probe = torch.randint(1, kw["vocab_size"], (1, 64), device=device)
    with torch.no_grad():
        logits = model(probe).logits.float()
        head.weight.mul_(logit_std / float(logits.std()))
        head.weight[EOS] = 0.0  # the EOS logit is its bias alone: a fixed per-step rate
        lse = float(torch.logsumexp(model(probe).logits.float(), -1).mean())
        bias = torch.zeros(kw["vocab_size"], device=device, dtype=dtype)
        bias[EOS] = lse - math.log(mean_len)
        head.bias = torch.nn.Parameter(bias, requires_grad=False)
    return model


def peak_memory(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)


def run(args) -> dict:
    device = torch.device(args.device)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    b = budgets(args.scale)
    mean_len = args.mean_len * args.scale if args.scale < 1 else args.mean_len
    model = build_model(args.arch, args.scale, device, dtype, args.logit_std, max(mean_len, 8))
    lm = HFModel(model, SyntheticTokenizer(), name="paper-scale", eos_token_ids=(EOS,),
                 max_context=b["max_len"] + b["prompt"] + 2 * b["demo"])
    V = model.config.vocab_size
    rng = np.random.default_rng(args.seed)
    prompt = [int(t) for t in rng.integers(1, V, b["prompt"])]
    teachers = [prompt[:1] + [int(t) for t in rng.integers(1, V, b["demo"])] + prompt
                for _ in range(b["teachers"])]
    out: dict = {"scale": args.scale, "budgets": b, "device": str(device), "dtype": args.dtype,
                 "arch": args.arch if args.scale >= 0.2 else "tiny", "phases": {}}
    ph = out["phases"]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def phase(name, fn):
        sync()
        t = time.perf_counter()
        res = fn()
        sync()
        ph[name] = {"seconds": time.perf_counter() - t, **res[1]}
        return res[0]

    def sample(groups: list[tuple[tuple[int, ...], int, int]]):  # (prefix, n, budget)
        calls: dict[int, list] = {}
        for i, (_, _, bud) in enumerate(groups):
            calls.setdefault(args.max_budget_per_call and max(g[2] for g in groups) or bud,
                             []).append(i)
        res: list = [None] * len(groups)
        for bud, idx in sorted(calls.items()):
            reqs = [SampleRequest(groups[i][0], groups[i][1], seed=args.seed * 7919 + i + bud)
                    for i in idx]
            for i, comps in zip(idx, lm.sample(reqs, SamplingParams(1.0, 1.0, bud)), strict=True):
                res[i] = comps
        return res, len(calls)

    def initial():
        groups = [(tuple(prompt), min(b["group"], b["G"] - s), b["max_len"])
                  for s in range(0, b["G"], b["group"])]
        res, calls = sample(groups)
        comps = [c for g in res for c in g]
        lens = np.array([len(c.token_ids) for c in comps])
        rewards = np.array([reward(c.token_ids) for c in comps])
        return comps, {"rollouts": len(comps), "tokens": int(lens.sum()), "calls": calls,
                       "pass_rate": float(rewards.mean()), "length_median": float(np.median(lens)),
                       "length_p10": float(np.percentile(lens, 10)),
                       "length_max": int(lens.max()), "eos_rate": float(
                           np.mean([c.finish_reason == "eos" for c in comps]))}

    comps = phase("initial", initial)
    good = [c.token_ids for c in comps if reward(c.token_ids) > 0.5]
    bad = [c.token_ids for c in comps if reward(c.token_ids) <= 0.5]
    paths = good[: b["n_correct"]] + bad[: b["n_incorrect"]]

    def score_all():
        chosen, scored = [], 0
        for pid, ids in enumerate(paths):
            parts = [score_path(lm, prompt, lm, t, np.asarray(ids), tau=0.02, chunk_size=1024)
                     for t in teachers]
            scored += len(ids) * (1 + len(teachers))
            pick = select_per_teacher(
                [s.cand_pos_C for s in parts], [s.cand_tok_C for s in parts],
                [s.p_student_C for s in parts], [s.p_teacher_C for s in parts],
                [s.features["kl"] for s in parts], len(ids), base=b["window_base"],
                top_k=b["top_k"], top_r=b["top_r"])
            chosen += [(pid, d, tok) for d, tok in pick]
        return chosen, {"paths": len(paths), "tokens_scored": scored, "children": len(chosen)}

    chosen = phase("candidates", score_all)

    def targeted():
        n_roll, tokens, calls = 0, 0, 0
        starts = list(range(0, len(chosen), b["batch_groups"]))
        done = starts[: args.max_units] if args.max_units else starts
        for u in done:
            groups = []
            for pid, d, tok in chosen[u : u + b["batch_groups"]]:
                prefix = tuple(prompt + list(paths[pid][:d]) + [tok])
                for s in range(0, b["n_min"], b["group"]):
                    groups.append((prefix, min(b["group"], b["n_min"] - s), b["max_len"] - d - 1))
            groups = [g for g in groups if g[2] > 0]
            if not groups:
                continue
            res, c = sample(groups)
            calls += c
            n_roll += sum(len(g) for g in res)
            tokens += sum(len(x.token_ids) for g in res for x in g)
        return None, {"rollouts": n_roll, "tokens": tokens, "calls": calls,
                      "units": len(done), "units_total": len(starts)}

    phase("targeted", targeted)
    tg = ph["targeted"]
    if tg["units"] < tg["units_total"]:  # capped: extrapolate per unit (units are alike)
        tg["measured_seconds"] = tg["seconds"]
        tg["seconds"] *= tg["units_total"] / max(tg["units"], 1)
    phase("phase2", lambda: (score_all()[0], {"tokens_scored": sum(len(p) for p in paths)
                                                * (1 + len(teachers))}))
    total = sum(p["seconds"] for p in ph.values())
    out["seconds_per_question"] = total
    out["peak_memory_gib"] = peak_memory(device)
    q, s = args.suite_questions, args.suite_settings
    out["suite"] = {"questions": q, "settings": s, "device_days": total * q * s / 86400,
                    "paper_a100_days": PAPER_A100_DAYS, "is_projection": args.scale >= 1}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="float32 | bfloat16 (default: bf16 on cuda)")
    ap.add_argument("--arch", default="qwen3-0.6b", choices=sorted(QWEN3))
    ap.add_argument("--scale", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--logit-std", type=float, default=3.5)
    ap.add_argument("--mean-len", type=float, default=1400.0)
    ap.add_argument("--one-call-per-unit", dest="max_budget_per_call", action="store_true",
                    help="sample a unit's groups in one call (at its largest budget)")
    ap.add_argument("--suite-questions", type=int, default=300, help="assumption: edit")
    ap.add_argument("--suite-settings", type=int, default=4, help="assumption: edit")
    ap.add_argument("--max-units", type=int, default=0,
                    help="time only the first N targeted units and extrapolate (0 = all)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", help="write the result here")
    args = ap.parse_args(argv)
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = run(args)
    for name, p in out["phases"].items():
        rest = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in p.items() if k != "seconds")
        print(f"{name:10s} {p['seconds']:8.2f} s   {rest}")
    su = out["suite"]
    print(f"one question: {out['seconds_per_question']:.1f} s, peak memory "
          f"{out['peak_memory_gib']:.2f} GiB ({out['device']}, {out['dtype']}, {out['arch']})")
    label = "projected" if su["is_projection"] else "toy scale, NOT a projection:"
    print(f"{label} suite of {su['questions']} questions x {su['settings']} settings: "
          f"{su['device_days']:.2f} device-days (paper: ~{su['paper_a100_days']:.0f} A100-days)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
