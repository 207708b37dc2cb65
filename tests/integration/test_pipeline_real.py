"""The pipeline end to end on the real tiny model (SmolLM2-135M, CPU) with a small budget:
every table is written and consistent, and the run's report renders cleanly in Chromium."""

from __future__ import annotations

import numpy as np
import pytest

from distillscope.config import parse_config
from distillscope.phase2 import decision_points
from distillscope.pipeline import run
from distillscope.presets import QUICKSTART
from distillscope.report import write_report
from distillscope.runtime import model_cache_key
from distillscope.store import RunStore

pytestmark = pytest.mark.slow

STUDENT = {"backend": "hf", "model": "embedded:smollm2-135m", "device": "cpu", "dtype": "float32"}
# "external" teacher for tests: a second configuration of the same model
# (docs/architecture.md#the-embedded-model)
EXTERNAL = {**STUDENT, "system_prompt": "You are a careful assistant. Check facts twice."}


def small_config():
    cfg = dict(QUICKSTART)
    cfg.update({
        "name": "real-small",
        "student": STUDENT,
        "teachers": [{"name": "self-1c", "mode": "self-1c"},
                     {"name": "careful", "mode": "external", "model": EXTERNAL}],
        "task": {"name": "quickstart", "limit": 3},
        "sampling": {"temperature": 1.0, "max_new_tokens": 16, "batch_groups": 8},
        "context": {"max_trials": 6},
        "tree": {"G": 12, "n_correct_paths": 1, "n_incorrect_paths": 1, "top_k": 2, "top_r": 2,
                 "n_min": 10, "n_sig": 5, "window_base": 4, "group_size": 64},
    })
    return parse_config(cfg, "real-small")


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, smollm):
    out = tmp_path_factory.mktemp("real") / "run"
    cfg = small_config()
    run(cfg, out, models={model_cache_key(cfg.student): smollm})
    return RunStore(out)


def test_every_table_is_written(real_run):
    for name in ("questions", "rollouts", "paths", "children"):
        assert len(real_run.read(name)) > 0, name
    q = real_run.read("questions")
    assert len(q) == 3 and q.pass_rate.between(0, 1).all()
    prov = real_run.read_json("provenance.json")
    assert prov["rollouts/total"] == len(real_run.read("rollouts"))
    assert prov["rollouts/initial"] == 3 * 12
    assert (real_run.dir / "demos.parquet").is_file()


def test_rollouts_are_graded_and_consistent(real_run):
    ro = real_run.read("rollouts")
    assert set(ro.origin) <= {"initial", "targeted"}
    assert set(ro.reward) <= {0.0, 1.0}
    assert not ro.duplicated(["qid", "rollout_id"]).any()
    assert (ro.response_ids.map(len) <= 16).all()
    assert set(ro.finish_reason) <= {"eos", "length", "stop"}
    targeted = ro[ro.origin == "targeted"]
    assert (targeted.forced_len == targeted.launch_depth + 1).all()


def test_children_counts_match_the_rollouts(real_run):
    ro, paths, children = (real_run.read(n) for n in ("rollouts", "paths", "children"))
    for c in children.sample(n=min(30, len(children)), random_state=0).itertuples():
        path = list(paths[(paths.qid == c.qid) & (paths.path_id == c.path_id)]
                    .response_ids.iloc[0])
        prefix = path[: c.depth] + [c.token]
        n = sum(1 for ids, m in zip(ro[ro.qid == c.qid].response_ids,
                                    ro[ro.qid == c.qid].forced_len, strict=True)
                if list(ids[: c.depth + 1]) == prefix and c.depth >= m - 1)
        assert n == c.visits
    assert np.allclose(children.p_hat, children.successes / children.visits)


def test_decision_points_respect_n_sig_and_are_scored(real_run):
    cfg = real_run.load_config()
    children, nodes = real_run.read("children"), real_run.read("nodes")
    dp = decision_points(children, cfg.tree.n_sig)
    assert (dp.visits >= cfg.tree.n_sig).all()
    got = set(zip(nodes.qid, nodes.path_id, nodes.depth, strict=True))
    assert got == set(zip(dp.qid, dp.path_id, dp.depth, strict=True))
    if len(nodes):
        assert set(nodes.teacher) <= {"self-1c", "careful", ""}  # "": Dr. GRPO
        a = nodes["align"].dropna()
        assert ((a >= -1 - 1e-9) & (a <= 1 + 1e-9)).all()
        dist = real_run.read("distributions")
        assert {"student", "self-1c", "careful"} & set(dist.model)


def test_report_of_the_real_run_in_chromium(real_run, tmp_path):
    from test_report_browser import CHROMIUM, chromium, console_messages

    if not CHROMIUM.exists():
        pytest.skip("needs /usr/bin/chromium (Debian package 'chromium')")
    html = write_report(real_run.dir, n_boot=200, n_perm=200)
    dom, err = chromium(html.as_uri(), tmp_path / "p", "--dump-dom")
    assert 'data-ready="1"' in dom
    assert console_messages(err) == []
    shot = tmp_path / "shot.png"
    chromium(html.as_uri(), tmp_path / "p2", "--window-size=1280,1800", f"--screenshot={shot}")
    assert shot.is_file() and shot.stat().st_size > 20_000
