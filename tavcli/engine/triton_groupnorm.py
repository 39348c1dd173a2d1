"""The clip GroupNorm (and the SiLU after it) as Triton kernels: one read and one write of the activations.

Frames are folded into the batch, x is (B*F, C, H, W), and each (clip, group)'s statistics pool the clip's
F frames: F*C/G*H*W elements. In PyTorch ops (`tavcli.method.attention.clip_group_norm`) that costs several
full-size passes in a generic strided elementwise kernel, and the SiLU after it one more pass each way;
the 45 norms of a tuning step took 11.7 ms of an H200 that way (docs/performance.md). Here the forward is
a row-sum kernel (one read), a tiny per-(clip, group) finalise and one fused normalise(+SiLU) pass (one
read, one write); the backward is the same shape, recomputing the normalised input (and the SiLU) from x,
which is all it keeps. Statistics and every step of the arithmetic are fp32; the output is rounded once.

A row is one image's channel: H*W contiguous elements. Programs take a tile of [ROWS, COLS] elements, so
the per-channel and per-group coefficients are per-row loads and the elements need no index division.
Kernels are chosen by shape, not autotuned: Triton caches each binary on disk and loads it in milliseconds.
"""

from __future__ import annotations

import functools

import torch

_TILE = 2048  # elements per program: 16 per thread at 4 warps, two 16-byte loads of bf16
_FINAL_BLOCK = 256


@functools.cache
def _triton():
    """The kernels' module, or None where triton is not importable (torch's CPU builds come without it)."""
    try:
        from tavcli.engine import _groupnorm_kernels
    except ImportError:
        return None
    return _groupnorm_kernels


def available(x: torch.Tensor) -> bool:
    """Whether `clip_group_norm` can run on `x`: a CUDA tensor, triton importable, not inside torch.compile
    (inductor fuses the PyTorch-ops norm itself, and traces it more simply than an opaque kernel)."""
    return x.is_cuda and not torch.compiler.is_compiling() and _triton() is not None


def clip_group_norm(x: torch.Tensor, frames: int, groups: int, weight: torch.Tensor | None,
                    bias: torch.Tensor | None, eps: float, silu: bool = False) -> torch.Tensor:
    """GroupNorm of (B*F, C, H, W) with statistics pooled over each clip's F frames, then SiLU if `silu`."""
    c = x.shape[1]
    if weight is None:
        weight = torch.ones(c, device=x.device, dtype=torch.float32)
    if bias is None:
        bias = torch.zeros(c, device=x.device, dtype=torch.float32)
    return _TritonClipGroupNorm.apply(x, weight, bias, frames, groups, eps, silu)


class _Shape:
    """The launch geometry of one norm: rows, tile and the clip/group sizes the kernels index with."""

    def __init__(self, x: torch.Tensor, frames: int, groups: int):
        self.bf, self.c = x.shape[:2]
        self.hw = x[0, 0].numel()
        self.frames, self.groups = frames, groups
        self.clips = self.bf // frames
        self.rows = self.bf * self.c
        self.n = frames * (self.c // groups) * self.hw  # elements per (clip, group)
        self.cols = min(1024, 1 << max(self.hw - 1, 0).bit_length())
        self.tile_rows = _TILE // self.cols

    def args(self) -> tuple:
        return self.rows, self.hw, self.c, self.frames, self.groups, self.c // self.groups


class _TritonClipGroupNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, frames, groups, eps, silu):
        t = _triton()
        x = x.contiguous()
        s = _Shape(x, frames, groups)
        if s.bf % frames or s.c % groups:
            raise ValueError(f"{s.bf} images of {s.c} channels are not whole {frames}-frame clips of {groups} groups")
        sums = torch.empty(2, s.rows, device=x.device, dtype=torch.float32)
        stats = torch.empty(2, s.clips * groups, device=x.device, dtype=torch.float32)  # mean, rstd
        rows_grid = (-(-s.rows // s.tile_rows),)
        t.row_sums[rows_grid](x, x, stats, weight, bias, sums, *s.args(),
                              ROWS=s.tile_rows, COLS=s.cols, BACKWARD=False, SILU=False)
        t.finalise[(s.clips * groups,)](sums, weight, stats, *s.args()[1:], s.n, eps,
                                        BACKWARD=False, BLOCK=_FINAL_BLOCK)
        y = torch.empty_like(x)
        grid = (rows_grid[0], -(-s.hw // s.cols))
        t.apply[grid](x, x, stats, stats, weight, bias, y, *s.args(),
                      ROWS=s.tile_rows, COLS=s.cols, BACKWARD=False, SILU=silu)
        ctx.save_for_backward(x, weight, bias, stats)
        ctx.shape, ctx.silu = s, silu
        return y

    @staticmethod
    def backward(ctx, grad):
        t = _triton()
        x, weight, bias, stats = ctx.saved_tensors
        s, silu = ctx.shape, ctx.silu
        grad = grad.contiguous()
        sums = torch.empty(2, s.rows, device=x.device, dtype=torch.float32)  # sum dz, sum dz*x_hat per row
        rows_grid = (-(-s.rows // s.tile_rows),)
        t.row_sums[rows_grid](x, grad, stats, weight, bias, sums, *s.args(),
                              ROWS=s.tile_rows, COLS=s.cols, BACKWARD=True, SILU=silu)
        means = torch.empty(2, s.clips * s.groups, device=x.device, dtype=torch.float32)
        t.finalise[(s.clips * s.groups,)](sums, weight, means, *s.args()[1:], s.n, 0.0,
                                          BACKWARD=True, BLOCK=_FINAL_BLOCK)
        dx = torch.empty_like(x)
        grid = (rows_grid[0], -(-s.hw // s.cols))
        t.apply[grid](x, grad, stats, means, weight, bias, dx, *s.args(),
                      ROWS=s.tile_rows, COLS=s.cols, BACKWARD=True, SILU=silu)
        dweight = dbias = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:  # trained norms only (no adapter trains them)
            per_channel = sums.view(2, s.bf, s.c).sum(1)  # sum dz, sum dz*x_hat over every image, per channel
            dweight, dbias = per_channel[1].to(weight.dtype), per_channel[0].to(bias.dtype)
        return dx, dweight, dbias, None, None, None, None
