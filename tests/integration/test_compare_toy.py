"""`compare` on toy runs with exact expectations: a run against itself (no interaction, the
top never differs), two seeds of the same world (the same best teacher, no interaction shown)
and a run whose helpful and harmful teachers swap tilts (a strong interaction); and on two
small real-model runs (SmolLM2-135M, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from distillscope import compare as C
from distillscope.cli import app
from distillscope.config import load_config
from distillscope.pipeline import run
from distillscope.report.compare_page import write_compare

ROOT = Path(__file__).resolve().parents[2]
N_BOOT = 1000


def toy(out: Path, **overrides) -> Path:
    base = {"task.options.n_questions": 4, "seed": 1}
    base.update(overrides)
    run(load_config(ROOT / "configs" / "toy.yaml", base), out)
    return out


@pytest.fixture(scope="module")
def toys(tmp_path_factory):
    d = tmp_path_factory.mktemp("cmp")
    return {"s1": toy(d / "s1"), "s2": toy(d / "s2", seed=2),
            "swap": toy(d / "swap", **{"teachers.0.model.options.tilt": "harmful",
                                       "teachers.1.model.options.tilt": "helpful"})}


def result(dirs, method="gkd"):
    r = C.compare(C.load_settings(dirs), methods=[method], n_boot=N_BOOT, n_perm=500)
    return r, r["tests"][method]


def test_a_run_against_itself(toys):
    r, t = result([toys["s1"], toys["s1"]])
    i = t["interaction"]
    assert i["stat"] == 0.0 and i["p"] == 1.0 and i["df"] == 3 and i["n_cells"] == 8
    assert r["top_pairs"]["p_top_differs"].tolist() == [0.0]
    # helpful and self-1c are the same teacher in the toy world: an exact tie, named
    assert t["universal"] == {"teacher": "helpful", "p_universal": 1.0, "n_settings": 2,
                              "tied_with": ["self-1c"]}
    assert t["status"] == "universal"


def test_two_seeds_agree(toys):
    r, t = result([toys["s1"], toys["s2"]])
    assert t["interaction"]["p"] > 0.2
    assert t["universal"]["teacher"] == "helpful" and t["universal"]["p_universal"] >= 0.95
    assert r["top_pairs"]["p_top_differs"].iloc[0] <= 0.05


def test_swapped_tilts_interact_strongly(toys):
    r, t = result([toys["s1"], toys["swap"]])
    i = t["interaction"]
    assert i["p"] == pytest.approx(1 / (1 + N_BOOT))  # no null replicate comes close
    assert i["rms"] > 0.5 and i["null_rms"] < 0.1
    p = r["top_pairs"].iloc[0]
    assert (p.top_a, p.top_b, p.p_top_differs) == ("helpful", "harmful", 1.0)
    assert t["status"] == "differs" and t["universal"]["teacher"] == ""
    assert "ranks helpful first" in t["text"] and "ranks harmful first" in t["text"]


def test_cli_compare_over_toy_runs(toys, tmp_path):
    out = tmp_path / "cmp"
    res = CliRunner().invoke(app, ["compare", str(toys["s1"]), str(toys["swap"]), "--out",
                                   str(out), "--label", "base", "--label", "swapped"])
    assert res.exit_code == 0, res.output
    assert "No universal best" in res.output and "swapped ranks harmful first" in res.output
    wide = pd.read_csv(out / "tables" / "ranking_gkd.csv")
    assert list(wide.columns[:5]) == ["teacher", "base mean", "base ci_low", "base ci_high",
                                      "base rank"]
    summary = json.loads((out / "compare.json").read_text())
    assert summary["verdict/gkd/status"] == "differs"
    # the contrast pooled over both runs' questions closes the output, with compare.json's Δ
    delta = summary["correct_vs_incorrect/all settings (pooled)/delta"]
    assert "Pooled over every setting's questions: " in res.output
    assert f"Δ = correct − incorrect = {delta:+.3f}" in " ".join(res.output.split())


def test_high_stakes_compare_recomputes_on_fewer_nodes(toys, tmp_path):
    full = write_compare([toys["s1"], toys["s2"]], tmp_path / "a", n_boot=200, n_perm=200)
    hs = write_compare([toys["s1"], toys["s2"]], tmp_path / "b", n_boot=200, n_perm=200,
                       min_sr_range=0.3)
    n_full = pd.read_csv(full.parent / "tables" / "ranking_long.csv")["n_nodes"].sum()
    n_hs = pd.read_csv(hs.parent / "tables" / "ranking_long.csv")["n_nodes"].sum()
    assert 0 < n_hs < n_full
    assert "SR range ≥ 0.3" in hs.read_text(encoding="utf-8")


@pytest.mark.slow
def test_compare_two_small_real_runs(tmp_path, smollm):
    from test_pipeline_real import small_config

    from distillscope.runtime import model_cache_key

    dirs = []
    for seed in (0, 1):
        cfg = small_config().model_copy(update={"seed": seed})
        d = tmp_path / f"real{seed}"
        run(cfg, d, models={model_cache_key(cfg.student): smollm})
        dirs.append(d)
    page = write_compare(dirs, tmp_path / "cmp", n_boot=300, n_perm=300)
    html = page.read_text(encoding="utf-8")
    assert "Table 1 · gkd" in html and "<script" not in html
    t = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    # 3 questions per run: a verdict in words whatever the data say, never a crash
    assert t["verdict/gkd/status"] in ("universal", "differs", "inconclusive", "insufficient")
    wide = pd.read_csv(tmp_path / "cmp" / "tables" / "ranking_gkd.csv")
    assert set(wide["teacher"]) <= {"self-1c", "careful"}


def test_a_label_with_a_slash_cannot_split_a_compare_json_key(toys, tmp_path):
    labels = ["yes/no", "a~1b"]  # a slash, and a literal "~1" that must not read as a slash
    page = write_compare([toys["s1"], toys["s2"]], tmp_path / "c", labels=labels, n_boot=100,
                         n_perm=100)
    summary = json.loads((page.parent / "compare.json").read_text())

    def unescape(part):
        return part.replace("~1", "/").replace("~0", "~")

    pairs = [k.split("/") for k in summary if k.startswith("top_pairs/")]
    assert pairs and all(len(p) == 5 for p in pairs)
    assert {(unescape(p[2]), unescape(p[3])) for p in pairs} == {("yes/no", "a~1b")}
    cvi = {unescape(k.split("/")[1]) for k in summary if k.startswith("correct_vs_incorrect/")}
    assert cvi == {"yes/no", "a~1b", C.POOLED}
    assert all(len(k.split("/")) == 3 for k in summary if k.startswith("correct_vs_incorrect/"))
    assert [summary[f"setting/{i}/label"] for i in range(2)] == labels  # values stay as given
