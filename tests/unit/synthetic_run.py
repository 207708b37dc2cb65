"""A small synthetic run directory with every table of schemas.py, for report/show/export tests.

Four questions; q0-q2 have two correct and two incorrect paths, q3 only correct ones. Two
teachers: "self-1c" (helpful: alignment around +0.35) and "qwen3-8b" (around 0), with incorrect
paths aligning more than correct ones. Dr. GRPO rows are teacher-free (teacher = "").
Path q0/0 carries hostile token texts (a script tag at a decision point, an onerror image, an
ampersand entity, a terminal escape sequence).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from distillscope.config import ModelSpec, RunConfig, TeacherSpec
from distillscope.schemas import FEATURES, SCHEMAS

SCRIPT_TOKEN = "<script>alert(1)</script>"  # at depth 4 of q0/0: a decision point
IMG_TOKEN = '<img src=x onerror="document.title=\'PWNED\'">'
ESC_TOKEN = "\x1b[31mred\x1b[0m"  # a terminal escape sequence
HOSTILE = {4: SCRIPT_TOKEN, 7: IMG_TOKEN, 9: " &amp; ", 11: ESC_TOKEN}
TEACHERS = ("self-1c", "qwen3-8b")
METHODS = ("gkd", "sampled", "minillm")
WORDS = (" The", " passage", " says", " that", " the", " river", " is", " long", ",", " so",
         " the", " answer", " is", ":", " yes", ".", "\n", "Answer", ":", " Yes")


def write_table(run_dir: Path, name: str, rows: list[dict], unit: str = "part-0") -> None:
    """tables/<name>/<unit>.parquet plus the run store's commit marker units/<unit>.done."""
    folder = run_dir / "tables" / name
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMAS[name]), folder / f"{unit}.parquet")
    (run_dir / "units").mkdir(exist_ok=True)
    (run_dir / "units" / f"{unit}.done").write_bytes(b"")


def make_synthetic_run(run_dir: Path, *, seed: int = 0, exact: bool = False) -> Path:
    """Write the run under `run_dir` and return it. `exact` fills align_exact (toy backend)."""
    rng = np.random.default_rng(seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = RunConfig(
        name="synthetic-boolq",
        teachers=[
            TeacherSpec(name="self-1c", mode="self-1c"),
            TeacherSpec(name="qwen3-8b", mode="external", model=ModelSpec(model="Qwen/Qwen3-8B")),
        ],
    )
    (run_dir / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
    prov = {"git_commit": "0123abcd4567", "python": "3.11.2", "platform": "Linux (test)",
            "versions": {"distillscope": "0.1.0", "torch": "2.13.0", "vllm": "absent"},
            "device": "cpu (test)", "student": "embedded:smollm2-135m",
            "estimator": "unbiased", "restrict": "renorm"}
    (run_dir / "provenance.json").write_text(json.dumps(prov), encoding="utf-8")

    questions, paths, rollouts, children, dist, nodes = [], [], [], [], [], []
    rid = 0
    for qi in range(4):
        qid = f"q{qi}"
        labels = [True, True] if qi == 3 else [True, True, False, False]
        questions.append({"qid": qid, "prompt": f"Is river {qi} long? <b>bold?</b>",
                          "answer": json.dumps("yes"), "n_initial": 16, "pass_rate": 0.5,
                          "difficulty": "medium", "n_correct_paths": sum(labels),
                          "n_incorrect_paths": len(labels) - sum(labels), "note": ""})
        for pid, correct in enumerate(labels):
            toks = list(WORDS)
            if qi == 0 and pid == 0:
                for d, tok in HOSTILE.items():
                    toks[d] = tok
            if not correct:
                toks[-1] = " No"
            ids = [100 + i for i in range(len(toks))]
            paths.append({"qid": qid, "path_id": pid, "rollout_id": rid, "correct": correct,
                          "length": len(toks), "response_ids": ids, "tokens": toks,
                          "text": "".join(toks)})
            rollouts.append({"qid": qid, "rollout_id": rid, "origin": "initial", "path_id": -1,
                             "launch_depth": -1, "forced_len": 0, "response_ids": ids,
                             "text": "".join(toks), "reward": float(correct), "parsable": True,
                             "finish_reason": "eos", "seed": rid})
            rid += 1
            for depth in range(0, len(toks) - 1, 2):  # a decision point every other token
                p_hat = rng.uniform(0.1, 0.9, size=3)
                visits = [40, 25, 5]  # the third child is below n_sig = 20
                for k in range(3):
                    tok = ids[depth] if k == 0 else 900 + k
                    text = toks[depth] if k == 0 else [" alt", " other"][k - 1]
                    children.append({"qid": qid, "path_id": pid, "depth": depth, "token": tok,
                                     "token_text": text, "on_path": k == 0, "visits": visits[k],
                                     "successes": int(round(p_hat[k] * visits[k])),
                                     "p_hat": float(p_hat[k]), "rl_visits": visits[k],
                                     "rl_successes": int(round(p_hat[k] * visits[k])),
                                     "p_exact": float("nan")})
                    for model in ("student",) + TEACHERS:
                        dist.append({"qid": qid, "path_id": pid, "depth": depth, "model": model,
                                     "token": tok, "prob": float(rng.uniform(0.01, 0.6))})
                sr = float(p_hat[:2].max() - p_hat[:2].min())
                base = {"qid": qid, "path_id": pid, "depth": depth,
                        "depth_norm": depth / (len(toks) - 1), "sr_range": sr, "n_children": 2,
                        "visits": 65, "path_correct": correct, "path_token": ids[depth],
                        "restrict": "renorm", "estimator": "unbiased", "teacher_topk": 0,
                        "su_bounded": 0}
                for t, mu in zip(TEACHERS, (0.35, 0.0), strict=True):
                    adv = float(rng.normal(0.01, 0.02))
                    feats = {f: float(rng.uniform(0, 1)) for f in FEATURES}
                    for m in METHODS:
                        shift = 0.0 if correct else 0.15
                        a = float(np.clip(rng.normal(mu + shift, 0.4), -1, 1))
                        if qi == 1 and pid == 1 and depth == 4 and m == "gkd" and t == "qwen3-8b":
                            a = float("nan")  # a zero-norm gradient: cosine undefined
                        nodes.append({**base, **feats, "teacher": t, "method": m, "align": a,
                                      "align_exact": float(np.clip(a + rng.normal(0, 0.05), -1, 1))
                                      if exact else float("nan"), "teacher_adv": adv})
                a = float(np.clip(rng.normal(0.5, 0.3), -1, 1))
                nodes.append({**base, **{f: float("nan") for f in FEATURES}, "teacher": "",
                              "method": "drgrpo", "align": a, "align_exact": float("nan"),
                              "teacher_adv": float("nan")})
    for name, rows in (("questions", questions), ("paths", paths), ("rollouts", rollouts),
                       ("children", children), ("distributions", dist), ("nodes", nodes),
                       ("demos", []), ("screen", [])):
        write_table(run_dir, name, rows)
    return run_dir
