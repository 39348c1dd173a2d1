"""The Triton temporal attention against an fp64 reference (SDPA on the frames-last views), forward and
gradients, and its place in the UNet's temporal hook.

On a CUDA GPU the compiled kernels run; without one, where triton is importable, the same kernels run in
Triton's interpreter in a subprocess (numpy on the CPU); elsewhere (torch's CPU builds, CI) there is no
kernel, and the hook tests below check with a stand-in that the hook hands the kernel what it should.
"""


import pytest
import torch
import torch.nn.functional as F

from tavcli.engine import triton_temporal
from tavcli.engine.runtime import KernelChoice
from tavcli.method import attention
from tavcli.method.attention import kernels_chosen
from tests.conftest import (
    HAS_TRITON,
    kernels_in_interpreter,
    needs_cuda,
    on_cuda_per_shape_and_dtype,
    run_in_triton_interpreter,
)


# (clips, frames, tokens, heads, head dim): SD's 64x64 (head dim 40) and 16x16 (160) levels at 8 frames, 24
# frames, two clips, and sizes that are no power of two (masked positions and head-dim lanes).
SHAPES = [(1, 8, 4096, 8, 40), (2, 8, 256, 8, 160), (1, 24, 64, 8, 80), (2, 3, 5, 3, 24), (1, 1, 7, 2, 16)]
SMALL = SHAPES[3:] + [(1, 8, 16, 2, 40), (1, 20, 3, 2, 8)]  # 20 frames: padded to 32


def _reference(q, k, v, frames, heads, scale):
    bf, n, c = q.shape

    def frames_last(t):
        return t.view(bf // frames, frames, n * heads, c // heads).transpose(1, 2)

    out = F.scaled_dot_product_attention(frames_last(q), frames_last(k), frames_last(v), scale=scale)
    return out.transpose(1, 2).reshape(bf, n, c)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error; the small constant keeps a gradient that is zero in exact arithmetic (one frame:
    the softmax is constant, so dq = dk = 0) from dividing by zero, and is far under any other's norm."""
    b = b.detach()
    return float((a.detach().double() - b).norm() / (b.norm() + 1e-3 * b.numel() ** 0.5))


# Small tiles: several programs per clip, one position per program at head dim 160 and 32 frames.
SMALL_TILES = triton_temporal.Plan(tile=2048, warps=4)


def check(shape, dtype, device, seed=0, plan=None) -> dict:
    """Output and the three gradients against fp64; bf16 within what SDPA's own kernels give in bf16."""
    clips, frames, n, heads, d = shape
    g = torch.Generator().manual_seed(seed)
    qkv = [torch.randn(clips * frames, n, heads * d, generator=g).to(device, dtype) for _ in range(3)]
    grad = torch.randn(clips * frames, n, heads * d, generator=g).to(device, dtype)
    scale = d ** -0.5
    leaves = [t.clone().requires_grad_() for t in qkv]
    got = triton_temporal.temporal_attention(*leaves, frames, heads, scale, plan)
    got_grads = torch.autograd.grad(got, leaves, grad)
    ref_leaves = [t.double().requires_grad_() for t in qkv]
    ref = _reference(*ref_leaves, frames, heads, scale)
    ref_grads = torch.autograd.grad(ref, ref_leaves, grad.double())
    sdpa_leaves = [t.clone().requires_grad_() for t in qkv]
    sdpa = _reference(*sdpa_leaves, frames, heads, scale)  # PyTorch's own kernel in the same dtype
    sdpa_grads = torch.autograd.grad(sdpa, sdpa_leaves, grad)
    assert got.dtype == dtype and got.shape == qkv[0].shape and got.is_contiguous()
    errors = {"out": (_rel(got, ref), _rel(sdpa, ref))}
    for name, a, b, r in zip(("dq", "dk", "dv"), got_grads, sdpa_grads, ref_grads):
        errors[name] = (_rel(a, r), _rel(b, r))
    floor = 3e-6 if dtype == torch.float32 else 0.0
    for name, (err, sdpa_err) in errors.items():
        assert err <= max(1.1 * sdpa_err, floor), (name, errors)
    return errors


@on_cuda_per_shape_and_dtype(SHAPES)
def test_triton_temporal_attention_matches_fp64(shape, dtype):
    check(shape, dtype, "cuda")


@on_cuda_per_shape_and_dtype(SHAPES)
def test_triton_temporal_attention_with_small_tiles_matches_fp64(shape, dtype):
    check(shape, dtype, "cuda", plan=SMALL_TILES)


@needs_cuda
def test_triton_temporal_attention_replays_in_a_cuda_graph():
    q, k, v = (torch.randn(8, 64, 320, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    triton_temporal.temporal_attention(q, k, v, 8, 8, 40 ** -0.5)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = triton_temporal.temporal_attention(q, k, v, 8, 8, 40 ** -0.5)
    q.copy_(torch.randn_like(q))
    graph.replay()
    assert torch.equal(out, triton_temporal.temporal_attention(q, k, v, 8, 8, 40 ** -0.5))


@kernels_in_interpreter
def test_triton_temporal_attention_in_the_interpreter():
    """The kernels' arithmetic and indexing, run by Triton's interpreter on the CPU in fp32."""
    code = ("import torch; from tests.test_triton_temporal import check, SMALL\n"
            "from tests.test_triton_temporal import SMALL_TILES\n"
            "for shape in SMALL:\n"
            "    check(shape, torch.float32, 'cpu')\n"
            "    check(shape, torch.float32, 'cpu', plan=SMALL_TILES)\n"
            "print('ok')\n")
    run_in_triton_interpreter(code)


def test_temporal_attention_refuses_a_batch_of_partial_clips():
    q = torch.zeros(6, 4, 16)
    with pytest.raises(ValueError, match="whole 4-frame clips"):
        triton_temporal.temporal_attention(q, q, q, 4, 2, 0.25)


# --- the hook: what reaches the registered kernel, and when -----------------------------------------


def _block_and_input(frames: int = 4):
    from diffusers.models.attention import BasicTransformerBlock

    torch.manual_seed(0)
    block = BasicTransformerBlock(32, 2, 16, cross_attention_dim=24)
    block.norm_temp, block.attn_temp = attention._temporal_modules(32, 2, False)
    ctx = attention.ClipContext(frames=frames)
    for p in [*block.norm_temp.parameters(), *block.attn_temp.parameters()]:  # made empty: fill them all
        torch.nn.init.normal_(p, std=0.2)  # to_out non-zero, so the attention shows in the output
    return block, ctx, torch.randn(2 * frames, 9, 32)


def test_the_temporal_hook_hands_the_registered_kernel_the_projections_and_uses_its_output(monkeypatch):
    block, ctx, x = _block_and_input()
    calls = []

    def stand_in(q, k, v, frames, heads, scale):  # the kernel's contract, computed the reference way
        calls.append((q.shape, frames, heads, scale))
        return _reference(q, k, v, frames, heads, scale)

    sdpa_path = attention._temporal_hook(ctx, block, (), x)
    monkeypatch.setattr(attention, "_FAST_TEMPORAL", (lambda q, frames, heads: True, stand_in))
    assert torch.equal(attention._temporal_hook(ctx, block, (), x), sdpa_path) and not calls  # not allowed
    ctx.fused_temporal = True
    fused = attention._temporal_hook(ctx, block, (), x)
    assert calls == [((8, 9, 32), 4, 2, block.attn_temp.scale)]
    torch.testing.assert_close(fused, sdpa_path, rtol=1e-6, atol=1e-6)
    assert (fused - x).abs().max() > 1e-3  # the attention contributes: the comparison means something


def test_the_fused_temporal_kernel_is_not_taken_where_it_is_not_available(monkeypatch):
    block, ctx, x = _block_and_input()
    sdpa_path = attention._temporal_hook(ctx, block, (), x)
    monkeypatch.setattr(attention, "_FAST_TEMPORAL", (lambda q, frames, heads: False, lambda *a: 1 / 0))
    ctx.fused_temporal = True
    assert torch.equal(attention._temporal_hook(ctx, block, (), x), sdpa_path)
    assert not triton_temporal.available(x, 4, 2)  # a CPU tensor: never the Triton kernel


def test_the_plans_cover_up_to_16_frames_and_32_at_head_dims_up_to_128():
    assert triton_temporal.plan_for(1, 40) == triton_temporal.plan_for(16, 160) == triton_temporal.Plan(8192, 8)
    assert triton_temporal.plan_for(24, 80) == triton_temporal.plan_for(32, 128) == triton_temporal.Plan(4096, 4)
    assert triton_temporal.plan_for(24, 160) is None and triton_temporal.plan_for(33, 40) is None
    assert triton_temporal.plan_for(17, 256) is None


@needs_cuda
def test_the_fused_kernel_is_chosen_where_a_plan_was_measured_faster():
    image = torch.empty(8, 64, 1280, device="cuda", dtype=torch.bfloat16)
    assert HAS_TRITON == triton_temporal.available(image, 8, 8)  # SD's 8x8 level, head dim 160
    assert not triton_temporal.available(torch.empty(24, 64, 1280, device="cuda"), 24, 8)
    assert HAS_TRITON == triton_temporal.available(torch.empty(24, 64, 640, device="cuda"), 24, 8)


def test_kernels_chosen_sets_the_choice_for_one_unet_and_restores_it():
    from tests.conftest import make_tiny_unet

    unet = attention.inflate(make_tiny_unet())
    chooser = lambda kind, queries, keys: torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH])
    ctx = attention.clip_context(unet)
    with kernels_chosen(unet, KernelChoice(chooser, True, (), 4096)):
        assert ctx.kernels is chooser and ctx.fused_temporal and ctx.shared_first_keys == 4096
        with kernels_chosen(unet, KernelChoice(None, False, ())):
            assert ctx.kernels is None and not ctx.fused_temporal and ctx.shared_first_keys is None
        assert ctx.kernels is chooser and ctx.shared_first_keys == 4096
    assert ctx.kernels is None and not ctx.fused_temporal and ctx.shared_first_keys is None


def test_every_attention_call_asks_the_chooser_for_its_kind_and_sizes_and_computes_the_same():
    import contextlib

    from tests.conftest import make_tiny_unet

    unet = attention.inflate(make_tiny_unet())
    latents, text = torch.randn(1, 4, 4, 8, 8), torch.randn(1, 5, unet.config.cross_attention_dim)
    with torch.no_grad():
        plain = attention.video_forward(unet, latents, 10, text)
        asked = []
        chooser = lambda *call: asked.append(call) or contextlib.nullcontext()  # noqa: E731
        with kernels_chosen(unet, KernelChoice(chooser, False, ())):
            chosen = attention.video_forward(unet, latents, 10, text)
    assert torch.equal(chosen, plain)
    kinds = {call[0] for call in asked}
    assert kinds == {"frames", "cross", "temporal"}
    blocks = attention._transformer_blocks(unet)
    assert all(sum(kind == call[0] for call in asked) == len(blocks) for kind in kinds)
    heads = [b.attn1.heads for b in blocks]
    frames = [call for call in asked if call[0] == "frames"]
    assert all(keys == 2 * queries for _, queries, keys, _ in frames)  # sparse-causal: 2 frames' keys
    assert [sequences for *_, sequences in frames] == [4 * h for h in heads]  # 4 images x heads
    assert all(keys == 5 for kind, _, keys, _ in asked if kind == "cross")
    temporal = [call for call in asked if call[0] == "temporal"]
    assert all(queries == keys == 4 for _, queries, keys, _ in temporal)
    assert [s for *_, s in temporal] == [q * h for (_, q, _, _), h in zip(frames, heads)]  # tokens x heads
