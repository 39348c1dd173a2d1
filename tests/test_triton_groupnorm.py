"""The Triton clip GroupNorm (+SiLU) against an fp64 reference, forward and gradients.

On a CUDA GPU the compiled kernels run; without one, where triton is importable, the same kernels run in
Triton's interpreter in a subprocess (numpy on the CPU); elsewhere (torch's CPU builds, CI) there is no
kernel to test, and `ClipGroupNorm` takes the PyTorch ops (tests/test_attention.py checks that fallback).
"""


import pytest
import torch
import torch.nn.functional as F

from tavcli.engine import triton_groupnorm
from tavcli.method.attention import ClipContext, ClipGroupNorm, clip_group_norm, use_fast_norm
from tests.conftest import (
    kernels_in_interpreter,
    kernels_on_cuda,
    needs_cuda,
    run_in_triton_interpreter,
)
from tests.test_attention import _five_d_group_norm

use_fast_norm(triton_groupnorm.available, triton_groupnorm.clip_group_norm)  # as tavcli.method.pipeline does

# (frames, images, channels, height, width, groups): SD's 64x64/320, 32x32/640 and 8x8/1280 layers, a
# single image, 24 frames, and sizes that are no power of two (masked tiles, rows across tile edges).
SHAPES = [(8, 8, 320, 64, 64, 32), (8, 16, 640, 32, 32, 32), (24, 24, 1280, 8, 8, 32), (1, 2, 64, 5, 7, 8),
          (3, 6, 96, 20, 13, 32)]


def _reference(x, frames, groups, weight, bias, eps, silu):
    y = _five_d_group_norm(x, frames, groups, weight, bias, eps)
    return F.silu(y) if silu else y


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach()).norm() / b.detach().norm())


def check(shape, dtype, silu, device, seed=0, channels_last=False):
    """The kernel's output and gradients (x, weight, bias) against fp64, next to the PyTorch-ops norm's;
    with `channels_last`, of channels-last x and output gradient, which the output and dx keep."""
    frames, bf, c, h, w, groups = shape
    layout = torch.channels_last if channels_last else torch.contiguous_format
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(bf, c, h, w, generator=g) * 2 + 3).to(device, dtype)  # means off zero: E[x^2]-E[x]^2
    weight = (torch.randn(c, generator=g) * 0.3 + 1).to(device, dtype)
    bias = (torch.randn(c, generator=g) * 0.3).to(device, dtype)
    grad = torch.randn(bf, c, h, w, generator=g).to(device, dtype)
    x, grad = x.contiguous(memory_format=layout), grad.contiguous(memory_format=layout)
    leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
    got = triton_groupnorm.clip_group_norm(*leaves[:1], frames, groups, *leaves[1:], 1e-5, silu=silu)
    got_grads = torch.autograd.grad(got, leaves, grad)
    ref_leaves = [t.double().requires_grad_() for t in (x, weight, bias)]
    ref = _reference(ref_leaves[0], frames, groups, *ref_leaves[1:], 1e-5, silu)
    ref_grads = torch.autograd.grad(ref, ref_leaves, grad.double())
    ops_leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
    ops = clip_group_norm(ops_leaves[0], frames, groups, *ops_leaves[1:], 1e-5)
    ops = F.silu(ops) if silu else ops
    ops_grads = torch.autograd.grad(ops, ops_leaves, grad)
    assert got.dtype == dtype and got.shape == x.shape and torch.isfinite(got).all()
    assert got.is_contiguous(memory_format=layout) and got_grads[0].is_contiguous(memory_format=layout)
    errors = {"y": (_rel(got, ref), _rel(ops, ref))}
    for name, a, b, r in zip(("dx", "dweight", "dbias"), got_grads, ops_grads, ref_grads):
        errors[name] = (_rel(a, r), _rel(b, r))
    floor = 2e-6 if dtype == torch.float32 else 0.0  # fp32: both at round-off, whichever is smaller
    for name, (err, ops_err) in errors.items():
        assert err <= max(1.1 * ops_err, floor), (name, errors)
    return errors


@kernels_on_cuda
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_triton_clip_group_norm_against_fp64_on_cuda(shape, silu, channels_last):
    dtype = torch.bfloat16 if shape[3] * shape[4] >= 64 else torch.float32
    assert triton_groupnorm.available(torch.empty(1, device="cuda"))
    check(shape, dtype, silu, "cuda", channels_last=channels_last)


@needs_cuda
def test_triton_clip_group_norm_replays_in_a_cuda_graph():
    """Captured once (forward and backward), replayed on new inputs: the eager results, exactly."""
    torch.manual_seed(1)
    source = torch.nn.GroupNorm(32, 320).cuda().bfloat16()
    norm = ClipGroupNorm(source, ClipContext(frames=8), silu=True)
    x = torch.randn(8, 320, 32, 32, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn_like(x)

    def step():
        return torch.autograd.grad(norm(x), x, grad)[0]

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # compiles the kernels outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    with torch.no_grad():
        x.copy_(torch.randn_like(x) * 3 + 1)
    graph.replay()
    assert torch.equal(out, step())


@kernels_in_interpreter
def test_triton_clip_group_norm_in_the_interpreter():
    """The kernels' arithmetic and indexing, run by Triton's interpreter on the CPU in fp32."""
    code = ("import torch; from tests.test_triton_groupnorm import check, SHAPES\n"
            "for shape in [SHAPES[3], SHAPES[4], (2, 4, 64, 8, 8, 32), (2, 4, 64, 24, 24, 32)]:\n"
            "    for silu in (False, True):\n"
            "        for channels_last in (False, True):\n"
            "            check(shape, torch.float32, silu, 'cpu', channels_last=channels_last)\n"
            "print('ok')\n")
    run_in_triton_interpreter(code)


@needs_cuda
def test_frame_group_norm_keeps_a_channels_last_input_so_and_is_the_stock_norm():
    """The transformers' per-image norm of a channels-last UNet (tavcli.engine.layout) runs the kernel."""
    import copy

    from tavcli.engine import layout

    torch.manual_seed(2)
    stock = torch.nn.GroupNorm(32, 320, eps=1e-6).cuda()
    with torch.no_grad():
        stock.weight.normal_(1, 0.2)
        stock.bias.normal_(0, 0.2)
    fast = copy.deepcopy(stock)
    fast.__class__ = layout.FrameGroupNorm
    x = (torch.randn(4, 320, 16, 16, device="cuda") * 2 + 1).contiguous(memory_format=torch.channels_last)
    y = fast(x)
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    torch.testing.assert_close(y, stock(x), rtol=1e-4, atol=1e-4)
