"""Sparse-causal attn1 of sampling (no gradient), per UNet level: what `auto` ran before (SDPA on the gathered
keys, the first frames' keys attended once at the 64x64 level, cuDNN there when sampling, flash elsewhere
and for the inversion) against the Triton kernel (`tavcli.engine.triton_sparse_causal`) with each plan.
Each way times the whole processor (projections included, the same in every way) on random bf16 weights,
per block, eager; the first call's seconds say what a process pays for plans or compiles.

    python benchmarks/sparse_causal_sweep.py [--frames 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json

import torch
from diffusers.models.attention_processor import Attention

from benchmarks.attention_kinds import HEADS, LEVELS, measure
from tavcli.engine import triton_sparse_causal
from tavcli.engine.runtime import Work, attention_kernels
from tavcli.method import attention

Plan = triton_sparse_causal.Plan
CANDIDATES = {
    64: [Plan(128, 64, 4, 3), Plan(128, 128, 8, 3), Plan(128, 64, 8, 3), Plan(64, 64, 4, 3), Plan(128, 32, 4, 4),
         Plan(128, 128, 4, 2), Plan(64, 128, 4, 3), Plan(128, 64, 4, 4), Plan(64, 64, 4, 4)],
    128: [Plan(128, 64, 8, 3), Plan(128, 32, 4, 3), Plan(64, 64, 4, 3), Plan(128, 64, 4, 2), Plan(64, 32, 4, 3)],
    256: [Plan(64, 64, 8, 2), Plan(64, 32, 4, 2), Plan(32, 64, 4, 2), Plan(64, 32, 8, 3), Plan(128, 32, 8, 2)],
}
WORK = {"inversion": (1, Work.INVERSION), "cfg": (2, Work.SAMPLING)}  # clips per call


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    out: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "frames": args.frames,
                 "rows": []}
    attention.use_fast_sparse_causal(triton_sparse_causal.available, triton_sparse_causal.sparse_causal_attention)
    for side, c, blocks in LEVELS:
        attn = Attention(query_dim=c, heads=HEADS, dim_head=c // HEADS).cuda().to(torch.bfloat16)
        ctx = attention.ClipContext(frames=args.frames)
        attn.set_processor(attention.FrameAttnProcessor(ctx))
        d = c // HEADS
        for work, (clips, kind) in WORK.items():
            x = torch.randn(clips * args.frames, side * side, c, device="cuda", dtype=torch.bfloat16)
            choice = attention_kernels("auto", kind, x.device)
            ctx.kernels, ctx.shared_first_keys = choice.sdpa, choice.shared_first_keys
            ways = [("before", None)] + [(f"triton {p.block_m}x{p.block_n} w{p.warps} s{p.stages}", p)
                                         for p in CANDIDATES[triton_sparse_causal._padded(d)]]
            with torch.no_grad():
                ctx.fused_frames_below = None
                reference = attn(x).float()
                for way, plan in ways:
                    ctx.fused_frames_below = side * side + 1 if plan is not None else None
                    if plan is not None:
                        triton_sparse_causal.PLANS[triton_sparse_causal._padded(d)] = plan
                    row = {"side": side, "channels": c, "work": work, "way": way, "blocks": blocks}
                    try:
                        row["max_abs_diff"] = round(float((attn(x).float() - reference).abs().max()), 4)
                        row.update(measure(lambda: attn(x), [], False))
                    except Exception as e:  # a plan that does not compile (registers, shared memory)
                        row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
                    out["rows"].append(row)
                    print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
