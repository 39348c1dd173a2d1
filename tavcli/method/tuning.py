"""One-shot tuning (Tune-A-Video, §3.3): DDPM noise-prediction loss on one clip and its caption."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from tavcli.engine.graphs import CudaGraph
from tavcli.engine.runtime import MasterWeights, Runtime, Work, attention_kernels, autocast_for
from tavcli.errors import BadInput
from tavcli.method.attention import kernels_chosen, video_forward
from tavcli.method.params import TuneSettings


@dataclass
class ClipLatents:
    """What tuning needs of the clip, computed once: its VAE posterior (scaled) and caption embedding."""

    mean: torch.Tensor  # (1, F, 4, h, w)
    std: torch.Tensor  # (1, F, 4, h, w)
    text: torch.Tensor  # (1, 77, D)


# Fitted on an H200 (`tav bench`, 2026-12-04, docs/performance.md round 6: 8.35 GiB at 8 frames, 19.37 at
# 24, so 0.69 GiB per frame and 2.84 besides), rounded up: activations of one 512x512 frame for backward, and
# what weights, optimizer state and workspace take besides.
_GIB_PER_FRAME_512 = 0.75
_GIB_FIXED = 3.0


_PER_FRAME_LOW_MEMORY = 0.25  # the same with gradient checkpointing: 4.30 GiB at 8 frames, 7.68 at 24 (H200)
_SD_WIDTH = 320  # SD v1's first UNet block's channels, which the figures above are for


def estimate_gib(frames: int, width: int, height: int, low_memory: bool = False, fp32: bool = False,
                 unet_width: int | None = None) -> float:
    """GiB a tuning step of this clip takes, from the figures above: fp32 doubles them; a UNet narrower than
    SD v1's (`unet_width`, its first block's channels) takes proportionally less."""
    per_frame = _PER_FRAME_LOW_MEMORY if low_memory else _GIB_PER_FRAME_512
    gib = _GIB_FIXED + per_frame * frames * width * height / 512**2
    return gib * (2 if fp32 else 1) * (unet_width or _SD_WIDTH) / _SD_WIDTH


def recompute_without_rng(module: nn.Module, *args: Any) -> Any:
    """Gradient checkpointing (non-reentrant) that does not save and restore the RNG state around the
    recompute: reading CUDA's RNG state is not allowed while a CUDA graph captures, and the UNet draws no
    random numbers in its forward (a step's noise is drawn before it, into `StepNoise`'s buffers), so the
    recompute is the forward either way. This lets a `--low-memory` step run as a CUDA graph too."""
    return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False, preserve_rng_state=False)


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
    raise BadInput(f"unsupported prediction type {prediction!r}")


@dataclass
class StepNoise:
    """One step's randomness, drawn into fixed buffers so that a CUDA graph of the step can replay it."""

    draw: torch.Tensor  # the posterior sample's noise
    noise: torch.Tensor  # the diffusion noise
    t: torch.Tensor  # one timestep per clip

    @classmethod
    def like(cls, clip: ClipLatents) -> StepNoise:
        t = torch.zeros(1, dtype=torch.long, device=clip.mean.device)
        return cls(torch.empty_like(clip.mean), torch.empty_like(clip.mean), t)

    def draw_(self, g: torch.Generator, timesteps: int) -> None:
        self.draw.normal_(generator=g)
        self.noise.normal_(generator=g)
        self.t.random_(0, timesteps, generator=g)


def train_step(unet: nn.Module, clip: ClipLatents, noise: StepNoise, alphas: torch.Tensor, prediction: str,
               optimizer: torch.optim.Optimizer, max_grad_norm: float, masters: MasterWeights | None) -> torch.Tensor:
    """One step of the paper's tuning: noise the clip's latents, predict the noise, MSE, AdamW; the loss."""
    x0 = clip.mean + clip.std * noise.draw  # a sample of the VAE posterior
    a = alphas[noise.t].view(1, 1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise.noise
    with autocast_for(unet):
        pred = video_forward(unet, xt, noise.t, clip.text)
    loss = F.mse_loss(pred.float(), diffusion_target(x0, noise.noise, a, prediction))
    loss.backward()
    if masters:
        masters.grads_to_masters()
    trained = [p for group in optimizer.param_groups for p in group["params"]]
    torch.nn.utils.clip_grad_norm_(trained, max_grad_norm, foreach=True)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if masters:
        masters.masters_to_params()
    return loss.detach()


# Eager steps before the capture: the first does the lazy inits (cuDNN's plans, AdamW's state, the grads'
# first allocation); two more cost ~0.3 s each of eager launches for nothing the capture needs.
GRAPH_WARMUP = 1


@dataclass
class TuneState:
    """A tune after `step` steps, besides its weights (an adapter, saved in fp32): what continues it bit for
    bit. `optimizer` is AdamW's `state_dict()` (CPU tensors), `generator` the step noise generator's state.
    """

    step: int
    optimizer: dict
    generator: torch.Tensor
    losses: list[float]


class Loop:
    """The tuning loop between two steps, as `tune`'s `between` hook sees it: how far it is, its state, and
    the model ready for something else (a preview) without changing what the next step computes."""

    def __init__(self, unet: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator,
                 masters: MasterWeights | None, losses: list[torch.Tensor]):
        self.unet, self.optimizer, self.generator = unet, optimizer, generator
        self.masters, self.losses = masters, losses

    @property
    def step(self) -> int:
        """Steps done."""
        return len(self.losses)

    def state(self) -> TuneState:
        return TuneState(self.step, _to_cpu(self.optimizer.state_dict()), self.generator.get_state(),
                         torch.stack(self.losses).tolist() if self.losses else [])

    @contextlib.contextmanager
    def fp32_weights(self) -> Iterator[None]:
        """The trained weights' fp32 values in the model (for saving an adapter); as they were after."""
        if self.masters is None:
            yield
            return
        with self.masters.swapped_in():
            yield

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The model in eval mode, without gradients, the global RNGs forked: for sampling with the current
        weights. The step noise comes from the loop's own generator, which nothing here draws from."""
        devices = [self.generator.device] if self.generator.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            self.unet.eval()
            try:
                yield
            finally:
                self.unet.train()


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


def _restore(state: TuneState, optimizer: torch.optim.Optimizer, g: torch.Generator,
             device: torch.device) -> list[torch.Tensor]:
    try:
        optimizer.load_state_dict(state.optimizer)
    except (ValueError, KeyError) as e:
        raise BadInput(f"the saved tuning state does not fit this model ({e})") from None
    g.set_state(state.generator)
    return [torch.tensor(x, dtype=torch.float32, device=device) for x in state.losses]


def tune(
    unet: nn.Module,
    params: list[nn.Parameter],
    clip: ClipLatents,
    alphas_cumprod: torch.Tensor,
    settings: TuneSettings = TuneSettings(),
    prediction: str = "epsilon",
    callback: Callable[[int, torch.Tensor], None] | None = None,
    runtime: Runtime = Runtime(),
    between: Callable[[Loop], None] | None = None,
    resume: TuneState | None = None,
) -> list[float]:
    """Train `params` of the inflated `unet` on one clip; returns the loss of every step.

    `callback(step, loss)` gets the loss as a 0-d tensor: reading it (`float(loss)`) waits for the GPU,
    so a caller that only draws a bar now and then keeps the step loop free of syncs. `between(loop)` runs
    after every step (previews, checkpoints, saving the state); `resume` continues from a saved state (its
    weights already in `params`), to the same result as a tune never stopped (bit for bit on the CPU).
    """
    device = clip.mean.device
    if not params:
        raise BadInput("nothing to train: these weights were set for inference; create a new TuneAVideo")
    frozen = unet.conv_in.weight.dtype
    masters = MasterWeights.wanted(params, frozen)
    cuda = device.type == "cuda"  # fused: one kernel for the whole update; capturable: graph-safe
    optimizer = torch.optim.AdamW(masters.masters if masters else params, lr=settings.lr, betas=settings.betas,
                                  weight_decay=settings.weight_decay, fused=cuda, foreach=not cuda, capturable=cuda)
    checkpointing = runtime.low_memory or needs_checkpointing(clip, device)
    # fp16 trains under autocast, whose cast cache does not survive a replay
    graphed = runtime.cuda_graphs and cuda and frozen != torch.float16
    if checkpointing:  # non-reentrant, as diffusers' own: every parameter gets its gradient
        unet.enable_gradient_checkpointing(recompute_without_rng if graphed else None)
    unet.train()
    alphas, noise = alphas_cumprod.to(device), StepNoise.like(clip)

    def step() -> torch.Tensor:
        return train_step(unet, clip, noise, alphas, prediction, optimizer, settings.max_grad_norm, masters)

    run = CudaGraph(step, GRAPH_WARMUP) if graphed else step
    g = torch.Generator(device).manual_seed(settings.seed)
    losses: list[torch.Tensor] = []
    if resume is not None:
        losses = _restore(resume, optimizer, g, device)
    loop = Loop(unet, optimizer, g, masters, losses)
    kernels = attention_kernels(runtime.attention_kernel, Work.TUNING, device)
    with kernels_chosen(unet, kernels):  # chosen eagerly, kept by the capture
        if resume is not None and between is not None:
            between(loop)  # what the stopped run had not finished at this step (a preview) is done now
        for i in range(len(losses), settings.steps):
            noise.draw_(g, len(alphas))
            losses.append(run().clone())  # a replay overwrites its loss at the next step
            if callback is not None:
                callback(i, losses[-1])
            if between is not None:
                between(loop)
    if masters:
        masters.restore()
    unet.eval()
    if checkpointing:
        unet.disable_gradient_checkpointing()
    return torch.stack(losses).tolist() if losses else []
