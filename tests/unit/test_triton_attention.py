"""The Triton cascade decode-attention kernel equals the plain-torch reference, and the
reference equals the attention of `DecodeRunner.decode`. The kernel runs under
TRITON_INTERPRET=1 on the CPU (skipped where triton is not installed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from distillscope.models import triton_attention as ta


def _case(Gp=3, K=2, n=5, R=2, D=16, L=37, S=24, step=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(Gp, K, n, R, D, generator=g) * 0.3
    pre_k = torch.randn(Gp * K, L, D, generator=g)
    pre_v = torch.randn(Gp * K, L, D, generator=g)
    lengths = torch.tensor([L, L - 11, 1][:Gp])
    suf_k = torch.randn(Gp, K, n, S, D, generator=g)
    suf_v = torch.randn(Gp, K, n, S, D, generator=g)
    return q, pre_k, pre_v, lengths, suf_k, suf_v, torch.tensor([step])


def _decode_attention(q, pre_k, pre_v, lengths, suf_k, suf_v, step):
    """The score-buffer computation of DecodeRunner.decode, verbatim in structure."""
    Gp, K, n, R, D = q.shape
    L, upto = pre_k.shape[1], int(step)
    s = torch.empty(Gp, K, n, R, L + upto)
    s_pre, s_suf = s[..., :L], s[..., L:]
    torch.bmm(q.reshape(Gp * K, n * R, D), pre_k.transpose(1, 2), out=s_pre.view(Gp * K, n * R, L))
    ks = suf_k[:, :, :, :upto].reshape(Gp * K * n, upto, D)
    vs = suf_v[:, :, :, :upto].reshape(Gp * K * n, upto, D)
    torch.bmm(q.reshape(Gp * K * n, R, D), ks.transpose(1, 2), out=s_suf.view(-1, R, upto))
    pad = torch.arange(L)[None] >= lengths[:, None]
    s_pre.masked_fill_(pad[:, None, None, None], float("-inf"))
    p = torch.softmax(s, dim=-1)
    o = torch.bmm(p[..., :L].reshape(Gp * K, n * R, L), pre_v)
    o_suf = torch.bmm(p[..., L:].reshape(Gp * K * n, R, upto), vs)
    return o.view(Gp, K, n, R, D) + o_suf.view(Gp, K, n, R, D)


def test_reference_equals_the_decode_runner_attention():
    args = _case()
    ref = ta.cascade_attention_reference(*args)
    assert torch.allclose(ref, _decode_attention(*args), atol=1e-6, rtol=1e-5)


SHAPES = {
    "padded": {},  # padded prefixes, partial row block, partial suffix
    "first-step": {"n": 1, "R": 1, "step": 1},  # first decode step, one row
    "full": {"Gp": 2, "n": 9, "R": 3, "D": 32, "L": 64, "S": 40, "step": 40},
}

_CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1])
from test_triton_attention import SHAPES, _case
from distillscope.models import triton_attention as ta
out = {}
for name, shape in SHAPES.items():
    args = _case(**shape)
    got = ta.cascade_attention(*args, block_m=16, block_l=16, block_s=8)
    want = ta.cascade_attention_reference(*args)
    out[name] = [list(got.shape) == list(want.shape), float((got - want).abs().max())]
print(json.dumps(out))
"""


def test_triton_kernel_equals_the_reference():
    """In a child process: TRITON_INTERPRET must be set before triton is first imported."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    here = os.path.dirname(__file__)
    res = subprocess.run([sys.executable, "-c", _CHILD, here], env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    diffs = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(diffs) == set(SHAPES)
    for name, (same_shape, diff) in diffs.items():
        assert same_shape, name
        assert diff < 1e-5, (name, diff)


def test_gpu_check_cpu_path(tmp_path):
    """benchmarks/gpu_check.py's CPU path: kernel vs reference and triton-attention sampling
    equal to torch-attention sampling, under the interpreter (child process)."""
    pytest.importorskip("triton")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    res = subprocess.run([sys.executable, os.path.join(root, "benchmarks", "gpu_check.py"),
                          "--device", "cpu", "--smoke", "--out", str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-2000:])
    out = json.loads((tmp_path / "gpu_check.json").read_text())
    assert out["ok"] and out["sampler"]["greedy_equal"]
