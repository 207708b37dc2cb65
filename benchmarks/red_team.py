"""A red-team pass over the CLI, as a hostile new user would try it (issue #16).

Each case does one thing to the CLI (bad config, bad --set, bad task file, damaged or foreign
run directory, a second writer, a kill, hostile text) and says what must happen: a clear error
(exit 2, one last line 'error: ...' naming the input, no traceback) or a correct result. Every
case runs in its own folder next to a user's files ('sentinels'), which must survive.

Outcome of a case:
    ok         the expected correct result
    clear      the expected one-line error (exit 2) naming the input
    unclear    an error, but not one clear line naming the input (or exit code not 2)
    traceback  an exception escaped the CLI
    silent     exit 0 where an error was due, or a result that is wrong
    lost       a file the tool did not write was deleted or changed

    python benchmarks/red_team.py            # prints the table; exit 1 unless all pass

tests/integration/test_red_team.py runs every case (so CI does).
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "configs" / "toy.yaml"
BAD = ("traceback", "silent", "lost", "unclear")


@dataclass
class Case:
    name: str
    kind: str  # config, set, task, run-dir, damage, concurrency, kill, hostile, output, foreign
    fn: Callable[[Ctx], tuple[str, str]]  # -> (outcome, detail)


@dataclass
class Ctx:
    """A case's folder, the shared 2-question config and reference run, a CLI runner."""

    work: Path
    small: Path
    reference: Path
    runner: Any
    extra: dict[str, Any] = field(default_factory=dict)

    def cli(self, *args: Any):
        from distillscope.cli import app

        return self.runner.invoke(app, [str(a) for a in args])

    def copy_reference(self, name: str = "run") -> Path:
        dst = self.work / name
        shutil.copytree(self.reference, dst)
        return dst


# ---------------------------------------------------------------------------------------------
# Judging a CLI result


def error(res, *needles: str) -> tuple[str, str]:
    """Expect a clear error naming the input (every needle in the error line)."""
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        return "traceback", f"{type(res.exception).__name__}: {res.exception}"
    out = res.output
    if "Traceback (most recent call last)" in out:
        return "traceback", out[-300:]
    if res.exit_code == 0:
        last = out.strip().splitlines()[-1][:200] if out.strip() else ""
        return "silent", f"exit 0: {last}"
    lines = [ln for ln in out.splitlines() if ln.strip()]
    errs = [ln for ln in lines if ln.startswith("error: ")]
    if res.exit_code != 2 or len(errs) != 1 or lines[-1] != errs[0]:
        return "unclear", f"exit {res.exit_code}: {out.strip()[-300:]}"
    missing = [n for n in needles if n not in errs[0]]
    if missing:
        return "unclear", f"error line lacks {missing}: {errs[0][:300]}"
    return "clear", errs[0][:160]


def success(res, check: Callable[[], str | None] = lambda: None) -> tuple[str, str]:
    """Expect exit 0 and `check()` to return None (else the reason the result is wrong)."""
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        return "traceback", f"{type(res.exception).__name__}: {res.exception}"
    if res.exit_code != 0:
        return "unclear", f"exit {res.exit_code}: {res.output.strip()[-300:]}"
    why = check()
    return ("silent", why) if why else ("ok", res.output.strip().splitlines()[-1][:160]
                                        if res.output.strip() else "")


def parquet_bytes(run: Path) -> dict[str, bytes]:
    files = [run / "demos.parquet", *sorted((run / "tables").rglob("*.parquet"))]
    return {str(p.relative_to(run)): p.read_bytes() for p in files if p.exists()}


def same_as_reference(ctx: Ctx, run: Path) -> str | None:
    """The run's committed rows and its Parquet files equal the uninterrupted reference's."""
    from distillscope.schemas import SCHEMAS
    from distillscope.store import RunStore

    for name in SCHEMAS:
        n_ref, n_run = RunStore(ctx.reference).count_rows(name), RunStore(run).count_rows(name)
        if n_ref != n_run:
            return f"{name}: {n_run} committed rows, an uninterrupted run has {n_ref}"
    a, b = parquet_bytes(ctx.reference), parquet_bytes(run)
    if a.keys() != b.keys():
        return f"tables differ: {sorted(set(a) ^ set(b))[:3]}"
    diff = [k for k in a if a[k] != b[k]]
    return f"tables differ from an uninterrupted run: {diff[:3]}" if diff else None


def write(ctx: Ctx, name: str, data: str | bytes) -> Path:
    p = ctx.work / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return p


def toy_with(ctx: Ctx, name: str, edit: Callable[[dict], None]) -> Path:
    import yaml

    data = yaml.safe_load(ctx.small.read_text())
    edit(data)
    return write(ctx, name, yaml.safe_dump(data))


def custom_task(ctx: Ctx, path: Path, *extra: str) -> list[str]:
    return ["--set", "task.name=custom", "--set", f"task.path={path}",
            "--set", "task.verifier=yesno", *extra]


# ---------------------------------------------------------------------------------------------
# The cases

CASES: list[Case] = []


def case(kind: str):
    def deco(fn):
        CASES.append(Case(fn.__name__.removeprefix("c_").replace("_", "-"), kind, fn))
        return fn
    return deco


# -- configuration files ------------------------------------------------------------------
@case("config")
def c_config_missing(ctx):
    return error(ctx.cli("run", ctx.work / "nope.yaml", "--out", ctx.work / "r"), "nope.yaml")


@case("config")
def c_config_empty(ctx):
    return error(ctx.cli("run", write(ctx, "e.yaml", "# nothing\n"), "--out", ctx.work / "r"),
                 "empty")


@case("config")
def c_config_not_yaml(ctx):
    return error(ctx.cli("run", write(ctx, "b.yaml", "a: [1\n"), "--out", ctx.work / "r"),
                 "b.yaml", "not valid YAML")


@case("config")
def c_config_binary(ctx):
    return error(ctx.cli("run", write(ctx, "b.yaml", b"\xff\xfe\x00garbage"), "--out",
                         ctx.work / "r"), "b.yaml", "UTF-8")


@case("config")
def c_config_a_list(ctx):
    return error(ctx.cli("run", write(ctx, "l.yaml", "- 1\n- 2\n"), "--out", ctx.work / "r"),
                 "mapping")


@case("config")
def c_config_is_a_directory(ctx):
    return error(ctx.cli("run", ctx.work, "--out", ctx.work / "r"), "is a directory")


@case("config")
def c_unknown_key(ctx):
    cfg = toy_with(ctx, "c.yaml", lambda d: d["tree"].update(Gee=3))
    return error(ctx.cli("run", cfg, "--out", ctx.work / "r"), "tree.Gee", "unknown key")


@case("config")
def c_count_is_a_boolean(ctx):
    cfg = toy_with(ctx, "c.yaml", lambda d: d["tree"].update(G=True))
    return error(ctx.cli("run", cfg, "--out", ctx.work / "r"), "tree.G", "integer")


@case("config")
def c_count_is_a_float(ctx):
    cfg = toy_with(ctx, "c.yaml", lambda d: d["tree"].update(n_min=2.5))
    return error(ctx.cli("run", cfg, "--out", ctx.work / "r"), "tree.n_min")


@case("config")
def c_count_negative(ctx):
    return error(ctx.cli("run", ctx.small, "--out", ctx.work / "r", "--set", "tree.G=-1"),
                 "tree.G")


@case("config")
def c_temperature_nan(ctx):
    return error(ctx.cli("run", ctx.small, "--out", ctx.work / "r", "--set",
                         "sampling.temperature=.nan"), "sampling.temperature")


@case("config")
def c_top_p_above_one(ctx):
    return error(ctx.cli("run", ctx.small, "--out", ctx.work / "r", "--set",
                         "sampling.top_p=2"), "sampling.top_p")


@case("config")
def c_limit_zero(ctx):
    return error(ctx.cli("run", ctx.small, "--out", ctx.work / "r", "--set", "task.limit=0"),
                 "task.limit")


@case("config")
def c_device_tpu(ctx):
    return error(ctx.cli("run", ctx.small, "--out", ctx.work / "r", "--set",
                         "student.device=tpu"), "student.device", "tpu")


@case("config")
def c_external_teacher_without_model(ctx):
    cfg = toy_with(ctx, "c.yaml", lambda d: d["teachers"].append({"name": "x",
                                                                   "mode": "external"}))
    return error(ctx.cli("run", cfg, "--out", ctx.work / "r"), "'x'", "needs a 'model'")


@case("config")
def c_unknown_task(ctx):
    return error(ctx.cli("run", ctx.small, "--out", ctx.work / "r", "--set", "task.name=gsm8k"),
                 "task.name")


for _bad in ("a b", "x(1)", "x/y", "x__y", "all", "student", "a\u202eb", ""):
    def _teacher_name_case(ctx, _bad=_bad):
        cfg = toy_with(ctx, "c.yaml", lambda d: d["teachers"][0].update(name=_bad))
        return error(ctx.cli("run", cfg, "--out", ctx.work / "r"), "teachers.0.name",
                     "not allowed")
    CASES.append(Case(f"teacher-name-{_bad.encode('unicode_escape').decode() or 'empty'}",
                      "config", _teacher_name_case))


@case("config")
def c_teacher_names_repeat(ctx):
    cfg = toy_with(ctx, "c.yaml", lambda d: d["teachers"][1].update(name="helpful"))
    return error(ctx.cli("run", cfg, "--out", ctx.work / "r"), "unique", "helpful")


@case("config")
def c_teacher_names_differ_in_case(ctx):
    cfg = toy_with(ctx, "c.yaml", lambda d: d["teachers"][1].update(name="Helpful"))
    return error(ctx.cli("run", cfg, "--out", ctx.work / "r"), "letter case")


@case("config")
def c_tokenizer_mismatch_names_both(ctx):
    def edit(d):
        d["teachers"][0]["model"]["options"]["vocab"] = 10
    res = ctx.cli("run", toy_with(ctx, "c.yaml", edit), "--out", ctx.work / "r")
    out = error(res, "helpful", "vocab=10", "does not share")
    if out[0] == "clear" and "tokenizer (toy[tilt=none" not in res.output:
        return "unclear", "the student's name is not shown apart from the teacher's"
    return out


@case("config")
def c_prompt_longer_than_context(ctx):
    return error(ctx.cli("run", ctx.small, "--out", ctx.work / "r", "--set",
                         "student.options.max_context=3"), "longer than the student's context")


# -- --set ----------------------------------------------------------------------------------
for _item, _needle in (("tree.G=[1", "not valid YAML"), ("=5", "empty"),
                       ("tree..G=5", "empty part"), ("tree.G.x=1", "'tree.G' holds"),
                       ("teachers.99.name=x", "must be an index"), ("noequals", "KEY=VALUE"),
                       ("student.options.strength=abc", "'strength'"),
                       ("student.options.vocab=1000", "'vocab'"),
                       ("student.options.colour=red", "colour"),
                       ("student.options.tilt=[1]", "'tilt'"),
                       ("task.options.n_questions=0", "n_questions"),
                       ("task.options.n_questions=abc", "n_questions"),
                       ("task.options.seed=1.5", "seed")):
    def _set_case(ctx, _item=_item, _needle=_needle):
        return error(ctx.cli("run", ctx.small, "--out", ctx.work / "r", "--set", _item), _needle)
    CASES.append(Case(f"set-{_item}", "set", _set_case))


@case("set")
def c_threads_negative(ctx):
    return error(ctx.cli("run", ctx.small, "--out", ctx.work / "r", "--threads", "-3"),
                 "--threads")


@case("set")
def c_threads_zero(ctx):
    return error(ctx.cli("run", ctx.small, "--out", ctx.work / "r", "--threads", "0"),
                 "--threads")


# -- task files -----------------------------------------------------------------------------
ROW = '{"id": "%s", "question": "Is it so?", "answer": "yes"}'


@case("task")
def c_task_file_missing(ctx):
    return error(ctx.cli("run", ctx.small, "--out", ctx.work / "r",
                         *custom_task(ctx, ctx.work / "nope.jsonl")), "nope.jsonl")


@case("task")
def c_task_file_not_utf8(ctx):
    f = write(ctx, "q.jsonl", (ROW % "a").encode() + b'\n{"id": "\xff\xfe"}\n')
    return error(ctx.cli("run", ctx.small, "--out", ctx.work / "r", *custom_task(ctx, f)),
                 "q.jsonl", "line 2", "UTF-8")


@case("task")
def c_task_file_bad_json(ctx):
    f = write(ctx, "q.jsonl", ROW % "a" + "\n{oops\n")
    return error(ctx.cli("run", ctx.small, "--out", ctx.work / "r", *custom_task(ctx, f)),
                 "line 2", "not valid JSON")


@case("task")
def c_task_file_not_objects(ctx):
    f = write(ctx, "q.jsonl", "[1, 2]\n")
    return error(ctx.cli("run", ctx.small, "--out", ctx.work / "r", *custom_task(ctx, f)),
                 "line 1", "not a JSON object")


@case("task")
def c_task_file_empty(ctx):
    f = write(ctx, "q.jsonl", "\n\n")
    return error(ctx.cli("run", ctx.small, "--out", ctx.work / "r", *custom_task(ctx, f)),
                 "no rows")


@case("task")
def c_task_duplicate_id_named(ctx):
    f = write(ctx, "q.jsonl", "\n".join(ROW % i for i in ("a", "twice", "b", "twice")))
    return error(ctx.cli("run", ctx.small, "--out", ctx.work / "r", *custom_task(ctx, f)),
                 "'twice'")


@case("task")
def c_task_no_answer(ctx):
    f = write(ctx, "q.jsonl", '{"id": "a", "question": "q?"}\n')
    return error(ctx.cli("run", ctx.small, "--out", ctx.work / "r", *custom_task(ctx, f)),
                 "answer")


@case("task")
def c_task_file_csv(ctx):
    f = write(ctx, "q.csv", "id,question\n")
    return error(ctx.cli("run", ctx.small, "--out", ctx.work / "r", *custom_task(ctx, f)),
                 ".csv")


@case("task")
def c_task_parquet_garbage(ctx):
    f = write(ctx, "q.parquet", b"PAR1 not really")
    return error(ctx.cli("run", ctx.small, "--out", ctx.work / "r", *custom_task(ctx, f)),
                 "q.parquet")


@case("task")
def c_task_unknown_verifier(ctx):
    f = write(ctx, "q.jsonl", ROW % "a")
    return error(ctx.cli("run", ctx.small, "--out", ctx.work / "r", *custom_task(ctx, f),
                         "--set", "task.verifier=vibes"), "vibes")


@case("task")
def c_task_unknown_ids(ctx):
    return error(ctx.cli("run", ctx.small, "--out", ctx.work / "r", "--set",
                         "task.ids=[nope]"), "nope")


@case("task")
def c_task_offset_past_the_end(ctx):
    return error(ctx.cli("run", ctx.small, "--out", ctx.work / "r", "--set", "task.offset=50"),
                 "empty")


# -- run directories and --out ------------------------------------------------------------
@case("run-dir")
def c_out_empty(ctx):
    return error(ctx.cli("run", ctx.small, "--out", ""), "--out is empty")


@case("run-dir")
def c_out_is_a_file(ctx):
    f = write(ctx, "f", "x")
    return error(ctx.cli("run", ctx.small, "--out", f), "is a file")


@case("run-dir")
def c_out_below_a_file(ctx):
    f = write(ctx, "f", "x")
    return error(ctx.cli("run", ctx.small, "--out", f / "run"), str(f))


@case("run-dir")
def c_out_foreign_dir_keeps_its_files(ctx):
    d = ctx.work / "d"
    ctx.extra["sentinels"] = [write(ctx, "d/p/.draft.tmp", "x"), write(ctx, "d/.notes.tmp", "y"),
                              write(ctx, "d/tables/rollouts/.mine.tmp", "z")]
    return success(ctx.cli("run", ctx.small, "--out", d, "--no-report"))


@case("run-dir")
def c_out_of_another_config_is_refused(ctx):
    run = ctx.copy_reference()
    ctx.extra["sentinels"] = [write(ctx, "run/tables/.x.tmp", "x")]
    return error(ctx.cli("run", ctx.small, "--out", run, "--set", "tree.G=41"),
                 "different configuration")


@case("run-dir")
def c_failed_start_then_fixed_config(ctx):
    out = ctx.work / "r"
    first = ctx.cli("run", ctx.small, "--out", out, *custom_task(ctx, ctx.work / "typo.jsonl"))
    if first.exit_code != 2:
        return error(first, "typo.jsonl")
    return success(ctx.cli("run", ctx.small, "--out", out, "--no-report"),
                   lambda: same_as_reference(ctx, out))


@case("run-dir")
def c_resume_recomputes_nothing(ctx):
    run = ctx.copy_reference()
    res = ctx.cli("run", ctx.small, "--out", run, "--no-report")
    return success(res, lambda: (None if "nothing recomputed" in res.output
                                 else "no 'nothing recomputed'") or same_as_reference(ctx, run))


@case("run-dir")
def c_own_stale_temp_file_removed_on_resume(ctx):
    from distillscope.store import TMP_PREFIX

    run = ctx.copy_reference()
    stale = run / "tables" / "nodes" / f"{TMP_PREFIX}999999999-x.parquet.abc.tmp"
    stale.write_bytes(b"half a part")
    return success(ctx.cli("run", ctx.small, "--out", run, "--no-report"),
                   lambda: "stale temp file left" if stale.exists() else None)


@case("run-dir")
def c_report_not_a_run(ctx):
    return error(ctx.cli("report", ctx.work), "not a distillscope run")


@case("run-dir")
def c_report_empty_arg(ctx):
    return error(ctx.cli("report", ""), "RUN_DIR is empty")


@case("run-dir")
def c_report_a_file(ctx):
    return error(ctx.cli("report", write(ctx, "f", "x")), "is a file")


@case("run-dir")
def c_report_missing_dir(ctx):
    return error(ctx.cli("report", ctx.work / "nope"), "not found")


@case("run-dir")
def c_report_corrupt_provenance(ctx):
    run = ctx.copy_reference()
    (run / "provenance.json").write_text("{oops")
    return error(ctx.cli("report", run), "provenance.json")


@case("run-dir")
def c_report_corrupt_config(ctx):
    run = ctx.copy_reference()
    (run / "config.yaml").write_text("tree: [1\n")
    return error(ctx.cli("report", run), "config.yaml")


@case("run-dir")
def c_score_invalid_stored_config(ctx):
    run = ctx.copy_reference()
    (run / "config.yaml").write_text("tree: {G: true}\n")
    return error(ctx.cli("score", run, "--teacher", "helpful"), "config.yaml", "tree.G")


@case("run-dir")
def c_report_keeps_a_users_file(ctx):
    run = ctx.copy_reference()
    ctx.extra["sentinels"] = [write(ctx, "run/report/notes.txt", "mine")]
    return success(ctx.cli("report", run))


@case("run-dir")
def c_report_twice_is_deterministic(ctx):
    run = ctx.copy_reference()
    ctx.cli("report", run)
    a = json.loads((run / "report" / "summary.json").read_text())
    res = ctx.cli("report", run)

    def check():
        b = json.loads((run / "report" / "summary.json").read_text())
        return None if a == b else "summary.json changed between two reports"
    return success(res, check)


# -- damaged tables ------------------------------------------------------------------------
def _damage(ctx: Ctx, how: str) -> tuple[str, str]:
    run = ctx.copy_reference()
    part = run / "tables" / "rollouts" / "q00001__a-init.parquet"
    marker = run / "units" / "q00001__a-init.done"
    if how == "truncate":
        part.write_bytes(part.read_bytes()[:200])
    elif how == "delete":
        part.unlink()
    elif how == "flip":
        data = bytearray(part.read_bytes())
        data[len(data) // 2] ^= 0x55
        part.write_bytes(bytes(data))
    elif how == "marker":
        marker.write_text("{broken")
    elif how == "swap":  # another unit's (valid) part in its place
        shutil.copy(run / "tables" / "rollouts" / "q00000__a-init.parquet", part)
    rep = ctx.cli("report", run)
    out = error(rep, "q00001/a-init", "damaged")
    if out[0] != "clear":
        return out
    res = ctx.cli("run", ctx.small, "--out", run, "--no-report")
    return success(res, lambda: (None if "will be recomputed" in res.output
                                 else "resume did not say it recomputes the unit")
                   or same_as_reference(ctx, run))


for _how in ("truncate", "delete", "flip", "marker", "swap"):
    CASES.append(Case(f"damaged-part-{_how}", "damage", lambda ctx, _how=_how: _damage(ctx, _how)))


@case("damage")
def c_report_disk_full_keeps_old_report(ctx):
    import distillscope.report as R

    run = ctx.copy_reference()
    ctx.cli("report", run)
    before = {p: p.read_bytes() for p in (run / "report").rglob("*") if p.is_file()}
    real = R.H.render_page

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")
    R.H.render_page = full
    try:
        res = ctx.cli("report", run, "--seed", "3")
    finally:
        R.H.render_page = real
    out = error(res, "disk full")
    after = {p: p.read_bytes() for p in (run / "report").rglob("*") if p.is_file()}
    if out[0] == "clear" and after != before:
        return "silent", "the failed report changed the previous one"
    return out


# -- concurrency and interruption ----------------------------------------------------------
HOLD = ("import sys, time\nfrom distillscope.store import run_lock\n"
        "with run_lock(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(60)\n")


@case("concurrency")
def c_second_writer_refused(ctx):
    run = ctx.copy_reference()
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE,
                            text=True)
    try:
        proc.stdout.readline()
        return error(ctx.cli("run", ctx.small, "--out", run), "in use", f"pid {proc.pid}")
    finally:
        proc.kill()
        proc.wait()


@case("concurrency")
def c_ctrl_c_says_how_to_resume(ctx):
    import distillscope.pipeline as P

    real = P.run

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt
    P.run = interrupted
    try:
        res = ctx.cli("run", ctx.small, "--out", ctx.work / "r")
    finally:
        P.run = real
    if res.exit_code == 130 and "rerun the same command to resume" in res.output:
        return "clear", "exit 130 with the resume line"
    return "unclear", f"exit {res.exit_code}: {res.output[-200:]}"


def _kill_and_resume(ctx: Ctx, seed: int, kills: int = 3) -> tuple[str, str]:
    """SIGKILL the run `kills` times, each at a random moment after a random number of newly
    committed units (plus a random delay), then resume: the tables must be the uninterrupted
    run's, byte for byte, with every row committed once."""
    out = ctx.work / "r"
    rng = random.Random(seed)
    killed_at = []
    for _ in range(kills):
        units = out / "units"
        have = len(list(units.glob("*.done"))) if units.is_dir() else 0
        target = have + rng.randint(1, 4)
        proc = subprocess.Popen([sys.executable, "-m", "distillscope.cli", "run", str(ctx.small),
                                 "--out", str(out), "--no-report", "--threads", "1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None:
            if units.is_dir() and len(list(units.glob("*.done"))) >= target:
                time.sleep(rng.uniform(0, 0.15))
                break
            time.sleep(0.01)
        finished = proc.poll() is not None  # the run ended before the kill (a fast machine)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if not finished:
            killed_at.append(len(list(units.glob("*.done"))) if units.is_dir() else 0)
    if not killed_at:
        # nothing was interrupted, so nothing about resume was tested (not a product fault)
        return "silent", "no kill landed mid-run: the run finished before every kill"
    res = ctx.cli("run", ctx.small, "--out", out, "--no-report")
    return success(res, lambda: same_as_reference(ctx, out))


for _seed in (1, 2):
    CASES.append(Case(f"sigkill-3x-seed{_seed}-then-resume", "kill",
                      lambda ctx, _seed=_seed: _kill_and_resume(ctx, _seed)))


# -- scoring, show, export -----------------------------------------------------------------
@case("output")
def c_score_unknown_teacher_without_mode(ctx):
    return error(ctx.cli("score", ctx.copy_reference(), "--teacher", "new"), "give --mode")


@case("output")
def c_score_bad_mode(ctx):
    return error(ctx.cli("score", ctx.copy_reference(), "--teacher", "new", "--mode", "self-9c"),
                 "--mode")


@case("output")
def c_score_bad_teacher_name_not_saved(ctx):
    run = ctx.copy_reference()
    before = (run / "config.yaml").read_bytes()
    out = error(ctx.cli("score", run, "--teacher", "my teacher", "--mode", "self-3c"),
                "--teacher", "not allowed")
    if out[0] == "clear" and (run / "config.yaml").read_bytes() != before:
        return "silent", "config.yaml changed by a refused score"
    return out


@case("output")
def c_score_new_self_teacher(ctx):
    run = ctx.copy_reference()
    res = ctx.cli("score", run, "--teacher", "three", "--mode", "self-3c", "--no-report")

    def check():
        from distillscope.store import RunStore

        nodes = RunStore(run).read("nodes")
        return None if "three" in set(nodes.teacher) else "no rows for the new teacher"
    return success(res, check)


@case("output")
def c_score_received_run_with_remote_code(ctx):
    import yaml

    run = ctx.copy_reference()
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["student"]["trust_remote_code"] = True
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    return error(ctx.cli("score", run, "--teacher", "helpful"), "trust_remote_code",
                 "--trust-remote-code")


@case("output")
def c_run_remote_code_needs_the_flag(ctx):
    return error(ctx.cli("run", ctx.small, "--out", ctx.work / "r", "--set",
                         "student.trust_remote_code=true"), "--trust-remote-code")


@case("output")
def c_show_unknown_question(ctx):
    return error(ctx.cli("show", ctx.reference, "--question", "nope", "--path", "0"), "nope")


@case("output")
def c_show_question_index_out_of_range(ctx):
    return error(ctx.cli("show", ctx.reference, "--question", "9", "--path", "0"), "index 9")


@case("output")
def c_show_unknown_path(ctx):
    return error(ctx.cli("show", ctx.reference, "--question", "0", "--path", "-1"), "no path")


@case("output")
def c_show_unknown_teacher(ctx):
    return error(ctx.cli("show", ctx.reference, "--question", "0", "--path", "0", "--teacher",
                         "nobody"), "nobody")


@case("output")
def c_show_unknown_method(ctx):
    return error(ctx.cli("show", ctx.reference, "--question", "0", "--path", "0", "--method",
                         "kl"), "kl")


@case("output")
def c_report_unknown_method(ctx):
    return error(ctx.cli("report", ctx.copy_reference(), "--method", "kl"), "--method")


@case("output")
def c_export_unknown_teacher(ctx):
    return error(ctx.cli("export-weights", ctx.reference, "--teacher", "nobody", "--out",
                         ctx.work / "w.parquet"), "nobody")


@case("output")
def c_export_bad_extension(ctx):
    return error(ctx.cli("export-weights", ctx.reference, "--teacher", "helpful", "--out",
                         ctx.work / "w.xlsx"), "w.xlsx")


@case("output")
def c_export_empty_out(ctx):
    return error(ctx.cli("export-weights", ctx.reference, "--teacher", "helpful", "--out", ""),
                 "--out is empty")


@case("output")
def c_export_round_trip(ctx):
    out = ctx.work / "w.jsonl"
    res = ctx.cli("export-weights", ctx.reference, "--teacher", "helpful", "--out", out)

    def check():
        import pandas as pd

        df = pd.read_json(out, lines=True)
        return None if len(df) and set(df.weight) <= {0, 1} else "bad weights"
    return success(res, check)


@case("output")
def c_truncated_rollouts_warned_and_recorded(ctx):
    out = ctx.work / "r"
    res = ctx.cli("run", ctx.small, "--out", out, "--set", "sampling.max_new_tokens=4")

    def check():
        s = json.loads((out / "report" / "summary.json").read_text())
        if not (s.get("rollouts/truncated_fraction") or 0) > 0.1:
            return "summary.json lacks the truncated fraction"
        if "stopped at sampling.max_new_tokens" not in res.output:
            return "no warning"
        return None
    return success(res, check)


@case("output")
def c_zero_decision_points_says_so(ctx):
    out = ctx.work / "r"
    res = ctx.cli("run", ctx.small, "--out", out, "--set", "tree.n_sig=100000")

    def check():
        if "no teacher has been scored" in res.output:
            return "scored teachers reported as not scored"
        page = (out / "report" / "report.html").read_text(encoding="utf-8")
        return None if "<b>teachers</b>helpful" in page else "report header lists no teacher"
    return success(res, check)


@case("output")
def c_quickstart_empty_out(ctx):
    return error(ctx.cli("quickstart", "--out", ""), "--out is empty")


@case("output")
def c_screen_empty_out(ctx):
    return error(ctx.cli("screen", ctx.small, "--out", ""), "--out is empty")


# -- hostile text --------------------------------------------------------------------------
def _hostile_run(ctx: Ctx, token: str) -> Path:
    import pyarrow.parquet as pq

    sys.path.insert(0, str(ROOT / "tests" / "unit"))
    from synthetic_run import make_synthetic_run, write_table

    run = make_synthetic_run(ctx.work / "run")
    paths = pq.read_table(run / "tables" / "paths" / "part-0.parquet").to_pylist()
    for p in paths:
        p["tokens"] = [token + t for t in p["tokens"]]
    write_table(run, "paths", paths)
    return run


for _name, _tok in (("bidi-rlo", "\u202e"), ("bidi-isolate", "\u2067"), ("script", "<script>"),
                    ("esc", "\x1b]0;pwn\x07"), ("nul", "\x00"), ("c1-csi", "\x9b31m")):
    def _hostile_html(ctx, _tok=_tok):
        run = _hostile_run(ctx, _tok)
        res = ctx.cli("report", run)
        return success(res, lambda: "raw hostile text in report.html" if _tok in
                       (run / "report" / "report.html").read_text(encoding="utf-8") else None)

    def _hostile_show(ctx, _tok=_tok):
        run = _hostile_run(ctx, _tok)
        res = ctx.cli("show", run, "--question", "q0", "--path", "0")
        if _tok == "<script>":  # harmless in a terminal: shown as it is
            return success(res, lambda: None if _tok in res.output else "token not shown")
        return success(res, lambda: "raw hostile text in the terminal" if _tok in res.output
                       else None)
    CASES.append(Case(f"hostile-{_name}-report", "hostile", _hostile_html))
    CASES.append(Case(f"hostile-{_name}-show", "hostile", _hostile_show))


# ---------------------------------------------------------------------------------------------
# foreign: files of the user's beside or inside the tool's outputs (never overwritten or
# deleted), and tables that must not pass a partial or mislabelled run off as whole


def kept(outcome: tuple[str, str], files: dict[Path, str]) -> tuple[str, str]:
    """`outcome`, unless one of the user's `files` no longer holds its text ("lost")."""
    changed = [str(p) for p, text in files.items()
               if not p.is_file() or p.read_text(errors="replace") != text]
    return ("lost", f"overwritten or deleted: {changed}") if changed else outcome


@case("foreign")
def c_export_onto_a_users_file(ctx):
    mine = write(ctx, "mine.parquet", "precious")
    res = ctx.cli("export-weights", ctx.reference, "--teacher", "helpful", "--out", mine)
    return kept(error(res, str(mine), "not an export"), {mine: "precious"})


@case("foreign")
def c_export_over_its_own_earlier_export(ctx):
    out = ctx.work / "w.jsonl"
    ctx.cli("export-weights", ctx.reference, "--teacher", "helpful", "--out", out)
    return success(ctx.cli("export-weights", ctx.reference, "--teacher", "self-1c", "--out",
                           out, "--fill", "0"))


@case("foreign")
def c_compare_into_a_users_folder(ctx):
    files = {write(ctx, f"u/{rel}", "mine"): "mine"
             for rel in ("compare.html", "compare.json", "tables/ranking_gkd.csv")}
    run = ctx.copy_reference()
    res = ctx.cli("compare", ctx.reference, run, "--out", ctx.work / "u")
    return kept(error(res, str(ctx.work / "u"), "earlier comparison"), files)


@case("foreign")
def c_compare_a_run_with_itself(ctx):
    return error(ctx.cli("compare", ctx.reference, ctx.reference, "--out", ctx.work / "o"),
                 "given twice")


@case("foreign")
def c_compare_out_inside_a_run(ctx):
    run = ctx.copy_reference()
    return error(ctx.cli("compare", ctx.reference, run, "--out", run / "cmp"),
                 "run directory")


@case("foreign")
def c_run_into_a_folder_holding_the_users_config(ctx):
    text = "# my experiment\n" + ctx.small.read_text()
    cfg = write(ctx, "proj/config.yaml", text)
    res = ctx.cli("run", cfg, "--out", ctx.work / "proj")
    return kept(error(res, "config.yaml", "not written by this version"), {cfg: text})


@case("foreign")
def c_run_over_a_users_plan_json(ctx):
    plan = write(ctx, "d/plan.json", "mine")
    return kept(error(ctx.cli("run", ctx.small, "--out", ctx.work / "d"), "plan.json"),
                {plan: "mine"})


@case("foreign")
def c_first_report_keeps_report_named_files_of_the_users(ctx):
    run = ctx.copy_reference()
    shutil.rmtree(run / "report")
    files = {write(ctx, "run/report/tables/mine.md", "m"): "m",
             write(ctx, "run/report/figures/plot.png", "p"): "p"}
    return kept(success(ctx.cli("report", run)), files)


@case("foreign")
def c_failed_score_leaves_the_config(ctx):
    run = ctx.copy_reference()
    before = (run / "config.yaml").read_text()
    res = ctx.cli("score", run, "--teacher", "big", "--mode", "external", "--model",
                  ctx.work / "no-such-model", "--backend", "hf", "--no-report")
    return kept(error(res, "no-such-model"), {run / "config.yaml": before})


@case("foreign")
def c_force_cannot_relabel_a_redefined_teacher(ctx):
    def harmful(d):
        d["teachers"][0]["model"]["options"]["tilt"] = "harmful"

    run = ctx.copy_reference()
    return error(ctx.cli("run", toy_with(ctx, "c.yaml", harmful), "--out", run, "--force"),
                 "teacher 'helpful'", "defined differently")


@case("foreign")
def c_a_missing_commit_marker_is_named(ctx):
    run = ctx.copy_reference()
    (run / "units" / "q00001__c-score-helpful.done").unlink()
    res = ctx.cli("report", run)
    said = "no commit marker (q00001/c-score-helpful)" in " ".join(res.output.split())
    return success(res, lambda: None if said else "the report did not say the run is "
                   "incomplete (one teacher ranked on fewer questions)")


@case("foreign")
def c_yaml_key_given_twice(ctx):
    cfg = write(ctx, "dup.yaml", ctx.small.read_text() + "seed: 5\n")
    return error(ctx.cli("run", cfg, "--out", ctx.work / "r"), "'seed' is given twice")


@case("foreign")
def c_out_with_a_quoted_tilde(ctx):
    return error(ctx.cli("run", ctx.small, "--out", "~/red-team-out"), "starts with '~'")


@case("foreign")
def c_export_threshold_nan(ctx):
    return error(ctx.cli("export-weights", ctx.reference, "--teacher", "helpful", "--out",
                         ctx.work / "w.jsonl", "--threshold", "nan"), "--threshold")


# ---------------------------------------------------------------------------------------------
# Running


def _sentinels(work: Path) -> list[Path]:
    return [work / "user-notes.txt", work / ".user.tmp"]


def build_reference(base: Path) -> tuple[Path, Path]:
    """The 2-question config (one external, one self-* teacher) and its uninterrupted run."""
    from typer.testing import CliRunner

    from distillscope.cli import app
    from distillscope.config import load_config

    cfg = load_config(TOY, {"task.options.n_questions": 2, "tree.G": 40, "tree.n_min": 30})
    keep = {"helpful", "self-1c"}
    cfg = cfg.model_copy(update={"teachers": [t for t in cfg.teachers if t.name in keep]})
    small = base / "small.yaml"
    small.write_text(cfg.to_yaml())
    ref = base / "reference"
    res = CliRunner().invoke(app, ["run", str(small), "--out", str(ref)])
    if res.exit_code != 0:
        raise RuntimeError(f"the reference run failed: {res.output}")
    return small, ref


def run_case(c: Case, base: Path, small: Path, ref: Path) -> tuple[str, str]:
    from typer.testing import CliRunner

    work = base / "cases" / c.name.replace("/", "_")
    work.mkdir(parents=True)
    for s in _sentinels(work):
        s.write_text("the user's")
    ctx = Ctx(work, small, ref, CliRunner(env={"COLUMNS": "300"}))
    cwd = os.getcwd()
    os.chdir(work)  # an empty --out must not land here
    try:
        outcome, detail = c.fn(ctx)
    except Exception as err:  # the case itself broke: count it against the tool
        outcome, detail = "traceback", f"{type(err).__name__}: {err}"
    finally:
        os.chdir(cwd)
    extra = ctx.extra.get("sentinels", [])
    gone = [str(p.relative_to(work)) for p in [*_sentinels(work), *extra]
            if not p.exists() or not p.read_text()]
    if gone:
        return "lost", f"deleted: {gone}"
    return outcome, detail


def run_all(base: Path | None = None, only: Callable[[Case], bool] = lambda c: True):
    base = Path(tempfile.mkdtemp(prefix="red-team-")) if base is None else base
    small, ref = build_reference(base)
    results = []
    for c in CASES:
        if only(c):
            t0 = time.monotonic()
            outcome, detail = run_case(c, base, small, ref)
            results.append((c, outcome, detail, time.monotonic() - t0))
    return results


def table(results) -> str:
    n = Counter(o for _, o, _, _ in results)
    kinds = Counter(c.kind for c, *_ in results)
    lines = ["| cases tried | correct results | clear errors | unclear | tracebacks | "
             "silent wrong | lost |", "|---|---|---|---|---|---|---|",
             f"| {len(results)} | {n['ok']} | {n['clear']} | {n['unclear']} | "
             f"{n['traceback']} | {n['silent']} | {n['lost']} |", "",
             "Cases by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())) + "."]
    return "\n".join(lines)


def main() -> int:
    results = run_all()
    for c, outcome, detail, secs in results:
        mark = "FAIL" if outcome in BAD else "    "
        print(f"{mark} {outcome:9s} {secs:5.1f}s {c.kind:11s} {c.name}: {detail}")
    print()
    print(table(results))
    return 1 if any(o in BAD for _, o, _, _ in results) else 0


if __name__ == "__main__":
    sys.exit(main())
