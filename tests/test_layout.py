"""Channels-last UNet (`tavcli.engine.layout`): the same outputs and gradients as NCHW, and every block's
output channels-last, checked on the CPU with a layout-keeping stand-in for the GPU's Triton clip norm."""

import copy

import pytest
import torch
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel

from tavcli.engine import layout
from tavcli.method import attention
from tavcli.method.attention import clip_group_norm, inflate, video_forward
from tests.conftest import make_tiny_unet


def _layout_keeping_norm(x, frames, groups, weight, bias, eps, silu=False):
    """The PyTorch-ops clip norm, its output in x's layout (as the Triton kernel's is)."""
    y = clip_group_norm(x, frames, groups, weight, bias, eps)
    y = torch.nn.functional.silu(y) if silu else y
    return y.contiguous(memory_format=torch.channels_last) if layout.triton_groupnorm.channels_last(x) else y


@pytest.fixture
def layout_keeping_norm(monkeypatch):
    monkeypatch.setattr(attention, "_FAST_NORM", (lambda x: True, _layout_keeping_norm))


def _grads(unet, x, text, target):
    unet.train()
    out = video_forward(unet, x, torch.tensor([7]), text)
    loss = ((out - target) ** 2).mean()
    trained = [p for p in unet.parameters() if p.requires_grad]
    return out, torch.autograd.grad(loss, trained)


def test_a_channels_last_unet_computes_the_same_with_every_block_channels_last(layout_keeping_norm):
    torch.manual_seed(0)
    nchw = inflate(make_tiny_unet(), seed=0)
    for name, p in nchw.named_parameters():
        p.requires_grad_("to_q" in name or "attn_temp" in name)
    nhwc = copy.deepcopy(nchw)
    layout.convert(nhwc)
    assert type(nhwc.down_blocks[0].attentions[0]) is layout.ChannelsLastTransformer2D
    assert type(nhwc.down_blocks[0].attentions[0].norm) is layout.FrameGroupNorm
    outputs = []
    for m in nhwc.modules():
        if isinstance(m, (ResnetBlock2D, Transformer2DModel)):
            m.register_forward_hook(lambda m, i, o: outputs.append((type(m).__name__, o[0] if isinstance(o, tuple)
                                                                     else getattr(o, "sample", o))))
    projected = []  # what each transformer's proj_out is given: the channels-last view, not an NCHW copy
    for m in nhwc.modules():
        if isinstance(m, Transformer2DModel):
            m.proj_out.register_forward_pre_hook(lambda m, args: projected.append(args[0]))
    x, text = torch.randn(1, 3, 4, 8, 8), torch.randn(1, 5, 32)
    target = torch.randn(1, 3, 4, 8, 8)
    want, want_grads = _grads(nchw, x, text, target)
    got, got_grads = _grads(nhwc, x, text, target)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert len(got_grads) == len(want_grads) > 0
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # a shortcut resnet trains (diffusers makes its input contiguous) and a transformer: both kept NHWC
    names = {name for name, _ in outputs}
    assert names == {"ResnetBlock2D", "ChannelsLastTransformer2D"}
    assert any(m.conv_shortcut is not None for m in nhwc.modules() if isinstance(m, ResnetBlock2D))
    assert projected and all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
                             for p in projected)
    for name, out in outputs:
        assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous(), name


def test_use_channels_last_leaves_a_cpu_unet_as_it_is():
    unet = inflate(make_tiny_unet(), seed=0)
    assert layout.use_channels_last(unet) is False
    assert unet.conv_in.weight.is_contiguous()
    assert not any(type(m) is layout.ChannelsLastTransformer2D for m in unet.modules())
