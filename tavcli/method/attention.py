"""Spatio-temporal attention on a stock diffusers UNet (Tune-A-Video, §3.2).

`inflate` turns a loaded `UNet2DConditionModel` into the paper's video UNet without copying it:

* every attn1 gets a processor in which frame i attends frames 1 and i-1 (sparse-causal), or one of the
  ablations (first frame only, all frames, its own frame);
* every transformer block gains `norm_temp` + `attn_temp`, a self-attention over the frame axis run after
  the block's feed-forward, through a forward hook, so the stock block's code is untouched and the
  state-dict keys match the official UNet3D's;
* the resnets' GroupNorms and `conv_norm_out` pool their statistics over the clip, as the official 5-D
  tensors do.

Frames stay folded into the batch: a clip of F frames is a batch of B*F images. The frame count reaches
the added modules through one `ClipContext` shared by them (per UNet, not global), set by `video_forward`.

This module imports nothing but torch and diffusers: `tav export --format diffusers` copies it verbatim
into the folder it writes, so a model used without tav runs this very code (tests/test_interop.py checks).
Modes are plain strings here (tav's `params.Attention`/`Norm` enums are strings too); an unknown one is a
ValueError, which tav's settings never let through.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

ATTENTION_MODES = ("sparse-causal", "first-frame", "full", "frame")  # tav's params.Attention, in order
NORMS = ("clip", "frame")  # tav's params.Norm

# A faster clip GroupNorm (+SiLU) for the tensors it can take, given from outside (tavcli.method.pipeline
# registers the engine's Triton kernel, `tavcli.engine.triton_groupnorm`): this module is copied verbatim
# into exported folders (`tav export --format diffusers`), where the PyTorch ops below run.
# (available(x), norm(x, frames, groups, weight, bias, eps, silu=...)) or None.
_FAST_NORM: tuple | None = None


def use_fast_norm(available, norm) -> None:
    """Let ClipGroupNorm run `norm` wherever `available(x)` says it can (the engine's Triton kernel)."""
    global _FAST_NORM
    _FAST_NORM = (available, norm)


# Likewise a temporal attention kernel (`tavcli.engine.triton_temporal`): (available(q, frames, heads),
# attend(q, k, v, frames, heads, scale)) on (B*F, N, C) tensors, or None.
_FAST_TEMPORAL: tuple | None = None


def use_fast_temporal(available, attend) -> None:
    """Let the temporal attention run `attend` wherever `available(q, frames, heads)` says it should, and
    the call allows it (`kernels_chosen`)."""
    global _FAST_TEMPORAL
    _FAST_TEMPORAL = (available, attend)


# Likewise sparse-causal attention's forward (`tavcli.engine.triton_sparse_causal`), for sampling:
# (available(q, heads), attend(q, k, v, frames, heads, scale)) on (B*F, N, C) tensors, or None.
_FAST_SPARSE_CAUSAL: tuple | None = None


def use_fast_sparse_causal(available, attend) -> None:
    """Let sparse-causal attn1 run `attend` wherever `available(q, heads)` says it can, and the call allows
    it (`kernels_chosen`)."""
    global _FAST_SPARSE_CAUSAL
    _FAST_SPARSE_CAUSAL = (available, attend)


# A chooser of SDPA kernels: (kind, queries, keys, sequences) -> a context manager, e.g. torch's
# `sdpa_kernel`. Kinds are "frames" (attn1), "cross" (attn2) and "temporal"; queries and keys are the
# token counts of one sequence, sequences how many of them the call attends (batch x heads).
KernelChooser = Callable[[str, int, int, int], contextlib.AbstractContextManager]


@dataclass
class ClipContext:
    """What the modules tav adds to one UNet need to know about the current call.

    `kernels`, `fused_temporal`, `fused_frames_below` and `shared_first_keys` choose kernels only (set by
    `kernels_chosen`, from tav's runtime): the attention computed is the same with any of them, up to
    round-off.
    """

    frames: int = 1
    attention: str = "sparse-causal"
    temporal_seed: int = 0
    kernels: KernelChooser | None = None
    fused_temporal: bool = False
    shared_first_keys: int | None = None
    fused_frames_below: int | None = None


class KernelChoice(Protocol):
    """The kernel settings `kernels_chosen` copies into a UNet's ClipContext (`engine.runtime.KernelChoice`
    has them): the SDPA chooser, the fused temporal kernel, the frame size from which the first keys are
    attended once, and the frame size below which sparse-causal attention takes the fused kernel."""

    sdpa: KernelChooser | None
    fused_temporal: bool
    shared_first_keys: int | None
    fused_frames_below: int | None


@contextlib.contextmanager
def kernels_chosen(unet: nn.Module, choice: KernelChoice):
    """While open, `unet`'s attention takes its SDPA kernels from `choice.sdpa` (None: PyTorch's choice);
    with `choice.fused_temporal`, the temporal attention the registered kernel (`use_fast_temporal`); and
    where a frame has at least `choice.shared_first_keys` tokens, sparse-causal attention attends the first
    two frames' repeated keys once (`sparse_causal_shared_first_keys`; None: nowhere); with
    where a frame has fewer than `choice.fused_frames_below` tokens, sparse-causal attention the registered
    kernel (`use_fast_sparse_causal`; None: nowhere)."""
    ctx = clip_context(unet)
    before = ctx.kernels, ctx.fused_temporal, ctx.shared_first_keys, ctx.fused_frames_below
    ctx.kernels, ctx.fused_temporal = choice.sdpa, choice.fused_temporal
    ctx.shared_first_keys, ctx.fused_frames_below = choice.shared_first_keys, choice.fused_frames_below
    try:
        yield
    finally:
        ctx.kernels, ctx.fused_temporal, ctx.shared_first_keys, ctx.fused_frames_below = before


def _kernels(ctx: ClipContext, kind: str, queries: int, keys: int, sequences: int
             ) -> contextlib.AbstractContextManager:
    if ctx.kernels is None or torch.compiler.is_compiling():  # a compiled graph keeps the caller's choice
        return contextlib.nullcontext()
    return ctx.kernels(kind, queries, keys, sequences)


def clip_context(unet: nn.Module) -> ClipContext:
    ctx = getattr(unet, "tav_clip", None)
    if ctx is None:
        raise ValueError("this UNet has not been inflated: call inflate(unet) first")
    return ctx


# --- attn1: sparse-causal and the other frame-attention modes -------------------------------------


def key_frames(frames: int, mode: str) -> list[list[int]]:
    """For each frame, the frames whose keys and values its queries attend."""
    if mode == "sparse-causal":
        # Frame 1 attends itself twice, as in the official code: one softmax over [k1, k1] equals one over k1.
        return [[0, max(i - 1, 0)] for i in range(frames)]
    if mode == "first-frame":
        return [[0] for _ in range(frames)]
    if mode == "full":
        return [list(range(frames)) for _ in range(frames)]
    if mode == "frame":
        return [[i] for i in range(frames)]
    raise ValueError(f"unknown attention mode {mode!r}; choose one of {', '.join(ATTENTION_MODES)}")


def source_frames(x: torch.Tensor, mode: str) -> torch.Tensor:
    """(B, F, ...) -> (B, F, S, ...): for each frame, its S source frames in `key_frames` order.

    Slices and `expand` instead of an index tensor: nothing to cache per frame count, no host-to-device
    copy, and nothing that `torch.compile` would have to guard on.
    """
    b, f = x.shape[:2]
    if mode == "sparse-causal":  # written into one new tensor: a single pass over memory, as a gather was
        out = x.new_empty(b, f, 2, *x.shape[2:])
        out[:, :, 0] = x[:, :1]
        out[:, 1:, 1] = x[:, :-1]
        out[:, :1, 1] = x[:, :1]
        return out
    if mode == "first-frame":
        return x[:, :1, None].expand(b, f, 1, *x.shape[2:])
    if mode == "full":
        return x[:, None].expand(b, f, f, *x.shape[2:])
    if mode == "frame":
        return x[:, :, None]
    raise ValueError(f"unknown attention mode {mode!r}; choose one of {', '.join(ATTENTION_MODES)}")


class FrameAttnProcessor:
    """Self-attention whose keys and values come from other frames of the same clip."""

    def __init__(self, ctx: ClipContext):
        self.ctx = ctx

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        f = self.ctx.frames
        bf, n, _ = hidden_states.shape
        if bf % f:
            raise ValueError(f"batch of {bf} images is not a whole number of {f}-frame clips")
        b, heads = bf // f, attn.heads
        q = attn.to_q(hidden_states)
        k = attn.to_k(hidden_states)
        v = attn.to_v(hidden_states)
        d = q.shape[-1] // heads

        def gather(x: torch.Tensor) -> torch.Tensor:
            # (B*F, N, C) -> (B*F, S*N, heads, d): each frame's queries see the S source frames' tokens.
            x = source_frames(x.view(b, f, n, heads, d), self.ctx.attention)  # (B, F, S, N, heads, d)
            return x.flatten(2, 3).flatten(0, 1)

        sparse_causal = self.ctx.attention == "sparse-causal"
        fast, fast_below = _FAST_SPARSE_CAUSAL, self.ctx.fused_frames_below
        if sparse_causal and fast is not None and fast_below is not None and n < fast_below and fast[0](q, heads):
            return attn.to_out[1](attn.to_out[0](fast[1](q, k, v, f, heads, attn.scale)))
        shared_from = self.ctx.shared_first_keys
        if sparse_causal and shared_from is not None and n >= shared_from:
            return sparse_causal_shared_first_keys(self.ctx, q, k, v, f, heads, attn.scale,
                                                   lambda x: attn.to_out[1](attn.to_out[0](x)))
        out = _attend(self.ctx, q.view(bf, n, heads, d), gather(k), gather(v), attn.scale)
        out = out.transpose(1, 2).reshape(bf, n, heads * d).to(q.dtype)
        return attn.to_out[1](attn.to_out[0](out))


def _attend(ctx: ClipContext, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """SDPA on (X, L, heads, d) views, its kernels chosen for the call; out (X, heads, L, d)."""
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    with _kernels(ctx, "frames", q.shape[2], k.shape[2], q.shape[0] * q.shape[1]):
        return F.scaled_dot_product_attention(q, k, v, scale=scale)


def sparse_causal_shared_first_keys(ctx: ClipContext, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                    frames: int, heads: int, scale: float,
                                    project: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Sparse-causal attention of (B*F, N, C) q, k, v with the first two frames' repeated keys attended
    once, then `project` (the output projection, per token); out (B*F, N, C).

    Frames 1 and 2 attend [k1, k1]: a softmax over a key set listed twice equals one over it listed once
    (each weight and the sum double), so their 2N queries go against frame 1's N keys in one call; frames
    3.. against their gathered [k1, k(i-1)]. The same function as the gathered call in exact arithmetic,
    with an eighth less attention work and a quarter less gathering at 8 frames. Each part is projected
    before the parts are joined, so backward keeps the attention's own outputs, not a joined copy.
    """
    bf, n, c = q.shape
    b, d = bf // frames, c // heads
    q, k, v = (t.view(b, frames, n, heads, d) for t in (q, k, v))
    lead = min(frames, 2)
    # Frame 1's keys and values copied out: as views they would keep all of k and v alive for backward.
    first = _attend(ctx, q[:, :lead].flatten(1, 2), k[:, 0].clone(), v[:, 0].clone(), scale)
    parts = [project(first.transpose(1, 2).reshape(b, lead * n, c)).view(b, lead, n, -1)]
    if frames > lead:
        rest = _attend(ctx, q[:, lead:].flatten(0, 1), _key_pairs(k, lead), _key_pairs(v, lead), scale)
        parts.append(project(rest.transpose(1, 2).reshape(-1, n, c)).view(b, frames - lead, n, -1))
    return torch.cat(parts, 1).flatten(0, 1)


def _key_pairs(x: torch.Tensor, lead: int) -> torch.Tensor:
    """(B, F, N, heads, d) -> (B*(F-lead), 2N, heads, d): frames lead+1.. each get [x1, x(i-1)], written
    into one new tensor."""
    b, f = x.shape[:2]
    pairs = x.new_empty(b, f - lead, 2, *x.shape[2:])
    pairs[:, :, 0] = x[:, :1]
    pairs[:, :, 1] = x[:, lead - 1:-1]
    return pairs.flatten(2, 3).flatten(0, 1)


class CrossAttnProcessor(AttnProcessor2_0):
    """diffusers' attn2 processor, its SDPA kernels chosen as the clip's call says (`kernels_chosen`)."""

    def __init__(self, ctx: ClipContext):
        super().__init__()
        self.ctx = ctx

    def __call__(self, attn: Attention, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 temb: torch.Tensor | None = None, *args, **kwargs) -> torch.Tensor:
        keys = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        queries, sequences = hidden_states.shape[-2], hidden_states.shape[0] * attn.heads
        with _kernels(self.ctx, "cross", queries, keys.shape[-2], sequences):
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args,
                                    **kwargs)


# --- temporal attention ----------------------------------------------------------------------------


def _temporal_hook(ctx: ClipContext, block: BasicTransformerBlock, args, output: torch.Tensor) -> torch.Tensor:
    """Runs after the block's feed-forward residual: attention over frames at each spatial position.

    LayerNorm and the projections act per token, so they run on the (B*F, N, C) layout as it comes; only
    q, k and v are viewed frame-axis-last for the attention, and one copy brings the result back. A fused
    kernel, where one is registered and the call allows it, reads and writes the (B*F, N, C) layout itself.
    """
    f, attn = ctx.frames, block.attn_temp
    bf, n, c = output.shape
    b, heads = bf // f, attn.heads
    x = block.norm_temp(output)
    q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
    if ctx.fused_temporal and _FAST_TEMPORAL is not None and _FAST_TEMPORAL[0](q, f, heads):
        out = _FAST_TEMPORAL[1](q, k, v, f, heads, attn.scale)
    else:
        def frames_last(t: torch.Tensor) -> torch.Tensor:  # (B*F, N, C) -> (B, N*heads, F, d), a view
            return t.view(b, f, n * heads, c // heads).transpose(1, 2)

        with _kernels(ctx, "temporal", f, f, b * n * heads):
            out = F.scaled_dot_product_attention(frames_last(q), frames_last(k), frames_last(v), scale=attn.scale)
        out = out.transpose(1, 2).reshape(bf, n, c)
    return attn.to_out[1](attn.to_out[0](out)) + output


def _temporal_modules(dim: int, heads: int, upcast: bool) -> tuple[nn.LayerNorm, Attention]:
    # Built on the meta device so that making them draws nothing from the caller's random stream.
    with torch.device("meta"):
        norm = nn.LayerNorm(dim)
        attn = Attention(query_dim=dim, heads=heads, dim_head=dim // heads, bias=False, upcast_attention=upcast)
    return norm.to_empty(device="cpu"), attn.to_empty(device="cpu")


def init_temporal(unet: nn.Module, seed: int) -> None:
    """(Re)initialise every temporal module from `seed`, identically on any device.

    PyTorch's default Linear init, drawn from a CPU generator so a LoRA adapter can rebuild the frozen
    temporal weights from the seed alone; the output weight starts at zero (the paper's near-identity
    start) while its bias keeps the default init, as in the official code.
    """
    g = torch.Generator().manual_seed(seed)
    for block in _transformer_blocks(unet):
        block.norm_temp.weight.data.fill_(1.0)
        block.norm_temp.bias.data.zero_()
        attn = block.attn_temp
        for lin in (attn.to_q, attn.to_k, attn.to_v, attn.to_out[0]):
            bound = 1.0 / math.sqrt(lin.in_features)
            if lin is attn.to_out[0]:
                lin.weight.data.zero_()
            else:
                lin.weight.data.copy_(torch.empty(lin.weight.shape).uniform_(-bound, bound, generator=g))
            if lin.bias is not None:
                lin.bias.data.copy_(torch.empty(lin.bias.shape).uniform_(-bound, bound, generator=g))
    clip_context(unet).temporal_seed = seed


# --- GroupNorm over the clip -----------------------------------------------------------------------


class ClipGroupNorm(nn.GroupNorm):
    """GroupNorm whose statistics pool all frames of a clip (the official UNet3D's 5-D behaviour).

    With `silu`, the SiLU that follows the norm in the UNet is applied here (`fuse_silu`): on a GPU both
    run as one Triton kernel (`use_fast_norm`, from `tavcli.engine.triton_groupnorm`), elsewhere as the
    PyTorch ops below.
    """

    def __init__(self, source: nn.GroupNorm, ctx: ClipContext, silu: bool = False):
        super().__init__(source.num_groups, source.num_channels, source.eps, source.affine,
                         device="meta")
        self.weight, self.bias = source.weight, source.bias
        self.ctx, self.silu = ctx, silu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.ctx.frames
        if _FAST_NORM is not None and _FAST_NORM[0](x):
            return _FAST_NORM[1](x, f, self.num_groups, self.weight, self.bias, self.eps, silu=self.silu)
        y = super().forward(x) if f == 1 else clip_group_norm(x, f, self.num_groups, self.weight, self.bias,
                                                              self.eps)
        return F.silu(y) if self.silu else y


class TimeEmbeddingSiLU(nn.SiLU):
    """A resnet's `nonlinearity` once its norms apply the SiLU themselves: SiLU for the time embedding
    (B, C), the only other input it gets, and nothing for the (B, C, H, W) activations."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) if x.ndim == 2 else x


def fuse_silu(unet: nn.Module) -> None:
    """Move each SiLU that directly follows a clip GroupNorm into the norm; the same function.

    In a resnet whose time embedding is added before norm2 ("default"), `nonlinearity` acts on norm1's
    output, on the time embedding and on norm2's output; the norms take over the first and last. The
    UNet's `conv_act` follows `conv_norm_out`. The modules hold no weights: the state dict is unchanged.
    """
    for resnet in [m for m in unet.modules() if isinstance(m, ResnetBlock2D)]:
        if (type(resnet.nonlinearity) is nn.SiLU and resnet.time_embedding_norm == "default"
                and isinstance(resnet.norm1, ClipGroupNorm) and isinstance(resnet.norm2, ClipGroupNorm)):
            resnet.norm1.silu = resnet.norm2.silu = True
            resnet.nonlinearity = TimeEmbeddingSiLU()
    if isinstance(unet.conv_norm_out, ClipGroupNorm) and type(unet.conv_act) is nn.SiLU:
        unet.conv_norm_out.silu = True
        unet.conv_act = nn.Identity()


def clip_group_norm(x: torch.Tensor, frames: int, groups: int, weight: torch.Tensor | None,
                    bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """GroupNorm of (B*F, C, H, W) with statistics pooled over each clip's F frames."""
    return _ClipGroupNorm.apply(x.contiguous(), weight, bias, frames, groups, eps)


class _ClipGroupNorm(torch.autograd.Function):
    """PyTorch's fused group_norm would need each clip group contiguous (a copy in and one out) and gives
    one thread block to each (clip, group): 32 blocks at batch 1, which measured 5.8 ms of a 42 ms
    sampling call on an H200 (docs/performance.md). Here two reductions over the strided clip groups
    spread over the whole GPU, accumulating in fp32, and one pass applies a per-channel fp32 scale and
    shift to the bf16 activations; backward is the closed form, keeping only the input, as group_norm does.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, frames, groups, eps):
        acc = torch.promote_types(x.dtype, torch.float32)
        clip = _clip_groups(x, frames, groups)  # (B, F, G, C/G, H*W)
        n = clip[0].numel() // groups
        mean = clip.sum((1, 3, 4), keepdim=True, dtype=acc) / n  # (B, 1, G, 1, 1)
        # E[x^2] - E[x]^2 in fp32: a mean of 3 std loses 3 of its 24 bits, far under bf16's 8
        square = torch.linalg.vector_norm(clip, dim=(1, 3, 4), keepdim=True, dtype=acc).square() / n
        rstd = (square - mean.square()).clamp_min(0).add(eps).rsqrt()
        w = _per_channel(weight, groups, acc)
        scale = rstd * w
        shift = _per_channel(bias, groups, acc, missing=0.0) - mean * scale
        y = torch.empty_like(x)
        torch.addcmul(shift, clip, scale, out=_clip_groups(y, frames, groups))  # fp32 math, one rounding
        ctx.save_for_backward(x, mean, rstd, w)
        ctx.frames, ctx.groups, ctx.n = frames, groups, n
        return y

    @staticmethod
    def backward(ctx, grad):
        x, mean, rstd, w = ctx.saved_tensors
        clip, g = _clip_groups(x, ctx.frames, ctx.groups), _clip_groups(grad.contiguous(), ctx.frames, ctx.groups)
        acc, n = mean.dtype, ctx.n
        sum_g = g.sum((1, 4), keepdim=True, dtype=acc)  # per clip and channel: (B, 1, G, C/G, 1)
        sum_gx = (g * clip).sum((1, 4), keepdim=True, dtype=acc)
        centred = (sum_gx - mean * sum_g) * rstd  # sum of grad * x_hat, per channel
        # dx = rstd * (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat)), dx_hat = grad * w, over clip groups
        s1 = (w * sum_g).sum(3, keepdim=True) / n
        s2 = (w * centred).sum(3, keepdim=True) / n
        coef_x = -rstd.square() * s2
        const = rstd.square() * mean * s2 - rstd * s1
        dx = torch.empty_like(x)
        torch.addcmul(torch.addcmul(const, clip, coef_x), g, rstd * w, out=_clip_groups(dx, ctx.frames, ctx.groups))
        dweight = centred.sum(0).flatten().to(x.dtype) if ctx.needs_input_grad[1] else None
        dbias = sum_g.sum(0).flatten().to(x.dtype) if ctx.needs_input_grad[2] else None
        return dx, dweight, dbias, None, None, None


def _clip_groups(x: torch.Tensor, frames: int, groups: int) -> torch.Tensor:
    """(B*F, C, H, W) -> (B, F, G, C/G, H*W), a view: a clip group spans dims 1, 3 and 4."""
    bf, c = x.shape[:2]
    return x.view(bf // frames, frames, groups, c // groups, -1)


def _per_channel(p: torch.Tensor | None, groups: int, dtype: torch.dtype, missing: float = 1.0) -> torch.Tensor:
    """A GroupNorm weight or bias as (1, 1, G, C/G, 1); a non-affine norm's as the scalar `missing`."""
    if p is None:
        return torch.full((), missing, dtype=dtype)
    return p.to(dtype).view(1, 1, groups, -1, 1)


# --- the surgery -----------------------------------------------------------------------------------


def _transformer_blocks(unet: nn.Module) -> list[BasicTransformerBlock]:
    return [m for m in unet.modules() if isinstance(m, BasicTransformerBlock)]


def set_attention_mode(unet: nn.Module, mode: str) -> None:
    """Switch every attn1 between sparse-causal, first-frame, full and per-frame attention."""
    mode = _mode("attention", ATTENTION_MODES, mode)
    ctx = clip_context(unet)
    ctx.attention = mode
    for block in _transformer_blocks(unet):
        block.attn1.set_processor(AttnProcessor2_0() if mode == "frame" else FrameAttnProcessor(ctx))
        block.attn2.set_processor(CrossAttnProcessor(ctx))


def _mode(kind: str, choices: tuple[str, ...], value: str) -> str:
    """`value` as a plain string (an enum member of tav's gives its value), refused unless one of `choices`."""
    if str(value) not in choices:
        raise ValueError(f"unknown {kind} mode {value!r}; choose one of {', '.join(choices)}")
    return str(value)


def inflate(
    unet: nn.Module,
    attention: str = "sparse-causal",
    norm: str = "clip",
    temporal: bool = True,
    seed: int = 0,
) -> nn.Module:
    """Make a stock SD UNet a Tune-A-Video UNet in place and return it.

    `norm="frame"` keeps per-frame GroupNorm statistics (stock image semantics); `temporal=False` leaves
    out the temporal attention (for ablations and tests).
    """
    if hasattr(unet, "tav_clip"):
        raise ValueError("this UNet is already inflated")
    norm = _mode("norm", NORMS, norm)
    ctx = ClipContext()
    unet.tav_clip = ctx
    set_attention_mode(unet, attention)
    ref = unet.conv_in.weight
    if norm == "clip":
        for resnet in [m for m in unet.modules() if isinstance(m, ResnetBlock2D)]:
            resnet.norm1 = ClipGroupNorm(resnet.norm1, ctx)
            resnet.norm2 = ClipGroupNorm(resnet.norm2, ctx)
        unet.conv_norm_out = ClipGroupNorm(unet.conv_norm_out, ctx)
        fuse_silu(unet)  # the same function; one kernel for norm and SiLU on a GPU
    if temporal:
        for block in _transformer_blocks(unet):
            dim = block.attn1.to_q.in_features
            block.norm_temp, block.attn_temp = _temporal_modules(dim, block.attn1.heads, block.attn1.upcast_attention)
            block.register_forward_hook(functools.partial(_temporal_hook, ctx))
        init_temporal(unet, seed)
        for block in _transformer_blocks(unet):
            block.norm_temp.to(device=ref.device, dtype=ref.dtype)
            block.attn_temp.to(device=ref.device, dtype=ref.dtype)
    return unet


def video_forward(
    unet: nn.Module, latents: torch.Tensor, timestep: torch.Tensor | int, text: torch.Tensor
) -> torch.Tensor:
    """Predict noise for video latents (B, F, C, h, w) with text embeddings (B, L, D).

    The frame count stays set on the UNet after the call: gradient checkpointing recomputes the forward
    during backward and must see the same count.
    """
    b, f = latents.shape[:2]
    clip_context(unet).frames = f
    dtype = unet.conv_in.weight.dtype  # inputs in the weights' dtype: no per-layer casts without autocast
    t = torch.as_tensor(timestep, device=latents.device)
    if t.ndim == 1:  # expand, not repeat_interleave: no host sync, so the call can be graph-captured
        t = t[:, None].expand(b, f).reshape(b * f)
    text = text.to(dtype)[:, None].expand(b, f, *text.shape[1:]).reshape(b * f, *text.shape[1:])
    out = unet(latents.to(dtype).flatten(0, 1), t, encoder_hidden_states=text).sample
    return out.unflatten(0, (b, f))
