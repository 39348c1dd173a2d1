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
Channels-last activations (a channels-last UNet's, `tavcli.engine.layout`) take their own kernels, tiled as
`_Shape` says, and keep their layout.
Kernels are chosen by shape, not autotuned: Triton caches each binary on disk and loads it in milliseconds.
"""

from __future__ import annotations

import torch

from tavcli.engine import triton_kernels

_TILE = 2048  # elements per program: 16 per thread at 4 warps, two 16-byte loads of bf16
_PIXELS, _CHANNELS = 32, 64  # a channels-last tile: the same 2048 elements, 128 contiguous bytes a pixel
_SPLIT = 256  # pixels per channels-last row-sum program: 16 programs per 64x64 image's channel block
_FINAL_BLOCK = 256


def _triton():
    """The kernels' module, or None without triton."""
    return triton_kernels("_groupnorm_kernels")


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


def channels_last(x: torch.Tensor) -> bool:
    """Whether `x` is laid out channels-last (NHWC) rather than contiguous: the norm keeps either layout."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


class _Shape:
    """The launch geometry of one norm: rows (image, channel), tiles and the clip/group sizes the kernels
    index with. Contiguous (NCHW) activations take [ROWS, COLS] tiles of rows; channels-last ones
    [_PIXELS, _CHANNELS] tiles of one image, their row sums split over pixel ranges of _SPLIT."""

    def __init__(self, x: torch.Tensor, frames: int, groups: int):
        self.bf, self.c = x.shape[:2]
        self.hw = x[0, 0].numel()
        self.frames, self.groups = frames, groups
        self.clips = self.bf // frames
        self.rows = self.bf * self.c
        self.n = frames * (self.c // groups) * self.hw  # elements per (clip, group)
        self.nhwc = channels_last(x)
        self.cols = min(1024, 1 << max(self.hw - 1, 0).bit_length())
        self.tile_rows = _TILE // self.cols
        self.channels = min(_CHANNELS, 1 << max(self.c - 1, 0).bit_length())
        self.splits = -(-self.hw // _SPLIT) if self.nhwc else 1

    def args(self) -> tuple:
        return self.rows, self.hw, self.c, self.frames, self.groups, self.c // self.groups

    def row_sums(self, t, x, dy, stats, weight, bias, sums, backward: bool, silu: bool) -> None:
        if self.nhwc:
            grid = (self.bf, self.splits, -(-self.c // self.channels))
            t.row_sums_nhwc[grid](x, dy, stats, weight, bias, sums, *self.args(), PIXELS=_PIXELS,
                                  CHANNELS=self.channels, SPLIT=_SPLIT, BACKWARD=backward, SILU=silu)
        else:
            t.row_sums[(-(-self.rows // self.tile_rows),)](x, dy, stats, weight, bias, sums, *self.args(),
                                                          ROWS=self.tile_rows, COLS=self.cols, BACKWARD=backward,
                                                          SILU=silu)

    def finalise(self, t, sums, weight, out, eps: float, backward: bool) -> None:
        t.finalise[(self.clips * self.groups,)](sums, weight, out, *self.args()[1:], self.n, eps, self.splits,
                                                BACKWARD=backward, BLOCK=_FINAL_BLOCK)

    def apply(self, t, x, dy, stats, means, weight, bias, out, backward: bool, silu: bool) -> None:
        if self.nhwc:
            grid = (self.bf, -(-self.hw // _PIXELS), -(-self.c // self.channels))
            t.apply_nhwc[grid](x, dy, stats, means, weight, bias, out, *self.args(), PIXELS=_PIXELS,
                               CHANNELS=self.channels, BACKWARD=backward, SILU=silu)
        else:
            grid = (-(-self.rows // self.tile_rows), -(-self.hw // self.cols))
            t.apply[grid](x, dy, stats, means, weight, bias, out, *self.args(), ROWS=self.tile_rows,
                          COLS=self.cols, BACKWARD=backward, SILU=silu)

    def sums(self, x: torch.Tensor) -> torch.Tensor:
        return torch.empty(2, self.splits, self.rows, device=x.device, dtype=torch.float32)


class _TritonClipGroupNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, frames, groups, eps, silu):
        t = _triton()
        if not (x.is_contiguous() or channels_last(x)):
            x = x.contiguous()
        s = _Shape(x, frames, groups)
        if s.bf % frames or s.c % groups:
            raise ValueError(f"{s.bf} images of {s.c} channels are not whole {frames}-frame clips of {groups} groups")
        sums = s.sums(x)
        stats = torch.empty(2, s.clips * groups, device=x.device, dtype=torch.float32)  # mean, rstd
        s.row_sums(t, x, x, stats, weight, bias, sums, backward=False, silu=False)
        s.finalise(t, sums, weight, stats, eps, backward=False)
        y = torch.empty_like(x)  # in x's layout
        s.apply(t, x, x, stats, stats, weight, bias, y, backward=False, silu=silu)
        ctx.save_for_backward(x, weight, bias, stats)
        ctx.shape, ctx.silu = s, silu
        return y

    @staticmethod
    def backward(ctx, grad):
        t = _triton()
        x, weight, bias, stats = ctx.saved_tensors
        s, silu = ctx.shape, ctx.silu
        grad = grad.contiguous(memory_format=torch.channels_last if s.nhwc else torch.contiguous_format)
        sums = s.sums(x)  # sum dz, sum dz*x_hat per row
        s.row_sums(t, x, grad, stats, weight, bias, sums, backward=True, silu=silu)
        means = torch.empty(2, s.clips * s.groups, device=x.device, dtype=torch.float32)
        s.finalise(t, sums, weight, means, 0.0, backward=True)
        dx = torch.empty_like(x)
        s.apply(t, x, grad, stats, means, weight, bias, dx, backward=True, silu=silu)
        dweight = dbias = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:  # trained norms only (no adapter trains them)
            per_channel = sums.view(2, s.splits * s.bf, s.c).sum(1)  # sum dz, sum dz*x_hat per channel
            dweight, dbias = per_channel[1].to(weight.dtype), per_channel[0].to(bias.dtype)
        return dx, dweight, dbias, None, None, None, None
