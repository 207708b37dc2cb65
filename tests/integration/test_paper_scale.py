"""benchmarks/paper_scale.py at a toy scale: every phase runs, rewards are mixed, the suite is
priced (seconds; no network: a random-initialised tiny Qwen3 and a synthetic tokenizer)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[2]


def _load():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("paper_scale", ROOT / "benchmarks/paper_scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paper_scale_dry_run_at_toy_scale(tmp_path, capsys):
    import torch

    ps = _load()
    before = torch.get_num_threads()
    out_file = tmp_path / "ps.json"
    try:
        assert ps.main(["--scale", "0.01", "--threads", "1", "--max-units", "3",
                        "--json", str(out_file)]) == 0
    finally:
        torch.set_num_threads(before)
    out = json.loads(out_file.read_text())
    assert set(out["phases"]) == {"initial", "candidates", "targeted", "phase2"}
    init = out["phases"]["initial"]
    assert init["rollouts"] == out["budgets"]["G"] and init["tokens"] > 0
    assert out["phases"]["candidates"]["children"] > 0
    tg = out["phases"]["targeted"]
    assert tg["rollouts"] > 0 and tg["units"] <= 3
    assert out["suite"]["device_days"] > 0 and not out["suite"]["is_projection"]
    assert "NOT a projection" in capsys.readouterr().out


def test_synthetic_verifier_gives_mixed_rewards():
    ps = _load()
    rewards = [ps.reward(list(range(i, i + 7))) for i in range(200)]
    assert 0.25 < sum(rewards) / len(rewards) < 0.55
