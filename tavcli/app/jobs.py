"""The jobs users run — tune a clip into an artifact, edit with an artifact — shared by the CLI and bench.

Plain Python: settings in, artifacts and paths out, progress through a `Reporter` (the CLI draws it with
Rich; the default says nothing). The method library does the work; the store keeps the results.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from tavcli import __version__
from tavcli.method.adapters import AdapterSpec
from tavcli.method.attention import key_frames
from tavcli.method.ddim import EditSettings
from tavcli.method.metrics import DEFAULT_CLIP
from tavcli.method.models import DEFAULT_BASE, sha256_file
from tavcli.app.store import Artifact, Store
from tavcli.method.tuning import TuneSettings
from tavcli.method.video import FrameSampling, VideoError, read_video, write_video

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
    base_config: str | None = None  # a diffusers folder or hub id configuring a single-file base
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
    base_config: str | None = None  # default: the config recorded for a single-file base
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


def _versions() -> dict[str, str]:
    import diffusers
    import peft
    import torch
    import transformers

    return {"tav": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__}


def compile_cache_dir() -> Path:
    """Where `--compile` keeps inductor's kernels and graphs: a folder the user set wins, else tav's cache."""
    import platformdirs

    return Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR") or Path(platformdirs.user_cache_dir("tav")) / "inductor")


def _compile_cache() -> None:
    """Point inductor at `compile_cache_dir()`, for later runs; it reads the variable at its first compile."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(compile_cache_dir())


def _playback_fps(indices: tuple[int, ...], fps: float) -> float:
    """The rate that plays the sampled frames over the time they span in the source."""
    if len(indices) < 2:
        return fps
    return max(1.0, round(fps * (len(indices) - 1) / (indices[-1] - indices[0]), 3))


def tune(job: TuneJob, store: Store, reporter: Reporter = Reporter()) -> Artifact:
    """Read the clip, tune, invert it once, and store adapter + inversion + source as one artifact."""
    import torch
    from safetensors.torch import save_file

    from tavcli.method.models import load_base
    from tavcli.method.pipeline import TuneAVideo

    if not job.prompt.strip():
        raise JobError("the prompt is empty; describe the clip, e.g. \"a man is skiing\"")
    if job.settings.steps < 0:
        raise JobError(f"--steps must be 0 or more, got {job.settings.steps}")
    if job.inversion_steps < 1:
        raise JobError(f"inversion steps must be at least 1, got {job.inversion_steps}")
    key_frames(1, job.attention)  # an unknown mode fails now, not after loading the base
    store.check_name(job.name)
    clip = read_video(job.video, job.sampling, job.width, job.height, job.resize)
    if job.settings.compile:
        _compile_cache()
    reporter.stage(f"loading {job.base}")
    base = load_base(job.base, job.device, job.dtype, config=job.base_config)
    identity = _identity(base)
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
        "source": {"path": str(Path(job.video).resolve()), "sha256": sha256_file(Path(job.video)) if Path(job.video).is_file() else None,
                   "indices": list(clip.indices), "fps": clip.fps, "frames": clip.source_frames,
                   "size": list(clip.source_size)},
        "video": {"frames": len(clip.indices), "width": job.width, "height": job.height, "fps": fps,
                  "resize": job.resize},
        "base": identity,
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


def _identity(base) -> dict:
    """The base's identity for a manifest; a single file's sha256 is remembered across runs. A local file or
    folder is recorded by its absolute path (as its --base-config is), so later edits find it from anywhere."""
    from tavcli.method.models import base_identity

    identity = base_identity(base, sha256=_file_sha256(base.checkpoint) if base.checkpoint else None)
    if Path(base.name).expanduser().exists():
        identity["name"] = os.path.abspath(Path(base.name).expanduser())
    return identity


def _same_base(identity: dict, recorded: dict) -> bool:
    key = "sha256" if "sha256" in recorded else "fingerprint"
    return identity.get(key) is not None and identity.get(key) == recorded.get(key)


def _file_sha256(path: Path) -> str:
    """sha256 of a checkpoint file, cached by path, size and mtime: hashing 4 GB would add seconds to each edit."""
    import platformdirs

    stat = path.stat()
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    cache = Path(platformdirs.user_cache_dir("tav")) / "checkpoint-sha256.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known, dict) and isinstance(known.get(key), str):
        return known[key]
    digest = sha256_file(path)
    try:  # a cache, not a record: losing it only costs a re-hash
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}")
        tmp.write_text(json.dumps({**(known if isinstance(known, dict) else {}), key: digest}))
        os.replace(tmp, cache)
    except OSError:
        pass
    return digest


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
    files = artifact.manifest["files"]
    if job.settings.inversion and "inversion.safetensors" not in files:
        raise JobError(f"artifact {artifact.short_id} has no stored inversion (imported without inv_latents); "
                       "pass --no-inversion to start from noise")
    if job.grid and "source.mp4" not in files:
        raise JobError(f"artifact {artifact.short_id} has no source clip to put beside the edit; drop --grid")
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

    from tavcli.method.models import load_base
    from tavcli.method.pipeline import TuneAVideo

    artifact = store.resolve(job.ref)
    store.verify(artifact)
    check_edit(job, artifact)
    m = artifact.manifest
    base_name = job.base or m["base"]["name"]
    if job.settings.compile:
        _compile_cache()
    reporter.stage(f"loading {base_name}")
    single_file = Path(base_name).suffix.lower() in (".safetensors", ".ckpt")
    config = job.base_config or (m["base"].get("config") if single_file else None)
    base = load_base(base_name, job.device, job.dtype, config=config)
    if not job.force and not _same_base(_identity(base), m["base"]):
        raise JobError(f"{base_name} is not the base {artifact.short_id} was tuned on ({m['base']['name']}); "
                       "pass that base, or --force to use this one anyway")
    tav = TuneAVideo.from_adapter(base, artifact.file("adapter/adapter_config.json").parent)
    scorer = _scorer(job.clip, base.device) if job.score else None
    noise = (load_file(artifact.file("inversion.safetensors"))["latents"].to(base.device)
             if job.settings.inversion else None)
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
    from tavcli.method.metrics import Scorer

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
    from tavcli.method.models import resolve_device

    reporter.stage(f"loading {job.clip}")
    scorer = _scorer(job.clip, resolve_device(job.device))
    rows = []
    for video, prompt in targets:
        reporter.stage(f"scoring {video}")
        rows.append({"video": str(video), "prompt": prompt, **scorer.score(_all_frames(video), prompt)})
    return rows


# --- official Tune-A-Video models ------------------------------------------------------------------


@dataclass
class ImportOfficialJob:
    folder: Path  # the official run's output_dir (or its unet/)
    base: str | None = None  # default: config.yaml's pretrained_model_path when it can be found, else SD v1.4
    base_config: str | None = None
    name: str | None = None
    prompt: str | None = None  # default: config.yaml's train_data.prompt


def _official_base(job: ImportOfficialJob, training, reporter: Reporter) -> str:
    if job.base:
        return job.base
    given = training.pretrained_model_path if training else None
    if given and (Path(given).expanduser().exists() or (given.count("/") == 1 and not given.startswith((".", "/")))):
        return given
    reporter.log(f"the run's base {given!r} is not here; checking against {DEFAULT_BASE} (pass --base to choose)"
                 if given else f"no config.yaml names the base; checking against {DEFAULT_BASE} (pass --base to choose)")
    return DEFAULT_BASE


def import_official(job: ImportOfficialJob, store: Store, reporter: Reporter = Reporter()) -> Artifact:
    """An official tuned pipeline folder as a tav artifact: its tuned weights as a `full` adapter, checked
    against the base; its newest inversion latent and (when still on disk) its source clip come along."""
    from safetensors.torch import save_file

    from tavcli.method.adapters import save_adapter
    from tavcli.method.attention import inflate
    from tavcli.method.models import load_base
    from tavcli.app.official import OfficialError, read_official, to_adapter_state

    store.check_name(job.name)
    reporter.stage(f"reading {job.folder}")
    run = read_official(job.folder)
    training = run.training
    prompt = job.prompt or (training.prompt if training else None)
    if not prompt or not prompt.strip():
        raise JobError(f"{job.folder} has no config.yaml with train_data.prompt; pass --prompt with the caption it "
                       "was tuned on")
    base_name = _official_base(job, training, reporter)
    reporter.stage(f"loading {base_name}")
    base = load_base(base_name, "cpu", "fp32", config=job.base_config)  # fp32: frozen weights compare exactly
    inflate(base.unet, seed=0)
    state = to_adapter_state(run.state, base.unet, run.unet_config)
    latent = run.inv_latent
    frames = (training.n_sample_frames if training else None) or (latent.shape[1] if latent is not None else 8)
    width = (training.width if training else None) or (latent.shape[-1] * base.vae_factor if latent is not None else 512)
    height = (training.height if training else None) or (latent.shape[-2] * base.vae_factor if latent is not None else 512)
    if latent is not None and tuple(latent.shape[1:]) != (frames, 4, height // base.vae_factor, width // base.vae_factor):
        raise OfficialError(f"the inversion latent is {tuple(latent.shape)}, not the {frames} frames of {width}x{height} "
                            "that config.yaml describes")
    start = training.sample_start_idx if training and training.sample_start_idx is not None else 0
    stride = training.sample_frame_rate if training and training.sample_frame_rate else 1
    sampling = FrameSampling(frames=frames, start=start, stride=stride)
    video_path = Path(training.video_path).expanduser() if training and training.video_path else None
    clip = None
    if video_path is not None and not video_path.is_absolute():
        video_path = (run.folder / video_path) if (run.folder / video_path).exists() else video_path
    if video_path is not None and video_path.exists() and training.sample_frame_rate:  # else: which frames?
        try:
            clip = read_video(video_path, sampling, width, height, "squash")  # the official code squashes
        except VideoError as e:  # the source is a convenience (--grid); the model does not need it
            reporter.log(f"warning: the source clip is not stored ({e})")
    manifest = {
        "name": job.name,
        "prompt": prompt,
        "source": {"path": str(video_path.resolve()) if clip else (training.video_path if training else None),
                   "sha256": sha256_file(video_path) if clip and video_path.is_file() else None,
                   "indices": list(clip.indices) if clip else [start + i * stride for i in range(frames)],
                   "fps": clip.fps if clip else None, "frames": clip.source_frames if clip else None,
                   "size": list(clip.source_size) if clip else None},
        "video": {"frames": frames, "width": width, "height": height,
                  "fps": _playback_fps(clip.indices, clip.fps) if clip else 8.0, "resize": "squash"},
        "base": _identity(base),
        "adapter": {"kind": "full", "rank": 16, "temporal_seed": 0, "attention": "sparse-causal"},
        "tuning": {"steps": training.max_train_steps if training else None,
                   "lr": training.learning_rate if training else None, "seed": training.seed if training else None,
                   "device": "official", "dtype": str(next(iter(run.state.values())).dtype).removeprefix("torch."),
                   "seconds": None, "imported_from": str(Path(job.folder).resolve()),
                   "weights_sha256": sha256_file(run.weights_file)},
        "inversion": {"steps": None, "official_step": run.inv_latent_step} if latent is not None else None,
        "loss": [],
        "versions": _versions(),
    }
    reporter.stage("saving")
    with store.staging() as stage:
        save_adapter(base.unet, AdapterSpec("full"), stage / "adapter", state=state)
        if latent is not None:
            save_file({"latents": latent.float().contiguous()}, stage / "inversion.safetensors")
        if clip is not None:
            write_video(stage / "source.mp4", clip.frames, manifest["video"]["fps"])
        return store.commit(stage, manifest)


def _components_folder(base, folder: Path) -> Path:
    """A diffusers folder with the base's VAE, text encoder, tokenizer and scheduler: the base's own folder,
    or, for a single-file base (whose folder holds configs only), one written from the loaded weights."""
    if base.checkpoint is None:
        return base.folder
    base.vae.save_pretrained(folder / "vae")
    base.text_encoder.save_pretrained(folder / "text_encoder")
    for part in ("tokenizer", "scheduler"):
        shutil.copytree(base.folder / part, folder / part)
    if (base.folder / "model_index.json").is_file():
        shutil.copy(base.folder / "model_index.json", folder / "model_index.json")
    return folder


def export_official(ref: str, dest: Path, store: Store, base: str | None = None, base_config: str | None = None,
                    force: bool = False, reporter: Reporter = Reporter()) -> Path:
    """Write an artifact as the folder the official Tune-A-Video code loads (unet/ in its layout, the base's
    other components, model_index.json, the inversion as inv_latents/, a config.yaml)."""
    import tempfile

    from safetensors.torch import load_file

    from tavcli.method.models import load_base
    from tavcli.app.official import OfficialTraining, official_state, write_official
    from tavcli.method.pipeline import TuneAVideo

    artifact = store.resolve(ref)
    store.verify(artifact)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise JobError(f"{dest} already exists and is not empty; choose a new folder")
    m = artifact.manifest
    base_name = base or m["base"]["name"]
    single_file = Path(base_name).suffix.lower() in (".safetensors", ".ckpt")
    reporter.stage(f"loading {base_name}")
    loaded = load_base(base_name, "cpu", "fp32",
                       config=base_config or (m["base"].get("config") if single_file else None))
    if not force and not _same_base(_identity(loaded), m["base"]):
        raise JobError(f"{base_name} is not the base {artifact.short_id} was tuned on ({m['base']['name']}); "
                       "pass that base, or --force to use this one anyway")
    tav = TuneAVideo.from_adapter(loaded, artifact.file("adapter/adapter_config.json").parent)
    state = official_state(tav.unet)
    files = m["files"]
    latent = load_file(artifact.file("inversion.safetensors"))["latents"] if "inversion.safetensors" in files else None
    indices = m["source"].get("indices") or []
    # The official config can only say "every K-th frame from S"; tav's uniform spread is written only if it is one.
    strided = len(indices) > 1 and len({b - a for a, b in zip(indices, indices[1:])}) == 1
    local = Path(base_name).expanduser()
    training = OfficialTraining(
        prompt=m["prompt"], video_path=m["source"].get("path"), n_sample_frames=m["video"]["frames"],
        width=m["video"]["width"], height=m["video"]["height"], sample_start_idx=indices[0] if indices else None,
        sample_frame_rate=indices[1] - indices[0] if strided else None,
        pretrained_model_path=str(local.resolve()) if local.exists() else base_name,
        max_train_steps=m["tuning"].get("steps"),
        learning_rate=m["tuning"].get("lr"), seed=m["tuning"].get("seed"))
    reporter.stage(f"writing {dest}")
    with tempfile.TemporaryDirectory(prefix="tav-export-") as tmp:
        components = _components_folder(loaded, Path(tmp))
        return write_official(dest, state, dict(loaded.unet.config), components, inv_latent=latent,
                              inv_step=m["tuning"].get("steps") or 0, training=training)
