"""Chunked scoring of one path under a student and a teacher, on the models' device.

What: `score_path` walks a response once under each model (`LanguageModel.logprob_chunks`) and
returns, per response position t, the full-vocabulary features of
docs/method.md#distribution-features (names exactly `schemas.FEATURES`), the log-probability
of the token the path took under each model, and the full-vocabulary probabilities of the
candidate (position, token) pairs the pipeline needs: tokens with P > tau under the student or
the teacher, the path's own token, and any `extra`
pairs asked for (e.g. the S_u children found later).

Why this shape: a (T x V) array for a 30K-token trace and a 150K vocabulary does not fit
anywhere. The two models' chunks are zipped, everything of size (chunk x V) stays on the device
and dies with the chunk, and only O(T + candidates) numbers travel to the host, as float64
numpy arrays. The student is re-run for every teacher: caching its chunks would be a (T x V)
tensor, exactly what this module exists to avoid.

Precision: each chunk is upcast to `dtype` (float64 by default) and re-normalised with a
log-softmax before anything is computed, so features agree with `distillscope.gradients`' numpy
reference versions to float64 rounding. Peak device memory is about 8 (chunk x V) tensors of
`dtype`: measured 4.6 GiB at chunk 512, V = 151936, float64 on an H100 (0.08 s for 2048
positions); `dtype=torch.float32` or a smaller `chunk_size` lowers it.

Features, per position, with p = student and q = teacher (nats):
kl = KL(p||q), js = Jensen-Shannon divergence, l2 = ||p - q||_2, prob_cos = cosine of p and q,
ent_student = H(p), ent_teacher = H(q), entropy_gap = |H(q) - H(p)|, overlap_ratio =
|TopK(p) cap TopK(q)| / k, overlap_adv = companion-paper eq 7, p and q both renormalised over
TopK(p) (see `features.overlap_token_advantage`; NaN when the top-k sets are disjoint). Exact
ties in top-k may be broken differently from the numpy reference.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from distillscope.models.base import LanguageModel, ModelError, TokenizerMismatchError
from distillscope.schemas import FEATURES

__all__ = ["PathScores", "score_path", "score_student_path"]


@dataclass(frozen=True, eq=False)
class PathScores:
    """Per-path scores, all numpy on the host (float64 / int64).

    T positions, C candidate (position, token) pairs sorted by (position, token), unique.
    Teacher fields and features are NaN when no teacher was scored.
    """

    logp_student_taken_T: np.ndarray
    logp_teacher_taken_T: np.ndarray
    cand_pos_C: np.ndarray
    cand_tok_C: np.ndarray
    p_student_C: np.ndarray  # full-vocabulary probabilities (not renormalised)
    p_teacher_C: np.ndarray
    features: dict[str, np.ndarray]  # name in schemas.FEATURES -> (T,)

    @property
    def n_positions(self) -> int:
        return int(self.logp_student_taken_T.shape[0])


# --- chunk plumbing --------------------------------------------------------------------------


def _checked(it: Iterator[torch.Tensor], who: str) -> Iterator[torch.Tensor]:
    """Refuse NaN or +inf log-probabilities (-inf is a legitimate zero probability)."""
    start = 0
    for chunk in it:
        bad = torch.isnan(chunk) | torch.isposinf(chunk)
        if bool(bad.any()):
            row = start + int(bad.any(dim=-1).nonzero()[0, 0])
            raise ModelError(f"the {who} returned NaN/inf log-probabilities at response "
                             f"position {row}: the model's weights or inputs are broken "
                             f"(try float32 instead of float16)")
        start += int(chunk.shape[0])
        yield chunk


def _zip_chunks(
    s_it: Iterator[torch.Tensor], t_it: Iterator[torch.Tensor] | None
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor | None]]:
    """(start, student chunk, teacher chunk) of equal lengths, even when the two backends cut
    their chunks at different places."""
    s_it = _checked(s_it, "student")
    t_it = _checked(t_it, "teacher") if t_it is not None else None
    start = 0
    t_buf: torch.Tensor | None = None
    for s in s_it:
        if t_it is None:
            yield start, s, None
            start += int(s.shape[0])
            continue
        while s.shape[0] > 0:
            while t_buf is None or t_buf.shape[0] == 0:
                t_buf = next(t_it, None)
                if t_buf is None:
                    raise ModelError("the teacher yielded fewer positions than the student")
            n = min(int(s.shape[0]), int(t_buf.shape[0]))
            yield start, s[:n], t_buf[:n]
            start += n
            s, t_buf = s[n:], t_buf[n:]
    if t_it is not None:
        rest = 0 if t_buf is None else int(t_buf.shape[0])
        rest += sum(int(t.shape[0]) for t in t_it)
        if rest:
            raise ModelError("the teacher yielded more positions than the student")


def _extra_pairs(extra: Iterable[Sequence[int]] | np.ndarray | None, T: int) -> np.ndarray:
    if extra is None:
        return np.zeros((0, 2), dtype=np.int64)
    e = np.asarray(extra, dtype=np.int64)
    if e.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if e.ndim != 2 or e.shape[1] != 2:
        raise ValueError(f"extra must be (position, token) pairs, got shape {e.shape}")
    if np.any((e[:, 0] < 0) | (e[:, 0] >= T)):
        raise ValueError(f"extra positions must lie in 0..{T - 1}")
    if np.any(e[:, 1] < 0):
        raise ValueError("extra tokens must be non-negative ids")
    return e


# --- per-chunk maths (device) ----------------------------------------------------------------


def _features(ls: torch.Tensor, lt: torch.Tensor, k: int) -> torch.Tensor:
    """(len(FEATURES), c) features of normalised log-probabilities ls, lt of shape (c, V)."""
    ps, pt = ls.exp(), lt.exp()
    kl = (ps * (ls - lt)).sum(-1).clamp(min=0.0)  # rounding below 0 is clipped, as in numpy
    lm = torch.logaddexp(ls, lt) - math.log(2.0)
    js = (0.5 * (ps * (ls - lm)).sum(-1) + 0.5 * (pt * (lt - lm)).sum(-1)).clamp(min=0.0)
    del lm
    l2 = torch.linalg.vector_norm(ps - pt, dim=-1)
    cos = (ps * pt).sum(-1) / (
        torch.linalg.vector_norm(ps, dim=-1) * torch.linalg.vector_norm(pt, dim=-1)
    )
    ent_s = -(ps * ls).sum(-1)
    ent_t = -(pt * lt).sum(-1)
    del ps, pt
    top_s, idx_s = ls.topk(k, dim=-1)
    idx_t = lt.topk(k, dim=-1).indices
    shared = (idx_s[:, :, None] == idx_t[:, None, :]).any(-1)  # (c, k) over TopK(p)
    n_shared = shared.sum(-1)
    # both renormalised over the student's top-k set (companion eq 5's bars, used in eq 7)
    logpbar = top_s - torch.logsumexp(top_s, -1, keepdim=True)
    lq_s = lt.gather(-1, idx_s)
    logqbar = lq_s - torch.logsumexp(lq_s, -1, keepdim=True)
    adv = torch.where(shared, logpbar.exp() * (logqbar - logpbar), torch.zeros_like(logpbar))
    nan = torch.full_like(kl, float("nan"))
    overlap_adv = torch.where(n_shared > 0, adv.sum(-1) / n_shared.clamp(min=1), nan)
    values = {
        "kl": kl,
        "js": js,
        "l2": l2,
        "prob_cos": cos,
        "ent_student": ent_s,
        "ent_teacher": ent_t,
        "entropy_gap": (ent_t - ent_s).abs(),
        "overlap_ratio": n_shared.to(kl.dtype) / k,
        "overlap_adv": overlap_adv,
    }
    return torch.stack([values[name] for name in FEATURES])


# --- public API ------------------------------------------------------------------------------


def score_path(
    student: LanguageModel,
    student_ctx: Sequence[int],
    teacher: LanguageModel | None,
    teacher_ctx: Sequence[int] | None,
    response_ids: Sequence[int],
    *,
    tau: float = 0.02,
    extra: Iterable[Sequence[int]] | np.ndarray | None = None,
    topk: int = 16,
    chunk_size: int = 512,
    dtype: torch.dtype = torch.float64,
) -> PathScores:
    """Score one response under the student and (optionally) one teacher; see module docstring.

    `student_ctx` / `teacher_ctx` are each model's own context ids (the teacher's may hold
    demonstrations); `response_ids` are shared. `extra` is a list or (E, 2) array of
    (position, token) pairs to gather too. With `teacher=None` only the student is run:
    features and teacher fields are NaN, candidates come from the student alone.

    Raises TokenizerMismatchError when the two vocabularies differ, ModelError when a backend
    yields the wrong number of positions.
    """
    remote = getattr(type(student), "score_path", None)
    if remote is not None:  # a model that scores where it lives (distributed.RayModel)
        return student.score_path(student_ctx, teacher, teacher_ctx, response_ids, tau=tau,
                                  extra=extra, topk=topk, chunk_size=chunk_size, dtype=dtype)
    if not 0.0 < tau <= 1.0:
        raise ValueError(f"tau must lie in (0, 1], got {tau}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    if teacher is not None:
        if teacher_ctx is None:
            raise ValueError("a teacher needs its context ids (teacher_ctx)")
        if teacher.vocab_size != student.vocab_size:
            raise TokenizerMismatchError(
                f"vocabulary sizes differ: student {student.name} has {student.vocab_size}, "
                f"teacher {teacher.name} has {teacher.vocab_size}"
            )
    resp_T = np.asarray(response_ids, dtype=np.int64).reshape(-1)
    T = int(resp_T.shape[0])
    extra_E2 = _extra_pairs(extra, T)
    nan_T = np.full(T, np.nan)

    taken_s, taken_t, feats, cand_pos, cand_tok, cand_ps, cand_pt = ([] for _ in range(7))
    n_seen = 0
    if T > 0:
        s_it = iter(student.logprob_chunks(student_ctx, resp_T.tolist(), chunk_size))
        t_it = (
            iter(teacher.logprob_chunks(teacher_ctx, resp_T.tolist(), chunk_size))
            if teacher is not None
            else None
        )
        with torch.no_grad():
            for start, s_chunk, t_chunk in _zip_chunks(s_it, t_it):
                out = _score_chunk(
                    start, s_chunk, t_chunk, resp_T, extra_E2, tau=tau, topk=topk, dtype=dtype
                )
                taken_s.append(out[0])
                taken_t.append(out[1])
                feats.append(out[2])
                cand_pos.append(out[3])
                cand_tok.append(out[4])
                cand_ps.append(out[5])
                cand_pt.append(out[6])
                n_seen = start + s_chunk.shape[0]
    if n_seen != T:
        raise ModelError(f"the student yielded {n_seen} positions for a {T}-token response")

    def cat(parts: list[np.ndarray], dtype_: type, empty_shape: tuple[int, ...]) -> np.ndarray:
        return np.concatenate(parts, axis=-1) if parts else np.zeros(empty_shape, dtype=dtype_)

    feat_F_T = cat(feats, np.float64, (len(FEATURES), 0))
    if teacher is None:
        feat_F_T = np.full((len(FEATURES), T), np.nan)
    return PathScores(
        logp_student_taken_T=cat(taken_s, np.float64, (0,)),
        logp_teacher_taken_T=cat(taken_t, np.float64, (0,)) if teacher is not None else nan_T,
        cand_pos_C=cat(cand_pos, np.int64, (0,)),
        cand_tok_C=cat(cand_tok, np.int64, (0,)),
        p_student_C=cat(cand_ps, np.float64, (0,)),
        p_teacher_C=cat(cand_pt, np.float64, (0,)),
        features={name: feat_F_T[i].copy() for i, name in enumerate(FEATURES)},
    )


def score_student_path(
    student: LanguageModel,
    student_ctx: Sequence[int],
    response_ids: Sequence[int],
    *,
    tau: float = 0.02,
    extra: Iterable[Sequence[int]] | np.ndarray | None = None,
    chunk_size: int = 512,
    dtype: torch.dtype = torch.float64,
) -> PathScores:
    """The student alone (phase 1 before any teacher): taken log-probs and candidates with
    P_theta > tau; features and teacher fields are NaN."""
    return score_path(
        student,
        student_ctx,
        None,
        None,
        response_ids,
        tau=tau,
        extra=extra,
        chunk_size=chunk_size,
        dtype=dtype,
    )


def _score_chunk(
    start: int,
    s_chunk: torch.Tensor,
    t_chunk: torch.Tensor | None,
    resp_T: np.ndarray,
    extra_E2: np.ndarray,
    *,
    tau: float,
    topk: int,
    dtype: torch.dtype,
) -> tuple[np.ndarray, ...]:
    if s_chunk.ndim != 2:
        raise ModelError(
            f"logprob_chunks must yield (chunk, V) tensors, got {tuple(s_chunk.shape)}"
        )
    c, V = int(s_chunk.shape[0]), int(s_chunk.shape[1])
    dev = s_chunk.device
    ls = torch.log_softmax(s_chunk.to(dtype), dim=-1)
    lt = None
    if t_chunk is not None:
        if t_chunk.ndim != 2 or int(t_chunk.shape[1]) != V:
            raise TokenizerMismatchError(
                f"student and teacher score different vocabularies: {V} vs "
                f"{tuple(t_chunk.shape)[1:]} logits per position"
            )
        lt = torch.log_softmax(t_chunk.to(device=dev, dtype=dtype), dim=-1)

    tok_np = resp_T[start : start + c]
    if np.any((tok_np < 0) | (tok_np >= V)):
        raise ValueError(f"response token ids must lie in 0..{V - 1}")
    in_chunk = (extra_E2[:, 0] >= start) & (extra_E2[:, 0] < start + c)
    ext = extra_E2[in_chunk]
    if np.any(ext[:, 1] >= V):
        raise ValueError(f"extra token ids must lie in 0..{V - 1}")
    tok_c = torch.as_tensor(tok_np, device=dev)
    pos_c = torch.arange(c, device=dev, dtype=torch.int64)

    mask = ls > math.log(tau)
    if lt is not None:
        mask |= lt > math.log(tau)
    nz = mask.nonzero()
    del mask
    lin = torch.cat(
        [
            nz[:, 0] * V + nz[:, 1],
            pos_c * V + tok_c,
            torch.as_tensor((ext[:, 0] - start) * V + ext[:, 1], device=dev, dtype=torch.int64),
        ]
    )
    lin = torch.unique(lin, sorted=True)
    cpos, ctok = lin // V, lin % V

    taken_s = ls[pos_c, tok_c]
    cand_s = ls[cpos, ctok].exp()
    if lt is not None:
        taken_t = lt[pos_c, tok_c]
        cand_t = lt[cpos, ctok].exp()
        feat = _features(ls, lt, min(int(topk), V))
    else:
        taken_t = torch.full_like(taken_s, float("nan"))
        cand_t = torch.full_like(cand_s, float("nan"))
        feat = torch.full((len(FEATURES), c), float("nan"), dtype=ls.dtype, device=dev)

    def host(x: torch.Tensor, np_dtype: type) -> np.ndarray:
        return x.detach().to("cpu").numpy().astype(np_dtype, copy=False)

    return (
        host(taken_s, np.float64),
        host(taken_t, np.float64),
        host(feat, np.float64),
        host(cpos, np.int64) + start,
        host(ctok, np.int64),
        host(cand_s, np.float64),
        host(cand_t, np.float64),
    )
