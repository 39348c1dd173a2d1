"""The temporal attention (softmax attention over a clip's F frames at every position and head) as Triton
kernels that read q, k and v where the projections wrote them and write the output where `to_out` reads it.

Through SDPA the temporal attention is a batch of B*N*heads sequences of F = 8 tokens: every fused kernel
tiles the sequence by 64 or 128, so most of its work is padding, and the frames-last views cost copies in
and out. Its 16 calls took 11.8 ms of a tuning step on an H200 with cuDNN, and cuDNN builds a plan for each
shape (benchmarks/attention_kinds.py, docs/performance.md). The work itself is small: per position F*F
dot products of d = 40..160 numbers. Here a program loads a run of positions of one clip, all frames,
once, and computes their attention as batched matmuls on the tensor cores (frames padded to 16); backward
recomputes the probabilities from the forward's log-sum-exp, in the same single pass.

Measured on an H200 (`benchmarks/kernel_sweep.py`, 2026-12-04, benchmarks/results/2026-12-04-h200-round7),
the 16 calls of one UNet call at 8 frames (call 3 against call 1's "current", what tav ran before: SDPA at
the 64x64 level, a kernel re-reading each key tile per query frame elsewhere): 4.30 ms of a tuning step
(fwd+bwd) against 11.79, 0.95 ms of an inversion call against 2.31, 1.30 of a guided call against 4.56.
At 24 frames (frames padded to 32) the 64x64 level's fwd+bwd took 0.62 ms against SDPA's best 1.19, the
32x32 level's 0.35 against 0.61, but the 16x16 level's (head dim 160: [positions, 32, 256] blocks outgrow
the registers) 2.63 against 0.36.
Two earlier kernels, one re-reading each key tile per query frame, one holding all frames' keys in
registers and computing with elementwise sums, were slower at every size and are gone. So `available`
takes the kernel up to 16 frames, and up to 32 where the head dim is at most 128. (Measured at 8 and 24
frames; 9 to 16 frames run the 8-frame launch, whose blocks are already padded to 16 frames.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tavcli.engine import triton_kernels


def _triton():
    """The kernels' module, or None without triton."""
    return triton_kernels("_temporal_kernels")


@dataclass(frozen=True)
class Plan:
    """A launch: `tile` elements of a program's [positions, frames, head dim] block (its positions:
    tile / (padded frames x padded head dim), at least one), and `warps` per program, forward and backward."""

    tile: int = 8192
    warps: int = 8


# The sweep's best per padded frame count (module docstring), and the largest head dim each was fast for.
_PLANS = {16: (Plan(8192, 8), 256), 32: (Plan(4096, 4), 128)}


def _padded_frames(frames: int) -> int:
    return max(16, 1 << (frames - 1).bit_length())


def plan_for(frames: int, head_dim: int) -> Plan | None:
    """The measured plan for clips of `frames` frames and heads of `head_dim` channels; None where SDPA
    was faster (or nothing was measured)."""
    plan, widest = _PLANS.get(_padded_frames(frames), (None, 0))
    return plan if head_dim <= widest else None


def available(q: torch.Tensor, frames: int, heads: int) -> bool:
    """Whether `temporal_attention` should run on (B*F, N, C) `q`: a CUDA tensor, triton importable, not
    inside torch.compile (which traces the SDPA path instead), and a plan measured faster (`plan_for`)."""
    if not q.is_cuda or torch.compiler.is_compiling() or _triton() is None:
        return False
    return plan_for(frames, q.shape[-1] // heads) is not None


def temporal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, frames: int, heads: int,
                       scale: float, plan: Plan | None = None) -> torch.Tensor:
    """Attention over the frame axis of (B*F, N, C) q, k, v (heads of C/heads channels); out (B*F, N, C).

    The same function as SDPA on the frames-last views (B, N*heads, F, C/heads) with this `scale`.
    `plan` sets the launch (benchmarks, tests); None: `plan_for` the call, or the 16-frame plan.
    """
    bf, n, c = q.shape
    if bf % frames or c % heads:
        raise ValueError(f"{bf} images of {c} channels are not whole {frames}-frame clips of {heads} heads")
    plan = plan or plan_for(frames, c // heads) or _PLANS[16][0]
    return _TemporalAttention.apply(q, k, v, frames, heads, scale, plan)


class _Geometry:
    """The launch geometry of one call: positions per program and the padded frame and head-dim sizes."""

    def __init__(self, q: torch.Tensor, frames: int, heads: int, plan: Plan):
        bf, n, c = q.shape
        self.frames, self.d = frames, c // heads
        self.positions, self.image = n * heads, n * c
        self.dp = max(16, 1 << (self.d - 1).bit_length())
        self.fp = _padded_frames(frames)
        self.bp = max(1, plan.tile // (self.fp * self.dp))
        self.warps = plan.warps
        self.grid = (-(-self.positions // self.bp), bf // frames)

    def args(self) -> tuple:
        return self.image, self.positions, self.d

    def meta(self) -> dict:
        return {"F": self.frames, "FP": self.fp, "BP": self.bp, "DP": self.dp, "num_warps": self.warps}


class _TemporalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, frames, heads, scale, plan):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        g = _Geometry(q, frames, heads, plan)
        out = torch.empty_like(q)
        lse = torch.empty(q.shape[0], g.positions, device=q.device, dtype=torch.float32)
        _triton().forward[g.grid](q, k, v, out, lse, *g.args(), scale, **g.meta())
        ctx.save_for_backward(q, k, v, lse)
        ctx.geometry, ctx.scale = g, scale
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, lse = ctx.saved_tensors
        g = ctx.geometry
        grad = grad.contiguous()
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        _triton().backward[g.grid](q, k, v, grad, lse, dq, dk, dv, *g.args(), ctx.scale, **g.meta())
        return dq, dk, dv, None, None, None, None
