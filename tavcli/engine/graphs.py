"""One CUDA-graph helper for tuning steps and sampling calls alike.

A tuning step launches ~2,000 kernels and a sampling call ~1,700; issuing them one by one from Python
costs about a third of an eager step (docs/performance.md). `CudaGraph` wraps a function of fixed input
buffers: its first `warmup` calls run eagerly on a side stream (lazy inits, cuDNN autotuning and the
allocator settle there, as capture asks), the next call captures it once, and every call from then on
replays the capture. Callers write their inputs into the buffers the function reads before each call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class CudaGraph(Generic[T]):
    """`fn()` on static buffers, captured at its (`warmup` + 1)-th call and replayed from then on.

    What a replay returns is the captured output's storage, overwritten by the next replay: copy what
    must outlive it.
    """

    def __init__(self, fn: Callable[[], T], warmup: int):
        self.fn, self.warmup = fn, warmup
        self.calls = 0
        self.graph = None
        self.out: T | None = None

    def __call__(self) -> T:
        import torch

        self.calls += 1
        if self.calls <= self.warmup:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                out = self.fn()
            torch.cuda.current_stream().wait_stream(side)
            return out
        if self.graph is None:
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):  # records the call without running it
                self.out = self.fn()
        self.graph.replay()
        return self.out
