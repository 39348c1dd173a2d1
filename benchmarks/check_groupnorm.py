"""On a GPU: the 45 clip GroupNorms of one SD v1.4 UNet call, PyTorch ops (+ a separate SiLU) against the
Triton kernel (SiLU fused), the first call (compiling) and then forward+backward as in a tuning step and forward alone as in sampling, each
as one CUDA graph replayed (as tav runs them). The inputs are random, in the shapes and with the SiLU
arrangement that one forward of the inflated UNet (random SD v1.4 weights) records.

    python benchmarks/check_groupnorm.py [--frames 8 24] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

from tavcli.engine import triton_groupnorm
from tavcli.method.attention import ClipGroupNorm, clip_group_norm, inflate, video_forward
from tavcli.method.random_base import SD_V1_UNET


def norm_inputs(unet, frames: int) -> list[tuple[torch.Size, ClipGroupNorm]]:
    """(input shape, module) of every clip norm in one forward at `frames` frames of 512x512."""
    seen = []
    hooks = [m.register_forward_pre_hook(lambda m, args: seen.append((args[0].shape, m)))
             for m in unet.modules() if isinstance(m, ClipGroupNorm)]
    with torch.no_grad():
        video_forward(unet, torch.randn(1, frames, 4, 64, 64, device="cuda"), 500,
                      torch.randn(1, 77, 768, device="cuda"))
    for h in hooks:
        h.remove()
    return seen


def graph_ms(fn, replays: int = 20) -> float:
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return round(sorted(times)[len(times) // 2], 3)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, nargs="+", default=[8, 24])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    with torch.device("cuda"):
        unet = UNet2DConditionModel(**SD_V1_UNET)
    unet = inflate(unet.to(torch.bfloat16).eval()).requires_grad_(False)  # norms are frozen when tuning
    out: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                 "triton": triton_groupnorm.available(torch.empty(1, device="cuda"))}
    for frames in args.frames:
        norms = norm_inputs(unet, frames)
        xs = [torch.randn(shape, device="cuda", dtype=torch.bfloat16).mul_(2).add_(1).requires_grad_()
              for shape, _ in norms]
        grads = [torch.randn_like(x) for x in xs]

        def ops(x, m):
            y = clip_group_norm(x, frames, m.num_groups, m.weight, m.bias, m.eps)
            return F.silu(y) if m.silu else y

        def fused(x, m):
            return triton_groupnorm.clip_group_norm(x, frames, m.num_groups, m.weight, m.bias, m.eps, silu=m.silu)

        row: dict = {"norms": len(norms), "with_silu": sum(m.silu for _, m in norms),
                     "megabytes_in": round(sum(x.numel() * 2 for x in xs) / 1e6, 1)}
        for name, fn in (("ops", ops), ("triton", fused)):
            def train(fn=fn):
                ys = [fn(x, m) for x, (_, m) in zip(xs, norms)]
                torch.autograd.grad(ys, xs, grads)

            def infer(fn=fn):
                with torch.no_grad():
                    for x, (_, m) in zip(xs, norms):
                        fn(x, m)

            torch.cuda.synchronize()
            started = time.perf_counter()
            train()  # the first call: triton compiles (or loads from its disk cache) every kernel variant
            torch.cuda.synchronize()
            row[f"{name}_first_call_s"] = round(time.perf_counter() - started, 3)
            row[f"{name}_fwd_bwd_ms"] = graph_ms(train)
            row[f"{name}_fwd_ms"] = graph_ms(infer)
        out[f"frames_{frames}"] = row
        print(frames, "frames:", json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
