"""Speed machinery applied to the method from outside: precision, CUDA graphs, compile, fused kernels.

Imports nothing from the method, the application or the faces.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType


@functools.cache
def triton_kernels(module: str) -> ModuleType | None:
    """`tavcli.engine.<module>`, a module of Triton kernels, or None where triton is not importable (torch's
    CPU builds come without it); imported once."""
    try:
        return importlib.import_module(f"tavcli.engine.{module}")
    except ImportError:
        return None
