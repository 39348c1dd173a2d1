"""Where a fresh process's seconds go before tuning starts: imports, CUDA's start, and loading each part of
the random SD v1.4 base, either as `tav` loads it (`load_base`) or each model read straight onto the GPU
(diffusers' and transformers' `device_map`), or read on the CPU and moved (`to`). Run each way in its own process: a process pays its imports
and CUDA's start once.

    python benchmarks/fresh_start.py [--load tav|to|direct] [--json out.json]
"""

from __future__ import annotations

import time

_STARTED = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--load", choices=("tav", "to", "direct"), default="tav")
    parser.add_argument("--json")
    args = parser.parse_args()
    marks: dict[str, float] = {}
    last = _STARTED

    def mark(name: str) -> None:
        nonlocal last
        now = time.perf_counter()
        marks[name] = round(now - last, 3)
        last = now

    import torch
    mark("import_torch")
    import diffusers  # noqa: F401
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel
    mark("import_diffusers_transformers")
    from tavcli.app import builtin, jobs  # noqa: F401
    from tavcli.method import pipeline  # noqa: F401
    mark("import_tavcli")
    torch.empty(1, device="cuda")
    torch.cuda.synchronize()
    mark("cuda_start")
    folder = builtin.locate("random:sd-v1")
    mark("locate_base")
    dt = torch.bfloat16
    if args.load == "tav":
        from tavcli.method.models import load_base
        load_base(str(folder), "cuda", "auto")
        torch.cuda.synchronize()
        mark("load_base")
    else:
        for name, cls in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL), ("text_encoder", CLIPTextModel)):
            if args.load == "direct":
                cls.from_pretrained(folder, subfolder=name, torch_dtype=dt, device_map="cuda")
            else:  # read on the CPU, then moved: what load_base does
                model = cls.from_pretrained(folder, subfolder=name, torch_dtype=dt)
                mark(f"read_{name}")
                model.to("cuda")
            torch.cuda.synchronize()
            mark(f"load_{name}")
    marks["total"] = round(time.perf_counter() - _STARTED, 3)
    print(json.dumps({"load": args.load, **marks}))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"load": args.load, **marks}, f, indent=1)


if __name__ == "__main__":
    main()
