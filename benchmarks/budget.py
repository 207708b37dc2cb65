"""Rollouts needed for a given precision: the paper's fixed allocation against `adaptive`.

On the synthetic world (toy backend, exact P_succ known) the error of every reported alignment
is known: align - align_exact in the nodes table (method gkd, every teacher). This runs the whole
pipeline for several seeds (each seed a different run seed *and* a different family of worlds)
and, per seed,

    fixed     the paper's allocation, each chosen child enriched to n_min counted visits,
              for a sweep of n_min (the paper: 100)
    adaptive  `tree.budget: adaptive` (distillscope.adaptive), for a sweep of its stopping
              half-width `adaptive_ci`

and reports, per variant, the rollouts spent (provenance.json: rollouts/targeted, rollouts/total)
against the RMSE of the alignment, (a) over each run's own decision points and (b) over the
nodes that are decision points in every run of the same seed (the set of decision points depends
on the counts through N_sig, so (a) alone does not compare like with like), plus the number of
decision points found. Means and standard deviations are over seeds; RMSE is over (node,
teacher) rows, nodes as the nodes table reports them (a node shared by several paths counts once
per path). Rows whose exact alignment is undefined (an exactly zero ideal gradient: S_u holds
only children of equal P_succ, e.g. synonyms) are left out. Two more columns: the RMSE with the
`backup` estimator (docs/method.md#estimators), recomputed after the run (`backup_errors`), and the
number of
rows with |error| > 1, i.e. sign flips, nearly all at two-child nodes whose children have almost
equal P_succ (there the cosine is +-1 and any estimate is a coin flip); a handful of them
dominates the RMSE of a run.

    python benchmarks/budget.py                                  # 3 seeds x 16 questions
    python benchmarks/budget.py --seeds 0 --questions 8 --n-min 100 --gain 1e-4 --ci
    python benchmarks/budget.py --out runs/bench-budget --jobs 2

Writes OUT/runs/<seed>-<variant>/ (the run directories; reused when complete, unless --fresh),
OUT/budget_runs.csv (one row per run), OUT/budget.csv (the table), OUT/budget.png (the plot).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
KEY = ["qid", "path_id", "depth"]


# ---------------------------------------------------------------------------------------------
# Configurations
def _with_tree(config: Any, **fields: Any) -> Any:
    """config with tree fields replaced; fields TreeConfig does not know yet (the adaptive
    allocator's, before they are added) are attached as attributes, which the allocator reads
    with getattr."""
    from distillscope.config import TreeConfig

    known = {k: v for k, v in fields.items() if k in TreeConfig.model_fields}
    extra = {k: v for k, v in fields.items() if k not in TreeConfig.model_fields}
    tree = TreeConfig.model_validate({**config.tree.model_dump(), **known})
    if extra:
        tree = tree.model_copy(update=extra)
    return config.model_copy(update={"tree": tree})


def make_config(base: Path, seed: int, questions: int, variant: dict[str, Any]) -> Any:
    """The toy preset for one seed: run seed, world seed (student, teachers, task) = seed."""
    from distillscope.config import load_config

    over: dict[str, Any] = {"seed": seed, "student.options.seed": seed,
                            "task.options.seed": seed, "task.options.n_questions": questions}
    cfg = load_config(base, over)
    teachers = []
    for t in cfg.teachers:
        if t.model is not None and t.model.backend == "toy":
            m = t.model.model_copy(update={"options": {**t.model.options, "seed": seed}})
            t = t.model_copy(update={"model": m})
        teachers.append(t)
    cfg = cfg.model_copy(update={"teachers": teachers})
    return _with_tree(cfg, **variant)


def variants(n_mins: list[int], gains: list[float],
             cis: list[float] = ()) -> dict[str, dict[str, Any]]:
    """Variant name -> tree fields. fixed-<n_min>; adaptive-gain=<g> (the default stopping
    rules, `adaptive_gain` = g); adaptive-ci=<w> (the CI rule alone: `adaptive_ci` = w,
    `adaptive_gain` = 0)."""
    out: dict[str, dict[str, Any]] = {}
    for n in n_mins:
        out[f"fixed-{n}"] = {"budget": "fixed", "n_min": n}
    for g in gains:
        out[f"adaptive-gain={g:g}"] = {"budget": "adaptive", "adaptive_gain": g}
    for ci in cis:
        out[f"adaptive-ci={ci:g}"] = {"budget": "adaptive", "adaptive_ci": ci,
                                      "adaptive_gain": 0.0}
    return out


# ---------------------------------------------------------------------------------------------
# Running
def _run_one(job: tuple[str, int, int, str, dict[str, Any], bool]) -> tuple[str, float]:
    base, seed, questions, out, variant, fresh = job
    from distillscope.pipeline import run

    out_p = Path(out)
    if (out_p / "provenance.json").is_file() and not fresh:
        return out, 0.0
    if out_p.exists():
        shutil.rmtree(out_p)
    t0 = time.perf_counter()
    run(make_config(Path(base), seed, questions, variant), out_p, force=True)
    return out, time.perf_counter() - t0


def run_all(args: argparse.Namespace, specs: dict[str, dict[str, Any]]) -> dict[tuple, Path]:
    dirs, jobs = {}, []
    for seed in args.seeds:
        for name, var in specs.items():
            d = Path(args.out) / "runs" / f"s{seed}-{name}"
            dirs[(seed, name)] = d
            jobs.append((str(args.config), seed, args.questions, str(d), var, args.fresh))
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for out, secs in pool.map(_run_one, jobs):
            print(f"  {out}: {'reused' if secs == 0 else f'{secs:.0f} s'}", flush=True)
    return dirs


# ---------------------------------------------------------------------------------------------
# Measuring
def load_errors(run_dir: Path) -> tuple[pd.DataFrame, int, dict[str, int]]:
    """(gkd rows with a defined error, number of decision points, rollout counts)."""
    from distillscope.store import RunStore

    nodes = RunStore(run_dir).read("nodes")
    nodes = nodes[nodes.method == "gkd"]
    n_dp = len(nodes[KEY].drop_duplicates())
    err = nodes["align"] - nodes["align_exact"]
    rows = nodes.assign(err=err)[np.isfinite(err)][[*KEY, "teacher", "err"]]
    prov = json.loads((run_dir / "provenance.json").read_text())
    counts = {k: int(prov[k]) for k in ("rollouts/total", "rollouts/initial",
                                        "rollouts/targeted")}
    return rows.reset_index(drop=True), n_dp, counts


def backup_errors(run_dir: Path) -> pd.DataFrame:
    """The gkd rows of the nodes table recomputed with the `backup` estimator
    (docs/method.md#estimators)
    (`tree.backup_on_path`: the on-path child's P_hat replaced by the stratified estimate from
    the node below), on the same decision points and S_u, against the same exact alignment.
    Toy backend only (the student's full distributions come from the toy model). The pipeline
    does not write backup estimates itself, so this is computed here, after the run."""
    from distillscope import gradients as G
    from distillscope.models.toy import ToyModel, WorldParams
    from distillscope.store import RunStore
    from distillscope.tree import PathTree, backup_on_path

    store = RunStore(run_dir)
    cfg = store.load_config()
    model = ToyModel(WorldParams.from_options(cfg.student.options))
    ro, paths = store.read("rollouts"), store.read("paths")
    nodes, dist, children = store.read("nodes"), store.read("distributions"), store.read("children")
    nodes = nodes[nodes.method == "gkd"]
    kids = children[children.visits >= cfg.tree.n_sig].set_index(KEY).sort_index()
    probs = dist.set_index([*KEY, "model", "token"]).prob.sort_index()
    rows = []
    for p in paths.itertuples():
        ids = [int(t) for t in p.response_ids]
        ctx = model.encode_chat([{"role": "user", "content": p.qid.replace("toy-", "toy:")}])
        tree = PathTree(ids)
        r = ro[ro.qid == p.qid]
        tree.add(list(r.response_ids), r.forced_len.to_numpy(), r.reward.to_numpy())
        p_T_V = model.next_token_probs(ctx, ids)
        q_L = backup_on_path(tree, lambda d, toks, p_T_V=p_T_V: p_T_V[d][toks], cfg.tree.n_sig)
        mine = nodes[(nodes.qid == p.qid) & (nodes.path_id == p.path_id)]
        for (depth, teacher), _ in mine.groupby(["depth", "teacher"]):
            c = kids.loc[(p.qid, p.path_id, depth)].sort_values("token")
            toks = c.token.to_numpy()
            p_hat, p_exact = c.p_hat.to_numpy().copy(), c.p_exact.to_numpy()
            on = toks == ids[depth]
            if on.any() and np.isfinite(q_L[depth]):
                p_hat[on] = q_L[depth]
            ps = probs.loc[(p.qid, p.path_id, depth, "student")].loc[toks].to_numpy()
            pt = probs.loc[(p.qid, p.path_id, depth, teacher)].loc[toks].to_numpy()
            g = G.gkd_gradient(ps, pt, restrict=cfg.scoring.restrict)
            err = (G.cosine(G.ideal_gradient(ps, p_hat, restrict=cfg.scoring.restrict), g)
                   - G.cosine(G.ideal_gradient(ps, p_exact, restrict=cfg.scoring.restrict), g))
            rows.append({"qid": p.qid, "path_id": p.path_id, "depth": depth,
                         "teacher": teacher, "err": err})
    out = pd.DataFrame(rows, columns=[*KEY, "teacher", "err"])
    return out[np.isfinite(out.err)].reset_index(drop=True)


def _rmse(err: pd.Series) -> float:
    return float(np.sqrt(np.mean(err**2))) if len(err) else math.nan


def measure(dirs: dict[tuple, Path], backup: bool = True) -> pd.DataFrame:
    """One row per run: rollouts, decision points, RMSE on own and on common nodes (and on
    own nodes with the backup estimator)."""
    loaded = {k: load_errors(d) for k, d in dirs.items()}
    backed = {k: backup_errors(d) if backup else None for k, d in dirs.items()}
    rows = []
    for seed in sorted({s for s, _ in loaded}):
        mine = {n: v for (s, n), v in loaded.items() if s == seed}
        common = None
        for rows_, _, _ in mine.values():
            keys = set(map(tuple, rows_[KEY].to_numpy().tolist()))
            common = keys if common is None else common & keys
        for name, (r, n_dp, counts) in mine.items():
            in_common = [tuple(x) in common for x in r[KEY].to_numpy().tolist()]
            rows.append({
                "seed": seed, "variant": name,
                "allocation": name.split("-")[0], "setting": name.split("-", 1)[1],
                "rollouts_targeted": counts["rollouts/targeted"],
                "rollouts_total": counts["rollouts/total"],
                "decision_points": n_dp, "common_nodes": len(common),
                "rmse_own": _rmse(r.err), "rmse_common": _rmse(r.err[in_common]),
                "rmse_own_backup": (_rmse(backed[(seed, name)].err)
                                    if backed[(seed, name)] is not None else math.nan),
                "flips_own": int((r.err.abs() > 1).sum()),
                "max_err_own": float(r.err.abs().max()) if len(r) else math.nan,
            })
    return pd.DataFrame(rows)


def summarise(per_run: pd.DataFrame) -> pd.DataFrame:
    cols = ["rollouts_targeted", "rollouts_total", "decision_points", "common_nodes",
            "rmse_own", "rmse_common", "rmse_own_backup", "flips_own"]
    g = per_run.groupby("variant", sort=False)
    out = g[cols].agg(["mean", "std"])
    out.columns = [f"{a}_{b}" for a, b in out.columns]
    out.insert(0, "allocation", g.allocation.first())
    out.insert(1, "setting", g.setting.first())
    out.insert(2, "seeds", g.size())
    return out.reset_index()


def verdict(summary: pd.DataFrame, reference: str = "fixed-100") -> list[str]:
    """Whether an adaptive variant reaches the reference RMSE with <= 1/3 of its rollouts."""
    if reference not in set(summary.variant):
        return [f"(no {reference} run: no verdict)"]
    ref = summary.set_index("variant").loc[reference]
    lines = []
    for r in summary[summary.allocation == "adaptive"].itertuples():
        for what in ("targeted", "total"):
            spent = getattr(r, f"rollouts_{what}_mean") / ref[f"rollouts_{what}_mean"]
            ok_own = r.rmse_own_mean <= ref.rmse_own_mean
            ok_com = r.rmse_common_mean <= ref.rmse_common_mean
            met = spent <= 1 / 3 and ok_own and ok_com
            lines.append(
                f"{r.variant}: {spent:.2f} x the {what} rollouts of {reference}; RMSE own "
                f"{r.rmse_own_mean:.4f} vs {ref.rmse_own_mean:.4f}, common "
                f"{r.rmse_common_mean:.4f} vs {ref.rmse_common_mean:.4f} -> target "
                f"{'MET' if met else 'not met'} ({what})")
    return lines


def markdown(summary: pd.DataFrame) -> str:
    head = ("| allocation | setting | targeted rollouts | total rollouts | decision points | "
            "common nodes | RMSE own nodes | RMSE common nodes | RMSE own nodes, backup | "
            "rows with abs(err) > 1 |")
    lines = [head, "|" + "---|" * 10]

    def pm(r: Any, c: str, fmt: str) -> str:
        m, s = getattr(r, f"{c}_mean"), getattr(r, f"{c}_std")
        return f"{m:{fmt}} ± {s:{fmt}}" if np.isfinite(s) else f"{m:{fmt}}"

    for r in summary.itertuples():
        setting = f"n_min={r.setting}" if r.allocation == "fixed" else r.setting
        lines.append(
            f"| {r.allocation} | {setting} | {pm(r, 'rollouts_targeted', ',.0f')} | "
            f"{pm(r, 'rollouts_total', ',.0f')} | {pm(r, 'decision_points', '.0f')} | "
            f"{r.common_nodes_mean:.0f} | {pm(r, 'rmse_own', '.4f')} | "
            f"{pm(r, 'rmse_common', '.4f')} | {pm(r, 'rmse_own_backup', '.4f')} | "
            f"{pm(r, 'flips_own', '.1f')} |")
    return "\n".join(lines)


def plot(summary: pd.DataFrame, path: Path, reference: str = "fixed-100") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    ref = summary.set_index("variant").loc[reference] if reference in set(summary.variant) \
        else None
    for ax, which, title in ((axes[0], "rmse_own", "each run's own decision points"),
                             (axes[1], "rmse_common", "nodes common to every run of a seed")):
        family = summary.allocation + summary.setting.map(
            lambda x: f" ({x.split('=')[0]})" if "=" in x else "")
        for i, alloc in enumerate(dict.fromkeys(family)):
            style = "o-" if alloc == "fixed" else "sd^v"[i % 4] + "-"
            s = summary[family == alloc].sort_values("rollouts_targeted_mean")
            if not len(s):
                continue
            ax.errorbar(s.rollouts_targeted_mean, s[f"{which}_mean"], yerr=s[f"{which}_std"],
                        xerr=s.rollouts_targeted_std, fmt=style, capsize=3,
                        label=alloc)
            for r in s.itertuples():
                ax.annotate(r.setting, (r.rollouts_targeted_mean, getattr(r, f"{which}_mean")),
                            textcoords="offset points", xytext=(4, 4), fontsize=8)
        if ref is not None:
            ax.axhline(ref[f"{which}_mean"], color="grey", ls=":", lw=1)
            ax.axvline(ref.rollouts_targeted_mean / 3, color="grey", ls="--", lw=1,
                       label="1/3 of the paper's rollouts")
        ax.set_xscale("log")
        ax.set_xlabel("targeted rollouts per run (mean over seeds)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("RMSE of gkd alignment vs exact")
    axes[0].legend(fontsize=8)
    fig.suptitle("Synthetic world: alignment error against rollouts spent (mean ± sd over seeds)",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench-budget")
    ap.add_argument("--config", default=str(ROOT / "configs" / "toy.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--questions", type=int, default=16)
    ap.add_argument("--n-min", type=int, nargs="*", default=[25, 50, 100, 200])
    ap.add_argument("--gain", type=float, nargs="*", default=[3e-4, 1e-4, 3e-5],
                    help="adaptive_gain values (adaptive, default stopping rules)")
    ap.add_argument("--ci", type=float, nargs="*", default=[0.2],
                    help="adaptive_ci values with the gain rule off (the CI rule alone)")
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel (processes)")
    ap.add_argument("--fresh", action="store_true", help="redo runs that already exist")
    ap.add_argument("--no-backup", action="store_true",
                    help="skip the RMSE with the backup estimator (computed after the runs)")
    args = ap.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    specs = variants(args.n_min, args.gain, args.ci)
    print(f"{len(args.seeds)} seed(s) x {len(specs)} variant(s), {args.questions} questions each")
    t0 = time.perf_counter()
    dirs = run_all(args, specs)
    per_run = measure(dirs, backup=not args.no_backup)
    summary = summarise(per_run)
    per_run.to_csv(out / "budget_runs.csv", index=False)
    summary.to_csv(out / "budget.csv", index=False)
    plot(summary, out / "budget.png")
    print(markdown(summary))
    print()
    for line in verdict(summary):
        print(line)
    print(f"\nwrote {out / 'budget.csv'}, {out / 'budget_runs.csv'}, {out / 'budget.png'} "
          f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
