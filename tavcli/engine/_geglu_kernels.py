"""Triton kernels of the feed-forward's GEGLU (`tavcli.engine.geglu` launches them and says why).

Imported only where triton is: torch's CPU builds come without it.
"""

import triton
import triton.language as tl

_SQRT_HALF = tl.constexpr(0.7071067811865476)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)


@triton.jit
def _tile(rows, d, ROWS: tl.constexpr, COLS: tl.constexpr):
    """A tile's offsets into proj (rows of [h, gate], 2*d long) and into out (rows d long), and its mask."""
    r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    col = tl.program_id(1) * COLS + tl.arange(0, COLS)
    m = (r < rows)[:, None] & (col < d)[None, :]
    r = r.to(tl.int64)[:, None]
    return r * (2 * d) + col[None, :], r * d + col[None, :], m


@triton.jit
def forward(PROJ, OUT, rows, d, ROWS: tl.constexpr, COLS: tl.constexpr):
    """out = h * gelu(gate), gelu the exact (erf) one, in fp32, rounded once."""
    p, o, m = _tile(rows, d, ROWS, COLS)
    h = tl.load(PROJ + p, mask=m, other=0.0).to(tl.float32)
    gate = tl.load(PROJ + p + d, mask=m, other=0.0).to(tl.float32)
    gelu = 0.5 * gate * (1.0 + tl.math.erf(gate * _SQRT_HALF))
    tl.store(OUT + o, (h * gelu).to(OUT.dtype.element_ty), mask=m)


@triton.jit
def backward(PROJ, GRAD, DPROJ, rows, d, ROWS: tl.constexpr, COLS: tl.constexpr):
    """dh = grad * gelu(gate), dgate = grad * h * gelu'(gate), into [dh, dgate]."""
    p, o, m = _tile(rows, d, ROWS, COLS)
    h = tl.load(PROJ + p, mask=m, other=0.0).to(tl.float32)
    gate = tl.load(PROJ + p + d, mask=m, other=0.0).to(tl.float32)
    grad = tl.load(GRAD + o, mask=m, other=0.0).to(tl.float32)
    cdf = 0.5 * (1.0 + tl.math.erf(gate * _SQRT_HALF))
    pdf = tl.exp(-0.5 * gate * gate) * _INV_SQRT_2PI
    tl.store(DPROJ + p, (grad * gate * cdf).to(DPROJ.dtype.element_ty), mask=m)
    tl.store(DPROJ + p + d, (grad * h * (cdf + gate * pdf)).to(DPROJ.dtype.element_ty), mask=m)
