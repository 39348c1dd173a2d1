"""The video UNet against references written here, independently of tavcli.method.attention's code paths."""

import copy
import math

import pytest
import torch
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import ResnetBlock2D

from tavcli.engine import triton_groupnorm
from tavcli.method.attention import (
    ClipContext,
    ClipGroupNorm,
    FrameAttnProcessor,
    TimeEmbeddingSiLU,
    inflate,
    key_frames,
    source_frames,
    video_forward,
)
from tavcli.method.params import Attention as AttentionMode


def naive_frame_attention(attn: Attention, h: torch.Tensor, frames: int, sources) -> torch.Tensor:
    """Explicit loops over clips, frames and heads: frame i's queries against the keys of sources(i)."""
    bf, n, c = h.shape
    heads, d = attn.heads, c // attn.heads
    out = torch.empty_like(h)
    for b in range(bf // frames):
        clip = h[b * frames:(b + 1) * frames]
        for i in range(frames):
            q = attn.to_q(clip[i])
            kv = torch.cat([clip[j] for j in sources(i)])
            k, v = attn.to_k(kv), attn.to_v(kv)
            per_head = []
            for hd in range(heads):
                s = slice(hd * d, (hd + 1) * d)
                w = torch.softmax(q[:, s] @ k[:, s].T / math.sqrt(d), dim=-1)
                per_head.append(w @ v[:, s])
            out[b * frames + i] = attn.to_out[0](torch.cat(per_head, dim=-1))
    return out


SOURCES = {
    "sparse-causal": lambda i: [0, max(i - 1, 0)],
    "first-frame": lambda i: [0],
    "full": lambda i: list(range(5)),
}


@pytest.mark.parametrize("mode", list(SOURCES))
def test_frame_attention_matches_naive_loops(mode):
    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=4, dim_head=8)
    frames, h = 5, torch.randn(2 * 5, 6, 32)  # two clips of five frames, six tokens each
    attn.set_processor(FrameAttnProcessor(ClipContext(frames=frames, attention=mode)))
    with torch.no_grad():
        got = attn(h)
        want = naive_frame_attention(attn, h, frames, SOURCES[mode])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("frames", [1, 2, 3, 5])
def test_sparse_causal_with_the_first_keys_attended_once_matches_naive_loops_and_gradients(frames):
    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=4, dim_head=8)
    h = torch.randn(2 * frames, 6, 32, requires_grad=True)  # two clips: the later frames' queries are copied
    ctx = ClipContext(frames=frames)
    attn.set_processor(FrameAttnProcessor(ctx))
    grad = torch.randn(2 * frames, 6, 32)
    gathered = attn(h)
    want = torch.autograd.grad(gathered, [h, attn.to_q.weight, attn.to_k.weight], grad)
    ctx.shared_first_keys = 6  # from 6 tokens a frame: this call
    shared = attn(h)
    got = torch.autograd.grad(shared, [h, attn.to_q.weight, attn.to_k.weight], grad)
    with torch.no_grad():
        torch.testing.assert_close(shared, naive_frame_attention(attn, h, frames, SOURCES["sparse-causal"]),
                                   atol=1e-5, rtol=1e-5)
    assert (shared - gathered).abs().max() < 1e-6 < (shared - h).abs().max()
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    ctx.shared_first_keys = 7  # a frame of fewer tokens than that keeps the gathered call, bit for bit
    assert torch.equal(attn(h), gathered)


def _kept_for_backward(attn: Attention, h: torch.Tensor) -> float:
    """What autograd keeps of one attention call, in tensors of `h`'s size (each storage counted once)."""
    kept = {}

    def pack(t):
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        attn(h)
    return sum(kept.values()) / (h.numel() * h.element_size())


@pytest.mark.parametrize("frames", [3, 8, 24])
def test_attending_the_first_keys_once_keeps_less_for_backward_than_the_gathered_call(frames):
    torch.manual_seed(0)
    attn = Attention(query_dim=64, heads=4, dim_head=16)
    h = torch.randn(frames, 256, 64, requires_grad=True)
    ctx = ClipContext(frames=frames)
    attn.set_processor(FrameAttnProcessor(ctx))
    gathered = _kept_for_backward(attn, h)
    ctx.shared_first_keys = 0
    shared = _kept_for_backward(attn, h)
    # joined before the output projection, or with frame 1's keys as views, it kept more than gathered
    assert shared < gathered, (shared, gathered)


@pytest.mark.parametrize("mode", AttentionMode.choices())
@pytest.mark.parametrize("frames", [1, 2, 5])
def test_source_frames_follow_key_frames(mode, frames):
    clip = torch.arange(2 * frames * 3, dtype=torch.float32).view(2, frames, 3)  # every value tells its place
    got = source_frames(clip, mode)
    want = torch.stack([clip[b, key_frames(frames, mode)] for b in range(2)])
    assert torch.equal(got, want)


def test_sparse_causal_differs_from_per_frame_attention():
    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=4, dim_head=8)
    h = torch.randn(4, 6, 32)
    attn.set_processor(FrameAttnProcessor(ClipContext(frames=4)))
    with torch.no_grad():
        sparse = attn(h)
        own = naive_frame_attention(attn, h, 4, lambda i: [i])
    # Frame 1 attends only itself (twice): equal to per-frame attention; later frames are not.
    torch.testing.assert_close(sparse[0], own[0], atol=1e-5, rtol=1e-5)
    assert (sparse[1:] - own[1:]).abs().max() > 1e-3


def _random_group_norm(groups: int, channels: int, seed: int) -> torch.nn.GroupNorm:
    """A GroupNorm with random affine weights (so a missed scale or shift shows), after seeding torch."""
    torch.manual_seed(seed)
    norm = torch.nn.GroupNorm(groups, channels)
    norm.weight.data.normal_(1, 0.3)
    norm.bias.data.normal_(0, 0.3)
    return norm


def test_clip_group_norm_pools_statistics_over_frames():
    source = _random_group_norm(4, 16, seed=0)
    frames = 3
    x = torch.randn(2 * frames, 16, 5, 7) * torch.arange(1, 7).view(-1, 1, 1, 1)  # per-frame scales differ
    norm = ClipGroupNorm(source, ClipContext(frames=frames))
    # Reference: the official 5-D layout (B, C, F, H, W), where GroupNorm pools F with H and W.
    five_d = x.view(2, frames, 16, 5, 7).permute(0, 2, 1, 3, 4)
    want = torch.nn.functional.group_norm(five_d, 4, source.weight, source.bias, source.eps)
    want = want.permute(0, 2, 1, 3, 4).reshape(x.shape)
    torch.testing.assert_close(norm(x), want, atol=1e-5, rtol=1e-5)
    assert (norm(x) - source(x)).abs().max() > 0.1  # and it is not per-frame GroupNorm


def _five_d_group_norm(x, frames, groups, weight, bias, eps):
    bf, c, h, w = x.shape
    five_d = x.view(bf // frames, frames, c, h, w).permute(0, 2, 1, 3, 4)
    y = torch.nn.functional.group_norm(five_d, groups, weight, bias, eps)
    return y.permute(0, 2, 1, 3, 4).reshape(x.shape)


@pytest.mark.parametrize("affine", [True, False])
def test_clip_group_norm_gradients_match_the_5d_reference(affine):
    torch.manual_seed(3)
    source = torch.nn.GroupNorm(4, 16, affine=affine).double()
    if affine:
        source.weight.data.normal_(1, 0.3)
        source.bias.data.normal_(0, 0.3)
    frames = 4
    x = (torch.randn(2 * frames, 16, 3, 5, dtype=torch.float64) * 3 + 2).requires_grad_()
    y = torch.randn_like(x)
    got = ClipGroupNorm(source, ClipContext(frames=frames))(x)
    grads = torch.autograd.grad((got * y).sum(), [x, *source.parameters()])
    want = _five_d_group_norm(x, frames, 4, source.weight, source.bias, source.eps)
    want_grads = torch.autograd.grad((want * y).sum(), [x, *source.parameters()])
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-10)


def test_clip_group_norm_in_bf16_stays_as_close_as_the_fused_kernel():
    """bf16 in, bf16 out, channel means three std from zero: the error against an fp64 reference is that of
    PyTorch's own fused group_norm (fp32 statistics and scale, one rounding), not that of bf16 statistics."""
    source = _random_group_norm(8, 32, seed=4)
    frames = 3
    x = (torch.randn(frames, 32, 8, 8) * 2 + 6).bfloat16()
    got = ClipGroupNorm(source.bfloat16(), ClipContext(frames=frames))(x).double()
    ref = _five_d_group_norm(x.double(), frames, 8, source.weight.double(), source.bias.double(), source.eps)
    fused = _five_d_group_norm(x, frames, 8, source.weight, source.bias, source.eps).double()
    err, fused_err = (got - ref).norm() / ref.norm(), (fused - ref).norm() / ref.norm()
    assert err < 1.1 * fused_err, (float(err), float(fused_err))


def test_clip_group_norm_bf16_gradient_is_the_fp32_gradient_rounded():
    source = _random_group_norm(8, 64, seed=5)
    frames = 4
    x = (torch.randn(2 * frames, 64, 16, 16) * 2 + 6).bfloat16().requires_grad_()
    grad = torch.randn_like(x)
    (dx,) = torch.autograd.grad(ClipGroupNorm(source.bfloat16(), ClipContext(frames=frames))(x), x, grad)
    x64 = x.detach().double().requires_grad_()
    ref = _five_d_group_norm(x64, frames, 8, source.weight.double(), source.bias.double(), source.eps)
    (want,) = torch.autograd.grad(ref, x64, grad.double())
    rounded = want.bfloat16().double()  # the best a bf16 result can be
    err, floor = (dx.double() - want).norm() / want.norm(), (rounded - want).norm() / want.norm()
    assert err < 1.1 * floor, (float(err), float(floor))


def test_frame_mode_with_frame_norm_and_zero_temporal_is_the_stock_unet(tiny_unet):
    stock, video = tiny_unet(), inflate(tiny_unet(), attention="frame", norm="frame")
    for name, p in video.named_parameters():
        if "attn_temp.to_out" in name:
            p.data.zero_()
    torch.manual_seed(1)
    x, text = torch.randn(1, 3, 4, 8, 8), torch.randn(1, 77, 32)
    with torch.no_grad():
        got = video_forward(video, x, 500, text)[0]
        for i in range(3):
            torch.testing.assert_close(got[i], stock(x[:, i], 500, encoder_hidden_states=text).sample[0],
                                       atol=1e-5, rtol=1e-5)


def test_sparse_causal_is_causal(tiny_unet):
    unet = inflate(tiny_unet(), norm="frame", temporal=False)
    torch.manual_seed(2)
    x, text = torch.randn(1, 5, 4, 8, 8), torch.randn(1, 77, 32)
    changed = x.clone()
    changed[:, 3] += torch.randn_like(changed[:, 3])
    with torch.no_grad():
        a, b = video_forward(unet, x, 300, text), video_forward(unet, changed, 300, text)
    torch.testing.assert_close(a[:, :3], b[:, :3], atol=0, rtol=0)
    assert (a[:, 3:] - b[:, 3:]).abs().amax(dim=(0, 2, 3, 4)).min() > 1e-4  # frames 4 and 5 see frame 4


def test_clip_norm_and_temporal_attention_mix_frames(tiny_unet):
    """With the defaults every frame depends on every other (pooled norms, temporal attention)."""
    unet = inflate(tiny_unet())
    torch.manual_seed(3)
    x, text = torch.randn(1, 4, 4, 8, 8), torch.randn(1, 77, 32)
    changed = x.clone()
    changed[:, 3] += 1.0
    with torch.no_grad():
        a, b = video_forward(unet, x, 300, text), video_forward(unet, changed, 300, text)
    assert (a[:, 0] - b[:, 0]).abs().max() > 1e-4


def test_inflated_at_init_is_close_but_not_equal_to_the_image_unet(tiny_unet):
    """Zero output weight, default-init output bias: the temporal layer adds a small constant."""
    stock, video = tiny_unet(), inflate(tiny_unet(), attention="frame", norm="frame")
    x, text = torch.randn(1, 2, 4, 8, 8), torch.randn(1, 77, 32)
    with torch.no_grad():
        diff = (video_forward(video, x, 10, text)[0, 0] - stock(x[:, 0], 10, encoder_hidden_states=text).sample[0])
    assert 0 < diff.abs().max() < 1.0


def test_temporal_modules_follow_the_official_layout(tiny_unet):
    unet = inflate(tiny_unet(), seed=7)
    names = {n for n, _ in unet.named_parameters()}
    block = "down_blocks.0.attentions.0.transformer_blocks.0"
    for key in ("norm_temp.weight", "norm_temp.bias", "attn_temp.to_q.weight", "attn_temp.to_k.weight",
                "attn_temp.to_v.weight", "attn_temp.to_out.0.weight", "attn_temp.to_out.0.bias"):
        assert f"{block}.{key}" in names
    assert f"{block}.attn_temp.to_q.bias" not in names  # q/k/v without bias
    attn = unet.get_submodule(block).attn_temp
    assert attn.heads == unet.get_submodule(block).attn1.heads
    assert torch.all(attn.to_out[0].weight == 0) and attn.to_out[0].bias.abs().min() > 0
    again = inflate(tiny_unet(), seed=7).get_submodule(block).attn_temp
    other = inflate(tiny_unet(), seed=8).get_submodule(block).attn_temp
    assert torch.equal(attn.to_q.weight, again.to_q.weight)
    assert not torch.equal(attn.to_q.weight, other.to_q.weight)


def test_inflate_leaves_the_callers_random_stream_alone(tiny_unet):
    unet = tiny_unet()
    state = torch.get_rng_state()
    inflate(unet)
    assert torch.equal(state, torch.get_rng_state())


def test_bad_modes_are_refused(tiny_unet):
    with pytest.raises(ValueError, match="attention mode"):
        inflate(tiny_unet(), attention="causal")
    with pytest.raises(ValueError, match="norm"):
        inflate(tiny_unet(), norm="batch")


def _unfused(unet):
    """The same UNet with each SiLU back in its own module, as diffusers builds it."""
    unet = copy.deepcopy(unet)
    for m in unet.modules():
        if isinstance(m, ClipGroupNorm):
            m.silu = False
        if isinstance(m, TimeEmbeddingSiLU):
            m.__class__ = torch.nn.SiLU
    unet.conv_act = torch.nn.SiLU()
    return unet


def test_the_silu_moves_into_the_clip_norms_and_the_unet_computes_the_same(tiny_unet):
    """On the CPU the norms fall back to the PyTorch ops and the fused arrangement is the stock one exactly,
    forward and backward; every SiLU after a clip norm went in, the time embedding's stayed out."""
    fused = inflate(tiny_unet())
    resnets = [m for m in fused.modules() if isinstance(m, ResnetBlock2D)]
    assert resnets and all(r.norm1.silu and r.norm2.silu and type(r.nonlinearity) is TimeEmbeddingSiLU
                           for r in resnets)
    assert fused.conv_norm_out.silu and isinstance(fused.conv_act, torch.nn.Identity)
    temb = torch.randn(2, 8)
    assert torch.equal(resnets[0].nonlinearity(temb), torch.nn.functional.silu(temb))
    plain = _unfused(fused)
    assert fused.state_dict().keys() == plain.state_dict().keys()
    torch.manual_seed(0)
    x, text = torch.randn(1, 3, 4, 8, 8), torch.randn(1, 77, 32)
    outs = []
    for unet in (fused, plain):
        x_ = x.clone().requires_grad_()
        out = video_forward(unet, x_, 500, text)
        (dx,) = torch.autograd.grad(out.square().sum(), x_)
        outs.append((out, dx))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_a_clip_norm_with_silu_on_the_cpu_is_the_pytorch_norm_then_silu():
    source = _random_group_norm(4, 16, seed=6)
    x = torch.randn(6, 16, 5, 7)
    assert not triton_groupnorm.available(x)
    for frames in (1, 3):
        norm = ClipGroupNorm(source, ClipContext(frames=frames), silu=True)
        plain = ClipGroupNorm(source, ClipContext(frames=frames))
        assert torch.equal(norm(x), torch.nn.functional.silu(plain(x)))
