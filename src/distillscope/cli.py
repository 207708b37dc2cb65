"""The command line: a small surface that fills a full RunConfig and calls the library.

    distillscope run CONFIG --out DIR        screen-free pipeline: contexts, tree, scores, report
    distillscope rollout CONFIG --out DIR    phases 0-1 only (the shared tree)
    distillscope score RUN_DIR --teacher T   add a teacher, no new rollouts
    distillscope screen CONFIG --out DIR     pass rates per context variant (tables 7-9)
    distillscope report RUN_DIR              tables, plots, report.html
    distillscope show RUN_DIR --question Q --path P
    distillscope export-weights RUN_DIR --teacher T --out FILE
    distillscope compare RUN_DIR RUN_DIR... --out DIR   settings side by side
    distillscope quickstart                  the whole pipeline on CPU with the bundled model

Errors the user can fix (a bad config or --set, a missing run, an unknown name) end with one
line that names the problem and exit code 2, not a traceback. Every command that computes says
what it did: a resumed run says what it reused, and the files it wrote are named.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Optional

import typer
import yaml
from rich.console import Console

from distillscope.cli_compare import MIN_SR_OPT, compare_command
from distillscope.config import (
    TEACHER_MODES,
    ConfigError,
    ModelSpec,
    RunConfig,
    TeacherSpec,
    load_config,
)

RUN_DIR_FILES = ("A run directory holds config.yaml, provenance.json and Parquet tables "
                 "(tables/); 'report' adds RUN_DIR/report/: report.html, summary.json, "
                 "tables/*.csv and *.md, figures/*.png.")
METHODS = "gkd, sampled, minillm or drgrpo"

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Per-token diagnostics for on-policy distillation. " + RUN_DIR_FILES)
console = Console(stderr=True)


def _errors() -> tuple[type[BaseException], ...]:
    from distillscope.models.base import ModelError
    from distillscope.store import StoreError
    from distillscope.tasks.base import TaskError

    return (ConfigError, StoreError, TaskError, ModelError, FileNotFoundError, ImportError)


def _fail(err: BaseException) -> None:
    # str(KeyError('x')) is "'x'": show the message itself
    from rich.text import Text

    msg = err.args[0] if isinstance(err, KeyError) and err.args else err
    console.print(Text.assemble(("error: ", "bold red"), str(msg)))  # never parsed as markup
    raise typer.Exit(2)


# ---------------------------------------------------------------------------------------------
# Configuration from the command line


def _overrides(items: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE (dotted key), got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def _load(config: Path, items: list[str]) -> RunConfig:
    return load_config(config, _overrides(items))


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a directory (a new one, or a run to "
                          "resume)")


def _check_run_dir(run_dir: Path) -> None:
    from distillscope.store import StoreError

    if not run_dir.exists():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    if not run_dir.is_dir():
        raise StoreError(f"{run_dir} is a file, not a run directory")
    if not (run_dir / "config.yaml").is_file():
        raise StoreError(f"{run_dir} is not a distillscope run (no config.yaml); make one with "
                         f"'distillscope run CONFIG --out {run_dir}'")


def _teacher_spec(teacher: str, mode: str, model: Optional[str], backend: str) -> TeacherSpec:
    from pydantic import ValidationError

    try:
        return TeacherSpec(name=teacher, mode=mode,  # type: ignore[arg-type]
                           model=ModelSpec(backend=backend, model=model) if model else None)
    except ValidationError as err:
        msgs = []
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"])
            opt = {"mode": "--mode", "model": "--model", "model.backend": "--backend"}.get(loc)
            msg = str(e["msg"]).removeprefix("Value error, ")
            msgs.append(f"{opt}: {msg}" if opt else msg)
        text = "; ".join(msgs)
        prefix = "" if text.startswith(f"teacher '{teacher}'") else f"teacher '{teacher}': "
        raise ConfigError(prefix + text) from None


def _threads(n: Optional[int]) -> None:
    """CPU threads for torch: on a machine shared with other jobs, 1 is often much faster
    (OpenMP threads spin while waiting for a core)."""
    if n:
        import torch

        torch.set_num_threads(n)


def _reporter():
    from distillscope.progress import RichReporter

    return RichReporter(console)


# ---------------------------------------------------------------------------------------------
# What a command did


def _state(run_dir: Path) -> tuple[int, dict[str, Any]]:
    """(committed work units, provenance) of a run directory (0, {} when there is none)."""
    from distillscope.store import RunStore

    store = RunStore(run_dir)
    if not run_dir.is_dir() or not store.exists():
        return 0, {}
    prov = store.read_json("provenance.json")
    # rollouts counted in the store itself: provenance is written only by invocations that
    # completed, so it can lag behind what a killed one committed
    prov["rollouts/stored"] = store.count_rows("rollouts")
    return len(store.done_units()), prov


def _rollouts(prov: dict[str, Any]) -> str:
    total = prov.get("rollouts/total")
    if total is None:
        return "rollouts: unknown"
    return (f"{total:,} rollouts ({prov.get('rollouts/initial', 0):,} initial, "
            f"{prov.get('rollouts/targeted', 0):,} targeted)")


def _say_done(out: Path, before: tuple[int, dict[str, Any]], what: str) -> None:
    """One line: fresh or resumed, work reused and done, rollouts spent."""
    units0, prov0 = before
    units1, prov1 = _state(out)
    new_units = max(units1 - units0, 0)
    new_ro = int(prov1.get("rollouts/stored", 0)) - int(prov0.get("rollouts/stored", 0))
    if units0 == 0:
        console.print(f"{what} {out}: {new_units} work unit(s) committed; {_rollouts(prov1)}.",
                      highlight=False, markup=False)
        return
    if new_units == 0:
        head = (f"resumed {out}: all {units0} work unit(s) were already committed (reused, "
                "nothing recomputed)")
        spent = ""
    else:
        head = (f"resumed {out}: reused {units0} committed work unit(s), computed {new_units} "
                "new")
        spent = f"{new_ro:,} new rollouts; "
    console.print(f"{head}; {spent}run total {_rollouts(prov1)}.", highlight=False,
                  markup=False)


def _print_ranking(report_html: Path, run_dir: Path, method: str = "gkd") -> None:
    """The teacher ranking exactly as the report computed it (same seed and draws)."""
    import pandas as pd

    from distillscope.report.terminal import ranking_table

    csv = report_html.parent / "tables" / "teacher_ranking.csv"
    rank = (pd.read_csv(csv, keep_default_na=False, na_values=[""],  # a teacher may be "nan"
                        dtype={"teacher": str})
            if csv.is_file() else pd.DataFrame())
    undefined = [str(t) for t, m in zip(rank.get("teacher", []), rank.get("mean", []),
                                        strict=True) if not math.isfinite(float(m))]
    if not len(rank) or len(undefined) == len(rank):
        _, prov = _state(run_dir)
        if not prov.get("teachers_scored"):
            console.print("no teacher has been scored in this run yet: add one with "
                          f"'distillscope score {run_dir} --teacher NAME --mode MODE'",
                          style="yellow", markup=False, highlight=False)
        else:
            console.print(f"no decision point has a defined {method} alignment: no teacher "
                          "ranking", style="yellow", markup=False, highlight=False)
        return
    out = Console()  # the table goes to stdout, messages to stderr
    out.print(ranking_table(rank, method, out.width))
    if undefined:
        console.print("undefined alignment at every decision point (a zero-norm gradient, "
                      f"e.g. a teacher equal to the student): {', '.join(undefined)}",
                      style="yellow", markup=False, highlight=False)


def _write_report(run_dir: Path, **kw: Any) -> Path:
    from distillscope.report import write_report

    path = write_report(run_dir, **kw)
    console.print(f"report: [bold]{path}[/] (summary.json, tables/, figures/ beside it)")
    return path


def _run(config: RunConfig, out: Path, *, force: bool, report: bool, score: bool = True,
         ray: Optional[str] = None) -> Optional[Path]:
    from distillscope import pipeline

    _check_out(out)
    before = _state(out)
    if ray is not None:
        from distillscope.distributed import run_on_ray

        run_on_ray(config, out, address=ray or None, reporter=_reporter(), force=force,
                   score=score)
    else:
        pipeline.run(config, out, reporter=_reporter(), force=force, score=score)
    _say_done(out, before, "run" if score else "shared tree")
    if report and score:
        return _write_report(out)
    return None


# ---------------------------------------------------------------------------------------------
CONFIG_ARG = typer.Argument(..., help="YAML run configuration (presets in configs/).")
SET_OPT = typer.Option([], "--set", help="Override a config field with a dotted key, e.g. "
                       "--set tree.G=50 (repeatable; values parsed as YAML).")
THREADS_OPT = typer.Option(None, help="torch CPU threads (1 is often fastest on a shared "
                           "machine).")
RUN_DIR_ARG = typer.Argument(..., help="A run directory made by 'distillscope run'.")


@app.command()
def run(
    config: Path = CONFIG_ARG,
    out: Path = typer.Option(..., "--out", "-o", help="Run directory: created, or resumed if "
                             "it holds a run of the same config."),
    set_: list[str] = SET_OPT,
    force: bool = typer.Option(False, help="Reuse a run directory made by another config."),
    report: bool = typer.Option(True, help="Write OUT/report/ when done."),
    ray: Optional[str] = typer.Option(None, help="Run on Ray ('' = local cluster, or ADDRESS)."),
    threads: Optional[int] = THREADS_OPT,
) -> None:
    """The whole pipeline: teacher contexts, shared tree, per-teacher scores, report.

    Writes OUT/config.yaml, OUT/provenance.json, OUT/tables/*.parquet and (unless --no-report)
    OUT/report/. Rerunning the same command resumes and says what it reused."""
    _threads(threads)
    try:
        html = _run(_load(config, set_), out, force=force, report=report, ray=ray)
        if html is not None:
            _print_ranking(html, out)
    except _errors() as err:
        _fail(err)


@app.command()
def rollout(
    config: Path = CONFIG_ARG,
    out: Path = typer.Option(..., "--out", "-o", help="Run directory (created or resumed)."),
    set_: list[str] = SET_OPT,
    force: bool = typer.Option(False, help="Reuse a run directory made by another config."),
    threads: Optional[int] = THREADS_OPT,
) -> None:
    """Phases 0-1 only: teacher contexts and the shared, enriched tree (no scoring).

    Writes OUT/config.yaml, OUT/provenance.json and the tree tables in OUT/tables/; score
    teachers on it later with 'distillscope score OUT --teacher NAME'."""
    _threads(threads)
    try:
        _run(_load(config, set_), out, force=force, report=False, score=False)
        console.print(f"next: distillscope score {out} --teacher NAME [--mode MODE]",
                      highlight=False, markup=False)
    except _errors() as err:
        _fail(err)


@app.command()
def score(
    run_dir: Path = typer.Argument(..., help="A finished (or rolled-out) run."),
    teacher: str = typer.Option(..., help="Teacher name: a new one (give --mode), or one of "
                                "the run's config that is not scored yet."),
    mode: Optional[str] = typer.Option(None, help="Prompt layout of a new teacher: "
                                       + ", ".join(TEACHER_MODES) + "."),
    model: Optional[str] = typer.Option(None, help="Model id/path (needed by --mode external)."),
    backend: str = typer.Option("hf", help="Backend of --model: hf, vllm or toy."),
    report: bool = typer.Option(True, help="Rewrite RUN_DIR/report/ when done."),
    threads: Optional[int] = THREADS_OPT,
) -> None:
    """Add a teacher to a run using the stored tree: no new rollouts.

    Appends the teacher's rows to RUN_DIR/tables/nodes and /distributions and (unless
    --no-report) rewrites RUN_DIR/report/. A teacher that is already scored is kept as is."""
    from distillscope import pipeline
    from distillscope.store import RunStore

    _threads(threads)
    try:
        _check_run_dir(run_dir)
        store = RunStore(run_dir)
        cfg = store.load_config()
        known = {t.name: t for t in cfg.teachers}
        if teacher not in known:
            if mode is None:
                raise ConfigError(f"teacher '{teacher}' is not in {run_dir}; give --mode "
                                  f"({', '.join(TEACHER_MODES)}) and --model for an external "
                                  "teacher")
            spec = _teacher_spec(teacher, mode, model, backend)
            cfg = cfg.model_copy(update={"teachers": [*cfg.teachers, spec]})
        elif mode is not None or model is not None:
            # a name already in the run means that teacher: another mode or model is refused
            have = known[teacher]
            asked = _teacher_spec(teacher, mode or have.mode, model, backend)
            same_model = model is None or (have.model is not None and asked.model is not None
                                           and (have.model.model, have.model.backend)
                                           == (asked.model.model, asked.model.backend))
            if asked.mode != have.mode or not same_model:
                where = f"mode '{have.mode}'" + (
                    f", model '{have.model.model}' ({have.model.backend})" if have.model else "")
                raise ConfigError(f"teacher '{teacher}' is already in {run_dir} with {where}; "
                                  "choose another --teacher name for another teacher")
        before = _state(run_dir)
        already = teacher in before[1].get("teachers_scored", [])
        pipeline.run(cfg, run_dir, reporter=_reporter(), teachers_only=[teacher],
                     no_new_rollouts=True)
        if already and _state(run_dir)[0] == before[0]:
            console.print(f"teacher '{teacher}' was already scored in {run_dir}: nothing was "
                          "recomputed", highlight=False)
        else:
            console.print(f"scored teacher '{teacher}' on the stored tree of {run_dir}; "
                          f"no new rollouts (run total {_rollouts(_state(run_dir)[1])})",
                          highlight=False)
        if report:
            _print_ranking(_write_report(run_dir), run_dir)
    except _errors() as err:
        _fail(err)


@app.command()
def screen(
    config: Path = CONFIG_ARG,
    out: Path = typer.Option(..., "--out", "-o", help="Run directory; tables go to OUT/screen/."),
    set_: list[str] = SET_OPT,
) -> None:
    """Phase 0 screening: pass rate per context variant, difficulty bins (tables 7-9).

    Prints the tables and writes them to OUT/screen/ as CSV and Markdown."""
    from distillscope.pipeline import screen_run

    try:
        cfg = _load(config, set_)
        _check_out(out)
        result = screen_run(cfg, out, reporter=_reporter())
        for name, table in result.tables.items():
            Console().print(f"[bold]{name}[/]\n{table.to_string(index=False)}\n")
        console.print(f"tables: [bold]{out / 'screen'}[/]")
    except _errors() as err:
        _fail(err)


@app.command()
def report(
    run_dir: Path = RUN_DIR_ARG,
    seed: int = typer.Option(0, help="Seed of the bootstrap and permutation draws."),
    method: str = typer.Option("gkd", help=f"Gradient the report ranks by: {METHODS}."),
    min_sr_range: Optional[float] = MIN_SR_OPT,
) -> None:
    """Write summary.json, CSV/Markdown tables, PNG plots and report.html into RUN_DIR/report.

    Also prints the teacher ranking (the same numbers as the report's table 1)."""
    try:
        _check_run_dir(run_dir)
        if method not in ("gkd", "sampled", "minillm", "drgrpo"):
            raise ConfigError(f"--method must be one of {METHODS}; got '{method}'")
        _print_ranking(_write_report(run_dir, seed=seed, method=method,
                                     min_sr_range=min_sr_range), run_dir, method)
    except (*_errors(), ValueError) as err:
        _fail(err)


@app.command()
def show(
    run_dir: Path = RUN_DIR_ARG,
    question: str = typer.Option(..., help="Question id, or its 0-based index in the run."),
    path: int = typer.Option(..., help="Path id within the question (the report lists them)."),
    teacher: Optional[str] = typer.Option(None, help="Teacher whose alignment colours the "
                                          "tokens (default: the best-ranked)."),
    method: str = typer.Option("gkd", help=f"Gradient compared with the ideal: {METHODS}."),
    min_sr_range: Optional[float] = MIN_SR_OPT,
    tree: bool = typer.Option(False, "--tree", help="Show the path's generation tree."),
) -> None:
    """One representative path, token by token, coloured by alignment, in the terminal.

    A table of the path's decision points follows: S_u children with P_hat, visits, P_theta
    and P_te."""
    from distillscope.show import render_path

    try:
        _check_run_dir(run_dir)
        render_path(run_dir, question, path, teacher=teacher, console=Console(), method=method,
                    min_sr_range=min_sr_range, tree=tree)
    except (*_errors(), KeyError, ValueError) as err:
        _fail(err)


@app.command("export-weights")
def export_weights(
    run_dir: Path = RUN_DIR_ARG,
    teacher: str = typer.Option(..., help="Teacher whose alignment sets the weights."),
    out: Path = typer.Option(..., "--out", "-o", help="FILE.parquet or FILE.jsonl (one row per "
                             "token of every representative path)."),
    method: str = typer.Option("gkd", help=f"Gradient compared with the ideal: {METHODS}."),
    threshold: float = typer.Option(0.0, help="Weight 0 where alignment <= threshold, 1 above."),
    fill: float = typer.Option(1.0, help="Weight where alignment is unknown (not a decision "
                               "point, or undefined)."),
    min_sr_range: Optional[float] = MIN_SR_OPT,
) -> None:
    """Per-token alignment and a suggested distillation weight, for a trainer.

    Columns: qid, path_id, depth, token_id, token, correct, is_decision, align, weight."""
    from distillscope.export import export_weights as _export

    try:
        _check_run_dir(run_dir)
        path = _export(run_dir, teacher, out, method=method, threshold=threshold, fill=fill,
                       min_sr_range=min_sr_range)
        console.print(f"wrote {path}: {_weights_summary(path)}", highlight=False)
    except (*_errors(), KeyError, ValueError) as err:
        _fail(err)


def _weights_summary(path: Path) -> str:
    import pandas as pd

    df = (pd.read_json(path, lines=True) if path.suffix.lower() == ".jsonl"
          else pd.read_parquet(path))
    if df.empty:
        return "0 tokens (the run has no representative path)"
    n_paths = len(df[["qid", "path_id"]].drop_duplicates())
    known = int(df["align"].notna().sum())
    return (f"{len(df):,} tokens of {n_paths} paths; {known:,} with a defined alignment, "
            f"{int((df['weight'] == 0).sum()):,} weighted 0")


app.command("compare")(compare_command)


@app.command()
def quickstart(
    out: Path = typer.Option(Path("runs/quickstart"), "--out", "-o", help="Run directory."),
    force: bool = typer.Option(False, help="Reuse a run directory made by another config."),
    threads: Optional[int] = THREADS_OPT,
) -> None:
    """The whole pipeline on CPU with the bundled SmolLM2-135M and bundled questions.

    Writes a run directory (default runs/quickstart) with its report in OUT/report/."""
    from distillscope.presets import quickstart_config

    _threads(threads)
    try:
        html = _run(quickstart_config(), out, force=force, report=True)
        if html is not None:
            _print_ranking(html, out)
        console.print(f"[bold green]done[/]: open {out / 'report' / 'report.html'}")
    except _errors() as err:
        _fail(err)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: rerun the same command to resume[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
