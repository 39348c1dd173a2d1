"""Channels-last (NHWC) activations through the UNet on a GPU: one memory layout end to end.

cuDNN's bf16 convolutions on Hopper are NHWC kernels: given contiguous (NCHW) activations, each call
converts its input (and its output back), 301 conversion kernels and 7.95 ms of a 118 ms tuning step
(`benchmarks/profile_step.py --ops`, docs/performance.md). With the UNet's weights channels-last, cuDNN
returns channels-last outputs and every elementwise op keeps them; what remains is making the layers that
would turn them back into NCHW keep them:

* the clip GroupNorm keeps its input's layout (`tavcli.engine.triton_groupnorm`);
* the transformers' own GroupNorm (per frame) runs the same kernel with one-frame "clips": PyTorch's CUDA
  group_norm makes its input contiguous;
* a Transformer2DModel's output goes to its 1x1 `proj_out` as the channels-last view it already is, not
  made contiguous first (diffusers' `.contiguous()`, which makes cuDNN convert it back).

A training resnet's shortcut input, which diffusers makes contiguous (against DDP's stride warnings), is
one copy and one conversion each way; its channels-last weight still makes the output channels-last.

Numerics are unchanged: the same kernels' arithmetic on other strides. The CPU keeps NCHW (the reference).
"""

from __future__ import annotations

import torch
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from torch import nn

from tavcli.engine import triton_groupnorm


def use_channels_last(unet: nn.Module) -> bool:
    """Make an inflated UNet on a GPU run channels-last, in place; whether it did (not on the CPU, nor where
    the Triton norm is missing: the PyTorch-ops clip norm would copy every activation to NCHW and back)."""
    if not triton_groupnorm.available(unet.conv_in.weight):
        return False
    convert(unet)
    return True


def convert(unet: nn.Module) -> None:
    """The conversion itself, wherever the UNet is (tests check it on the CPU)."""
    unet.to(memory_format=torch.channels_last)
    for m in unet.modules():
        if type(m) is Transformer2DModel:
            m.__class__ = ChannelsLastTransformer2D
            if type(m.norm) is nn.GroupNorm:
                m.norm.__class__ = FrameGroupNorm



class FrameGroupNorm(nn.GroupNorm):
    """nn.GroupNorm (per image, as stock) through the Triton clip norm with one-frame clips, which keeps a
    channels-last input channels-last; PyTorch's own elsewhere. The same module and state dict."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if triton_groupnorm.available(x) and triton_groupnorm.channels_last(x):
            return triton_groupnorm.clip_group_norm(x, 1, self.num_groups, self.weight, self.bias, self.eps)
        return super().forward(x)


class ChannelsLastTransformer2D(Transformer2DModel):
    """diffusers' Transformer2DModel whose output reaches its 1x1 `proj_out` in the layout it is in."""

    def _get_output_for_continuous_inputs(self, hidden_states, residual, batch_size, height, width, inner_dim):
        if self.use_linear_projection or not triton_groupnorm.channels_last(residual):
            return super()._get_output_for_continuous_inputs(hidden_states, residual, batch_size, height, width,
                                                             inner_dim)
        # (B, H*W, C) as (B, C, H, W): a channels-last view, which the convolution reads as it is
        hidden_states = hidden_states.reshape(batch_size, height, width, inner_dim).permute(0, 3, 1, 2)
        return self.proj_out(hidden_states) + residual
