"""The fast decode path of the `hf` backend: sampling primitives and the Llama-family runner.

`group_uniforms` and `draw_tokens` are the pure sampling primitives (one uniform per (sample,
step), inverse-CDF draw after temperature and top-p). `DecodeRunner` runs prefill and decode
steps of a Llama-family decoder (llama, qwen2, qwen3, mistral) on the model's own weights:
static KV buffers (`KVBuffers`), device-side batch state (`DecodeState`) updated in place so a
step can be captured as a CUDA graph, and cascade attention (each group's prefix KV stored once;
its scores for all the group's queries from one matrix product). `HFModel` in
`distillscope.models.hf` drives it; see that module's docstring for the whole design.

Shape letters: B batch slots, G groups, L prefix positions, S generated positions (slots),
V vocabulary, H query heads, K key/value heads, R = H / K, D head dim.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from distillscope.models.base import ModelError

__all__ = [
    "DecodeRunner",
    "DecodeState",
    "KVBuffers",
    "LayerWeights",
    "draw_tokens",
    "group_uniforms",
]


# --- sampling primitives (pure) --------------------------------------------------------------


def group_uniforms(seed: int, n: int, steps: int) -> torch.Tensor:
    """(n, steps) float32 uniforms in [0, 1) of one group, on the CPU. Row j is sample j's
    noise: it does not depend on n, so a larger group extends a smaller one."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed) & 0xFFFF_FFFF_FFFF_FFFF)
    return torch.rand(n, steps, generator=gen, dtype=torch.float32)


def draw_tokens(
    logits_B_V: torch.Tensor, u_B: torch.Tensor, temperature: float, top_p: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse-CDF draw of one token per row with the row's uniform. Returns (tokens_B,
    finite_B); finite is False where the logits held NaN/+inf. temperature <= 0: argmax.

    Without top-p and with a vocabulary in blocks of 128, the CDF is searched in two levels
    (block sums, then within the block): the same draw, without a (B x V) scan."""
    if temperature <= 0:
        val_B, tok_B = logits_B_V.max(dim=-1)
        return tok_B, torch.isfinite(val_B)
    if temperature != 1.0:
        logits_B_V = logits_B_V.float() / temperature
    p_B_V = torch.softmax(logits_B_V, dim=-1, dtype=torch.float32)
    n_rows, V = p_B_V.shape
    u_B1 = u_B.reshape(-1, 1)
    if top_p >= 1.0 and V % _BLOCK == 0 and V >= 8 * _BLOCK:
        p_B_N_b = p_B_V.view(n_rows, V // _BLOCK, _BLOCK)
        cdf_B_N = p_B_N_b.sum(dim=-1).cumsum(dim=-1)
        total_B1 = cdf_B_N[:, -1:]
        target_B1 = u_B1 * total_B1
        blk_B1 = torch.searchsorted(cdf_B_N, target_B1, right=True).clamp_(max=V // _BLOCK - 1)
        before_B1 = torch.where(blk_B1 > 0, cdf_B_N.gather(1, (blk_B1 - 1).clamp_(min=0)), 0.0)
        inner_B_b = p_B_N_b.gather(1, blk_B1[:, :, None].expand(-1, 1, _BLOCK)).squeeze(1)
        cdf_B_b = inner_B_b.cumsum(dim=-1)
        j_B1 = torch.searchsorted(cdf_B_b, target_B1 - before_B1, right=True)
        tok_B = (blk_B1 * _BLOCK + j_B1.clamp_(max=_BLOCK - 1)).squeeze(1)
        return tok_B, torch.isfinite(total_B1.squeeze(1))
    idx_B_V = None
    if top_p < 1.0:
        p_B_V, idx_B_V = p_B_V.sort(dim=-1, descending=True)
        before_B_V = p_B_V.cumsum(dim=-1) - p_B_V
        p_B_V = p_B_V.masked_fill(before_B_V >= top_p, 0.0)  # the first token always stays
    cdf_B_V = p_B_V.cumsum(dim=-1)
    total_B1 = cdf_B_V[:, -1:]
    j_B1 = torch.searchsorted(cdf_B_V, u_B1 * total_B1, right=True).clamp_(max=V - 1)
    tok_B = (j_B1 if idx_B_V is None else idx_B_V.gather(1, j_B1)).squeeze(1)
    return tok_B, torch.isfinite(total_B1.squeeze(1))


_BLOCK = 128


@dataclass
class DecodeState:
    """Device-side state of one decode batch. Every field is updated in place (CUDA graphs)."""

    out_B_S: torch.Tensor  # int64, generated tokens, -1 = none
    done_B: torch.Tensor  # bool
    limit_B: torch.Tensor  # int64, max tokens of the slot
    u_B_S: torch.Tensor  # float32 uniforms
    step: torch.Tensor  # int64 (1,), index of the next column of out to write
    pos0_B: torch.Tensor  # int64, prefix length = position of out[:, 0]
    eos_E: torch.Tensor  # int64
    bad_B: torch.Tensor  # bool, saw non-finite logits
    temperature: float
    top_p: float

    def advance(self, logits_B_V: torch.Tensor, rows_A: torch.Tensor | None = None) -> None:
        """Draw the next token of every slot into column `step`, update done, step += 1.
        With `rows_A` (the running slots, ascending), the logits are those rows' only (A, V);
        every other slot is finished and gets no token."""
        u_B = self.u_B_S.index_select(1, self.step).squeeze(1)
        if rows_A is not None:
            tok_A, finite_A = draw_tokens(logits_B_V, u_B[rows_A], self.temperature, self.top_p)
            tok_B = torch.full_like(self.done_B, -1, dtype=torch.long).index_copy_(0, rows_A, tok_A)
            finite_B = torch.ones_like(self.done_B).index_copy_(0, rows_A, finite_A)
        else:
            tok_B, finite_B = draw_tokens(logits_B_V, u_B, self.temperature, self.top_p)
        self.bad_B |= ~finite_B & ~self.done_B
        tok_B = torch.where(self.done_B, torch.full_like(tok_B, -1), tok_B)
        self.out_B_S.index_copy_(1, self.step, tok_B[:, None])
        is_eos_B = (tok_B[:, None] == self.eos_E[None]).any(dim=-1)
        self.done_B |= is_eos_B | (self.step + 1 >= self.limit_B)
        self.step += 1

    def last_tokens(self) -> torch.Tensor:
        return self.out_B_S.index_select(1, self.step - 1).squeeze(1).clamp_min(0)


# --- the Llama-family decode runner ----------------------------------------------------------


def _rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin, with rotate_half(x) * sin = roll(x) * sin_signed."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), sin_signed)


@dataclass
class KVBuffers:
    """Static KV buffers of a batch, per layer. Slots are (group, sample); Gp prefix entries
    (groups with cascade, slots without), n = slots per entry.
    prefix keys/values (Gp*K, L, D); suffix keys/values (Gp, K, n, S, D)."""

    pre_k: list[torch.Tensor]
    pre_v: list[torch.Tensor]
    pre_pad: torch.Tensor | None  # bool (Gp, 1, 1, 1, L): past the prefix's end; None: no pad
    suf_k: list[torch.Tensor]
    suf_v: list[torch.Tensor]
    per_group: int
    pre_len: torch.Tensor | None = None  # int (Gp,): prefix lengths (the Triton kernel's mask)


@dataclass
class LayerWeights:
    """One decoder layer's weights, q/k/v and gate/up each in one matrix."""

    ln1: torch.Tensor
    ln2: torch.Tensor
    eps1: float
    eps2: float
    qkv_w: torch.Tensor
    qkv_b: torch.Tensor | None
    qk_norm_w: torch.Tensor | None  # (H + K, D)
    qk_eps: float
    o_w: torch.Tensor
    o_b: torch.Tensor | None
    gate_up_w: torch.Tensor
    down_w: torch.Tensor
    act: Any


def _fuse(linears: list[Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One weight (and bias) for several Linear layers on the same input. The layers' own
    weights become views into it, so values and memory use do not change (a second call finds
    them already adjacent and only returns the view)."""
    ws = [lin.weight for lin in linears]
    rows = sum(w.shape[0] for w in ws)
    storage = ws[0].untyped_storage().data_ptr()
    adjacent = all(
        w.is_contiguous() and w.untyped_storage().data_ptr() == storage for w in ws
    ) and all(
        b.data_ptr() == a.data_ptr() + a.numel() * a.element_size()
        for a, b in zip(ws, ws[1:], strict=False)
    )
    if adjacent:
        first = ws[0].data
        w = first.new_empty(0).set_(
            first.untyped_storage(), first.storage_offset(), (rows, first.shape[1])
        )
    else:
        w = torch.cat([x.data for x in ws])
        start = 0
        for lin in linears:
            lin.weight.data = w[start : start + lin.weight.shape[0]]
            start += lin.weight.shape[0]
    if all(lin.bias is None for lin in linears):
        return w, None
    biases = [
        lin.bias.data if lin.bias is not None else w.new_zeros(lin.weight.shape[0])
        for lin in linears
    ]
    return w, torch.cat(biases)


def _rows(x: torch.Tensor, rows_A: torch.Tensor | None) -> torch.Tensor:
    return x if rows_A is None else x.index_select(0, rows_A)


def _eps(norm: Any) -> float:
    return float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))


class DecodeRunner:
    """Prefill and decode steps of a Llama-family model, on the model's own weights.

    Decode is written for few GPU kernels per layer (about 25): fused RMSNorm, one q/k/v and
    one gate/up matrix product (`_fuse`), RoPE as one addcmul, residual adds folded into
    addmm, and cascade attention as one softmax over one score buffer: the shared prefix's
    scores come from one matrix product per (group, kv head) with all of the group's queries
    as rows, each sample's suffix scores from its own, both written in place (no log-sum-exp
    merge, no concatenation)."""

    TYPES = ("llama", "qwen2", "qwen3", "mistral")

    @classmethod
    def supports(cls, model: Any) -> bool:
        cfg = model.config
        base = getattr(model, "base_model", None)
        if cfg.model_type not in cls.TYPES or base is None:
            return False
        if not all(hasattr(base, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb")):
            return False
        if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])):
            return False
        if cfg.model_type == "mistral" and getattr(cfg, "sliding_window", None):
            return False
        if getattr(cfg, "hidden_act", "silu") not in ("silu", "swish"):
            return False
        return getattr(base.rotary_emb, "rope_type", "default") not in ("dynamic", "longrope")

    def __init__(
        self, model: Any, max_positions: int, matmul_dtype: Any = None, attention: str = "torch"
    ) -> None:
        if attention not in ("torch", "triton"):
            raise ModelError(f"attention must be torch or triton, got '{attention}'")
        if attention == "triton":
            from distillscope.models import triton_attention

            if not triton_attention.available():
                raise ModelError("attention 'triton' needs triton installed (pip install triton)")
        self.attention = attention
        base = model.base_model
        cfg = model.config
        self.embed = base.embed_tokens
        self.norm_w, self.norm_eps = base.norm.weight, _eps(base.norm)
        self.lm_head = model.get_output_embeddings()
        attn = base.layers[0].self_attn
        self.H = cfg.num_attention_heads
        self.K = cfg.num_key_value_heads
        self.R = self.H // self.K
        self.D = attn.head_dim
        self.hidden = cfg.hidden_size
        self.scale = float(attn.scaling)
        weight = self.embed.weight
        self.device, self.dtype = weight.device, weight.dtype
        # matrix products in `mm_dtype` (copies of the weights when it is not the model's
        # dtype); norms, residual stream, RoPE, attention, KV and softmax stay in `dtype`
        self.mm_dtype = matmul_dtype or self.dtype
        self.layers = [self._layer(layer) for layer in list(base.layers)[: cfg.num_hidden_layers]]
        self.head_w = self._mm_weight(self.lm_head.weight)
        self.head_b = getattr(self.lm_head, "bias", None)
        pos = torch.arange(max_positions, device=self.device)[None]
        with torch.no_grad():
            cos, sin = base.rotary_emb(weight[:1], pos)
        half = self.D // 2
        self.cos_P_D = cos[0].to(self.dtype)
        sin = sin[0].to(self.dtype)
        self.sin_P_D = torch.cat([-sin[:, :half], sin[:, half:]], dim=-1)

    def _layer(self, layer: Any) -> LayerWeights:
        a, mlp = layer.self_attn, layer.mlp
        qkv_w, qkv_b = _fuse([a.q_proj, a.k_proj, a.v_proj])
        gate_up_w, gate_up_b = _fuse([mlp.gate_proj, mlp.up_proj])
        if gate_up_b is not None or getattr(mlp.down_proj, "bias", None) is not None:
            raise ModelError("the fast runner does not handle MLP biases")
        qk_norm_w, qk_eps = None, 1e-6
        if hasattr(a, "q_norm"):
            qk_norm_w = torch.cat(
                [a.q_norm.weight.expand(self.H, -1), a.k_norm.weight.expand(self.K, -1)]
            )
            qk_eps = _eps(a.q_norm)
        return LayerWeights(
            ln1=layer.input_layernorm.weight,
            ln2=layer.post_attention_layernorm.weight,
            eps1=_eps(layer.input_layernorm),
            eps2=_eps(layer.post_attention_layernorm),
            qkv_w=self._mm_weight(qkv_w),
            qkv_b=qkv_b,
            qk_norm_w=qk_norm_w,
            qk_eps=qk_eps,
            o_w=self._mm_weight(a.o_proj.weight),
            o_b=a.o_proj.bias,
            gate_up_w=self._mm_weight(gate_up_w),
            down_w=self._mm_weight(mlp.down_proj.weight),
            act=mlp.act_fn,
        )

    def _mm_weight(self, w: torch.Tensor) -> torch.Tensor:
        """The weight as the matrix products use it: the model's own tensor, or a copy in
        `mm_dtype` (the model's weights are never changed)."""
        return w if w.dtype == self.mm_dtype else w.detach().to(self.mm_dtype).contiguous()

    def _linear(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        if w.dtype == x.dtype:
            return F.linear(x, w, b)
        return F.linear(x.to(w.dtype), w).to(x.dtype) if b is None else (
            F.linear(x.to(w.dtype), w).to(x.dtype) + b
        )

    def kv_bytes_per_token(self) -> int:
        return len(self.layers) * 2 * self.K * self.D * torch.finfo(self.dtype).bits // 8

    def _attn_in(self, ly: LayerWeights, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """x (..., hidden) -> q (..., H, D), k (..., K, D), v (..., K, D), RoPE applied."""
        h = F.rms_norm(x, (self.hidden,), ly.ln1, ly.eps1)
        qkv = self._linear(h, ly.qkv_w, ly.qkv_b)
        split = (self.H + self.K) * self.D
        qk = qkv[..., :split].unflatten(-1, (self.H + self.K, self.D))
        v = qkv[..., split:].unflatten(-1, (self.K, self.D))
        if ly.qk_norm_w is not None:
            qk = F.rms_norm(qk, (self.D,), None, ly.qk_eps) * ly.qk_norm_w
        qk = _rope(qk, cos, sin)
        return qk[..., : self.H, :], qk[..., self.H :, :], v

    def _attn_out(self, ly: LayerWeights, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """Residual + o_proj, then residual + MLP. x, o: (N, hidden), (N, H*D)."""
        if ly.o_w.dtype != x.dtype:  # products in mm_dtype, residuals in the model's dtype
            x = x + self._linear(o, ly.o_w, ly.o_b)
            gu = self._linear(F.rms_norm(x, (self.hidden,), ly.ln2, ly.eps2), ly.gate_up_w, None)
            inter = gu.shape[-1] // 2
            return x + self._linear(ly.act(gu[:, :inter]) * gu[:, inter:], ly.down_w, None)
        x = torch.addmm(x, o, ly.o_w.t()) if ly.o_b is None else x + F.linear(o, ly.o_w, ly.o_b)
        gu = F.linear(F.rms_norm(x, (self.hidden,), ly.ln2, ly.eps2), ly.gate_up_w)
        inter = gu.shape[-1] // 2
        return torch.addmm(x, ly.act(gu[:, :inter]) * gu[:, inter:], ly.down_w.t())

    def prefill(self, ids_L: torch.Tensor):
        """One prefix: per-layer keys and values (K, L, D) and the last position's logits (V)."""
        ks, vs, x = self._forward(ids_L)
        return ks, vs, self.last_logits(x[-1])

    def forward_hidden(self, ids_L: torch.Tensor) -> torch.Tensor:
        """The final (normed) hidden states (L, hidden) of a sequence: `head` of row t gives
        the logits of token t + 1, computed with the same products as sampling."""
        x = self._forward(ids_L)[2]
        return F.rms_norm(x, (self.hidden,), self.norm_w, self.norm_eps)

    def last_logits(self, x_hidden: torch.Tensor) -> torch.Tensor:
        """Logits (V) of the next token from one position's hidden state (before the norm)."""
        return self.head(F.rms_norm(x_hidden[None], (self.hidden,), self.norm_w,
                                    self.norm_eps))[0]

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self._linear(h, self.head_w, self.head_b)

    def _forward(self, ids_L: torch.Tensor, start: int = 0, past: tuple | None = None):
        """Positions start .. start+L-1 of a sequence: their keys and values per layer (K, L, D)
        and hidden states (L, hidden), attending to `past` = (keys, values) per layer of
        positions 0 .. start-1 (models/prefix_cache.py) and causally to each other."""
        L = ids_L.shape[0]
        x = self.embed(ids_L)
        cos = self.cos_P_D[start : start + L][:, None]  # (L, 1, D)
        sin = self.sin_P_D[start : start + L][:, None]
        mask = None
        if past is not None:  # query i sees every past position and new positions <= i
            mask = (torch.arange(start + L, device=self.device)[None]
                    <= start + torch.arange(L, device=self.device)[:, None])
        ks, vs = [], []
        for li, ly in enumerate(self.layers):
            q, k, v = self._attn_in(ly, x, cos, sin)
            q, k, v = q.transpose(0, 1)[None], k.transpose(0, 1), v.transpose(0, 1)
            ks.append(k)
            vs.append(v)
            if past is not None:
                k, v = torch.cat([past[0][li], k], dim=1), torch.cat([past[1][li], v], dim=1)
            kr = k.repeat_interleave(self.R, dim=0)[None]
            vr = v.repeat_interleave(self.R, dim=0)[None]
            o = F.scaled_dot_product_attention(q, kr, vr, attn_mask=mask, is_causal=mask is None,
                                               scale=self.scale)
            x = self._attn_out(ly, x, o[0].transpose(0, 1).reshape(L, self.H * self.D))
        return ks, vs, x

    def decode(
        self, st: DecodeState, kv: KVBuffers, upto: int, rows_A: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One decode step for every slot (no host sync): logits (B, V) of the next token.
        The input token out[:, step-1] goes to suffix slot step-1; slots >= upto are unread.

        `rows_A` (ascending slot indices, the running ones; CPU, eager only): the matrix
        products, norms and the head run on those rows alone and the logits are (A, V), so
        slots finished by EOS stop costing the weight products. Attention still runs over the
        whole (group, sample) layout (a finished slot's output is computed and dropped); its
        stale keys are read by no running slot, since each slot reads only its own suffix."""
        slot = st.step - 1
        tok_B = st.last_tokens()
        B = tok_B.shape[0]
        n, K, R, D = kv.per_group, self.K, self.R, self.D
        Gp = B // n
        L = kv.pre_k[0].shape[1]
        pos_B = (st.pos0_B + slot).clamp_(max=self.cos_P_D.shape[0] - 1)
        if rows_A is not None:
            tok_B, pos_B = tok_B[rows_A], pos_B[rows_A]
            g_A, j_A, at = rows_A // n, rows_A % n, int(slot)
        cos, sin = self.cos_P_D[pos_B][:, None], self.sin_P_D[pos_B][:, None]  # (B, 1, D)
        invalid_U = torch.arange(upto, device=self.device) >= st.step
        x = self.embed(tok_B)
        for li, ly in enumerate(self.layers):
            q, k, v = self._attn_in(ly, x, cos, sin)
            # new key/value into suffix slot `slot`: buffers are (Gp, K, n, S, D)
            if rows_A is not None:
                kv.suf_k[li][g_A, :, j_A, at] = k
                kv.suf_v[li][g_A, :, j_A, at] = v
                q = q.new_zeros(B, self.H, D).index_copy_(0, rows_A, q)
            else:
                kv.suf_k[li].index_copy_(3, slot, k.reshape(Gp, n, K, 1, D).transpose(1, 2))
                kv.suf_v[li].index_copy_(3, slot, v.reshape(Gp, n, K, 1, D).transpose(1, 2))
            q = (q.reshape(Gp, n, K, R, D) * self.scale).transpose(1, 2).contiguous()
            if self.attention == "triton":
                o = self._triton(q, kv, li, st.step).transpose(1, 2)
                x = self._attn_out(ly, x, _rows(o.reshape(B, self.H * D), rows_A))
                continue
            # scores (Gp, K, n, R, L + upto): the group's n*R query rows against its one
            # prefix in one product, each sample's R rows against its own suffix; one softmax
            ks = kv.suf_k[li][:, :, :, :upto].reshape(Gp * K * n, upto, D)
            vs = kv.suf_v[li][:, :, :, :upto].reshape(Gp * K * n, upto, D)
            if self.device.type == "cuda":
                # both products written in place into one buffer (no allocation: CUDA graphs)
                s = torch.empty(Gp, K, n, R, L + upto, dtype=self.dtype, device=self.device)
                s_pre, s_suf = s[..., :L], s[..., L:]
                torch.bmm(q.view(Gp * K, n * R, D), kv.pre_k[li].transpose(1, 2),
                          out=s_pre.view(Gp * K, n * R, L))
                torch.bmm(q.view(Gp * K * n, R, D), ks.transpose(1, 2),
                          out=s_suf.view(-1, R, upto))
            else:
                # on the CPU a strided `out=` sends bmm to a slow per-matrix loop (3x the
                # whole attention here): contiguous products, then one concatenation
                s_pre = torch.bmm(q.view(Gp * K, n * R, D), kv.pre_k[li].transpose(1, 2))
                s_suf = torch.bmm(q.view(Gp * K * n, R, D), ks.transpose(1, 2))
                s = torch.cat([s_pre.view(Gp, K, n, R, L), s_suf.view(Gp, K, n, R, upto)], -1)
                s_pre, s_suf = s[..., :L], s[..., L:]
            s_suf.masked_fill_(invalid_U, float("-inf"))
            if kv.pre_pad is not None:
                s_pre.masked_fill_(kv.pre_pad, float("-inf"))
            p = torch.softmax(s, dim=-1)  # float32 inside, rounded once to the model dtype
            o = torch.bmm(p[..., :L].reshape(Gp * K, n * R, L), kv.pre_v[li])
            o_suf = torch.bmm(p[..., L:].reshape(Gp * K * n, R, upto), vs)
            o = (o.view(Gp, K, n, R, D) + o_suf.view(Gp, K, n, R, D)).transpose(1, 2)
            x = self._attn_out(ly, x, _rows(o.reshape(B, self.H * D), rows_A))
        return self.head(F.rms_norm(x, (self.hidden,), self.norm_w, self.norm_eps))

    @staticmethod
    def _triton(q: torch.Tensor, kv: KVBuffers, li: int, step: torch.Tensor) -> torch.Tensor:
        from distillscope.models.triton_attention import cascade_attention

        assert kv.pre_len is not None
        return cascade_attention(
            q, kv.pre_k[li], kv.pre_v[li], kv.pre_len, kv.suf_k[li], kv.suf_v[li], step
        )
