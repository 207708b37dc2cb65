"""The report header: where the run's numbers come from and what it analysed (provenance,
estimator, P_theta, truncated rollouts, screened bins, borrowed enrichment, served teachers'
self-tests)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from distillscope.report.data import Run
from distillscope.store import PLAN_FILE, StoreError

__all__ = ["incomplete_note", "provenance_items", "served_items", "topk_items",
           "truncated_rollouts"]


def _first(*values: Any) -> Any:
    for v in values:
        if v not in (None, "", {}, []):
            return v
    return None


def _unique(nodes: pd.DataFrame, col: str) -> str | None:
    if col not in nodes or nodes.empty:
        return None
    vals = sorted(str(v) for v in set(nodes[col].dropna()))
    return ", ".join(vals) if vals else None


def truncated_rollouts(store: Any) -> tuple[int, int]:
    """(rollouts, rollouts that stopped at sampling.max_new_tokens) over the committed
    rollouts of a RunStore (finish_reason "length")."""
    ro = store.read("rollouts")
    if not len(ro):
        return 0, 0
    return int(len(ro)), int((ro["finish_reason"] == "length").sum())


def incomplete_note(store: Any) -> str | None:
    """Why the run's tables are not the whole run, or None when nothing says so. From the
    question list that `run` records at its start (RUN_DIR/plan.json: unit key q##### is the
    position in it): questions without a finished tree, and questions with representative paths
    whose scores (phase 2) are missing; first of all, units begun but not committed (parts
    without a marker: `RunStore.uncommitted_units`). A run directory from before plan.json, or
    one whose first invocation has not finished (no provenance.json), says what it can."""
    done = store.done_units()
    if open_units := store.uncommitted_units():
        shown = ", ".join(open_units[:3]) + (", ..." if len(open_units) > 3 else "")
        return (f"{len(open_units)} unit(s) have tables on disk but no commit marker ({shown}): "
                "an invocation stopped inside them, or their markers were removed; the tables "
                "leave them out. Rerun the command that made it to finish it")
    try:
        plan = store.read_json(PLAN_FILE).get("qids")
    except StoreError as err:  # the tables are still sound (markers); only the count is lost
        return (f"perhaps: its question list cannot be read, so a stopped run cannot be told "
                f"from a finished one ({err})")
    if not isinstance(plan, list) or not plan:
        if done and not store.read_json("provenance.json"):
            return ("no invocation of this run has finished: the tables hold what was committed "
                    "so far; rerun the command that made it to finish it")
        return None
    keys = [f"q{i:05d}" for i in range(len(plan))]
    trees = [k for k in keys if f"{k}/z-children" in done]
    q = store.read("questions")
    n_paths = dict(zip(q["qid"].astype(str), q["n_correct_paths"] + q["n_incorrect_paths"],
                       strict=True)) if len(q) else {}
    with_paths = [k for k, qid in zip(keys, plan, strict=True)
                  if f"{k}/z-children" in done and n_paths.get(str(qid), 0) > 0]
    scored = [k for k in with_paths if f"{k}/c-rl" in done]
    if len(trees) == len(keys) and len(scored) == len(with_paths):
        return None
    return (f"stopped before its end: {len(trees)} of {len(keys)} questions have a finished "
            f"tree, {len(scored)} of the {len(with_paths)} with paths are scored; the tables "
            "hold what was committed so far. Rerun the command that made it to finish it")


def _truncated_label(run: Run) -> str:
    n, k = run.truncated
    if not n:
        return "no rollouts"
    return f"{k / n:.1%} of rollouts stopped at max_new_tokens ({k:,} of {n:,})"


def _run_scope_items(p: dict[str, Any]) -> list[tuple[str, Any]]:
    """What the run analysed and how each teacher's tokens were enriched."""
    out: list[tuple[str, Any]] = []
    sel = p.get("screen_selection")
    if isinstance(sel, dict) and sel.get("bins"):
        counts = sel.get("counts") or {}
        out.append(("screened", f"{sum(counts.values())} of {sel.get('screened', '?')} "
                    "questions kept, bins " + ", ".join(f"{b} {counts.get(b, 0)}"
                                                         for b in sel["bins"])))
    lent = sorted(t for t, how in (p.get("enrichment") or {}).items() if how == "borrowed")
    if lent:
        out.append(("borrowed enrichment", ", ".join(lent) + " (added with score --no-rollouts: "
                    "scored on the tree enriched for the other teachers, not its own top "
                    "tokens)"))
    return out


def topk_items(nodes: pd.DataFrame) -> list[tuple[str, Any]]:
    """Teachers scored from top-k log-probabilities (a served teacher): their k, and at how many
    decision points some S_u value is a bound (the tail share), with where the cost of top-k in
    alignment terms was measured."""
    if "teacher_topk" not in nodes or nodes.empty:
        return []
    top = nodes[(nodes["teacher_topk"].fillna(0) > 0) & (nodes["method"] == "gkd")]
    if top.empty:
        return []
    parts = []
    for t, d in top.groupby("teacher", sort=True):
        k = int(d["teacher_topk"].max())
        n_b = int((d["su_bounded"].fillna(0) > 0).sum())
        parts.append(f"{t} (k={k}): {n_b} of {len(d)} decision points with an S_u value "
                     "bounded, not exact")
    return [("top-k teachers", "; ".join(parts) + ". What top-k costs in alignment: "
             "benchmarks/RESULTS.md, 'Top-k teacher fidelity'")]


def served_items(p: dict[str, Any]) -> list[tuple[str, Any]]:
    """Teachers served over HTTP: where, and what their start-up self-test found
    (provenance.json `teachers/<name>/self_test`, written by runs since issue #18)."""
    recs = p.get("teachers")
    if not isinstance(recs, dict):
        return []
    parts = []
    for name, rec in sorted(recs.items()):
        st = rec.get("self_test") if isinstance(rec, dict) else None
        if not isinstance(st, dict):
            continue
        if st.get("passed"):
            parts.append(f"{name} ({st.get('base_url', '?')}, k={st.get('topk', '?')}): "
                         f"self-test passed, tokenizer same ids, replicas max |d log p| "
                         f"{float(st.get('replica_max_diff', float('nan'))):.2g} <= "
                         f"{st.get('replica_tol', '?')}")
        else:
            parts.append(f"{name}: self-test not run ({st.get('skipped', 'unknown')})")
    return [("served teachers", "; ".join(parts) + " (provenance.json, teachers)")] \
        if parts else []


def provenance_items(run: Run) -> list[tuple[str, Any]]:
    p, c = run.provenance, run.config
    versions = p.get("versions") or p.get("packages") or {}
    ver = ", ".join(f"{k} {v}" for k, v in versions.items() if v not in (None, "absent")) \
        if isinstance(versions, dict) else str(versions)
    commit = _first(p.get("git_commit"), (p.get("git") or {}).get("commit")
                    if isinstance(p.get("git"), dict) else p.get("git"), p.get("commit"))
    student = _first(p.get("student"), (c.get("student") or {}).get("model"))
    items = [
        ("config", _first(c.get("name"), p.get("config_name"), p.get("name"), run.run_dir.name)),
        *([("incomplete", run.incomplete)] if run.incomplete else []),
        ("git commit", str(commit)[:12] if commit else "unknown"),
        ("student", student or "unknown"),
        ("teachers", ", ".join(run.scored_teachers) or "none"),
        ("estimator", _first((c.get("tree") or {}).get("estimator"), p.get("estimator"),
                             _unique(run.nodes, "estimator")) or "unknown"),
        ("restrict", _first((c.get("scoring") or {}).get("restrict"), p.get("restrict"),
                            _unique(run.nodes, "restrict")) or "unknown"),
        ("N_sig", run.n_sig),
        ("rollouts", f"{p['rollouts/total']:,} ({p.get('rollouts/initial', 0):,} initial, "
                     f"{p.get('rollouts/targeted', 0):,} targeted)"
         if isinstance(p.get("rollouts/total"), int) else "unknown"),
        ("truncated", _truncated_label(run)),
        ("P_theta", "the student's plain softmax (temperature 1, no top-p), the distribution "
                    "the tree's rollouts were drawn from"),
        *_run_scope_items(p),
        *topk_items(run.nodes),
        *served_items(p),
        ("device", _first(p.get("device"), p.get("hardware")) or "unknown"),
        ("python", _first(p.get("python")) or "unknown"),
        ("versions", ver or "unknown"),
    ]
    return items
