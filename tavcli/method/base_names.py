"""What a base's name names (a diffusers folder, a single-file checkpoint or a hub id), told from the name
and the disk alone: no torch, no diffusers, so that a mistyped `--base` is refused before the seconds
their imports take (8 s on the H200 machine). `models.load_base` decides by the same functions."""

from __future__ import annotations

from pathlib import Path

from tavcli.errors import BadInput
from tavcli.method.params import DEFAULT_BASE

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")  # of an SD diffusers folder
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")


def is_hub_id(name: str) -> bool:
    """`org/name`, as the Hub names a repo (a base's, or a CLIP model's for the metrics)."""
    return name.count("/") == 1 and not name.startswith((".", "/", "~"))


def checkpoint_file(name: str) -> Path | None:
    """The checkpoint file `name` names, or None when it names a folder or hub id."""
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise BadInput(f"{path} is a file of unknown type {path.suffix or '(no suffix)'!r}; a single-file "
                           "base must be an SD1.x .safetensors (or legacy .ckpt) checkpoint")
        return path
    if path.suffix.lower() in CHECKPOINT_SUFFIXES:  # clearly meant as a file: say so rather than "not a hub id"
        raise BadInput(f"checkpoint file {path} does not exist")
    return None


def local_folder(name: str) -> Path | None:
    """The diffusers folder `name` names, or None for a hub id; refused when it is neither."""
    path = Path(name).expanduser()
    if path.is_dir():
        missing = [c for c in COMPONENTS if not (path / c).is_dir()]
        if missing:
            raise BadInput(f"{path} is not a Stable Diffusion diffusers folder (missing {', '.join(missing)}/)")
        return path
    if path.is_file():
        raise BadInput(f"{path} is a single file, not a diffusers folder; load_base reads single-file "
                       "SD1.x checkpoints (.safetensors, .ckpt)")
    if not is_hub_id(name):
        raise BadInput(f"base model {name!r} is neither a folder nor a hub id like {DEFAULT_BASE}")
    return None


def check(name: str) -> None:
    """Refuse a base name that is no checkpoint file, diffusers folder or hub id (a hub id is not looked up)."""
    if checkpoint_file(name) is None:
        local_folder(name)
