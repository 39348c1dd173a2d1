"""On a GPU: what `torch.compile` of the inflated UNet buys for a tuning step and a sampling call, and what it
costs to compile, cold (empty cache) and warm (a second process with the same cache directory).

    TORCHINDUCTOR_CACHE_DIR=/tmp/ind python benchmarks/check_compile.py [--compile | --regional] [--frames 8] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from tavcli.app.builtin import locate
from tavcli.method.denoiser import Denoiser
from tavcli.method.models import encode_frames, encode_prompts, load_base
from tavcli.method.pipeline import TuneAVideo, _alphas_cumprod
from tavcli.method.tuning import ClipLatents, TuneSettings, tune


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--regional", action="store_true", help="compile the repeated blocks only (tavcli.engine.compiling)")
    ap.add_argument("--mode", default=None)
    ap.add_argument("--sdpa", default=None, help="flash, cudnn, efficient or math: force one SDPA backend")
    args = ap.parse_args()
    if args.sdpa:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                   "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[args.sdpa]
        sdpa_kernel(backend).__enter__()  # for the whole process
    out: dict = {"sdpa": args.sdpa, "compile": args.compile, "regional": args.regional, "mode": args.mode,
                 "frames": args.frames}
    base = load_base(str(locate("random:sd-v1")))
    tav = TuneAVideo.create(base)
    if args.compile:
        tav.unet.compile(mode=args.mode)
    if args.regional:
        from tavcli.engine.compiling import compile_regions

        out["regions"] = compile_regions(tav.unet, mode=args.mode)
    video = np.random.default_rng(0).integers(0, 256, (args.frames, 512, 512, 3), dtype=np.uint8)
    mean, std = encode_frames(base, video)
    clip = ClipLatents(mean, std, encode_prompts(base, ["a man is skiing"]))
    stamps = []

    def stamp(i, loss):
        torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    torch.cuda.synchronize()
    started = time.perf_counter()
    torch.cuda.reset_peak_memory_stats()
    losses = tune(tav.unet, tav.params, clip, _alphas_cumprod(base.scheduler_config),
                  TuneSettings(steps=args.steps), callback=stamp)
    gaps = np.diff([started, *stamps]) * 1000
    out["tune_first_steps_ms"] = [round(x, 1) for x in gaps[:6]]
    out["tune_ms_per_step"] = round(float(np.median(gaps[6:])), 1)
    out["tune_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    out["losses"] = [round(x, 5) for x in losses[:6]]

    tav.for_inference()
    torch.cuda.reset_peak_memory_stats()
    denoise = Denoiser(tav.unet)
    x = torch.randn(2, args.frames, 4, 64, 64, device="cuda")
    text = encode_prompts(base, ["a", "b"])
    times = []
    for t in range(6):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        eps = denoise(x, 999 - t, text)
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1000)
    out["cfg_call_first_ms"] = round(times[0], 1)
    out["cfg_call_ms"] = round(float(np.median(times[2:])), 1)
    out["cfg_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    out["eps_checksum"] = round(float(eps.detach().double().abs().mean()), 6)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
