"""What only a CUDA GPU runs: bf16 kernels, CUDA-graph replay of tuning, encoders parked while tuning.

Skipped where no CUDA GPU is visible (CI has none); run on a GPU machine with
`python -m pytest tests/test_gpu.py` (docs/performance.md says when they last ran there).
"""

import numpy as np
import pytest
import torch

from tavcli.engine.runtime import Runtime
from tavcli.method.adapters import AdapterSpec, attach
from tavcli.method.attention import ClipContext, ClipGroupNorm, inflate
from tavcli.method.tuning import ClipLatents, TuneSettings, tune
from tests.test_attention import _five_d_group_norm

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_clip_group_norm_bf16_on_cuda_against_fp64():
    torch.manual_seed(0)
    source = torch.nn.GroupNorm(32, 320).cuda()
    source.weight.data.normal_(1, 0.3)
    source.bias.data.normal_(0, 0.3)
    frames = 8
    x = (torch.randn(frames, 320, 64, 64, device="cuda") * 2 + 6).bfloat16().requires_grad_()
    grad = torch.randn_like(x)
    norm = ClipGroupNorm(source.bfloat16(), ClipContext(frames=frames))
    y = norm(x)
    (dx,) = torch.autograd.grad(y, x, grad)
    x64 = x.detach().double().requires_grad_()
    ref = _five_d_group_norm(x64, frames, 32, source.weight.double(), source.bias.double(), source.eps)
    (dref,) = torch.autograd.grad(ref, x64, grad.double())
    fused = _five_d_group_norm(x.detach(), frames, 32, source.weight, source.bias, source.eps)
    rel = lambda a, b: float((a.double() - b).norm() / b.norm())  # noqa: E731
    assert rel(y, ref) <= 1.1 * rel(fused, ref), (rel(y, ref), rel(fused, ref))
    assert rel(dx, dref) < 1e-2


# SD's 64x64 level at 8 frames (cuDNN when tuning, flash when inverting, as `auto` takes them), and two clips
# at the 32x32 level (the fp64 reference of two clips at 64x64 would take ~100 GB).
@pytest.mark.parametrize("work,side,channels", [("tuning", 64, 320), ("inversion", 64, 320), ("sampling", 32, 640)])
def test_sparse_causal_with_the_first_keys_attended_once_is_as_close_to_fp64_in_bf16(work, side, channels):
    from diffusers.models.attention_processor import Attention

    from tavcli.engine.runtime import attention_kernels
    from tavcli.method.attention import FrameAttnProcessor

    torch.manual_seed(0)
    clips = 2 if work == "sampling" else 1
    attn = Attention(channels, heads=8, dim_head=channels // 8).cuda()
    x = torch.randn(clips * 8, side * side, channels, device="cuda")
    grad = torch.randn_like(x)
    ctx = ClipContext(frames=8, kernels=attention_kernels("auto", work, torch.device("cuda")).sdpa)
    attn.set_processor(FrameAttnProcessor(ctx))

    def run(module, inputs, shared):
        ctx.shared_first_keys = side * side if shared else None
        inputs = inputs.detach().requires_grad_()
        out = module(inputs)
        return out, torch.autograd.grad(out, inputs, grad.to(out.dtype))[0]

    ref, dref = run(attn.double(), x.double(), False)
    low = attn.bfloat16()
    rel = lambda a, b: float((a.double() - b).norm() / b.norm())  # noqa: E731
    (gathered, dgathered), (shared, dshared) = (run(low, x.bfloat16(), s) for s in (False, True))
    assert rel(shared, ref) <= 1.2 * rel(gathered, ref), (rel(shared, ref), rel(gathered, ref))
    assert rel(dshared, dref) <= 1.2 * rel(dgathered, dref), (rel(dshared, dref), rel(dgathered, dref))
    assert rel(shared, gathered.double()) > 0  # the other path ran


@pytest.mark.parametrize("low_memory", [False, True])
def test_tuning_with_cuda_graphs_follows_eager_in_bf16(tiny_unet, low_memory):
    """Graph-replayed steps (the default on a GPU) give the eager steps' losses, in bf16; with gradient
    checkpointing (--low-memory) too, whose recompute is captured with the step."""
    g = torch.Generator().manual_seed(0)
    clip = ClipLatents(torch.randn(1, 3, 4, 8, 8, generator=g).cuda(), 0.05 * torch.rand(1, 3, 4, 8, 8, generator=g).cuda(),
                       torch.randn(1, 77, 32, generator=g).cuda())
    from diffusers import DDPMScheduler

    alphas = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod
    runs = {}
    for graphs in (False, True):
        unet = inflate(tiny_unet()).cuda().to(torch.bfloat16)
        params = attach(unet, AdapterSpec("full"))
        runs[graphs] = tune(unet, params, clip, alphas, TuneSettings(steps=8, lr=1e-4),
                             runtime=Runtime(cuda_graphs=graphs, low_memory=low_memory))
    assert all(np.isfinite(runs[True]))
    assert max(abs(a - b) for a, b in zip(runs[False], runs[True])) < 1e-2, runs


def test_encoders_are_parked_on_the_cpu_while_tuning(tiny_base_dir):
    from tavcli.method.models import load_base
    from tavcli.method.pipeline import TuneAVideo

    base = load_base(str(tiny_base_dir), device="cuda")
    tav = TuneAVideo.create(base)
    where = []
    frames = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    tav.tune(frames, "a clip", TuneSettings(steps=2),
             callback=lambda i, loss: where.append((base.vae.device.type, base.text_encoder.device.type)))
    assert where == [("cpu", "cpu")] * 2
    assert (base.vae.device.type, base.text_encoder.device.type) == ("cuda", "cuda")
    assert tav.invert(frames, steps=2).device.type == "cuda"  # and they work there again


def test_a_channels_last_unet_on_cuda_computes_what_the_nchw_one_does(tiny_unet):
    """tavcli.engine.layout on the GPU (the Triton norm's channels-last kernels, the transformers' per-image
    norm through them): outputs and trained gradients of a step as NCHW's, in fp32; block outputs NHWC."""
    import copy

    from tavcli.engine import layout, triton_groupnorm
    from tavcli.method.attention import use_fast_norm, video_forward

    use_fast_norm(triton_groupnorm.available, triton_groupnorm.clip_group_norm)  # as tavcli.method.pipeline does
    torch.manual_seed(0)
    nchw = inflate(tiny_unet()).cuda()
    for name, p in nchw.named_parameters():
        p.requires_grad_("to_q" in name or "attn_temp" in name)
    nhwc = copy.deepcopy(nchw)
    assert layout.use_channels_last(nhwc) and not layout.use_channels_last(inflate(tiny_unet()))  # not on the CPU
    blocks = []
    nhwc.up_blocks[-1].register_forward_hook(lambda m, i, o: blocks.append(o))
    x, text, target = (torch.randn(1, 3, 4, 16, 16, device="cuda"), torch.randn(1, 5, 32, device="cuda"),
                       torch.randn(1, 3, 4, 16, 16, device="cuda"))
    results = []
    for unet in (nchw, nhwc):
        unet.train()
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # no TF32: the layouts' algorithms differ
            out = video_forward(unet, x, torch.tensor([7], device="cuda"), text)
            trained = [p for p in unet.parameters() if p.requires_grad]
            results.append((out, torch.autograd.grad(((out - target) ** 2).mean(), trained)))
    (want, want_grads), (got, got_grads) = results
    assert blocks[0].is_contiguous(memory_format=torch.channels_last) and not blocks[0].is_contiguous()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("work", ["inversion", "sampling"])
def test_sampling_calls_replayed_with_the_fused_sparse_causal_kernel_follow_sdpa_in_bf16(tiny_unet, work):
    """A sampling UNet call as tav runs it on a GPU (`auto`: the Triton sparse-causal kernel, replayed as a
    CUDA graph after one eager warm-up) gives SDPA's eager result within bf16 round-off, and the kernel ran."""
    import tavcli.method.pipeline  # noqa: F401  (registers the engine's kernels, as tav does)
    from tavcli.engine.runtime import Work, attention_kernels
    from tavcli.method import attention
    from tavcli.method.attention import kernels_chosen
    from tavcli.method.denoiser import Denoiser

    unet = inflate(tiny_unet()).cuda().to(torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    clips = 1 if work == "inversion" else 2
    x = torch.randn(clips, 4, 4, 16, 16, generator=g).cuda()
    text = torch.randn(clips, 5, 32, generator=g).cuda()
    available, attend = attention._FAST_SPARSE_CAUSAL
    calls = []
    attention.use_fast_sparse_causal(available, lambda *a: calls.append(1) or attend(*a))
    try:
        choice = attention_kernels("auto", Work(work), x.device)
        assert choice.fused_frames_below > 16 * 16  # every level of the tiny UNet takes the kernel
        with kernels_chosen(unet, choice), torch.no_grad():  # as the samplers run (forward only)
            denoise = Denoiser(unet)
            outs = [denoise(x, t, text) for t in (900, 500, 100)]  # warm-up, capture + replay, replay
        assert calls  # the kernel ran (eagerly, and once in the capture)
        for t, out in zip((900, 500, 100), outs):
            with kernels_chosen(unet, attention_kernels("flash", Work(work), x.device)), torch.no_grad():
                want = Denoiser(unet, cuda_graphs=False)(x, t, text)
            assert (out - want).norm() / want.norm() < 3e-2, t
    finally:
        attention.use_fast_sparse_causal(available, attend)
