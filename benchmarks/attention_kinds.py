"""Each kind of attention in the video UNet, at the shapes of SD v1.4 at 512x512, on each SDPA kernel:
the first call (cuDNN builds a plan there), then the steady time, forward for sampling and forward +
backward for tuning. The tensors are laid out as tav's processors pass them (strided views).

Kinds: `frames` (attn1, sparse-causal: each frame's queries against 2 frames' keys), `cross` (attn2,
77 text tokens), `temporal` (attention over the frame axis at every position and head). `temporal` also
runs through `bmm` (two batched matmuls and a softmax, no SDPA) and through tav's Triton kernel
(`tavcli.engine.triton_temporal`, on the (B*F, N, C) layout its hook passes).

    python benchmarks/attention_kinds.py [--frames 8] [--kinds frames,cross,temporal] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from tavcli.engine import triton_temporal

LEVELS = [(64, 320, 5), (32, 640, 5), (16, 1280, 5), (8, 1280, 1)]  # latent side, channels, blocks
HEADS, TEXT = 8, 77
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION}
WORK = {"tuning": (1, True), "inversion": (1, False), "cfg": (2, False)}  # clips, backward


def inputs(kind: str, clips: int, frames: int, side: int, c: int, grad: bool):
    n, d, bf = side * side, c // HEADS, clips * frames
    dev, dt = "cuda", torch.bfloat16

    def leaf(*shape):
        return torch.randn(*shape, device=dev, dtype=dt, requires_grad=grad)

    if kind == "frames":
        q = leaf(bf, n, HEADS, d)
        kv = [leaf(bf, 2 * n, HEADS, d) for _ in range(2)]  # the gathered copy tav makes
        return q.transpose(1, 2), kv[0].transpose(1, 2), kv[1].transpose(1, 2), [q, *kv]
    if kind == "cross":
        q = leaf(bf, n, HEADS, d)
        kv = [leaf(bf, TEXT, HEADS, d) for _ in range(2)]
        return q.transpose(1, 2), kv[0].transpose(1, 2), kv[1].transpose(1, 2), [q, *kv]
    qkv = [leaf(clips, frames, n * HEADS, d) for _ in range(3)]  # temporal: (B, F, N*heads, d) viewed frames-last
    return (*[t.transpose(1, 2) for t in qkv], qkv)


def bmm_attention(q, k, v, scale):
    s = torch.matmul(q, k.transpose(-1, -2)).float().mul_(scale).softmax(-1).to(q.dtype)
    return torch.matmul(s, v)


def run_once(fn, leaves, grad: bool):
    out = fn()
    if grad:
        out.backward(torch.ones_like(out))
        for t in leaves:
            t.grad = None


def measure(fn, leaves, grad: bool, reps: int = 10) -> dict:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    run_once(fn, leaves, grad)
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    for _ in range(2):
        run_once(fn, leaves, grad)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        run_once(fn, leaves, grad)
    end.record()
    torch.cuda.synchronize()
    return {"first_s": round(first, 3), "ms": round(start.elapsed_time(end) / reps, 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--json", default=None)
    ap.add_argument("--kinds", default="frames,cross,temporal", help="comma-separated kinds to time")
    args = ap.parse_args()
    out: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "frames": args.frames,
                 "rows": []}
    for work, (clips, grad) in WORK.items():
        for kind in args.kinds.split(","):
            for side, c, blocks in LEVELS:
                q, k, v, leaves = inputs(kind, clips, args.frames, side, c, grad)
                scale = (c // HEADS) ** -0.5
                ways = {name: (lambda b=b: _sdpa(b, q, k, v, scale)) for name, b in BACKENDS.items()}
                if kind == "temporal":
                    ways["bmm"] = lambda: bmm_attention(q, k, v, scale)
                    images = [t.view(clips * args.frames, side * side, c) for t in leaves]  # as tav's hook has them
                    ways["triton"] = lambda: triton_temporal.temporal_attention(*images, args.frames, HEADS, scale)
                for name, fn in ways.items():
                    row = {"work": work, "kind": kind, "side": side, "blocks": blocks, "way": name}
                    try:
                        row.update(measure(fn, leaves, grad))
                    except RuntimeError as e:
                        row["error"] = str(e).splitlines()[0][:120]
                    out["rows"].append(row)
                    print(json.dumps(row), flush=True)
                q = k = v = leaves = images = None  # free them before the next shape
                torch.cuda.empty_cache()
    out["totals"] = totals(out["rows"])
    print(json.dumps(out["totals"], indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


def _sdpa(backend, q, k, v, scale):
    with sdpa_kernel([backend]):
        return F.scaled_dot_product_attention(q, k, v, scale=scale)


def totals(rows: list[dict]) -> dict:
    """Per work, kind and way: ms per UNet call (times the blocks at each level) and first-call seconds."""
    acc: dict = {}
    for r in rows:
        if "ms" not in r:
            continue
        t = acc.setdefault(r["work"], {}).setdefault(r["kind"], {}).setdefault(r["way"], {"ms": 0.0, "first_s": 0.0})
        t["ms"] = round(t["ms"] + r["ms"] * r["blocks"], 2)
        t["first_s"] = round(t["first_s"] + r["first_s"], 2)
    return acc


if __name__ == "__main__":
    main()
