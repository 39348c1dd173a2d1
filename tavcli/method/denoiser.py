"""The UNet's noise prediction as tav samples with it: eager under autocast, or replayed as CUDA graphs."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from tavcli.engine.graphs import CudaGraph
from tavcli.engine.runtime import autocast_for
from tavcli.method.attention import video_forward


class Denoiser:
    """The UNet's noise prediction during sampling. On a GPU, each input shape's forward runs as a CUDA graph
    (`tavcli.engine.graphs`): sampling is dominated by launching ~1,700 small kernels per UNet call, which a
    replay issues in one go. One Denoiser serves every prompt of an edit, and inversion and sampling alike.
    """

    # Eager calls per shape before its capture: the first does the lazy inits (cuDNN's plans, Triton's
    # kernels, cuBLAS's handles); a second one cost an eager call more (~80 ms, ~0.2 s guided) for nothing.
    warmup = 1

    def __init__(self, unet: nn.Module, cuda_graphs: bool = True):
        self.unet = unet
        mixed = not isinstance(autocast_for(unet), contextlib.nullcontext)  # autocast's caches break replay
        self.graphs = cuda_graphs and unet.conv_in.weight.device.type == "cuda" and not mixed
        self._graphed: dict[tuple, tuple] = {}

    def __call__(self, x: torch.Tensor, t: int | float | torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        if not self.graphs:
            with autocast_for(self.unet):
                return video_forward(self.unet, x, t, text).float()
        fractional = torch.is_floating_point(torch.as_tensor(t))  # Euler's and LMS's timesteps are not whole
        key = (tuple(x.shape), tuple(text.shape), fractional)
        if key not in self._graphed:
            static_x, static_text = torch.empty_like(x), torch.empty_like(text)
            static_t = torch.zeros((), dtype=torch.float32 if fractional else torch.long,
                                   device=x.device)  # a device tensor: no copy in replay
            graph = CudaGraph(lambda: video_forward(self.unet, static_x, static_t, static_text), self.warmup)
            self._graphed[key] = graph, static_x, static_t, static_text
        graph, static_x, static_t, static_text = self._graphed[key]
        static_x.copy_(x)
        static_t.fill_(t)
        static_text.copy_(text)
        return graph().to(torch.float32, copy=True)  # a replay overwrites its output at the next call

