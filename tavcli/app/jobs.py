"""The jobs users run — tune a clip into an artifact, edit with an artifact, score videos — shared by the
CLI and bench.

A job is a frozen settings tree (`tavcli.settings`): `TuneJob` holds the paper's settings (what to read
of the clip, the adapter, tuning, inversion) and the runtime; `build(TuneJob, flat)` makes one from flat
options, the CLI's flags and the YAML configs alike. Running one is plain Python: a job in, an artifact
or paths out, progress through a `Reporter`. The method library does the work; the store keeps the
results. This module imports no model library until a job runs: the CLI reads its help from here.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tavcli import __version__
from tavcli.app import caches
from tavcli.app.progress import Reporter, Stage
from tavcli.app.manifest import (
    BaseIdentity,
    EditRecord,
    Inversion,
    Manifest,
    Run,
    Source,
    Tuning,
    Video,
    edits_of,
)
from tavcli.app.store import Artifact, Store
from tavcli.engine.runtime import Runtime
from tavcli.errors import BadInput
from tavcli.method.params import (
    DEFAULT_BASE,
    DEFAULT_CLIP,
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


class Format(Mode):
    MP4 = "mp4"
    GIF = "gif"
    PNG = "png"  # a folder of numbered frames


@dataclass(frozen=True)
class TuneJob(Settings):
    video: Path = setting(help="A video file, a GIF, or a folder of frames.")
    prompt: str = setting(help="The clip's caption, e.g. \"a man is skiing\".", nonempty=True)
    name: str | None = setting(None, "A name to refer to the artifact by.")
    base: str = setting(DEFAULT_BASE, "SD v1.x hub id, diffusers folder, or single-file .safetensors/.ckpt checkpoint.")
    base_config: str | None = setting(None, "For a single-file --base: an SD v1.x diffusers folder (or hub id) with "
                                            "its configs, tokenizer and scheduler (needed offline).")
    sampling: FrameSampling = nested(FrameSampling)
    size: FrameSize = nested(FrameSize)
    adapter: AdapterSpec = nested(AdapterSpec)
    tuning: TuneSettings = nested(TuneSettings)
    inversion: InversionSettings = nested(InversionSettings)
    runtime: Runtime = nested(Runtime)


@dataclass(frozen=True)
class EditJob(Settings):
    ref: str = setting(help="Artifact id, unique id prefix, or name.")
    prompts: tuple[str, ...] = setting(help="One or more prompts; each makes one video.")
    settings: EditSettings = nested(EditSettings)
    output: Path | None = setting(None, "Output path (one prompt only).")
    out_dir: Path = setting(Path("."), "Folder for outputs named after artifact and prompt.")
    format: Format = setting(Format.MP4, "mp4, gif or png (a folder of frames).")
    frames: int | None = setting(None, "Frames to generate (with --no-inversion).", min=1, default_text="the tuned count")
    grid: bool = setting(False, "Source and edit side by side.")
    fps: float = setting(8.0, "Output frame rate (the official samples' 8).", positive=True)
    base: str | None = setting(None, "Base model.", default_text="the one tuned on")
    base_config: str | None = setting(None, "Configs for a single-file base.", default_text="the ones recorded at tuning")
    force: bool = setting(False, "Use --base even if it is not the one tuned on.")
    score: bool = setting(False, "Also print and record CLIP score and frame consistency.")
    clip: str = setting(DEFAULT_CLIP, "CLIP model for --score (hub id or folder).")
    runtime: Runtime = nested(Runtime)

    def check(self) -> None:
        if not self.prompts or any(not p.strip() for p in self.prompts):
            raise BadInput("a prompt is empty; give each edit a text, e.g. \"an astronaut on the moon\"")
        if self.output is not None and len(self.prompts) > 1:
            raise BadInput("-o names one file but several prompts were given; use --out-dir instead")


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
    """The rate that plays the sampled frames over the time they span in the source."""
    if len(indices) < 2:
        return fps
    return max(1.0, round(fps * (len(indices) - 1) / (indices[-1] - indices[0]), 3))


def tune(job: TuneJob, store: Store, reporter: Reporter = Reporter()) -> Artifact:
    """Read the clip, tune, invert it once, and store adapter + inversion + source as one artifact."""
    from safetensors.torch import save_file

    from tavcli.method.models import load_base, sha256_file
    from tavcli.method.pipeline import TuneAVideo
    from tavcli.method.video import read_video, write_video

    store.check_name(job.name)
    clip = read_video(job.video, job.sampling, job.size.width, job.size.height, job.size.resize)
    if job.runtime.compile:
        caches.use_compile_cache()
    reporter.stage(Stage.LOADING, job.base)
    base = load_base(job.base, job.runtime.device, job.runtime.dtype, config=job.base_config)
    recorded_base = identity(base)
    tav = TuneAVideo.create(base, job.adapter)
    started = time.perf_counter()
    reporter.stage(Stage.TUNING, total=job.tuning.steps)
    losses = tav.tune(clip.frames, job.prompt, job.tuning, callback=lambda i, loss: reporter.step(i, float(loss)),
                      runtime=job.runtime)
    tav.for_inference()
    reporter.stage(Stage.INVERTING, total=job.inversion.steps)
    noise = tav.invert(clip.frames, job.inversion.steps, callback=reporter.step, runtime=job.runtime)
    seconds = round(time.perf_counter() - started, 2)
    fps = playback_fps(clip.indices, clip.fps)
    video = Path(job.video)
    manifest = Manifest(
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
    )
    reporter.stage(Stage.SAVING)
    with store.staging() as stage:
        tav.save_adapter(stage / "adapter")
        save_file({"latents": noise.float().cpu().contiguous()}, stage / "inversion.safetensors")
        write_video(stage / "source.mp4", clip.frames, fps)
        return store.commit(stage, manifest.to_json())


def identity(base) -> BaseIdentity:
    """The base's identity for a manifest; a single file's sha256 is remembered across runs. A local file or
    folder is recorded by its absolute path (as its --base-config is), so later edits find it from anywhere."""
    from tavcli.method.models import base_identity

    found = base_identity(base, sha256=caches.file_sha256(base.checkpoint) if base.checkpoint else None)
    if Path(base.name).expanduser().exists():
        found["name"] = os.path.abspath(Path(base.name).expanduser())
    return BaseIdentity.from_json(found, "base")


def same_base(identity: BaseIdentity, recorded: BaseIdentity) -> bool:
    """Whether two identities name the same weights: by the whole file's sha256 where one was recorded, else
    by the folder's fingerprint."""
    key = "sha256" if recorded.sha256 is not None else "fingerprint"
    return getattr(identity, key) is not None and getattr(identity, key) == getattr(recorded, key)


def load_recorded_base(artifact: Artifact, name: str | None, config: str | None, force: bool, device: str,
                       dtype: str, reporter: Reporter):
    """The base an artifact was tuned on (or `name`, refused unless it is the same one or `force`)."""
    from tavcli.method.models import load_base

    recorded = Manifest.of(artifact).base
    base_name = name or recorded.name
    reporter.stage(Stage.LOADING, base_name)
    single_file = Path(base_name).suffix.lower() in (".safetensors", ".ckpt")
    base = load_base(base_name, device, dtype, config=config or (recorded.config if single_file else None))
    if not force and not same_base(identity(base), recorded):
        raise BadInput(f"{base_name} is not the base {artifact.short_id} was tuned on ({recorded.name}); "
                       "pass that base, or --force to use this one anyway")
    return base


def _slug(text: str, limit: int = 48) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].rstrip("-") or "edit"


def _reserve(path: Path) -> Path:
    """The first free name of path, path-1, path-2, ... taken atomically, so parallel edits never collide."""
    path.parent.mkdir(parents=True, exist_ok=True)
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


def check_edit(job: EditJob, artifact: Artifact) -> None:
    """What an edit asks of this artifact: a stored inversion, a source clip, a frame count it can give."""
    m = Manifest.of(artifact)
    if job.settings.inversion and not m.has_inversion:
        raise BadInput(f"artifact {artifact.short_id} has no stored inversion (imported without inv_latents); "
                       "pass --no-inversion to start from noise")
    if job.grid and not m.has_file("source.mp4"):
        raise BadInput(f"artifact {artifact.short_id} has no source clip to put beside the edit; drop --grid")
    tuned_frames = m.video.frames
    if job.frames is not None and job.frames != tuned_frames and job.settings.inversion:
        raise BadInput(f"--frames {job.frames} needs --no-inversion: the stored inversion has {tuned_frames} frames")
    if job.grid and job.frames not in (None, tuned_frames):
        raise BadInput(f"--grid puts the {tuned_frames}-frame source beside the edit; drop --grid or --frames")


def edit(job: EditJob, store: Store, reporter: Reporter = Reporter()) -> list[EditResult]:
    """Generate one video per prompt with a stored artifact; returns what was written (and its scores)."""
    import numpy as np
    from safetensors.torch import load_file

    from tavcli.method.pipeline import TuneAVideo
    from tavcli.method.video import read_video

    artifact = store.resolve(job.ref)
    store.verify(artifact)
    check_edit(job, artifact)
    m = Manifest.of(artifact)
    if job.runtime.compile:
        caches.use_compile_cache()
    base = load_recorded_base(artifact, job.base, job.base_config, job.force, job.runtime.device, job.runtime.dtype,
                              reporter)
    tav = TuneAVideo.from_adapter(base, artifact.file("adapter/adapter_config.json").parent)
    scorer = _scorer(job.clip, base.device) if job.score else None
    noise = (load_file(artifact.file("inversion.safetensors"))["latents"].to(base.device)
             if job.settings.inversion else None)
    frames = job.frames or m.video.frames
    source = read_video(artifact.file("source.mp4"), FrameSampling(frames=m.video.frames),
                        m.video.width, m.video.height).frames if job.grid else None
    results = []
    for prompt in job.prompts:
        started = time.perf_counter()
        reporter.stage(Stage.EDITING, prompt, job.settings.steps)
        video = tav.generate([prompt], job.settings, noise=noise, frames=frames, height=m.video.height,
                             width=m.video.width, callback=reporter.step, runtime=job.runtime)[0]
        scores = scorer.score(video, prompt) if scorer else None  # the edit alone, not the grid
        if source is not None:
            video = np.concatenate([source, video], axis=2)  # source left, edit right
        suffix = "" if job.format == "png" else f".{job.format}"
        output = job.output.with_suffix(suffix) if job.output and not job.output.suffix else job.output
        path = _reserve(output or job.out_dir / f"{artifact.name or artifact.short_id}-{_slug(prompt)}{suffix}")
        try:
            _write(path, video, job.fps)
        except BaseException:  # an interrupted or failed write leaves no empty placeholder behind
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
            raise
        seconds = round(time.perf_counter() - started, 2)
        s = job.settings
        store.append_edit(artifact, EditRecord(
            prompt=prompt, created=datetime.now(timezone.utc).isoformat(timespec="seconds"), steps=s.steps,
            guidance=s.guidance, seed=s.seed, inversion=s.inversion, negative_prompt=s.negative_prompt,
            frames=frames, grid=job.grid, format=str(job.format), compile=job.runtime.compile,
            output=str(path.resolve()), seconds=seconds, scores=scores).to_json())
        results.append(EditResult(path, prompt, scores))
    return results


def _scorer(name: str, device):
    from tavcli.method.metrics import Scorer

    return Scorer.load(name, device)


def _all_frames(path: Path) -> np.ndarray:
    """Every frame of a video, at CLIP's input size (its own resize and centre crop, done once here)."""
    from tavcli.method.video import read_video

    total = read_video(path, FrameSampling(frames=1), 224, 224).source_frames
    return read_video(path, FrameSampling(frames=total), 224, 224).frames


def score(job: ScoreJob, store: Store, reporter: Reporter = Reporter()) -> list[dict]:
    """The paper's two CLIP metrics for a video, or for every recorded edit of an artifact."""
    from tavcli.engine.runtime import resolve_device

    path = Path(job.target)
    if path.exists():
        if not (job.prompt or "").strip():
            raise BadInput("scoring a video needs --prompt TEXT, the prompt it should match")
        targets = [(path, job.prompt)]
    else:
        artifact = store.resolve(job.target)
        targets = [(Path(e.output), job.prompt or e.prompt) for e in edits_of(artifact)
                   if e.output is not None and Path(e.output).exists()]
        if not targets:
            raise BadInput(f"{artifact.short_id} has no edit videos on disk to score; run `tav edit` first, "
                           "or give a video file")
    reporter.stage(Stage.LOADING, job.clip)
    scorer = _scorer(job.clip, resolve_device(job.device))
    rows = []
    for video, prompt in targets:
        reporter.stage(Stage.SCORING, str(video))
        rows.append({"video": str(video), "prompt": prompt, **scorer.score(_all_frames(video), prompt)})
    return rows
