"""The feed-forward's GEGLU, keeping a third less for backward: gelu(gate) is recomputed, not stored.

Stock GEGLU keeps both its projection and gelu(gate) for backward: at 8 frames of 512x512 that is 2.07
of the 7.57 GiB a tuning step keeps (benchmarks/saved_tensors.py on an H200, docs/performance.md). The
gelu is one cheap elementwise pass, so backward recomputes it from the projection it keeps anyway.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.activations import GEGLU
from torch import nn


class _GatedGelu(torch.autograd.Function):
    """h * gelu(gate) for proj = [h, gate] along the last dim, saving only proj."""

    @staticmethod
    def forward(ctx, proj: torch.Tensor) -> torch.Tensor:
        h, gate = proj.chunk(2, dim=-1)
        ctx.save_for_backward(proj)
        return h * F.gelu(gate)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (proj,) = ctx.saved_tensors
        h, gate = proj.chunk(2, dim=-1)
        # one cat, as autograd's own backward of chunk does
        return torch.cat([grad * F.gelu(gate), torch.ops.aten.gelu_backward(grad * h, gate)], dim=-1)


class RecomputingGEGLU(GEGLU):
    """diffusers' GEGLU (same weights, same output) whose backward recomputes gelu(gate)."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return _GatedGelu.apply(self.proj(hidden_states))


def recompute_geglus(model: nn.Module) -> int:
    """Make every stock GEGLU of `model` a RecomputingGEGLU in place (its state dict is unchanged)."""
    swapped = 0
    for m in model.modules():
        if type(m) is GEGLU:
            m.__class__ = RecomputingGEGLU
            swapped += 1
    return swapped
