"""What tav brings with it, so anything can be tried with no download and no GPU: bases with random weights
(`random:tiny`, the tests' small architecture; `random:sd-v1`, Stable Diffusion v1.4's architecture) and a
synthetic clip.

A random base is built once per machine from its seed, into tav's cache folder, and loaded from there like
any diffusers folder; an artifact records it by its name (`random:tiny`), so an edit rebuilds the same
weights wherever it runs (the folder's fingerprint is recorded too, and checked, as for any base). Their
pictures are noise: they exercise the whole path, not the model.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

from tavcli.errors import BadInput

PREFIX = "random:"
ARCHES = ("tiny", "sd-v1")  # tavcli.method.random_base's
_SEED = 0


def is_random(name: str | None) -> bool:
    return bool(name) and name.startswith(PREFIX)


def check(name: str | None) -> None:
    """Refuse a `random:` base tav does not have (before any work), listing the ones it has."""
    if is_random(name) and name[len(PREFIX):] not in ARCHES:
        raise BadInput(f"unknown random base {name!r}; use one of {', '.join(PREFIX + a for a in ARCHES)}")


def locate(name: str) -> str:
    """What to load for base `name`: a random base's cached folder (built on first use), else `name` itself."""
    check(name)
    if not is_random(name):
        return name
    arch = name[len(PREFIX):]
    from tavcli.app.caches import cache_dir

    folder = cache_dir() / "bases" / f"random-{arch}-seed{_SEED}"
    if not (folder / "model_index.json").is_file():
        _build(arch, folder)
    return str(folder)


def _build(arch: str, folder: Path) -> None:
    """Write the random base beside `folder` and rename it into place: two processes at once both succeed."""
    import torch

    from tavcli.method.random_base import save_random_base

    folder.parent.mkdir(parents=True, exist_ok=True)
    part = folder.parent / f".{folder.name}.{secrets.token_hex(4)}.part"
    try:  # sd-v1 in fp16: 2 GB instead of 4; every load casts to the run's dtype
        save_random_base(part, arch=arch, seed=_SEED, dtype=torch.float32 if arch == "tiny" else torch.float16)
        try:
            os.rename(part, folder)
        except OSError:  # another process finished first: its folder is the same
            if not (folder / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(part, ignore_errors=True)


def synthetic_clip(path: Path, frames: int = 8, size: int = 64, fps: float = 8.0) -> Path:
    """A clip of smoothly moving colour waves: video-like frames for the encoder, made in milliseconds."""
    import numpy as np

    from tavcli.method.video import write_video

    y, x = np.mgrid[0:size, 0:size] / size
    video = np.stack([np.stack([np.sin(6 * x + t / 3), np.cos(5 * y - t / 4), np.sin(4 * (x + y) + t / 5)], -1)
                      for t in range(frames)])
    return write_video(path, ((video + 1) * 127.5).astype(np.uint8), fps=fps)
