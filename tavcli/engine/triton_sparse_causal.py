"""Sparse-causal attention's forward (frame i attends frames 1 and i-1) as one Triton kernel, for sampling:
the inversion's attn1 and that of guided calls below the 64x64 level.

Through SDPA, each frame's keys and values are first gathered into a new [k1, k(i-1)] tensor (a copy of
twice k and v), the output comes back heads-first and is copied into the (B*F, N, C) layout `to_out` reads,
and the kernel is FlashAttention-2 (no Hopper matmuls; half cuDNN's speed at head dim 40) or cuDNN, which
builds an execution plan at each new shape in every process (~1.7 s for the 64x64 level's inversion
shapes; docs/performance.md, round 4). This kernel reads frame 1's and frame i-1's keys where the
projections wrote them, writes the output where `to_out` reads it, attends frames 1 and 2's repeated keys
once, and compiles once per machine (Triton's disk cache); FlashAttention's online softmax in fp32.

Forward only: tuning keeps SDPA (cuDNN), whose backward this kernel has none of. The runtime chooses where
it runs (`engine.runtime._FUSED_FRAMES_BELOW`): the inversion at every level, guided calls below 64x64,
where cuDNN's Hopper kernel is faster on their two clips.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tavcli.engine import triton_kernels


def _triton():
    """The kernel's module, or None without triton."""
    return triton_kernels("_sparse_causal_kernels")


@dataclass(frozen=True)
class Plan:
    """A launch: `block_m` queries and `block_n` keys per tile, `warps` and pipeline `stages` per program."""

    block_m: int = 128
    block_n: int = 64
    warps: int = 4
    stages: int = 3


# Per padded head dim (d = 40, 80, 160 in SD v1.x: 64, 128, 256), the fastest of benchmarks/
# sparse_causal_sweep.py's candidates on the H200 at the level it serves (docs/performance.md, round 8;
# below 64x64 the candidates' eager timings are within the calls' spread of each other).
PLANS = {64: Plan(128, 64, 4, 3), 128: Plan(64, 64, 4, 3), 256: Plan(64, 32, 4, 2)}
_WIDEST = 256


def plan_for(d: int) -> Plan:
    """The launch for head dim `d`: the plan of the narrowest planned width that holds it (tiny test UNets'
    head dims of 8-32 take the 64 plan)."""
    return PLANS[min(w for w in PLANS if w >= _padded(d))]


def _padded(d: int) -> int:
    return max(16, 1 << (d - 1).bit_length())


def available(q: torch.Tensor, heads: int) -> bool:
    """Whether `sparse_causal_attention` can run on (B*F, N, C) `q`: a CUDA tensor of 16-bit floats, no
    gradient asked for (forward only), triton importable, not inside torch.compile, a head dim planned."""
    if not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16) or torch.compiler.is_compiling():
        return False
    if torch.is_grad_enabled() and q.requires_grad:
        return False
    return _padded(q.shape[-1] // heads) <= _WIDEST and _triton() is not None


def sparse_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, frames: int, heads: int,
                            scale: float, plan: Plan | None = None) -> torch.Tensor:
    """Sparse-causal attention of (B*F, N, C) q, k, v (heads of C/heads channels): frame i's queries attend
    the keys of frames 1 and i-1 of its clip; out (B*F, N, C). The same function as SDPA over the gathered
    [k1, k(i-1)] keys (`tavcli.method.attention.FrameAttnProcessor`) with this `scale`; no autograd.
    `plan` sets the launch (benchmarks, tests); None: `PLANS` by head dim."""
    bf, n, c = q.shape
    if bf % frames or c % heads:
        raise ValueError(f"{bf} images of {c} channels are not whole {frames}-frame clips of {heads} heads")
    d = c // heads
    plan = plan or plan_for(d)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    out = torch.empty_like(q)
    grid = (-(-n // plan.block_m), heads, bf)
    _triton().forward[grid](q, k, v, out, n, c, frames, scale, D=d, BM=plan.block_m, BN=plan.block_n,
                            DP=_padded(d), EVEN=n % plan.block_n == 0, num_warps=plan.warps,
                            num_stages=plan.stages)
    return out
