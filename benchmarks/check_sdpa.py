"""On a GPU: which SDPA backend serves the UNet best, counting the first calls at new shapes (cuDNN builds
execution plans there) as well as the steady CUDA-graph replays: a short tune (12 steps), then inversion and
sampling, as `tav tune` and `tav edit` run them. One backend per process; random SD v1.4 weights. Only
the UNet calls run under the chosen backend: the VAE's attention (head dim 512) has no flash kernel.

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

from tavcli.app.builtin import locate
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
    base = load_base(str(locate("random:tiny" if tiny else "random:sd-v1")))
    tav = TuneAVideo.create(base)
    size = 64 if tiny else 512
    frames = np.random.default_rng(0).integers(0, 256, (8, size, size, 3), dtype=np.uint8)
    out: dict = {"backend": name}
    context = sdpa_kernel(BACKENDS[name]) if name in BACKENDS else contextlib.nullcontext()
    steps: list[float] = []
    with context:  # the tuning steps too: their first eager steps build the training attention's plans
        sync()
        steps.append(time.perf_counter())
        tav.tune(frames, "a man is skiing", TuneSettings(steps=3 if tiny else 12),
                 callback=lambda i, loss: (sync(), steps.append(time.perf_counter())))
        gaps = np.diff(steps)
        out["tune_first_steps_s"] = [round(float(g), 3) for g in gaps[:5]]  # encode + 3 eager, capture
        out["tune_ms_per_step"] = round(float(np.median(gaps[5:])) * 1000, 1) if len(gaps) > 5 else None
        steps.clear()
    tav.for_inference()
    mean, _ = tav.latents(frames)
    empty, text = encode_prompts(base, [""]), encode_prompts(base, ["an astronaut is skiing"])
    schedule = ddim.ddim_schedule(base.scheduler_config, 50)
    with context:
        noise, out["inversion_s"] = timed(lambda: ddim.invert(Denoiser(tav.unet), mean, empty, schedule,
                                                               lambda i: (sync(), steps.append(time.perf_counter()))))
        out["inversion_ms_per_step"] = round(float(np.median(np.diff(steps))) * 1000, 1)
        out["inversion_first_step_s"] = round(out["inversion_s"] - (steps[-1] - steps[0]), 3)
        for attempt in ("sampling_first_s", "sampling_second_s"):  # 50 guided steps, no decode
            latents, out[attempt] = timed(lambda: ddim.sample(Denoiser(tav.unet), noise, text, empty,
                                                              schedule, 12.5))
    out["noise_checksum"] = round(float(noise.double().abs().mean()), 5)
    out["latents_checksum"] = round(float(latents.double().abs().mean()), 5)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
