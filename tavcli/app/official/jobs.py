"""The official-compatibility jobs: `tav import-official` (an official tuned folder -> an artifact) and
`tav export --format official` (an artifact -> the folder the official pipeline loads)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from tavcli.app import builtin
from tavcli.app.jobs import identity, load_recorded_base, playback_fps, versions
from tavcli.app.manifest import Inversion, Manifest, Origin, Provenance, Run, Source, Tuning, Video
from tavcli.app.progress import Reporter, Stage
from tavcli.app.store import Artifact, Store
from tavcli.errors import BadInput, counted
from tavcli.method.params import DEFAULT_BASE, AdapterSpec, FrameSampling
from tavcli.settings import Mode, Settings, setting


class StoredDtype(Mode):
    AUTO = "auto"  # the checkpoint's own: official runs save fp32 master weights, whose one-step deltas fp16 loses
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"


@dataclass(frozen=True)
class ImportOfficialJob(Settings):
    folder: Path = setting(help="An official Tune-A-Video output folder (with unet/), or its unet/.")
    base: str | None = setting(None, "The base it was tuned from.",
                               default_text=f"config.yaml's pretrained_model_path when found, else {DEFAULT_BASE}")
    base_config: str | None = setting(None, "Configs for a single-file --base.")
    name: str | None = setting(None, "A name to refer to the artifact by.")
    prompt: str | None = setting(None, "The caption it was tuned on.", default_text="config.yaml's")
    dtype: StoredDtype = setting(StoredDtype.AUTO, "Precision of the stored adapter: auto (the checkpoint's own), "
                                                   "fp32, fp16 or bf16.")


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

    from tavcli.app.official.layout import read_official, to_adapter_state
    from tavcli.method.adapters import save_adapter
    from tavcli.method.attention import inflate
    from tavcli.method.models import load_base, sha256_file
    from tavcli.app.inversions import write_source
    from tavcli.method.video import read_video

    store.check_name(job.name)
    reporter.stage(Stage.READING, str(job.folder))
    run = read_official(job.folder)
    training = run.training
    prompt = job.prompt or (training.prompt if training else None)
    if not prompt or not prompt.strip():
        raise BadInput(f"{job.folder} has no config.yaml with train_data.prompt; pass --prompt with the caption it "
                       "was tuned on")
    base_name = _official_base(job, training, reporter)
    reporter.stage(Stage.LOADING, base_name)
    base = load_base(builtin.locate(base_name), "cpu", "fp32", config=job.base_config)  # fp32: compare exactly
    inflate(base.unet, seed=0)
    state = to_adapter_state(run.state, base.unet, run.unet_config)
    latent = run.inv_latent
    frames = (training.n_sample_frames if training else None) or (latent.shape[1] if latent is not None else 8)
    width = (training.width if training else None) or (latent.shape[-1] * base.vae_factor if latent is not None else 512)
    height = (training.height if training else None) or (latent.shape[-2] * base.vae_factor if latent is not None else 512)
    if latent is not None and tuple(latent.shape[1:]) != (frames, 4, height // base.vae_factor, width // base.vae_factor):
        raise BadInput(f"the inversion latent is {tuple(latent.shape)}, not the {counted(frames, 'frame')} of "
                       f"{width}x{height} "
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
        except BadInput as e:  # the source is a convenience (--grid); the model does not need it
            reporter.log(f"warning: the source clip is not stored ({e})")
    fps = playback_fps(clip.indices, clip.fps) if clip else 8.0
    manifest = Manifest(
        name=job.name, prompt=prompt,
        source=Source(path=str(video_path.resolve()) if clip else (training.video_path if training else None),
                      sha256=sha256_file(video_path) if clip and video_path.is_file() else None,
                      indices=clip.indices if clip else tuple(start + i * stride for i in range(frames)),
                      fps=clip.fps if clip else None, frames=clip.source_frames if clip else None,
                      size=tuple(clip.source_size) if clip else None),
        video=Video(frames=frames, width=width, height=height, fps=fps, resize="squash"),
        base=identity(base, base_name), adapter=AdapterSpec("full"),
        tuning=Tuning(steps=training.max_train_steps if training else None,
                      lr=training.learning_rate if training else None, seed=training.seed if training else None),
        run=Run(device="official", dtype=str(next(iter(run.state.values())).dtype).removeprefix("torch.")),
        provenance=Provenance(Origin.OFFICIAL, folder=str(Path(job.folder).resolve()),
                              weights_sha256=sha256_file(run.weights_file)),
        inversion=Inversion(steps=None, official_step=run.inv_latent_step) if latent is not None else None,
        loss=(),
        versions=versions(),
    )
    reporter.stage(Stage.SAVING)
    with store.staging() as stage:
        save_adapter(base.unet, AdapterSpec("full"), stage / "adapter", dtype=_stored_dtype(job.dtype, run.state),
                     state=state)
        if latent is not None:
            save_file({"latents": latent.float().contiguous()}, stage / "inversion.safetensors")
        if clip is not None:
            write_source(stage, clip.frames, fps)
        return store.commit(stage, manifest.to_json())


def _stored_dtype(dtype: StoredDtype, official: dict):
    """The adapter's precision: the one asked for, or the checkpoint's own (fp32 unless all of it is in one
    16-bit type: tav computes the adapter tensors in fp32 from it, so fp32 loses nothing)."""
    import torch

    if dtype != StoredDtype.AUTO:
        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[str(dtype)]
    kinds = {t.dtype for t in official.values() if t.is_floating_point()}
    return kinds.pop() if len(kinds) == 1 and kinds <= {torch.float16, torch.bfloat16} else torch.float32


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

    from tavcli.app import inversions, refs
    from tavcli.app.interop import write_model_card
    from tavcli.app.jobs import tuned_model
    from tavcli.app.official.layout import OfficialTraining, official_state, write_official

    target = refs.resolve(store, ref)  # REF@STEP: that checkpoint, with its inversion when one is kept
    artifact = target.artifact
    store.verify(artifact)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BadInput(f"{dest} already exists and is not empty; choose a new folder")
    m = Manifest.of(artifact)
    loaded = load_recorded_base(artifact, base, base_config, force, "cpu", "fp32", reporter)
    tav = tuned_model(loaded, target)
    state = official_state(tav.unet)
    own = [i for i in inversions.kept(store, artifact) if i.step == target.step and i.source == "source.mp4"]
    latent = (load_file(artifact.file("inversion.safetensors"))["latents"] if target.final and m.has_inversion
              else inversions.load_latents(store, target, own[0]) if own else None)
    indices = m.source.indices
    # The official config can only say "every K-th frame from S"; tav's uniform spread is written only if it is one.
    strided = len(indices) > 1 and len({b - a for a, b in zip(indices, indices[1:])}) == 1
    base_name = base or m.base.name
    local = Path(base_name).expanduser()
    training = OfficialTraining(
        prompt=m.prompt, video_path=m.source.path, n_sample_frames=m.video.frames,
        width=m.video.width, height=m.video.height, sample_start_idx=indices[0] if indices else None,
        sample_frame_rate=indices[1] - indices[0] if strided else None,
        pretrained_model_path=str(local.resolve()) if local.exists() else base_name,
        max_train_steps=target.step, learning_rate=m.tuning.lr, seed=m.tuning.seed)
    reporter.stage(Stage.WRITING, str(dest))
    with tempfile.TemporaryDirectory(prefix="tav-export-") as tmp:
        components = _components_folder(loaded, Path(tmp))
        return write_official(dest, state, dict(loaded.unet.config), components, inv_latent=latent,
                              inv_step=target.step or 0, training=training,
                              extra=lambda folder: write_model_card(folder, artifact, "official", base=base_name))
