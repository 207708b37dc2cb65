"""Regression tests for issue #16 (reliability) that need no model run: the store (temp files,
damaged parts, the run lock, a config that may be replaced), teacher names, config strictness,
the report's all-or-nothing write, bidi controls, and one-line errors for bad input."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from rich.console import Console
from synthetic_run import make_synthetic_run, write_table
from typer.testing import CliRunner

from distillscope import cli
from distillscope.cli import app
from distillscope.config import ConfigError, parse_config
from distillscope.report import write_report
from distillscope.report.data import load_run, visible
from distillscope.show import render_path
from distillscope.store import TMP_PREFIX, RunStore, StoreError, run_lock

ROOT = Path(__file__).resolve().parents[2]
TOY = ROOT / "configs" / "toy.yaml"
runner = CliRunner(env={"COLUMNS": "300"})


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(res, *needles: str) -> None:
    """Exit 2, no traceback, and one last line 'error: ...' that contains every needle (progress
    lines such as 'loading model' may come before it)."""
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert "Traceback" not in res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], res.output
    for n in needles:
        assert n in errors[0], (n, res.output)


def _rows(qid: str, n: int, start: int = 0) -> list[dict]:
    return [{"qid": qid, "rollout_id": start + i, "origin": "initial", "path_id": -1,
             "launch_depth": -1, "forced_len": 0, "response_ids": [1, 2, i], "text": f"t{i}",
             "reward": float(i % 2), "parsable": True, "finish_reason": "eos", "seed": 7}
            for i in range(n)]


# ---------------------------------------------------------------------------------------------
# 1. --out never deletes files the tool did not write


def test_open_for_keeps_other_peoples_temp_files(tmp_path):
    d = tmp_path / "d"
    (d / "p").mkdir(parents=True)
    theirs = [d / "p" / ".draft.tmp", d / ".notes.tmp", d / ".config.yaml.abc.tmp"]
    for f in theirs:
        f.write_text("x")
    RunStore(d).open_for(parse_config({}))
    RunStore(d).commit("q00000/a-init", {"rollouts": _rows("a", 1)})
    # a refused open (another config) deletes nothing either
    with pytest.raises(StoreError, match="different configuration"):
        RunStore(d).open_for(parse_config({"tree": {"G": 3}}))
    assert all(f.read_text() == "x" for f in theirs)


def test_only_our_own_stale_temp_files_are_removed(tmp_path):
    store = RunStore(tmp_path)
    store.open_for(parse_config({}))
    store.commit("q00000/a-init", {"rollouts": _rows("a", 1)})
    folder = tmp_path / "tables" / "rollouts"
    dead = folder / f"{TMP_PREFIX}999999999-q00000__a-init.parquet.x1.tmp"
    alive = folder / f"{TMP_PREFIX}{os.getppid()}-q00000__a-init.parquet.x2.tmp"
    deep = tmp_path / "tables" / "rollouts" / "sub" / f"{TMP_PREFIX}999999999-x.tmp"
    deep.parent.mkdir()
    for f in (dead, alive, deep):
        f.write_text("x")
    RunStore(tmp_path).open_for(parse_config({}))
    assert not dead.exists()  # ours, in our folder, its writer is gone
    assert alive.exists() and deep.exists()  # a live writer's; not one of our folders


def test_empty_out_is_an_error_not_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_error(invoke("run", TOY, "--out", ""), "--out is empty")
    one_line_error(invoke("report", ""), "RUN_DIR is empty")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# 2. teacher names: one rule, checked when the config is read


@pytest.mark.parametrize("name", ["a b", "x(y)", "x/y", "x__y", "all", "student", "None", "",
                                  "-x", "é", "a" * 65, "a\u202eb"])
def test_unsafe_teacher_names_are_refused_up_front(name):
    with pytest.raises(ConfigError, match="teacher name .* is not allowed"):
        parse_config({"teachers": [{"name": name, "mode": "self-1c"}]})


@pytest.mark.parametrize("name", ["self-1c", "qwen3-8b", "Qwen3.8B", "t_1", "a+b=c"])
def test_ordinary_teacher_names_pass(name):
    assert parse_config({"teachers": [{"name": name, "mode": "self-1c"}]}).teachers[0].name == name


def test_names_that_differ_only_in_case_are_refused():
    with pytest.raises(ConfigError, match="more than letter case"):
        parse_config({"teachers": [{"name": "T1", "mode": "self-1c"},
                                   {"name": "t1", "mode": "self-3c"}]})


def test_score_refuses_a_bad_name_before_saving_anything(tmp_path):
    run = make_synthetic_run(tmp_path / "run")
    before = (run / "config.yaml").read_bytes()
    one_line_error(invoke("score", run, "--teacher", "my teacher (v2)", "--mode", "self-1c"),
                   "--teacher", "'my teacher (v2)' is not allowed")
    assert (run / "config.yaml").read_bytes() == before


# ---------------------------------------------------------------------------------------------
# 3. a directory with no committed work takes a new config


def test_a_run_that_never_started_accepts_the_corrected_config(tmp_path):
    RunStore(tmp_path).open_for(parse_config({"task": {"name": "custom", "path": "typo.jsonl"}}))
    fixed = parse_config({"task": {"name": "toy"}})
    assert RunStore(tmp_path).open_for(fixed).task.name == "toy"
    assert RunStore(tmp_path).load_config().task.name == "toy"
    RunStore(tmp_path).commit("q00000/a-init", {"rollouts": _rows("a", 1)})
    with pytest.raises(StoreError, match="different configuration"):
        RunStore(tmp_path).open_for(parse_config({"task": {"name": "quickstart"}}))


def test_demonstrations_count_as_work(tmp_path):
    RunStore(tmp_path).open_for(parse_config({}))
    (tmp_path / "demos.parquet").write_bytes(b"x")
    with pytest.raises(StoreError, match="different configuration"):
        RunStore(tmp_path).open_for(parse_config({"tree": {"G": 3}}))


# ---------------------------------------------------------------------------------------------
# 4. damaged parts make their unit (and what was computed from it) uncommitted


def _three_units(tmp_path: Path) -> RunStore:
    store = RunStore(tmp_path)
    store.commit("q00000/a-init", {"rollouts": _rows("a", 50)})
    store.commit("q00000/b-tgt00000", {"rollouts": _rows("a", 5, start=50)})
    store.commit("q00001/a-init", {"rollouts": _rows("b", 3)})
    return store


def test_a_truncated_part_uncommits_its_unit_and_the_later_ones_of_its_question(tmp_path):
    _three_units(tmp_path)
    part = tmp_path / "tables" / "rollouts" / "q00000__a-init.parquet"
    part.write_bytes(part.read_bytes()[:100])
    store = RunStore(tmp_path)
    assert not store.is_done("q00000/a-init") and not store.is_done("q00000/b-tgt00000")
    assert store.is_done("q00001/a-init")
    report = store.damage_report()
    assert any("'q00000/a-init'" in r and "bytes" in r for r in report), report
    assert any("'q00000/b-tgt00000'" in r and "computed after" in r for r in report)
    assert list(store.read("rollouts").qid) == ["b"] * 3  # no ArrowInvalid: not read at all
    # resume: recommitting the unit makes it count again
    store.commit("q00000/a-init", {"rollouts": _rows("a", 50)})
    assert RunStore(tmp_path).is_done("q00000/a-init")


def test_a_deleted_or_modified_part_is_noticed(tmp_path):
    _three_units(tmp_path)
    (tmp_path / "tables" / "rollouts" / "q00001__a-init.parquet").unlink()
    part = tmp_path / "tables" / "rollouts" / "q00000__b-tgt00000.parquet"
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    store = RunStore(tmp_path)
    report = "\n".join(store.damage_report())
    assert "'q00001/a-init': its part tables/rollouts/q00001__a-init.parquet is missing" in report
    assert "'q00000/b-tgt00000'" in report and "checksum" in report
    assert store.is_done("q00000/a-init")


def test_an_unreadable_marker_uncommits_its_whole_question(tmp_path):
    # its place in the commit order is unknown, so every unit of its question is suspect
    # (keeping the later ones made resume skip the unit and drop its rows)
    _three_units(tmp_path)
    (tmp_path / "units" / "q00000__a-init.done").write_text("{broken")
    store = RunStore(tmp_path)
    assert not store.is_done("q00000/a-init") and not store.is_done("q00000/b-tgt00000")
    assert store.is_done("q00001/a-init")
    assert "unreadable" in "\n".join(store.damage_report())


def test_report_refuses_a_damaged_run_naming_the_unit(tmp_path):
    run = make_synthetic_run(tmp_path / "run")
    store = RunStore(run)
    store.commit("q00009/a-init", {"rollouts": _rows("q9", 20)})
    (run / "tables" / "rollouts" / "q00009__a-init.parquet").write_bytes(b"PAR1")
    res = invoke("report", run)
    one_line_error(res, "damaged", "q00009/a-init", "not reported as complete")
    assert not (run / "report").exists()
    with pytest.raises(StoreError, match="q00009/a-init"):
        load_run(run)


def test_a_legacy_unreadable_part_is_a_clear_error(tmp_path):
    # markers written before checksums (empty files) cannot be verified: reading says which
    run = make_synthetic_run(tmp_path / "run")
    (run / "tables" / "nodes" / "part-0.parquet").write_bytes(b"PAR1garbage")
    res = invoke("report", run)
    one_line_error(res, "unit 'part-0' is damaged", "tables/nodes/part-0.parquet")


# ---------------------------------------------------------------------------------------------
# 6. one writer per run directory

HOLD = textwrap.dedent("""
    import sys, time
    from distillscope.store import run_lock
    with run_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
""")


def _hold_lock(run_dir: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir), str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_is_refused_and_told_who_holds_the_lock(tmp_path):
    run = make_synthetic_run(tmp_path / "run")
    proc = _hold_lock(run, 30)
    try:
        res = invoke("score", run, "--teacher", "new", "--mode", "self-3c")
        one_line_error(res, "is in use", f"pid {proc.pid}")
        with pytest.raises(StoreError, match="in use"):
            RunStore(run).open_for(RunStore(run).load_config())
    finally:
        proc.kill()
        proc.wait()
    with run_lock(run):  # free again once the holder is gone
        pass


def test_wait_waits_for_the_lock(tmp_path):
    proc = _hold_lock(tmp_path, 1.5)
    t0 = time.monotonic()
    with run_lock(tmp_path, wait=True):
        assert time.monotonic() - t0 > 0.5
    proc.wait()


def test_the_lock_is_reentrant_within_a_process(tmp_path):
    with run_lock(tmp_path):
        store = RunStore(tmp_path)
        store.open_for(parse_config({}))  # the pipeline's own store, inside the CLI's lock
        store.commit("q00000/a-init", {"rollouts": _rows("a", 1)})


# ---------------------------------------------------------------------------------------------
# 5. the report is all or nothing


def test_a_failed_report_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    import distillscope.report as R

    run = make_synthetic_run(tmp_path / "run")
    write_report(run, n_boot=50, n_perm=50)
    (run / "report" / "my-notes.txt").write_text("mine")
    old = {p.relative_to(run): p.read_bytes() for p in (run / "report").rglob("*") if p.is_file()}

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(R.H, "render_page", full)  # after the tables and figures were written
    with pytest.raises(StoreError, match="disk full"):
        write_report(run, seed=5, n_boot=50, n_perm=50)
    now = {p.relative_to(run): p.read_bytes() for p in (run / "report").rglob("*") if p.is_file()}
    assert now == old
    assert [p.name for p in run.iterdir() if p.name.startswith(".distillscope")] == []
    monkeypatch.undo()
    write_report(run, seed=5, n_boot=50, n_perm=50)  # succeeds; the user's file is kept
    assert (run / "report" / "my-notes.txt").read_text() == "mine"
    assert json.loads((run / "report" / "summary.json").read_text())["report/seed"] == 5


def test_report_disk_full_and_read_only_are_one_line(tmp_path, monkeypatch):
    import distillscope.report as R

    run = make_synthetic_run(tmp_path / "run")

    def ro(*_a, **_k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(R, "_build", ro)
    one_line_error(invoke("report", run), "cannot write", "Read-only")


# ---------------------------------------------------------------------------------------------
# 7. Ctrl-C


def test_ctrl_c_says_how_to_resume(tmp_path, monkeypatch):
    import distillscope.pipeline as P

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(P, "run", interrupted)
    res = invoke("run", TOY, "--out", tmp_path / "r")
    assert res.exit_code == 130
    assert "interrupted: committed work is kept; rerun the same command to resume" in res.output


# ---------------------------------------------------------------------------------------------
# 8. user input: one line, exit 2


def test_set_with_bad_yaml_or_an_empty_key(tmp_path):
    one_line_error(invoke("run", TOY, "--out", tmp_path / "r", "--set", "tree.G=[1"),
                   "--set 'tree.G=[1'", "not valid YAML")
    one_line_error(invoke("run", TOY, "--out", tmp_path / "r", "--set", "=5"),
                   "--set '=5'", "key before '=' is empty")
    one_line_error(invoke("run", TOY, "--out", tmp_path / "r", "--set", "tree..G=5"),
                   "tree..G", "empty part")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("override, needle", [
    ("student.options.strength=abc", "'strength' must be a finite number"),
    ("student.options.vocab=true", "'vocab' must be an integer"),
    ("student.options.vocab=1000", "'vocab' must be in [2, 26]"),
    ("student.options.tilt=7", "'tilt' must be a string"),
    ("student.options.noise=-1", "'noise' must be >= 0"),
    ("task.options.n_questions=abc", "'n_questions' must be an integer"),
    ("task.options.n_questions=true", "'n_questions' must be an integer"),
])
def test_toy_options_the_model_rejects(tmp_path, override, needle):
    one_line_error(invoke("run", TOY, "--out", tmp_path / "r", "--set", override), needle)


def test_device_and_threads(tmp_path):
    one_line_error(invoke("run", TOY, "--out", tmp_path / "r", "--set", "student.device=tpu"),
                   "student.device", "unknown device 'tpu'")
    one_line_error(invoke("run", TOY, "--out", tmp_path / "r", "--threads", "-3"),
                   "--threads must be a positive number")


def test_a_task_file_that_is_not_utf8(tmp_path):
    f = tmp_path / "q.jsonl"
    f.write_bytes(b'{"id": "a", "question": "ok?", "answer": "yes"}\n'
                  b'{"id": "b", "question": "\xff"}\n')
    res = invoke("run", TOY, "--out", tmp_path / "r", "--set", "task.name=custom",
                 "--set", f"task.path={f}", "--set", "task.verifier=yesno")
    one_line_error(res, str(f), "line 2 is not valid UTF-8")


@pytest.mark.parametrize("name, content", [("provenance.json", "{not json"),
                                           ("provenance.json", "[1, 2]"),
                                           ("config.yaml", "a: [1\n"),
                                           ("config.yaml", b"\xff\xfe")])
def test_report_with_a_corrupt_run_file(tmp_path, name, content):
    run = make_synthetic_run(tmp_path / "run")
    p = run / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    one_line_error(invoke("report", run), name)


# ---------------------------------------------------------------------------------------------
# 9. silently wrong or unclear


@pytest.mark.parametrize("override", ["tree.G=true", "tree.G=2.5", "tree.n_sig='20'",
                                      "sampling.temperature=true", "tree.tau=.nan"])
def test_counts_are_strict_integers_and_numbers_not_booleans(override):
    with pytest.raises(ConfigError, match="config field"):
        cli._load(TOY, [override])


def test_a_duplicate_question_id_is_named(tmp_path):
    f = tmp_path / "q.jsonl"
    f.write_text("\n".join(json.dumps({"id": i, "question": "q?", "answer": "yes"})
                           for i in ("a", "dup", "b", "dup")))
    res = invoke("run", TOY, "--out", tmp_path / "r", "--set", "task.name=custom",
                 "--set", f"task.path={f}", "--set", "task.verifier=yesno")
    one_line_error(res, "'dup' appears 2 times")


def test_a_teacher_without_decision_points_is_still_a_scored_teacher(tmp_path):
    run = make_synthetic_run(tmp_path / "run")
    prov = json.loads((run / "provenance.json").read_text())
    (run / "provenance.json").write_text(json.dumps({**prov, "teachers_scored": ["lonely"]}))
    r = load_run(run)
    assert "lonely" in r.scored_teachers and "lonely" not in r.teachers
    con = Console(file=io.StringIO(), width=200)
    render_path(run, "q0", 0, teacher="lonely", console=con)  # not "unknown teacher"
    assert "teacher lonely" in con.file.getvalue()


def test_toy_models_that_differ_have_different_names():
    from distillscope.config import ModelSpec
    from distillscope.models.toy import load_toy_model

    a = load_toy_model(ModelSpec(backend="toy", model="toy"))
    b = load_toy_model(ModelSpec(backend="toy", model="toy", options={"vocab": 10}))
    assert a.name != b.name and "vocab=10" in b.name


# ---------------------------------------------------------------------------------------------
# 10. bidi controls are shown, not obeyed


def test_bidi_controls_are_made_visible():
    for cp in (0x202A, 0x202B, 0x202C, 0x202D, 0x202E, 0x2066, 0x2067, 0x2068, 0x2069, 0x200F):
        assert visible(f"a{chr(cp)}b") == f"a<U+{cp:04X}>b"


def test_bidi_controls_in_tokens_do_not_reach_the_page_or_terminal(tmp_path):
    import pyarrow.parquet as pq

    run = make_synthetic_run(tmp_path / "run")
    paths = pq.read_table(run / "tables" / "paths" / "part-0.parquet").to_pylist()
    rlo = "\u202e"
    for p in paths:
        p["tokens"] = [f"{rlo}{t}" for t in p["tokens"]]
    write_table(run, "paths", paths)
    kids = pq.read_table(run / "tables" / "children" / "part-0.parquet").to_pylist()
    for c in kids:
        c["token_text"] = f"\u2066{c['token_text']}"
    write_table(run, "children", kids)
    html = write_report(run, n_boot=50, n_perm=50).read_text(encoding="utf-8")
    assert rlo not in html and "\u2066" not in html and "&lt;U+202E&gt;" in html
    con = Console(file=io.StringIO(), width=200)
    render_path(run, "q0", 0, console=con)
    out = con.file.getvalue()
    assert rlo not in out and "\u2066" not in out and "<U+202E>" in out
