"""The jobs users run — tune a clip into an artifact, edit with an artifact — shared by the CLI and bench.

Plain Python: settings in, artifacts and paths out, progress through a `Reporter` (the CLI draws it with
Rich; the default says nothing). The method library does the work; the store keeps the results.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import __version__
from .adapters import AdapterSpec
from .attention import key_frames
from .ddim import EditSettings
from .metrics import DEFAULT_CLIP
from .models import DEFAULT_BASE, fingerprint
from .store import Artifact, Store
from .tuning import TuneSettings
from .video import FrameSampling, read_video, write_video

FORMATS = ("mp4", "gif", "png")


class JobError(ValueError):
    """Bad input to a job (exit 2): the message names the problem and the fix."""


class Reporter:
    """Progress sink: the CLI overrides these; the defaults are silent."""

    def stage(self, name: str, total: int | None = None) -> None: ...

    def step(self, i: int, loss: float | None = None) -> None: ...

    def log(self, message: str) -> None: ...


@dataclass
class TuneJob:
    video: Path
    prompt: str
    name: str | None = None
    base: str = DEFAULT_BASE
    sampling: FrameSampling = field(default_factory=FrameSampling)
    width: int = 512
    height: int = 512
    resize: str = "crop"
    adapter: AdapterSpec = field(default_factory=AdapterSpec)
    attention: str = "sparse-causal"
    settings: TuneSettings = field(default_factory=TuneSettings)
    inversion_steps: int = 50
    device: str = "auto"
    dtype: str = "auto"


@dataclass
class EditJob:
    ref: str
    prompts: list[str]
    settings: EditSettings = field(default_factory=EditSettings)
    output: Path | None = None  # one prompt only
    out_dir: Path = Path(".")
    format: str = "mp4"
    frames: int | None = None  # another length: only without inversion
    grid: bool = False
    fps: float = 8.0  # the official code's sample rate; the source's own pace is in the manifest
    base: str | None = None  # default: the base the artifact was tuned on
    force: bool = False  # a base that differs from the tuned-on one
    device: str = "auto"
    dtype: str = "auto"
    score: bool = False  # CLIP score and frame consistency of each edit, recorded with it
    clip: str = DEFAULT_CLIP


@dataclass
class EditResult:
    path: Path
    prompt: str
    scores: dict[str, float] | None = None


@dataclass
class ScoreJob:
    target: str  # a video file, a frames folder, or an artifact ref (then: its recorded edits)
    prompt: str | None = None  # default for a ref: each edit's own prompt
    clip: str = DEFAULT_CLIP
    device: str = "auto"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _versions() -> dict[str, str]:
    import diffusers
    import peft
    import torch
    import transformers

    return {"tav": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__}


def _playback_fps(indices: tuple[int, ...], fps: float) -> float:
    """The rate that plays the sampled frames over the time they span in the source."""
    if len(indices) < 2:
        return fps
    return max(1.0, round(fps * (len(indices) - 1) / (indices[-1] - indices[0]), 3))


def tune(job: TuneJob, store: Store, reporter: Reporter = Reporter()) -> Artifact:
    """Read the clip, tune, invert it once, and store adapter + inversion + source as one artifact."""
    import torch
    from safetensors.torch import save_file

    from .models import load_base
    from .pipeline import TuneAVideo

    if not job.prompt.strip():
        raise JobError("the prompt is empty; describe the clip, e.g. \"a man is skiing\"")
    if job.settings.steps < 0:
        raise JobError(f"--steps must be 0 or more, got {job.settings.steps}")
    if job.inversion_steps < 1:
        raise JobError(f"inversion steps must be at least 1, got {job.inversion_steps}")
    key_frames(1, job.attention)  # an unknown mode fails now, not after loading the base
    store.check_name(job.name)
    clip = read_video(job.video, job.sampling, job.width, job.height, job.resize)
    reporter.stage(f"loading {job.base}")
    base = load_base(job.base, job.device, job.dtype)
    identity = fingerprint(base.folder)
    tav = TuneAVideo.create(base, job.adapter, attention=job.attention)
    started = time.perf_counter()
    reporter.stage("tuning", job.settings.steps)
    losses = tav.tune(clip.frames, job.prompt, job.settings, callback=lambda i, loss: reporter.step(i, float(loss)))
    reporter.stage("inverting", job.inversion_steps)
    noise = tav.invert(clip.frames, job.inversion_steps, callback=reporter.step)
    seconds = round(time.perf_counter() - started, 2)
    fps = _playback_fps(clip.indices, clip.fps)
    manifest = {
        "name": job.name,
        "prompt": job.prompt,
        "source": {"path": str(Path(job.video).resolve()), "sha256": _sha256(Path(job.video)) if Path(job.video).is_file() else None,
                   "indices": list(clip.indices), "fps": clip.fps, "frames": clip.source_frames,
                   "size": list(clip.source_size)},
        "video": {"frames": len(clip.indices), "width": job.width, "height": job.height, "fps": fps,
                  "resize": job.resize},
        "base": {"name": job.base, "revision": base.revision, "fingerprint": identity},
        "adapter": asdict(job.adapter) | {"attention": job.attention},
        "tuning": asdict(job.settings) | {"device": str(base.device), "dtype": str(base.dtype).removeprefix("torch."),
                                          "seconds": seconds},
        "inversion": {"steps": job.inversion_steps},
        "loss": [round(x, 6) for x in losses],
        "versions": _versions(),
    }
    reporter.stage("saving")
    with store.staging() as stage:
        tav.save_adapter(stage / "adapter")
        save_file({"latents": noise.float().cpu().contiguous()}, stage / "inversion.safetensors")
        write_video(stage / "source.mp4", clip.frames, fps)
        return store.commit(stage, manifest)


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
    raise JobError(f"too many files named like {path}; choose --out-dir or -o")


def _write(path: Path, frames: np.ndarray, fps: float) -> None:
    if path.suffix:
        write_video(path, frames, fps)
        return
    from PIL import Image

    for i, frame in enumerate(frames):  # --format png: a folder of numbered frames
        Image.fromarray(frame).save(path / f"{i:04d}.png")


def check_edit(job: EditJob, artifact: Artifact) -> None:
    if job.format not in FORMATS:
        raise JobError(f"unknown format {job.format!r}; choose one of {', '.join(FORMATS)}")
    if not job.prompts or any(not p.strip() for p in job.prompts):
        raise JobError("a prompt is empty; give each edit a text, e.g. \"an astronaut on the moon\"")
    if job.output is not None and len(job.prompts) > 1:
        raise JobError("-o names one file but several prompts were given; use --out-dir instead")
    tuned_frames = artifact.manifest["video"]["frames"]
    if job.frames is not None and job.frames != tuned_frames and job.settings.inversion:
        raise JobError(f"--frames {job.frames} needs --no-inversion: the stored inversion has {tuned_frames} frames")
    if job.settings.steps < 1:
        raise JobError(f"--steps must be at least 1, got {job.settings.steps}")
    if job.fps <= 0:
        raise JobError(f"--fps must be positive, got {job.fps}")
    if job.frames is not None and job.frames < 1:
        raise JobError(f"--frames must be at least 1, got {job.frames}")
    if job.grid and job.frames not in (None, tuned_frames):
        raise JobError(f"--grid puts the {tuned_frames}-frame source beside the edit; drop --grid or --frames")


def edit(job: EditJob, store: Store, reporter: Reporter = Reporter()) -> list[EditResult]:
    """Generate one video per prompt with a stored artifact; returns what was written (and its scores)."""
    from safetensors.torch import load_file

    from .models import load_base
    from .pipeline import TuneAVideo

    artifact = store.resolve(job.ref)
    store.verify(artifact)
    check_edit(job, artifact)
    m = artifact.manifest
    base_name = job.base or m["base"]["name"]
    reporter.stage(f"loading {base_name}")
    base = load_base(base_name, job.device, job.dtype)
    if not job.force and fingerprint(base.folder) != m["base"]["fingerprint"]:
        raise JobError(f"{base_name} is not the base {artifact.short_id} was tuned on ({m['base']['name']}); "
                       "pass that base, or --force to use this one anyway")
    tav = TuneAVideo.from_adapter(base, artifact.file("adapter/adapter_config.json").parent)
    scorer = _scorer(job.clip, base.device) if job.score else None
    noise = load_file(artifact.file("inversion.safetensors"))["latents"].to(base.device)
    frames = job.frames or m["video"]["frames"]
    fps = job.fps
    source = read_video(artifact.file("source.mp4"), FrameSampling(frames=m["video"]["frames"]),
                        m["video"]["width"], m["video"]["height"]).frames if job.grid else None
    results = []
    for prompt in job.prompts:
        started = time.perf_counter()
        reporter.stage(f"editing: {prompt}", job.settings.steps)
        video = tav.generate([prompt], job.settings, noise=noise, frames=frames, height=m["video"]["height"],
                             width=m["video"]["width"], callback=reporter.step)[0]
        scores = scorer.score(video, prompt) if scorer else None  # the edit alone, not the grid
        if source is not None:
            video = np.concatenate([source, video], axis=2)  # source left, edit right
        suffix = "" if job.format == "png" else f".{job.format}"
        output = job.output.with_suffix(suffix) if job.output and not job.output.suffix else job.output
        path = _reserve(output or job.out_dir / f"{artifact.name or artifact.short_id}-{_slug(prompt)}{suffix}")
        try:
            _write(path, video, fps)
        except BaseException:  # an interrupted or failed write leaves no empty placeholder behind
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
            raise
        seconds = round(time.perf_counter() - started, 2)
        store.append_edit(artifact, asdict(job.settings) | {
            "prompt": prompt, "frames": frames, "grid": job.grid, "format": job.format, "output": str(path.resolve()),
            "seconds": seconds, "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            | ({"scores": scores} if scores else {}))
        results.append(EditResult(path, prompt, scores))
    return results


def _scorer(name: str, device):
    from .metrics import Scorer

    return Scorer.load(name, device)


def _all_frames(path: Path) -> np.ndarray:
    """Every frame of a video, at CLIP's input size (its own resize and centre crop, done once here)."""
    total = read_video(path, FrameSampling(frames=1), 224, 224).source_frames
    return read_video(path, FrameSampling(frames=total), 224, 224).frames


def score(job: ScoreJob, store: Store, reporter: Reporter = Reporter()) -> list[dict]:
    """The paper's two CLIP metrics for a video, or for every recorded edit of an artifact."""
    path = Path(job.target)
    if path.exists():
        if not (job.prompt or "").strip():
            raise JobError("scoring a video needs --prompt TEXT, the prompt it should match")
        targets = [(path, job.prompt)]
    else:
        artifact = store.resolve(job.target)
        targets = [(Path(e["output"]), job.prompt or e["prompt"]) for e in artifact.edits()
                   if Path(e["output"]).exists()]
        if not targets:
            raise JobError(f"{artifact.short_id} has no edit videos on disk to score; run `tav edit` first, "
                           "or give a video file")
    from .models import resolve_device

    reporter.stage(f"loading {job.clip}")
    scorer = _scorer(job.clip, resolve_device(job.device))
    rows = []
    for video, prompt in targets:
        reporter.stage(f"scoring {video}")
        rows.append({"video": str(video), "prompt": prompt, **scorer.score(_all_frames(video), prompt)})
    return rows
