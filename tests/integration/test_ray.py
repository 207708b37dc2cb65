"""The Ray executor: a run on a local 2-worker cluster writes exactly the in-process run's tables,
also when an actor is killed mid-run or the driver itself is SIGKILLed and resumed.

One local cluster (2 CPUs, no dashboard) serves the whole module; every test that needs it is
skipped, with the reason, when Ray is not installed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas.testing as pdt
import pytest

from distillscope import distributed as D
from distillscope.config import RunConfig, load_config
from distillscope.models.base import ModelError
from distillscope.models.registry import load_model
from distillscope.pipeline import run
from distillscope.scoring import score_path
from distillscope.store import RunStore
from distillscope.types import SampleRequest, SamplingParams

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_faults import Launcher, committed, kill_and_resume  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TABLES = ("questions", "rollouts", "paths", "children", "distributions", "nodes")


def small_config() -> RunConfig:
    cfg = load_config(ROOT / "configs" / "toy.yaml", {
        "task.options.n_questions": 3, "tree.G": 100, "tree.n_min": 40,
        "sampling.batch_groups": 8,
    })
    keep = {"helpful", "self-1c"}  # an external teacher and one with demos
    return cfg.model_copy(update={"teachers": [t for t in cfg.teachers if t.name in keep]})


def assert_same_tables(expected: Path, got: Path) -> None:
    """Rows in store order (deterministic), so the comparison is exact without sorting; and
    the Parquet files are byte-identical."""
    assert committed(got) == committed(expected)
    for name in TABLES:
        a, b = RunStore(expected).read(name), RunStore(got).read(name)
        assert len(a), f"{name}: the reference run wrote no rows"
        pdt.assert_frame_equal(b, a, obj=name)
    for p in [expected / "demos.parquet", *sorted((expected / "tables").rglob("*.parquet"))]:
        rel = p.relative_to(expected)
        assert (got / rel).read_bytes() == p.read_bytes(), f"{rel} differs"


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'distillscope[ray]'")
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("in-process")
    run(small_config(), out)
    return out


# ---------------------------------------------------------------------------------------------
def test_split_balanced_is_contiguous_and_balanced():
    assert D.split_balanced([], 2) == []
    assert D.split_balanced([100], 4) == [(0, 1)]
    assert D.split_balanced([100, 100], 2) == [(0, 1), (1, 2)]
    assert D.split_balanced([1, 1, 1, 100], 2) == [(0, 3), (3, 4)]
    assert D.split_balanced([10] * 16, 3) == [(0, 5), (5, 11), (11, 16)]
    assert D.split_balanced([0, 0, 0], 2) == [(0, 1), (1, 3)]
    rng = np.random.default_rng(0)
    for _ in range(200):
        sizes = rng.integers(0, 50, size=int(rng.integers(1, 20))).tolist()
        k = int(rng.integers(1, 6))
        ranges = D.split_balanced(sizes, k)
        assert len(ranges) == min(k, len(sizes))
        assert ranges[0][0] == 0 and ranges[-1][1] == len(sizes)
        assert all(a < b for a, b in ranges)
        assert all(b == c for (_, b), (c, _) in zip(ranges, ranges[1:], strict=False))


def test_missing_ray_gives_the_install_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"pip install 'distillscope\[ray\]'"):
        D.run_on_ray(small_config(), "unused")


def test_importing_distributed_does_not_import_ray():
    code = "import sys, distillscope.distributed; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


def test_vllm_models_are_scored_under_hf():
    spec = small_config().student.model_copy(
        update={"backend": "vllm", "model": "Qwen/Qwen3-0.6B",
                "options": {"gpu_memory_utilization": 0.5, "max_context": 4096}})
    s = D.scoring_spec(spec)
    assert (s.backend, s.model, s.options) == ("hf", "Qwen/Qwen3-0.6B", {"max_context": 4096})
    assert D.scoring_spec(small_config().student) == small_config().student


# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ray_run_equals_in_process_run(ray_cluster, reference, tmp_path):
    rt = D.run_on_ray(small_config(), tmp_path, num_workers=2)
    pool = rt.student.pool
    assert pool.size == 2 and len(set(pool.where)) == 2  # two distinct worker processes
    assert pool.stats["replaced"] == 0
    assert rt.student.device.startswith("ray(")
    assert_same_tables(reference, tmp_path)


@pytest.mark.slow
def test_a_killed_actor_loses_only_its_shard(ray_cluster, reference, tmp_path):
    ray = ray_cluster
    killed = []

    def kill_mid_run(pool: D.WorkerPool) -> None:
        # dispatch 1 loads the models; kill worker 0 right after the 4th dispatch went out
        if pool.stats["dispatches"] == 4 and not killed:
            killed.append(pool.actors[0])
            ray.kill(pool.actors[0], no_restart=True)

    rt = D.run_on_ray(small_config(), tmp_path, num_workers=2, on_dispatch=kill_mid_run)
    stats = rt.student.pool.stats
    assert killed and stats["replaced"] >= 1 and stats["resubmitted"] >= 1, stats
    assert_same_tables(reference, tmp_path)


@pytest.mark.slow
def test_remote_sampling_and_scoring_equal_local(ray_cluster):
    cfg = small_config()
    teacher_spec = cfg.teachers[0].model
    pool = D.WorkerPool(2, num_cpus=1)
    try:
        models = D.ray_models([cfg.student, teacher_spec], pool)
        student, teacher = models[D.spec_key(cfg.student)], models[D.spec_key(teacher_spec)]
        local_s, local_t = load_model(cfg.student), load_model(teacher_spec)
        ctx = local_s.encode_chat([{"role": "user", "content": "toy:1"}])
        reqs = [SampleRequest(tuple(ctx), n, seed) for n, seed in ((5, 1), (30, 2), (7, 3))]
        params = SamplingParams(max_new_tokens=24)
        assert student.sample(reqs, params) == local_s.sample(reqs, params)
        resp = [c.token_ids for c in local_s.sample([SampleRequest(tuple(ctx), 1, 9)],
                                                     params)[0]][0]
        for t_remote, t_local, t_ctx in ((teacher, local_t, ctx), (None, None, None)):
            got = student.score_path(ctx, t_remote, t_ctx, resp, tau=0.02)
            want = score_path(local_s, ctx, t_local, t_ctx, resp, tau=0.02)
            for field in ("logp_student_taken_T", "logp_teacher_taken_T", "cand_pos_C",
                          "cand_tok_C", "p_student_C", "p_teacher_C"):
                np.testing.assert_array_equal(getattr(got, field), getattr(want, field))
            for name, values in want.features.items():
                np.testing.assert_array_equal(got.features[name], values)
        # the toy model's exact values reach the pipeline through the proxy
        np.testing.assert_array_equal(student.exact_child_success(ctx, resp[:2]),
                                      local_s.exact_child_success(ctx, resp[:2]))
    finally:
        pool.shutdown()


@pytest.mark.slow
def test_a_shard_whose_workers_keep_dying_fails_clearly(ray_cluster):
    ray = ray_cluster
    pool = D.WorkerPool(1, num_cpus=1, max_retries=0)
    try:
        victim = pool.actors[0]
        ray.kill(victim, no_restart=True)
        with pytest.raises(ray.exceptions.RayActorError):  # wait until it is surely dead
            for _ in range(100):
                ray.get(victim.load.remote([]))
        with pytest.raises(D.WorkerLostError, match="lost its worker"):
            pool.call("load", [])
        pool.max_retries = 1  # the replacement started by the failure above serves the retry
        assert pool.call("load", []) and pool.stats["replaced"] == 1
    finally:
        pool.shutdown()


@pytest.mark.slow
def test_a_cpu_actor_sees_no_gpu(ray_cluster):
    # Ray >= 2.5x no longer sets CUDA_VISIBLE_DEVICES="" for num_gpus=0 actors (Ray PR 62492):
    # a CPU pool member would see every GPU of its node unless it hides them itself
    pool = D.WorkerPool(1, num_gpus=0, num_cpus=1)
    try:
        seen = pool.call("visible_devices")
        assert seen == {"CUDA_VISIBLE_DEVICES": "", "cuda_device_count": 0}
        victim = pool.actors[0]
        pool._replace(0, victim)  # a replacement actor is created the same way
        assert pool.call("visible_devices")["CUDA_VISIBLE_DEVICES"] == ""
    finally:
        pool.shutdown()


@pytest.mark.slow
def test_a_model_error_on_a_worker_reaches_the_driver_as_is(ray_cluster):
    bad = small_config().student.model_copy(update={"options": {"tilt": "sideways"}})
    pool = D.WorkerPool(1, num_cpus=1)
    try:
        with pytest.raises(ModelError, match="tilt"):
            pool.call("load", [D.spec_key(bad)])
        assert pool.stats["resubmitted"] == 0  # a bad model is not a lost worker
    finally:
        pool.shutdown()


@pytest.fixture(scope="module")
def launcher():
    la = Launcher()
    yield la
    la.close()


@pytest.mark.slow
def test_killed_ray_driver_resumes_to_identical_tables(ray_cluster, launcher, reference,
                                                       tmp_path):
    """`distillscope run --ray ADDRESS`, SIGKILLed at a seeded moment (its actors die with it),
    then run again to the end: the tables are the in-process run's."""
    cfg_path = tmp_path / "toy.yaml"
    cfg_path.write_text(small_config().to_yaml(), encoding="utf-8")
    out = tmp_path / "run"
    address = ray_cluster.get_runtime_context().gcs_address
    cli_args = ["run", str(cfg_path), "--out", str(out), "--no-report", "--ray", address]
    landed = kill_and_resume(launcher, cli_args, out, len(committed(reference)), seed=7,
                             n_kills=1)
    assert len(landed) == 1
    assert_same_tables(reference, out)
