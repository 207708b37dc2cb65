"""The red-team suite of benchmarks/red_team.py as tests: every case must end in a correct
result or a clear one-line error, never a traceback, a silently wrong result or a lost file."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import red_team as R  # noqa: E402


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("red-team")
    small, ref = R.build_reference(d)
    return d, small, ref


@pytest.mark.parametrize("case", R.CASES, ids=[c.name for c in R.CASES])
def test_red_team_case(base, case):
    d, small, ref = base
    outcome, detail = R.run_case(case, d, small, ref)
    assert outcome in ("ok", "clear"), f"{outcome}: {detail}"


def test_the_suite_is_big_enough():
    assert len(R.CASES) >= 100
    assert {c.kind for c in R.CASES} >= {"config", "set", "task", "run-dir", "damage",
                                         "concurrency", "kill", "hostile", "output"}
