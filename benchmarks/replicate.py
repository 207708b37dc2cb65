"""A small replication on real questions: does the paper's main finding hold?

Runs the full pipeline with the embedded SmolLM2-135M student on real BoolQ and MMLU questions
(read at run time from ../shared/data; never copied into the project) with three self-*
teachers (self-1c, self-1c1w, self-sum-1c; self-3c is left out: a 135M student rarely yields
three correct demonstrations within the trial cap, and a question is scored only when every
teacher has its demonstrations), then pools the runs and prints / records:

* questions used and rollouts spent,
* correct vs incorrect paths (mean cosine, SR-weighted cosine, teacher advantage) with
  question-clustered bootstrap CIs and permutation p-values (paper figure 3 / table 4),
* the teacher ranking with clustered CIs (paper table 1).

The default budget finishes on 2 CPU cores in about an hour (numbers below are the paper's
values scaled down; they are printed and recorded). `--device cuda` raises the budget.

    .venv/bin/python benchmarks/replicate.py                      # CPU, ~1 h
    .venv/bin/python benchmarks/replicate.py --device cuda --boolq 40 --mmlu 40 --G 64
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import pandas as pd

from distillscope import analysis
from distillscope.config import parse_config
from distillscope.pipeline import run
from distillscope.report import to_markdown, write_report
from distillscope.store import RunStore

ROOT = Path(__file__).resolve().parents[1]
TEACHERS = [
    {"name": "self-1c", "mode": "self-1c"},
    {"name": "self-1c1w", "mode": "self-1c1w"},
    {"name": "self-sum-1c", "mode": "self-sum-1c"},
]


def config_for(task: str, path: Path, args: argparse.Namespace) -> dict:
    return {
        "name": f"replicate-{task}",
        "seed": args.seed,
        "student": {"backend": "hf", "model": "embedded:smollm2-135m", "device": args.device},
        "teachers": TEACHERS,
        "task": {"name": task, "path": str(path),
                 **pick(path, getattr(args, task), args.pick if task == "mmlu" else "first")},
        "sampling": {"temperature": 1.0, "max_new_tokens": args.max_new_tokens,
                     "batch_groups": 8},
        "context": {"demo_temperature": 0.7, "max_trials": args.max_trials},
        "tree": {"G": args.G, "n_correct_paths": 2, "n_incorrect_paths": 2, "tau": 0.02,
                 "top_k": args.top_k, "top_r": args.top_r, "n_min": args.n_min,
                 "n_sig": args.n_sig, "window_base": args.window_base,
                 "estimator": "unbiased", "budget": args.budget, "group_size": 100},
    }


def pick(path: Path, n: int, how: str) -> dict:
    """The task's question selection: the first n rows, or n rows spread evenly over the file
    (MMLU's file is sorted by subject, so its first rows are all abstract algebra)."""
    if how == "first":
        return {"limit": n}
    with open(path, encoding="utf-8") as fh:
        ids = [json.loads(line)["id"] for line in fh if line.strip()]
    if n > len(ids):
        raise SystemExit(f"{path} has {len(ids)} questions, {n} asked for")
    return {"ids": [ids[i * len(ids) // n] for i in range(n)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "replicate")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--boolq", type=int, default=10, help="BoolQ questions (first N of the file)")
    ap.add_argument("--mmlu", type=int, default=10, help="MMLU questions")
    ap.add_argument("--pick", default="spread", choices=["spread", "first"],
                    help="MMLU questions: spread evenly over the file (a different subject "
                         "each, up to 57) or the first N (BoolQ always takes the first N)")
    ap.add_argument("--G", type=int, default=32)
    ap.add_argument("--n-min", dest="n_min", type=int, default=32)
    ap.add_argument("--n-sig", dest="n_sig", type=int, default=16)
    ap.add_argument("--top-k", dest="top_k", type=int, default=3)
    ap.add_argument("--top-r", dest="top_r", type=int, default=3)
    ap.add_argument("--window-base", dest="window_base", type=int, default=8)
    ap.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, default=48)
    ap.add_argument("--max-trials", dest="max_trials", type=int, default=12)
    ap.add_argument("--budget", default="fixed", choices=["fixed", "adaptive"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (1 is far faster on a machine shared with other jobs)")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    ap.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    ap.add_argument("--force", action="store_true",
                    help="reuse run directories made with other settings (e.g. fewer questions: "
                         "finished questions are kept, unfinished ones dropped)")
    args = ap.parse_args()

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    files = {"boolq": args.data_dir / "boolq_dev.jsonl", "mmlu": args.data_dir / "mmlu_test.jsonl"}
    for f in files.values():
        if not f.is_file():
            raise SystemExit(f"missing {f}: pass --data-dir pointing at the shared data folder")
    t0 = time.time()
    nodes, spent, used, notes = [], {}, {}, []
    for task, path in files.items():
        if getattr(args, task) <= 0:
            continue
        out = args.out / task
        cfg = parse_config(config_for(task, path, args), f"replicate {task}")
        print(f"== {task}: {getattr(args, task)} questions -> {out}", flush=True)
        run(cfg, out, force=args.force)
        write_report(out)
        store = RunStore(out)
        n = store.read("nodes")
        n["qid"] = task + ":" + n["qid"]
        nodes.append(n)
        prov = store.read_json("provenance.json")
        spent[task] = {k: prov.get(k) for k in ("rollouts/initial", "rollouts/targeted")}
        q = store.read("questions")
        used[task] = {"questions": len(q),
                      "with_paths": int(((q.n_correct_paths + q.n_incorrect_paths) > 0).sum()),
                      "both_kinds": int(((q.n_correct_paths > 0)
                                         & (q.n_incorrect_paths > 0)).sum()),
                      "mean_pass_rate": round(float(q.pass_rate.mean()), 3)}
        notes += [f"{task}:{r.qid}: {r.note}" for r in q.itertuples() if r.note]
    elapsed = time.time() - t0
    all_nodes = pd.concat(nodes, ignore_index=True)
    cvi = analysis.correct_vs_incorrect(all_nodes, method="gkd", seed=args.seed)
    by_teacher = analysis.correct_vs_incorrect_by_teacher(all_nodes, method="gkd", seed=args.seed)
    rank = analysis.teacher_ranking(all_nodes, method="gkd", seed=args.seed)
    cvi_cols = ["metric", "correct", "incorrect", "delta", "delta_ci_low", "delta_ci_high",
                "p_perm", "p_perm_min", "p_welch", "n_correct", "n_incorrect",
                "n_questions_mixed"]
    rank_cols = ["rank", "teacher", "mean", "ci_low", "ci_high", "n_nodes", "n_questions",
                 "separated"]
    print(json.dumps({"used": used, "spent": spent, "elapsed_s": round(elapsed)}, indent=1))
    print(cvi[cvi_cols].to_string(index=False))
    print(rank[rank_cols].to_string(index=False))
    if args.no_record:
        return
    section = [
        f"\n## Replication: correct vs incorrect paths ({dt.date.today().isoformat()})\n",
        f"Device: {args.device} ({platform.processor() or platform.machine()}), "
        f"{elapsed / 60:.0f} min for this invocation (finished questions of an earlier, "
        "interrupted invocation are reused, not re-run). Command: `.venv/bin/python "
        f"benchmarks/replicate.py {shlex.join(sys.argv[1:])}`\n",
        f"Student SmolLM2-135M-Instruct (GGUF Q4_1), teachers {[t['name'] for t in TEACHERS]}; "
        f"budget G={args.G}, N_min={args.n_min}, N_sig={args.n_sig}, top_k=top_r={args.top_k}, "
        f"window base {args.window_base}, max_new_tokens {args.max_new_tokens} "
        f"(paper: G=200, N_min=100, N_sig=20, windows of 50).\n",
        f"Questions: {json.dumps(used)}. Rollouts: {json.dumps(spent)}.\n",
        "Correct vs incorrect (GKD, all teachers pooled; CIs and p from question-clustered "
        "bootstrap / permutation; Welch on nodes for comparison):\n",
        to_markdown(cvi[cvi_cols]),
        "\nPer teacher:\n",
        to_markdown(by_teacher[[c for c in ["teacher", "metric", "correct", "incorrect", "delta",
                                            "delta_ci_low", "delta_ci_high", "p_perm",
                                            "n_questions_mixed"] if c in by_teacher.columns]]),
        "\nTeacher ranking (mean GKD alignment, 95% CI over questions):\n",
        to_markdown(rank[rank_cols]),
    ]
    if notes:
        section.append("\nNotes: " + "; ".join(notes[:20]) + "\n")
    with open(args.results, "a", encoding="utf-8") as fh:
        fh.write("\n".join(section) + "\n")
    print(f"appended to {args.results}")


if __name__ == "__main__":
    main()
