"""`tav bench`: time a whole tune and edit through `jobs`, the code path users run, on random weights.

The full-size SD v1.4 architecture with random weights does exactly the real compute, so its timings
are the real ones; `tiny` is a CPU smoke test of the same path.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tavcli.app import jobs
from tavcli.app.manifest import open_store
from tavcli.app.progress import Reporter, Stage
from tavcli.app.store import Artifact, Store
from tavcli.engine.runtime import AttentionKernel
from tavcli.settings import Settings, setting

_WARMUP = 3  # tuning steps left out of the median: allocator, cuDNN autotuning, lazy inits


# The sizes timed unless given: SD v1's own (the paper's clip), or small ones for the tiny smoke test.
FULL = {"frames": 8, "size": 512, "steps": 30, "edit_steps": 50, "inversion_steps": 50, "fresh_tune_steps": 300,
        "edit_prompts": 8}
TINY = {"frames": 4, "size": 64, "steps": 6, "edit_steps": 4, "inversion_steps": 4, "fresh_tune_steps": 0,
        "edit_prompts": 2}


def _default(key: str) -> str:
    return f"{FULL[key]}; {TINY[key]} with --tiny"


@dataclass(frozen=True)
class BenchSettings(Settings):
    frames: int | None = setting(None, "Frames of the synthetic clip.", min=1, default_text=_default("frames"))
    size: int | None = setting(None, "Its width and height.", min=8, multiple_of=8, default_text=_default("size"))
    steps: int | None = setting(None, "Tuning steps to time.", min=1, default_text=_default("steps"))
    edit_steps: int | None = setting(None, "DDIM steps of each edit.", min=1, default_text=_default("edit_steps"))
    inversion_steps: int | None = setting(None, "DDIM steps of the inversion.", min=1,
                                          default_text=_default("inversion_steps"))
    device: str = setting("auto", "auto, cpu, cuda or cuda:N.", nonempty=True)
    tiny: bool = setting(False, "A tiny random architecture, small sizes and few steps: a quick CPU smoke test.")
    low_memory: bool = setting(False, "Time `tav tune --low-memory`.")
    compile: bool = setting(False, "Time `tav tune --compile` and `tav edit --compile`.")
    attention_kernel: AttentionKernel = setting(AttentionKernel.AUTO, "Time `tav tune` and `tav edit` with "
                                                "these attention kernels (auto, flash, cudnn, default).")
    fresh_tune_steps: int | None = setting(None, "Also time a whole `tav tune` of this many steps, then a `tav "
                                                 "edit`, each in a fresh process (0: not).", min=0,
                                           default_text=_default("fresh_tune_steps"))
    edit_prompts: int | None = setting(None, "Also time one `tav edit` with this many prompts (0 or 1: not).",
                                       min=0, default_text=_default("edit_prompts"))
    preview: bool = setting(True, "Also time one preview (`tav tune --preview`: the clip inverted with the model "
                                  "of that step, then sampled; --edit-steps steps each).")
    edit_strength: float = setting(0.5, "Also time one `tav edit --strength S` (1: not).", positive=True, max=1)

    def __post_init__(self) -> None:
        for key, value in (TINY if self.tiny else FULL).items():  # what was not given, by the kind of run
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)
        super().__post_init__()


class _Clock(Reporter):
    """Timestamps of every stage and step, taken after the GPU has finished the work before them."""

    def __init__(self, sync, stage_peaks: bool = False):
        self.sync, self.stage_peaks = sync, stage_peaks
        self.preview_started: float | None = None  # the first preview's start and end (its path logged)
        self.preview_done: float | None = None
        self.stages: list[tuple[Stage, float]] = []
        self.steps: dict[Stage, list[float]] = {}
        self.peaks: dict[str, float] = {}  # with stage_peaks (GPU): GiB allocated at most in each stage

    def stage(self, stage: Stage, detail: str = "", total: int | None = None) -> None:
        self.sync()
        self.close()
        self.stages.append((stage, time.perf_counter()))

    def close(self) -> None:
        """End the current stage's memory peak (the next one starts from what is allocated now)."""
        if self.stage_peaks and self.stages:
            import torch

            self.peaks[self.stages[-1][0].name.lower()] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            torch.cuda.reset_peak_memory_stats()

    def step(self, i: int, loss: float | None = None) -> None:
        self.sync()
        self.steps.setdefault(self.stages[-1][0], []).append(time.perf_counter())

    def detail(self, text: str) -> None:
        if "preview" in text and self.preview_started is None:
            self.sync()
            self.preview_started = time.perf_counter()

    def log(self, message: str) -> None:
        if message.startswith("preview at step") and self.preview_done is None:
            self.sync()
            self.preview_done = time.perf_counter()


    def span(self, first: Stage, then: Stage | None = None) -> float:
        """Seconds from the start of stage `first` to the start of `then` (or to now)."""
        starts = dict(self.stages)
        return (starts[then] if then else time.perf_counter()) - starts[first]


def _base(tiny: bool) -> str:
    """A built-in random-weight base, built once per machine (the full-size one takes ~20 s and 2 GB in fp16)
    before anything is timed."""
    from tavcli.app import builtin

    name = "random:tiny" if tiny else "random:sd-v1"
    builtin.locate(name)
    return name


def _time_tune(job: jobs.TuneJob, store: Store, clock: _Clock, cuda: bool) -> tuple[Artifact, dict]:
    """Run one tune through `jobs.tune` and read its figures off the clock."""
    import numpy as np
    import torch

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    artifact = jobs.tune(job, store, clock)
    clock.close()
    out: dict = {"tune_total_s": round(time.perf_counter() - started, 2)}
    steps = clock.steps.get(Stage.TUNING, [])
    gaps = np.diff(steps[_WARMUP - 1:]) * 1000 if len(steps) > _WARMUP else None  # None: too few steps to say
    out["tune_ms_per_step"] = round(statistics.median(gaps), 1) if gaps is not None else None
    out["tune_ms_per_step_mean"] = round(float(np.mean(gaps)), 1) if gaps is not None else None
    out["tune_ms_per_step_p90"] = round(float(np.percentile(gaps, 90)), 1) if gaps is not None else None
    first = np.diff([dict(clock.stages)[Stage.TUNING], *steps[:_WARMUP + 2]])
    out["tune_first_steps_s"] = [round(float(x), 3) for x in first]  # encode + warm-up (+ compile) + capture
    out["load_s"] = round(clock.span(Stage.LOADING, Stage.TUNING), 2)
    out["tune_steps_s"] = round(clock.span(Stage.TUNING, Stage.INVERTING), 2)
    out["projected_300_steps_s"] = (round(out["tune_ms_per_step"] * 300 / 1000, 1)
                                    if out["tune_ms_per_step"] is not None else None)
    out["inversion_s"] = round(clock.span(Stage.INVERTING, Stage.SAVING), 2)
    inv = clock.steps.get(Stage.INVERTING, [])
    out["inversion_ms_per_step"] = round(statistics.median(np.diff(inv)) * 1000, 1) if len(inv) > 2 else None
    out["inversion_first_step_s"] = round(inv[0] - dict(clock.stages)[Stage.INVERTING], 2) if inv else None
    out["save_s"] = round(clock.span(Stage.SAVING), 2)
    if cuda:
        out["tune_peak_gib"] = max(clock.peaks.values())
        out["stage_peaks_gib"] = clock.peaks  # tuning: encoding the clip and caption, then the steps
    out["adapter_bytes"] = sum(f.stat().st_size for f in (artifact.path / "adapter").iterdir())
    return artifact, out


def _time_edit(job: jobs.EditJob, store: Store, clock: _Clock, cuda: bool) -> dict:
    """One edit through `jobs.edit`: seconds from its first prompt on, and with loading."""
    import numpy as np
    import torch

    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    jobs.edit(job, store, clock)
    done = time.perf_counter()
    first_prompt = next(t for stage, t in clock.stages if stage == Stage.EDITING)
    out = {"s": round(done - first_prompt, 2), "total_s": round(clock.span(Stage.LOADING), 2)}
    steps = clock.steps.get(Stage.EDITING, [])
    if len(steps) >= 2 and len(job.prompts) == 1:  # where a one-prompt edit's seconds go
        out["parts"] = {"to_first_step_s": round(steps[0] - first_prompt, 3),
                        "step_ms": round(statistics.median(np.diff(steps)) * 1000, 1),
                        "after_last_step_s": round(done - steps[-1], 3)}
    if cuda:
        out["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


_PROMPTS = ("an astronaut is skiing on the moon", "a panda is skiing", "a man is snowboarding in a forest",
            "a robot is skiing, cartoon style", "a man is skiing in the desert", "a bear is skiing at sunset",
            "a woman is skiing, oil painting", "Spider-Man is skiing on the beach")


def _fresh_process(tmp: Path, clip: Path, base: Path, settings: BenchSettings) -> dict:
    """`tav tune` (`fresh_tune_steps` steps) and then `tav edit` of one prompt, each a new Python process,
    timed from its start to its exit: imports, model load and every first-call cost included."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "TAV_HOME": str(tmp / "fresh-store")}
    runtime = ["--device", settings.device, "--attention-kernel", str(settings.attention_kernel)]
    runtime += ["--compile"] * settings.compile

    def tav(*args: str) -> tuple[dict, float]:
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "tavcli", *args, *runtime, "--json"], env=env,
                              capture_output=True, text=True, check=False)
        seconds = round(time.perf_counter() - started, 2)
        if done.returncode:
            raise RuntimeError(f"tav {args[0]} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
        return json.loads(done.stdout), seconds

    tuned, tune_s = tav("tune", str(clip), "a man is skiing", "--base", str(base), "--frames", str(settings.frames),
                        "--size", str(settings.size), "--steps", str(settings.fresh_tune_steps), "--quiet",
                        *["--low-memory"] * settings.low_memory)  # its inversion: `tav tune`'s 50 steps
    _, edit_s = tav("edit", tuned["id"], _PROMPTS[0], "--steps", str(settings.edit_steps),
                    "--out-dir", str(tmp / "fresh-out"), "--quiet")
    return {"fresh_tune_s": tune_s, "fresh_edit_s": edit_s}


def uncached_modules() -> dict[str, int]:
    """Per top-level package, how many of the modules this process imported have no cached bytecode (most
    first): a fresh process compiles each of them again, seconds of every `tav` command where an image sets
    PYTHONDONTWRITEBYTECODE or installed its packages without bytecode (pip writes it by default)."""
    counts: dict[str, int] = {}
    for name, module in list(sys.modules.items()):
        source, cached = getattr(module, "__file__", None), getattr(module, "__cached__", None)
        if isinstance(source, str) and isinstance(cached, str) and source.endswith(".py") \
                and not os.path.exists(cached):  # (a module may be an object: torch.ops' namespaces)
            top = name.partition(".")[0]
            counts[top] = counts.get(top, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def _warn_uncached(counts: dict[str, int], reporter: Reporter) -> None:
    if counts:
        top = next(iter(counts))
        file = Path(sys.modules[top].__file__)
        folder = file.parent.parent if file.name == "__init__.py" else file.parent  # where the package lies
        reporter.log(f"note: {sum(counts.values())} imported modules have no cached bytecode ({counts[top]} of "
                     f"them {top}'s), so each fresh process compiles them again; `python -m compileall -q "
                     f"{folder}` once (and PYTHONDONTWRITEBYTECODE unset) removes that cost")


def run(settings: BenchSettings, reporter: Reporter = Reporter()) -> dict:
    """Tune once, edit twice (the first edit in the process, then another); with `compile`, once more of
    each after dropping the compiled code from memory, so that inductor's on-disk cache serves them, as it
    would a later `tav tune --compile` or `tav edit --compile`."""
    import torch

    from tavcli.app import builtin
    from tavcli.app.caches import compile_cache_dir
    from tavcli.engine.runtime import resolve_device

    device = resolve_device(settings.device)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    base = _base(settings.tiny)
    out: dict = {"settings": asdict(settings), "device": torch.cuda.get_device_name() if cuda else "cpu",
                 "torch": torch.__version__}
    if settings.compile:
        cache = compile_cache_dir()
        out["compile_cache_was_empty"] = not cache.is_dir() or not any(cache.iterdir())
    runtime = {"device": settings.device, "compile": settings.compile, "low_memory": settings.low_memory,
               "attention_kernel": str(settings.attention_kernel)}
    with tempfile.TemporaryDirectory(prefix="tav-bench-") as tmp:
        store = open_store(Path(tmp) / "store")
        clip = builtin.synthetic_clip(Path(tmp) / "clip.mp4", settings.frames, settings.size)
        tune_flags = {"video": clip, "prompt": "a man is skiing", "base": base, "frames": settings.frames,
                      "size": settings.size, "steps": settings.steps, "inversion_steps": settings.inversion_steps,
                      **runtime}
        tune_job = jobs.tune_job(tune_flags)

        def edit_job(artifact, prompts: int = 1) -> jobs.EditJob:
            many = [_PROMPTS[i % len(_PROMPTS)] + (f" ({i // len(_PROMPTS)})" if i >= len(_PROMPTS) else "")
                    for i in range(prompts)]
            return jobs.edit_job({"ref": artifact.id, "prompts": many, "steps": settings.edit_steps,
                                  "out_dir": Path(tmp) / "out", **runtime})

        reporter.stage(Stage.TUNING, total=settings.steps)
        artifact, figures = _time_tune(tune_job, store, _Clock(sync, stage_peaks=cuda), cuda)
        out |= figures
        for attempt in ("cold", "warm"):
            reporter.stage(Stage.EDITING, f"({attempt})")
            edit = _time_edit(edit_job(artifact), store, _Clock(sync), cuda)
            out[f"edit_{attempt}_s"], out[f"edit_{attempt}_total_s"] = edit["s"], edit["total_s"]
            out[f"edit_{attempt}_parts"] = edit.get("parts")  # first step (warm-up, capture), steps, decode + write
            if cuda:
                out["edit_peak_gib"] = edit["peak_gib"]
        out["edit_prompts_s"] = out["edit_prompts_peak_gib"] = None  # null where not measured, never NaN
        if settings.edit_prompts > 1:
            reporter.stage(Stage.EDITING, f"({settings.edit_prompts} prompts)")
            edit = _time_edit(edit_job(artifact, settings.edit_prompts), store, _Clock(sync), cuda)
            out["edit_prompts_s"], out["edit_prompts_peak_gib"] = edit["s"], edit.get("peak_gib")
        if settings.compile:
            torch._dynamo.reset()  # the compiled code leaves memory; inductor's files on disk stay
            reporter.stage(Stage.TUNING, total=settings.steps)
            artifact, figures = _time_tune(tune_job, store, _Clock(sync, stage_peaks=cuda), cuda)
            reporter.stage(Stage.EDITING, "(from the compile cache)")
            torch._dynamo.reset()  # the tune's inversion compiled the sampling graphs in memory: drop those too
            figures["edit"] = _time_edit(edit_job(artifact), store, _Clock(sync), cuda)
            out["from_cache"] = figures
        out["edit_strength_s"] = out["preview_s"] = None
        if settings.edit_strength < 1:
            reporter.stage(Stage.EDITING, f"(strength {settings.edit_strength})")
            job = edit_job(artifact).replace(settings=edit_job(artifact).settings.replace(
                strength=settings.edit_strength))
            out["edit_strength_s"] = _time_edit(job, store, _Clock(sync), cuda)["s"]
        if settings.preview:  # a short second tune whose last step renders one preview
            reporter.stage(Stage.TUNING, "(one preview)")
            clock = _Clock(sync)
            jobs.tune(jobs.tune_job(tune_flags | {"steps": 2, "inversion_steps": 2, "preview": ["a panda is skiing"],
                                                  "preview_every": 2, "preview_steps": settings.edit_steps}),
                      store, clock)
            if clock.preview_started is not None and clock.preview_done is not None:
                out["preview_s"] = round(clock.preview_done - clock.preview_started, 2)
        out["fresh_tune_s"] = out["fresh_edit_s"] = None
        out["uncached_modules"] = uncached_modules()  # what a fresh process compiles before its first step
        if settings.fresh_tune_steps:
            _warn_uncached(out["uncached_modules"], reporter)
            reporter.stage(Stage.TUNING, f"(a fresh `tav tune`, {settings.fresh_tune_steps} steps)")
            out |= _fresh_process(Path(tmp), clip, base, settings)
    return out
