"""Phase 2: each teacher's scores at the decision points of the stored tree.

`phase2` loops over teachers x questions; one (teacher, question) pair is one committed unit
(`q00003/c-score-<teacher>`). `score_teacher_on_question` walks each representative path once
under student and teacher (`scoring.score_path`), then at every decision point
(`phase1.decision_points`: children with >= N_sig visits, at least two of them, success rates
not all equal) computes the ideal gradient from the estimated success probabilities and each
method's gradient (GKD, single-sample, MiniLLM, Dr. GRPO; `gradients.py`), their cosine
(`align`, and `align_exact` where the synthetic world gives exact probabilities), the teacher
advantage and the distribution features. It returns the rows of the `nodes` and
`distributions` tables. The formulas and their sign conventions: docs/method.md#gradients.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from distillscope import gradients as G
from distillscope.phase1 import decision_points, lookup
from distillscope.runtime import Runtime, Teacher, question_key
from distillscope.schemas import FEATURES
from distillscope.scoring import score_path
from distillscope.types import Question

METHODS = ("gkd", "sampled", "minillm", "drgrpo")

__all__ = ["METHODS", "decision_points", "phase2", "phase2_teacher_question",
           "score_teacher_on_question"]


RL_UNIT = "c-rl"  # the Dr. GRPO baseline of a question: teacher-free, one row per node
TEACHER_METHODS = ("gkd", "sampled", "minillm")


def phase2(rt: Runtime) -> None:
    """Score every teacher, and the Dr. GRPO baseline (once per node, with teacher ""), on
    every question whose unit is not committed yet."""
    with rt.timer("phase2"), rt.reporter.bar(
        "phase 2: scoring", (len(rt.teachers) + 1) * len(rt.questions), unit="questions"
    ) as bar:
        for t in [*rt.teachers, None]:
            for q in rt.questions:
                if phase2_teacher_question(rt, t, q):
                    bar.advance()
                else:
                    bar.skip()


def phase2_teacher_question(rt: Runtime, t: Teacher | None, q: Question) -> bool:
    """Score teacher `t` (None: the Dr. GRPO baseline) on question `q` unless done before;
    True when this call scored."""
    key = question_key(rt, q)
    unit = f"{key}/{RL_UNIT}" if t is None else f"{key}/c-score-{t.spec.name}"
    if rt.store.is_done(unit) or (t is not None and q.qid not in t.contexts):
        return False
    children = rt.store.read("children", unit_prefix=f"{key}/z-children")
    paths = rt.store.read("paths", unit_prefix=f"{key}/z-children")
    init = rt.store.read("rollouts", unit_prefix=f"{key}/a-init")
    if not len(paths):
        rt.store.commit(unit, {})
        return True
    nodes, dists = score_teacher_on_question(rt, t, q, paths, children, init)
    rt.store.commit(unit, {"nodes": nodes, "distributions": dists})
    return True


def score_teacher_on_question(rt: Runtime, t: Teacher | None, q: Question, paths: pd.DataFrame,
                              children: pd.DataFrame, init: pd.DataFrame):
    """The `nodes` and `distributions` rows of teacher `t` on one question: methods gkd,
    sampled and minillm. With `t` None, the teacher-free Dr. GRPO rows (teacher "", teacher
    features NaN): the RL baseline depends on the tree only, so it is stored once per node."""
    cfg, sc = rt.config.tree, rt.config.scoring
    restrict = sc.restrict
    dp_all = decision_points(children, cfg.n_sig)
    mu, sd = float(init.reward.mean()), float(init.reward.std(ddof=0))
    node_rows, dist_rows = [], []
    for p in paths.itertuples():
        ids = np.asarray(p.response_ids, dtype=np.int64)
        dp = dp_all[dp_all.path_id == p.path_id]
        if not len(dp):
            continue
        s = score_path(rt.student, rt.student_ctx[q.qid], t.model if t else None,
                       t.contexts[q.qid] if t else None, ids,
                       tau=cfg.tau, extra=np.stack([dp.depth.to_numpy(), dp.token.to_numpy()], 1),
                       topk=sc.topk_overlap, chunk_size=sc.chunk_size)
        # a top-k teacher says which ids it served exactly at each position (models/topk.py)
        revealed = (getattr(t.model, "revealed_ids", {}).get(tuple(int(x) for x in ids))
                    if t else None)
        topk = int(getattr(t.model, "k", 0) or 0) if t else 0
        ps = lookup(s.cand_pos_C, s.cand_tok_C, s.p_student_C)
        pt = lookup(s.cand_pos_C, s.cand_tok_C, s.p_teacher_C)
        rtg = np.cumsum((s.logp_teacher_taken_T - s.logp_student_taken_T)[::-1])[::-1]
        kids = children[children.path_id == p.path_id]
        for depth, node in dp.groupby("depth", sort=True):
            toks = node.token.to_numpy()
            p_s = np.array([ps[(depth, k)] for k in toks])
            p_t = np.array([pt[(depth, k)] for k in toks])
            p_hat = node.p_hat.to_numpy()
            here = kids[kids.depth == depth]
            n_tot = float(here.rl_visits.sum())
            adv = (lambda n, s_: (s_ - n * mu) / sd) if sd > 0 else None
            path_tok = int(ids[depth])
            r_idx = int(np.flatnonzero(toks == path_tok)[0]) if path_tok in toks else -1
            ideal = G.ideal_gradient(p_s, p_hat, restrict=restrict)
            if t is None:
                grads = {"drgrpo": (G.drgrpo_gradient_from_counts(
                    p_s, node.rl_visits.to_numpy(dtype=float),
                    adv(node.rl_visits.to_numpy(float), node.rl_successes.to_numpy(float)),
                    n_tot, float(adv(n_tot, float(here.rl_successes.sum()))),
                    restrict=restrict) if adv is not None and n_tot > 0 else None)}
            else:
                kl_t = float(s.features["kl"][depth])
                grads = {
                    "gkd": G.gkd_gradient(p_s, p_t, restrict=restrict, kl=kl_t),
                    "sampled": (G.sampled_gradient(p_s, p_t, r_idx, restrict=restrict)
                                if r_idx >= 0 else None),
                    "minillm": (G.minillm_gradient(p_s, r_idx, float(rtg[depth]),
                                                   restrict=restrict)
                                if r_idx >= 0 else None),
                }
            ideal_exact = None
            if "p_exact" in node and node.p_exact.notna().all():
                ideal_exact = G.ideal_gradient(p_s, node.p_exact.to_numpy(), restrict=restrict)
            base = {
                "qid": q.qid, "path_id": p.path_id, "depth": int(depth),
                "depth_norm": depth / max(1, len(ids) - 1), "teacher": t.spec.name if t else "",
                "teacher_adv": G.teacher_advantage(p_s, p_t, p_hat) if t else math.nan,
                "sr_range": float(p_hat.max() - p_hat.min()), "n_children": len(toks),
                "visits": int(node.visits.sum()), "path_correct": bool(p.correct),
                "path_token": path_tok, "restrict": restrict, "estimator": cfg.estimator,
                "teacher_topk": topk,
                "su_bounded": (sum(int(k) not in revealed[int(depth)] for k in toks)
                               if revealed is not None else 0),
                **{f: float(s.features[f][depth]) for f in FEATURES},
            }
            for m, g in grads.items():
                node_rows.append({
                    **base, "method": m,
                    "align": G.cosine(ideal, g) if g is not None else math.nan,
                    "align_exact": (G.cosine(ideal_exact, g)
                                    if g is not None and ideal_exact is not None else math.nan),
                })
            if t is not None:  # the RL baseline has no teacher distribution to store
                for k, v in zip(toks, p_t, strict=True):
                    dist_rows.append({"qid": q.qid, "path_id": p.path_id, "depth": int(depth),
                                      "model": t.spec.name, "token": int(k), "prob": float(v)})
    return pd.DataFrame(node_rows), pd.DataFrame(dist_rows)
