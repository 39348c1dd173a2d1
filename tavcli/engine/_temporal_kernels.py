"""Triton kernels of the temporal attention (`tavcli.engine.triton_temporal` launches them and says why).

Imported only where triton is: torch's CPU builds come without it.

Layout: q, k, v, o and their gradients are (B*F, N, C) images, read as (B, F, P, d) with P = N*heads
positions-and-heads, d = C/heads: element (b, f, p, e) sits at (b*F + f)*IMAGE + p*d + e. A program takes
BP consecutive p of one clip b, loads their q, k and v of all F frames once as [BP, FP, DP] blocks
(position, frame, head-dim lane; FP and DP are F and d rounded up to powers of two, FP at least 16 for the
tensor cores; the extra lanes are masked) and computes each position's F x F attention as batched matmuls.
"""

import triton
import triton.language as tl


@triton.jit
def _clip_block(pid, clip, IMAGE, P, d, F: tl.constexpr, FP: tl.constexpr, BP: tl.constexpr,
                DP: tl.constexpr):
    """The program's [BP, FP, DP] offsets and mask, the [BP, FP] offsets and mask of its rows in the
    (B*F, P) log-sum-exp, and which of the FP frames are real."""
    p = pid * BP + tl.arange(0, BP)
    fr = tl.arange(0, FP)
    e = tl.arange(0, DP)
    rows = (clip + fr).to(tl.int64)[None, :]
    row_mask = (p < P)[:, None] & (fr < F)[None, :]
    offs = (rows * IMAGE + p.to(tl.int64)[:, None] * d)[:, :, None] + e[None, None, :]
    mask = row_mask[:, :, None] & (e < d)[None, None, :]
    return offs, mask, rows * P + p[:, None], row_mask, fr < F


@triton.jit
def _dot(a, b):
    """A batched [BP, M, K] @ [BP, K, N] with fp32 accumulation: on the tensor cores for 16-bit operands,
    exactly for fp32 ones (the reference dtype in tests)."""
    if a.dtype == tl.float32:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def forward(Q, K, V, O, LSE, IMAGE, P, d, scale,
            F: tl.constexpr, FP: tl.constexpr, BP: tl.constexpr, DP: tl.constexpr):
    """o = softmax(scale q k^T) v per position, as two batched matmuls; LSE keeps each row's log-sum-exp
    (fp32, (B*F, P)) for the backward. The probabilities enter the second matmul in the inputs' dtype, as
    in FlashAttention."""
    clip = tl.program_id(1).to(tl.int64) * F
    offs, mask, row_offs, row_mask, real = _clip_block(tl.program_id(0), clip, IMAGE, P, d, F, FP, BP, DP)
    q = tl.load(Q + offs, mask=mask, other=0.0)
    k = tl.load(K + offs, mask=mask, other=0.0)
    v = tl.load(V + offs, mask=mask, other=0.0)
    s = _dot(q, tl.permute(k, (0, 2, 1))) * scale  # [BP, FP queries, FP keys], fp32
    s = tl.where(real[None, None, :], s, float("-inf"))
    m = tl.max(s, 2)
    w = tl.exp(s - m[:, :, None])
    total = tl.sum(w, 2)
    o = _dot(w.to(v.dtype), v) / total[:, :, None]
    tl.store(O + offs, o.to(O.dtype.element_ty), mask=mask)
    tl.store(LSE + row_offs, m + tl.log(total), mask=row_mask)


@triton.jit
def backward(Q, K, V, DO, LSE, DQ, DK, DV, IMAGE, P, d, scale,
             F: tl.constexpr, FP: tl.constexpr, BP: tl.constexpr, DP: tl.constexpr):
    """The softmax-attention backward as batched matmuls, the probabilities recomputed from LSE:
    dv = P^T do, dp = do v^T, ds = P (dp - sum_j P dp), dq = scale ds k, dk = scale ds^T q. Each input is
    read once and each gradient written once. A row's sum_j p_ij dp_ij is do_i.o_i, which FlashAttention
    reads the output for; this program holds the whole row, so the output is not read, and where the
    softmax is constant (one frame) ds comes out exactly zero, as the gradient is."""
    clip = tl.program_id(1).to(tl.int64) * F
    offs, mask, row_offs, row_mask, real = _clip_block(tl.program_id(0), clip, IMAGE, P, d, F, FP, BP, DP)
    q = tl.load(Q + offs, mask=mask, other=0.0)
    k = tl.load(K + offs, mask=mask, other=0.0)
    v = tl.load(V + offs, mask=mask, other=0.0)
    do = tl.load(DO + offs, mask=mask, other=0.0)
    lse = tl.load(LSE + row_offs, mask=row_mask, other=0.0)
    s = _dot(q, tl.permute(k, (0, 2, 1))) * scale
    w = tl.where(real[None, None, :], tl.exp(s - lse[:, :, None]), 0.0)  # [BP, FP queries, FP keys]
    dp = _dot(do, tl.permute(v, (0, 2, 1)))
    ds = w * (dp - tl.sum(w * dp, 2)[:, :, None])
    dv = _dot(tl.permute(w.to(q.dtype), (0, 2, 1)), do)
    dq = _dot(ds.to(q.dtype), k) * scale
    dk = _dot(tl.permute(ds.to(q.dtype), (0, 2, 1)), q) * scale
    tl.store(DQ + offs, dq.to(DQ.dtype.element_ty), mask=mask)
    tl.store(DK + offs, dk.to(DK.dtype.element_ty), mask=mask)
    tl.store(DV + offs, dv.to(DV.dtype.element_ty), mask=mask)
