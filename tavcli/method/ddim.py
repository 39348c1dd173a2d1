"""DDIM inversion and sampling for video latents (Tune-A-Video, §3.4), as plain functions."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from tavcli.engine.graphs import CudaGraph
from tavcli.engine.runtime import autocast_for
from tavcli.method.attention import video_forward


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


class Denoiser:
    """The UNet's noise prediction during sampling. On a GPU, each input shape's forward runs as a CUDA graph
    (`tavcli.engine.graphs`): sampling is dominated by launching ~1,700 small kernels per UNet call, which a
    replay issues in one go. One Denoiser serves every prompt of an edit, and inversion and sampling alike.
    """

    warmup = 2  # eager calls per shape before its capture (lazy inits, cuDNN autotuning)

    def __init__(self, unet: nn.Module, cuda_graphs: bool = True):
        self.unet = unet
        mixed = not isinstance(autocast_for(unet), contextlib.nullcontext)  # autocast's caches break replay
        self.graphs = cuda_graphs and unet.conv_in.weight.device.type == "cuda" and not mixed
        self._graphed: dict[tuple, tuple] = {}

    def __call__(self, x: torch.Tensor, t: int, text: torch.Tensor) -> torch.Tensor:
        if not self.graphs:
            with autocast_for(self.unet):
                return video_forward(self.unet, x, t, text).float()
        key = (tuple(x.shape), tuple(text.shape))
        if key not in self._graphed:
            static_x, static_text = torch.empty_like(x), torch.empty_like(text)
            static_t = torch.zeros((), dtype=torch.long, device=x.device)  # a device tensor: no copy in replay
            graph = CudaGraph(lambda: video_forward(self.unet, static_x, static_t, static_text), self.warmup)
            self._graphed[key] = graph, static_x, static_t, static_text
        graph, static_x, static_t, static_text = self._graphed[key]
        static_x.copy_(x)
        static_t.fill_(t)
        static_text.copy_(text)
        return graph().to(torch.float32, copy=True)  # a replay overwrites its output at the next call


def _denoiser(unet: nn.Module | Denoiser) -> Denoiser:
    return unet if isinstance(unet, Denoiser) else Denoiser(unet)


@torch.no_grad()
def invert(
    unet: nn.Module | Denoiser, latents: torch.Tensor, text: torch.Tensor, schedule: Schedule,
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
    unet: nn.Module | Denoiser, noise: torch.Tensor, text: torch.Tensor, uncond: torch.Tensor, schedule: Schedule,
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
