"""The `compare` command and the shared `--min-sr-range` option (registered by cli.py).

    distillscope compare RUN_DIR RUN_DIR... --out DIR [--label L ...] [--min-sr-range T]

Kept apart from cli.py so that file stays small; heavy imports happen inside the command.
Errors the user can fix end with one 'error: ...' line and exit code 2, as in cli.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from distillscope.cliutil import _command, _fail

MIN_SR_OPT = typer.Option(None, "--min-sr-range", help="High-stakes nodes only: recompute "
                          "everything on decision points with SR range >= this (0-1).")
TEST_METHODS = ("gkd", "sampled", "minillm")


def _check(run_dirs: list[Path], out: Path, labels: list[str], method: str) -> None:
    """Every input, before any work: a user error is a ValueError (or the run-directory
    check's error) naming the input."""
    from distillscope.cliutil import _check_run_dir
    from distillscope.compare import check_labels
    from distillscope.report.compare_page import check_out

    if len(run_dirs) < 2:
        raise ValueError("compare needs at least two run directories")
    seen: dict[Path, Path] = {}
    for d in run_dirs:
        _check_run_dir(d)
        real = d.resolve()
        if real in seen:
            same = "" if str(seen[real]) == str(d) else f" (as {seen[real]} and {d})"
            raise ValueError(f"run directory {d} is given twice{same}: each setting must be "
                             "a different run (a run pooled with itself counts its questions "
                             "twice)")
        seen[real] = d
    check_out(out, run_dirs)
    if labels:
        check_labels(labels, len(run_dirs))
    if method not in TEST_METHODS:
        raise ValueError(f"--method must be gkd, sampled or minillm; got '{method}'")


@_command  # Ctrl-C: one line, exit 130
def compare_command(
    run_dirs: list[Path] = typer.Argument(..., help="Two or more run directories (settings)."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for compare.html, tables/, "
                             "figures/ and compare.json: a new or empty one, or an earlier "
                             "compare output (replaced; other files in it are kept)."),
    label: list[str] = typer.Option([], "--label", help="Setting label per run, in order "
                                    "(default: the run's student and task)."),
    seed: int = typer.Option(0, min=0, help="Seed of the bootstrap and permutation draws."),
    method: str = typer.Option("gkd", help="Method of the headline test: gkd, sampled or "
                               "minillm (table 1 is written for every method)."),
    min_sr_range: Optional[float] = MIN_SR_OPT,
) -> None:
    """Settings side by side: table 1 per method, correct vs incorrect, table 5, and a test of
    whether the best teacher depends on the setting (teacher x setting interaction).

    Writes OUT/compare.html, OUT/compare.json, OUT/tables/*.csv|md, OUT/figures/*.png and
    prints the verdict in words. OUT must be new, empty or an earlier compare output, outside
    the runs; each run is given once."""
    err_console = Console(stderr=True)
    try:
        _check(run_dirs, out, label, method)
        from distillscope.report.compare_page import write_compare
        from distillscope.report.terminal import compare_words

        path = write_compare(run_dirs, out, labels=label or None, seed=seed, method=method,
                             min_sr_range=min_sr_range)
    except (ValueError, OSError, KeyError, RuntimeError) as err:  # StoreError is a RuntimeError
        _fail(err)  # one line, control characters made visible; exit 2
    summary = json.loads((out / "compare.json").read_text(encoding="utf-8"))
    err_console.print(f"compare: {path} (compare.json, tables/, figures/ beside it)",
                      markup=False, highlight=False)
    for i in range(int(summary.get("compare/settings") or 0)):
        if summary.get(f"setting/{i}/incomplete"):
            err_console.print(f"warning: {summary[f'setting/{i}/run_dir']} is incomplete: "
                              f"{summary[f'setting/{i}/incomplete']}", style="yellow",
                              markup=False, highlight=False)
    for key in sorted(k for k in summary if k.startswith("teacher/") and k.endswith("/differs")):
        err_console.print(f"warning: {summary[key]}", style="yellow", markup=False,
                          highlight=False)
    for line in compare_words(summary, method):
        Console().print(line, markup=False, highlight=False)
