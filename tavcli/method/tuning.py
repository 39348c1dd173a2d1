"""One-shot tuning (Tune-A-Video, §3.3): DDPM noise-prediction loss on one clip and its caption."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tavcli.method.attention import video_forward


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
    cuda_graphs: bool = True  # replay each step as one CUDA graph (GPU, without checkpointing)
    compile: bool = False  # torch.compile the UNet's repeated blocks first (tavcli.engine.compiling): minutes, cold


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


# Fitted on an H100 with bf16 master weights (10.91 GiB at 8 frames, 26.27 at 24), rounded up: activations
# of one 512x512 frame for backward, and what weights, optimizer state and workspace take besides. Since
# measured on an H200: 9.73 and 23.51 GiB (docs/performance.md), so these now leave more headroom.
_GIB_PER_FRAME_512 = 1.0
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


class TrainStep:
    """One optimisation step on fixed input buffers, so that on a GPU it can be captured once as a CUDA
    graph and replayed: a step launches ~2,000 kernels, and issuing them one by one from Python costs
    about a third of an eager step's time (docs/performance.md).
    """

    warmup = 3  # eager steps before the capture: lazy inits, cuDNN autotuning, the allocator settling

    def __init__(self, unet: nn.Module, clip: ClipLatents, alphas: torch.Tensor, prediction: str,
                 optimizer: torch.optim.Optimizer, max_grad_norm: float, masters: MasterWeights | None,
                 graphs: bool):
        self.unet, self.clip, self.alphas, self.prediction = unet, clip, alphas, prediction
        self.optimizer, self.max_grad_norm, self.masters = optimizer, max_grad_norm, masters
        self.trained = [p for group in optimizer.param_groups for p in group["params"]]
        self.autocast = autocast_for(unet)
        self.graphs = graphs
        self.graph: torch.cuda.CUDAGraph | None = None
        self.steps_run = 0
        self.draw = torch.empty_like(clip.mean)  # the posterior sample's noise
        self.noise = torch.empty_like(clip.mean)  # the diffusion noise
        self.t = torch.zeros(1, dtype=torch.long, device=clip.mean.device)

    def __call__(self, g: torch.Generator) -> torch.Tensor:
        """Draw this step's randomness from `g`, take the step, return its loss (a 0-d tensor)."""
        self.draw.normal_(generator=g)
        self.noise.normal_(generator=g)
        self.t.random_(0, len(self.alphas), generator=g)  # one timestep per clip
        self.steps_run += 1
        if not self.graphs:
            return self._step()
        if self.steps_run <= self.warmup:
            side = torch.cuda.Stream()  # warm-up off the default stream, as graph capture asks
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                loss = self._step()
            torch.cuda.current_stream().wait_stream(side)
            return loss
        if self.graph is None:
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):  # records the step without running it
                self.loss = self._step()
        self.graph.replay()
        return self.loss.clone()

    def _step(self) -> torch.Tensor:
        x0 = self.clip.mean + self.clip.std * self.draw
        a = self.alphas[self.t].view(1, 1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * self.noise
        with self.autocast:
            pred = video_forward(self.unet, xt, self.t, self.clip.text)
        loss = F.mse_loss(pred.float(), diffusion_target(x0, self.noise, a, self.prediction))
        loss.backward()
        if self.masters:
            self.masters.grads_to_masters()
        torch.nn.utils.clip_grad_norm_(self.trained, self.max_grad_norm, foreach=True)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.masters:
            self.masters.masters_to_params()
        return loss.detach()


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
    if not params:
        raise ValueError("nothing to train: these weights were set for inference; create a new TuneAVideo")
    # bf16 on a GPU: master weights (no autocast); fp32 on CPU: plain; fp16: autocast, as before bf16 existed
    frozen = unet.conv_in.weight.dtype
    masters = MasterWeights(params, frozen) if frozen == torch.bfloat16 else None
    cuda = device.type == "cuda"  # fused: one kernel for the whole update; capturable: graph-safe
    optimizer = torch.optim.AdamW(masters.masters if masters else params, lr=settings.lr, betas=settings.betas,
                                  weight_decay=settings.weight_decay, fused=cuda, foreach=not cuda, capturable=cuda)
    checkpointing = settings.gradient_checkpointing
    if checkpointing is None:
        checkpointing = needs_checkpointing(clip, device)
    if checkpointing:
        unet.enable_gradient_checkpointing()  # diffusers' is non-reentrant: every parameter gets its gradient
    unet.train()
    graphs = settings.cuda_graphs and cuda and not checkpointing and frozen != torch.float16
    step = TrainStep(unet, clip, alphas_cumprod.to(device), prediction, optimizer, settings.max_grad_norm,
                     masters, graphs)
    g = torch.Generator(device).manual_seed(settings.seed)
    losses = []
    for i in range(settings.steps):
        losses.append(step(g))
        if callback is not None:
            callback(i, losses[-1])
    if masters:
        masters.restore()
    unet.eval()
    if checkpointing:
        unet.disable_gradient_checkpointing()
    return torch.stack(losses).tolist() if losses else []
