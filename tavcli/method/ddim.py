"""DDIM inversion and sampling for video latents (Tune-A-Video, §3.4), as plain functions.

Like `attention`, this module imports only torch, diffusers and (relatively) `attention`: `tav export
--format diffusers` copies both verbatim, so an exported pipeline samples with this very code. How the
UNet is called fast (CUDA graphs, autocast) is `tavcli.method.denoiser`'s business, passed in as `unet`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .attention import video_forward  # relative: the same line works in an exported folder


@dataclass(frozen=True)
class Schedule:
    """Cumulative alphas and the timesteps a DDIM run visits, highest first."""

    alphas_cumprod: torch.Tensor
    timesteps: list[int]
    final_alpha: float  # alpha-bar "before" the last step: SD's set_alpha_to_one=False uses alphas_cumprod[0]

    def alpha(self, t: int) -> torch.Tensor:
        return self.alphas_cumprod[t] if t >= 0 else torch.tensor(self.final_alpha, dtype=torch.float64)

    def pairs(self) -> list[tuple[int, int]]:
        """(t, t_prev) for each denoising step; inversion walks them backwards."""
        stride = self.timesteps[0] - self.timesteps[1] if len(self.timesteps) > 1 else len(self.alphas_cumprod)
        return [(t, t - stride) for t in self.timesteps]


def ddim_schedule(scheduler_config: dict, steps: int) -> Schedule:
    """The DDIM schedule of a base's scheduler config (spacing, offset and betas as the base sets them)."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(scheduler_config)
    sched.set_timesteps(steps)
    return Schedule(sched.alphas_cumprod.double(), [int(t) for t in sched.timesteps], float(sched.final_alpha_cumprod))


def ddim_step(x: torch.Tensor, eps: torch.Tensor, a_from: torch.Tensor, a_to: torch.Tensor) -> torch.Tensor:
    """Move x from noise level a_from to a_to along the predicted x0 (deterministic DDIM, eta=0)."""
    x0 = (x - (1 - a_from).sqrt() * eps) / a_from.sqrt()
    return (a_to.sqrt() * x0 + (1 - a_to).sqrt() * eps).to(x.dtype)


Denoise = Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]  # (x, t, text) -> predicted noise, fp32


def _denoiser(unet: nn.Module | Denoise) -> Denoise:
    """A UNet's noise prediction as a function; tav passes its graph-capturing `denoiser.Denoiser` instead."""
    if not isinstance(unet, nn.Module):
        return unet
    return lambda x, t, text: video_forward(unet, x, t, text).float()


@torch.no_grad()
def invert(
    unet: nn.Module | Denoise, latents: torch.Tensor, text: torch.Tensor, schedule: Schedule,
    callback: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Run DDIM backwards from clean latents (B, F, 4, h, w) to the noise that regenerates them."""
    eps, x = _denoiser(unet), latents.float()
    for i, (t, t_prev) in enumerate(reversed(schedule.pairs())):
        x = ddim_step(x, eps(x, t, text), schedule.alpha(t_prev), schedule.alpha(t))
        if callback is not None:
            callback(i)
    return x


@torch.no_grad()
def sample(
    unet: nn.Module | Denoise, noise: torch.Tensor, text: torch.Tensor, uncond: torch.Tensor, schedule: Schedule,
    guidance: float, callback: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """DDIM sampling with classifier-free guidance; cond and uncond go through the UNet as one batch."""
    denoise, x = _denoiser(unet), noise.float()
    b = x.shape[0]
    for i, (t, t_prev) in enumerate(schedule.pairs()):
        if guidance == 1.0:
            eps = denoise(x, t, text)
        else:
            eps_u, eps_c = denoise(torch.cat([x, x]), t, torch.cat([uncond, text])).split(b)
            eps = eps_u + guidance * (eps_c - eps_u)
        x = ddim_step(x, eps, schedule.alpha(t), schedule.alpha(t_prev))
        if callback is not None:
            callback(i)
    return x
