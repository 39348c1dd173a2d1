"""Two attention choices at SD v1.4's 512x512 shapes, each way against the others, in one process:

- temporal: tav's Triton temporal attention with each plan (`triton_temporal.Plan`: tile sizes and warp
  counts) against SDPA's kernels
  and against what tav runs today (`current`: the kernel where `available` says so, else the SDPA kernel
  the runtime's `auto` chooses), with each Triton output's largest difference from fp32 SDPA;
- frames: attn1 (sparse-causal, projections and output included) with the first two frames' repeated keys
  gathered, as the official code does, or attended once (`ClipContext.shared_first_keys`).

Forward + backward for tuning (one clip), forward for inversion (one clip) and guided sampling (two).

    python benchmarks/kernel_sweep.py [--frames 8,24] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from attention_kinds import HEADS, LEVELS, measure  # this folder's: the shapes and the timing
from tavcli.engine import runtime, triton_temporal
from tavcli.method import attention

WORK = {"tuning": (1, True), "inversion": (1, False), "sampling": (2, False)}  # clips, backward
PLANS = {f"triton-{tile}-w{warps}": triton_temporal.Plan(tile, warps)
         for tile in (4096, 8192, 16384) for warps in (4, 8)}
SDPA = {"cudnn": SDPBackend.CUDNN_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "flash": SDPBackend.FLASH_ATTENTION}


def frames_last(t, clips, frames, n):
    return t.view(clips, frames, n * HEADS, -1).transpose(1, 2)


def sdpa_images(q, k, v, clips, frames, n, scale, backends=None):
    with sdpa_kernel(backends, set_priority=True) if backends else contextlib.nullcontext():
        out = F.scaled_dot_product_attention(*(frames_last(t, clips, frames, n) for t in (q, k, v)), scale=scale)
    return out.transpose(1, 2).reshape(q.shape)


def temporal_rows(work: str, clips: int, grad: bool, frames: int, side: int, c: int, blocks: int) -> list[dict]:
    n, d = side * side, c // HEADS
    scale = d ** -0.5
    leaves = [torch.randn(clips * frames, n, c, device="cuda", dtype=torch.bfloat16, requires_grad=grad)
              for _ in range(3)]
    q, k, v = leaves
    with torch.no_grad():
        ref = sdpa_images(q.float(), k.float(), v.float(), clips, frames, n, scale)
    choice = runtime.attention_kernels("auto", work, torch.device("cuda"))

    def current():
        if triton_temporal.available(q, frames, HEADS):
            return triton_temporal.temporal_attention(q, k, v, frames, HEADS, scale)
        with choice.sdpa("temporal", frames, frames, clips * n * HEADS):
            return sdpa_images(q, k, v, clips, frames, n, scale)

    ways = {"current": current}
    ways.update({name: (lambda b=b: sdpa_images(q, k, v, clips, frames, n, scale, [b])) for name, b in SDPA.items()})
    ways.update({name: (lambda p=p: triton_temporal.temporal_attention(q, k, v, frames, HEADS, scale, p))
                 for name, p in PLANS.items()})
    rows = []
    for name, fn in ways.items():
        row = {"kind": "temporal", "work": work, "frames": frames, "side": side, "blocks": blocks, "way": name}
        try:
            if name in PLANS:
                with torch.no_grad():
                    row["max_err"] = float((fn().float() - ref).abs().max())
            row.update(measure(fn, leaves, grad, reps=20))
        except Exception as e:  # a plan that does not compile or fit: recorded, the sweep goes on
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def frames_rows(work: str, clips: int, grad: bool, frames: int, side: int, c: int, blocks: int) -> list[dict]:
    from diffusers.models.attention_processor import Attention

    n = side * side
    attn = Attention(c, heads=HEADS, dim_head=c // HEADS).to("cuda", torch.bfloat16)
    ctx = attention.ClipContext(frames=frames)
    choice = runtime.attention_kernels("auto", work, torch.device("cuda"))
    ctx.kernels = choice.sdpa
    proc = attention.FrameAttnProcessor(ctx)
    x = torch.randn(clips * frames, n, c, device="cuda", dtype=torch.bfloat16, requires_grad=grad)
    rows, outs = [], {}
    for shared in (False, True):
        ctx.shared_first_keys = 0 if shared else None
        row = {"kind": "frames", "work": work, "frames": frames, "side": side, "blocks": blocks,
               "way": "shared-first-keys" if shared else "gathered"}
        try:
            with torch.no_grad():
                outs[shared] = proc(attn, x).float()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            row.update(measure(lambda: proc(attn, x), [x], grad, reps=20))
            row["peak_mib"] = round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        rows.append(row)
        print(json.dumps(row), flush=True)
    if len(outs) == 2:
        rows[-1]["max_diff"] = float((outs[True] - outs[False]).abs().max())
    return rows


def totals(rows: list[dict]) -> dict:
    """ms per UNet call of each kind, work, frames and way (times the blocks at each level)."""
    acc: dict = {}
    for r in rows:
        if "ms" in r:
            key = f'{r["kind"]}/{r["work"]}/{r["frames"]}f'
            acc.setdefault(key, {}).setdefault(r["way"], 0.0)
            acc[key][r["way"]] = round(acc[key][r["way"]] + r["ms"] * r["blocks"], 3)
    return acc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", default="8,24")
    ap.add_argument("--kinds", default="temporal,frames")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows: list[dict] = []
    for kind in args.kinds.split(","):
        for frames in map(int, args.frames.split(",")):
            for work, (clips, grad) in WORK.items():
                for side, c, blocks in LEVELS:
                    rows += (temporal_rows if kind == "temporal" else frames_rows)(work, clips, grad, frames, side,
                                                                                  c, blocks)
                    torch.cuda.empty_cache()
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows, "totals": totals(rows)}
    print(json.dumps(out["totals"], indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
