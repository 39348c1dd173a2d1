"""On a GPU: tuning with each step replayed as a CUDA graph follows the eager steps, and how much faster.

    python benchmarks/check_train_graphs.py [--frames 8] [--steps 12]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from tavcli.engine.runtime import Runtime
from tavcli.app.builtin import locate
from tavcli.method.models import encode_frames, encode_prompts, load_base
from tavcli.method.pipeline import TuneAVideo, _alphas_cumprod
from tavcli.method.tuning import ClipLatents, TuneSettings, tune


def run(graphs: bool, frames: int, steps: int) -> tuple[list[float], torch.Tensor, float, float]:
    base = load_base(str(locate("random:sd-v1")))
    tav = TuneAVideo.create(base)
    video = np.random.default_rng(0).integers(0, 256, (frames, 512, 512, 3), dtype=np.uint8)
    mean, std = encode_frames(base, video)
    clip = ClipLatents(mean, std, encode_prompts(base, ["a man is skiing"]))
    stamps = []

    def stamp(i, loss):
        torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    torch.cuda.reset_peak_memory_stats()
    losses = tune(tav.unet, tav.params, clip, _alphas_cumprod(base.scheduler_config),
                  TuneSettings(steps=steps), callback=stamp, runtime=Runtime(cuda_graphs=graphs))
    ms = float(np.median(np.diff(stamps[4:]))) * 1000
    weights = torch.cat([p.detach().flatten() for p in tav.params]).cpu()
    return losses, weights, ms, torch.cuda.max_memory_allocated() / 2**30


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--steps", type=int, default=12)
    args = ap.parse_args()
    eager = run(False, args.frames, args.steps)
    graphed = run(True, args.frames, args.steps)
    delta_e = eager[1] - run_init_weights()
    print(json.dumps({
        "frames": args.frames,
        "loss_max_abs_diff": max(abs(a - b) for a, b in zip(eager[0], graphed[0])),
        "losses_eager": [round(x, 5) for x in eager[0]], "losses_graphed": [round(x, 5) for x in graphed[0]],
        "weights_max_abs_diff": (eager[1] - graphed[1]).abs().max().item(),
        "update_max_abs": delta_e.abs().max().item(),
        "eager_ms_per_step": round(eager[2], 1), "graphed_ms_per_step": round(graphed[2], 1),
        "eager_peak_gib": round(eager[3], 2), "graphed_peak_gib": round(graphed[3], 2),
    }))


def run_init_weights() -> torch.Tensor:
    tav = TuneAVideo.create(load_base(str(locate("random:sd-v1"))))
    return torch.cat([p.detach().flatten() for p in tav.params]).cpu()


if __name__ == "__main__":
    main()
