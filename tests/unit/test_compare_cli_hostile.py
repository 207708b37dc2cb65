"""`distillscope compare` against a hostile user: every mistake is one 'error:' line naming the
input, exit code 2, before any work; no file the tool did not write is overwritten or removed;
nothing half-written after an error. Regression tests for a sweep of such mistakes."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from distillscope import compare as C
from distillscope.cli import app
from distillscope.config import load_config
from distillscope.pipeline import run

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner(env={"COLUMNS": "300"})  # no line wrapping in messages


def invoke(*args: object):
    return runner.invoke(app, ["compare", *(str(a) for a in args)])


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry below `folder` (hidden ones too): file -> bytes, folder -> None."""
    return {str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes())
            for p in sorted(folder.rglob("*"))}


def one_error_line(res, *names: str) -> str:
    """The output is exactly one 'error: ...' line, exit 2, naming every one of `names`."""
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert "Traceback" not in res.output and "Errno" not in res.output
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    out = {}
    for name, seed in (("a", 1), ("b", 2)):
        run(load_config(ROOT / "configs" / "toy.yaml",
                        {"task.options.n_questions": 4, "seed": seed}), d / name)
        out[name] = d / name
    (d / "alink").symlink_to(d / "a", target_is_directory=True)
    out["alink"] = d / "alink"
    return out


@pytest.fixture
def runs_unchanged(runs):
    """The runs are never written by a refused compare."""
    before = {k: snapshot(v) for k, v in runs.items() if k != "alink"}
    yield runs
    assert {k: snapshot(v) for k, v in runs.items() if k != "alink"} == before


# ---------------------------------------------------------------------------------------------
# 1. --out: absent, empty, or an earlier comparison; never a folder of the user's


def test_out_holding_the_users_files_is_refused_untouched(runs_unchanged, tmp_path):
    runs = runs_unchanged
    user = tmp_path / "userdir"
    (user / "tables").mkdir(parents=True)
    for rel in ("compare.html", "compare.json", "tables/ranking_gkd.csv", "notes.txt"):
        (user / rel).write_text("mine\n")
    before, around = snapshot(user), sorted(os.listdir(tmp_path))
    one_error_line(invoke(runs["a"], runs["b"], "--out", user), str(user), "earlier comparison")
    assert snapshot(user) == before
    assert sorted(os.listdir(tmp_path)) == around  # no lock, no temporary folder beside it


def test_a_json_that_is_not_comparisons_is_not_taken_for_one(runs, tmp_path):
    user = tmp_path / "u"
    user.mkdir()
    (user / "compare.json").write_text(json.dumps({"mine": 1}))
    before = snapshot(user)
    one_error_line(invoke(runs["a"], runs["b"], "--out", user), str(user))
    assert snapshot(user) == before


def test_rerun_into_its_own_output_keeps_the_users_files(runs, tmp_path):
    out = tmp_path / "cmp"
    out.mkdir()  # an empty folder is fine
    res = invoke(runs["a"], runs["b"], "--out", out)
    assert res.exit_code == 0, res.output
    (out / "notes.txt").write_text("my notes\n")
    (out / "tables" / "my.csv").write_text("x\n1\n")
    (out / "mine").mkdir()
    (out / "mine" / "f.txt").write_text("f\n")
    (out / "tables" / "ranking_gkd.csv").write_text("stale\n")  # compare's own: replaced
    res = invoke(runs["a"], runs["b"], "--out", out, "--label", "A", "--label", "B")
    assert res.exit_code == 0, res.output
    assert (out / "notes.txt").read_text() == "my notes\n"
    assert (out / "tables" / "my.csv").read_text() == "x\n1\n"
    assert (out / "mine" / "f.txt").read_text() == "f\n"
    assert (out / "tables" / "ranking_gkd.csv").read_text().startswith("teacher,A mean,")
    summary = json.loads((out / "compare.json").read_text())
    assert [summary[f"setting/{i}/label"] for i in range(2)] == ["A", "B"]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".distillscope-compare-")]


def test_a_failed_write_leaves_nothing_and_the_earlier_comparison_intact(runs, tmp_path,
                                                                         monkeypatch):
    from distillscope.report import compare_plots

    def disk_full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    earlier = tmp_path / "cmp"
    assert invoke(runs["a"], runs["b"], "--out", earlier).exit_code == 0
    (earlier / "notes.txt").write_text("mine\n")
    before, around = snapshot(earlier), sorted(os.listdir(tmp_path))
    monkeypatch.setattr(compare_plots, "sr_range_plot", disk_full)  # after the tables
    one_error_line(invoke(runs["a"], runs["b"], "--out", earlier, "--label", "A", "--label",
                          "B"), "disk full", str(earlier))
    assert snapshot(earlier) == before
    assert sorted(os.listdir(tmp_path)) == around
    new = tmp_path / "new" / "deep" / "cmp"
    one_error_line(invoke(runs["a"], runs["b"], "--out", new), "disk full")
    assert not (tmp_path / "new").exists()  # neither OUT nor the folders made for it


def test_a_killed_compare_leaves_the_users_files_recoverable(runs, tmp_path):
    import subprocess

    out = tmp_path / "cmp"
    assert invoke(runs["a"], runs["b"], "--out", out).exit_code == 0
    proc = subprocess.Popen(["true"])  # a pid that is gone
    proc.wait()
    # killed after moving the user's notes into its build, before the swap
    stale = tmp_path / f".distillscope-compare-{proc.pid}-cmp"
    (stale / "tables").mkdir(parents=True)
    (stale / "notes.txt").write_text("mine\n")
    (stale / "tables" / "ranking_gkd.csv").write_text("half\n")
    assert invoke(runs["a"], runs["b"], "--out", out).exit_code == 0
    assert (out / "notes.txt").read_text() == "mine\n" and not stale.exists()


# ---------------------------------------------------------------------------------------------
# 2. a run given twice


@pytest.mark.parametrize("second", ["same", "dotted", "link"])
def test_a_run_given_twice_is_refused(runs_unchanged, tmp_path, second):
    runs = runs_unchanged
    a = runs["a"]
    other = {"same": a, "dotted": a.parent / "." / "b" / ".." / "a", "link": runs["alink"]}
    out = tmp_path / "o"
    line = one_error_line(invoke(a, other[second], "--out", out), "given twice")
    assert str(other[second]) in line or str(a) in line
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# 3. --out inside a run


@pytest.mark.parametrize("rel", [".", "tables", "report", "new-sub"])
@pytest.mark.parametrize("via", ["a", "alink"])
def test_out_in_a_run_is_refused(runs_unchanged, rel, via):
    runs = runs_unchanged
    out = runs[via] / rel
    line = one_error_line(invoke(runs["a"], runs["b"], "--out", out), str(out))
    assert f"run directory {runs['a']}" in line
    assert not (runs["a"] / "new-sub").exists()


# ---------------------------------------------------------------------------------------------
# 4. files where folders belong


def test_a_file_given_as_a_run_is_named_as_a_file(runs, tmp_path):
    f = ROOT / "configs" / "toy.yaml"
    line = one_error_line(invoke(runs["a"], f, "--out", tmp_path / "o"), str(f))
    assert "is a file, not a run directory" in line and "not found" not in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("below", ["", "sub", "sub/deeper"])
def test_out_under_a_file_is_one_line_naming_it(runs, tmp_path, below):
    f = tmp_path / "somefile.txt"
    f.write_text("mine\n")
    out = f / below if below else f
    line = one_error_line(invoke(runs["a"], runs["b"], "--out", out), str(out))
    assert "is a file" in line and str(f) in line
    assert f.read_text() == "mine\n"


# ---------------------------------------------------------------------------------------------
# 5. labels


@pytest.mark.parametrize("bad", ["", "   ", "two\nlines", "tab\there", "red\x1b[31m",
                                 "rtl\u202eevil", C.POOLED])
def test_a_bad_label_is_refused_by_name(runs_unchanged, tmp_path, bad):
    runs = runs_unchanged
    out = tmp_path / "o"
    one_error_line(invoke(runs["a"], runs["b"], "--out", out, "--label", bad, "--label", "ok"),
                   "--label", repr(bad))
    assert not out.exists()


def test_explicit_duplicate_labels_are_refused(runs_unchanged, tmp_path):
    runs = runs_unchanged
    out = tmp_path / "o"
    one_error_line(invoke(runs["a"], runs["b"], "--out", out, "--label", "x", "--label", "x"),
                   "'x'", "twice")
    assert not out.exists()
    with pytest.raises(ValueError, match="'x' is given twice"):
        C.load_settings([runs["a"], runs["b"]], ["x", "x"])


def test_a_teacher_name_meaning_two_teachers_is_named(tmp_path):
    """compare pairs teachers by name: the same name with another model in another run is a
    warning on the terminal, a finding on the page and a compare.json key."""
    cfg = load_config(ROOT / "configs" / "toy.yaml", {"task.options.n_questions": 3, "seed": 1})
    keep = [t for t in cfg.teachers if t.name in ("helpful", "harmful")]
    run(cfg.model_copy(update={"teachers": keep}), tmp_path / "a")
    t = keep[0]
    other = t.model_copy(update={"model": t.model.model_copy(
        update={"options": {**t.model.options, "strength": 3.0}})})
    run(cfg.model_copy(update={"teachers": [other, keep[1]]}), tmp_path / "b")
    res = invoke(tmp_path / "a", tmp_path / "b", "--out", tmp_path / "o")
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "warning: teacher 'helpful' is defined differently across settings" in out
    assert "harmful" not in out.split("warning: ")[1].split("rename one")[0]
    summary = json.loads((tmp_path / "o" / "compare.json").read_text())
    assert set(k for k in summary if k.startswith("teacher/")) == {"teacher/helpful/differs"}
    assert "Same name, different teacher: helpful" in (tmp_path / "o" / "compare.html").read_text(
        encoding="utf-8")


def test_a_device_or_runtime_option_does_not_make_another_teacher():
    from distillscope.settings import Setting, teacher_conflicts

    base = {"name": "big", "mode": "external",
            "model": {"backend": "hf", "model": "Qwen/Qwen3-8B", "device": "cuda:0",
                      "options": {"max_batch_samples": 64}}}
    same = {"name": "big", "mode": "external",  # another device, runtime options, vllm
            "model": {"backend": "vllm", "model": "Qwen/Qwen3-8B", "device": "auto",
                      "options": {"kv_cache_gib": 4}}}
    other = {"name": "big", "mode": "external",
             "model": {"backend": "hf", "model": "Qwen/Qwen3-8B",
                       "options": {"matmul_dtype": "bfloat16"}}}  # other numbers

    def setting(label, *teachers):
        return Setting(label, Path(label), None, config={"teachers": list(teachers)})

    assert teacher_conflicts([setting("A", base), setting("B", same)]) == {}
    found = teacher_conflicts([setting("A", base), setting("B", same), setting("C", other)])
    assert list(found) == ["big"] and "A, B; C" in found["big"]
