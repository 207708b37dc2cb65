"""What the CLI's commands share: one-line errors, `--set` overrides, run-directory checks, and
the messages printed after a run (state, ranking, warnings).

Library code never prints or reads argv; this module and `cli.py` do both.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
from pathlib import Path
from typing import Any, Optional

import typer
import yaml
from rich.console import Console

from distillscope.config import (
    ConfigError,
    ModelSpec,
    RunConfig,
    TeacherSpec,
    load_config,
)

console = Console(stderr=True)
METHODS = "gkd, sampled, minillm or drgrpo"


# ---------------------------------------------------------------------------------------------
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
    if str(value).startswith("~"):  # a quoted ~ reaches us as is; some readers expand it
        raise ConfigError(f"{what} {value} starts with '~', which the shell did not expand "
                          "(was it quoted?): give the path itself, e.g. $HOME/...")
    return Path(value)


def _check_out(out: Path) -> None:
    if out.is_symlink() and not out.exists():
        raise ConfigError(f"--out {out} is a broken symbolic link (to {os.readlink(out)}): "
                          "give a directory")
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


def _teacher_spec(teacher: str, mode: str, model: Optional[str], backend: str,
                  source: Optional[str] = None, source_backend: str = "hf") -> TeacherSpec:
    from pydantic import ValidationError

    try:
        return TeacherSpec(name=teacher, mode=mode,  # type: ignore[arg-type]
                           model=ModelSpec(backend=backend, model=model) if model else None,
                           source=(ModelSpec(backend=source_backend, model=source)
                                   if source else None))
    except ValidationError as err:
        msgs = []
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"])
            opt = {"mode": "--mode", "model": "--model", "model.backend": "--backend",
                   "source": "--source", "source.backend": "--source-backend"}.get(loc)
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

    from distillscope.report.terminal import in_words, ranking_table

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
    try:
        summary = json.loads((report_html.parent / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # the table above is the result; the words are a courtesy
        summary = {}
    for line in in_words(summary, method):
        out.print(line, markup=False, highlight=False)
    if undefined:
        console.print("undefined alignment at every decision point (a zero-norm gradient, "
                      f"e.g. a teacher equal to the student): {', '.join(undefined)}",
                      style="yellow", markup=False, highlight=False)


def _warn_incomplete(run_dir: Path, note: Optional[str] = None) -> None:
    """A run stopped before its end: say so wherever its tables are read out (report, show,
    export-weights; the report also has it in its header and summary.json). `note`: the
    report's `run/incomplete`, when it was just computed."""
    if note is None:
        from distillscope.report.header import incomplete_note
        from distillscope.store import RunStore

        note = incomplete_note(RunStore(run_dir))
    if note:
        console.print(f"warning: {run_dir} is incomplete: {note}", style="yellow", markup=False,
                      highlight=False)


def _write_report(run_dir: Path, **kw: Any) -> Path:
    from distillscope.report import write_report

    path = write_report(run_dir, **kw)
    console.print(f"report: [bold]{path}[/] (summary.json, tables/, figures/ beside it)")
    summary = json.loads((path.parent / "summary.json").read_text(encoding="utf-8"))
    _warn_incomplete(run_dir, summary.get("run/incomplete") or "")
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
         trust_remote_code: bool = False, models: Optional[dict] = None) -> Optional[Path]:
    _check_out(out)
    # the new configuration, or an OUT that is not a run, is refused before the lock creates
    # OUT (and OUT/.lock)
    _check_remote_code([config], trust_remote_code, "the configuration")
    with first_start(out, wait=wait):
        return _run_body(config, out, force=force, report=report, score=score, ray=ray,
                         trust_remote_code=trust_remote_code, models=models)


@contextlib.contextmanager
def first_start(out: Path, *, wait: bool = False):
    """Hold OUT's lock for a command that makes or resumes a run (run, rollout, screen). OUT
    must be new or a run (`RunStore.check_is_a_run_or_new`, before the lock file is made); a
    first invocation that fails before any work removes, under the lock, what it created."""
    from distillscope.store import RunStore, run_lock

    store = RunStore(out)
    store.check_is_a_run_or_new()
    before = store.existing_paths() if not store.exists() else None
    with run_lock(out, wait=wait):
        if before is not None and store.exists():
            before = None  # another invocation made the run meanwhile: not ours to undo
        try:
            yield
        except BaseException:
            if before is not None:
                store.remove_failed_start(before)
            raise


@contextlib.contextmanager
def keep_config_on_failure(store: Any, teacher: str):
    """`score` with a new teacher: should it fail before any of the teacher's work is
    committed (its model does not load, the tree is unfinished), the run's config.yaml is put
    back as it was, so the teacher is not left in the run under a name it never earned."""
    from distillscope.store import atomic_write_bytes

    before = store.config_path.read_bytes()
    try:
        yield
    except BaseException:
        mine = (f"/c-score-{teacher}", f"/y-grown-{teacher}", f"/b-tgt+{teacher}/")
        if not any(m in u for u in store.done_units() for m in mine):
            with contextlib.suppress(OSError):
                atomic_write_bytes(store.config_path, before)
        raise


def _run_body(config: RunConfig, out: Path, *, force: bool, report: bool, score: bool,
              ray: Optional[str], trust_remote_code: bool,
              models: Optional[dict]) -> Optional[Path]:
    from distillscope import pipeline

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
        pipeline.run(config, out, reporter=_reporter(), force=force, score=score,
                     models=models)
    _say_done(out, before, "run" if score else "shared tree")
    _warn_truncated(out)
    if report and score:
        return _write_report(out)
    return None


# ---------------------------------------------------------------------------------------------
