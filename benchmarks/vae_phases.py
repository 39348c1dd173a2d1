"""What the VAE costs an edit and a tune on a GPU, and what its layout and chunking would change: the
8-frame encode (`tav tune`'s first step, `--reinvert`) and decode (every edit, every preview) of random SD
v1.4 weights at 512x512, each way timed (median of 3 after 2 warm-ups) with its peak memory.

    python benchmarks/vae_phases.py [--frames 8] [--size 512] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from tavcli.app.builtin import locate
from tavcli.method import models
from tavcli.method.models import decode_latents, encode_frames, load_base


def measure(fn, repeats: int = 3) -> dict:
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    peak = (torch.cuda.max_memory_allocated() - before) / 2**30
    return {"ms": round(float(np.median(times)) * 1000, 1), "peak_above_gib": round(peak, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    base = load_base(str(locate("random:sd-v1")))
    frames = np.random.default_rng(0).integers(0, 256, (args.frames, args.size, args.size, 3), dtype=np.uint8)
    latents = encode_frames(base, frames)[0]
    out: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "frames": args.frames}
    for layout in ("nchw", "channels_last"):
        if layout == "channels_last":
            base.vae.to(memory_format=torch.channels_last)
        for benchmark in (False, True):
            torch.backends.cudnn.benchmark = benchmark
            for chunk in (2, 4, 8):
                models._ENCODE_CHUNK = models._DECODE_CHUNK = chunk
                key = f"{layout}/cudnn_benchmark={benchmark}/chunk={chunk}"
                with torch.no_grad():
                    out[f"encode/{key}"] = measure(lambda: encode_frames(base, frames))
                    out[f"decode/{key}"] = measure(lambda: decode_latents(base, latents))
                print(key, out[f"encode/{key}"], out[f"decode/{key}"], flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
