"""One-shot tuning (Tune-A-Video, §3.3): DDPM noise-prediction loss on one clip and its caption."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import video_forward


@dataclass
class TuneSettings:
    """The paper's defaults: 300 steps of AdamW at 3e-5, constant, gradients clipped at 1."""

    steps: int = 300
    lr: float = 3e-5
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    seed: int = 0
    gradient_checkpointing: bool | None = None  # None: only when the clip would not fit the GPU otherwise


@dataclass
class ClipLatents:
    """What tuning needs of the clip, computed once: its VAE posterior (scaled) and caption embedding."""

    mean: torch.Tensor  # (1, F, 4, h, w)
    std: torch.Tensor  # (1, F, 4, h, w)
    text: torch.Tensor  # (1, 77, D)


def autocast_for(unet: nn.Module) -> contextlib.AbstractContextManager:
    """Autocast to the frozen weights' dtype while some weights are fp32 (tuning), so those are cast at use.

    A UNet all in one dtype (fp32 on CPU, or bf16 for inference) runs without autocast and its casts.
    """
    dtype = unet.conv_in.weight.dtype
    if dtype == torch.float32 or all(p.dtype == dtype for p in unet.parameters()):
        return contextlib.nullcontext()
    return torch.autocast(unet.conv_in.weight.device.type, dtype=dtype)


class MasterWeights:
    """Mixed precision without autocast: the UNet computes in bf16 throughout, the optimizer steps fp32 copies.

    Autocast would instead keep the trainable weights in fp32 and cast them, and many activations, at
    every use: over a thousand extra kernels per step. Here the forward and backward run in the frozen
    weights' dtype, gradients are copied up to fp32 masters, and small updates (lr 3e-5) still count.
    """

    def __init__(self, params: list[nn.Parameter], dtype: torch.dtype):
        self.params = params
        self.masters = [nn.Parameter(p.detach().float().clone()) for p in params]
        for p in params:
            p.data = p.data.to(dtype)

    def grads_to_masters(self) -> None:
        for m, p in zip(self.masters, self.params):
            m.grad, p.grad = p.grad.float(), None

    def masters_to_params(self) -> None:
        torch._foreach_copy_([p.data for p in self.params], [m.data for m in self.masters])

    def restore(self) -> None:
        """Leave the fp32 result in the model, as if it had trained in fp32."""
        for m, p in zip(self.masters, self.params):
            p.data = m.data


# Measured on an H100 with bf16 master weights (docs/performance.md): activations of one 512x512 frame
# for backward, and what weights, optimizer state and workspace take besides.
_GIB_PER_FRAME_512 = 1.3
_GIB_FIXED = 3.5


def needs_checkpointing(clip: ClipLatents, device: torch.device) -> bool:
    """Whether a tuning step on this clip would overflow the GPU without gradient checkpointing."""
    if device.type != "cuda":
        return False
    frames, h, w = clip.mean.shape[1], clip.mean.shape[-2], clip.mean.shape[-1]
    need = _GIB_FIXED + _GIB_PER_FRAME_512 * frames * (h * w) / 64**2
    free, _ = torch.cuda.mem_get_info(device)
    return need > 0.9 * free / 2**30


def diffusion_target(x0: torch.Tensor, noise: torch.Tensor, alpha: torch.Tensor, prediction: str) -> torch.Tensor:
    if prediction == "epsilon":
        return noise
    if prediction == "v_prediction":
        return alpha.sqrt() * noise - (1 - alpha).sqrt() * x0
    raise ValueError(f"unsupported prediction type {prediction!r}")


def tune(
    unet: nn.Module,
    params: list[nn.Parameter],
    clip: ClipLatents,
    alphas_cumprod: torch.Tensor,
    settings: TuneSettings = TuneSettings(),
    prediction: str = "epsilon",
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> list[float]:
    """Train `params` of the inflated `unet` on one clip; returns the loss of every step.

    `callback(step, loss)` gets the loss as a 0-d tensor: reading it (`float(loss)`) waits for the GPU,
    so a caller that only draws a bar now and then keeps the step loop free of syncs.
    """
    device = clip.mean.device
    g = torch.Generator(device).manual_seed(settings.seed)
    alphas = alphas_cumprod.to(device)
    if not params:
        raise ValueError("nothing to train: these weights were set for inference; create a new TuneAVideo")
    # bf16 on a GPU: master weights (no autocast); fp32 on CPU: plain; fp16: autocast, as before bf16 existed
    frozen = unet.conv_in.weight.dtype
    masters = MasterWeights(params, frozen) if frozen == torch.bfloat16 else None
    trained = masters.masters if masters else params
    fused = device.type == "cuda"  # one kernel for the whole update instead of a few per tensor
    optimizer = torch.optim.AdamW(trained, lr=settings.lr, betas=settings.betas,
                                  weight_decay=settings.weight_decay, fused=fused, foreach=not fused)
    checkpointing = settings.gradient_checkpointing
    if checkpointing is None:
        checkpointing = needs_checkpointing(clip, device)
    if checkpointing:
        unet.enable_gradient_checkpointing()  # diffusers' is non-reentrant: every parameter gets its gradient
    unet.train()
    autocast = autocast_for(unet)
    losses = []
    for step in range(settings.steps):
        x0 = clip.mean + clip.std * torch.randn(clip.mean.shape, generator=g, device=device)
        noise = torch.randn(x0.shape, generator=g, device=device)
        t = torch.randint(0, len(alphas), (1,), generator=g, device=device)  # one timestep per clip
        a = alphas[t].view(1, 1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with autocast:
            pred = video_forward(unet, xt, t, clip.text)
        loss = F.mse_loss(pred.float(), diffusion_target(x0, noise, a, prediction))
        loss.backward()
        if masters:
            masters.grads_to_masters()
        torch.nn.utils.clip_grad_norm_(trained, settings.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if masters:
            masters.masters_to_params()
        losses.append(loss.detach())
        if callback is not None:
            callback(step, losses[-1])
    if masters:
        masters.restore()
    unet.eval()
    if checkpointing:
        unet.disable_gradient_checkpointing()
    return torch.stack(losses).tolist() if losses else []
