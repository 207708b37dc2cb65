"""The CLI, report, show and export as a first-time user meets them: every mistake gives one
clear line (never a traceback), every command says what it did, and the outputs say what was
run. Regression tests for defects found by trying the tool on the toy preset."""

from __future__ import annotations

import io
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from rich.console import Console
from synthetic_run import make_synthetic_run, write_table
from typer.testing import CliRunner

from distillscope import analysis, cli
from distillscope.cli import app
from distillscope.config import ConfigError, load_config
from distillscope.progress import RichReporter
from distillscope.report import plots, to_markdown, write_report
from distillscope.report.data import load_run
from distillscope.show import render_path

ROOT = Path(__file__).resolve().parents[2]
TOY = ROOT / "configs" / "toy.yaml"
runner = CliRunner(env={"COLUMNS": "300"})  # no line wrapping in messages


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_synthetic_run(tmp_path_factory.mktemp("run") / "run")


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """A tiny toy run made through the CLI twice (the second time resumes)."""
    cfg = load_config(TOY, {"task.options.n_questions": 2, "tree.G": 60})
    cfg = cfg.model_copy(update={"teachers": [t for t in cfg.teachers if t.name == "helpful"]})
    d = tmp_path_factory.mktemp("toy")
    (d / "c.yaml").write_text(cfg.to_yaml())
    first = invoke("run", d / "c.yaml", "--out", d / "run")
    first.prov = json.loads((d / "run" / "provenance.json").read_text())
    second = invoke("run", d / "c.yaml", "--out", d / "run")
    return d / "run", first, second


# ---------------------------------------------------------------------------------------------
# Bad input: one clear line, exit code 2


def test_set_through_a_scalar_or_past_a_list_is_named_not_a_traceback(tmp_path):
    res = invoke("run", TOY, "--out", tmp_path / "r", "--set", "teachers.99.name=x")
    assert res.exit_code == 2, res.output
    assert "'teachers.99' must be an index" in res.output
    res = invoke("run", TOY, "--out", tmp_path / "r", "--set", "tree.G.x=1")
    assert res.exit_code == 2 and "'tree.G' holds" in res.output
    assert not (tmp_path / "r").exists()


def test_switching_the_quickstart_to_vllm_names_the_hf_option_before_anything_is_written(
        tmp_path):
    res = invoke("run", ROOT / "configs" / "quickstart.yaml", "--out", tmp_path / "r",
                 "--set", "student.backend=vllm")
    assert res.exit_code == 2, res.output
    line = res.output.strip()
    assert "\n" not in line and "'student': unknown vllm backend option(s) ['matmul_dtype']" in line
    assert "an option of the hf backend" in line and "options={}" in line
    assert not (tmp_path / "r").exists()
    # a misspelt option of a teacher is refused as early, not after the student's rollouts
    res = invoke("run", TOY, "--out", tmp_path / "r", "--set", "teachers.0.model.options.tlt=x")
    assert res.exit_code == 2 and "unknown toy backend option(s) ['tlt']" in res.output
    assert not (tmp_path / "r").exists()


def test_usage_errors_of_the_console_script_are_one_line(run_dir):
    """Through `main` (what the installed command runs), not CliRunner: an option value that
    does not parse, a missing argument, an unknown option or command, a negative --seed."""
    import subprocess
    import sys

    cases = [(["show", run_dir, "--question", "0", "--path", "abc"], "'--path'"),
             (["report"], "Missing argument"), (["report", run_dir, "--seed", "-1"], "'--seed'"),
             (["show", run_dir, "--bogus"], "--bogus"), (["bogus"], "'bogus'")]
    for args, named in cases:
        res = subprocess.run([sys.executable, "-m", "distillscope", *map(str, args)],
                             capture_output=True, text=True, env={"COLUMNS": "300",
                                                                  "PATH": "/usr/bin:/bin"})
        out = (res.stdout + res.stderr).strip()
        assert res.returncode == 2, (args, out)
        assert len(out.splitlines()) == 1 and out.startswith("error: ") and named in out, out
    res = subprocess.run([sys.executable, "-m", "distillscope", "--help"], capture_output=True,
                         text=True)
    assert res.returncode == 0 and "Usage" in res.stdout


def test_an_empty_config_file_is_an_error_not_the_defaults(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing here\n")
    with pytest.raises(ConfigError, match="empty"):
        cli._load(empty, [])
    res = invoke("run", empty, "--out", tmp_path / "r", "--set", "tree.G=5")
    assert res.exit_code == 2 and "empty" in res.output


def test_out_pointing_at_a_file(tmp_path):
    f = tmp_path / "a-file"
    f.write_text("x")
    res = invoke("run", TOY, "--out", f)
    assert res.exit_code == 2 and f"--out {f} is a file" in res.output
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "gone")
    res = invoke("run", TOY, "--out", dangling)
    assert res.exit_code == 2 and "is a broken symbolic link" in res.output
    assert dangling.is_symlink() and not (tmp_path / "gone").exists()


def test_report_refuses_a_directory_that_is_not_a_run(tmp_path):
    res = invoke("report", tmp_path)
    assert res.exit_code == 2 and "not a distillscope run" in res.output
    assert not (tmp_path / "report").exists()
    f = tmp_path / "file"
    f.write_text("x")
    assert "is a file" in invoke("report", f).output
    with pytest.raises(NotADirectoryError, match="is a file"):
        load_run(f)


def test_score_with_a_bad_mode_names_the_option_without_pydantic_noise(run_dir):
    res = invoke("score", run_dir, "--teacher", "new", "--mode", "bogus")
    assert res.exit_code == 2
    assert "--mode: Input should be 'external'" in res.output
    assert "pydantic.dev" not in res.output and "validation error" not in res.output
    res = invoke("score", run_dir, "--teacher", "new", "--mode", "external")
    assert res.exit_code == 2 and "needs a 'model'" in res.output


def test_score_refuses_another_model_under_a_name_the_run_has(run_dir):
    res = invoke("score", run_dir, "--teacher", "qwen3-8b", "--mode", "external",
                 "--model", "Qwen/Qwen3-32B")
    assert res.exit_code == 2, res.output
    assert "already in" in res.output and "Qwen/Qwen3-8B" in res.output
    res = invoke("score", run_dir, "--teacher", "self-1c", "--mode", "self-3c")
    assert res.exit_code == 2 and "mode 'self-1c'" in res.output


# ---------------------------------------------------------------------------------------------
# show and export-weights


def _console() -> Console:
    return Console(file=io.StringIO(), width=120, record=True, color_system="truecolor")


def test_show_takes_a_question_index_as_its_help_says(run_dir):
    con = _console()
    render_path(run_dir, "1", 0, console=con)  # questions are q0..q3: index 1 is q1
    assert "question q1 · path 0" in con.export_text()
    with pytest.raises(KeyError, match="index 9 is out of range.*4 question"):
        render_path(run_dir, "9", 0, console=_console())


def test_show_errors_are_clean_and_name_the_question_paths(run_dir):
    res = invoke("show", run_dir, "--question", "q0", "--path", "9")
    assert res.exit_code == 2
    assert res.output.startswith("error: no path q0/9")  # not "'no path ...'" (a KeyError repr)
    assert "question q0 has paths 0, 1, 2, 3" in res.output


def test_show_has_a_method_option(run_dir):
    res = invoke("show", run_dir, "--question", "q0", "--path", "0", "--method", "minillm")
    assert res.exit_code == 0, res.output
    assert "· minillm ·" in res.output
    res = invoke("show", run_dir, "--question", "q0", "--path", "0", "--method", "drgrpo")
    assert res.exit_code == 0 and "· no teacher · drgrpo ·" in res.output, res.output


def test_export_cli_fill_option_and_summary(run_dir, tmp_path):
    out = tmp_path / "w.parquet"
    res = invoke("export-weights", run_dir, "--teacher", "self-1c", "--out", out, "--fill", "0")
    assert res.exit_code == 0, res.output
    df = pd.read_parquet(out)
    assert (df.loc[df["align"].isna(), "weight"] == 0).all()
    n_zero = int((df["weight"] == 0).sum())
    assert f"{len(df)} tokens of 14 paths" in res.output and f"{n_zero} weighted 0" in res.output


# ---------------------------------------------------------------------------------------------
# The ranking printed by the CLI


def _with_undefined_teacher(src: Path, dst: Path) -> Path:
    """The synthetic run plus a teacher "twin" whose every alignment is undefined."""
    run = make_synthetic_run(dst)
    nodes = pq.read_table(src / "tables" / "nodes" / "part-0.parquet").to_pandas()
    twin = nodes[nodes["teacher"] == "self-1c"].assign(teacher="twin", align=math.nan)
    write_table(run, "nodes", twin.to_dict("records"), unit="part-twin")
    return run


def test_cli_ranking_has_no_nan_and_no_verdict_for_the_last_teacher(run_dir, tmp_path):
    run = _with_undefined_teacher(run_dir, tmp_path / "run")
    res = invoke("report", run)
    assert res.exit_code == 0, res.output
    assert not re.search(r"[+\-\[ ]nan\b", res.output.lower())
    header = next(line for line in res.output.splitlines() if "beats next?" in line)
    col = [c.strip() for c in header.split("┃")].index("beats next?")
    rows = {line.split("│")[2].strip(): [c.strip() for c in line.split("│")]
            for line in res.output.splitlines() if line.count("│") > 6}
    assert rows["twin"][col] == "–"
    assert "n/a" in rows["twin"]
    last_defined = [t for t in rows if t != "twin"][-1]
    assert rows[last_defined][col] == "–"  # nobody to beat
    assert "undefined alignment at every decision point" in res.output and "twin" in res.output


def test_cli_ranking_uses_the_report_seed(run_dir, tmp_path):
    # 16 questions (the synthetic run's 4, three noisy copies): enough for the bootstrap
    # interval to depend on the seed
    run = make_synthetic_run(tmp_path / "run")
    nodes = pq.read_table(run_dir / "tables" / "nodes" / "part-0.parquet").to_pandas()
    rng = np.random.default_rng(1)
    for k in range(3):
        noisy = np.clip(nodes["align"] + rng.normal(0, 0.3, len(nodes)), -1, 1)
        more = nodes.assign(qid=nodes["qid"] + f"-{k}", align=noisy)
        write_table(run, "nodes", more.to_dict("records"), unit=f"part-more{k}")
    res = invoke("report", run, "--seed", "7")
    assert res.exit_code == 0, res.output
    csv = pd.read_csv(run / "report" / "tables" / "teacher_ranking.csv")
    top = csv.iloc[0]
    ci = f"[{top.ci_low:+.3f}, {top.ci_high:+.3f}]"
    assert ci in res.output
    # the default seed gives another interval, so this checks which draws were printed
    seed0 = analysis.teacher_ranking(load_run(run).nodes, "gkd", seed=0).iloc[0]
    assert f"[{seed0.ci_low:+.3f}, {seed0.ci_high:+.3f}]" != ci


def test_report_ranks_by_the_method_asked_for(run_dir, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    res = invoke("report", run, "--method", "minillm")
    assert res.exit_code == 0, res.output
    assert "mean MINILLM alignment" in res.output
    csv = pd.read_csv(run / "report" / "tables" / "teacher_ranking.csv")
    expect = analysis.teacher_ranking(load_run(run).nodes, "minillm", seed=0)
    assert list(csv.teacher) == list(expect.teacher)
    assert np.allclose(csv["mean"], expect["mean"])
    res = invoke("report", run, "--method", "kl")
    assert res.exit_code == 2 and "--method must be one of" in res.output


# ---------------------------------------------------------------------------------------------
# A real (toy) run through the CLI


def test_rerun_says_that_it_resumed_and_what_it_reused(toy_run):
    run, first, second = toy_run
    assert first.exit_code == 0 and second.exit_code == 0, second.output
    assert re.search(r"run .*: \d+ work unit\(s\) committed; [\d,]+ rollouts", first.output)
    assert "resumed" in second.output and "nothing recomputed" in second.output
    prov = json.loads((run / "provenance.json").read_text())
    assert f"run total {prov['rollouts/total']:,} rollouts" in second.output


def test_a_resumed_run_adds_its_time_and_counts_its_invocations(toy_run):
    run, first, second = toy_run
    prov = json.loads((run / "provenance.json").read_text())
    assert first.prov["invocations"] == 1 and prov["invocations"] == 2
    for k in ("time/phase1", "time/phase2"):
        assert prov[k] > first.prov[k] > 0  # the resumed invocation's time is added


def test_force_cannot_relabel_a_redefined_teacher_s_stored_scores(toy_run, tmp_path):
    import shutil

    run = shutil.copytree(toy_run[0], tmp_path / "run")
    before = (run / "config.yaml").read_bytes()
    cfg = load_config(run / "config.yaml")
    t = cfg.teachers[0]
    harmful = t.model_copy(update={"model": t.model.model_copy(
        update={"options": {**t.model.options, "tilt": "harmful"}})})
    (tmp_path / "c.yaml").write_text(cfg.model_copy(update={"teachers": [harmful]}).to_yaml())
    for extra in ([], ["--force"]):
        res = invoke("run", tmp_path / "c.yaml", "--out", run, *extra)
        assert res.exit_code == 2, res.output
        assert "teacher 'helpful'" in res.output and "defined differently" in res.output
        assert "another name" in res.output
    assert (run / "config.yaml").read_bytes() == before  # still the old definition


def test_a_teacher_left_out_of_a_resumed_config_is_kept_and_said(toy_run, tmp_path):
    import shutil

    run = shutil.copytree(toy_run[0], tmp_path / "run")
    cfg = load_config(TOY, {"task.options.n_questions": 2, "tree.G": 60})
    cfg = cfg.model_copy(update={"teachers": [t for t in cfg.teachers if t.name == "harmful"]})
    (tmp_path / "c.yaml").write_text(cfg.to_yaml())
    res = invoke("run", tmp_path / "c.yaml", "--out", run, "--no-report")
    assert res.exit_code == 0, res.output
    assert "teacher(s) helpful of" in " ".join(res.output.split())
    assert [t.name for t in load_config(run / "config.yaml").teachers] == ["helpful", "harmful"]


def test_a_failed_score_leaves_the_run_s_config_as_it_was(toy_run, tmp_path):
    import shutil

    run = shutil.copytree(toy_run[0], tmp_path / "run")
    before = (run / "config.yaml").read_bytes()
    res = invoke("score", run, "--teacher", "hfx", "--mode", "external", "--model",
                 tmp_path / "no-such-model", "--backend", "hf", "--no-report")
    assert res.exit_code == 2, res.output
    assert (run / "config.yaml").read_bytes() == before  # hfx is not left in the run
    res = invoke("score", run, "--teacher", "Helpful", "--mode", "self-1c", "--no-report")
    assert res.exit_code == 2 and "differ in more than letter case" in res.output
    assert (run / "config.yaml").read_bytes() == before


def test_more_bad_input_is_one_line_before_out_exists(tmp_path):
    dup = tmp_path / "dup.yaml"
    dup.write_text(TOY.read_text() + "seed: 5\n")  # toy.yaml sets seed already
    cases = [(dup, [], "the key 'seed' is given twice"),
             (ROOT / "configs", [], "is a directory"),
             (TOY, ["--set", "sampling.max_new_tokens=10000000000"], "less than or equal to"),
             (TOY, [], "starts with '~'")]
    for config, extra, said in cases:
        out = "~/out" if said.startswith("starts") else tmp_path / "r"
        res = invoke("run", config, "--out", out, *extra)
        assert res.exit_code == 2 and said in res.output, (said, res.output)
        assert len(res.output.strip().splitlines()) == 1
        assert not (tmp_path / "r").exists() and not Path("~").exists()


def test_screen_keeps_run_s_promises_about_out(tmp_path):
    own = tmp_path / "own"
    own.mkdir()
    (own / "config.yaml").write_text("my: config\n")
    res = invoke("screen", TOY, "--out", own)
    assert res.exit_code == 2 and "was not written by this version" in res.output
    assert os.listdir(own) == ["config.yaml"]  # no lock file left either
    bad = tmp_path / "bad"
    res = invoke("screen", TOY, "--out", bad, "--set", "task.name=custom", "--set",
                 f"task.path={tmp_path / 'none.jsonl'}", "--set", "task.verifier=yesno")
    assert res.exit_code == 2 and not bad.exists()


def test_work_found_done_leaves_the_rate_and_the_total():
    """A resumed phase shows how much was done before; its rate and ETA are about new work."""
    buf = io.StringIO()
    rep = RichReporter(Console(file=buf, width=140))
    with rep.bar("phase 1: initial rollouts", 100, unit="rollouts") as bar:
        bar.skip(60)
        bar.advance(40)
    text = buf.getvalue()
    assert "(60 done before)" in text and "40/40" in text and "100/100" not in text
    with rep.bar("phase 2: scoring", 3, unit="questions") as bar:
        for _ in range(3):
            bar.skip()
    assert "(3 done before)" in buf.getvalue() and "0/0" in buf.getvalue()


def test_summary_json_says_what_was_run(toy_run):
    run, _, _ = toy_run
    summary = json.loads((run / "report" / "summary.json").read_text())
    prov = json.loads((run / "provenance.json").read_text())
    assert summary["rollouts/total"] == prov["rollouts/total"] > 0
    assert summary["rollouts/targeted"] == prov["rollouts/targeted"]
    assert summary["run/config"] == "toy" and summary["run/estimator"] == "unbiased"
    assert summary["config/tree/G"] == 60 and summary["config/teachers/helpful/mode"] == "external"
    assert summary["versions/distillscope"] == prov["versions"]["distillscope"]
    assert summary["run/teachers_scored"] == "helpful"
    assert all(not isinstance(v, (dict, list)) for v in summary.values())
    page = (run / "report" / "report.html").read_text(encoding="utf-8")
    assert f"<b>rollouts</b>{prov['rollouts/total']:,} (" in page


def test_rollout_then_report_tells_how_to_score(tmp_path):
    out = tmp_path / "tree"
    res = invoke("rollout", TOY, "--out", out, "--set", "task.options.n_questions=1",
                 "--set", "tree.G=30")
    assert res.exit_code == 0, res.output
    assert "shared tree" in res.output and f"next: distillscope score {out}" in res.output
    res = invoke("report", out)
    assert res.exit_code == 0 and "no teacher has been scored in this run yet" in res.output


# ---------------------------------------------------------------------------------------------
# Tables, figures, progress


def test_markdown_keeps_small_p_values():
    md = to_markdown(pd.DataFrame({"p_perm": [3.2e-6, 0.5, 0.0], "n": [1, 2, 3]}))
    assert "3.20e-06" in md and "0.5000" in md and "| 0.0000 |" in md
    head = to_markdown(pd.DataFrame({"a|b mean": [1.0]})).splitlines()[0]
    assert head == "| a\\|b mean |"  # a label's '|' cannot add a column


def _captured_figures(monkeypatch) -> list:
    figs: list = []
    monkeypatch.setattr(plots, "_png", lambda fig: figs.append(fig) or b"")
    return figs


def test_path_depth_figure_has_a_y_axis_label(run_dir, monkeypatch):
    figs = _captured_figures(monkeypatch)
    plots.path_depth_plot(load_run(run_dir).nodes, "self-1c", "gkd")
    (fig,) = figs
    assert fig._supylabel is not None and "alignment" in fig._supylabel.get_text()


def test_ranking_figure_explains_a_teacher_without_defined_alignment(run_dir, tmp_path,
                                                                     monkeypatch):
    run = _with_undefined_teacher(run_dir, tmp_path / "run")
    ranking = analysis.teacher_ranking(load_run(run).nodes, "gkd", n_boot=50)
    assert not math.isfinite(ranking.set_index("teacher").loc["twin", "mean"])
    figs = _captured_figures(monkeypatch)
    plots.ranking_plot(ranking, "gkd")
    ax = figs[0].axes[0]
    assert any("no defined alignment" in t.get_text() for t in ax.texts)
    lo, hi = ax.get_ylim()
    assert lo < 0 and hi > len(ranking) - 1  # the empty row is on the canvas


def test_a_finished_bar_is_full_even_when_its_total_was_an_estimate():
    buf = io.StringIO()
    rep = RichReporter(Console(file=buf, width=120))
    with rep.bar("phase 1: targeted rollouts", 10, unit="rollouts") as bar:
        bar.advance(7)
    with rep.bar("adaptive", None, unit="rollouts") as bar:
        bar.advance(3)
    text = buf.getvalue()
    assert "7/7" in text and "7/10" not in text
    assert "3/3" in text


def test_write_report_summary_has_provenance_of_the_synthetic_run(run_dir, tmp_path):
    write_report(run_dir, tmp_path / "rep", n_boot=50, n_perm=50)
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert summary["run/config"] == "synthetic-boolq"
    assert summary["run/git_commit"] == "0123abcd4567"
    assert summary["versions/torch"] == "2.13.0"
    assert summary["config/tree/n_sig"] == 20 and summary["report/n_boot"] == 50


def test_rate_and_eta_are_the_mean_over_the_bar_not_the_last_burst():
    """One large batch finishing at once used to read as thousands per second with ETA 0:
    the rate is the bar's work over its time, and the ETA follows from it."""
    from types import SimpleNamespace

    from distillscope.progress import eta_text, rate_text

    burst = SimpleNamespace(fields={"work": 100.0}, elapsed=20.0, total=400.0, completed=100.0)
    assert rate_text(burst, "rollouts") == "5.0 rollouts/s"
    assert eta_text(burst) == "0:01:00"  # 300 left at 5 per second
    resumed = SimpleNamespace(fields={"work": 0.0}, elapsed=3.0, total=10.0, completed=6.0)
    assert rate_text(resumed, "q") == "-- q/s" and eta_text(resumed) == "-:--:--"
    long = SimpleNamespace(fields={"work": 1.0}, elapsed=1.0, total=3_700.0, completed=0.0)
    assert eta_text(long) == "1:01:40"


def test_quickstart_refuses_an_old_single_run_directory_and_a_file(tmp_path, monkeypatch):
    """The quickstart writes OUT/yesno, OUT/choice and OUT/compare; an OUT that is itself a run
    (the earlier layout) or a file is refused in one line, before any model is loaded, and
    nothing in it is touched."""
    from distillscope import cli_quickstart

    monkeypatch.setattr(cli_quickstart, "_run", lambda *a, **k: pytest.fail("a run started"))
    old = tmp_path / "runs" / "quickstart"
    old.mkdir(parents=True)
    (old / "config.yaml").write_text("name: quickstart\n")
    res = CliRunner().invoke(app, ["quickstart", "--out", str(old)])
    assert res.exit_code == 2 and "is a run directory" in res.output, res.output
    assert "Traceback" not in res.output and sorted(p.name for p in old.iterdir()) == [
        "config.yaml"]
    f = tmp_path / "file"
    f.write_text("x")
    res = CliRunner().invoke(app, ["quickstart", "--out", str(f)])
    assert res.exit_code == 2 and "is a file" in res.output, res.output


def test_quickstart_runs_both_settings_then_compares_them(tmp_path, monkeypatch):
    """The quickstart's plumbing on the toy world (the real preset takes minutes): two run
    directories with reports, one compare page over them with the pooled contrast, closing
    lines for each setting and for the comparison, and one model cache shared by both runs."""
    from distillscope import cli_quickstart, presets

    def toy(kind: str = "yesno"):
        seed = {"yesno": 1, "choice": 2}[kind]
        return load_config(TOY, {"task.options.n_questions": 4, "tree.G": 60, "seed": seed,
                                 "task.options.seed": seed})

    monkeypatch.setattr(presets, "quickstart_config", toy)
    caches = []
    run = cli_quickstart._run
    monkeypatch.setattr(cli_quickstart, "_run",
                        lambda *a, **k: caches.append(id(k["models"])) or run(*a, **k))
    out = tmp_path / "qs"
    res = invoke("quickstart", "--out", out)
    assert res.exit_code == 0, res.output
    for kind in ("yesno", "choice"):
        assert (out / kind / "report" / "report.html").is_file()
    summary = json.loads((out / "compare" / "compare.json").read_text())
    assert summary["setting/0/label"] == "yes/no" and summary["setting/1/label"] == (
        "multiple choice")
    assert "correct_vs_incorrect/all settings (pooled)/delta" in summary
    assert res.output.count("Best teacher (gkd)") == 2
    assert "Across the two settings:" in res.output and len(set(caches)) == 1 == len(
        caches) - 1


def test_closing_lines_in_words_handle_missing_values():
    """`in_words` on a one-question run (no CI: None in summary.json), on a run without the
    contrast, and on a conclusive one: it never raises and says how sure it is."""
    from distillscope.report.terminal import contrast_words, in_words

    one = {"ranking/gkd/first": "a", "ranking/gkd/a/mean": 0.5, "ranking/gkd/a/ci_low": None,
           "ranking/gkd/a/ci_high": None, "ranking/gkd/a/gap_ci_low": None,
           "ranking/gkd/b/rank": 2,
           "correct_vs_incorrect/gkd/mean_cosine/delta": -0.2,
           "correct_vs_incorrect/gkd/mean_cosine/delta_ci_low": None,
           "correct_vs_incorrect/gkd/mean_cosine/n_questions_mixed": 1,
           "correct_vs_incorrect/gkd/mean_cosine/p_perm": None}
    lines = in_words(one)
    assert lines[0].startswith("Best teacher (gkd): a, mean alignment +0.500 (95% CI [n/a")
    assert "lead" not in lines[0] and "no CI: fewer than two questions" in lines[1]
    assert "could not be run" in lines[1]
    assert in_words({}) == []
    rl = {"ranking/drgrpo/first": "", "ranking/drgrpo//mean": 0.7,
          "ranking/drgrpo//ci_low": 0.6, "ranking/drgrpo//ci_high": 0.8}
    assert in_words(rl, "drgrpo") == [
        "drgrpo uses no teacher (the RL baseline): mean alignment +0.700 (95% CI [+0.600, "
        "+0.800])."]  # not "Best teacher (drgrpo): , ..."
    sure = contrast_words({"delta": -0.4, "delta_ci_low": -0.7, "delta_ci_high": -0.1,
                           "p_perm": 0.01, "p_perm_min": 1e-4, "n_questions_mixed": 19})
    assert "excludes 0" in sure and "significant at the question level" in sure
    assert sure.endswith("than on its correct ones, the paper's main finding.")
    ci_only = contrast_words({"delta": -0.4, "delta_ci_low": -0.7, "delta_ci_high": -0.1,
                              "p_perm": 0.2, "p_perm_min": 1e-4, "n_questions_mixed": 19})
    assert "excludes 0" in ci_only and "Reading" not in ci_only  # the test disagrees
    weak = contrast_words({"delta": 0.1, "delta_ci_low": -0.3, "delta_ci_high": 0.5,
                           "p_perm": 0.5, "p_perm_min": 0.0625, "n_questions_mixed": 4})
    assert weak.startswith("Correct paths align more") and "cannot reach" in weak
    assert "Reading" not in weak
