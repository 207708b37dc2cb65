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

import contextlib
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from distillscope.cli_compare import MIN_SR_OPT, compare_command
from distillscope.cliutil import (  # noqa: F401  (shared with the commands below)
    INTERRUPTED,
    METHODS,
    TRUNCATED_WARN,
    _check_out,
    _check_remote_code,
    _check_run_dir,
    _command,
    _errors,
    _fail,
    _load,
    _overrides,
    _path,
    _print_ranking,
    _remote_code_models,
    _reporter,
    _rollouts,
    _run,
    _say_damage,
    _say_done,
    _state,
    _stored_config,
    _teacher_spec,
    _threads,
    _warn_incomplete,
    _warn_truncated,
    _write_report,
    console,
    first_start,
    keep_config_on_failure,
)
from distillscope.config import (
    TEACHER_MODES,
    ConfigError,
)

RUN_DIR_FILES = ("A run directory holds config.yaml, provenance.json and Parquet tables "
                 "(tables/); 'report' adds RUN_DIR/report/: report.html, summary.json, "
                 "tables/*.csv and *.md, figures/*.png.")

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Per-token diagnostics for on-policy distillation. " + RUN_DIR_FILES)


CONFIG_ARG = typer.Argument(..., help="YAML run configuration (presets in configs/).")
SET_OPT = typer.Option([], "--set", help="Override a config field with a dotted key, e.g. "
                       "--set tree.G=50 (repeatable; values parsed as YAML).")
THREADS_OPT = typer.Option(None, help="torch CPU threads (1 is often fastest on a shared "
                           "machine).")
RUN_DIR_ARG = typer.Argument(..., help="A run directory made by 'distillscope run'.")
WAIT_OPT = typer.Option(False, "--wait", help="If another distillscope process is writing "
                        "the run directory, wait for it instead of exiting.")
TRUST_OPT = typer.Option(False, "--trust-remote-code", help="Allow models whose config sets "
                         "trust_remote_code (runs Python shipped with the checkpoint).")


@app.command()
@_command
def run(
    config: Path = CONFIG_ARG,
    out: str = typer.Option(..., "--out", "-o", help="Run directory: created, or resumed if "
                            "it holds a run of the same config."),
    set_: list[str] = SET_OPT,
    force: bool = typer.Option(False, help="Apply a changed scoring.* or tree.n_sig to a run "
                               "directory (its scores are recomputed; other changes are "
                               "refused by name)."),
    report: bool = typer.Option(True, help="Write OUT/report/ when done."),
    ray: Optional[str] = typer.Option(None, help="Run on Ray ('' = local cluster, or ADDRESS)."),
    threads: Optional[int] = THREADS_OPT,
    wait: bool = WAIT_OPT,
    trust_remote_code: bool = TRUST_OPT,
) -> None:
    """The whole pipeline: teacher contexts, shared tree, per-teacher scores, report.

    Writes OUT/config.yaml, OUT/provenance.json, OUT/tables/*.parquet and (unless --no-report)
    OUT/report/. Rerunning the same command resumes and says what it reused."""
    _threads(threads)
    out_dir = _path(out, "--out")
    html = _run(_load(config, set_), out_dir, force=force, report=report, ray=ray, wait=wait,
                trust_remote_code=trust_remote_code)
    if html is not None:
        _print_ranking(html, out_dir)


@app.command()
@_command
def rollout(
    config: Path = CONFIG_ARG,
    out: str = typer.Option(..., "--out", "-o", help="Run directory (created or resumed)."),
    set_: list[str] = SET_OPT,
    force: bool = typer.Option(False, help="Apply a changed scoring.* or tree.n_sig to a run "
                               "directory (its scores are recomputed; other changes are "
                               "refused by name)."),
    threads: Optional[int] = THREADS_OPT,
    wait: bool = WAIT_OPT,
    trust_remote_code: bool = TRUST_OPT,
) -> None:
    """Phases 0-1 only: teacher contexts and the shared, enriched tree (no scoring).

    Writes OUT/config.yaml, OUT/provenance.json and the tree tables in OUT/tables/; score
    teachers on it later with 'distillscope score OUT --teacher NAME'."""
    _threads(threads)
    out_dir = _path(out, "--out")
    _run(_load(config, set_), out_dir, force=force, report=False, score=False, wait=wait,
         trust_remote_code=trust_remote_code)
    console.print(f"next: distillscope score {out_dir} --teacher NAME [--mode MODE]",
                  highlight=False, markup=False)


@app.command()
@_command
def score(
    run_dir: str = typer.Argument(..., help="A finished (or rolled-out) run."),
    teacher: str = typer.Option(..., help="Teacher name: a new one (give --mode), or one of "
                                "the run's config that is not scored yet."),
    mode: Optional[str] = typer.Option(None, help="Prompt layout of a new teacher: "
                                       + ", ".join(TEACHER_MODES) + "."),
    model: Optional[str] = typer.Option(None, help="Model id/path (needed by --mode external)."),
    backend: str = typer.Option("hf", help="Backend of --model: hf, vllm or toy."),
    source: Optional[str] = typer.Option(None, help="Model that writes the demonstration "
                                         "(needed by --mode self-1c-src)."),
    source_backend: str = typer.Option("hf", help="Backend of --source: hf, vllm or toy."),
    rollouts: bool = typer.Option(True, "--rollouts/--no-rollouts", help="Enrich the new "
                                  "teacher's own top tokens with targeted rollouts, as a run "
                                  "with it from the start would (default); --no-rollouts "
                                  "scores it on the tree as it is (borrowed enrichment)."),
    report: bool = typer.Option(True, help="Rewrite RUN_DIR/report/ when done."),
    threads: Optional[int] = THREADS_OPT,
    wait: bool = WAIT_OPT,
    trust_remote_code: bool = TRUST_OPT,
) -> None:
    """Add a teacher to a finished run.

    By default the teacher's own top tokens (per depth window, as in the run) get targeted
    rollouts first, reusing every rollout already in the tree; where the tree grows, every
    teacher is rescored there, so all scores stand on the same tree. --no-rollouts samples
    nothing and scores the teacher on the tree enriched for the others (the report says so).
    Appends the teacher's rows to RUN_DIR/tables/nodes and /distributions and (unless
    --no-report) rewrites RUN_DIR/report/. A teacher that is already scored is kept as is."""
    from distillscope import pipeline
    from distillscope.config import check_teacher_name
    from distillscope.store import RunStore, run_lock

    _threads(threads)
    run_path = _check_run_dir(run_dir)
    try:
        check_teacher_name(teacher)
    except ValueError as err:
        raise ConfigError(f"--teacher: {err}") from None
    with run_lock(run_path, wait=wait):
        store = RunStore(run_path)
        cfg = store.load_config()
        known = {t.name: t for t in cfg.teachers}
        alike = [n for n in known if n.lower() == teacher.lower() and n != teacher]
        if alike:
            raise ConfigError(f"--teacher '{teacher}': {run_path} has teacher '{alike[0]}'; "
                              "teacher names must differ in more than letter case")
        if teacher not in known:
            if mode is None:
                raise ConfigError(f"teacher '{teacher}' is not in {run_path}; give --mode "
                                  f"({', '.join(TEACHER_MODES)}) and --model for an external "
                                  "teacher")
            spec = _teacher_spec(teacher, mode, model, backend, source, source_backend)
            cfg = cfg.model_copy(update={"teachers": [*cfg.teachers, spec]})
        elif mode is not None or model is not None:
            # a name already in the run means that teacher: another mode or model is refused
            have = known[teacher]
            asked = _teacher_spec(teacher, mode or have.mode, model, backend,
                                  source if (mode or have.mode) == "self-1c-src" else None,
                                  source_backend)
            same_model = model is None or (have.model is not None and asked.model is not None
                                           and (have.model.model, have.model.backend)
                                           == (asked.model.model, asked.model.backend))
            if asked.mode != have.mode or not same_model:
                where = f"mode '{have.mode}'" + (
                    f", model '{have.model.model}' ({have.model.backend})" if have.model else "")
                raise ConfigError(f"teacher '{teacher}' is already in {run_path} with {where}; "
                                  "choose another --teacher name for another teacher")
        _check_remote_code([cfg], trust_remote_code, f"{run_path}/config.yaml")
        _say_damage(run_path)
        before = _state(run_path)
        already = teacher in before[1].get("teachers_scored", [])
        n_before = store.count_rows("rollouts")
        regrown = int(before[1].get("questions_regrown", 0))
        own = before[1].get("enrichment", {}).get(teacher) == "own"
        with keep_config_on_failure(store, teacher) if teacher not in known \
                else contextlib.nullcontext():
            if rollouts and not (already and own):
                pipeline.run(cfg, run_path, reporter=_reporter(), enrich=[teacher])
            elif rollouts:
                pipeline.run(cfg, run_path, reporter=_reporter())  # resume: nothing to enrich
            else:
                pipeline.run(cfg, run_path, reporter=_reporter(), teachers_only=[teacher],
                             no_new_rollouts=True)
        after = _state(run_path)
        new = RunStore(run_path).count_rows("rollouts") - n_before
        if already and after[0] == before[0]:
            console.print(f"teacher '{teacher}' was already scored in {run_path}: nothing was "
                          "recomputed", highlight=False, markup=False)
        elif not rollouts:
            console.print(f"scored teacher '{teacher}' on the stored tree of {run_path}; "
                          f"no new rollouts, its own top tokens not enriched (run total "
                          f"{_rollouts(after[1])})", highlight=False, markup=False)
        else:
            grown = int(after[1].get("questions_regrown", 0)) - regrown
            console.print(f"scored teacher '{teacher}' in {run_path}: {new:,} targeted "
                          f"rollout(s) at its own top tokens; {grown} question(s) whose tree "
                          f"grew were rescored for every teacher (run total "
                          f"{_rollouts(after[1])})", highlight=False, markup=False)
        if report:
            _print_ranking(_write_report(run_path), run_path)


@app.command()
@_command
def screen(
    config: Path = CONFIG_ARG,
    out: str = typer.Option(..., "--out", "-o", help="Run directory; tables go to OUT/screen/."),
    set_: list[str] = SET_OPT,
    wait: bool = WAIT_OPT,
    trust_remote_code: bool = TRUST_OPT,
) -> None:
    """Phase 0 screening: pass rate per context variant, difficulty bins (tables 7-9).

    Prints the tables and writes them to OUT/screen/ as CSV and Markdown."""
    from distillscope.pipeline import screen_run

    cfg = _load(config, set_)
    out_dir = _path(out, "--out")
    _check_out(out_dir)
    with first_start(out_dir, wait=wait):
        stored = _stored_config(out_dir)
        _check_remote_code([cfg] + ([stored] if stored else []), trust_remote_code,
                           "the configuration")
        result = screen_run(cfg, out_dir, reporter=_reporter())
    for name, table in result.tables.items():
        Console().print(f"[bold]{name}[/]\n{table.to_string(index=False)}\n")
    console.print(f"tables: [bold]{out_dir / 'screen'}[/]")


@app.command()
@_command
def report(
    run_dir: str = RUN_DIR_ARG,
    seed: int = typer.Option(0, min=0, help="Seed of the bootstrap and permutation draws."),
    method: str = typer.Option("gkd", help=f"Gradient the report ranks by: {METHODS}."),
    min_sr_range: Optional[float] = MIN_SR_OPT,
) -> None:
    """Write summary.json, CSV/Markdown tables, PNG plots and report.html into RUN_DIR/report.

    Also prints the teacher ranking (the same numbers as the report's table 1)."""
    run_path = _check_run_dir(run_dir)
    if method not in ("gkd", "sampled", "minillm", "drgrpo"):
        raise ConfigError(f"--method must be one of {METHODS}; got '{method}'")
    try:
        html = _write_report(run_path, seed=seed, method=method, min_sr_range=min_sr_range)
    except ValueError as err:  # e.g. --min-sr-range outside [0, 1]
        raise ConfigError(str(err)) from None
    _warn_truncated(run_path)
    _print_ranking(html, run_path, method)


@app.command()
@_command
def show(
    run_dir: str = RUN_DIR_ARG,
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
        run_path = _check_run_dir(run_dir)
        render_path(run_path, question, path, teacher=teacher, console=Console(),
                    method=method, min_sr_range=min_sr_range, tree=tree)
        _warn_incomplete(run_path)
    except (KeyError, ValueError) as err:
        _fail(err)


@app.command("export-weights")
@_command
def export_weights(
    run_dir: str = RUN_DIR_ARG,
    teacher: str = typer.Option(..., help="Teacher whose alignment sets the weights (any of "
                                "the run's teachers with --method drgrpo, which uses none)."),
    out: str = typer.Option(..., "--out", "-o", help="FILE.parquet or FILE.jsonl (one row per "
                            "token of every representative path). An existing FILE is "
                            "replaced only if it is an earlier export (or empty)."),
    method: str = typer.Option("gkd", help=f"Gradient compared with the ideal: {METHODS}."),
    threshold: float = typer.Option(0.0, help="In [-1, 1]: weight 0 where alignment (a "
                                    "cosine) <= threshold, 1 above."),
    fill: float = typer.Option(1.0, help="In [0, 1]: weight where alignment is unknown (not a "
                               "decision point, or undefined)."),
    min_sr_range: Optional[float] = MIN_SR_OPT,
) -> None:
    """Per-token alignment and a suggested distillation weight, for a trainer.

    Columns: qid, path_id, depth, token_id, token, correct, is_decision, align, weight.
    Dr. GRPO (--method drgrpo) uses no teacher: its weights are the same for every --teacher
    (a teacher-free baseline), and the command says so."""
    from distillscope.export import TEACHER_FREE
    from distillscope.export import export_weights as _export

    try:
        run_path = _check_run_dir(run_dir)
        if not str(out).strip():
            raise ConfigError("--out is empty: give FILE.parquet or FILE.jsonl")
        path = _export(run_path, teacher, Path(out), method=method, threshold=threshold,
                       fill=fill, min_sr_range=min_sr_range)
        console.print(f"wrote {path}: {_weights_summary(path)}", highlight=False, markup=False)
        if method in TEACHER_FREE:
            console.print(f"note: --method {method} uses no teacher: these weights are the "
                          "same for every --teacher", highlight=False, markup=False,
                          soft_wrap=True)
        _warn_incomplete(run_path)
    except (KeyError, ValueError) as err:
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
@_command
def quickstart(
    out: str = typer.Option("runs/quickstart", "--out", "-o", help="Directory for the two "
                            "settings' runs (OUT/yesno, OUT/choice) and their comparison "
                            "(OUT/compare)."),
    force: bool = typer.Option(False, help="Apply a changed scoring.* or tree.n_sig to a run "
                               "directory (its scores are recomputed; other changes are "
                               "refused by name)."),
    threads: Optional[int] = THREADS_OPT,
    wait: bool = WAIT_OPT,
) -> None:
    """The whole pipeline on CPU with the bundled SmolLM2-135M, on two settings (yes/no and
    multiple-choice questions), then `compare` over the two.

    Writes OUT/yesno and OUT/choice (run directories, each with OUT/.../report/) and
    OUT/compare/compare.html; rerunning resumes."""
    from distillscope.cli_quickstart import run_quickstart

    run_quickstart(_path(out, "--out"), force=force, threads=threads, wait=wait)


def main() -> None:
    """The console script. A usage error (an option value that does not parse, a missing
    argument, an unknown command) is one line naming it, exit 2, like every other error; no
    arguments print the help. (typer's own exceptions: its public base `TyperException`.)"""
    try:
        rv = app(standalone_mode=False)
    except typer.TyperException as err:
        if type(err).__name__ == "NoArgsIsHelpError":
            err.show()  # the help text itself
        else:
            ctx = getattr(err, "ctx", None)
            where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            msg = err.format_message() if hasattr(err, "format_message") else str(err)
            with contextlib.suppress(typer.Exit):  # it prints, then exits 2
                _fail(ConfigError(f"{msg}{where}"))
        sys.exit(getattr(err, "exit_code", 2))
    except typer.Abort:
        sys.exit(1)
    except KeyboardInterrupt:  # outside a command (while parsing the options)
        console.print(INTERRUPTED, style="yellow", markup=False, highlight=False)
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
