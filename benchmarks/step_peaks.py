"""GPU memory of each tuning step, from the first (eager warm-ups, then the CUDA-graph capture) to the
replays: random SD v1.4 weights, 512x512, with and without CUDA graphs, optionally with --low-memory's
gradient checkpointing; GiB allocated at most during each step, and ms per step.

    python benchmarks/step_peaks.py [--frames 8] [--low-memory] [--steps 6] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from tavcli.app.builtin import locate
from tavcli.engine.runtime import Runtime
from tavcli.method.models import encode_frames, encode_prompts, encoders_parked, load_base
from tavcli.method.pipeline import TuneAVideo, _alphas_cumprod
from tavcli.method.tuning import ClipLatents, TuneSettings, tune


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--low-memory", action="store_true")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    out: dict = {"device": torch.cuda.get_device_name(), "frames": args.frames, "low_memory": args.low_memory}
    frames = np.random.default_rng(0).integers(0, 256, (args.frames, 512, 512, 3), dtype=np.uint8)
    for graphs in (False, True):
        base = load_base(str(locate("random:sd-v1")))
        tav = TuneAVideo.create(base)
        mean, std = encode_frames(base, frames)
        clip = ClipLatents(mean, std, encode_prompts(base, ["a man is skiing"]))
        alphas = _alphas_cumprod(base.scheduler_config)
        rows = []
        last = [time.perf_counter()]

        def record(i, loss):
            torch.cuda.synchronize()
            now = time.perf_counter()
            rows.append({"step": i, "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3),
                         "after_gib": round(torch.cuda.memory_allocated() / 2**30, 3),
                         "ms": round((now - last[0]) * 1000, 1)})
            last[0] = now
            torch.cuda.reset_peak_memory_stats()

        runtime = Runtime(cuda_graphs=graphs, low_memory=args.low_memory)
        with encoders_parked(base):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            out["before_gib"] = round(torch.cuda.memory_allocated() / 2**30, 3)
            last[0] = time.perf_counter()
            tune(tav.unet, tav.params, clip, alphas, TuneSettings(steps=args.steps), callback=record, runtime=runtime)
        out["graphs" if graphs else "eager"] = rows
        print("graphs" if graphs else "eager", json.dumps(rows), flush=True)
        del tav, base, clip
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
