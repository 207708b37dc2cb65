"""benchmarks/topk_fidelity.py at tiny scale on the toy world: k >= V is exact, k = 1 is not."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("topk_fidelity",
                                                  ROOT / "benchmarks" / "topk_fidelity.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_toy_fidelity_tiny(tmp_path):
    bench = _bench()
    df = bench.run(str(ROOT / "configs" / "toy.yaml"), tmp_path / "run", ks=(1, 64),
                   overrides={"task.options.n_questions": 2, "tree.G": 100})
    r1, r64 = df.iloc[0], df.iloc[1]
    assert r1.nodes > 0 and r1.nodes == r64.nodes
    assert r64.su_inside == 1.0 and r64.mean_abs_dalign < 1e-9 and r64.sign_flips == 0.0
    assert r1.su_inside < 1.0 and r1.mae_kl > 0
    assert not (r1.max_abs_dalign_inside > 1e-9)  # NaN (none inside) or ~0
    assert "| k |" in bench.markdown(df)


def test_bad_input_is_one_line_exit_2(tmp_path, capsys):
    bench = _bench()
    assert bench.main(["--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "nope.yaml" in err and "\n" not in err
    assert bench.main(["--out", str(tmp_path), "--set", "tree.G"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    for bad in (["--threads", "0"], ["--k", "0"]):
        with pytest.raises(SystemExit) as exc:
            bench.main(["--out", str(tmp_path), *bad])
        assert exc.value.code == 2
