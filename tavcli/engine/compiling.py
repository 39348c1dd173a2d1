"""Regional `torch.compile` of an inflated UNet: the repeated blocks, not the whole network.

Much of a UNet step is small memory-bound kernels around the matrix products (norms, GEGLU, residuals,
the reshapes of the frame attentions), which inductor fuses. A compile of the whole UNet's tuning step
had not finished after 7 minutes on an H100; compiling its repeated blocks compiles each distinct block
shape once and reuses the code for every block of that shape (docs/performance.md has the measured
times). Where inductor keeps its on-disk cache is the caller's choice: `tavcli.app.jobs` puts it in tav's.
"""

from __future__ import annotations

from torch import nn

# The blocks compiled: each transformer (its GroupNorm, projections and every transformer block with the
# temporal hook) and each resnet. What stays eager is glue: the time embedding, up/down-sampling convs.
REGIONS = ("Transformer2DModel", "ResnetBlock2D")


def compile_regions(unet: nn.Module, mode: str | None = None, backend: str = "inductor") -> int:
    """Compile every block of `unet` whose class is in REGIONS in place; returns how many were wrapped.

    Shapes are static (one graph per distinct block shape, not a dynamic-shape graph), and the recompile
    limit is raised to cover a UNet's ~20 distinct blocks, which share one code object's cache.
    `backend="aot_eager"` traces the same graphs without generating kernels (tests use it on CPU).
    """
    import torch

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit, 512)
    wrapped = 0
    for module in unet.modules():
        if any(cls.__name__ in REGIONS for cls in type(module).__mro__):  # and tav's subclasses (engine.layout)
            module.compile(backend=backend, mode=mode, dynamic=False)
            wrapped += 1
    return wrapped
