"""DDIM inversion and sampling for video latents (Tune-A-Video, §3.4), as plain functions.

A sampler is a function of a noise predictor (a callable (x, t, text) -> noise, which tav's
`tavcli.method.denoiser.Denoiser` may run as CUDA graphs), a start latent, the text and a schedule, as
k-diffusion's are: `sample` is tav's DDIM (eta 0 by default, the paper's; eta > 0 with a seeded
`noise_sampler`), `invert` runs it backwards (all of it, or the first steps of it for a partial inversion),
and `sample_with` runs one of diffusers' schedulers from noise.

Like `attention`, this module imports only torch, diffusers and (relatively) `attention`: `tav export
--format diffusers` copies both verbatim, so an exported pipeline samples with this very code.
"""

from __future__ import annotations

import inspect
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

    def tail(self, steps: int) -> Schedule:
        """The last `steps` denoising steps: where a partial inversion of `steps` steps is sampled back from.
        (A one-step tail's t_prev is negative, as the last step's always is: it goes to `final_alpha`.)"""
        return Schedule(self.alphas_cumprod, self.timesteps[len(self.timesteps) - steps:], self.final_alpha)


def ddim_schedule(scheduler_config: dict, steps: int) -> Schedule:
    """The DDIM schedule of a base's scheduler config (spacing, offset and betas as the base sets them)."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(scheduler_config)
    sched.set_timesteps(steps)
    return Schedule(sched.alphas_cumprod.double(), [int(t) for t in sched.timesteps], float(sched.final_alpha_cumprod))


def ddim_step(x: torch.Tensor, eps: torch.Tensor, a_from: torch.Tensor, a_to: torch.Tensor, eta: float = 0.0,
              noise: torch.Tensor | None = None) -> torch.Tensor:
    """Move x from noise level a_from to a_to along the predicted x0: deterministic DDIM at eta 0; with eta > 0
    (denoising only) part of the direction to x_t is fresh `noise`, sigma = eta * sqrt((1 - a_to) / (1 - a_from))
    * sqrt(1 - a_from / a_to) (Song et al., Eq. 16; eta 1 is DDPM's posterior variance)."""
    x0 = (x - (1 - a_from).sqrt() * eps) / a_from.sqrt()
    if eta == 0:
        return (a_to.sqrt() * x0 + (1 - a_to).sqrt() * eps).to(x.dtype)
    sigma = eta * ((1 - a_to) / (1 - a_from) * (1 - a_from / a_to)).sqrt()
    return (a_to.sqrt() * x0 + (1 - a_to - sigma**2).sqrt() * eps + sigma * noise).to(x.dtype)


def seeded_noise(seeds: tuple[int, ...] | list[torch.Generator], like: torch.Tensor) -> Callable[[], torch.Tensor]:
    """Draws fresh noise shaped like `like` (B, ...), video b's from its own CPU generator (seeded by seeds[b],
    or given), so a video's noise is the same on any device and whichever batch it is rendered in."""
    generators = [g if isinstance(g, torch.Generator) else torch.Generator().manual_seed(g) for g in seeds]
    shape = (1, *like.shape[1:])
    return lambda: torch.cat([torch.randn(shape, generator=g) for g in generators]).to(like.device)


Denoise = Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]  # (x, t, text) -> predicted noise, fp32


def _denoiser(unet: nn.Module | Denoise) -> Denoise:
    """A UNet's noise prediction as a function; tav passes its graph-capturing `denoiser.Denoiser` instead."""
    if not isinstance(unet, nn.Module):
        return unet
    return lambda x, t, text: video_forward(unet, x, t, text).float()


def _batch(text: torch.Tensor, b: int) -> torch.Tensor:
    return text if text.shape[0] == b else text.expand(b, *text.shape[1:])


def guided(denoise: Denoise, x: torch.Tensor, t: int | float | torch.Tensor, text: torch.Tensor,
           uncond: torch.Tensor, guidance: float) -> torch.Tensor:
    """Classifier-free guided noise prediction; cond and uncond go through the UNet as one batch. A batch
    of B videos (several seeds) shares one prompt: `text` and `uncond` (1, L, D) serve all of them."""
    b = x.shape[0]
    if guidance == 1.0:
        return denoise(x, t, _batch(text, b))
    eps_u, eps_c = denoise(torch.cat([x, x]), t, torch.cat([_batch(uncond, b), _batch(text, b)])).split(b)
    return eps_u + guidance * (eps_c - eps_u)


@torch.no_grad()
def invert(
    unet: nn.Module | Denoise, latents: torch.Tensor, text: torch.Tensor, schedule: Schedule,
    callback: Callable[[int], None] | None = None, steps: int | None = None,
) -> torch.Tensor:
    """Run DDIM backwards from clean latents (B, F, 4, h, w) to the noise that regenerates them; with `steps`,
    only the first `steps` of them: the latent at timestep `schedule.tail(steps).timesteps[0]`, from which
    `sample(..., schedule.tail(steps))` runs the rest (a partial, SDEdit-style inversion)."""
    eps, x = _denoiser(unet), latents.float()
    for i, (t, t_prev) in enumerate(list(reversed(schedule.pairs()))[:steps]):
        x = ddim_step(x, eps(x, t, text), schedule.alpha(t_prev), schedule.alpha(t))
        if callback is not None:
            callback(i)
    return x


@torch.no_grad()
def sample(
    unet: nn.Module | Denoise, noise: torch.Tensor, text: torch.Tensor, uncond: torch.Tensor, schedule: Schedule,
    guidance: float, callback: Callable[[int], None] | None = None, eta: float = 0.0,
    noise_sampler: Callable[[], torch.Tensor] | None = None,
) -> torch.Tensor:
    """DDIM sampling with classifier-free guidance from `noise` (B, F, 4, h, w), B videos of one prompt.
    With eta > 0, `noise_sampler()` draws each step's fresh noise (`seeded_noise`)."""
    denoise, x = _denoiser(unet), noise.float()
    if eta and noise_sampler is None:
        raise ValueError("eta > 0 draws noise at each step: give a noise_sampler (ddim.seeded_noise)")
    for i, (t, t_prev) in enumerate(schedule.pairs()):
        eps = guided(denoise, x, t, text, uncond, guidance)
        x = ddim_step(x, eps, schedule.alpha(t), schedule.alpha(t_prev), eta, noise_sampler() if eta else None)
        if callback is not None:
            callback(i)
    return x


# --- diffusers' schedulers, from noise -----------------------------------------------------------------

# by tav's names (tavcli.method.params.Scheduler's values); LMS: see _lms
_SCHEDULERS = {"ddim": "DDIMScheduler", "dpm++": "DPMSolverMultistepScheduler", "euler": "EulerDiscreteScheduler",
               "euler-a": "EulerAncestralDiscreteScheduler", "pndm": "PNDMScheduler"}


def diffusers_scheduler(name: str, scheduler_config: dict, steps: int):
    """One of diffusers' schedulers, configured as the base's own (betas, spacing, offset, prediction type),
    its timesteps set for `steps` steps."""
    name = str(name)
    if name == "lms":
        scheduler = _lms().from_config(scheduler_config)
    else:
        import diffusers

        # PNDM as SD v1's own config runs it: PLMS only, without the Runge-Kutta warm-up (3 x 4 more UNet calls)
        extra = {"skip_prk_steps": True} if name == "pndm" else {}
        scheduler = getattr(diffusers, _SCHEDULERS[name]).from_config(scheduler_config, **extra)
    scheduler.set_timesteps(steps)
    return scheduler


def _lms():
    """diffusers' LMSDiscreteScheduler, its coefficients integrated exactly rather than by scipy's quad: the
    integrand is a polynomial (a Lagrange basis of degree < 4), so numpy's antiderivative is exact, and tav
    needs no scipy (without which diffusers offers LMS as a stub)."""
    import numpy as np
    from diffusers.schedulers.scheduling_lms_discrete import LMSDiscreteScheduler

    class LMS(LMSDiscreteScheduler):
        def get_lms_coefficient(self, order: int, t: int, current_order: int) -> float:
            sigma = [float(s) for s in self.sigmas]
            basis = np.polynomial.Polynomial([1.0])
            for k in range(order):
                if k != current_order:
                    basis *= np.polynomial.Polynomial([-sigma[t - k], 1.0]) / (sigma[t - current_order] - sigma[t - k])
            antiderivative = basis.integ()
            return float(antiderivative(sigma[t + 1]) - antiderivative(sigma[t]))

    return LMS


@torch.no_grad()
def sample_with(
    scheduler, unet: nn.Module | Denoise, noise: torch.Tensor, text: torch.Tensor, uncond: torch.Tensor,
    guidance: float, callback: Callable[[int], None] | None = None,
    generators: list[torch.Generator] | None = None,
) -> torch.Tensor:
    """Guided sampling from unit Gaussian `noise` (B, F, 4, h, w) with a diffusers scheduler (timesteps set);
    an ancestral one (euler-a) draws video b's fresh noise from `generators[b]` (CPU generators, carrying on
    from the draw of its start noise). `callback` gets 0 .. steps-1, also where the scheduler takes one step
    more than asked (PNDM's PLMS warm-up repeats one timestep)."""
    denoise, x = _denoiser(unet), noise.float() * scheduler.init_noise_sigma
    random = {"generator": generators} if "generator" in inspect.signature(scheduler.step).parameters else {}
    for i, t in enumerate(scheduler.timesteps):
        eps = guided(denoise, scheduler.scale_model_input(x, t), t, text, uncond, guidance)
        x = scheduler.step(eps, t, x, **random).prev_sample
        if callback is not None:
            callback(min(i, scheduler.num_inference_steps - 1))
    return x
