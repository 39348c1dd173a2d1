"""The Triton sparse-causal attention (forward, for sampling) against an fp64 reference (SDPA over the
gathered [k1, k(i-1)] keys), and its place in attn1's processor.

On a CUDA GPU the compiled kernel runs; without one, where triton is importable, the same kernel runs in
Triton's interpreter in a subprocess; elsewhere (torch's CPU builds, CI) there is no kernel, and the
processor tests below check with a stand-in that attn1 hands the kernel what it should.
"""

import pytest
import torch
import torch.nn.functional as F

from tavcli.engine import triton_sparse_causal
from tavcli.engine.runtime import KernelChoice, Work, attention_kernels
from tavcli.method import attention
from tavcli.method.attention import kernels_chosen
from tests.conftest import (
    HAS_TRITON,
    kernels_in_interpreter,
    needs_cuda,
    on_cuda_per_shape_and_dtype,
    run_in_triton_interpreter,
)

# (clips, frames, tokens, heads, head dim): SD's 64x64 (head dim 40), 32x32 (80) and 16x16 (160) levels,
# 24 frames, two clips, and sizes that are no power of two or whole tile (masked keys, queries and lanes).
SHAPES = [(1, 8, 4096, 8, 40), (2, 8, 1024, 8, 80), (1, 24, 256, 8, 160), (2, 3, 100, 3, 24), (1, 1, 64, 2, 16),
          (1, 2, 70, 2, 40)]
SMALL = [(2, 3, 20, 3, 24), (1, 1, 16, 2, 16), (1, 4, 33, 2, 40)]
SMALL_TILES = triton_sparse_causal.Plan(block_m=16, block_n=16, warps=1, stages=1)


def _reference(q, k, v, frames, heads, scale):
    """Each frame's queries against its gathered [k1, k(i-1)] keys, through SDPA."""
    bf, n, c = q.shape
    b, d = bf // frames, c // heads
    previous = [max(i - 1, 0) for i in range(frames)]

    def gather(t):
        t = t.view(b, frames, n, heads, d)
        return torch.cat([t[:, [0] * frames], t[:, previous]], 2).flatten(0, 1).transpose(1, 2)

    out = F.scaled_dot_product_attention(q.view(bf, n, heads, d).transpose(1, 2), gather(k), gather(v), scale=scale)
    return out.transpose(1, 2).reshape(bf, n, c)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b).norm() / b.norm())


def check(shape, dtype, device, seed=0, plan=None) -> dict:
    """The output against fp64; bf16 within what SDPA's own kernels give in bf16 on the gathered keys."""
    clips, frames, n, heads, d = shape
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(clips * frames, n, heads * d, generator=g).to(device, dtype) for _ in range(3))
    scale = d ** -0.5
    with torch.no_grad():
        got = triton_sparse_causal.sparse_causal_attention(q, k, v, frames, heads, scale, plan)
        ref = _reference(q.double(), k.double(), v.double(), frames, heads, scale)
        sdpa = _reference(q, k, v, frames, heads, scale)
    assert got.dtype == dtype and got.shape == q.shape and got.is_contiguous()
    errors = (_rel(got, ref), _rel(sdpa, ref))
    floor = 3e-6 if dtype == torch.float32 else 0.0
    assert errors[0] <= max(1.1 * errors[1], floor), errors
    return {"out": errors}


@on_cuda_per_shape_and_dtype(SHAPES)
def test_triton_sparse_causal_attention_matches_fp64(shape, dtype):
    if dtype == torch.float32:
        pytest.skip("16-bit only on the GPU (`available`); fp32 runs in the interpreter test")
    check(shape, dtype, "cuda")


@on_cuda_per_shape_and_dtype(SHAPES)
def test_triton_sparse_causal_attention_with_small_tiles_matches_fp64(shape, dtype):
    check(shape, dtype, "cuda", plan=triton_sparse_causal.Plan(32, 32, 4, 2))


@needs_cuda
def test_triton_sparse_causal_attention_replays_in_a_cuda_graph():
    q, k, v = (torch.randn(8, 256, 320, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    attend = triton_sparse_causal.sparse_causal_attention
    attend(q, k, v, 8, 8, 40 ** -0.5)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = attend(q, k, v, 8, 8, 40 ** -0.5)
    k.copy_(torch.randn_like(k))
    graph.replay()
    assert torch.equal(out, attend(q, k, v, 8, 8, 40 ** -0.5))


@kernels_in_interpreter
def test_triton_sparse_causal_attention_in_the_interpreter():
    """The kernel's arithmetic and indexing, run by Triton's interpreter on the CPU in fp32."""
    code = ("import torch; from tests.test_triton_sparse_causal import check, SMALL, SMALL_TILES\n"
            "for shape in SMALL:\n"
            "    check(shape, torch.float32, 'cpu', plan=SMALL_TILES)\n"
            "print('ok')\n")
    run_in_triton_interpreter(code)


def test_sparse_causal_attention_refuses_a_batch_of_partial_clips():
    q = torch.zeros(6, 4, 16)
    with pytest.raises(ValueError, match="whole 4-frame clips"):
        triton_sparse_causal.sparse_causal_attention(q, q, q, 4, 2, 0.25)


def test_the_kernel_is_never_taken_for_cpu_tensors_fp32_or_where_a_gradient_is_asked_for():
    assert not triton_sparse_causal.available(torch.empty(8, 64, 320), 8)  # the CPU: the reference path
    if torch.cuda.is_available():
        image = torch.empty(8, 64, 320, device="cuda", dtype=torch.bfloat16)
        assert triton_sparse_causal.available(image, 8) == HAS_TRITON
        assert not triton_sparse_causal.available(image.float(), 8)
        assert not triton_sparse_causal.available(image.clone().requires_grad_(), 8)
        with torch.no_grad():
            assert triton_sparse_causal.available(image.clone().requires_grad_(), 8) == HAS_TRITON


# --- attn1's processor: what reaches the registered kernel, and when -----------------------------------


def _attn1_and_input(frames: int = 4):
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=2, dim_head=16)
    ctx = attention.ClipContext(frames=frames)
    attn.set_processor(attention.FrameAttnProcessor(ctx))
    return attn, ctx, torch.randn(2 * frames, 9, 32)


def test_attn1_hands_the_registered_kernel_the_projections_and_uses_its_output(monkeypatch):
    attn, ctx, x = _attn1_and_input()
    calls = []

    def stand_in(q, k, v, frames, heads, scale):  # the kernel's contract, computed the reference way
        calls.append((q.shape, frames, heads, scale))
        return _reference(q, k, v, frames, heads, scale)

    with torch.no_grad():
        sdpa_path = attn(x)
        monkeypatch.setattr(attention, "_FAST_SPARSE_CAUSAL", (lambda q, heads: True, stand_in))
        assert torch.equal(attn(x), sdpa_path) and not calls  # the call does not allow it
        ctx.fused_frames_below = 9  # frames of 9 tokens: not below
        assert torch.equal(attn(x), sdpa_path) and not calls
        ctx.fused_frames_below = 10
        fused = attn(x)
        ctx.attention = "first-frame"  # the kernel is sparse-causal's only
        other_mode = attn(x)
    assert calls == [((8, 9, 32), 4, 2, attn.scale)]
    torch.testing.assert_close(fused, sdpa_path, rtol=1e-5, atol=1e-6)
    assert (other_mode - sdpa_path).abs().max() > 1e-3  # frames 3.. differ: the comparison means something


def test_attn1_keeps_sdpa_where_the_kernel_is_not_available(monkeypatch):
    attn, ctx, x = _attn1_and_input()
    with torch.no_grad():
        sdpa_path = attn(x)
        monkeypatch.setattr(attention, "_FAST_SPARSE_CAUSAL", (lambda q, heads: False, lambda *a: 1 / 0))
        ctx.fused_frames_below = 10
        assert torch.equal(attn(x), sdpa_path)


def test_auto_takes_the_kernel_for_inversion_everywhere_for_guided_calls_below_64x64_not_for_tuning():
    cuda = torch.device("cuda")
    assert attention_kernels("auto", Work.SAMPLING, cuda).fused_frames_below == 64 * 64
    assert attention_kernels("auto", Work.INVERSION, cuda).fused_frames_below > 128 * 128  # 1024x1024 video
    assert attention_kernels("auto", Work.TUNING, cuda).fused_frames_below is None
    for kernel in ("flash", "cudnn", "default"):  # an SDPA kernel asked for by name: SDPA everywhere
        assert attention_kernels(kernel, Work.SAMPLING, cuda).fused_frames_below is None
    assert attention_kernels("auto", Work.SAMPLING, torch.device("cpu")).fused_frames_below is None


def test_kernels_chosen_sets_and_restores_fused_frames_below():
    from tests.conftest import make_tiny_unet

    unet = attention.inflate(make_tiny_unet())
    ctx = attention.clip_context(unet)
    with kernels_chosen(unet, KernelChoice(None, False, (), None, fused_frames_below=1024)):
        assert ctx.fused_frames_below == 1024
    assert ctx.fused_frames_below is None


def test_every_head_dim_up_to_the_widest_has_a_plan_and_wider_ones_are_not_available():
    plans = triton_sparse_causal.PLANS
    assert triton_sparse_causal.plan_for(40) is plans[64] and triton_sparse_causal.plan_for(80) is plans[128]
    assert triton_sparse_causal.plan_for(160) is plans[256]
    assert triton_sparse_causal.plan_for(8) is plans[64] and triton_sparse_causal.plan_for(24) is plans[64]
    with pytest.raises(ValueError):
        triton_sparse_causal.plan_for(320)
    q = torch.zeros(2, 4, 2 * 320)
    assert not triton_sparse_causal.available(q, heads=2)  # a CPU tensor, and too wide
