"""The temporal attention (softmax attention over a clip's F frames at every position and head) as Triton
kernels that read q, k and v where the projections wrote them and write the output where `to_out` reads it.

Through SDPA the temporal attention is a batch of B*N*heads sequences of F = 8 tokens: every fused kernel
tiles the sequence by 64 or 128, so most of its work is padding, and the frames-last views cost copies in
and out. Its 16 calls took 11.8 ms of a tuning step on an H200 with cuDNN, and cuDNN builds a plan for each
shape (benchmarks/attention_kinds.py, docs/performance.md). The work itself is small: per position F*F
dot products of d = 40..160 numbers. Here a program takes a run of positions of one clip and loops over
the frames with an online softmax in fp32 registers; backward recomputes the probabilities from the
forward's log-sum-exp. The arithmetic is fp32 throughout, each output rounded once.

Each key and value tile is read once per query frame: from the L2 cache while a clip's q, k and v fit in
it. Measured on an H200 at 8 frames (2026-12-02): the 32x32, 16x16 and 8x8 levels' fwd+bwd 0.29, 0.34 and
0.30 ms against SDPA's best 0.52, 0.32 and 0.26; the 64x64 level, whose q, k and v (63 MB) outgrow the
50 MB cache, 1.96 ms against 1.15 for PyTorch's memory-efficient kernel. So `available` takes the kernel
only where the clip fits in three quarters of the GPU's L2, and up to 8 frames (the counts measured); a
version holding all frames in registers instead was slower at every size but that one (not kept).
"""

from __future__ import annotations

import functools

import torch

from tavcli.engine import triton_kernels

_TILE = 2048  # elements of a [positions, head dim] tile: 16 per thread at 4 warps
_MAX_FRAMES = 8  # measured up to here


def _triton():
    """The kernels' module, or None without triton."""
    return triton_kernels("_temporal_kernels")


def available(q: torch.Tensor, frames: int) -> bool:
    """Whether `temporal_attention` should run on (B*F, N, C) `q`: a CUDA tensor, triton importable, not
    inside torch.compile (which traces the SDPA path instead), at most 8 frames, and one clip's q, k and v
    within three quarters of the GPU's L2 cache (above)."""
    if not q.is_cuda or torch.compiler.is_compiling() or _triton() is None or frames > _MAX_FRAMES:
        return False
    clip_bytes = 3 * q[:frames].numel() * q.element_size()
    return clip_bytes <= 0.75 * _l2_bytes(q.device)


@functools.cache
def _l2_bytes(device: torch.device) -> int:
    return getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0)  # unknown: never fused


def temporal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, frames: int, heads: int,
                       scale: float) -> torch.Tensor:
    """Attention over the frame axis of (B*F, N, C) q, k, v (heads of C/heads channels); out (B*F, N, C).

    The same function as SDPA on the frames-last views (B, N*heads, F, C/heads) with this `scale`.
    """
    bf, n, c = q.shape
    if bf % frames or c % heads:
        raise ValueError(f"{bf} images of {c} channels are not whole {frames}-frame clips of {heads} heads")
    return _TemporalAttention.apply(q, k, v, frames, heads, scale)


class _Geometry:
    """The launch geometry of one call: positions per program and the padded head-dim size."""

    def __init__(self, q: torch.Tensor, frames: int, heads: int):
        bf, n, c = q.shape
        self.frames, self.d = frames, c // heads
        self.positions, self.image = n * heads, n * c
        self.dp = max(16, 1 << (self.d - 1).bit_length())
        self.bp = max(1, _TILE // self.dp)
        self.grid = (-(-self.positions // self.bp), bf // frames)

    def args(self) -> tuple:
        return self.image, self.positions, self.d

    def meta(self) -> dict:
        return {"F": self.frames, "BP": self.bp, "DP": self.dp}


class _TemporalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, frames, heads, scale):
        t = _triton()
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        g = _Geometry(q, frames, heads)
        out = torch.empty_like(q)
        lse = torch.empty(q.shape[0], g.positions, device=q.device, dtype=torch.float32)
        t.forward[g.grid](q, k, v, out, lse, *g.args(), scale, **g.meta())
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.frames, ctx.heads, ctx.scale = frames, heads, scale
        return out

    @staticmethod
    def backward(ctx, grad):
        t = _triton()
        q, k, v, out, lse = ctx.saved_tensors
        g = _Geometry(q, ctx.frames, ctx.heads)
        grad = grad.contiguous()
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        delta = torch.empty_like(lse)  # do_i.o_i per row, written and read by the same program
        t.backward[g.grid](q, k, v, out, grad, lse, delta, dq, dk, dv, *g.args(), ctx.scale, **g.meta())
        return dq, dk, dv, None, None, None
