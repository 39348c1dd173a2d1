"""Triton kernels of the temporal attention (`tavcli.engine.triton_temporal` launches them and says why).

Imported only where triton is: torch's CPU builds come without it.

Layout: q, k, v, o and their gradients are (B*F, N, C) images, read as (B, F, P, d) with P = N*heads
positions-and-heads, d = C/heads: element (b, f, p, e) sits at (b*F + f)*IMAGE + p*d + e. A program takes
BP consecutive p of one clip b (a contiguous run of BP*d elements per frame) and loops over the F frames:
each key and value tile is read once per query frame, so the kernel is fast while a clip's q, k and v
stay in the L2 cache (`triton_temporal.available` checks), from where the repeated reads come.
"""

import triton
import triton.language as tl


@triton.jit
def _tile(pid, P, d, BP: tl.constexpr, DP: tl.constexpr):
    """The program's positions, their mask, and the [BP, DP] offsets and mask within one frame."""
    p = pid * BP + tl.arange(0, BP)
    e = tl.arange(0, DP)
    live = p < P
    mask = live[:, None] & (e < d)[None, :]
    return p, live, p.to(tl.int64)[:, None] * d + e[None, :], mask


@triton.jit
def forward(Q, K, V, O, LSE, IMAGE, P, d, scale,
            F: tl.constexpr, BP: tl.constexpr, DP: tl.constexpr):
    """o_i = softmax_j(scale * q_i.k_j) v_j over the F frames, one online softmax per query frame;
    LSE keeps each row's log-sum-exp (fp32, (B*F, P)) for the backward."""
    p, live, offs, mask = _tile(tl.program_id(0), P, d, BP, DP)
    clip = tl.program_id(1).to(tl.int64) * F
    for i in range(F):
        q = tl.load(Q + (clip + i) * IMAGE + offs, mask=mask, other=0.0).to(tl.float32)
        m = tl.full([BP], float("-inf"), tl.float32)
        total = tl.zeros([BP], tl.float32)
        acc = tl.zeros([BP, DP], tl.float32)
        for j in range(F):
            k = tl.load(K + (clip + j) * IMAGE + offs, mask=mask, other=0.0).to(tl.float32)
            s = tl.sum(q * k, 1) * scale
            m_new = tl.maximum(m, s)
            alpha = tl.exp(m - m_new)
            w = tl.exp(s - m_new)
            v = tl.load(V + (clip + j) * IMAGE + offs, mask=mask, other=0.0).to(tl.float32)
            acc = acc * alpha[:, None] + w[:, None] * v
            total = total * alpha + w
            m = m_new
        tl.store(O + (clip + i) * IMAGE + offs, (acc / total[:, None]).to(O.dtype.element_ty), mask=mask)
        tl.store(LSE + (clip + i) * P + p, m + tl.log(total), mask=live)


@triton.jit
def backward(Q, K, V, O, DO, LSE, DELTA, DQ, DK, DV, IMAGE, P, d, scale,
             F: tl.constexpr, BP: tl.constexpr, DP: tl.constexpr):
    """The softmax-attention backward with the probabilities recomputed from LSE:
    dq_i = scale * sum_j ds_ij k_j, dk_j = scale * sum_i ds_ij q_i, dv_j = sum_i p_ij do_i,
    ds_ij = p_ij (do_i.v_j - do_i.o_i). First per query frame (dq, and do_i.o_i kept in DELTA),
    then per key frame (dk, dv): no accumulation across programs, so no atomics."""
    p, live, offs, mask = _tile(tl.program_id(0), P, d, BP, DP)
    clip = tl.program_id(1).to(tl.int64) * F
    for i in range(F):
        at = (clip + i) * IMAGE + offs
        q = tl.load(Q + at, mask=mask, other=0.0).to(tl.float32)
        do = tl.load(DO + at, mask=mask, other=0.0).to(tl.float32)
        delta = tl.sum(do * tl.load(O + at, mask=mask, other=0.0).to(tl.float32), 1)
        tl.store(DELTA + (clip + i) * P + p, delta, mask=live)
        lse = tl.load(LSE + (clip + i) * P + p, mask=live, other=0.0)
        dq = tl.zeros([BP, DP], tl.float32)
        for j in range(F):
            k = tl.load(K + (clip + j) * IMAGE + offs, mask=mask, other=0.0).to(tl.float32)
            v = tl.load(V + (clip + j) * IMAGE + offs, mask=mask, other=0.0).to(tl.float32)
            w = tl.exp(tl.sum(q * k, 1) * scale - lse)
            ds = w * (tl.sum(do * v, 1) - delta)
            dq += ds[:, None] * k
        tl.store(DQ + at, (dq * scale).to(DQ.dtype.element_ty), mask=mask)
    tl.debug_barrier()  # DELTA, written above by this program's threads, is read below
    for j in range(F):
        at = (clip + j) * IMAGE + offs
        k = tl.load(K + at, mask=mask, other=0.0).to(tl.float32)
        v = tl.load(V + at, mask=mask, other=0.0).to(tl.float32)
        dk = tl.zeros([BP, DP], tl.float32)
        dv = tl.zeros([BP, DP], tl.float32)
        for i in range(F):
            row = (clip + i) * IMAGE + offs
            q = tl.load(Q + row, mask=mask, other=0.0).to(tl.float32)
            do = tl.load(DO + row, mask=mask, other=0.0).to(tl.float32)
            lse = tl.load(LSE + (clip + i) * P + p, mask=live, other=0.0)
            delta = tl.load(DELTA + (clip + i) * P + p, mask=live, other=0.0)
            w = tl.exp(tl.sum(q * k, 1) * scale - lse)
            dv += w[:, None] * do
            dk += (w * (tl.sum(do * v, 1) - delta))[:, None] * q
        tl.store(DK + at, (dk * scale).to(DK.dtype.element_ty), mask=mask)
        tl.store(DV + at, dv.to(DV.dtype.element_ty), mask=mask)
