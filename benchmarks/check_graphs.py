"""On a GPU: CUDA-graph replay of the sampling UNet call gives the eager result, and how much faster.

    python benchmarks/check_graphs.py [--frames 8] [--batch 2]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from tavcli.faces.bench import _base_folder
from tavcli.method.denoiser import Denoiser
from tavcli.method.models import load_base
from tavcli.method.pipeline import TuneAVideo


def timed(fn, n: int) -> float:
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / n * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--cudnn-benchmark", action="store_true")
    args = ap.parse_args()
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    tav = TuneAVideo.create(load_base(str(_base_folder(tiny=False)))).for_inference()
    if args.channels_last:
        tav.unet.to(memory_format=torch.channels_last)
    g = torch.Generator("cuda").manual_seed(0)
    x = torch.randn(args.batch, args.frames, 4, 64, 64, device="cuda", generator=g)
    text = torch.randn(args.batch, 77, 768, device="cuda", generator=g)
    eager, graphed = Denoiser(tav.unet, cuda_graphs=False), Denoiser(tav.unet)
    out = {"graphs_enabled": graphed.graphs, "batch": args.batch, "channels_last": args.channels_last,
           "cudnn_benchmark": args.cudnn_benchmark}
    with torch.no_grad():
        diffs = [(eager(x, t, text) - graphed(x, t, text)).abs().max().item() for t in (981, 501, 1)]
        out["max_abs_diff"] = max(diffs)
        out["eager_ms"] = round(timed(lambda: eager(x, 501, text), 20), 1)
        out["graphed_ms"] = round(timed(lambda: graphed(x, 501, text), 20), 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
