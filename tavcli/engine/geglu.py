"""The feed-forward's GEGLU, keeping a third less for backward: gelu(gate) is recomputed, not stored.

Stock GEGLU keeps both its projection and gelu(gate) for backward: at 8 frames of 512x512 that is 2.07
of the 7.57 GiB a tuning step keeps (benchmarks/saved_tensors.py on an H200, docs/performance.md). The
gelu is one cheap elementwise pass, so backward recomputes it from the projection it keeps anyway.

On a GPU both directions are one Triton kernel each (`_geglu_kernels`): the PyTorch ops are two passes
forward (gelu, multiply) and five backward (gelu, two multiplies, gelu_backward, cat), each a full read
and write of a (B*F, tokens, 4*C) tensor; the kernels read the projection (and the gradient) once and
write once, in fp32 arithmetic rounded once. The CPU (the reference) and `torch.compile` keep the ops.

Where the projection's weights are frozen (tuning: only the attention's queries and the temporal attention
train), even the projection is not kept: the block's input, an eighth of its size, is, and backward
recomputes the projection from it, one GEMM that costs less than the memory it frees (docs/performance.md,
round 6: at 24 frames the feed-forwards' share of what a step keeps was what put it over 20 GiB).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.activations import GEGLU
from torch import nn

from tavcli.engine import triton_kernels

_ROWS, _COLS = 8, 256  # a tile of 2048 outputs: 256 contiguous columns of 8 rows


def _triton():
    """The kernels' module, or None without triton."""
    return triton_kernels("_geglu_kernels")


def _fused(proj: torch.Tensor) -> bool:
    return proj.is_cuda and proj.is_contiguous() and not torch.compiler.is_compiling() and _triton() is not None


def _launch(kernel, proj: torch.Tensor, *tensors: torch.Tensor) -> None:
    d = proj.shape[-1] // 2
    rows = proj.numel() // (2 * d)
    kernel[(-(-rows // _ROWS), -(-d // _COLS))](proj, *tensors, rows, d, ROWS=_ROWS, COLS=_COLS)


class _GatedGelu(torch.autograd.Function):
    """h * gelu(gate) for proj = [h, gate] along the last dim, saving only proj."""

    @staticmethod
    def forward(ctx, proj: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(proj)
        return _gated_gelu(proj)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (proj,) = ctx.saved_tensors
        return _gated_gelu_grad(proj, grad)


def _gated_gelu(proj: torch.Tensor) -> torch.Tensor:
    if _fused(proj):
        out = proj.new_empty(*proj.shape[:-1], proj.shape[-1] // 2)
        _launch(_triton().forward, proj, out)
        return out
    h, gate = proj.chunk(2, dim=-1)
    return h * F.gelu(gate)


def _gated_gelu_grad(proj: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """The gradient with respect to proj = [h, gate] of h * gelu(gate), given the output's."""
    if _fused(proj):
        dproj = torch.empty_like(proj)
        _launch(_triton().backward, proj, grad.contiguous(), dproj)
        return dproj
    h, gate = proj.chunk(2, dim=-1)
    # one cat, as autograd's own backward of chunk does
    return torch.cat([grad * F.gelu(gate), torch.ops.aten.gelu_backward(grad * h, gate)], dim=-1)


class _ProjectedGatedGelu(torch.autograd.Function):
    """h * gelu(gate) for [h, gate] = linear(x, weight, bias) with both frozen, saving only x: backward
    recomputes the projection (under the autocast the forward ran in) and returns x's gradient alone."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        kind = x.device.type
        ctx.autocast = (kind, torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind))
        ctx.save_for_backward(x, weight, bias)
        return _gated_gelu(F.linear(x, weight, bias))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        x, weight, bias = ctx.saved_tensors
        kind, enabled, dtype = ctx.autocast
        with torch.autocast(kind, dtype=dtype, enabled=enabled):
            proj = F.linear(x, weight, bias)
        dproj = _gated_gelu_grad(proj, grad)
        return dproj.matmul(weight.to(dproj.dtype)).to(x.dtype), None, None


class RecomputingGEGLU(GEGLU):
    """diffusers' GEGLU (same weights, same output) whose backward recomputes gelu(gate), and the projection
    too where its weights are frozen."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        proj = self.proj
        frozen = type(proj) is nn.Linear and not proj.weight.requires_grad and (
            proj.bias is None or not proj.bias.requires_grad)
        if frozen and hidden_states.requires_grad and torch.is_grad_enabled() and not torch.compiler.is_compiling():
            return _ProjectedGatedGelu.apply(hidden_states, proj.weight, proj.bias)
        return _GatedGelu.apply(proj(hidden_states))


def recompute_geglus(model: nn.Module) -> int:
    """Make every stock GEGLU of `model` a RecomputingGEGLU in place (its state dict is unchanged)."""
    swapped = 0
    for m in model.modules():
        if type(m) is GEGLU:
            m.__class__ = RecomputingGEGLU
            swapped += 1
    return swapped
