"""Cascade decode attention as one Triton kernel (optional; GPU, or CPU under TRITON_INTERPRET=1).

One decode step of `DecodeRunner.decode` attends, for every (group g, kv head h), the group's
n samples x R query rows to (a) the group's prefix keys, stored once, and (b) each sample's own
suffix keys, with one softmax over both. The torch path does this with four batched products
and a materialised score buffer; the suffix products have only R rows each, far below the
device's bandwidth (benchmarks/RESULTS.md, Throughput). This kernel fuses it:

    program (g, h, row block of BLOCK_M query rows)
      prefix:  for each BLOCK_L keys: s = q_tile @ k^T (tl.dot), online softmax, acc += p @ v
               -> the prefix is read once per BLOCK_M rows (not once per sample)
      suffix:  for each BLOCK_S positions: each row's own sample keys (a gather), same online
               softmax state, acc += p v
      out = acc / l        (one softmax: the running max and sum span prefix and suffix)

Only the positions actually in use are read: prefix positions < length[g], suffix positions
< step (read from a device tensor, so a CUDA graph replays it unchanged).

`cascade_attention_reference` is the same computation in plain torch (the semantics of
`DecodeRunner.decode`), used by the exactness test (tests/unit/test_triton_attention.py runs
the kernel with TRITON_INTERPRET=1 on the CPU; skipped where triton is not installed).

Shapes: q (Gp, K, n, R, D) already scaled; pre_k/pre_v (Gp*K, L, D); lengths (Gp,) int;
suf_k/suf_v (Gp, K, n, S, D); step (1,) int = number of valid suffix positions.
Returns o (Gp, K, n, R, D) in q's dtype.
"""

from __future__ import annotations

import torch

__all__ = ["available", "cascade_attention", "cascade_attention_reference"]

try:  # pragma: no cover - depends on the environment
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None
    tl = None


def available() -> bool:
    return triton is not None


def cascade_attention_reference(q, pre_k, pre_v, lengths, suf_k, suf_v, step) -> torch.Tensor:
    """Plain torch: scores over prefix + valid suffix, one float32 softmax, weighted values."""
    Gp, K, n, R, D = q.shape
    L = pre_k.shape[1]
    upto = int(step.reshape(-1)[0])
    qf = q.float()
    s_pre = torch.einsum("gknrd,gkld->gknrl", qf, pre_k.float().view(Gp, K, L, D))
    pad = torch.arange(L, device=q.device)[None] >= lengths.to(q.device)[:, None]  # (Gp, L)
    s_pre = s_pre.masked_fill(pad[:, None, None, None], float("-inf"))
    ks, vs = suf_k[:, :, :, :upto].float(), suf_v[:, :, :, :upto].float()
    s_suf = torch.einsum("gknrd,gknsd->gknrs", qf, ks)
    p = torch.softmax(torch.cat([s_pre, s_suf], dim=-1), dim=-1)
    o = torch.einsum("gknrl,gkld->gknrd", p[..., :L], pre_v.float().view(Gp, K, L, D))
    o = o + torch.einsum("gknrs,gknsd->gknrd", p[..., L:], vs)
    return o.to(q.dtype)


if triton is not None:

    @triton.jit
    def _cascade_kernel(
        q_ptr, pk_ptr, pv_ptr, len_ptr, sk_ptr, sv_ptr, step_ptr, o_ptr,
        K, n_rows, R, L, S,
        D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_S: tl.constexpr,
    ):
        gh = tl.program_id(0)  # g * K + h
        mb = tl.program_id(1)
        rows = mb * BLOCK_M + tl.arange(0, BLOCK_M)  # query rows of this (g, h): j * R + r
        row_ok = rows < n_rows
        d = tl.arange(0, D)
        # q (Gp, K, n, R, D) contiguous: the (g, h) block is n_rows x D
        q = tl.load(q_ptr + gh * n_rows * D + rows[:, None] * D + d[None, :],
                    mask=row_ok[:, None], other=0.0).to(tl.float32)
        m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_M,), tl.float32)
        acc = tl.zeros((BLOCK_M, D), tl.float32)
        length = tl.load(len_ptr + gh // K)
        # -- prefix: one tile of keys serves all BLOCK_M rows
        for start in range(0, L, BLOCK_L):
            pos = start + tl.arange(0, BLOCK_L)
            ok = pos < length
            k = tl.load(pk_ptr + gh * L * D + pos[:, None] * D + d[None, :],
                        mask=ok[:, None], other=0.0).to(tl.float32)
            s = tl.dot(q, tl.trans(k))
            s = tl.where(ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(s - m_new[:, None])
            p = tl.where(ok[None, :], p, 0.0)
            v = tl.load(pv_ptr + gh * L * D + pos[:, None] * D + d[None, :],
                        mask=ok[:, None], other=0.0).to(tl.float32)
            acc = acc * alpha[:, None] + tl.dot(p, v)
            l_i = l_i * alpha + tl.sum(p, axis=1)
            m_i = m_new
        # -- suffix: each row reads its own sample's keys (sample = row // R)
        upto = tl.load(step_ptr)
        sample = rows // R
        base = (gh * (n_rows // R) + sample) * S * D  # (Gp, K, n, S, D) contiguous
        for start in range(0, S, BLOCK_S):
            pos = start + tl.arange(0, BLOCK_S)
            ok = (pos[None, :] < upto) & row_ok[:, None]  # (M, S)
            off = base[:, None, None] + pos[None, :, None] * D + d[None, None, :]
            k3 = tl.load(sk_ptr + off, mask=ok[:, :, None], other=0.0).to(tl.float32)
            s = tl.sum(q[:, None, :] * k3, axis=2)
            s = tl.where(ok, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp(m_i - m_safe)
            p = tl.where(ok, tl.exp(s - m_safe[:, None]), 0.0)
            v3 = tl.load(sv_ptr + off, mask=ok[:, :, None], other=0.0).to(tl.float32)
            acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v3, axis=1)
            l_i = l_i * alpha + tl.sum(p, axis=1)
            m_i = m_new
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(o_ptr + gh * n_rows * D + rows[:, None] * D + d[None, :],
                 out.to(o_ptr.dtype.element_ty), mask=row_ok[:, None])


def cascade_attention(q, pre_k, pre_v, lengths, suf_k, suf_v, step, *, block_m: int = 16,
                      block_l: int = 64, block_s: int = 16) -> torch.Tensor:
    """The Triton kernel (see the module doc). Same arguments as the reference."""
    if triton is None:  # pragma: no cover
        raise RuntimeError("triton is not installed")
    Gp, K, n, R, D = q.shape
    L, S = pre_k.shape[1], suf_k.shape[3]
    q = q.contiguous()
    o = torch.empty_like(q)
    n_rows = n * R
    grid = (Gp * K, triton.cdiv(n_rows, block_m))
    _cascade_kernel[grid](
        q, pre_k.contiguous(), pre_v.contiguous(), lengths.to(torch.int32).contiguous(),
        suf_k.contiguous(), suf_v.contiguous(), step.reshape(1).to(torch.int32), o,
        K, n_rows, R, L, S,
        D=D, BLOCK_M=block_m, BLOCK_L=block_l, BLOCK_S=block_s,
    )
    return o
