"""The command line: a small surface that fills a full RunConfig and calls the library.

    distillscope run CONFIG --out DIR        screen-free pipeline: contexts, tree, scores, report
    distillscope rollout CONFIG --out DIR    phases 0-1 only (the shared tree)
    distillscope score RUN_DIR --teacher T   add a teacher, no new rollouts
    distillscope screen CONFIG --out DIR     pass rates per context variant (tables 7-9)
    distillscope report RUN_DIR              tables, plots, report.html
    distillscope show RUN_DIR --question Q --path P
    distillscope export-weights RUN_DIR --teacher T --out FILE
    distillscope quickstart                  the whole pipeline on CPU with the bundled model

Errors the user can fix (a bad config or --set, a missing run, an unknown name) end with one
line that names the problem and exit code 2, not a traceback. Every command that computes says
what it did: a resumed run says what it reused, and the files it wrote are named.
"""

from __future__ import annotations

import functools
import math
import sys
from pathlib import Path
from typing import Any, Optional

import typer
import yaml
from rich.console import Console

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

    from distillscope.report.data import visible

    msg = err.args[0] if isinstance(err, KeyError) and err.args else err
    text = " ".join(visible(str(msg)).split("\n"))  # one line, control characters visible
    # never parsed as markup; soft_wrap: one line however narrow the terminal or log
    console.print(Text.assemble(("error: ", "bold red"), text), soft_wrap=True)
    raise typer.Exit(2)


INTERRUPTED = ("interrupted: committed work is kept; rerun the same command to resume "
               "(the previous report, if any, is unchanged)")


def _command(fn):
    """A CLI command: a user error is one line and exit 2; Ctrl-C says how to resume (130).

    typer turns a KeyboardInterrupt that leaves the command into a bare exit before `main`
    could print anything, so it is handled here, inside the command."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            console.print(INTERRUPTED, style="yellow", markup=False, highlight=False)
            raise typer.Exit(130) from None
        except _errors() as err:
            _fail(err)

    return wrapper


# ---------------------------------------------------------------------------------------------
# Configuration from the command line


def _overrides(items: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE (dotted key), got {item!r}")
        k, v = item.split("=", 1)
        if not k.strip():
            raise ConfigError(f"--set {item!r}: the key before '=' is empty; give a dotted "
                              "field name, e.g. --set tree.G=50")
        try:
            out[k.strip()] = yaml.safe_load(v)
        except yaml.YAMLError as err:
            first = str(err).splitlines()[0]
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({first}); quote a "
                              "string, e.g. --set 'name=\"[1\"'") from None
    return out


def _load(config: Path, items: list[str]) -> RunConfig:
    return load_config(config, _overrides(items))


def _path(value: str, what: str) -> Path:
    """A path option or argument; an empty one is an error (Path('') would be the CWD)."""
    if not str(value).strip():
        raise ConfigError(f"{what} is empty: give a directory")
    return Path(value)


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a directory (a new one, or a run to "
                          "resume)")


def _check_run_dir(run_dir: Path | str) -> Path:
    from distillscope.store import StoreError

    if not str(run_dir).strip():
        raise ConfigError("RUN_DIR is empty: give a run directory")
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    if not run_dir.is_dir():
        raise StoreError(f"{run_dir} is a file, not a run directory")
    if not (run_dir / "config.yaml").is_file():
        raise StoreError(f"{run_dir} is not a distillscope run (no config.yaml); make one with "
                         f"'distillscope run CONFIG --out {run_dir}'")
    return run_dir


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
    if n is not None and n < 1:
        raise ConfigError(f"--threads must be a positive number of threads, got {n}")
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


TRUNCATED_WARN = 0.10  # warn when more than this fraction of rollouts hit max_new_tokens


def _warn_truncated(run_dir: Path) -> None:
    """A run whose rollouts mostly stop at sampling.max_new_tokens grades cut-off answers: say
    so (the fraction is also in summary.json and the report header)."""
    from distillscope.report import truncated_rollouts
    from distillscope.store import RunStore

    n, k = truncated_rollouts(RunStore(run_dir))
    if n and k / n > TRUNCATED_WARN:
        console.print(f"warning: {k:,} of {n:,} rollouts ({k / n:.0%}) stopped at "
                      "sampling.max_new_tokens before the model ended them: their answers are "
                      "cut off and graded as such; raise sampling.max_new_tokens",
                      style="yellow", markup=False, highlight=False)


def _say_damage(run_dir: Path) -> None:
    """Units whose files no longer match their markers are redone: one line each."""
    from distillscope.store import RunStore

    store = RunStore(run_dir)
    if store.exists():
        for line in store.damage_report():
            console.print(f"warning: {line}: it will be recomputed", style="yellow",
                          markup=False, highlight=False)


def _remote_code_models(cfg: RunConfig) -> list[str]:
    specs: list[tuple[str, Optional[ModelSpec]]] = [("student", cfg.student),
                                                    ("context.summarizer",
                                                     cfg.context.summarizer)]
    for t in cfg.teachers:
        specs += [(f"teacher '{t.name}'", t.model), (f"teacher '{t.name}' source", t.source)]
    return [f"{where} ({spec.model})" for where, spec in specs
            if spec is not None and spec.trust_remote_code]


def _check_remote_code(configs: list[RunConfig], allowed: bool, where: str) -> None:
    """trust_remote_code runs Python shipped with a checkpoint: a run directory someone sent
    (its config.yaml) or a config file must not turn it on by itself."""
    models = sorted({m for c in configs for m in _remote_code_models(c)})
    if models and not allowed:
        raise ConfigError(f"{where} sets trust_remote_code for {', '.join(models)}: loading it "
                          "runs Python code shipped with the checkpoint; pass "
                          "--trust-remote-code to allow it")


def _stored_config(out: Path) -> Optional[RunConfig]:
    from distillscope.store import RunStore

    store = RunStore(out)
    return store.load_config() if out.is_dir() and store.exists() else None


def _run(config: RunConfig, out: Path, *, force: bool, report: bool, score: bool = True,
         ray: Optional[str] = None, wait: bool = False,
         trust_remote_code: bool = False) -> Optional[Path]:
    from distillscope import pipeline
    from distillscope.store import run_lock

    _check_out(out)
    with run_lock(out, wait=wait):
        stored = _stored_config(out) if not force else None
        _check_remote_code([config] + ([stored] if stored else []), trust_remote_code,
                           "the configuration" if stored is None
                           else f"the configuration (with {out}/config.yaml)")
        _say_damage(out)
        before = _state(out)
        if ray is not None:
            from distillscope.distributed import run_on_ray

            run_on_ray(config, out, address=ray or None, reporter=_reporter(), force=force,
                       score=score)
        else:
            pipeline.run(config, out, reporter=_reporter(), force=force, score=score)
        _say_done(out, before, "run" if score else "shared tree")
        _warn_truncated(out)
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
    force: bool = typer.Option(False, help="Reuse a run directory made by another config."),
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
    force: bool = typer.Option(False, help="Reuse a run directory made by another config."),
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
    report: bool = typer.Option(True, help="Rewrite RUN_DIR/report/ when done."),
    threads: Optional[int] = THREADS_OPT,
    wait: bool = WAIT_OPT,
    trust_remote_code: bool = TRUST_OPT,
) -> None:
    """Add a teacher to a run using the stored tree: no new rollouts.

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
        if teacher not in known:
            if mode is None:
                raise ConfigError(f"teacher '{teacher}' is not in {run_path}; give --mode "
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
                raise ConfigError(f"teacher '{teacher}' is already in {run_path} with {where}; "
                                  "choose another --teacher name for another teacher")
        _check_remote_code([cfg], trust_remote_code, f"{run_path}/config.yaml")
        _say_damage(run_path)
        before = _state(run_path)
        already = teacher in before[1].get("teachers_scored", [])
        pipeline.run(cfg, run_path, reporter=_reporter(), teachers_only=[teacher],
                     no_new_rollouts=True)
        if already and _state(run_path)[0] == before[0]:
            console.print(f"teacher '{teacher}' was already scored in {run_path}: nothing was "
                          "recomputed", highlight=False, markup=False)
        else:
            console.print(f"scored teacher '{teacher}' on the stored tree of {run_path}; "
                          f"no new rollouts (run total {_rollouts(_state(run_path)[1])})",
                          highlight=False, markup=False)
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
    from distillscope.store import run_lock

    cfg = _load(config, set_)
    out_dir = _path(out, "--out")
    _check_out(out_dir)
    with run_lock(out_dir, wait=wait):
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
    seed: int = typer.Option(0, help="Seed of the bootstrap and permutation draws."),
    method: str = typer.Option("gkd", help=f"Gradient the report ranks by: {METHODS}."),
) -> None:
    """Write summary.json, CSV/Markdown tables, PNG plots and report.html into RUN_DIR/report.

    Also prints the teacher ranking (the same numbers as the report's table 1)."""
    run_path = _check_run_dir(run_dir)
    if method not in ("gkd", "sampled", "minillm", "drgrpo"):
        raise ConfigError(f"--method must be one of {METHODS}; got '{method}'")
    html = _write_report(run_path, seed=seed, method=method)
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
) -> None:
    """One representative path, token by token, coloured by alignment, in the terminal.

    A table of the path's decision points follows: S_u children with P_hat, visits, P_theta
    and P_te."""
    from distillscope.show import render_path

    try:
        render_path(_check_run_dir(run_dir), question, path, teacher=teacher, console=Console(),
                    method=method)
    except (KeyError, ValueError) as err:
        _fail(err)


@app.command("export-weights")
@_command
def export_weights(
    run_dir: str = RUN_DIR_ARG,
    teacher: str = typer.Option(..., help="Teacher whose alignment sets the weights."),
    out: str = typer.Option(..., "--out", "-o", help="FILE.parquet or FILE.jsonl (one row per "
                            "token of every representative path)."),
    method: str = typer.Option("gkd", help=f"Gradient compared with the ideal: {METHODS}."),
    threshold: float = typer.Option(0.0, help="Weight 0 where alignment <= threshold, 1 above."),
    fill: float = typer.Option(1.0, help="Weight where alignment is unknown (not a decision "
                               "point, or undefined)."),
) -> None:
    """Per-token alignment and a suggested distillation weight, for a trainer.

    Columns: qid, path_id, depth, token_id, token, correct, is_decision, align, weight."""
    from distillscope.export import export_weights as _export

    try:
        run_path = _check_run_dir(run_dir)
        if not str(out).strip():
            raise ConfigError("--out is empty: give FILE.parquet or FILE.jsonl")
        path = _export(run_path, teacher, Path(out), method=method, threshold=threshold,
                       fill=fill)
        console.print(f"wrote {path}: {_weights_summary(path)}", highlight=False, markup=False)
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


@app.command()
@_command
def quickstart(
    out: str = typer.Option("runs/quickstart", "--out", "-o", help="Run directory."),
    force: bool = typer.Option(False, help="Reuse a run directory made by another config."),
    threads: Optional[int] = THREADS_OPT,
    wait: bool = WAIT_OPT,
) -> None:
    """The whole pipeline on CPU with the bundled SmolLM2-135M and bundled questions.

    Writes a run directory (default runs/quickstart) with its report in OUT/report/."""
    from distillscope.presets import quickstart_config

    _threads(threads)
    out_dir = _path(out, "--out")
    html = _run(quickstart_config(), out_dir, force=force, report=True, wait=wait)
    if html is not None:
        _print_ranking(html, out_dir)
    console.print(f"[bold green]done[/]: open {out_dir / 'report' / 'report.html'}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # outside a command (while parsing the options)
        console.print(INTERRUPTED, style="yellow", markup=False, highlight=False)
        sys.exit(130)


if __name__ == "__main__":
    main()
