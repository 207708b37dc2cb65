"""Regression tests for issue #16 that need a real (toy) run through the CLI: a damaged table is
recomputed on resume to the same bytes, a failed start does not poison --out, other people's
files survive, truncated rollouts are reported, and a received run cannot turn on
trust_remote_code by itself."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from distillscope.cli import app
from distillscope.config import load_config

ROOT = Path(__file__).resolve().parents[2]
TOY = ROOT / "configs" / "toy.yaml"
runner = CliRunner(env={"COLUMNS": "300"})


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def parquet_bytes(run: Path) -> dict[str, bytes]:
    files = [run / "demos.parquet", *sorted((run / "tables").rglob("*.parquet"))]
    return {str(p.relative_to(run)): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """A 2-question toy config with one external and one self-* teacher."""
    cfg = load_config(TOY, {"task.options.n_questions": 2, "tree.G": 40, "tree.n_min": 30})
    keep = {"helpful", "self-1c"}
    cfg = cfg.model_copy(update={"teachers": [t for t in cfg.teachers if t.name in keep]})
    path = tmp_path_factory.mktemp("cfg") / "small.yaml"
    path.write_text(cfg.to_yaml())
    return path


@pytest.fixture(scope="module")
def reference(small, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    res = invoke("run", small, "--out", out, "--no-report")
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_damaged_part_is_recomputed_on_resume_to_the_same_bytes(small, reference, tmp_path,
                                                                   damage):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    part = run / "tables" / "rollouts" / "q00000__a-init.parquet"
    if damage == "truncate":
        part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    else:
        part.unlink()
    res = invoke("report", run)  # refused, naming the unit: not a partial run passed as whole
    assert res.exit_code == 2 and "q00000/a-init" in res.output and "damaged" in res.output
    res = invoke("run", small, "--out", run, "--no-report")
    assert res.exit_code == 0, res.output
    assert "warning: unit 'q00000/a-init'" in res.output and "will be recomputed" in res.output
    assert "computed after 'q00000/a-init'" in res.output  # its question's later units too
    assert "nothing recomputed" not in res.output
    assert parquet_bytes(run) == parquet_bytes(reference)
    assert invoke("report", run).exit_code == 0


def test_out_keeps_files_the_tool_did_not_write(small, tmp_path):
    d = tmp_path / "d"
    (d / "p").mkdir(parents=True)
    (d / "p" / ".draft.tmp").write_text("x")
    (d / ".notes.tmp").write_text("y")
    res = invoke("run", small, "--out", d, "--no-report")
    assert res.exit_code == 0, res.output
    res = invoke("run", small, "--out", d, "--set", "tree.G=41")  # refused: another config
    assert res.exit_code == 2 and "different configuration" in res.output
    assert (d / "p" / ".draft.tmp").read_text() == "x" and (d / ".notes.tmp").read_text() == "y"


def test_a_failed_start_does_not_poison_out(small, tmp_path):
    out = tmp_path / "run"
    res = invoke("run", small, "--out", out, "--set", "task.name=custom",
                 "--set", f"task.path={tmp_path / 'typo.jsonl'}", "--set", "task.verifier=yesno")
    assert res.exit_code == 2 and "question file not found" in res.output
    assert not out.exists()  # nothing was there before, and nothing is left
    res = invoke("run", small, "--out", out, "--set", "teachers.0.model.options.tilt=sideways")
    assert res.exit_code == 2 and "toy option 'tilt'" in res.output, res.output
    assert not out.exists()
    out.mkdir()
    (out / "mine.txt").write_text("x")  # a folder of the user's: only the tool's files go
    res = invoke("run", small, "--out", out, "--set", "teachers.0.model.options.tilt=sideways")
    assert res.exit_code == 2 and os.listdir(out) == ["mine.txt"]
    res = invoke("run", small, "--out", out, "--no-report")  # the corrected config
    assert res.exit_code == 0, res.output
    assert yaml.safe_load((out / "config.yaml").read_text())["task"]["name"] == "toy"


def test_mostly_truncated_rollouts_are_reported(small, tmp_path):
    out = tmp_path / "run"
    res = invoke("run", small, "--out", out, "--set", "sampling.max_new_tokens=4")
    assert res.exit_code == 0, res.output
    assert "stopped at sampling.max_new_tokens" in res.output
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert summary["rollouts/truncated_fraction"] > 0.3
    assert summary["rollouts/truncated"] > 0
    page = (out / "report" / "report.html").read_text(encoding="utf-8")
    assert "of rollouts stopped at max_new_tokens" in page


def test_remote_code_refused_before_anything_is_written(small, tmp_path):
    out = tmp_path / "new"
    cfg = yaml.safe_load(Path(small).read_text())
    cfg["teachers"][0]["model"]["trust_remote_code"] = True
    path = tmp_path / "remote.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = invoke("run", path, "--out", out)
    assert res.exit_code == 2 and "--trust-remote-code" in res.output, res.output
    assert not out.exists()  # no OUT, no OUT/.lock left behind by a refused start


def test_a_received_run_cannot_turn_on_remote_code(reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["teachers"][0]["model"]["trust_remote_code"] = True
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = invoke("score", run, "--teacher", "helpful", "--no-report")
    assert res.exit_code == 2, res.output
    assert "trust_remote_code for teacher 'helpful'" in res.output
    assert "--trust-remote-code" in res.output
    res = invoke("score", run, "--teacher", "helpful", "--no-report", "--trust-remote-code")
    assert res.exit_code == 0, res.output


def test_a_report_of_a_stopped_run_says_how_far_it_got(reference, tmp_path):
    from distillscope.store import RunStore

    def report(run):
        res = invoke("report", run)
        assert res.exit_code == 0, res.output
        summary = json.loads((run / "report" / "summary.json").read_text())
        page = (run / "report" / "report.html").read_text(encoding="utf-8")
        return " ".join(res.output.split()), summary, page

    whole = tmp_path / "whole"
    shutil.copytree(reference, whole)
    out, summary, page = report(whole)
    assert "incomplete" not in out and "run/incomplete" not in summary
    # stopped in phase 2 of the second question: its tree is finished, its scores are not
    scoring = tmp_path / "scoring"
    shutil.copytree(reference, scoring)
    RunStore(scoring).uncommit("q00001/c-")
    out, summary, page = report(scoring)
    said = "2 of 2 questions have a finished tree, 1 of the 2 with paths are scored"
    assert f"{scoring} is incomplete: stopped before its end: {said}" in out
    assert said in summary["run/incomplete"] and said in page
    for cmd in (["show", scoring, "--question", "0", "--path", "0"],
                ["export-weights", scoring, "--teacher", "helpful", "--out",
                 tmp_path / "w.parquet"]):
        res = invoke(*cmd)
        assert res.exit_code == 0, res.output
        assert f"{scoring} is incomplete: stopped before its end: {said}" in " ".join(
            res.output.split()), cmd[0]
    res = invoke("show", whole, "--question", "0", "--path", "0")
    assert res.exit_code == 0 and "incomplete" not in res.output, res.output
    res = invoke("compare", whole, scoring, "--out", tmp_path / "cmp")
    assert res.exit_code == 0, res.output
    assert f"{scoring} is incomplete: stopped before its end: {said}" in " ".join(
        res.output.split())
    cmp = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert "setting/0/incomplete" not in cmp and said in cmp["setting/1/incomplete"]
    assert "Incomplete run" in (tmp_path / "cmp" / "compare.html").read_text(encoding="utf-8")
    # stopped before the second question's tree, on the first invocation (no provenance yet)
    tree = tmp_path / "tree"
    shutil.copytree(reference, tree)
    RunStore(tree).uncommit("q00001/")
    (tree / "provenance.json").unlink()
    out, summary, _ = report(tree)
    assert "1 of 2 questions have a finished tree, 1 of the 1 with paths are scored" in out
    # a run directory from before plan.json, stopped on its first invocation
    (tree / "plan.json").unlink()
    out, summary, _ = report(tree)
    assert "no invocation of this run has finished" in summary["run/incomplete"]


def test_a_unit_without_its_marker_is_named_not_left_out_silently(small, reference, tmp_path):
    """A deleted commit marker (or an invocation stopped between a unit's parts and its
    marker) leaves parts that every reader ignores: the ranking would rest on fewer questions
    for one teacher. The report and the commands that read the tables say so."""
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "units" / "q00001__c-score-helpful.done").unlink()
    said = "1 unit(s) have tables on disk but no commit marker (q00001/c-score-helpful)"
    res = invoke("report", run)
    assert res.exit_code == 0, res.output
    assert f"{run} is incomplete: {said}" in " ".join(res.output.split())
    summary = json.loads((run / "report" / "summary.json").read_text())
    assert said in summary["run/incomplete"]
    res = invoke("export-weights", run, "--teacher", "helpful", "--out", tmp_path / "w.parquet")
    assert res.exit_code == 0 and said in " ".join(res.output.split()), res.output
    # a resume redoes that unit alone, and the note is gone
    res = invoke("run", small, "--out", run)
    assert res.exit_code == 0 and "computed 1 new; 0 new rollouts" in res.output, res.output
    assert "incomplete" not in res.output


def test_a_damaged_demonstrations_file_is_one_line_not_a_traceback(small, reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    with open(run / "demos.parquet", "r+b") as f:
        f.truncate(50)
    for cmd in (["run", small, "--out", run],
                ["score", run, "--teacher", "self-3c", "--mode", "self-3c"]):
        res = invoke(*cmd)
        assert res.exit_code == 2, res.output
        last = res.output.strip().splitlines()[-1]
        assert last.startswith("error: ") and f"{run / 'demos.parquet'} cannot be read" in last
        assert "Traceback" not in res.output


@pytest.mark.parametrize("plan", ["garbage{{", "[1, 2]"])
def test_a_damaged_plan_is_a_warning_before_any_output_not_an_error_after_it(reference,
                                                                              tmp_path, plan):
    """plan.json only says how far a run got: the tables are verified by their markers, so
    the readers still work, and say that completeness cannot be told, never writing their
    output and then failing."""
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "plan.json").write_text(plan)
    for cmd in (["report", run], ["show", run, "--question", "0", "--path", "0"],
                ["export-weights", run, "--teacher", "helpful", "--out", tmp_path / "w.jsonl"]):
        res = invoke(*cmd)
        assert res.exit_code == 0, res.output
        out = " ".join(res.output.split())
        assert f"{run} is incomplete: perhaps: its question list cannot be read" in out, cmd[0]
        assert str(run / "plan.json") in out


def test_out_holding_a_config_of_the_user_s_or_stray_units_is_refused_untouched(small, reference,
                                                                               tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    mine = "# my experiment, with my comments\n" + small.read_text()
    (proj / "config.yaml").write_text(mine)
    res = invoke("run", proj / "config.yaml", "--out", proj)
    assert res.exit_code == 2, res.output
    assert "was not written by this version of distillscope" in res.output
    assert (proj / "config.yaml").read_text() == mine and sorted(os.listdir(proj)) == [
        "config.yaml"]
    stray = tmp_path / "stray"
    (stray / "units").mkdir(parents=True)
    (stray / "units" / "x.done").write_text("mine")
    res = invoke("run", small, "--out", stray)
    assert res.exit_code == 2 and "holds units/ (commit markers) but no config.yaml" in \
        " ".join(res.output.split())
    assert sorted(os.listdir(stray)) == ["units"]
    # a run whose config.yaml predates the header line, with work in it, still resumes
    old = tmp_path / "old"
    shutil.copytree(reference, old)
    text = (old / "config.yaml").read_text()
    assert text.startswith("# distillscope:")
    (old / "config.yaml").write_text(text.split("\n", 1)[1])
    res = invoke("run", small, "--out", old, "--no-report")
    assert res.exit_code == 0 and "nothing recomputed" in res.output, res.output


def test_a_configured_teacher_without_scores_is_told_apart_from_a_typo(reference, tmp_path):
    from distillscope.store import RunStore

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    for key in ("q00000/c-", "q00001/c-"):  # stopped before phase 2
        RunStore(run).uncommit(key)
    res = invoke("export-weights", run, "--teacher", "helpful", "--out", tmp_path / "w.jsonl")
    assert res.exit_code == 2, res.output
    assert "teacher 'helpful' is in this run's configuration but has no scores yet" in \
        " ".join(res.output.split())
    res = invoke("export-weights", run, "--teacher", "nope", "--out", tmp_path / "w.jsonl")
    assert res.exit_code == 2 and "unknown teacher 'nope'" in res.output


def test_a_failed_first_start_removes_only_what_it_made(small, tmp_path):
    """Files of the user's that a run would write (plan.json, provenance.json, screen/) are
    refused up front, beside a user's config.yaml too; the folders made for a nested OUT go
    again; and a start refused because another process holds the lock removes nothing."""
    import subprocess
    import sys

    bad = ["--set", "teachers.0.model.options.tilt=sideways"]  # fails when the model loads
    for name in ("plan.json", "provenance.json"):
        u = tmp_path / f"u-{name}"
        u.mkdir()
        (u / name).write_text("mine")
        res = invoke("run", small, "--out", u, *bad)
        assert res.exit_code == 2 and f"holds {name} but no config.yaml" in res.output
        assert os.listdir(u) == [name] and (u / name).read_text() == "mine"
    proj = tmp_path / "proj"
    (proj / "screen").mkdir(parents=True)
    (proj / "screen" / "shot.png").write_text("png")
    (proj / "config.yaml").write_text("# mine\n" + small.read_text())
    for extra in ([], ["--force"]):
        res = invoke("run", proj / "config.yaml", "--out", proj, *extra)
        assert res.exit_code == 2 and "was not written by this version" in res.output
    assert (proj / "config.yaml").read_text().startswith("# mine")
    nested = tmp_path / "a" / "b" / "c"
    res = invoke("run", small, "--out", nested, *bad)
    assert res.exit_code == 2 and not (tmp_path / "a").exists()
    held = tmp_path / "held"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from distillscope.store import run_lock; "
         "lock = run_lock(sys.argv[1]); lock.__enter__(); print('held', flush=True); "
         "time.sleep(120)",
         str(held)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        res = invoke("run", small, "--out", held)
        assert res.exit_code == 2 and "in use" in res.output, res.output
        assert os.listdir(held) == [".lock"]  # the holder's lock file is still there
    finally:
        holder.kill()
        holder.wait()


def test_a_teacher_scored_without_any_decision_point_is_said_so(reference, tmp_path):
    """Scored everywhere, but no row: export-weights says so, not that the run stopped."""
    import hashlib

    import pyarrow.parquet as pq

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    for part in (run / "tables" / "nodes").glob("*c-score-helpful.parquet"):
        table = pq.read_table(part)
        pq.write_table(table.slice(0, 0), part)  # no decision point (markers now mismatch)
    for marker in (run / "units").glob("*c-score-helpful.done"):
        data = json.loads(marker.read_text())
        nodes = run / "tables" / "nodes" / marker.name.replace(".done", ".parquet")
        data["parts"]["nodes"]["size"] = nodes.stat().st_size
        data["parts"]["nodes"]["sha256"] = hashlib.sha256(nodes.read_bytes()).hexdigest()
        marker.write_text(json.dumps(data))
    res = invoke("export-weights", run, "--teacher", "helpful", "--out", tmp_path / "w.jsonl")
    assert res.exit_code == 2, res.output
    assert "teacher 'helpful' was scored but has no decision point" in " ".join(
        res.output.split())
