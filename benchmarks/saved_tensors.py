"""What autograd keeps for backward during one tuning forward, by the module that saved it: the activation
memory of a tuning step, measured (not estimated), on random SD v1.4 weights (or `--tiny`).

    python benchmarks/saved_tensors.py [--frames 8] [--size 512] [--tiny] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict

import numpy as np
import torch
from torch import nn

from tavcli.engine.runtime import MasterWeights
from tavcli.app.builtin import locate
from tavcli.method.attention import video_forward
from tavcli.method.models import encode_frames, encode_prompts, load_base
from tavcli.method.pipeline import TuneAVideo


def role(qualified: str) -> str:
    """down_blocks.0.attentions.1.transformer_blocks.0.attn1.to_q -> attn1.to_q (digits dropped)."""
    parts = [p for p in qualified.split(".") if not p.isdigit()]
    return ".".join(parts[-2:]) if parts else "unet"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    base = load_base(str(locate("random:tiny" if args.tiny else "random:sd-v1")))
    tav = TuneAVideo.create(base)
    unet = tav.unet
    if base.dtype == torch.bfloat16:
        MasterWeights(tav.params, torch.bfloat16)  # the tuning step's dtypes: everything bf16
    names = {m: n for n, m in unet.named_modules()}
    weights = {p.untyped_storage().data_ptr() for p in unet.parameters()}
    stack: list[str] = ["unet"]
    seen: dict[int, tuple[str, int, str]] = {}

    def pre(module: nn.Module, _args) -> None:
        if module in names:
            stack.append(names[module])

    def post(module: nn.Module, _args, _out) -> None:
        if module in names and stack[-1] == names[module]:
            stack.pop()

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        key = s.data_ptr()
        if key not in weights and key not in seen:
            seen[key] = (stack[-1], s.nbytes(), f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}")
        return t

    frames = np.random.default_rng(0).integers(0, 256, (args.frames, args.size, args.size, 3), dtype=np.uint8)
    mean, _ = encode_frames(base, frames)
    text = encode_prompts(base, ["a man is skiing"])
    hooks = [nn.modules.module.register_module_forward_pre_hook(pre),
             nn.modules.module.register_module_forward_hook(post)]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            pred = video_forward(unet, mean, torch.tensor([500], device=mean.device), text)
    finally:
        for h in hooks:
            h.remove()
    by_role: dict[str, list] = defaultdict(lambda: [0, 0, defaultdict(int)])
    for owner, nbytes, shape in seen.values():
        r = by_role[role(owner)]
        r[0] += nbytes
        r[1] += 1
        r[2][re.sub(r"\d+", "#", shape)] += nbytes
    total = sum(r[0] for r in by_role.values())
    rows = sorted(by_role.items(), key=lambda kv: -kv[1][0])
    out = {"frames": args.frames, "size": args.size, "dtype": str(base.dtype), "total_gib": round(total / 2**30, 3),
           "output_gib": round(pred.untyped_storage().nbytes() / 2**30, 3),
           "by_role": {k: {"gib": round(v[0] / 2**30, 3), "tensors": v[1],
                           "kinds": dict(sorted(v[2].items(), key=lambda kv: -kv[1])[:3])} for k, v in rows}}
    print(f"saved for backward: {out['total_gib']} GiB in {len(seen)} tensors ({base.dtype}, {args.frames} frames, "
          f"{args.size}px)")
    for k, v in rows[:25]:
        print(f"  {k:28s} {v[0] / 2**30:7.3f} GiB  {v[1]:5d} tensors")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
