"""Inversions beyond the one stored at tuning: `tav invert` (more steps, other frames, a longer clip) and the
inversion of a checkpoint, computed the first time it is edited. Both are kept with the artifact (the store's
`added/`), named, and reused by later edits.

Which frames are inverted: the artifact's own copy of the tuned frames when the request is the tuned
sampling (`source.safetensors`, the very frames tuning read; an artifact made before 2026-12-04 has only
`source.mp4`, an H.264 copy, whose inversion differs slightly from tuning's: docs/method.md); otherwise the
original clip, when it is still at its recorded path with its recorded sha256, or the video the user passes
with `--video`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tavcli.app.manifest import KeptInversion, Manifest, ManifestError
from tavcli.app.progress import Reporter, Stage
from tavcli.app.refs import Target
from tavcli.app.store import Store, check_name_syntax
from tavcli.engine.runtime import Runtime
from tavcli.errors import BadInput, NotFound
from tavcli.method.params import MAX_FRAMES, MAX_STEPS, FrameSampling
from tavcli.settings import Settings, nested, setting

if TYPE_CHECKING:
    import numpy as np
    import torch

    from tavcli.method.pipeline import TuneAVideo

LATENTS = "inversion.safetensors"
SOURCE_FRAMES = "source.safetensors"  # the tuned frames, exactly (uint8); source.mp4 is their copy to watch


def write_source(stage: Path, frames: np.ndarray, fps: float) -> None:
    """The tuned frames into an artifact being staged: `source.mp4` to watch, and `source.safetensors` so that
    a later inversion reads the very frames tuning read (H.264's yuv420p moves them by a few levels)."""
    import numpy as np
    from safetensors.numpy import save_file

    from tavcli.method.video import write_video

    write_video(stage / "source.mp4", frames, fps)
    save_file({"frames": np.ascontiguousarray(frames)}, stage / SOURCE_FRAMES)


def tuned_frames(target: Target) -> np.ndarray:
    """The frames the artifact was tuned on (F, H, W, 3) uint8: exactly where it keeps them, else decoded from
    its `source.mp4`."""
    m: Manifest = target.manifest
    if m.has_file(SOURCE_FRAMES):
        from safetensors.numpy import load_file

        return load_file(target.artifact.file(SOURCE_FRAMES))["frames"]
    from tavcli.method.video import read_video

    return read_video(target.artifact.file("source.mp4"), FrameSampling(frames=m.video.frames), m.video.width,
                      m.video.height, m.video.resize).frames


@dataclass(frozen=True)
class InvertJob(Settings):
    ref: str = setting(help="Artifact id, unique id prefix or name, or REF@STEP for a kept checkpoint.")
    steps: int | None = setting(None, "DDIM inversion steps.", min=1, max=MAX_STEPS,
                                default_text="the tuning's (50)")
    frames: int | None = setting(None, "Frames to invert.", min=1, max=MAX_FRAMES, default_text="the tuned count")
    start: int | None = setting(None, "First frame index of the source.", min=0, default_text="the tuned start")
    stride: int | None = setting(None, "Take every K-th source frame.", min=1, default_text="the tuned frames' spacing")
    video: Path | None = setting(None, "The source video to read (when the original has moved, or for frames "
                                       "beyond the tuned ones).", default_text="the recorded source")
    name: str | None = setting(None, "Name to keep it under.", default_text="from its steps and frames")
    runtime: Runtime = nested(Runtime)

    @property
    def custom_frames(self) -> bool:
        return any(v is not None for v in (self.frames, self.start, self.stride))


def kept(store: Store, artifact) -> list[KeptInversion]:
    """The inversions kept with an artifact after it was stored (unreadable records are skipped)."""
    found = []
    for record in store.added(artifact):
        if record.get("kind") != "inversion":
            continue
        try:
            found.append(KeptInversion.from_json(record, f"inversion '{record.get('name')}'"))
        except ManifestError:
            continue
    return found


def find(store: Store, target: Target, name: str) -> KeptInversion:
    """The kept inversion `name` of the target's artifact; NotFound (listing the names) if there is none."""
    inversions = kept(store, target.artifact)
    for inv in inversions:
        if inv.name == name:
            if inv.step != target.step:
                raise BadInput(f"inversion '{name}' was made with the adapter of step {inv.step}, not {target.step}; "
                               f"edit {target.artifact.name or target.artifact.short_id}@{inv.step} with it, "
                               "or `tav invert` this step")
            return inv
    names = ", ".join(i.name for i in inversions) or "none"
    raise NotFound(f"{target.label} keeps no inversion named '{name}' (kept: {names}); make one with `tav invert`")


def load_latents(store: Store, target: Target, inversion: KeptInversion | None) -> torch.Tensor:
    """The latents of a kept inversion (hash-checked), or of the one stored at tuning."""
    from safetensors.torch import load_file

    path = (store.added_file(target.artifact, inversion.files, inversion.file) if inversion is not None
            else target.artifact.file(LATENTS))
    return load_file(path)["latents"]


def source_frames(target: Target, sampling: FrameSampling | None, video: Path | None) -> tuple[np.ndarray, tuple, str]:
    """The frames to invert (uint8, at the tuned size), their source indices and what they were read from.

    `sampling` None: the tuned frames."""
    from tavcli.method.models import sha256_file
    from tavcli.method.video import read_video

    m: Manifest = target.manifest
    size = (m.video.width, m.video.height, m.video.resize)
    if video is None and (sampling is None or sampling == _tuned_sampling(m)) and m.has_file("source.mp4"):
        return tuned_frames(target), m.source.indices, "source.mp4"  # the label names the artifact's copy
    sampling = sampling or _tuned_sampling(m)
    if video is None:
        recorded = Path(m.source.path) if m.source.path else None
        if recorded is None or not recorded.is_file() or (m.source.sha256 and sha256_file(recorded) != m.source.sha256):
            raise BadInput(f"the source clip {m.source.path} is not at its recorded path (or changed) and the "
                           f"artifact keeps only its {m.video.frames} tuned frames; pass --video CLIP")
        video = recorded
    clip = read_video(video, sampling, *size)
    return clip.frames, clip.indices, str(Path(video).resolve())


def _tuned_sampling(m: Manifest) -> FrameSampling:
    """The tuned frames as a FrameSampling: a stride when they are evenly spaced, else spread from the start."""
    idx = m.source.indices
    gaps = {b - a for a, b in zip(idx, idx[1:])}
    return FrameSampling(frames=len(idx), start=idx[0] if idx else 0, stride=gaps.pop() if len(gaps) == 1 else None)


def _sampling(job: InvertJob, m: Manifest) -> FrameSampling | None:
    if not job.custom_frames:
        return None
    tuned = _tuned_sampling(m)
    return FrameSampling(frames=job.frames if job.frames is not None else tuned.frames,
                         start=job.start if job.start is not None else tuned.start,
                         stride=job.stride if job.stride is not None else tuned.stride)


def _default_name(store: Store, target: Target, steps: int, frames: int) -> str:
    taken = {i.name for i in kept(store, target.artifact)}
    stem = f"{'' if target.final else f'step-{target.step}-'}{steps}-steps-{frames}-frames"
    return next(n for n in (stem if k == 0 else f"{stem}-{k}" for k in range(10_000)) if n not in taken)


def _tuned_steps(m: Manifest) -> int:
    """The inversion steps of tuning (50, the paper's, for an import that does not say)."""
    return m.inversion.steps if m.inversion is not None and m.inversion.steps else 50


def compute(store: Store, target: Target, tav: TuneAVideo, read: tuple[np.ndarray, tuple, str],
            sampling: FrameSampling, *, steps: int, name: str, runtime: Runtime, reporter: Reporter) -> KeptInversion:
    """Invert frames `read` by `source_frames` with `tav` (the target's model); keep the result as `name`."""
    from safetensors.torch import save_file

    frames, indices, source = read
    reporter.stage(Stage.INVERTING, total=steps)
    latents = tav.invert(frames, steps, callback=reporter.step, runtime=runtime)
    with store.staging() as stage:
        save_file({"latents": latents.float().cpu().contiguous()}, stage / LATENTS)
        record = store.add(target.artifact, name, stage, {
            "kind": "inversion", "step": target.step, "steps": steps, "indices": list(indices), "source": source,
            "start": sampling.start, "stride": sampling.stride, "file": f"added/{name}/{LATENTS}"})
    return KeptInversion.from_json(record, f"inversion '{name}'")


def for_edit(store: Store, target: Target, tav: TuneAVideo, named: KeptInversion | None, runtime: Runtime,
             reporter: Reporter) -> tuple[torch.Tensor, KeptInversion | None]:
    """The inversion an edit starts from: the one `named` (`find` it first), or the one stored at tuning
    (final adapter), or, for a checkpoint, its own, computed the first time with that checkpoint's model and
    kept for later edits."""
    if named is not None:
        return load_latents(store, target, named), named
    if target.final:
        return load_latents(store, target, None), None
    own = f"step-{target.step}"
    existing = [i for i in kept(store, target.artifact) if i.name == own]
    if existing:
        return load_latents(store, target, existing[0]), existing[0]
    if not target.manifest.has_file("source.mp4"):
        raise BadInput(f"{target.label} has no inversion yet and no source clip to invert; pass --no-inversion")
    reporter.log(f"inverting the clip with the adapter of step {target.step} (its first edit; kept for the next)")
    inversion = compute(store, target, tav, source_frames(target, None, None), _tuned_sampling(target.manifest),
                        steps=_tuned_steps(target.manifest), name=own, runtime=runtime, reporter=reporter)
    return load_latents(store, target, inversion), inversion


def invert(job: InvertJob, store: Store, reporter: Reporter = Reporter()) -> KeptInversion:
    """`tav invert`: another inversion of the source with the tuned model (or a checkpoint's), kept."""
    from tavcli.app import refs
    from tavcli.app.jobs import load_recorded_base, tuned_model

    target = refs.resolve(store, job.ref)
    store.verify(target.artifact)
    check_name_syntax(job.name)  # what `Store.add` will ask of it, before the model loads
    if job.name is not None and job.name in {i.name for i in kept(store, target.artifact)}:
        raise BadInput(f"{target.label} already keeps an inversion named '{job.name}'; choose another --name")
    steps = job.steps or _tuned_steps(target.manifest)
    sampling = _sampling(job, target.manifest)
    read = source_frames(target, sampling, job.video)  # before loading the model: a bad frame count fails fast
    name = job.name or _default_name(store, target, steps, len(read[1]))
    base = load_recorded_base(target.artifact, None, None, False, job.runtime.device, job.runtime.dtype, reporter)
    return compute(store, target, tuned_model(base, target), read, sampling or _tuned_sampling(target.manifest),
                   steps=steps, name=name, runtime=job.runtime, reporter=reporter)
