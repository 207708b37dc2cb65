"""The CLI's teacher ranking keeps every number whole at any terminal width."""

from __future__ import annotations

import pandas as pd
import pytest
from rich.console import Console

from distillscope.report.terminal import ranking_table


def _rank(names: list[str]) -> pd.DataFrame:
    rows = []
    for i, name in enumerate(names):
        rows.append({"rank": i + 1, "teacher": name, "mean": 0.5 - 0.3 * i,
                     "ci_low": 0.25 - 0.3 * i, "ci_high": 0.75 - 0.3 * i, "ci_half": 0.25,
                     "n_nodes": 1234, "n_nan": 7, "n_questions": 56,
                     "gap_to_next": 0.3 if i < len(names) - 1 else float("nan"),
                     "gap_ci_low": 0.1, "gap_ci_high": 0.5, "separated": True})
    return pd.DataFrame(rows)


def _render(rank: pd.DataFrame, width: int) -> str:
    con = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    con.print(ranking_table(rank, "gkd", width))
    return con.export_text()


@pytest.mark.parametrize("width", [50, 60, 80, 100])
def test_numbers_are_whole_and_lines_fit(width):
    rank = _rank(["self-1c", "self-sum-1c1w", "a-rather-long-external-teacher-name"])
    text = _render(rank, width)
    for r in rank.itertuples():
        assert f"{r.mean:+.3f}" in text
        assert f"[{r.ci_low:+.3f}, {r.ci_high:+.3f}]" in text
    assert "…" not in text  # nothing truncated with an ellipsis
    assert max(len(line) for line in text.splitlines()) <= width


def test_wide_terminal_shows_every_column_and_narrow_one_says_what_it_dropped():
    rank = _rank(["self-1c", "helpful"])
    wide = _render(rank, 140)
    for header in ("teacher", "mean", "95% CI", "beats next?", "questions", "nodes", "undefined"):
        assert header in wide
    assert "too narrow" not in wide
    narrow = _render(rank, 60)
    assert "too narrow for: undefined" in narrow
    header = next(line for line in narrow.splitlines() if "teacher" in line)
    assert "undefined" not in header and "mean" in header and "95% CI" in header
