"""Where a tuning step and an inversion step spend GPU time (torch.profiler), on random SD v1.4 weights.

    python benchmarks/profile_step.py [--frames 8] [--size 512]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from tavcli.attention import video_forward
from tavcli.bench import _base_folder
from tavcli.models import encode_frames, encode_prompts, load_base
from tavcli.pipeline import TuneAVideo
from tavcli.tuning import ClipLatents, TuneSettings, autocast_for, tune


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--rows", type=int, default=30)
    args = ap.parse_args()
    base = load_base(str(_base_folder(tiny=False)))
    tav = TuneAVideo.create(base)
    frames = np.random.default_rng(0).integers(0, 256, (args.frames, args.size, args.size, 3), dtype=np.uint8)
    mean, std = encode_frames(base, frames)
    clip = ClipLatents(mean, std, encode_prompts(base, ["a man is skiing"]))
    from tavcli.pipeline import _alphas_cumprod

    alphas = _alphas_cumprod(base.scheduler_config)
    tune(tav.unet, tav.params, clip, alphas, TuneSettings(steps=5))
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t = time.perf_counter()
        tune(tav.unet, tav.params, clip, alphas, TuneSettings(steps=3))
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t) / 3
    print(f"== tuning step: {wall * 1000:.1f} ms wall")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=70))
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t = time.perf_counter()
        for _ in range(3):
            with autocast_for(tav.unet):
                video_forward(tav.unet, mean, 500, clip.text)
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t) / 3
    print(f"== inversion step (one UNet forward, {args.frames} frames): {wall * 1000:.1f} ms wall")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=70))


if __name__ == "__main__":
    main()
