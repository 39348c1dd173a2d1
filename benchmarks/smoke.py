"""Quick end-to-end check of the method on the full-size SD v1 architecture with random weights.

    python benchmarks/smoke.py [--frames 8] [--size 512] [--steps 20] [--edit-steps 50]

Times tuning steps, DDIM inversion and one edit through the library's own code path, and the size of
both adapter kinds. Not `tav bench` (see the performance issue): a first look, printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tavcli.method.adapters import AdapterSpec
from tavcli.method.models import load_base
from tavcli.method.params import EditSettings
from tavcli.method.pipeline import TuneAVideo
from tavcli.method.random_base import save_random_base
from tavcli.method.tuning import TuneSettings


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--edit-steps", type=int, default=50)
    ap.add_argument("--arch", default="sd-v1")
    args = ap.parse_args()
    out: dict = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        folder = save_random_base(Path(tmp) / "base", arch=args.arch, dtype=torch.float16)
        out["build_base_s"] = round(time.perf_counter() - t, 2)
        frames = np.random.default_rng(0).integers(0, 256, (args.frames, args.size, args.size, 3), dtype=np.uint8)
        for kind in ("full", "lora"):
            t = time.perf_counter()
            base = load_base(str(folder))
            sync()
            out[f"{kind}_load_s"] = round(time.perf_counter() - t, 2)
            tav = TuneAVideo.create(base, AdapterSpec(kind))
            out[f"{kind}_trainable"] = sum(p.numel() for p in tav.params)
            stamps = []
            torch.cuda.reset_peak_memory_stats() if torch.cuda.is_available() else None

            def step(i, loss):
                sync()
                stamps.append(time.perf_counter())

            losses = tav.tune(frames, "a man is skiing", TuneSettings(steps=args.steps), callback=step)
            gaps = np.diff(stamps)[2:] * 1000  # skip warm-up steps
            out[f"{kind}_tune_ms_per_step_median"] = round(statistics.median(gaps), 1)
            out[f"{kind}_tune_loss_first_last"] = [round(losses[0], 4), round(losses[-1], 4)]
            if torch.cuda.is_available():
                out[f"{kind}_tune_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            sync(); t = time.perf_counter()
            noise = tav.invert(frames, steps=50)
            sync(); out[f"{kind}_invert_s"] = round(time.perf_counter() - t, 2)
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            for attempt in range(2):  # the second edit is the warm one
                sync(); t = time.perf_counter()
                video = tav.generate(["an astronaut is skiing on the moon"], EditSettings(steps=args.edit_steps),
                                     noise=noise)
                sync(); out[f"{kind}_edit_s_{'cold' if attempt == 0 else 'warm'}"] = round(time.perf_counter() - t, 2)
            if torch.cuda.is_available():
                out[f"{kind}_edit_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            out[f"{kind}_video_shape"] = list(video.shape)
            path = tav.save_adapter(Path(tmp) / kind)
            out[f"{kind}_adapter_bytes"] = sum(f.stat().st_size for f in path.iterdir())
            del tav, base
            torch.cuda.empty_cache() if torch.cuda.is_available() else None
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
