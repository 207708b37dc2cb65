"""A run killed with SIGKILL at random moments and resumed each time ends with exactly the tables
of an uninterrupted run with the same seed (docs/architecture.md#resume-and-determinism: no rollout
lost or counted twice).

Each attempt is `distillscope run CONFIG --out DIR --no-report` in its own process. To keep the
test fast, the processes are forked from one launcher process that has imported distillscope
(and torch) once but never run anything; each fork runs the CLI, and the test SIGKILLs it.

Kill moments are random but seeded and spread over the run: the k-th kill waits until the run
has committed a random number of units within the k-th fifth of the reference run's total (and
at least one unit more than when this attempt started), then a random 0-150 ms more, so kills
land inside units and commits, in phase 1 and in phase 2.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pandas.testing as pdt
import pytest

from distillscope.config import RunConfig, load_config
from distillscope.pipeline import run
from distillscope.store import RunStore

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TABLES = ("questions", "rollouts", "paths", "children", "distributions", "nodes")
KEYS = {
    "questions": ["qid"],
    "rollouts": ["qid", "rollout_id"],
    "paths": ["qid", "path_id"],
    "children": ["qid", "path_id", "depth", "token"],
    "distributions": ["qid", "path_id", "depth", "model", "token"],
    "nodes": ["qid", "path_id", "depth", "teacher", "method"],
}
N_KILLS = 5

# The launcher: reads "run<TAB>LOG<TAB>ARG..." (fork a child running the CLI; answers its pid)
# or "wait<TAB>PID" (answers the child's exit code, -9 after SIGKILL) from stdin.
LAUNCHER = r"""
import os, sys, traceback
import distillscope.cli, distillscope.pipeline, distillscope.models.toy, distillscope.tasks.toy
import distillscope.progress
for line in sys.stdin:
    cmd, *args = line.rstrip("\n").split("\t")
    if cmd == "run":
        pid = os.fork()
        if pid == 0:
            fd = os.open(args[0], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.dup2(fd, 1); os.dup2(fd, 2)
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            code = 0
            try:
                distillscope.cli.app(args=args[1:], prog_name="distillscope")
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:
                traceback.print_exc(); code = 1
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(code)
        print(pid, flush=True)
    elif cmd == "wait":
        _, status = os.waitpid(int(args[0]), 0)
        print(os.waitstatus_to_exitcode(status), flush=True)
"""


class Launcher:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", LAUNCHER], cwd=ROOT, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def _ask(self, *fields: str) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("\t".join(fields) + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        assert answer, "the launcher died"
        return int(answer)

    def start(self, log: Path, *cli_args: str) -> int:
        return self._ask("run", str(log), *cli_args)

    def wait(self, pid: int) -> int:
        return self._ask("wait", str(pid))

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def launcher():
    la = Launcher()
    yield la
    la.close()


def fault_config() -> RunConfig:
    """configs/toy.yaml, smaller per question but with enough questions that five kills land
    in different phases."""
    cfg = load_config(ROOT / "configs" / "toy.yaml", {
        "task.options.n_questions": 4, "tree.G": 100, "tree.n_min": 40,
        "sampling.batch_groups": 6,
    })
    keep = {"helpful", "self-1c"}  # an external teacher and one with demos
    return cfg.model_copy(update={"teachers": [t for t in cfg.teachers if t.name in keep]})


def committed(run_dir: Path) -> list[str]:
    units = run_dir / "units"
    return sorted(p.name for p in units.glob("*.done")) if units.is_dir() else []


def read_sorted(run_dir: Path, name: str) -> pd.DataFrame:
    df = RunStore(run_dir).read(name)
    return df.sort_values(KEYS[name]).reset_index(drop=True)


def assert_same_run(expected: Path, got: Path) -> None:
    """Same committed units, equal tables, and byte-identical Parquet files."""
    assert committed(got) == committed(expected)
    for name in TABLES:
        a, b = read_sorted(expected, name), read_sorted(got, name)
        assert len(a), f"{name}: the reference run wrote no rows"
        pdt.assert_frame_equal(b, a, obj=name)
    for p in [expected / "demos.parquet", *sorted((expected / "tables").rglob("*.parquet"))]:
        rel = p.relative_to(expected)
        assert (got / rel).read_bytes() == p.read_bytes(), f"{rel} differs"


def phase_of(out: Path) -> str:
    """Where a run stands, from its files."""
    kinds = {u.split("__")[1][0] for u in committed(out)}
    if "c" in kinds:
        return "phase 2"
    if kinds & {"b", "z"}:
        return "phase 1 targeted"
    if kinds:
        return "phase 1 initial"
    return "phase 0" if (out / "demos.parquet").exists() else "start"


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else ""


def kill_and_resume(launcher: Launcher, cli_args: list[str], out: Path, total_units: int,
                    seed: int, n_kills: int = N_KILLS, first_in_phase0: bool = False) -> list[str]:
    """Start the run `n_kills` times, SIGKILL each at a seeded random moment, then let one run
    finish. Returns where each kill landed. With `first_in_phase0` the first kill comes as
    soon as the demonstrations file appears (phase 0 is short on the toy world)."""
    rng = np.random.default_rng(seed)
    targets = [int(total_units * (k + rng.uniform()) / n_kills) for k in range(n_kills)]
    log = out.parent / f"{out.name}.log"
    landed = []
    for k, target in enumerate(targets):
        if k == 0 and first_in_phase0:
            def ready() -> bool:
                return (out / "demos.parquet").exists()
        else:
            def ready(need: int = max(target, len(committed(out)) + 1)) -> bool:
                return len(committed(out)) >= need
        pid = launcher.start(log, *cli_args)
        try:
            deadline = time.monotonic() + 120
            while not ready():
                assert time.monotonic() < deadline, f"the run made no progress: {tail(log)}"
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.02 if k == 0 and first_in_phase0 else 0.15))
            landed.append(phase_of(out))
        finally:
            os.kill(pid, signal.SIGKILL)  # a process that already ended is a zombie: no error
        code = launcher.wait(pid)
        assert code == -signal.SIGKILL, f"the run ended before its kill (exit {code}): {tail(log)}"
    pid = launcher.start(log, *cli_args)
    assert launcher.wait(pid) == 0, tail(log)
    return landed


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[RunConfig, Path]:
    out = tmp_path_factory.mktemp("uninterrupted")
    cfg = fault_config()
    run(cfg, out)
    return cfg, out


def test_sigkill_at_random_moments_then_resume_gives_identical_tables(launcher, reference,
                                                                     tmp_path):
    cfg, expected = reference
    config_yaml = tmp_path / "toy-faults.yaml"
    config_yaml.write_text(cfg.to_yaml(), encoding="utf-8")
    out = tmp_path / "run"
    cli_args = ["run", str(config_yaml), "--out", str(out), "--no-report"]
    landed = kill_and_resume(launcher, cli_args, out, len(committed(expected)), seed=20261122,
                             first_in_phase0=True)
    assert len(landed) == N_KILLS
    assert {"phase 1 initial", "phase 1 targeted"} & set(landed), landed
    assert "phase 2" in landed, landed
    assert_same_run(expected, out)


def test_the_comparison_can_fail(reference, tmp_path):
    """The check above is not vacuous: one flipped reward in a copy of the reference fails it."""
    _, expected = reference
    out = tmp_path / "tampered"
    shutil.copytree(expected, out)
    store = RunStore(out)
    unit = "q00000/a-init"
    rows = store.read("rollouts", unit_prefix=unit)
    rows.loc[0, "reward"] = 1.0 - rows.loc[0, "reward"]
    store.commit(unit, {"rollouts": rows})
    with pytest.raises(AssertionError, match="rollouts"):
        assert_same_run(expected, out)
