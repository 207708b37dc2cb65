"""The run store: atomic units, committed-only reads, config mismatch refusal, clear I/O errors."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from distillscope.config import parse_config
from distillscope.store import RunStore, StoreError


def _rows(qid: str, n: int, start: int = 0) -> list[dict]:
    return [
        {"qid": qid, "rollout_id": start + i, "origin": "initial", "path_id": -1,
         "launch_depth": -1, "forced_len": 0, "response_ids": [1, 2, i], "text": f"t{i}",
         "reward": float(i % 2), "parsable": True, "finish_reason": "eos", "seed": 7}
        for i in range(n)
    ]


def test_commit_and_read_round_trip(tmp_path):
    store = RunStore(tmp_path)
    store.commit("q00000/a-init", {"rollouts": _rows("a", 3)})
    store.commit("q00001/a-init", {"rollouts": _rows("b", 2)})
    df = store.read("rollouts")
    assert list(df.qid) == ["a", "a", "a", "b", "b"]
    assert list(df.response_ids.iloc[2]) == [1, 2, 2]
    assert store.read("rollouts", unit_prefix="q00001/").shape[0] == 2
    # a fresh store object sees the same committed units
    assert RunStore(tmp_path).read("rollouts").equals(df)


def test_uncommitted_parts_are_invisible(tmp_path):
    store = RunStore(tmp_path)
    store.commit("q00000/a-init", {"rollouts": _rows("a", 2)})
    # simulate a crash after a part was written but before its marker
    store.commit("q00000/b-tgt00000", {"rollouts": _rows("a", 4, start=2)})
    os.unlink(tmp_path / "units" / "q00000__b-tgt00000.done")
    assert len(RunStore(tmp_path).read("rollouts")) == 2
    assert RunStore(tmp_path).count_rows("rollouts") == 2
    assert RunStore(tmp_path).count_rows("nodes") == 0


def test_read_missing_table_has_schema_columns(tmp_path):
    df = RunStore(tmp_path).read("nodes")
    assert len(df) == 0
    assert {"align", "teacher", "method", "kl", "overlap_ratio"} <= set(df.columns)


def test_config_mismatch_is_refused_unless_forced(tmp_path):
    a = parse_config({"tree": {"G": 10}})
    b = parse_config({"tree": {"G": 11}})
    RunStore(tmp_path).open_for(a)
    RunStore(tmp_path).commit("q00000/a-init", {"rollouts": _rows("a", 1)})
    with pytest.raises(StoreError, match=r"different configuration \(tree\.G differ\)"):
        RunStore(tmp_path).open_for(b)  # the field is named
    assert RunStore(tmp_path).open_for(b, force=True).tree.G == 11


def test_adding_a_teacher_keeps_the_run(tmp_path):
    a = parse_config({"teachers": [{"name": "t1", "mode": "self-1c"}]})
    b = parse_config({"teachers": [{"name": "t2", "mode": "self-3c"}]})
    RunStore(tmp_path).open_for(a)
    RunStore(tmp_path).commit("q00000/a-init", {"rollouts": _rows("a", 1)})
    merged = RunStore(tmp_path).open_for(b)
    assert [t.name for t in merged.teachers] == ["t1", "t2"]


def test_read_only_directory_gives_clear_error(tmp_path):
    if os.geteuid() == 0:
        # root ignores permission bits; emulate with a path under a regular file instead
        blocker = tmp_path / "file"
        blocker.write_text("x")
        with pytest.raises(StoreError, match="cannot write|I/O error|part of that path is a file"):
            RunStore(blocker / "run").open_for(parse_config({}))
        return
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(StoreError, match="cannot write"):
        RunStore(ro / "run").open_for(parse_config({}))


def test_disk_full_is_reported_and_nothing_committed(tmp_path, monkeypatch):
    import errno

    import distillscope.store as store_mod

    store = RunStore(tmp_path)
    store.commit("q00000/a-init", {"rollouts": _rows("a", 2)})

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_mod, "atomic_write_table", full)
    with pytest.raises(StoreError, match="disk full"):
        store.commit("q00001/a-init", {"rollouts": _rows("b", 2)})
    monkeypatch.undo()
    fresh = RunStore(tmp_path)
    assert not fresh.is_done("q00001/a-init")
    assert len(fresh.read("rollouts")) == 2


def test_to_table_fills_missing_columns(tmp_path):
    store = RunStore(tmp_path)
    store.commit("u", {"questions": pd.DataFrame([{"qid": "x", "pass_rate": 0.5}])})
    q = store.read("questions")
    assert q.qid.tolist() == ["x"] and q.note.isna().all()
