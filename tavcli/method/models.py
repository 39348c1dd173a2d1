"""Stable Diffusion v1.x bases: loading, devices and dtypes, and the VAE/CLIP encoders around the UNet."""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tavcli.engine.runtime import resolve_device, resolve_dtype
from tavcli.errors import BadInput
from tavcli.method import base_names
from tavcli.method.params import DEFAULT_BASE  # noqa: E402,F401 - its home is the params

LATENT_SCALE = 0.18215  # SD v1's VAE scaling factor (the paper's latents are 4 x H/8 x W/8)
_ENCODE_CHUNK = 2  # frames through the VAE encoder at once: its 512x512x128 activations would else be
# the peak of a `--low-memory` tune (8 frames at once: 5.27 GiB on an H200, docs/performance.md)
_DECODE_CHUNK = 2  # the decoder's 512x512x128 activations are the peak of an edit: fewer frames at once
# What a single-file base needs from its config source: the weights come from the file.
_CONFIG_FILES = ("unet/config.json", "vae/config.json", "text_encoder/config.json", "tokenizer",
                 "scheduler/scheduler_config.json")
_CONFIG_PATTERNS = ["model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
                    "tokenizer/*", "scheduler/*"]
# The original (LDM/CompVis) layout of an SD1.x checkpoint: one prefix per component.
_LDM_UNET, _LDM_VAE, _LDM_CLIP = "model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer."
# diffusers' names for the model types it detects in single files, in words for error messages.
_MODEL_TYPE_WORDS = {
    "v2": "Stable Diffusion 2.x", "xl_base": "SDXL", "xl_refiner": "SDXL refiner", "xl_inpaint": "SDXL inpainting",
    "inpainting": "SD1.x inpainting (9-channel UNet)", "inpainting_v2": "SD2 inpainting", "upscale": "SD x4 upscaler",
    "controlnet": "ControlNet", "instruct-pix2pix": "InstructPix2Pix", "playground-v2-5": "Playground v2.5",
}



@dataclass
class Base:
    """The parts of a Stable Diffusion v1.x pipeline that tav uses, already on their device."""

    unet: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: object
    scheduler_config: dict
    name: str  # hub id, folder or checkpoint file as given
    revision: str | None  # hub commit, when loaded from the hub
    folder: Path  # where the weights are (the HF cache snapshot for a hub id); the config folder for a file
    device: torch.device
    dtype: torch.dtype  # of the frozen weights
    checkpoint: Path | None = None  # the single .safetensors/.ckpt file the weights came from, if any
    config: str | None = None  # for a single file: the config source (folder or hub id) as resolved
    _sha256: str | None = field(default=None, init=False, repr=False, compare=False)  # of `checkpoint`, once hashed

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


@contextmanager
def encoders_parked(base: Base) -> Iterator[None]:
    """The VAE and text encoder on the CPU while only the UNet runs (tuning), back on their device after.

    On a GPU their weights are 0.4 GiB that tuning never touches once the clip and caption are encoded;
    the round trip costs a fraction of a second. On the CPU there is nowhere else to put them.
    """
    if base.device.type == "cpu":
        yield
        return
    parts = (base.vae, base.text_encoder)
    for part in parts:
        part.to("cpu")
    try:
        yield
    finally:
        for part in parts:
            part.to(base.device)


def _offline_reason() -> str:
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    return "HF_HUB_OFFLINE is set" if offline else "the Hugging Face Hub cannot be reached"


def _first_line(e: BaseException) -> str:
    """Library errors can span many lines; tav's errors are one line."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _snapshot(repo_id: str, revision: str | None, allow_patterns: list[str]) -> Path:
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(
        repo_id,
        revision=revision,
        allow_patterns=allow_patterns,
        ignore_patterns=["*.bin", "*.ckpt", "*.msgpack", "*.h5", "*.onnx", "*.fp16.*", "*non_ema*"],
    ))


def _hub_folder(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return _snapshot(repo_id, revision, ["model_index.json", *(f"{c}/*" for c in base_names.COMPONENTS)])
    except LocalEntryNotFoundError as e:
        raise BadInput(
            f"base model {repo_id!r} is not in the local Hugging Face cache and {_offline_reason()}; download it once "
            f"with `hf download {repo_id}` on a connected machine, or pass --base PATH to a diffusers folder"
        ) from e
    except HfHubHTTPError as e:
        raise BadInput(f"base model {repo_id!r} could not be fetched from the Hub ({_first_line(e)}); "
                             "check the id, or pass --base PATH to a diffusers folder") from e


def locate_base(name: str = DEFAULT_BASE, revision: str | None = None) -> tuple[Path, str | None]:
    """A local diffusers folder for `name` (a folder, or a hub id fetched through the HF cache)."""
    path = base_names.local_folder(name)
    if path is not None:
        return path, None
    folder = _hub_folder(name, revision)
    return folder, folder.name  # the snapshot folder is named for the commit it holds


def load_base(
    name: str = DEFAULT_BASE,
    device: str | torch.device = "auto",
    dtype: str = "auto",
    revision: str | None = None,
    config: str | None = None,
) -> Base:
    """Load SD v1.x's UNet, VAE, text encoder and tokenizer, frozen, on `device`.

    `name` is a diffusers folder, a hub id, or a single-file SD1.x checkpoint (.safetensors or .ckpt in the
    original LDM layout). For a single file, `config` (a diffusers folder or hub id) supplies the model
    configs, tokenizer and scheduler; without it, diffusers' default SD1.x config repo is looked up.
    """
    dev = resolve_device(device) if isinstance(device, str) else device
    dt = resolve_dtype(dtype, dev)
    checkpoint = base_names.checkpoint_file(name)
    if checkpoint is not None:
        if revision is not None:
            raise BadInput(f"a revision applies to hub ids, not to the single file {checkpoint}")
        return _load_single_file(name, checkpoint, config, dev, dt)
    if config is not None:
        raise BadInput(f"--base-config is only for single-file checkpoints; {name} is a folder or hub id "
                             "that carries its own configuration")
    return _load_folder(name, revision, dev, dt)


def _load_folder(name: str, revision: str | None, dev: torch.device, dt: torch.dtype) -> Base:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    folder, rev = locate_base(name, revision)
    # Components with only .bin (pickle) weights are asked for as such: diffusers would log an error line
    # while looking for .safetensors first. Both libraries read them with torch's weights-only unpickler.
    pickled = [c for c in ("unet", "vae", "text_encoder") if _only_pickled(folder / c)]
    if pickled:
        warnings.warn(f"the {', '.join(pickled)} weights of {name} are .bin (Python pickle) files; tav reads only "
                      "their tensors, but .safetensors is the safer, preferred format", UserWarning, stacklevel=3)
    try:
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dt,
                                                    use_safetensors="unet" not in pickled)
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dt,
                                            use_safetensors="vae" not in pickled)
        text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", torch_dtype=dt,
                                                     use_safetensors="text_encoder" not in pickled)
        tokenizer, scheduler_config = _tokenizer_and_scheduler(folder)
    except (OSError, ValueError, KeyError, pickle.UnpicklingError) as e:
        if pickled:
            raise BadInput(f"could not read the .bin weights of {folder} as plain tensors: they hold Python objects "
                           "besides tensors, which tav will not unpickle, or are damaged; convert them to "
                           ".safetensors (in an environment you trust) and pass that folder") from e
        raise BadInput(f"could not load the base model from {folder}: {_first_line(e)}") from e
    _freeze(dev, unet, vae, text_encoder)
    return Base(unet, vae, text_encoder, tokenizer, scheduler_config, name, rev, folder, dev, dt)


def _only_pickled(component: Path) -> bool:
    """Whether a component folder has .bin weights and no .safetensors."""
    return any(component.glob("*.bin")) and not any(component.glob("*.safetensors"))


def unet_width(name: str) -> int | None:
    """The channels of the first UNet block of a base in a local diffusers folder, read from its config without
    loading it (SD v1: 320); None for a hub id or a single file, which are SD v1-sized."""
    try:
        return int(_read_json(Path(name).expanduser() / "unet" / "config.json")["block_out_channels"][0])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


def _tokenizer_and_scheduler(folder: Path) -> tuple[object, dict]:
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    return tokenizer, _read_json(folder / "scheduler" / "scheduler_config.json")


def _freeze(dev: torch.device, *models: nn.Module) -> None:
    for m in models:
        m.requires_grad_(False).eval().to(dev)


# ---- single-file checkpoints -------------------------------------------------------------------------------


def _load_single_file(name: str, path: Path, config: str | None, dev: torch.device, dt: torch.dtype) -> Base:
    state = read_checkpoint(path)
    _check_sd1(path, state)
    folder, source = _config_folder(path, state, config)
    unet, vae, text_encoder = _single_file_models(path, state, folder, dt)
    try:
        tokenizer, scheduler_config = _tokenizer_and_scheduler(folder)
    except (OSError, ValueError, KeyError) as e:
        raise BadInput(f"could not load the tokenizer and scheduler from {folder}: {_first_line(e)}") from e
    del state  # release the file's tensors the models did not take over, before moving to the device
    _freeze(dev, unet, vae, text_encoder)
    return Base(unet, vae, text_encoder, tokenizer, scheduler_config, name, None, folder, dev, dt,
                checkpoint=path, config=source)


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a single-file checkpoint, on CPU; .ckpt only through torch's weights-only unpickler."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        return _read_safetensors(path)
    if path.suffix.lower() == ".ckpt":
        return _read_ckpt(path)
    raise BadInput(f"{path}: unknown checkpoint type {path.suffix!r}; expected .safetensors or .ckpt")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError) as e:
        raise BadInput(f"{path} is not a readable .safetensors file ({_first_line(e)})") from e


def _read_ckpt(path: Path) -> dict[str, torch.Tensor]:
    warnings.warn(f"{path.name} is a .ckpt (Python pickle) file; tav reads only its tensors (torch.load with "
                  "weights_only=True), but .safetensors is the safer, preferred format", UserWarning, stacklevel=3)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses any pickled object that is not a tensor or a plain container: never run such code
        raise BadInput(f"{path} holds Python objects besides tensors, which tav will not unpickle; convert "
                             "it to .safetensors (in an environment you trust) and pass that instead") from e
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise BadInput(f"{path} is not a readable .ckpt file ({_first_line(e)})") from e
    while isinstance(data, dict) and isinstance(data.get("state_dict"), dict):  # Lightning nests the weights
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise BadInput(f"{path} does not hold a state dict (found {type(data).__name__})")
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def _model_type(state: dict[str, torch.Tensor]) -> str:
    """What diffusers takes the checkpoint for ("v1" for SD1.x, and also its fallback for unknown layouts)."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    try:
        return infer_diffusers_model_type(state)
    except (KeyError, ValueError, IndexError, AttributeError):
        return "unknown"


def _check_sd1(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Refuse, in one line, what is not a complete SD1.x checkpoint in the LDM layout."""
    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in state)

    if not has(_LDM_UNET):
        raise BadInput(f"{path} is not a Stable Diffusion 1.x checkpoint: it has no {_LDM_UNET}* UNet weights "
                             "(the original LDM layout); pass an SD1.x .safetensors/.ckpt or a diffusers folder")
    kind = _model_type(state)
    if kind != "v1":
        raise BadInput(f"{path} looks like a {_MODEL_TYPE_WORDS.get(kind, repr(kind))} checkpoint, not "
                             "Stable Diffusion 1.x; tav's Tune-A-Video needs an SD1.x base")
    if not has(_LDM_VAE):
        raise BadInput(f"{path} has no VAE weights ({_LDM_VAE}*); tav needs a full SD1.x checkpoint "
                             "with UNet, VAE and text encoder")
    if not has(_LDM_CLIP + "text_model."):
        raise BadInput(f"{path} has no CLIP text encoder weights ({_LDM_CLIP}text_model.*); tav needs a "
                             "full SD1.x checkpoint with UNet, VAE and text encoder")


def _config_folder(path: Path, state: dict[str, torch.Tensor], config: str | None) -> tuple[Path, str]:
    """The local diffusers folder with the configs, tokenizer and scheduler for a single file, and its source."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    if config is None:
        folder, source = _default_config_folder(path, state), _default_config_repo(state)
    elif Path(config).expanduser().is_dir():
        folder = Path(config).expanduser()
        source = str(folder.resolve())  # absolute, so a later edit finds it from any working directory
    elif base_names.is_hub_id(config):
        try:
            folder, source = _snapshot(config, None, _CONFIG_PATTERNS), config
        except LocalEntryNotFoundError as e:
            raise BadInput(
                f"base config {config!r} is not in the local Hugging Face cache and {_offline_reason()}; fetch its "
                f"configs once with `hf download {config} --include '*.json' 'tokenizer/*'`, or pass "
                "--base-config PATH to a local SD1.x diffusers folder") from e
        except HfHubHTTPError as e:
            raise BadInput(f"base config {config!r} could not be fetched from the Hub ({_first_line(e)}); "
                                 "check the id, or pass --base-config PATH to a local SD1.x diffusers folder") from e
    else:
        raise BadInput(f"--base-config {config!r} is neither a folder nor a hub id like "
                             "stable-diffusion-v1-5/stable-diffusion-v1-5")
    missing = [f for f in _CONFIG_FILES if not (folder / f).exists()]
    if missing:
        raise BadInput(f"{folder} cannot configure an SD1.x checkpoint: it lacks {', '.join(missing)}; "
                             "pass --base-config PATH to an SD1.x diffusers folder (e.g. stable-diffusion-v1-5)")
    return folder, source


def _default_config_repo(state: dict[str, torch.Tensor]) -> str:
    from diffusers.loaders.single_file_utils import fetch_diffusers_config

    return fetch_diffusers_config(state)["pretrained_model_name_or_path"]


def _default_config_folder(path: Path, state: dict[str, torch.Tensor]) -> Path:
    """The config repo diffusers itself would use for this checkpoint, but only its configs, via the HF cache."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo = _default_config_repo(state)
    try:
        return _snapshot(repo, None, _CONFIG_PATTERNS)
    except (LocalEntryNotFoundError, HfHubHTTPError) as e:
        raise BadInput(
            f"{path} is a single-file checkpoint and tav needs an SD1.x diffusers folder for its configuration "
            f"(model configs, tokenizer, scheduler), but {repo} is not in the local Hugging Face cache and "
            f"{_offline_reason()}; pass --base-config PATH to a local one, e.g. a stable-diffusion-v1-5 folder"
        ) from e


def _single_file_models(path: Path, state: dict[str, torch.Tensor], folder: Path, dt: torch.dtype
                        ) -> tuple[nn.Module, nn.Module, nn.Module]:
    """UNet, VAE and CLIP text encoder from an LDM-layout state dict, shaped by the configs in `folder`."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import SingleFileComponentError, create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel

    where = str(folder)
    try:
        _require_all_weights(path, folder, state)
        with _quiet_empty_fp32_warning():
            unet = UNet2DConditionModel.from_single_file(state, config=where, subfolder="unet", torch_dtype=dt,
                                                         local_files_only=True)
            vae = AutoencoderKL.from_single_file(state, config=where, subfolder="vae", torch_dtype=dt,
                                                 local_files_only=True)
        # transformers models have no from_single_file; this is what diffusers' pipeline loader uses for CLIP.
        text_encoder = create_diffusers_clip_model_from_ldm(CLIPTextModel, state, subfolder="text_encoder",
                                                            config=where, torch_dtype=dt, local_files_only=True)
    except (RuntimeError, ValueError, KeyError, IndexError, OSError, SingleFileComponentError) as e:
        if isinstance(e, BadInput):
            raise
        # size mismatches land here: an SD2/SDXL-shaped file, or a config folder of another architecture
        raise BadInput(f"the weights in {path} do not fit the SD1.x configuration in {folder} "
                             f"({_first_line(e)[:300]})") from e
    return unet, vae, text_encoder


def _require_all_weights(path: Path, folder: Path, state: dict[str, torch.Tensor]) -> None:
    """Refuse a file that lacks any weight its configuration needs.

    diffusers loads single files non-strictly: a missing weight would silently stay random (or, with
    accelerate, on the meta device and fail later with an obscure error). So convert the keys the way
    diffusers will and compare them with the parameters of meta-device (weightless) models.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    unet_config = UNet2DConditionModel.load_config(folder, subfolder="unet")
    vae_config = AutoencoderKL.load_config(folder, subfolder="vae")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config)
        vae = AutoencoderKL.from_config(vae_config)
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(folder, subfolder="text_encoder"))
    clip = convert_ldm_clip_checkpoint(state)
    if not hasattr(text_encoder, "text_model"):  # transformers >= 5.6 flattened CLIPTextModel's keys
        clip = {k.removeprefix("text_model."): v for k, v in clip.items()}
    for what, model, converted in (("UNet", unet, convert_ldm_unet_checkpoint(state, unet_config)),
                                   ("VAE", vae, convert_ldm_vae_checkpoint(state, vae_config)),
                                   ("text encoder", text_encoder, clip)):
        missing = sorted(set(model.state_dict()) - set(converted))
        if missing:
            raise BadInput(f"{path} lacks {len(missing)} {what} weights for its SD1.x configuration "
                                 f"(e.g. {missing[0]}); it is not a complete SD1.x checkpoint")


class _EmptyFp32Filter(logging.Filter):
    """Drops diffusers' warning on every dtype cast of a model that has no fp32-only modules at all."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32: []" not in record.getMessage()


@contextmanager
def _quiet_empty_fp32_warning() -> Iterator[None]:
    logger = logging.getLogger("diffusers.models.modeling_utils")
    quiet = _EmptyFp32Filter()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


# ---- identity -----------------------------------------------------------------------------------------------


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a whole file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def base_identity(base: Base, sha256: str | None = None) -> dict:
    """What an artifact records about its base, to recognise the same weights later.

    Folders and hub ids: the cheap `fingerprint` of the folder. A single file is hashed whole (once per Base,
    or pass `sha256` when it is already known): a fine-tune differs from its parent anywhere in the file.
    """
    if base.checkpoint is None:
        return {"name": base.name, "revision": base.revision, "fingerprint": fingerprint(base.folder)}
    if sha256 is None:
        if base._sha256 is None:
            base._sha256 = sha256_file(base.checkpoint)
        sha256 = base._sha256
    return {"name": base.name, "revision": None, "sha256": sha256, "config": base.config}


def matches_identity(base: Base, recorded: dict) -> bool:
    """Whether `base` has the weights that `recorded` (a stored base_identity) describes."""
    if "sha256" in recorded:
        return base.checkpoint is not None and base_identity(base)["sha256"] == recorded["sha256"]
    return base.checkpoint is None and fingerprint_matches(base.folder, recorded.get("fingerprint"))


def _read_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text())


@torch.no_grad()
def encode_prompts(base: Base, prompts: list[str]) -> torch.Tensor:
    """CLIP text embeddings (N, 77, D) for the UNet's cross-attention, in fp32."""
    ids = base.tokenizer(
        prompts, padding="max_length", max_length=base.tokenizer.model_max_length, truncation=True,
        return_tensors="pt",
    ).input_ids.to(base.device)
    return base.text_encoder(ids)[0].float()


@torch.no_grad()
def encode_frames(base: Base, frames: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE posterior's mean and std for uint8 frames (F, H, W, 3), scaled, each (1, F, 4, h, w)."""
    x = torch.from_numpy(frames).to(base.device).permute(0, 3, 1, 2)
    means, stds = [], []
    for chunk in x.split(_ENCODE_CHUNK):
        dist = base.vae.encode((chunk.to(base.dtype) / 127.5 - 1.0)).latent_dist
        means.append(dist.mean.float())
        stds.append(dist.std.float())
    return torch.cat(means)[None] * LATENT_SCALE, torch.cat(stds)[None] * LATENT_SCALE


@torch.no_grad()
def decode_latents(base: Base, latents: torch.Tensor) -> np.ndarray:
    """uint8 frames (B, F, H, W, 3) from video latents (B, F, 4, h, w), a few frames at a time."""
    b, f = latents.shape[:2]
    images = [base.vae.decode(z.to(base.dtype) / LATENT_SCALE).sample.float()
              for z in latents.flatten(0, 1).split(_DECODE_CHUNK)]
    x = ((torch.cat(images).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).unflatten(0, (b, f)).cpu().numpy()


# What a library writes into a config about itself, not about the model: re-saving the same weights with
# another diffusers or transformers, or from another folder, changes only these.
_CONFIG_STAMPS = ("_diffusers_version", "transformers_version", "_name_or_path")


def fingerprint(folder: str | Path) -> str:
    """A cheap identity of a base's weights: its configs' settings, weight file sizes and their first and
    last MiB.

    Hashing whole multi-GB files would cost seconds per edit; this still tells two different models (or a
    fine-tune of one) apart, and a copy of the same model in another folder, or saved by another library
    version, gives the same answer.
    """
    return _fingerprint(Path(folder), stamps=False)


def fingerprint_matches(folder: str | Path, recorded: str | None) -> bool:
    """Whether a recorded fingerprint is this folder's: as tav records it now, or as it did before 2026-12-04
    (the configs' bytes, library version stamps included), so that older artifacts still find their base."""
    # the older form only when the current one differs: each reads every weight file's first and last MiB
    return recorded is not None and (recorded == fingerprint(folder) or recorded == _fingerprint(Path(folder), True))


def _fingerprint(folder: Path, stamps: bool) -> str:
    import json

    h = hashlib.sha256()
    for path in sorted(p for c in ("unet", "vae", "text_encoder") for p in (folder / c).iterdir() if p.is_file()):
        if path.suffix == ".json" and not stamps:
            settings = {k: v for k, v in json.loads(path.read_text()).items() if k not in _CONFIG_STAMPS}
            data = json.dumps(settings, sort_keys=True).encode()
            h.update(f"{path.parent.name}/{path.name}:{len(data)}\n".encode())
            h.update(data)
            continue
        h.update(f"{path.parent.name}/{path.name}:{path.stat().st_size}\n".encode())
        with path.open("rb") as f:
            h.update(f.read(1 << 20))
            f.seek(max(path.stat().st_size - (1 << 20), 0))
            h.update(f.read(1 << 20))
    return h.hexdigest()
