"""Where a tuning step, an inversion call and a guided sampling call spend GPU time, by kernel family
(torch.profiler, eager, no CUDA graphs), and where the first inversion step's seconds go; random SD v1.4
weights, the same `tuning.tune` and `denoiser.Denoiser` that `tav tune` and `tav edit` run, each with the
attention kernels tav's runtime chooses for its work (before 2026-12-04 the sampling calls here took
PyTorch's own choice).

    python benchmarks/profile_step.py [--frames 8] [--size 512] [--ops] [--sampling-only] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import re
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from tavcli.engine.runtime import Runtime, Work, attention_kernels
from tavcli.app.builtin import locate
from tavcli.method.attention import kernels_chosen, video_forward
from tavcli.method.denoiser import Denoiser
from tavcli.method.models import encode_frames, encode_prompts, load_base
from tavcli.method.pipeline import TuneAVideo, _alphas_cumprod
from tavcli.method.tuning import ClipLatents, TuneSettings, tune

# Kernel families by name, first match wins (cuDNN, cuBLAS and PyTorch kernel names on Hopper).
FAMILIES = [
    ("attention", r"fmha|flash|attention|sdpa|cudnn_generated_fort_native_sdpa"),
    ("layout NCHW<->NHWC", r"nchwToNhwc|nhwcToNchw|nchw2nhwc|nhwc2nchw"),
    ("convolution", r"conv|fprop|dgrad|wgrad|implicit_gemm|xmma_.*(fprop|dgrad|wgrad)"),
    ("matmul", r"gemm|nvjet|cutlass|sm90_xmma|xmma"),
    ("group norm", r"group_norm|GroupNorm|RowwiseMoments|ComputeFused|ComputeBackwardFused|GammaBeta"),
    ("layer norm", r"layer_norm|LayerNorm"),
    ("softmax", r"softmax"),
    ("reduce", r"reduce"),
    ("optimizer", r"adam|Adam|multi_tensor|foreach"),
    ("copy / cat", r"copy|cat|Cat|transpose"),
    ("elementwise", r"elementwise|vectorized|unrolled|gelu|silu|Gelu|Silu"),
]


def family(name: str) -> str:
    for fam, pattern in FAMILIES:
        if re.search(pattern, name):
            return fam
    return "other"


def kernel_table(prof, calls: int) -> dict:
    """GPU time per call, in ms, by family, with each family's three largest kernels."""
    fams: dict[str, dict] = {}
    for evt in prof.key_averages():
        us = getattr(evt, "self_device_time_total", None) or getattr(evt, "self_cuda_time_total", 0)
        if not us or evt.key.startswith(("aten::", "cuda")):  # CPU-side events: their kernels are counted
            continue
        f = fams.setdefault(family(evt.key), {"ms": 0.0, "launches": 0, "top": []})
        f["ms"] += us / 1000 / calls
        f["launches"] += evt.count // calls
        f["top"].append((round(us / 1000 / calls, 2), evt.key[:90]))
    for f in fams.values():
        f["ms"] = round(f["ms"], 2)
        f["top"] = sorted(f["top"], reverse=True)[:3]
    total = round(sum(f["ms"] for f in fams.values()), 1)
    return {"gpu_ms": total, "families": dict(sorted(fams.items(), key=lambda kv: -kv[1]["ms"]))}


def op_table(prof, calls: int, top: int = 40) -> list:
    """The aten ops (with their input shapes) whose kernels take the most GPU time per call, in ms."""
    rows = []
    for evt in prof.key_averages(group_by_input_shape=True):
        us = getattr(evt, "self_device_time_total", None) or getattr(evt, "self_cuda_time_total", 0)
        if us and evt.key.startswith("aten::"):
            rows.append((round(us / 1000 / calls, 3), evt.count // calls, evt.key, str(evt.input_shapes)[:160]))
    return sorted(rows, reverse=True)[:top]


def profiled(fn, calls: int, ops: bool = False) -> tuple[float, dict]:
    torch.cuda.synchronize()
    activities = [ProfilerActivity.CUDA] + ([ProfilerActivity.CPU] if ops else [])
    with profile(activities=activities, record_shapes=ops) as prof:
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t) / calls * 1000
    table = kernel_table(prof, calls)
    if ops:
        table["ops"] = op_table(prof, calls)
    return round(wall, 1), table


def timed(fn) -> float:
    torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return round(time.perf_counter() - t, 3)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--json", default=None)
    ap.add_argument("--ops", action="store_true", help="also the aten ops (and shapes) taking the most GPU time")
    ap.add_argument("--sampling-only", action="store_true", help="leave out the tuning step")
    args = ap.parse_args()
    out: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "frames": args.frames}
    base = load_base(str(locate("random:sd-v1")))
    tav = TuneAVideo.create(base)
    frames = np.random.default_rng(0).integers(0, 256, (args.frames, args.size, args.size, 3), dtype=np.uint8)
    mean, std = encode_frames(base, frames)
    clip = ClipLatents(mean, std, encode_prompts(base, ["a man is skiing"]))
    alphas = _alphas_cumprod(base.scheduler_config)

    eager = Runtime(cuda_graphs=False)
    parts = ("inversion_call", "cfg_call")
    if not args.sampling_only:
        parts = ("tuning_step", *parts)
        tune(tav.unet, tav.params, clip, alphas, TuneSettings(steps=3), runtime=eager)  # warm-up
        wall, table = profiled(lambda: tune(tav.unet, tav.params, clip, alphas, TuneSettings(steps=1),
                                            runtime=eager), 3, args.ops)
        out["tuning_step"] = {"eager_wall_ms": wall, **table}
        # The same step graph-replayed, for the wall time the kernels add up to once launches are gone.
        stamps = []
        tune(tav.unet, tav.params, clip, alphas, TuneSettings(steps=12),
             callback=lambda i, loss: (torch.cuda.synchronize(), stamps.append(time.perf_counter())))
        out["tuning_step"]["graph_wall_ms"] = round(float(np.median(np.diff(stamps[4:]))) * 1000, 1)

    # The first inversion step in a process that has just tuned, part by part (what `tav tune` does next).
    first = {"for_inference_s": timed(tav.for_inference)}
    first["encode_frames_s"] = timed(lambda: encode_frames(base, frames))
    first["encode_prompt_s"] = timed(lambda: encode_prompts(base, [""]))
    empty = encode_prompts(base, [""])
    inverting = attention_kernels("auto", Work.INVERSION, mean.device)
    with torch.no_grad(), kernels_chosen(tav.unet, inverting):
        first["first_eager_call_s"] = timed(lambda: video_forward(tav.unet, mean, 981, empty))
        first["second_eager_call_s"] = timed(lambda: video_forward(tav.unet, mean, 961, empty))
        denoise = Denoiser(tav.unet)
        first["capture_s"] = timed(lambda: denoise(mean, 941, empty))  # two more warm-ups + the capture
        first["replay_s"] = timed(lambda: denoise(mean, 921, empty))
    out["inversion_first_step"] = first

    # Each sampling call with the kernels tav's runtime chooses for its work (`auto`), as `tav` runs it.
    x2, text2 = torch.cat([mean, mean]), torch.cat([empty, clip.text])
    for part, work, (x, text) in (("inversion_call", Work.INVERSION, (mean, empty)),
                                  ("cfg_call", Work.SAMPLING, (x2, text2))):
        choice = attention_kernels("auto", work, mean.device)
        with torch.no_grad(), kernels_chosen(tav.unet, choice):
            wall, table = profiled(lambda: video_forward(tav.unet, x, 500, text), 3, args.ops)
            out[part] = {"eager_wall_ms": wall, **table}
            denoise = Denoiser(tav.unet)
            denoise(x, 500, text)
            replays = [timed(lambda: denoise(x, 500, text)) for _ in range(10)]
            out[part]["graph_wall_ms"] = round(float(np.median(replays)) * 1000, 1)

    for part in parts:
        p = out[part]
        print(f"== {part}: GPU {p['gpu_ms']} ms, eager wall {p['eager_wall_ms']} ms, graph wall {p['graph_wall_ms']} ms")
        for fam, f in p["families"].items():
            print(f"   {fam:20s} {f['ms']:7.2f} ms  {f['launches']:5d} launches  {f['top'][0][1][:60]}")
        for ms, count, op, shapes in p.get("ops", [])[:25]:
            print(f"   {ms:7.3f} ms {count:4d}x {op:36s} {shapes[:90]}")
    print("== first inversion step:", json.dumps(first))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
