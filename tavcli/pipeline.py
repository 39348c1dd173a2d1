"""Tune-A-Video as one object: a base, its inflated UNet and an adapter; tune, invert, generate.

    base = load_base("CompVis/stable-diffusion-v1-4")
    tav = TuneAVideo.create(base)
    clip = read_video("man-skiing.mp4")
    tav.tune(clip.frames, "a man is skiing")
    noise = tav.invert(clip.frames)
    videos = tav.generate(["an astronaut is skiing on the moon"], noise=noise)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import adapters, ddim
from .attention import inflate, set_attention_mode
from .models import Base, decode_latents, encode_frames, encode_prompts
from .tuning import ClipLatents, TuneSettings, tune


@dataclass
class TuneAVideo:
    base: Base
    spec: adapters.AdapterSpec
    params: list[nn.Parameter] = field(repr=False)

    @property
    def unet(self) -> nn.Module:
        return self.base.unet

    @classmethod
    def create(cls, base: Base, spec: adapters.AdapterSpec = adapters.AdapterSpec(),
               attention: str = "sparse-causal", norm: str = "clip") -> TuneAVideo:
        """Inflate the base's UNet in place and make `spec`'s parameters trainable."""
        inflate(base.unet, attention=attention, norm=norm, seed=spec.temporal_seed)
        return cls(base, spec, adapters.attach(base.unet, spec))

    @classmethod
    def from_adapter(cls, base: Base, folder: str | Path, attention: str | None = None) -> TuneAVideo:
        """The base plus a saved adapter; `attention` overrides the mode it was tuned with."""
        spec = adapters.read_spec(folder)
        inflate(base.unet, seed=spec.temporal_seed)
        adapters.load_adapter(base.unet, folder)
        set_attention_mode(base.unet, attention or adapters.read_attention(folder))
        return cls(base, spec, [])

    def save_adapter(self, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
        return adapters.save_adapter(self.unet, self.spec, folder, dtype)

    def latents(self, frames: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return encode_frames(self.base, frames)

    def tune(self, frames: np.ndarray, caption: str, settings: TuneSettings = TuneSettings(),
             callback: Callable[[int, torch.Tensor], None] | None = None) -> list[float]:
        """One-shot tuning on uint8 frames (F, H, W, 3); returns the loss of each step."""
        mean, std = self.latents(frames)
        clip = ClipLatents(mean, std, encode_prompts(self.base, [caption]))
        alphas = _alphas_cumprod(self.base.scheduler_config)
        return tune(self.unet, self.params, clip, alphas, settings,
                    self.base.scheduler_config.get("prediction_type", "epsilon"), callback)

    def invert(self, frames: np.ndarray, steps: int = 50, callback: Callable[[int], None] | None = None,
               ) -> torch.Tensor:
        """DDIM-invert the clip's latents (posterior mean) with the empty prompt: (1, F, 4, h, w)."""
        mean, _ = self.latents(frames)
        schedule = ddim.ddim_schedule(self.base.scheduler_config, steps)
        return ddim.invert(self.unet, mean, encode_prompts(self.base, [""]), schedule, callback)

    def generate(self, prompts: list[str], settings: ddim.EditSettings = ddim.EditSettings(),
                 noise: torch.Tensor | None = None, frames: int = 8, height: int = 512, width: int = 512,
                 callback: Callable[[int], None] | None = None) -> np.ndarray:
        """uint8 videos (P, F, H, W, 3), one per prompt, from `noise` (an inversion) or from a seeded draw.

        With `settings.inversion` off, or no `noise`, the start is Gaussian noise of `frames` x `height`
        x `width` (the paper's "w/o inversion" ablation and plain text-to-video).
        """
        if noise is None or not settings.inversion:
            f = self.base.vae_factor
            g = torch.Generator().manual_seed(settings.seed)
            noise = torch.randn(1, frames, 4, height // f, width // f, generator=g).to(self.base.device)
        schedule = ddim.ddim_schedule(self.base.scheduler_config, settings.steps)
        uncond = encode_prompts(self.base, [settings.negative_prompt])
        videos = []
        for text in encode_prompts(self.base, prompts).split(1):
            latents = ddim.sample(self.unet, noise, text, uncond, schedule, settings.guidance, callback)
            videos.append(decode_latents(self.base, latents)[0])
        return np.stack(videos)


def _alphas_cumprod(scheduler_config: dict) -> torch.Tensor:
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(scheduler_config).alphas_cumprod
