"""On a GPU: which SDPA backend serves the sampling UNet best, counting the first call at new shapes (cuDNN
builds execution plans there) as well as the steady CUDA-graph replays. One backend per process, after a
short tune as in `tav tune`; random SD v1.4 weights. Only the UNet calls run under the chosen backend:
the VAE's attention (head dim 512) has no flash kernel.

    python benchmarks/check_sdpa.py cudnn|flash|efficient|math|default [--tiny]   (--tiny: a CPU smoke run)
"""

from __future__ import annotations

import contextlib
import json
import sys
import time

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from tavcli.faces.bench import _base_folder
from tavcli.method import ddim
from tavcli.method.denoiser import Denoiser
from tavcli.method.models import encode_prompts, load_base
from tavcli.method.pipeline import TuneAVideo
from tavcli.method.tuning import TuneSettings

BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn):
    sync()
    t = time.perf_counter()
    out = fn()
    sync()
    return out, round(time.perf_counter() - t, 3)


def main() -> None:
    name, tiny = sys.argv[1], "--tiny" in sys.argv
    base = load_base(str(_base_folder(tiny=tiny)))
    tav = TuneAVideo.create(base)
    size = 64 if tiny else 512
    frames = np.random.default_rng(0).integers(0, 256, (8, size, size, 3), dtype=np.uint8)
    tav.tune(frames, "a man is skiing", TuneSettings(steps=2 if tiny else 5))
    out: dict = {"backend": name}
    tav.for_inference()
    mean, _ = tav.latents(frames)
    empty, text = encode_prompts(base, [""]), encode_prompts(base, ["an astronaut is skiing"])
    schedule = ddim.ddim_schedule(base.scheduler_config, 50)
    context = sdpa_kernel(BACKENDS[name]) if name in BACKENDS else contextlib.nullcontext()
    steps: list[float] = []
    with context:
        noise, out["inversion_s"] = timed(lambda: ddim.invert(Denoiser(tav.unet), mean, empty, schedule,
                                                               lambda i: (sync(), steps.append(time.perf_counter()))))
        out["inversion_ms_per_step"] = round(float(np.median(np.diff(steps))) * 1000, 1)
        for attempt in ("sampling_first_s", "sampling_second_s"):  # 50 guided steps, no decode
            latents, out[attempt] = timed(lambda: ddim.sample(Denoiser(tav.unet), noise, text, empty,
                                                              schedule, 12.5))
    out["noise_checksum"] = round(float(noise.double().abs().mean()), 5)
    out["latents_checksum"] = round(float(latents.double().abs().mean()), 5)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
