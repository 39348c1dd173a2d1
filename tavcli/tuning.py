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
    gradient_checkpointing: bool = False


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
    fused = device.type == "cuda"  # one kernel for the whole update instead of a few per tensor
    optimizer = torch.optim.AdamW(params, lr=settings.lr, betas=settings.betas,
                                  weight_decay=settings.weight_decay, fused=fused, foreach=not fused)
    if settings.gradient_checkpointing:
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
        torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        if callback is not None:
            callback(step, losses[-1])
    unet.eval()
    if settings.gradient_checkpointing:
        unet.disable_gradient_checkpointing()
    return torch.stack(losses).tolist() if losses else []
