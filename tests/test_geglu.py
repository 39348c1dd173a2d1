"""RecomputingGEGLU against diffusers' stock GEGLU: same outputs, same gradients, less kept for backward."""

import copy

import pytest
import torch
from diffusers.models.activations import GEGLU

from tavcli.engine.geglu import RecomputingGEGLU, recompute_geglus
from tavcli.method.attention import inflate


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


def test_recomputing_geglu_keeps_a_third_less():
    torch.manual_seed(0)
    stock = GEGLU(64, 256)
    lean = copy.deepcopy(stock)
    recompute_geglus(lean)
    for p in [*stock.parameters(), *lean.parameters()]:
        p.requires_grad_(False)  # frozen, as in tuning: only activations are kept
    x = torch.randn(2, 128, 64, requires_grad=True)
    kept_stock = _saved_bytes(stock, x)
    kept_lean = _saved_bytes(lean, x)
    proj = 2 * 128 * 512 * 4  # the projection, fp32: what both must keep
    assert kept_lean == proj
    assert kept_stock == proj + proj // 2  # stock also keeps gelu(gate)


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
