"""Stable Diffusion v1.x bases: loading, devices and dtypes, and the VAE/CLIP encoders around the UNet."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

DEFAULT_BASE = "CompVis/stable-diffusion-v1-4"
LATENT_SCALE = 0.18215  # SD v1's VAE scaling factor (the paper's latents are 4 x H/8 x W/8)
_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_ENCODE_CHUNK = 8  # frames through the VAE encoder at once: bounds its activation memory at 512x512
_DECODE_CHUNK = 2  # the decoder's 512x512x128 activations are the peak of an edit: fewer frames at once


class BaseModelError(ValueError):
    """A base model that cannot be found or loaded; the message says how to get one."""


@dataclass
class Base:
    """The parts of a Stable Diffusion v1.x pipeline that tav uses, already on their device."""

    unet: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: object
    scheduler_config: dict
    name: str  # hub id or folder as given
    revision: str | None  # hub commit, when loaded from the hub
    folder: Path  # where the weights are (the HF cache snapshot for a hub id)
    device: torch.device
    dtype: torch.dtype  # of the frozen weights

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BaseModelError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """fp32 on CPU; bf16 for frozen weights on a GPU that has it, else fp16."""
    named = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if dtype != "auto":
        if dtype not in named:
            raise ValueError(f"unknown dtype {dtype!r}; choose auto, {', '.join(named)}")
        return named[dtype]
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _hub_folder(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        path = snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=["model_index.json", *(f"{c}/*" for c in _COMPONENTS)],
            ignore_patterns=["*.bin", "*.ckpt", "*.msgpack", "*.h5", "*.onnx", "*.fp16.*", "*non_ema*"],
        )
    except LocalEntryNotFoundError as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        why = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face Hub cannot be reached"
        raise BaseModelError(
            f"base model {repo_id!r} is not in the local Hugging Face cache and {why}; download it once with "
            f"`hf download {repo_id}` on a connected machine, or pass --base PATH to a diffusers folder"
        ) from e
    except HfHubHTTPError as e:
        raise BaseModelError(f"base model {repo_id!r} could not be fetched from the Hub ({e}); "
                             "check the id, or pass --base PATH to a diffusers folder") from e
    return Path(path)


def locate_base(name: str = DEFAULT_BASE, revision: str | None = None) -> tuple[Path, str | None]:
    """A local diffusers folder for `name` (a folder, or a hub id fetched through the HF cache)."""
    path = Path(name).expanduser()
    if path.is_dir():
        missing = [c for c in _COMPONENTS if not (path / c).is_dir()]
        if missing:
            raise BaseModelError(f"{path} is not a Stable Diffusion diffusers folder (missing {', '.join(missing)}/)")
        return path, None
    if path.is_file():
        raise BaseModelError(f"{path} is a single file; single-file checkpoints are not supported yet, "
                             "convert it to a diffusers folder or pass a hub id")
    if name.count("/") != 1 or name.startswith((".", "/", "~")):
        raise BaseModelError(f"base model {name!r} is neither a folder nor a hub id like {DEFAULT_BASE}")
    folder = _hub_folder(name, revision)
    return folder, folder.name  # the snapshot folder is named for the commit it holds


def load_base(
    name: str = DEFAULT_BASE, device: str | torch.device = "auto", dtype: str = "auto", revision: str | None = None
) -> Base:
    """Load SD v1.x's UNet, VAE, text encoder and tokenizer, frozen, on `device`."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    dev = resolve_device(device) if isinstance(device, str) else device
    dt = resolve_dtype(dtype, dev)
    folder, rev = locate_base(name, revision)
    try:
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dt)
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dt)
        text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", torch_dtype=dt)
        tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
        scheduler_config = _read_json(folder / "scheduler" / "scheduler_config.json")
    except (OSError, ValueError, KeyError) as e:
        raise BaseModelError(f"could not load the base model from {folder}: {e}") from e
    for m in (unet, vae, text_encoder):
        m.requires_grad_(False).eval().to(dev)
    return Base(unet, vae, text_encoder, tokenizer, scheduler_config, name, rev, folder, dev, dt)


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


def fingerprint(folder: str | Path) -> str:
    """A cheap identity of a base's weights: configs, weight file sizes and their first and last MiB.

    Hashing whole multi-GB files would cost seconds per edit; this still tells two different models (or a
    fine-tune of one) apart, and a copy of the same model in another folder gives the same answer.
    """
    import hashlib

    folder = Path(folder)
    h = hashlib.sha256()
    for path in sorted(p for c in ("unet", "vae", "text_encoder") for p in (folder / c).iterdir() if p.is_file()):
        h.update(f"{path.parent.name}/{path.name}:{path.stat().st_size}\n".encode())
        with path.open("rb") as f:
            h.update(f.read(1 << 20))
            f.seek(max(path.stat().st_size - (1 << 20), 0))
            h.update(f.read(1 << 20))
    return h.hexdigest()
