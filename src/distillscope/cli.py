"""The command line: a small surface that fills a full RunConfig and calls the library.

    distillscope run CONFIG --out DIR        screen-free pipeline: contexts, tree, scores, report
    distillscope rollout CONFIG --out DIR    phases 0-1 only (the shared tree)
    distillscope score RUN_DIR --teacher T   add or (re)score a teacher, no new rollouts
    distillscope screen CONFIG --out DIR     pass rates per context variant (tables 7-9)
    distillscope report RUN_DIR              tables, plots, report.html
    distillscope show RUN_DIR --question Q --path P
    distillscope export-weights RUN_DIR --teacher T --out FILE
    distillscope quickstart                  the whole pipeline on CPU with the bundled model
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
import yaml
from rich.console import Console

from distillscope.config import ConfigError, ModelSpec, RunConfig, TeacherSpec, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Per-token diagnostics for on-policy distillation.")
console = Console(stderr=True)


def _errors() -> tuple[type[BaseException], ...]:
    from distillscope.models.base import ModelError
    from distillscope.store import StoreError
    from distillscope.tasks.base import TaskError

    return (ConfigError, StoreError, TaskError, ModelError, FileNotFoundError, ImportError)


def _fail(err: BaseException) -> None:
    console.print(f"[bold red]error:[/] {err}")
    raise typer.Exit(2)


def _overrides(items: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE (dotted key), got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def _threads(n: Optional[int]) -> None:
    """CPU threads for torch: on a machine shared with other jobs, 1 is often much faster
    (OpenMP threads spin while waiting for a core)."""
    if n:
        import torch

        torch.set_num_threads(n)


def _reporter():
    from distillscope.progress import RichReporter

    return RichReporter(console)


def _print_ranking(run_dir: Path) -> None:
    from rich.table import Table

    from distillscope import analysis
    from distillscope.store import RunStore

    nodes = RunStore(run_dir).read("nodes")
    if not len(nodes):
        console.print("[yellow]no decision points were found: no teacher ranking[/]")
        return
    rank = analysis.teacher_ranking(nodes, method="gkd")
    table = Table(title="Teacher ranking: mean GKD alignment with the ideal gradient\n"
                        "(95% CI: bootstrap over questions)")
    for col in ("rank", "teacher", "mean", "95% CI", "nodes", "questions", "beats next?"):
        table.add_column(col, justify="left" if col == "teacher" else "right", no_wrap=True)
    for r in rank.itertuples(index=False):
        table.add_row(str(r.rank), str(r.teacher), f"{r.mean:+.3f}",
                      f"[{r.ci_low:+.3f}, {r.ci_high:+.3f}]", str(r.n_nodes), str(r.n_questions),
                      "yes" if r.separated else "no")
    Console().print(table)


def _run(config: RunConfig, out: Path, *, force: bool, report: bool, score: bool = True,
         ray: Optional[str] = None) -> None:
    from distillscope import pipeline

    if ray is not None:
        from distillscope.distributed import run_on_ray

        run_on_ray(config, out, address=ray or None, reporter=_reporter(), force=force,
                   score=score)
    else:
        pipeline.run(config, out, reporter=_reporter(), force=force, score=score)
    if report and score:
        from distillscope.report import write_report

        path = write_report(out)
        console.print(f"report: [bold]{path}[/]")


# ---------------------------------------------------------------------------------------------
@app.command()
def run(
    config: Path = typer.Argument(..., help="YAML run configuration."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory (resumed if it exists)."),
    set_: list[str] = typer.Option([], "--set", help="Override a field: tree.G=50 (repeatable)."),
    force: bool = typer.Option(False, help="Reuse a run directory made by another config."),
    report: bool = typer.Option(True, help="Write the report when done."),
    ray: Optional[str] = typer.Option(None, help="Run on Ray ('' = local cluster, or ADDRESS)."),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads."),
) -> None:
    """Run the whole pipeline: teacher contexts, shared tree, per-teacher scores, report."""
    _threads(threads)
    try:
        cfg = load_config(config, _overrides(set_))
        _run(cfg, out, force=force, report=report, ray=ray)
        if report:
            _print_ranking(out)
    except _errors() as err:
        _fail(err)


@app.command()
def rollout(
    config: Path = typer.Argument(...),
    out: Path = typer.Option(..., "--out", "-o"),
    set_: list[str] = typer.Option([], "--set"),
    force: bool = typer.Option(False),
) -> None:
    """Phases 0-1 only: teacher contexts and the shared, enriched tree (no scoring)."""
    try:
        _run(load_config(config, _overrides(set_)), out, force=force, report=False, score=False)
    except _errors() as err:
        _fail(err)


@app.command()
def score(
    run_dir: Path = typer.Argument(..., help="A finished (or rolled-out) run."),
    teacher: str = typer.Option(..., help="Teacher name (new or already in the run)."),
    mode: Optional[str] = typer.Option(None, help="Teacher mode for a new teacher."),
    model: Optional[str] = typer.Option(None, help="Model id/path for an external teacher."),
    backend: str = typer.Option("hf", help="Backend of --model."),
    report: bool = typer.Option(True),
) -> None:
    """Add a teacher to a run (or rescore one) using the stored tree: no new rollouts."""
    from distillscope import pipeline
    from distillscope.store import RunStore

    try:
        store = RunStore(run_dir)
        cfg = store.load_config()
        known = {t.name: t for t in cfg.teachers}
        if teacher not in known:
            if mode is None:
                raise ConfigError(f"teacher '{teacher}' is not in {run_dir}; give --mode "
                                  f"(and --model for an external teacher)")
            spec = TeacherSpec(name=teacher, mode=mode,  # type: ignore[arg-type]
                               model=ModelSpec(backend=backend, model=model) if model else None)
            cfg = cfg.model_copy(update={"teachers": [*cfg.teachers, spec]})
        pipeline.run(cfg, run_dir, reporter=_reporter(), teachers_only=[teacher],
                     no_new_rollouts=True)
        if report:
            from distillscope.report import write_report

            console.print(f"report: [bold]{write_report(run_dir)}[/]")
    except (*_errors(), ValueError) as err:
        _fail(err)


@app.command()
def screen(
    config: Path = typer.Argument(...),
    out: Path = typer.Option(..., "--out", "-o"),
    set_: list[str] = typer.Option([], "--set"),
) -> None:
    """Phase 0 screening: pass rate per context variant, difficulty bins (tables 7-9)."""
    from distillscope.pipeline import screen_run

    try:
        result = screen_run(load_config(config, _overrides(set_)), out, reporter=_reporter())
        for name, table in result.tables.items():
            Console().print(f"[bold]{name}[/]\n{table.to_string(index=False)}\n")
        console.print(f"tables: [bold]{out / 'screen'}[/]")
    except _errors() as err:
        _fail(err)


@app.command()
def report(run_dir: Path = typer.Argument(...), seed: int = typer.Option(0)) -> None:
    """Write summary.json, CSV/Markdown tables, PNG plots and report.html into RUN_DIR/report."""
    from distillscope.report import write_report

    try:
        console.print(f"report: [bold]{write_report(run_dir, seed=seed)}[/]")
        _print_ranking(run_dir)
    except _errors() as err:
        _fail(err)


@app.command()
def show(
    run_dir: Path = typer.Argument(...),
    question: str = typer.Option(..., help="Question id (or its index in the run)."),
    path: int = typer.Option(..., help="Path id."),
    teacher: Optional[str] = typer.Option(None),
) -> None:
    """One representative path, token by token, coloured by alignment, in the terminal."""
    from distillscope.show import render_path

    try:
        render_path(run_dir, question, path, teacher=teacher, console=Console())
    except (*_errors(), KeyError, ValueError) as err:
        _fail(err)


@app.command("export-weights")
def export_weights(
    run_dir: Path = typer.Argument(...),
    teacher: str = typer.Option(...),
    out: Path = typer.Option(..., "--out", "-o", help="FILE.parquet or FILE.jsonl"),
    method: str = typer.Option("gkd"),
    threshold: float = typer.Option(0.0, help="Weight 0 where alignment <= threshold."),
) -> None:
    """Per-token alignment and a suggested distillation weight, for a trainer."""
    from distillscope.export import export_weights as _export

    try:
        console.print(f"wrote {_export(run_dir, teacher, out, method=method, threshold=threshold)}")
    except (*_errors(), KeyError, ValueError) as err:
        _fail(err)


@app.command()
def quickstart(
    out: Path = typer.Option(Path("runs/quickstart"), "--out", "-o"),
    force: bool = typer.Option(False),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads."),
) -> None:
    """The whole pipeline on CPU with the bundled SmolLM2-135M and bundled questions."""
    from distillscope.presets import quickstart_config

    _threads(threads)
    try:
        _run(quickstart_config(), out, force=force, report=True)
        _print_ranking(out)
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
