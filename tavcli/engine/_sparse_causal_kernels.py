"""Triton kernel of sparse-causal attention's forward (`tavcli.engine.triton_sparse_causal` launches it and
says why).

Imported only where triton is: torch's CPU builds come without it.

Layout: q, k, v and o are (B*F, N, C) images, C = heads * d: element (image i, token n, head h, lane e)
sits at (i*N + n)*C + h*d + e, where the projections wrote it and where `to_out` reads it. A program takes
BM queries of one head of one image (frame f of clip b) and runs FlashAttention's online softmax over the
keys of frame 1 of the clip and then of frame f-1, read in place; frames 1 and 2 attend frame 1's keys
once, which equals attending [k1, k1] (each weight and the sum double).
"""

import triton
import triton.language as tl


@triton.jit
def _dot(a, b):
    """a @ b with fp32 accumulation: the tensor cores for 16-bit operands, exact for fp32 (tests)."""
    if a.dtype == tl.float32:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def forward(Q, K, V, O, N, C, F, scale, D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
            DP: tl.constexpr, EVEN: tl.constexpr):
    """o = softmax(scale q [k1, k(f-1)]^T) [v1, v(f-1)] for one tile of queries; EVEN: N is a whole number
    of key tiles (no key mask). D, the head dim, is a constant: at D = 40 the compiler then knows each head's
    lanes start 16 bytes aligned and loads them 8 at a time (as a runtime int, 40 is not specialised, and
    the 64x64 level's loads went element by element). DP is D rounded up to a power of two, lanes masked."""
    image = tl.program_id(2).to(tl.int64)
    head = tl.program_id(1)
    frame = image % F
    first = image - frame  # the clip's frame 1
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    lanes = tl.arange(0, DP)
    lane_ok = lanes < D
    col = head * D + lanes
    q_offs = (image * N + rows.to(tl.int64))[:, None] * C + col[None, :]
    q_ok = (rows < N)[:, None] & lane_ok[None, :]
    q = tl.load(Q + q_offs, mask=q_ok, other=0.0)
    qk_scale = scale * 1.4426950408889634  # exp(x) = exp2(x * log2(e))
    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, DP], tl.float32)
    # one loop over the key tiles of frame 1, then of frame f-1 (none for frames 1 and 2): the pipeliner
    # overlaps loads and matmuls across the switch, as in one long sequence
    key_tiles = tl.cdiv(N, BN)
    tiles = tl.where(frame > 1, 2 * key_tiles, key_tiles).to(tl.int32)
    for tile in range(0, tiles):
        src = tl.where(tile < key_tiles, first, image - 1)
        keys = (tile % key_tiles) * BN + tl.arange(0, BN)
        kv_offs = (src * N + keys.to(tl.int64))[:, None] * C + col[None, :]
        if EVEN:
            kv_ok = lane_ok[None, :]
        else:
            kv_ok = (keys < N)[:, None] & lane_ok[None, :]
        k = tl.load(K + kv_offs, mask=kv_ok, other=0.0)
        v = tl.load(V + kv_offs, mask=kv_ok, other=0.0)
        qk = _dot(q, tl.trans(k)) * qk_scale
        if not EVEN:
            qk = tl.where((keys < N)[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.math.exp2(qk - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v)
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(O + q_offs, out.to(O.dtype.element_ty), mask=q_ok)
