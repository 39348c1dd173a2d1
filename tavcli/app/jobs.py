"""The jobs users run — tune a clip into an artifact, edit with an artifact, score videos — shared by the
CLI and bench.

A job is a frozen settings tree (`tavcli.settings`): `TuneJob` holds the paper's settings (what to read
of the clip, the adapter, tuning, inversion) and the runtime; `build(TuneJob, flat)` makes one from flat
options, the CLI's flags and the YAML configs alike. Running one is plain Python: a job in, an artifact
or paths out, progress through a `Reporter`. The method library does the work; the store keeps the
results. This module imports no model library until a job runs: the CLI reads its help from here.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import time
import dataclasses
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tavcli import __version__
from tavcli.app import builtin, caches
from tavcli.app.interrupts import held
from tavcli.app.progress import Reporter, Stage
from tavcli.app.manifest import (
    BaseIdentity,
    Checkpoint,
    EditRecord,
    Inversion,
    Manifest,
    Preview,
    Run,
    Source,
    Tuning,
    Video,
    edits_of,
)
from tavcli.app.store import Artifact, Store
from tavcli.engine.runtime import Runtime
from tavcli.errors import BadInput, Interrupted, SettingError, counted
from tavcli.method.params import (
    DEFAULT_BASE,
    DEFAULT_CLIP,
    MAX_STEPS,
    AdapterSpec,
    EditSettings,
    FrameSampling,
    FrameSize,
    InversionSettings,
    TuneSettings,
)
from tavcli.settings import Mode, Settings, build, nested, setting

if TYPE_CHECKING:
    import numpy as np

    from tavcli.app.runs import ActiveRun


class Format(Mode):
    MP4 = "mp4"
    GIF = "gif"
    PNG = "png"  # a folder of numbered frames

    @property
    def suffix(self) -> str:
        return "" if self is Format.PNG else f".{self.value}"


MAX_FPS = 240.0  # frames per second a player is asked to show; more is a typo (H.264 levels stop at 172)


@dataclass(frozen=True)
class PreviewSettings(Settings):
    """Videos rendered while tuning with the model as it is then, as the official validation does every
    `validation_steps`: DDIM inversion of the clip with the current model, then guided sampling."""

    prompts: tuple[str, ...] = setting((), "A prompt to render while tuning (repeat for more); each preview is "
                                           "written at once and kept with the artifact.", option="preview",
                                       default_text="none")
    every: int | None = setting(None, "Render the previews every N steps.", option="preview_every", min=1,
                                default_text="at the last step")
    steps: int = setting(50, "DDIM steps of a preview's inversion and of its sampling (the official 50).",
                         option="preview_steps", min=1, max=MAX_STEPS)
    guidance: float = setting(12.5, "Guidance scale of the previews (the official configs' 12.5).",
                              option="preview_guidance")

    def check(self) -> None:
        if any(not p.strip() for p in self.prompts):
            raise SettingError("preview", "is empty; give each preview a text, e.g. --preview \"a panda is skiing\"")

    def due(self, step: int, steps: int) -> bool:
        return bool(self.prompts) and step > 0 and (step % self.every == 0 if self.every else step == steps)


@dataclass(frozen=True)
class CheckpointSettings(Settings):
    """Adapters kept at steps N, 2N, ... besides the final one; the tune can be resumed from each."""

    every: int | None = setting(None, "Keep the adapter every N steps (in the artifact) and the run's state to "
                                      "resume from.", option="checkpoint_every", min=1, default_text="none")

    def due(self, step: int) -> bool:
        return self.every is not None and step > 0 and step % self.every == 0


@dataclass(frozen=True)
class TuneJob(Settings):
    video: Path = setting(help="A video file, a GIF, or a folder of frames.")
    prompt: str = setting(help="The clip's caption, e.g. \"a man is skiing\".", nonempty=True)
    name: str | None = setting(None, "A name to refer to the artifact by.")
    base: str = setting(DEFAULT_BASE, "SD v1.x hub id, diffusers folder, single-file .safetensors/.ckpt checkpoint, "
                                      "or a built-in random base (random:tiny, random:sd-v1: no download, noise).")
    base_config: str | None = setting(None, "For a single-file --base: an SD v1.x diffusers folder (or hub id) with "
                                            "its configs, tokenizer and scheduler (needed offline).")
    sampling: FrameSampling = nested(FrameSampling)
    size: FrameSize = nested(FrameSize)
    adapter: AdapterSpec = nested(AdapterSpec)
    tuning: TuneSettings = nested(TuneSettings)
    inversion: InversionSettings = nested(InversionSettings)
    preview: PreviewSettings = nested(PreviewSettings)
    checkpoint: CheckpointSettings = nested(CheckpointSettings)
    runtime: Runtime = nested(Runtime)

    def check(self) -> None:
        builtin.check(self.base)
        steps = self.tuning.steps
        for option, every in (("preview_every", self.preview.every), ("checkpoint_every", self.checkpoint.every)):
            if every is not None and every > steps:
                raise SettingError(option, f"{every} is more than the {steps} tuning steps; use 1 to {steps}"
                                   if steps else f"{every} needs tuning steps; there are none")
        if self.preview.every is not None and not self.preview.prompts:
            raise SettingError("preview_every", "has nothing to render; add --preview PROMPT")


@dataclass(frozen=True)
class EditJob(Settings):
    ref: str = setting(help="Artifact id, unique id prefix or name; REF@STEP edits with a kept checkpoint.")
    prompts: tuple[str, ...] = setting((), "One or more prompts; each makes one video.")
    inversion_name: str | None = setting(None, "A kept inversion to start from (`tav invert` names it).",
                                         default_text="the one made at tuning")
    reconstruct: bool = setting(False, "Render the inversion with the caption at guidance 1 (no prompts) and "
                                       "print its PSNR against the source: does the inversion hold?")
    settings: EditSettings = nested(EditSettings)
    output: Path | None = setting(None, "Output path (one prompt only); a .gif suffix means --format gif.")
    out_dir: Path = setting(Path("."), "Folder for outputs named after artifact and prompt.")
    format: Format | None = setting(None, "mp4, gif, or png (a folder of numbered PNG frames).",
                                    default_text="mp4, or -o's suffix")
    frames: int | None = setting(None, "Frames to generate (with --no-inversion).", min=1, default_text="the tuned count")
    grid: bool = setting(False, "Source and edit side by side.")
    fps: float | None = setting(None, "Output frame rate.", positive=True, max=MAX_FPS,
                                default_text="the source clip's playback rate")
    adapter_scale: float = setting(1.0, "Scale of the tuned deltas: 0 the base model, 1 as tuned, in between "
                                        "(or beyond) scaled.")
    base: str | None = setting(None, "Base model.", default_text="the one tuned on")
    base_config: str | None = setting(None, "Configs for a single-file base.", default_text="the ones recorded at tuning")
    force: bool = setting(False, "Use --base even if it is not the one tuned on.")
    score: bool = setting(False, "Also print and record CLIP score and frame consistency.")
    clip: str = setting(DEFAULT_CLIP, "CLIP model for --score (hub id or folder).")
    runtime: Runtime = nested(Runtime)

    def check(self) -> None:
        builtin.check(self.base)
        self._check_output()
        if self.reconstruct:
            if self.prompts:
                raise BadInput("--reconstruct renders the caption; give no prompts with it")
            if not self.settings.inversion:
                raise BadInput("--reconstruct renders the inversion; drop --no-inversion")
            return
        if not self.prompts:
            raise BadInput("no prompt given; pass one or more prompts, or --prompts-file FILE ('-' for stdin)")
        if any(not p.strip() for p in self.prompts):
            raise BadInput("a prompt is empty; give each edit a text, e.g. \"an astronaut on the moon\"")
        if self.inversion_name is not None and not self.settings.inversion:
            raise BadInput("--inversion NAME and --no-inversion exclude each other; drop one")
        if self.output is not None and len(self.prompts) > 1:
            raise BadInput("-o names one file but several prompts were given; use --out-dir instead")
        if self.output is not None and len(self.settings.seeds) > 1:
            raise BadInput("-o names one file but --seeds asks for several videos; use --out-dir instead")

    def _check_output(self) -> None:
        if self.output is not None and self.output.suffix:
            named = {f.suffix: f for f in Format if f.suffix}.get(self.output.suffix.lower())
            if named is None:
                raise BadInput(f"-o {self.output} has suffix {self.output.suffix!r}; use .mp4, .gif, or no suffix "
                               "for a folder of PNG frames")
            if self.format is not None and self.format is not named:
                raise BadInput(f"-o {self.output} is a {named} but --format says {self.format}; drop one of them")

    @property
    def written_format(self) -> Format:
        """What is written: --format, else -o's suffix, else mp4."""
        if self.format is not None:
            return self.format
        if self.output is not None and self.output.suffix.lower() == ".gif":
            return Format.GIF
        return Format.MP4

    def output_path(self, stem: str) -> Path:
        """Where a video goes before a free name is taken: -o (with the format's suffix), or --out-dir/stem."""
        suffix = self.written_format.suffix
        if self.output is not None:
            return self.output if self.output.suffix else self.output.with_suffix(suffix)
        return self.out_dir / f"{stem}{suffix}"


@dataclass(frozen=True)
class ScoreJob(Settings):
    target: str = setting(help="A video (file or frames folder), or an artifact ref: its edits.")
    prompt: str | None = setting(None, "The text the video should match.", default_text="each edit's own prompt")
    clip: str = setting(DEFAULT_CLIP, "CLIP model id or folder.")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N.", nonempty=True)


@dataclass
class EditResult:
    path: Path
    prompt: str
    scores: dict[str, float] | None = None
    psnr: float | None = None  # --reconstruct: dB against the source frames
    seed: int = 0


# Options of `tav tune` that also reach the edits it runs afterwards (a config's validation prompts).
SHARED_WITH_EDITS = ("seed", "device", "dtype", "compile")


def _with_size(flat: dict[str, Any], where: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """`size` is width and height at once; an explicit width or height wins."""
    if "size" not in flat:
        return flat, where
    flat, where = dict(flat), dict(where)
    size = flat.pop("size")
    for side in ("width", "height"):
        if side not in flat:
            flat[side] = size
            if "size" in where:
                where[side] = where["size"]
    return flat, where


def tune_job(flat: dict[str, Any], where: dict[str, str] | None = None) -> TuneJob:
    """A TuneJob from flat options (the names of `tav tune`'s flags and tav's YAML keys, plus `size`)."""
    flat, where = _with_size(flat, where or {})
    return build(TuneJob, flat, where)


def edit_job(flat: dict[str, Any], where: dict[str, str] | None = None) -> EditJob:
    """An EditJob from flat options (the names of `tav edit`'s flags)."""
    return build(EditJob, flat, where)


def versions() -> dict[str, str]:
    import diffusers
    import peft
    import torch
    import transformers

    return {"tav": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__}


def playback_fps(indices: tuple[int, ...], fps: float) -> float:
    """The rate that plays the sampled frames over the time they span in the source: below 1 fps too (8
    frames spread over a 10-second clip play at 0.7 fps), which edits default to and the writers take
    (an mp4's frame rate is a fraction, a GIF's frame lasts 1000/fps ms). Earlier tav recorded at least 1."""
    if len(indices) < 2:
        return fps
    return max(0.001, round(fps * (len(indices) - 1) / (indices[-1] - indices[0]), 3))


def tune(job: TuneJob, store: Store, reporter: Reporter = Reporter(), run: ActiveRun | None = None,
         config: Path | None = None) -> Artifact:
    """Read the clip, tune, invert it once, and store adapter + inversion + source as one artifact.

    Refused before any work: a store it cannot write, a name taken or reserved by another running tune (this
    one reserves its name until it ends), a clip too big for the device's free memory.

    The tune is a run (`tavcli.app.runs`) until the artifact is committed: `run` continues a stopped one
    (`tav resume`), else a new one is started (of `config`, when the job came from one). SIGINT or SIGTERM
    stops it at the next step with its state saved, raising Interrupted that names `tav resume RUN`; once it is
    tuned and inverted, nothing stops it: it is stored (the exit-code contract of docs/scripting.md).
    """
    from tavcli.app.runs import Runs, Stopped, stopping
    from tavcli.method.video import read_video

    store.check_writable()
    run = run or Runs(store).start(job, config)
    try:
        with store.reserving(job.name):
            # the clip and the base's name first: a typo is refused before the model libraries' seconds of imports
            clip = read_video(job.video, job.sampling, job.size.width, job.size.height, job.size.resize)
            check_base_name(job.base)
            check_fits(job)
            from tavcli.method.models import load_base
            from tavcli.method.pipeline import TuneAVideo

            if job.runtime.compile:
                caches.use_compile_cache()
            reporter.stage(Stage.LOADING, job.base)
            base = load_base(builtin.locate(job.base), job.runtime.device, job.runtime.dtype, config=job.base_config)
            warn_if_truncated(base, job.prompt, reporter)
            tav = TuneAVideo.create(base, job.adapter)
            saved = run.load_state()
            if saved:
                tav.load_weights(saved[0])
            started = time.perf_counter()
            with stopping() as stop:
                hook = _Between(job, run, tav, clip, reporter, stop)
                try:
                    artifact = _tune_invert_commit(job, store, reporter, run, tav, clip, base, hook, saved, started)
                except Stopped:
                    if hook.loop is not None:
                        run.data["seconds"] = round(time.perf_counter() - started + run.data.get("seconds", 0.0), 2)
                        run.save_state(hook.loop, lambda folder: tav.save_adapter(folder, _fp32()))
                    raise Interrupted(f"interrupted at step {run.step} of {job.tuning.steps}; `tav resume {run.id}` "
                                      "continues it") from None
    except BaseException:
        run.close()  # a run with a saved state stays, to resume from it
        raise
    run.finish(artifact.id)
    return artifact


def check_base_name(name: str) -> None:
    """Refuse a base that is no built-in one, checkpoint file, diffusers folder or hub id, without loading."""
    from tavcli.method import base_names

    if not builtin.is_random(name):  # a random one is checked by `builtin.locate`, which builds it
        base_names.check(name)


def check_fits(job: TuneJob) -> None:
    """Refuse a tune whose estimated memory exceeds what the device has free, before anything is loaded."""
    from tavcli.engine.runtime import free_memory_gib, resolve_device, resolve_dtype
    from tavcli.method.tuning import estimate_gib

    device = resolve_device(job.runtime.device)
    fp32 = str(resolve_dtype(job.runtime.dtype, device)) == "torch.float32"
    # On a GPU tuning checkpoints by itself when the clip would not fit: refuse only what would not fit even so.
    low_memory = job.runtime.low_memory or device.type == "cuda"
    need = estimate_gib(job.sampling.frames, job.size.width, job.size.height, low_memory, fp32, _unet_width(job.base))
    free = free_memory_gib(device)
    if free is not None and need > free:
        fixes = ["a smaller --size", "fewer --frames"] + ([] if low_memory else ["--low-memory"])
        raise BadInput(f"tuning {counted(job.sampling.frames, 'frame')} at {job.size.width}x{job.size.height} "
                       f"needs about {need:.1f} GiB, but {device} has {free:.1f} GiB free; use "
                       f"{', '.join(fixes[:-1])} or {fixes[-1]}")


def _unet_width(base: str) -> int | None:
    """The first UNet block's channels of a base, known without loading it (None: SD v1's)."""
    from tavcli.method.models import unet_width
    from tavcli.method.random_base import TINY_UNET

    if builtin.is_random(base):
        return TINY_UNET["block_out_channels"][0] if base == f"{builtin.PREFIX}tiny" else None
    return unet_width(base)


def _tune_invert_commit(job: TuneJob, store: Store, reporter: Reporter, run: ActiveRun, tav, clip, base, hook,
                        saved, started: float) -> Artifact:
    recorded_base = identity(base, job.base)
    reporter.stage(Stage.TUNING, total=job.tuning.steps)
    losses = tav.tune(clip.frames, job.prompt, job.tuning, callback=hook.step, runtime=job.runtime, between=hook,
                      resume=saved[1] if saved else None, park=not job.preview.prompts)
    hook.stop.check()
    tav.for_inference()
    reporter.stage(Stage.INVERTING, total=job.inversion.steps)
    noise = tav.invert(clip.frames, job.inversion.steps, callback=lambda i: (reporter.step(i), hook.stop.check()),
                       runtime=job.runtime)
    hook.stop.saving = True  # tuned and inverted: from here a signal no longer stops it, the tune is stored
    seconds = round(time.perf_counter() - started + run.data.get("seconds", 0.0), 2)
    manifest = _tune_manifest(job, clip, recorded_base, base, seconds, losses, run)
    reporter.stage(Stage.SAVING)
    return _commit(store, tav, noise, clip, manifest, run)


def _fp32():
    import torch

    return torch.float32


def _tune_manifest(job: TuneJob, clip, recorded_base: BaseIdentity, base, seconds: float, losses: list[float],
                   run: ActiveRun) -> Manifest:
    from tavcli.method.models import sha256_file

    fps = playback_fps(clip.indices, clip.fps)
    video = Path(job.video)
    return Manifest(
        name=job.name, prompt=job.prompt,
        source=Source(path=str(video.resolve()), sha256=sha256_file(video) if video.is_file() else None,
                      indices=clip.indices, fps=clip.fps, frames=clip.source_frames, size=tuple(clip.source_size)),
        video=Video(frames=len(clip.indices), width=job.size.width, height=job.size.height, fps=fps,
                    resize=str(job.size.resize)),
        base=recorded_base, adapter=job.adapter,
        tuning=Tuning(**asdict(job.tuning)),
        run=Run(device=str(base.device), dtype=str(base.dtype).removeprefix("torch."), seconds=seconds,
                low_memory=job.runtime.low_memory, compile=job.runtime.compile),
        inversion=Inversion(steps=job.inversion.steps),
        loss=tuple(round(x, 6) for x in losses),
        versions=versions(),
        checkpoints=tuple(Checkpoint(**c) for c in sorted(run.data["checkpoints"], key=lambda c: c["step"])),
        previews=tuple(Preview(**p) for p in sorted(run.data["previews"], key=lambda p: p["step"])),
    )


def _commit(store: Store, tav, noise, clip, manifest: Manifest, run: ActiveRun) -> Artifact:
    from safetensors.torch import save_file

    from tavcli.app.inversions import write_source

    with store.staging() as stage:
        tav.save_adapter(stage / "adapter")
        save_file({"latents": noise.float().cpu().contiguous()}, stage / "inversion.safetensors")
        write_source(stage, clip.frames, manifest.video.fps)
        run.link_into(stage)
        return store.commit(stage, manifest.to_json())


class _Between:
    """What a tune does between two steps: report the loss, keep a checkpoint (and the run's state), render
    the previews, and stop when asked. Each is done once per step: a resumed run catches up on the step
    it stopped at."""

    def __init__(self, job: TuneJob, run: ActiveRun, tav, clip, reporter: Reporter, stop):
        self.job, self.run, self.tav, self.clip, self.reporter, self.stop = job, run, tav, clip, reporter, stop
        self.loop = None
        self.loss: float | None = None
        self.render = None  # the previewer, made at the first preview
        self.fps = playback_fps(clip.indices, clip.fps)
        self.files = _preview_names(job.preview.prompts)

    def step(self, i: int, loss) -> None:
        self.loss = float(loss)
        self.reporter.step(i, self.loss)

    def __call__(self, loop) -> None:
        self.loop = loop
        self.stop.check()
        k = loop.step
        if self.job.checkpoint.due(k) and not self.run.has_checkpoint(k):
            with loop.fp32_weights():
                self.run.add_checkpoint(k, lambda folder: self.tav.save_adapter(folder))
            self.run.save_state(loop, lambda folder: self.tav.save_adapter(folder, _fp32()))
        if self.job.preview.due(k, self.job.tuning.steps):
            for i, prompt in enumerate(self.job.preview.prompts):
                if not self.run.has_preview(k, prompt):
                    self._preview(loop, k, i, prompt)

    def _preview(self, loop, k: int, i: int, prompt: str) -> None:
        from tavcli.method.video import write_video

        p = self.job.preview
        if self.render is None:
            self.render = self.tav.previewer(self.clip.frames, list(p.prompts), p.steps, p.guidance)
        total = 2 * p.steps
        loss = "" if self.loss is None else f"loss {self.loss:.4f}, "

        def progress(j: int) -> None:
            self.reporter.detail(f"{loss}preview {j + 1}/{total}: {prompt}")
            self.stop.check()

        with loop.paused():
            video = self.render(i, progress)
        path = self.run.add_preview(k, prompt, f"previews/step-{k:06d}-{self.files[i]}.mp4",
                                    lambda f: write_video(f, video, self.fps))
        self.reporter.log(f"preview at step {k}: {path}")


def _preview_names(prompts: tuple[str, ...]) -> list[str]:
    """A file name for each preview prompt: its slug, numbered where two prompts give the same one."""
    names: list[str] = []
    for prompt in prompts:
        name, n = _slug(prompt), 1
        while name in names:
            n += 1
            name = f"{_slug(prompt)}-{n}"
        names.append(name)
    return names


def identity(base, name: str | None = None) -> BaseIdentity:
    """The base's identity for a manifest; a single file's sha256 is remembered across runs. A local file or
    folder is recorded by its absolute path (as its --base-config is), so later edits find it from anywhere;
    a built-in random base by its name (`name`, e.g. random:tiny), which rebuilds it anywhere."""
    from tavcli.method.models import base_identity

    found = base_identity(base, sha256=caches.file_sha256(base.checkpoint) if base.checkpoint else None)
    if builtin.is_random(name):
        found["name"] = name
    elif Path(base.name).expanduser().exists():
        found["name"] = os.path.abspath(Path(base.name).expanduser())
    return BaseIdentity.from_json(found, "base")


def same_base(base, recorded: BaseIdentity) -> bool:
    """Whether `base` has the weights `recorded` names: by the whole file's sha256 where one was recorded, else
    by the folder's fingerprint (`models.fingerprint_matches`: older artifacts' records too)."""
    from tavcli.method.models import fingerprint_matches

    if recorded.sha256 is not None:
        return identity(base).sha256 == recorded.sha256
    return base.checkpoint is None and fingerprint_matches(base.folder, recorded.fingerprint)


def recorded_base_name(artifact: Artifact, name: str | None) -> str:
    """The base to load for an artifact: `name`, else the one it was tuned on; refused, without loading, when
    it is no base or the recorded folder is gone."""
    base_name = name or Manifest.of(artifact).base.name
    if name is None and Path(base_name).is_absolute() and not Path(base_name).exists():
        raise BadInput(f"the base {artifact.short_id} was tuned on, {base_name}, is not there any more (moved or "
                       "deleted); pass --base NEWPATH where it is now")
    check_base_name(base_name)
    return base_name


def load_recorded_base(artifact: Artifact, name: str | None, config: str | None, force: bool, device: str,
                       dtype: str, reporter: Reporter):
    """The base an artifact was tuned on (or `name`, refused unless it is the same one or `force`)."""
    from tavcli.method.models import load_base

    recorded = Manifest.of(artifact).base
    base_name = recorded_base_name(artifact, name)
    reporter.stage(Stage.LOADING, base_name)
    single_file = Path(base_name).suffix.lower() in (".safetensors", ".ckpt")
    base = load_base(builtin.locate(base_name), device, dtype,
                     config=config or (recorded.config if single_file else None))
    if not force and not same_base(base, recorded):
        what = "sha256" if recorded.sha256 is not None else "weights' fingerprint"
        if name is None or os.path.abspath(Path(name).expanduser()) == recorded.name:
            raise BadInput(f"{base_name} has changed since {artifact.short_id} was tuned on it (its {what} differs); "
                           "pass --base NEWPATH to the weights it was tuned on, or --force to use these anyway")
        raise BadInput(f"{base_name} is not the base {artifact.short_id} was tuned on ({recorded.name}, by its "
                       f"{what}); pass --base with that base, or --force to use this one anyway")
    return base


def tuned_model(base, target, scale: float = 1.0):
    """The base with the target's adapter (the final one, or a kept checkpoint's), its deltas scaled by
    `scale`, ready to sample."""
    from tavcli.method.pipeline import TuneAVideo

    return TuneAVideo.from_adapter(base, target.artifact.file(f"{target.adapter_folder}/adapter_config.json").parent,
                                   scale=scale)


def warn_if_truncated(base, prompt: str, reporter: Reporter) -> None:
    """Say so when CLIP will read only the start of a prompt (77 tokens, the rest is cut)."""
    limit = base.tokenizer.model_max_length
    tokens = len(base.tokenizer(prompt, truncation=False).input_ids)
    if tokens > limit:
        reporter.log(f"warning: the prompt {_shown(prompt)!r} is {tokens} tokens; CLIP reads the first {limit}")


def _shown(prompt: str, limit: int = 60) -> str:
    """A prompt as progress lines show it: one line, at most `limit` characters."""
    line = " ".join(prompt.split())
    return line if len(line) <= limit else line[:limit - 1] + "…"


def _slug(text: str, limit: int = 48) -> str:
    """A file name from a prompt: its letters and digits in any script (`犬 running` -> `犬-running`)."""
    return re.sub(r"[\W_]+", "-", text.lower()).strip("-")[:limit].rstrip("-") or "edit"


def _reserve(path: Path) -> Path:
    """The first free name of path, path-1, path-2, ... taken atomically, so parallel edits never collide."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # checked before the work (check_outputs), but a disk can change meanwhile
        raise BadInput(f"could not make the folder {path.parent} ({e.strerror}); choose another --out-dir") from e
    for n in range(10_000):
        candidate = path if n == 0 else path.with_name(f"{path.stem}-{n}{path.suffix}")
        try:
            if path.suffix:
                candidate.open("x").close()
            else:
                candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise BadInput(f"too many files named like {path}; choose --out-dir or -o")


def _write(path: Path, frames: np.ndarray, fps: float) -> None:
    if path.suffix:
        from tavcli.method.video import write_video

        write_video(path, frames, fps)
        return
    from PIL import Image

    for i, frame in enumerate(frames):  # --format png: a folder of numbered frames
        Image.fromarray(frame).save(path / f"{i:04d}.png")


def check_edit(job: EditJob, target) -> None:
    """What an edit asks of this artifact (at this step): an inversion, a source clip, a frame count it can give."""
    m, label = target.manifest, target.artifact.short_id
    whole = job.settings.strength == 1  # below 1 the start is a partial inversion, made at the edit
    if job.settings.inversion and whole and job.inversion_name is None and target.final and not m.has_inversion:
        raise BadInput(f"artifact {label} has no stored inversion (imported without inv_latents); "
                       "pass --no-inversion to start from noise")
    if not whole and job.inversion_name is None and not m.has_file("source.mp4"):
        raise BadInput(f"--strength {job.settings.strength:g} partially inverts the source clip, which artifact "
                       f"{label} does not keep; use --strength 1")
    if job.grid and not m.has_file("source.mp4"):
        raise BadInput(f"artifact {label} has no source clip to put beside the edit; drop --grid")
    tuned_frames = m.video.frames
    if job.frames is not None and job.frames != tuned_frames and job.settings.inversion:
        raise BadInput(f"--frames {job.frames} needs --no-inversion: the inversion has "
                       f"{counted(tuned_frames, 'frame')} (`tav invert --frames N` makes one of N)")
    if job.grid and (job.frames not in (None, tuned_frames) or job.inversion_name is not None):
        raise BadInput(f"--grid puts the {tuned_frames}-frame source beside the edit; drop --grid, --frames or "
                       "--inversion")


def check_outputs(job: EditJob) -> None:
    """Refuse, before any work, a place the videos cannot go: a file in the way, a folder not writable (the
    folder itself is made when the first video is written)."""
    flag, folder = ("-o", job.output.parent) if job.output is not None else ("--out-dir", job.out_dir)
    given = job.output if job.output is not None else job.out_dir
    if job.output is not None and job.output.is_dir() and job.written_format is not Format.PNG:
        raise BadInput(f"-o {job.output} is a folder; use --out-dir {job.output} to write into it, or -o "
                       f"{job.output / ('NAME' + job.written_format.suffix)}")
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p == Path(p.anchor))
    if not existing.is_dir():
        raise BadInput(f"{flag} {given}: {existing} is a file, not a folder; choose another {flag}")
    if not _can_write_in(existing):
        raise BadInput(f"{flag} {given}: {existing} is not writable; choose another {flag}")


def _can_write_in(folder: Path) -> bool:
    """Whether a file can be made in `folder`, tried: os.access answers yes to root for any folder, a
    read-only mount's and /proc's included."""
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def edit(job: EditJob, store: Store, reporter: Reporter = Reporter(),
         on_result: Callable[[EditResult], None] | None = None) -> list[EditResult]:
    """Generate one video per prompt and seed with a stored artifact (at a kept step); returns what was
    written. An edit of strength < 1 first inverts the inversion's source frames part of the way, once for all
    prompts, on the edit's own schedule (docs/method.md).

    A video is kept once its record is in the artifact's edit log; `on_result` hears of it in the same
    breath (no signal between), so a caller can print each path as soon as it is written. An interrupted or
    failed video is removed: what is on disk is what the log holds."""
    import numpy as np

    from tavcli.app import inversions, refs
    from tavcli.engine.runtime import resolve_device

    target = refs.resolve(store, job.ref)
    artifact, m = target.artifact, target.manifest
    store.verify(artifact)
    store.check_writable()
    check_edit(job, target)
    # a wrong inversion name fails before anything loads
    named = inversions.find(store, target, job.inversion_name) if job.inversion_name is not None else None
    recorded_base_name(artifact, job.base)  # a mistyped --base, before torch is imported
    resolve_device(job.runtime.device)  # a bad --device is refused before anything is made or loaded
    check_outputs(job)
    if job.runtime.compile:
        caches.use_compile_cache()
    base = load_recorded_base(artifact, job.base, job.base_config, job.force, job.runtime.device, job.runtime.dtype,
                              reporter)
    for prompt in job.prompts:
        warn_if_truncated(base, prompt, reporter)
    tav = tuned_model(base, target, job.adapter_scale)
    from tavcli.method.metrics import psnr  # torch is imported by now; not before the input was checked
    scorer = _scorer(job.clip, base.device) if job.score else None
    s = job.settings
    if s.inversion and s.strength < 1:  # recomputed, not kept from tuning: it follows this edit's --steps
        inversion = named
        reporter.stage(Stage.INVERTING, total=s.partial_steps())
        noise = tav.invert(_reference_frames(target, inversion), s.steps, callback=reporter.step,
                           runtime=job.runtime, strength=s.strength)
    else:
        noise, inversion = (inversions.for_edit(store, target, tav, named, job.runtime, reporter)
                            if s.inversion else (None, None))
    noise = noise.to(base.device) if noise is not None else None
    frames = inversion.frames if inversion is not None else (job.frames or m.video.frames)
    settings = job.settings.replace(guidance=1.0) if job.reconstruct else job.settings
    prompts = (m.prompt,) if job.reconstruct else job.prompts
    source = inversions.tuned_frames(target) if job.grid else None
    reference = _reference_frames(target, inversion) if job.reconstruct else None
    fps = job.fps or m.video.fps
    results: list[EditResult] = []
    for prompt in prompts:
        started = time.perf_counter()
        reporter.stage(Stage.EDITING, _shown(prompt), settings.partial_steps())
        videos = tav.generate([prompt], settings, noise=noise, frames=frames, height=m.video.height,
                              width=m.video.width, callback=reporter.step, runtime=job.runtime)
        seconds = round((time.perf_counter() - started) / len(videos), 2)  # a batch of seeds shares the time
        for seed, video in zip(settings.videos_seeds, videos):
            scores = scorer.score(video, prompt) if scorer else None  # the edit alone, not the grid
            fidelity = psnr(video, reference) if reference is not None else None
            if source is not None:
                video = np.concatenate([source, video], axis=2)  # source left, edit right
            what = "reconstruction" if job.reconstruct else prompt
            path = _output_path(job, target, what + (f" seed{seed}" if settings.seeds else ""))
            kept = False
            try:
                _write(path, video, fps)
                record = EditRecord(
                    prompt=prompt, created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    steps=settings.steps, guidance=settings.guidance, seed=seed, inversion=settings.inversion,
                    negative_prompt=settings.negative_prompt, frames=frames, grid=job.grid,
                    format=str(job.written_format), compile=job.runtime.compile, output=str(path.resolve()),
                    seconds=seconds, scores=scores, step=None if target.final else target.step,
                    inversion_name=inversion.name if inversion else None,
                    psnr=round(fidelity, 3) if fidelity is not None and math.isfinite(fidelity) else None,
                    strength=settings.strength, eta=settings.eta, scheduler=str(settings.scheduler),
                    adapter_scale=job.adapter_scale, fps=fps).to_json()
                with held():  # recorded, returned and reported together: an interrupt comes before or after all
                    store.append_edit(artifact, record)
                    kept = True
                    results.append(EditResult(path, prompt, scores, fidelity, seed))
                    if on_result is not None:
                        on_result(results[-1])
            finally:  # an interrupted or failed video leaves nothing behind, not even its reserved name
                if not kept:
                    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    return results


def _output_path(job: EditJob, target, what: str) -> Path:
    """`-o`, or a free name in --out-dir after the artifact (and step) and the prompt."""
    return _reserve(job.output_path(f"{target.label.replace('@', '-at-')}-{_slug(what)}"))


def _reference_frames(target, inversion) -> np.ndarray:
    """The source frames an inversion was made from, to measure a reconstruction against."""
    from tavcli.app import inversions

    if inversion is None or inversion.source == "source.mp4" and inversion.indices == target.manifest.source.indices:
        return inversions.source_frames(target, None, None)[0]
    sampling = FrameSampling(frames=inversion.frames, start=inversion.start, stride=inversion.stride)
    return inversions.source_frames(target, sampling, Path(inversion.source))[0]


def prune(store: Store, ref: str, keep: tuple[int, ...]) -> Artifact:
    """Drop the checkpoints of `ref` but those at the steps `keep` (and the inversions made with them), as a
    new artifact that takes the old one's place and name; the final adapter always stays."""
    from tavcli.app import inversions, refs

    artifact = store.resolve(ref)
    m = Manifest.of(artifact)
    kept_steps = refs.kept_steps(m)
    unknown = sorted(set(keep) - set(kept_steps))
    if unknown:
        raise BadInput(f"{artifact.name or artifact.short_id} kept no adapter at step {unknown[0]}; its kept steps "
                       f"are {', '.join(map(str, kept_steps)) or 'none'}")
    dropped = [c for c in m.checkpoints if c.step not in keep]
    if not dropped:
        return artifact
    gone = {c.folder + "/" for c in dropped}
    gone |= {f"added/{i.name}/" for i in inversions.kept(store, artifact) if i.step in {c.step for c in dropped}}
    content = dataclasses.replace(m, checkpoints=tuple(c for c in m.checkpoints if c.step in keep)).to_json()
    return store.rewrite(artifact, content, keep=lambda rel: not any(rel.startswith(g) for g in gone))


def _scorer(name: str, device):
    from tavcli.method.metrics import Scorer

    return Scorer.load(name, device)


def _all_frames(path: Path, edit_half: bool = False) -> np.ndarray:
    """Every frame of a video, at CLIP's input size (its own resize and centre crop, done once here); of a
    `--grid` edit, only its right half, the edit (the left half is the source)."""
    from tavcli.method.video import read_video, resize_frames

    if not edit_half:
        total = read_video(path, FrameSampling(frames=1), 224, 224).source_frames
        return read_video(path, FrameSampling(frames=total), 224, 224).frames
    first = read_video(path, FrameSampling(frames=1), 8, 8)
    width, height = first.source_size
    frames = read_video(path, FrameSampling(frames=first.source_frames), width, height).frames
    return resize_frames(frames[:, :, width // 2:], 224, 224)


def score(job: ScoreJob, store: Store, reporter: Reporter = Reporter()) -> list[dict]:
    """The paper's two CLIP metrics for a video, or for every recorded edit of an artifact."""
    from tavcli.engine.runtime import resolve_device

    path = Path(job.target)
    if path.exists():
        if not (job.prompt or "").strip():
            raise BadInput("scoring a video needs --prompt TEXT, the prompt it should match")
        targets = [(path, job.prompt, False)]
    elif _looks_like_a_path(job.target):
        raise BadInput(f"{job.target} not found; give a video file, or an artifact ref to score its edits")
    else:
        from tavcli.app import refs

        target = refs.resolve(store, job.target)  # REF@STEP: the edits made with that checkpoint
        artifact, step = target.artifact, None if target.final else target.step
        edits = [e for e in edits_of(artifact) if e.step == step]
        targets = [(Path(e.output), job.prompt or e.prompt, e.grid) for e in edits
                   if e.output is not None and Path(e.output).exists()]
        if not targets:
            raise BadInput(f"{artifact.short_id} has no edit videos on disk to score; run `tav edit` first, "
                           "or give a video file")
        if len(targets) < len(edits):
            reporter.log(f"warning: {len(edits) - len(targets)} of {artifact.short_id}'s {len(edits)} edit videos "
                         "are gone from disk or came from another machine; scoring the others")
    reporter.stage(Stage.LOADING, job.clip)
    scorer = _scorer(job.clip, resolve_device(job.device))
    rows = []
    for video, prompt, grid in targets:
        reporter.stage(Stage.SCORING, str(video))
        frames = _all_frames(video, edit_half=grid)
        rows.append({"video": str(video), "prompt": prompt, **scorer.score(frames, prompt)})
    return rows


def _looks_like_a_path(target: str) -> bool:
    """A name with a folder or a video's suffix in it is a file the user meant, never an artifact ref."""
    return "/" in target or os.sep in target or Path(target).suffix.lower() in (".mp4", ".gif", ".png", ".mov",
                                                                                 ".webm", ".mkv", ".avi")
