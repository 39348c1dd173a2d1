"""RecomputingGEGLU against diffusers' stock GEGLU: same outputs, same gradients, less kept for backward."""

import copy

import pytest
import torch
from diffusers.models.activations import GEGLU

from tavcli.engine.geglu import RecomputingGEGLU, recompute_geglus
from tavcli.method.attention import inflate
from tests.conftest import (
    kernels_in_interpreter,
    needs_cuda,
    on_cuda_per_shape_and_dtype,
    run_in_triton_interpreter,
)


def _saved_bytes(module, x) -> int:
    """Bytes autograd keeps for backward while running module(x) (distinct storages, weights excluded)."""
    weights = {p.untyped_storage().data_ptr() for p in module.parameters()}
    seen = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in weights:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    return sum(seen.values())


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_recomputing_geglu_matches_stock_outputs_and_gradients(dtype):
    torch.manual_seed(0)
    stock = GEGLU(16, 24).to(dtype)
    lean = copy.deepcopy(stock)
    assert recompute_geglus(lean) == 1 and type(lean) is RecomputingGEGLU
    x = torch.randn(3, 5, 16, dtype=dtype, requires_grad=True)
    y = torch.randn(3, 5, 24, dtype=dtype)
    out_stock, out_lean = stock(x), lean(x)
    assert torch.equal(out_stock, out_lean)
    g_stock = torch.autograd.grad((out_stock * y).sum(), [x, *stock.parameters()])
    g_lean = torch.autograd.grad((out_lean * y).sum(), [x, *lean.parameters()])
    for a, b in zip(g_stock, g_lean):
        torch.testing.assert_close(a, b, atol=0, rtol=0)  # the same operations, in the same order


def test_recomputing_geglu_keeps_a_third_less_with_trained_weights_and_only_its_input_with_frozen_ones():
    torch.manual_seed(0)
    stock = GEGLU(64, 256)
    lean = copy.deepcopy(stock)
    recompute_geglus(lean)
    x = torch.randn(2, 128, 64, requires_grad=True)
    proj = 2 * 128 * 512 * 4  # the projection, fp32
    assert _saved_bytes(lean, x) == proj + x.nbytes  # the projection, and its input for the weights' gradient
    for p in [*stock.parameters(), *lean.parameters()]:
        p.requires_grad_(False)  # frozen, as in tuning: only activations are kept
    assert _saved_bytes(stock, x) == proj + proj // 2  # stock keeps the projection and gelu(gate)
    assert _saved_bytes(lean, x) == x.nbytes  # an eighth of the projection: backward recomputes it


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_recomputing_geglu_with_frozen_weights_gives_the_same_input_gradient(dtype):
    torch.manual_seed(0)
    stock = GEGLU(16, 24).to(dtype).requires_grad_(False)
    lean = copy.deepcopy(stock)
    recompute_geglus(lean)
    x = torch.randn(3, 5, 16, dtype=dtype, requires_grad=True)
    y = torch.randn(3, 5, 24, dtype=dtype)
    out_stock, out_lean = stock(x), lean(x)
    assert torch.equal(out_stock, out_lean)
    (g_stock,) = torch.autograd.grad((out_stock * y).sum(), [x])
    (g_lean,) = torch.autograd.grad((out_lean * y).sum(), [x])
    torch.testing.assert_close(g_lean, g_stock, atol=0, rtol=0)  # the same operations, in the same order


def test_recomputing_geglu_recomputes_under_the_forwards_autocast():
    torch.manual_seed(0)
    stock = GEGLU(16, 24).requires_grad_(False)  # fp32 weights, bf16 compute: the fp16/bf16 autocast path
    lean = copy.deepcopy(stock)
    recompute_geglus(lean)
    x = torch.randn(3, 5, 16, requires_grad=True)
    grads = []
    for module in (stock, lean):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = module(x)
        assert out.dtype == torch.bfloat16
        grads.append(torch.autograd.grad(out.float().square().sum(), [x])[0])  # backward outside the autocast
    assert grads[1].dtype == torch.float32
    torch.testing.assert_close(grads[1], grads[0], atol=0, rtol=0)


def test_tuning_swaps_every_geglu_and_keeps_the_state_dict(tiny_base):
    """TuneAVideo swaps them; `inflate` alone leaves them stock (it is the code an exported folder runs)."""
    from tavcli.method.pipeline import TuneAVideo

    keys = set(tiny_base.unet.state_dict())
    tav = TuneAVideo.create(tiny_base)
    kinds = {type(m) for m in tav.unet.modules() if isinstance(m, GEGLU)}
    assert kinds == {RecomputingGEGLU}
    assert keys <= set(tav.unet.state_dict())


def test_inflate_alone_keeps_stock_geglus(tiny_unet):
    unet = inflate(tiny_unet())
    assert {type(m) for m in unet.modules() if isinstance(m, GEGLU)} == {GEGLU}


# --- the Triton kernels (a GPU runs them; Triton's interpreter where triton is and no GPU; CI has neither) ---
# (tokens, d): SD's 64x64 feed-forward at 2 frames, its 8x8 one, and sizes with masked tiles
KERNEL_SHAPES = [(2 * 4096, 1280), (64, 5120), (13, 24), (300, 260)]


def check_kernels(shape, dtype, device):
    """The kernels' output and [dh, dgate] against fp64, no worse than the PyTorch ops in `dtype`."""
    from tavcli.engine import geglu

    tokens, d = shape
    g = torch.Generator().manual_seed(0)
    proj = (torch.randn(tokens, 2 * d, generator=g) * 2).to(device, dtype)
    grad = torch.randn(tokens, d, generator=g).to(device, dtype)
    out, dproj = proj.new_empty(tokens, d), torch.empty_like(proj)
    geglu._launch(geglu._triton().forward, proj, out)
    geglu._launch(geglu._triton().backward, proj, grad, dproj)
    p64 = proj.double().requires_grad_()
    h, gate = p64.chunk(2, dim=-1)
    ref = h * torch.nn.functional.gelu(gate)
    (dref,) = torch.autograd.grad(ref, p64, grad.double())
    ops = proj.chunk(2, dim=-1)[0] * torch.nn.functional.gelu(proj.chunk(2, dim=-1)[1])
    rel = lambda a, b: float((a.double() - b).norm() / b.norm())  # noqa: E731
    floor = 1e-6 if dtype == torch.float32 else 0.0
    assert rel(out, ref) <= max(1.01 * rel(ops, ref), floor), (rel(out, ref), rel(ops, ref))
    assert rel(dproj, dref) <= max(8e-3 if dtype == torch.bfloat16 else 0.0, floor), rel(dproj, dref)


@on_cuda_per_shape_and_dtype(KERNEL_SHAPES)
def test_geglu_kernels_against_fp64_on_cuda(shape, dtype):
    check_kernels(shape, dtype, "cuda")


@needs_cuda
def test_a_recomputing_geglu_on_cuda_runs_the_kernels_and_matches_stock():
    from tavcli.engine import geglu

    torch.manual_seed(0)
    stock = GEGLU(320, 1280).cuda()
    lean = copy.deepcopy(stock)
    recompute_geglus(lean)
    x = torch.randn(2, 64, 320, device="cuda", requires_grad=True)
    assert geglu._fused(lean.proj(x))
    grads = [torch.autograd.grad((m(x) ** 2).sum(), [x, m.proj.weight]) for m in (stock, lean)]
    torch.testing.assert_close(lean(x), stock(x), rtol=1e-5, atol=1e-5)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@kernels_in_interpreter
def test_geglu_kernels_in_the_interpreter():
    run_in_triton_interpreter("import torch; from tests.test_geglu import check_kernels\n"
                              "for shape in [(13, 24), (300, 260), (16, 512)]:\n"
                              "    check_kernels(shape, torch.float32, 'cpu')\n"
                              "print('ok')\n")


@needs_cuda
def test_a_frozen_recomputing_geglu_on_cuda_keeps_only_its_input_and_matches_stock_in_bf16():
    torch.manual_seed(0)
    stock = GEGLU(320, 1280).cuda().to(torch.bfloat16).requires_grad_(False)
    lean = copy.deepcopy(stock)
    recompute_geglus(lean)
    x = torch.randn(2, 4096, 320, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    assert _saved_bytes(lean, x) == x.nbytes
    out_stock, out_lean = stock(x), lean(x)
    torch.testing.assert_close(out_lean, out_stock, rtol=1.6e-2, atol=1e-2)  # the kernel rounds once, in fp32
    (g_stock,) = torch.autograd.grad(out_stock.float().square().sum(), [x])
    (g_lean,) = torch.autograd.grad(out_lean.float().square().sum(), [x])
    assert ((g_lean - g_stock).norm() / g_stock.norm()).item() < 1e-2  # bf16 roundings apart, no more
