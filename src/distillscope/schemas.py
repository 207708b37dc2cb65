"""Parquet schemas of the run store's tables: the contract between pipeline, analysis and report.

Tables (one Parquet dataset each, under RUN_DIR/tables/<name>/part-*.parquet):

questions      one row per question used by the run
rollouts       every student rollout, initial and targeted (forced_len = m of
docs/method.md#unbiased-counting)
paths          the representative paths, with their decoded tokens for display
children       per (question, path, depth, child token): counted visits / successes under the
               run's estimator, plus the Dr. GRPO counts (rollouts with depth >= m)
distributions  full-vocabulary probabilities of candidate and S_u tokens, per model
               (`model` = "student" or a teacher name)
nodes          per (question, path, depth, teacher, method): the alignment and the features
demos          phase 0 demonstrations and summaries (contexts.py)
screen         phase 0 pass rates per (question, variant)
"""

from __future__ import annotations

import pyarrow as pa

QUESTIONS = pa.schema(
    [
        ("qid", pa.string()),
        ("prompt", pa.string()),  # the user message shown to the student
        ("answer", pa.string()),  # JSON-encoded answer
        ("n_initial", pa.int32()),
        ("pass_rate", pa.float64()),  # over the initial rollouts
        ("difficulty", pa.string()),  # easy | medium | hard | extremely_hard
        ("n_correct_paths", pa.int32()),
        ("n_incorrect_paths", pa.int32()),
        ("note", pa.string()),  # e.g. "no incorrect rollout: only correct paths"
    ]
)

ROLLOUTS = pa.schema(
    [
        ("qid", pa.string()),
        ("rollout_id", pa.int64()),
        ("origin", pa.string()),  # "initial" | "targeted"
        ("path_id", pa.int32()),  # launching path (-1 for initial)
        ("launch_depth", pa.int32()),  # t of the launch node (-1 for initial)
        ("forced_len", pa.int32()),  # m: 0 initial, t + 1 targeted
        ("response_ids", pa.list_(pa.int32())),  # whole response, forced prefix included
        ("text", pa.string()),
        ("reward", pa.float64()),
        ("parsable", pa.bool_()),
        ("finish_reason", pa.string()),
        ("seed", pa.int64()),
    ]
)

PATHS = pa.schema(
    [
        ("qid", pa.string()),
        ("path_id", pa.int32()),
        ("rollout_id", pa.int64()),
        ("correct", pa.bool_()),
        ("length", pa.int32()),
        ("response_ids", pa.list_(pa.int32())),
        ("tokens", pa.list_(pa.string())),  # decoded text of each token (untrusted)
        ("text", pa.string()),
    ]
)

CHILDREN = pa.schema(
    [
        ("qid", pa.string()),
        ("path_id", pa.int32()),
        ("depth", pa.int32()),  # node = path[:depth]
        ("token", pa.int32()),  # child token id
        ("token_text", pa.string()),
        ("on_path", pa.bool_()),  # token == path[depth]
        ("visits", pa.int64()),  # counted under the estimator
        ("successes", pa.int64()),
        ("p_hat", pa.float64()),  # successes / visits (the `backup` estimator may differ)
        ("rl_visits", pa.int64()),  # rollouts with depth >= m (Dr. GRPO may use them)
        ("rl_successes", pa.int64()),
        ("p_exact", pa.float64()),  # exact P_succ when the backend knows it (toy), else NaN
    ]
)

DISTRIBUTIONS = pa.schema(
    [
        ("qid", pa.string()),
        ("path_id", pa.int32()),
        ("depth", pa.int32()),
        ("model", pa.string()),  # "student" or a teacher name
        ("token", pa.int32()),
        ("prob", pa.float64()),  # full-vocabulary probability (not renormalised)
    ]
)

# Per-node features (full-vocabulary, student vs teacher), docs/method.md#distribution-features.
FEATURES = ("kl", "js", "l2", "prob_cos", "ent_student", "ent_teacher", "entropy_gap",
            "overlap_ratio", "overlap_adv")

NODES = pa.schema(
    [
        ("qid", pa.string()),
        ("path_id", pa.int32()),
        ("depth", pa.int32()),
        ("depth_norm", pa.float64()),  # depth / (path length - 1)
        ("teacher", pa.string()),
        ("method", pa.string()),  # gkd | sampled | minillm | drgrpo  (ideal is the reference)
        ("align", pa.float64()),  # cos(ideal, method) over S_u; NaN when undefined
        ("align_exact", pa.float64()),  # same with exact P_succ (toy), else NaN
        ("teacher_adv", pa.float64()),  # eq 2.1 over S_u, renormalised
        ("sr_range", pa.float64()),  # max - min P_hat over S_u
        ("n_children", pa.int32()),  # |S_u|
        ("visits", pa.int64()),  # sum of visits over S_u
        ("path_correct", pa.bool_()),
        ("path_token", pa.int32()),  # the token the path took at this node
        ("restrict", pa.string()),  # renorm | project
        ("estimator", pa.string()),  # unbiased | paper
        # a top-k teacher (served or truncated): its k (0 = full vocabulary), and how many S_u
        # tokens fell outside its top-k there (their value is the tail share, an upper bound)
        ("teacher_topk", pa.int32()),
        ("su_bounded", pa.int32()),
    ]
    + [(f, pa.float64()) for f in FEATURES]
)

DEMOS = pa.schema(
    [
        ("qid", pa.string()),
        ("source", pa.string()),  # "student" or the source model's name
        ("kind", pa.string()),  # "demo" | "summary"
        ("index", pa.int32()),  # trial number (demo) or demo index (summary)
        ("correct", pa.bool_()),
        ("text", pa.string()),
        ("seed", pa.int64()),
    ]
)

SCREEN = pa.schema(
    [
        ("qid", pa.string()),
        ("variant", pa.string()),  # "baseline" or a teacher mode
        ("n", pa.int32()),
        ("n_correct", pa.int32()),
        ("pass_rate", pa.float64()),
        ("available", pa.bool_()),  # the demos this variant needs exist
    ]
)

SCHEMAS: dict[str, pa.Schema] = {
    "questions": QUESTIONS,
    "rollouts": ROLLOUTS,
    "paths": PATHS,
    "children": CHILDREN,
    "distributions": DISTRIBUTIONS,
    "nodes": NODES,
    "demos": DEMOS,
    "screen": SCREEN,
}
