"""Tune-A-Video's video UNet as a diffusers component: a stock SD UNet, inflated, with tav's adapter on it.

`tav export --format diffusers` copies this file verbatim into the folder's `unet/`, beside `attention.py`,
and model_index.json names it `["tune_a_video_unet", "TuneAVideoUNet"]`; so
`DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` builds the tuned UNet without tav:

    unet/config.json                   the base UNet's config (and, in a --light folder, "_tav_base")
    unet/diffusion_pytorch_model.*     the base UNet's weights; a --light folder loads them from the base
    unet/adapter_config.json           tav's adapter, byte for byte: a PEFT LoraConfig, or TAV_FULL's
    unet/adapter_model.safetensors     its tensors; the spec (tav_kind, tav_temporal_seed, tav_attention,
                                       tav_norm) in the safetensors header

It imports only torch, diffusers, safetensors (and peft for a LoRA adapter) and the `attention` beside it.
"""

from __future__ import annotations

import json
import os
import re

import torch
from diffusers import UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import load_file

from .attention import inflate, init_temporal

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def read_spec(folder: str) -> dict[str, str]:
    """tav's spec of the adapter in `folder`: kind, rank, temporal seed, attention and norm, as text."""
    with safe_open(os.path.join(folder, ADAPTER_WEIGHTS), "pt") as f:
        meta = f.metadata() or {}
    if "tav_kind" not in meta:
        raise ValueError(f"{folder}/{ADAPTER_WEIGHTS} is not a tav adapter (no tav_kind in its header)")
    # attention and norm were recorded from tav 0.1 and 0.2 on; adapters from before used the paper's
    return {"attention": "sparse-causal", "norm": "clip"} | {k[4:]: v for k, v in meta.items() if k.startswith("tav_")}


def apply_adapter(unet: torch.nn.Module, folder: str) -> None:
    """Put tav's adapter in `folder` on an inflated UNet, as tav's `adapters.load_adapter` does.

    `full`: the tuned tensors replace the base's (and the temporal modules' init). `lora`: PEFT LoRA layers
    from the folder's own adapter_config.json, then its tensors; the frozen temporal weights are the init
    that `temporal_seed` regenerates. Anything missing or left over is an error, never silently dropped.
    """
    spec = read_spec(folder)
    tensors = load_file(os.path.join(folder, ADAPTER_WEIGHTS), device=str(unet.conv_in.weight.device))
    with open(os.path.join(folder, ADAPTER_CONFIG)) as f:
        targets = json.load(f)["target_modules"]  # the regex of the tuned modules, for either kind
    init_temporal(unet, int(spec["temporal_seed"]))
    if spec["kind"] == "lora":
        from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict

        inject_adapter_in_model(LoraConfig.from_pretrained(folder), unet)
        unexpected = list(set_peft_model_state_dict(unet, tensors).unexpected_keys or [])
        expected = set(get_peft_model_state_dict(unet))
    else:
        unexpected = list(unet.load_state_dict(tensors, strict=False).unexpected_keys)
        expected = {f"{name}.{p}" for name, m in unet.named_modules() if re.fullmatch(targets, name)
                    for p, _ in m.named_parameters(recurse=False)}
    missing = sorted(expected - set(tensors))
    if unexpected or missing:
        raise ValueError(f"the adapter in {folder} does not fit this UNet: {len(unexpected)} unknown and "
                         f"{len(missing)} missing tensors (e.g. {(unexpected or missing)[0]}); is the base the one "
                         "it was tuned on?")


class TuneAVideoUNet(UNet2DConditionModel):
    """A stock `UNet2DConditionModel` with sparse-causal attention, temporal attention and clip-wide GroupNorm
    (`attention.inflate`), carrying a tuned clip's adapter. Call it through `attention.video_forward`."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, subfolder: str | None = None,
                        **kwargs) -> TuneAVideoUNet:
        folder = os.path.join(str(pretrained_model_name_or_path), subfolder or "")
        if not os.path.isdir(folder):  # a hub repo: its unet/ folder, through the Hugging Face cache
            from huggingface_hub import snapshot_download

            root = snapshot_download(str(pretrained_model_name_or_path), revision=kwargs.get("revision"),
                                     allow_patterns=[f"{subfolder}/*" if subfolder else "*"])
            folder = os.path.join(root, subfolder or "")
        with open(os.path.join(folder, "config.json")) as f:
            base = json.load(f).get("_tav_base")  # where a --light folder's base weights are
        kwargs.pop("revision", None)
        if base is None:
            unet = super().from_pretrained(folder, **kwargs)
        else:
            unet = super().from_pretrained(base["name"], subfolder="unet", revision=base.get("revision"), **kwargs)
        spec = read_spec(folder)
        inflate(unet, attention=spec["attention"], norm=spec["norm"], seed=int(spec["temporal_seed"]))
        dtype = unet.conv_in.weight.dtype
        apply_adapter(unet, folder)
        return unet.to(dtype).requires_grad_(False).eval()

    def save_pretrained(self, *args, **kwargs) -> None:
        raise NotImplementedError("a TuneAVideoUNet is written by `tav export --format diffusers`, which keeps "
                                  "the adapter apart from the base weights; save_pretrained would not")
