"""Where and how fast the method runs: device, precision, CUDA graphs, compile, checkpointing.

`Runtime` is shared by tuning and editing and is not the paper's: no setting here changes what is
computed beyond floating-point round-off. The precision helpers are the engine's mixed precision: bf16
compute with fp32 master weights (`MasterWeights`), or autocast where a model mixes dtypes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from tavcli.errors import BadInput
from tavcli.settings import Mode, Settings, setting

if TYPE_CHECKING:
    import torch
    from torch import nn

T = TypeVar("T")


class Dtype(Mode):
    AUTO = "auto"  # bf16 on a GPU that has it, else fp16 on a GPU, fp32 on the CPU
    BF16 = "bf16"
    FP16 = "fp16"
    FP32 = "fp32"


class AttentionKernel(Mode):
    AUTO = "auto"  # per kind of attention and work, as measured on an H200: see `attention_kernels`
    FLASH = "flash"  # FlashAttention-2, built into PyTorch (bf16/fp16; else memory-efficient, then math)
    CUDNN = "cudnn"  # cuDNN's fused attention: the fastest large attention, but a plan to build per shape
    DEFAULT = "default"  # whichever PyTorch picks (cuDNN on an H100/H200 with torch 2.11)


class Work(Mode):
    TUNING = "tuning"
    INVERSION = "inversion"
    SAMPLING = "sampling"


@dataclass(frozen=True)
class Runtime(Settings):
    device: str = setting("auto", "auto, cpu, cuda or cuda:N.", nonempty=True)
    dtype: Dtype = setting(Dtype.AUTO, "auto, bf16, fp16 or fp32 (the frozen weights).")
    low_memory: bool = setting(False, "Gradient checkpointing: slower steps, far less GPU memory (chosen by "
                                      "itself when the clip would not fit).")
    compile: bool = setting(False, "torch.compile the UNet's repeated blocks: faster steps after minutes of "
                                   "compiling (docs/performance.md).")
    cuda_graphs: bool = setting(True, "Replay each tuning step and each sampling call as a CUDA graph (GPU).")
    attention_kernel: AttentionKernel = setting(AttentionKernel.AUTO, "The UNet's attention kernels: auto, flash, "
                                                "cudnn or default (PyTorch's choice).")


# What `auto` picks (H200, torch 2.11, `benchmarks/attention_kinds.py`, docs/performance.md, 2026-12-02).
# cuDNN builds a plan at each new shape, in every process: ~3.6 s for the tuning step's 64x64-level
# sparse-causal attention, ~1.8 s for each other head dimension. It pays only for the largest attention,
# the 64x64 level's (4096 queries x 8192 keys; 4.2 ms per tuning step's block against flash's 7.7, 2.2 ms
# against 4.3 per guided call); everywhere else flash is as fast and builds nothing. The inversion's 50
# calls save less (1.1 ms per block) than that level's plan costs (0.5 s): flash throughout. The temporal
# attention (sequences of F frames) takes tav's own kernel where it is faster (`triton_temporal.available`),
# else, for the 64x64 level's 32,768 sequences per clip, PyTorch's memory-efficient kernel when sampling
# (0.35 ms per inversion call's block against cuDNN's 0.53 and flash's 0.72) and cuDNN when tuning: the
# memory-efficient kernel was faster there too (1.15 ms against 1.46) but copies the frames-last views and
# keeps the copies for backward, +0.33 GiB per 8-frame step. Flash for the smaller levels.
# Sparse-causal attention's first two frames attend [k1, k1]; `auto` attends those keys once, in a call of
# their own, at the 64x64 level (4096 tokens a frame) and above: -0.53 ms per block of a tuning step, -0.26
# of an inversion call, -0.21 of a guided call at 8 frames, and less kept for backward; at the smaller
# levels the second call cost more than the work it saves (`benchmarks/kernel_sweep.py`, H200, 2026-12-04,
# eager; docs/performance.md, round 7).
_CUDNN_FROM = 1 << 24  # query x key tokens of a sparse-causal attention from which `auto` takes cuDNN
_SHARED_FIRST_KEYS_FROM = 4096  # tokens a frame
_CUDNN_WORK = (Work.TUNING, Work.SAMPLING)
_EFFICIENT_FROM = 1 << 15  # sequences of a temporal attention call from which `auto` leaves flash
# Sparse-causal attention's forward through tav's Triton kernel (`triton_sparse_causal`), per work: tokens a
# frame below which it is taken. Per block at 8 frames (`benchmarks/sparse_causal_sweep.py`, H200, 2026-12-04,
# eager, projections included; docs/performance.md, round 8): an inversion call's 64x64 block 1.34 ms against
# flash's 2.07, so every level; a guided call's 2.67 against cuDNN's 2.34 at 64x64, so below it. Tuning keeps
# SDPA: the kernel has no backward.
_FUSED_FRAMES_BELOW = {Work.INVERSION: 1 << 62, Work.SAMPLING: 64 * 64}


@dataclass(frozen=True)
class KernelChoice:
    """The attention kernels for one kind of work: `sdpa(kind, queries, keys, sequences)` opens the SDPA
    kernels of each attention call (None: PyTorch's choice); `fused_temporal` lets the temporal attention
    take the registered Triton kernel where it is faster; `shared_first_keys` is `kernels_chosen`'s;
    `fused_frames_below` lets sparse-causal attention take the registered Triton kernel (forward only) where
    a frame has fewer tokens (None: nowhere)."""

    sdpa: Callable[[str, int, int, int], contextlib.AbstractContextManager] | None
    fused_temporal: bool
    key: tuple  # what a CUDA-graph capture made with this choice is kept under
    shared_first_keys: int | None = None  # tokens a frame from which the first keys are attended once
    fused_frames_below: int | None = None


def attention_kernels(kernel: AttentionKernel | str, work: Work, device: torch.device) -> KernelChoice:
    """The attention kernels `kernel` means for `work` on `device`.

    `flash`, `cudnn` and `default` give every attention call that SDPA choice (the temporal attention
    too); `auto` chooses per kind and size, as measured (above). The CPU keeps PyTorch's choice and no
    fused kernel: the reference path. The VAE's attention (head dim 512) is never chosen for.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kernel, work = AttentionKernel(kernel), Work(work)
    key = (str(kernel), str(work)) if kernel == AttentionKernel.AUTO else (str(kernel),)
    if device.type != "cuda":
        return KernelChoice(None, False, ("cpu",))
    flash = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    cudnn = [SDPBackend.CUDNN_ATTENTION, *flash]
    if kernel == AttentionKernel.DEFAULT:
        return KernelChoice(None, False, key)
    if kernel in (AttentionKernel.FLASH, AttentionKernel.CUDNN):
        backends = flash if kernel == AttentionKernel.FLASH else cudnn
        return KernelChoice(lambda *call: sdpa_kernel(backends, set_priority=True), False, key)
    efficient = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]

    def auto(kind: str, queries: int, keys: int, sequences: int) -> contextlib.AbstractContextManager:
        if kind == "frames" and queries * keys >= _CUDNN_FROM and work in _CUDNN_WORK:
            return sdpa_kernel(cudnn, set_priority=True)
        if kind == "temporal" and sequences >= _EFFICIENT_FROM:
            return sdpa_kernel(cudnn if work == Work.TUNING else efficient, set_priority=True)
        return sdpa_kernel(flash, set_priority=True)

    return KernelChoice(auto, True, key, _SHARED_FIRST_KEYS_FROM,
                        fused_frames_below=_FUSED_FRAMES_BELOW.get(work))


def resolve_device(device: str = "auto") -> torch.device:
    """The torch device `device` names; a one-line error for a name torch does not know or a GPU not here."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise BadInput(f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BadInput(f"--device {device} was asked for but no CUDA GPU is visible; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise BadInput(f"--device {device!r} is not supported; use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise BadInput(f"--device {device}: there are {torch.cuda.device_count()} GPUs (cuda:0 to "
                       f"cuda:{torch.cuda.device_count() - 1})")
    return dev


def free_memory_gib(device: torch.device) -> float | None:
    """GiB free for a job on `device`: the GPU's free memory, or the host's available memory; None if unknown."""
    import torch

    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] / 2**30
    try:
        with open("/proc/meminfo") as f:  # MemAvailable counts the page cache the kernel would give up
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) / 2**20
    except (OSError, KeyError, ValueError):
        return None


def resolve_dtype(dtype: str | Dtype, device: torch.device) -> torch.dtype:
    import torch

    named = {Dtype.FP32: torch.float32, Dtype.FP16: torch.float16, Dtype.BF16: torch.bfloat16}
    if dtype == Dtype.AUTO:
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    try:
        return named[Dtype(dtype)]
    except ValueError:
        raise BadInput(f"unknown dtype {dtype!r}; choose one of {', '.join(Dtype.choices())}") from None


def autocast_for(unet: nn.Module) -> contextlib.AbstractContextManager:
    """Autocast to the frozen weights' dtype while some weights are fp32 (tuning), so those are cast at use.

    A UNet all in one dtype (fp32 on CPU, or bf16 for inference) runs without autocast and its casts.
    """
    import torch

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
        from torch import nn

        self.params = params
        self.masters = [nn.Parameter(p.detach().float().clone()) for p in params]
        for p in params:
            p.data = p.data.to(dtype)

    @classmethod
    def wanted(cls, params: list[nn.Parameter], frozen: torch.dtype) -> MasterWeights | None:
        """Masters for bf16 frozen weights; None for fp32 (plain) and fp16 (autocast, as before bf16)."""
        import torch

        return cls(params, frozen) if frozen == torch.bfloat16 else None

    def grads_to_masters(self) -> None:
        for m, p in zip(self.masters, self.params):
            m.grad, p.grad = p.grad.float(), None

    def masters_to_params(self) -> None:
        import torch

        torch._foreach_copy_([p.data for p in self.params], [m.data for m in self.masters])

    @contextlib.contextmanager
    def swapped_in(self):
        """The fp32 masters in the params for a while (to save them), then the params' own tensors back:
        the same storage, so a CUDA graph captured on them still reads them."""
        kept = [p.data for p in self.params]
        for m, p in zip(self.masters, self.params):
            p.data = m.data
        try:
            yield
        finally:
            for p, data in zip(self.params, kept):
                p.data = data

    def restore(self) -> None:
        """Leave the fp32 result in the model, as if it had trained in fp32."""
        for m, p in zip(self.masters, self.params):
            p.data = m.data


def in_fitting_batches(render: Callable[[tuple], Sequence[T]], items: tuple) -> list[T]:
    """`render` over `items` as one batch, or, while a batch runs out of accelerator memory, in halves of it
    (down to one item; its memory error is then the caller's). `render(batch)` returns one result per item."""
    import torch

    results: list[T] = []
    size, done = max(1, len(items)), 0
    while done < len(items):
        batch = items[done:done + size]
        try:
            results.extend(render(batch))
        except torch.OutOfMemoryError:
            if size == 1:
                raise
            size = (size + 1) // 2
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        done += len(batch)
    return results
