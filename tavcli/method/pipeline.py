"""Tune-A-Video as one object: a base, its inflated UNet and an adapter; tune, invert, generate.

    base = load_base("CompVis/stable-diffusion-v1-4")
    tav = TuneAVideo.create(base)
    clip = read_video("man-skiing.mp4")
    tav.tune(clip.frames, "a man is skiing")
    tav.for_inference()                  # explicit: casts the tuned weights for fast sampling
    noise = tav.invert(clip.frames)
    videos = tav.generate(["an astronaut is skiing on the moon"], noise=noise)
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tavcli.engine import compiling
from tavcli.engine.runtime import Runtime, Work, attention_kernels, in_fitting_batches
from tavcli.method import adapters, ddim
from tavcli.engine.geglu import recompute_geglus
from tavcli.engine.layout import use_channels_last
from tavcli.engine import triton_groupnorm, triton_sparse_causal, triton_temporal
from tavcli.method.attention import (
    inflate,
    kernels_chosen,
    use_fast_norm,
    use_fast_sparse_causal,
    use_fast_temporal,
)
from tavcli.method.denoiser import Denoiser
from tavcli.method.models import Base, decode_latents, encode_frames, encode_prompts, encoders_parked
from tavcli.method.params import AdapterSpec, Attention, EditSettings, Scheduler, TuneSettings, partial_steps
from tavcli.method.tuning import ClipLatents, Loop, TuneState, tune

use_fast_norm(triton_groupnorm.available, triton_groupnorm.clip_group_norm)  # on a GPU, with triton
use_fast_temporal(triton_temporal.available, triton_temporal.temporal_attention)  # likewise
use_fast_sparse_causal(triton_sparse_causal.available, triton_sparse_causal.sparse_causal_attention)


@dataclass
class TuneAVideo:
    base: Base
    spec: AdapterSpec
    params: list[nn.Parameter] = field(repr=False)
    tuned_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)  # fp32, once cast for inference
    compiled: bool = False
    # One Denoiser per runtime, shared by the inversion and every prompt of every edit with
    # these weights, so each input shape is warmed up and captured once; dropped when the weights move.
    _denoisers: dict[tuple, Denoiser] = field(default_factory=dict, init=False, repr=False)
    # The clip last encoded, and its latents: `tav tune` inverts the clip it has just tuned on.
    _encoded: tuple[np.ndarray, tuple[torch.Tensor, torch.Tensor]] | None = field(default=None, init=False,
                                                                                 repr=False)

    @property
    def unet(self) -> nn.Module:
        return self.base.unet

    @classmethod
    def create(cls, base: Base, spec: AdapterSpec = AdapterSpec()) -> TuneAVideo:
        """Inflate the base's UNet in place (as `spec` says) and make `spec`'s parameters trainable."""
        inflate(base.unet, attention=spec.attention, norm=spec.norm, seed=spec.temporal_seed)
        recompute_geglus(base.unet)  # same outputs and gradients, a third less kept for backward in the FFs
        use_channels_last(base.unet)  # on a GPU: no layout conversions around every convolution
        return cls(base, spec, adapters.attach(base.unet, spec))

    @classmethod
    def from_adapter(cls, base: Base, folder: str | Path, attention: Attention | str | None = None,
                     scale: float = 1.0) -> TuneAVideo:
        """The base plus a saved adapter, rebuilt as its stored spec says; `attention` overrides its mode.
        `scale` scales the tuned deltas (`adapters.scale_adapter`: 0 is the base's weights, 1 the tuned ones)."""
        spec = adapters.read_spec(folder)
        if attention is not None:
            spec = spec.replace(attention=attention)
        inflate(base.unet, attention=spec.attention, norm=spec.norm, seed=spec.temporal_seed)
        recompute_geglus(base.unet)
        use_channels_last(base.unet)
        adapters.load_adapter(base.unet, folder, scale=scale)
        base.unet.to(base.dtype)
        return cls(base, spec, [], tuned_state={})

    def compile(self, backend: str = "inductor") -> TuneAVideo:
        """Compile the UNet's repeated blocks (once); each input shape and grad mode compiles at first use."""
        if not self.compiled:
            compiling.compile_regions(self.unet, backend=backend)
            self.compiled = True
            self._denoisers.clear()
        return self

    @contextlib.contextmanager
    def denoising(self, runtime: Runtime = Runtime(), work: Work = Work.SAMPLING) -> Iterator[Denoiser]:
        """The sampler's UNet call for these weights, with the attention kernels `runtime` chooses for `work`
        set while the context is open. Made once per CUDA-graphs setting and kernel choice: a capture keeps
        the kernels it was recorded with, and serves every later call of its shapes."""
        choice = attention_kernels(runtime.attention_kernel, work, self.base.device)
        key = (runtime.cuda_graphs, choice.key)
        if key not in self._denoisers:
            self._denoisers[key] = Denoiser(self.unet, runtime.cuda_graphs)
        with kernels_chosen(self.unet, choice):
            yield self._denoisers[key]

    def save_adapter(self, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
        return adapters.save_adapter(self.unet, self.spec, folder, dtype, state=self.tuned_state or None)

    def for_inference(self) -> TuneAVideo:
        """Cast the tuned weights to the frozen weights' dtype, so sampling runs without autocast's casts
        (and as CUDA graphs). An explicit call: after it the object samples only; tuning further needs a
        new one. Their fp32 values are kept (on the CPU) for `save_adapter`.
        """
        if self.tuned_state is None and self.base.dtype != torch.float32:
            self.tuned_state = {k: v.detach().to("cpu", copy=True) for k, v in
                                adapters.adapter_state(self.unet, self.spec).items()}
            self.unet.to(self.base.dtype)
            self.params = []
            self._denoisers.clear()  # captured graphs read the weights' old storage
        return self

    def latents(self, frames: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE posterior's mean and std of uint8 frames, encoded once for the same array."""
        if self._encoded is None or self._encoded[0] is not frames:
            self._encoded = frames, encode_frames(self.base, frames)
        return self._encoded[1]

    def tune(self, frames: np.ndarray, caption: str, settings: TuneSettings = TuneSettings(),
             callback: Callable[[int, torch.Tensor], None] | None = None, runtime: Runtime = Runtime(),
             between: Callable[[Loop], None] | None = None, resume: TuneState | None = None,
             park: bool = True) -> list[float]:
        """One-shot tuning on uint8 frames (F, H, W, 3); returns the loss of each step.

        `between` and `resume` are `tuning.tune`'s (a resumed tune's weights are loaded first, with
        `load_weights`); `park=False` keeps the VAE and text encoder on the device (previews decode).
        """
        if runtime.compile:
            self.compile()
        mean, std = self.latents(frames)
        clip = ClipLatents(mean, std, encode_prompts(self.base, [caption]))
        alphas = _alphas_cumprod(self.base.scheduler_config)
        self._denoisers.clear()  # the tuned weights end up in new storage
        with encoders_parked(self.base) if park else contextlib.nullcontext():
            return tune(self.unet, self.params, clip, alphas, settings,
                        self.base.scheduler_config.get("prediction_type", "epsilon"), callback, runtime,
                        between, resume)

    def load_weights(self, folder: str | Path) -> None:
        """The tuned tensors of a saved adapter of this spec into this (trainable) model: a resumed tune."""
        adapters.load_into(self.unet, self.spec, folder)

    def previewer(self, frames: np.ndarray, prompts: list[str], steps: int = 50,
                  guidance: float = 12.5) -> Callable[..., np.ndarray]:
        """`render(i, callback)`: prompt i's video with the model as it is then, as the official validation
        samples mid-tune: DDIM inversion of the clip (`steps`, empty prompt), then guided DDIM sampling.
        The clip and the prompts are encoded now, once; `callback` counts 2 x `steps` UNet steps."""
        mean, _ = self.latents(frames)
        empty, texts = encode_prompts(self.base, [""]), encode_prompts(self.base, prompts)
        schedule = ddim.ddim_schedule(self.base.scheduler_config, steps)

        def render(i: int, callback: Callable[[int], None] | None = None) -> np.ndarray:
            denoise = Denoiser(self.unet, cuda_graphs=False)  # mid-tune: no captures of its own
            later = None if callback is None else (lambda j: callback(steps + j))
            noise = ddim.invert(denoise, mean, empty, schedule, callback)
            latents = ddim.sample(denoise, noise, texts[i:i + 1], empty, schedule, guidance, later)
            return decode_latents(self.base, latents)[0]

        return render

    def invert(self, frames: np.ndarray, steps: int = 50, callback: Callable[[int], None] | None = None,
               runtime: Runtime = Runtime(), strength: float = 1.0) -> torch.Tensor:
        """DDIM-invert the clip's latents (posterior mean) with the empty prompt: (1, F, 4, h, w).

        With `strength` S < 1, only the first round(S * steps) of the `steps` inversion steps: the latent an
        edit of strength S with `steps` sampling steps starts from (pass it to `generate` as `noise`).
        """
        mean, _ = self.latents(frames)
        schedule = ddim.ddim_schedule(self.base.scheduler_config, steps)
        empty = encode_prompts(self.base, [""])
        upto = None if strength == 1 else partial_steps(strength, steps)
        with self.denoising(runtime, Work.INVERSION) as denoise:
            return ddim.invert(denoise, mean, empty, schedule, callback, upto)

    def generate(self, prompts: list[str], settings: EditSettings = EditSettings(),
                 noise: torch.Tensor | None = None, frames: int = 8, height: int = 512, width: int = 512,
                 callback: Callable[[int], None] | None = None, runtime: Runtime = Runtime()) -> np.ndarray:
        """uint8 videos (P * N, F, H, W, 3): for each prompt in turn, one per seed of `settings.videos_seeds`.

        `noise` is the clip's inversion: `invert(clip, steps)` for strength 1; for a strength S < 1, the
        partial one on the edit's own schedule, `invert(clip, settings.steps, strength=S)`, from which only
        the last round(S * steps) steps are sampled. With `settings.inversion` off, or no `noise`, each video
        starts from Gaussian noise of `frames` x `height` x `width` drawn from its seed (the paper's "w/o
        inversion" ablation and plain text-to-video). A video depends on its prompt and seed only, not on
        what else is rendered with it: the seeds of a prompt run as one batch, halved while it does not fit.
        """
        if runtime.compile:
            self.compile()
        from_noise = noise is None or not settings.inversion
        if settings.strength < 1 and from_noise:
            raise ValueError("an edit of strength < 1 starts from the partial inversion: pass "
                             "noise=invert(clip, settings.steps, strength=settings.strength)")
        schedule = ddim.ddim_schedule(self.base.scheduler_config, settings.steps)
        if settings.strength < 1:
            schedule = schedule.tail(settings.partial_steps())
        f = self.base.vae_factor
        shape = (1, frames, 4, height // f, width // f)
        uncond = encode_prompts(self.base, [settings.negative_prompt])

        def render(text: torch.Tensor, seeds: tuple[int, ...]) -> np.ndarray:
            generators = [torch.Generator().manual_seed(seed) for seed in seeds]  # CPU: the same on any device
            start = (torch.cat([torch.randn(shape, generator=g) for g in generators]).to(self.base.device)
                     if from_noise else noise.expand(len(seeds), *noise.shape[1:]))
            with self.denoising(runtime) as denoise:  # one capture serves every prompt
                if settings.scheduler == Scheduler.DDIM:
                    draw = ddim.seeded_noise(generators, start) if settings.eta else None
                    latents = ddim.sample(denoise, start, text, uncond, schedule, settings.guidance, callback,
                                          settings.eta, draw)
                else:  # a fresh scheduler for each batch: multistep ones keep state
                    scheduler = ddim.diffusers_scheduler(settings.scheduler, self.base.scheduler_config,
                                                         settings.steps)
                    latents = ddim.sample_with(scheduler, denoise, start, text, uncond, settings.guidance,
                                               callback, generators)
            return decode_latents(self.base, latents)
        videos = []
        for text in encode_prompts(self.base, prompts).split(1):
            videos.extend(in_fitting_batches(functools.partial(render, text), settings.videos_seeds))
        return np.stack(videos)


def _alphas_cumprod(scheduler_config: dict) -> torch.Tensor:
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(scheduler_config).alphas_cumprod
