"""Models of the official Tune-A-Video code (showlab/Tune-A-Video, diffusers 0.11.1): import and export.

What the official `train_tuneavideo.py` leaves in its `output_dir`, and so what is read and written here:

* `unet/config.json` — `UNet3DConditionModel`'s init arguments (the base's, with 3-D block type names),
  plus `_class_name` and `_diffusers_version`;
* `unet/diffusion_pytorch_model.bin` — `torch.save` of the whole UNet's state dict, fp32 (accelerate keeps
  the master weights in fp32 under fp16 mixed precision). diffusers 0.11.1's `save_pretrained` writes
  safetensors only when asked (`safe_serialization=False` by default) and its `from_pretrained` reads
  `diffusion_pytorch_model.safetensors` first when the `safetensors` package is installed, while the
  official `from_pretrained_2d` reads only the `.bin`. So a folder written here carries the `.bin`
  (a plain dict of tensors, which `torch.load(weights_only=True)` reads back);
* `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/` and `model_index.json` from
  `TuneAVideoPipeline.save_pretrained`;
* `config.yaml` — OmegaConf's dump of all of `main()`'s arguments (`train_data.prompt`, ...);
* `inv_latents/ddim_latent-<step>.pt` — the DDIM inversion at each validation step, one tensor in the
  official (B, C, F, h, w) layout, in the training's weight dtype (fp16 under mixed precision);
* `samples/` — GIFs, not read.

The key names of the official UNet3D are the stock diffusers UNet's plus `norm_temp` and `attn_temp` in
every transformer block, which is the layout `tavcli.method.attention.inflate` gives the stock UNet; so an
official state dict maps onto an inflated UNet key for key, and `official_keys` spells the official
layout out from a config, independently of the UNet tav builds, to check that claim.

Pickles are never unpickled in full: a `.bin` is read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tavcli.errors import BadInput
from tavcli.method.adapters import adapter_state
from tavcli.method.params import AdapterSpec

WEIGHTS_BIN = "diffusion_pytorch_model.bin"
WEIGHTS_SAFETENSORS = "diffusion_pytorch_model.safetensors"
OFFICIAL_UNET_CLASS = "UNet3DConditionModel"
OFFICIAL_PIPELINE_CLASS = "TuneAVideoPipeline"
# The diffusers release the official code pins (requirements.txt); its loaders read what this writes.
OFFICIAL_DIFFUSERS_VERSION = "0.11.1"
COMPONENTS = ("vae", "text_encoder", "tokenizer", "scheduler")
TRAINABLE_MODULES = ("attn1.to_q", "attn2.to_q", "attn_temp")  # train_tuneavideo.py's default

# Stock (2-D) block names and the official 3-D classes that take their weights unchanged.
_BLOCKS_3D = {
    "CrossAttnDownBlock2D": "CrossAttnDownBlock3D",
    "DownBlock2D": "DownBlock3D",
    "UNetMidBlock2DCrossAttn": "UNetMidBlock3DCrossAttn",
    "UpBlock2D": "UpBlock3D",
    "CrossAttnUpBlock2D": "CrossAttnUpBlock3D",
}
_BLOCKS_2D = {v: k for k, v in _BLOCKS_3D.items()}

# UNet3DConditionModel.__init__'s arguments (tuneavideo/models/unet.py) and their defaults there.
_OFFICIAL_INIT: dict[str, Any] = {
    "sample_size": None,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"],
    "mid_block_type": "UNetMidBlock3DCrossAttn",
    "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"],
    "only_cross_attention": False,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 1280,
    "attention_head_dim": 8,
    "dual_cross_attention": False,
    "use_linear_projection": False,
    "class_embed_type": None,
    "num_class_embeds": None,
    "upcast_attention": False,
    "resnet_time_scale_shift": "default",
}

# Later diffusers UNet options the official class does not have: a base may carry them only at these
# values (the ones that build the SD v1 architecture), else the official code would build another model.
_NEUTRAL_EXTRAS: dict[str, Any] = {
    "dropout": 0.0,
    "transformer_layers_per_block": 1,
    "reverse_transformer_layers_per_block": None,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "num_attention_heads": None,
    "addition_embed_type": None,
    "addition_time_embed_dim": None,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "time_cond_proj_dim": None,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "projection_class_embeddings_input_dim": None,
    "attention_type": "default",
    "class_embeddings_concat": False,
    "mid_block_only_cross_attention": None,
    "cross_attention_norm": None,
    "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0,
}

_INV_LATENT = re.compile(r"^ddim_latent-(\d+)\.pt$")



@dataclass
class OfficialTraining:
    """What the run's `config.yaml` says about its training clip (None where it says nothing)."""

    prompt: str | None = None
    video_path: str | None = None
    n_sample_frames: int | None = None
    width: int | None = None
    height: int | None = None
    sample_start_idx: int | None = None
    sample_frame_rate: int | None = None
    pretrained_model_path: str | None = None
    trainable_modules: list[str] | None = None
    max_train_steps: int | None = None
    learning_rate: float | None = None
    seed: int | None = None


@dataclass
class OfficialRun:
    """An official tuned pipeline folder, read."""

    folder: Path  # the run's output_dir (the parent of unet/)
    weights_file: Path
    state: dict[str, torch.Tensor]  # the whole UNet3D's state dict, as stored (CPU)
    unet_config: dict[str, Any]
    training: OfficialTraining | None  # from config.yaml, when there is one
    inv_latent: torch.Tensor | None  # the newest inversion, tav's (B, F, C, h, w) layout, fp32
    inv_latent_step: int | None


# --- reading ----------------------------------------------------------------------------------------


def _unet_folder(path: Path) -> tuple[Path, Path]:
    """(run folder, unet folder) for either the official output_dir or its unet/ folder."""
    if (path / "unet" / "config.json").is_file():
        return path, path / "unet"
    if (path / "config.json").is_file():
        return path.parent, path
    if not path.exists():
        raise BadInput(f"{path} does not exist; pass the output_dir train_tuneavideo.py wrote, or its unet/")
    raise BadInput(f"{path} has no unet/config.json; pass the output_dir train_tuneavideo.py wrote, "
                        "or its unet/ folder")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BadInput(f"{path} is not readable JSON ({e}); is the folder complete?") from e
    if not isinstance(data, dict):
        raise BadInput(f"{path} is not a JSON object; is it a diffusers config?")
    return data


def read_unet_config(unet_folder: Path) -> dict[str, Any]:
    """The official unet/config.json, refused unless it is a UNet3DConditionModel's."""
    config = _read_json(unet_folder / "config.json")
    cls = config.get("_class_name")
    if cls != OFFICIAL_UNET_CLASS:
        raise BadInput(f"{unet_folder / 'config.json'} is a {cls or 'unnamed'} config, not the official "
                            f"{OFFICIAL_UNET_CLASS}; pass a folder written by train_tuneavideo.py")
    return config


def _check_tensors(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict) or not obj:
        raise BadInput(f"{path} holds a {type(obj).__name__}, not a state dict of tensors; "
                            "re-save the UNet with save_pretrained")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise BadInput(f"{path} holds {len(bad)} entries that are not named tensors (e.g. {bad[0]!r}); "
                            "re-save the UNet with save_pretrained")
    return dict(obj)


def load_weights_only(path: Path) -> Any:
    """`torch.load` that never runs code from the file: only tensors and plain containers come back."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # tav's words: torch's own advise weights_only=False, which runs the code
        raise BadInput(f"{path} holds Python objects besides tensors, which tav will not unpickle (it reads "
                       "pickled files only through torch.load(weights_only=True)); re-save it as a dict of tensors, or as "
                       "safetensors, in an environment you trust") from e
    except Exception as e:  # RuntimeError/EOFError for a damaged file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BadInput(f"{path} is not a plain tensor file that torch.load(weights_only=True) reads ({first}); "
                            "re-save it as a dict of tensors, or as safetensors") from e


def read_unet_weights(unet_folder: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The UNet's state dict: safetensors when present (no pickle at all), else the .bin, weights only."""
    safetensors_path, bin_path = unet_folder / WEIGHTS_SAFETENSORS, unet_folder / WEIGHTS_BIN
    if safetensors_path.is_file():
        from safetensors.torch import load_file

        try:
            return _check_tensors(load_file(safetensors_path, device="cpu"), safetensors_path), safetensors_path
        except BadInput:
            raise
        except Exception as e:  # safetensors raises its own error types for a damaged file
            raise BadInput(f"{safetensors_path} is not a readable safetensors file ({e}); "
                                "copy it again from the training machine") from e
    if bin_path.is_file():
        return _check_tensors(load_weights_only(bin_path), bin_path), bin_path
    raise BadInput(f"{unet_folder} has neither {WEIGHTS_SAFETENSORS} nor {WEIGHTS_BIN}; "
                        "copy the whole unet/ folder the official training saved")


def _as(kind: type, value: Any) -> Any:
    """A YAML value as `kind`, or None; PyYAML reads OmegaConf's `3e-05` as a string, so floats are parsed."""
    if value is None:
        return None
    try:
        return kind(value) if kind is not str else str(value)
    except (TypeError, ValueError):
        return None


def read_training(path: Path) -> OfficialTraining:
    """The fields of the run's config.yaml (OmegaConf's plain YAML) that say what was tuned, and how."""
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise BadInput(f"{path} is not readable YAML ({str(e).splitlines()[0]}); fix or remove it") from e
    if not isinstance(doc, dict):
        raise BadInput(f"{path} is not a YAML mapping; is it the config.yaml train_tuneavideo.py wrote?")
    data = doc.get("train_data") if isinstance(doc.get("train_data"), dict) else {}
    modules = doc.get("trainable_modules")
    return OfficialTraining(
        prompt=_as(str, data.get("prompt")),
        video_path=_as(str, data.get("video_path")),
        n_sample_frames=_as(int, data.get("n_sample_frames")),
        width=_as(int, data.get("width")),
        height=_as(int, data.get("height")),
        sample_start_idx=_as(int, data.get("sample_start_idx")),
        sample_frame_rate=_as(int, data.get("sample_frame_rate")),
        pretrained_model_path=_as(str, doc.get("pretrained_model_path")),
        trainable_modules=[str(m) for m in modules] if isinstance(modules, list) else None,
        max_train_steps=_as(int, doc.get("max_train_steps")),
        learning_rate=_as(float, doc.get("learning_rate")),
        seed=_as(int, doc.get("seed")),
    )


def read_inv_latent(folder: Path, in_channels: int) -> tuple[torch.Tensor | None, int | None]:
    """The inversion of the highest step in inv_latents/, as tav's (B, F, C, h, w) fp32 tensor."""
    found = [(int(m.group(1)), p) for p in (folder / "inv_latents").glob("ddim_latent-*.pt")
             if (m := _INV_LATENT.match(p.name))]
    if not found:
        return None, None
    step, path = max(found)
    latent = load_weights_only(path)
    if not isinstance(latent, torch.Tensor) or latent.ndim != 5 or latent.shape[1] != in_channels:
        shape = tuple(latent.shape) if isinstance(latent, torch.Tensor) else type(latent).__name__
        raise BadInput(f"{path} holds {shape}, not a (B, {in_channels}, F, h, w) latent; remove it "
                            "or invert the clip again with tav")
    # Official layout (B, C, F, h, w) -> tav's (B, F, C, h, w).
    return latent.permute(0, 2, 1, 3, 4).float().contiguous(), step


def read_official(path: str | Path) -> OfficialRun:
    """Read an official tuned pipeline folder (its output_dir, or the unet/ inside it)."""
    folder, unet_folder = _unet_folder(Path(path).expanduser())
    config = read_unet_config(unet_folder)
    state, weights_file = read_unet_weights(unet_folder)
    training = read_training(folder / "config.yaml") if (folder / "config.yaml").is_file() else None
    latent, step = read_inv_latent(folder, int(config.get("in_channels", 4)))
    return OfficialRun(folder, weights_file, state, config, training, latent, step)


# --- the official layout ----------------------------------------------------------------------------


def _check_supported(config: dict[str, Any]) -> None:
    """Refuse configs the official UNet3D cannot build (or builds with keys official_keys does not know)."""
    for key, neutral in _NEUTRAL_EXTRAS.items():
        if key in config and config[key] != neutral and not (isinstance(config[key], list | tuple)
                                                            and all(v == neutral for v in config[key])):
            raise BadInput(f"the UNet's {key}={config[key]!r} has no counterpart in the official "
                                f"{OFFICIAL_UNET_CLASS}; only Stable Diffusion v1.x-shaped UNets can be exchanged")
    if config.get("class_embed_type") is not None or config.get("num_class_embeds") is not None:
        raise BadInput("class-conditioned UNets are not Stable Diffusion v1.x; the official code "
                            "has no use for their class embedding")
    if config.get("dual_cross_attention"):
        raise BadInput("the official code does not implement dual_cross_attention; use an SD v1.x base")


def official_unet_config(unet_config: dict[str, Any]) -> dict[str, Any]:
    """The unet/config.json the official UNet3DConditionModel expects, for a (stock or official) UNet config."""
    config = dict(unet_config)
    _check_supported(config)

    def block(name: str) -> str:
        if name in _BLOCKS_3D:
            return _BLOCKS_3D[name]
        if name in _BLOCKS_2D:
            return name
        raise BadInput(f"block type {name!r} has no official 3-D counterpart ({', '.join(_BLOCKS_2D)}); "
                            "only Stable Diffusion v1.x-shaped UNets can be exchanged")

    out: dict[str, Any] = {"_class_name": OFFICIAL_UNET_CLASS, "_diffusers_version": OFFICIAL_DIFFUSERS_VERSION}
    for key, default in _OFFICIAL_INIT.items():
        value = config.get(key, default)
        out[key] = list(value) if isinstance(value, tuple) else value
    out["down_block_types"] = [block(b) for b in out["down_block_types"]]
    out["up_block_types"] = [block(b) for b in out["up_block_types"]]
    out["mid_block_type"] = block(out["mid_block_type"])
    return out


def stock_unet_config(official_config: dict[str, Any]) -> dict[str, Any]:
    """The inverse: the UNet2DConditionModel init arguments of an official unet/config.json."""
    out = {k: official_config[k] for k in _OFFICIAL_INIT if k in official_config}
    for key in ("down_block_types", "up_block_types"):
        if key in out:
            out[key] = [_BLOCKS_2D.get(b, b) for b in out[key]]
    if "mid_block_type" in out:
        out["mid_block_type"] = _BLOCKS_2D.get(out["mid_block_type"], out["mid_block_type"])
    return out


def official_keys(unet_config: dict[str, Any]) -> set[str]:
    """Every state-dict key of the official UNet3DConditionModel built from `unet_config`.

    Spelled out from tuneavideo/models/{unet,unet_blocks,attention,resnet}.py, not read off a model, so
    that it checks the claim that an inflated stock UNet has exactly the official layout.
    """
    config = official_unet_config(unet_config)
    channels, layers = list(config["block_out_channels"]), int(config["layers_per_block"])
    keys: set[str] = set()

    def linear(prefix: str, *names: str, bias: bool = True) -> None:
        keys.update(f"{prefix}{n}.{p}" for n in names for p in (("weight", "bias") if bias else ("weight",)))

    def resnet(prefix: str, cin: int, cout: int) -> None:
        linear(prefix, "norm1", "conv1", "time_emb_proj", "norm2", "conv2")
        if cin != cout:  # the 1x1 shortcut exists only where the channel count changes
            linear(prefix, "conv_shortcut")

    def transformer(prefix: str) -> None:  # Transformer3DModel: always one BasicTransformerBlock
        linear(prefix, "norm", "proj_in", "proj_out")
        block = f"{prefix}transformer_blocks.0."
        linear(block, "norm1", "norm2", "norm3", "norm_temp", "ff.net.0.proj", "ff.net.2")
        for attn in ("attn1", "attn2", "attn_temp"):  # attention_bias=False: q/k/v without bias
            linear(f"{block}{attn}.", "to_q", "to_k", "to_v", bias=False)
            linear(f"{block}{attn}.", "to_out.0")

    linear("", "conv_in", "time_embedding.linear_1", "time_embedding.linear_2", "conv_norm_out", "conv_out")
    last = len(channels) - 1
    for i, kind in enumerate(config["down_block_types"]):
        cin, cout = channels[max(i - 1, 0)], channels[i]
        for j in range(layers):
            resnet(f"down_blocks.{i}.resnets.{j}.", cin if j == 0 else cout, cout)
            if kind.startswith("CrossAttn"):
                transformer(f"down_blocks.{i}.attentions.{j}.")
        if i < last:
            linear(f"down_blocks.{i}.downsamplers.0.", "conv")  # name="op": no Conv2d_0 alias
    resnet("mid_block.resnets.0.", channels[-1], channels[-1])
    resnet("mid_block.resnets.1.", channels[-1], channels[-1])
    transformer("mid_block.attentions.0.")
    reverse = channels[::-1]
    prev = reverse[0]
    for i, kind in enumerate(config["up_block_types"]):
        cout, cskip = reverse[i], reverse[min(i + 1, last)]
        for j in range(layers + 1):
            skip = cskip if j == layers else cout
            resnet(f"up_blocks.{i}.resnets.{j}.", (prev if j == 0 else cout) + skip, cout)
            if kind.startswith("CrossAttn"):
                transformer(f"up_blocks.{i}.attentions.{j}.")
        if i < last:
            linear(f"up_blocks.{i}.upsamplers.0.", "conv")
        prev = cout
    return keys


def _normalized(config: dict[str, Any], key: str) -> Any:
    value = config[key]
    if key in ("attention_head_dim", "only_cross_attention") and not isinstance(value, tuple | list):
        return [value] * len(config["down_block_types"])  # one value for all blocks, as the UNet expands it
    return list(value) if isinstance(value, tuple | list) else value


def check_config(official_config: dict[str, Any], unet_config: dict[str, Any]) -> None:
    """Refuse an official UNet whose architecture differs from the base's where shapes would not tell.

    Head counts, for one, change no weight's shape but all of attention's results.
    """
    ours = official_unet_config(unet_config)
    theirs = official_unet_config(official_config)
    for key in _OFFICIAL_INIT:
        if key != "sample_size" and _normalized(ours, key) != _normalized(theirs, key):
            raise BadInput(f"the official UNet has {key}={theirs[key]!r} but the base has {ours[key]!r}; "
                                "pass the base model it was tuned from with --base")


# --- import -----------------------------------------------------------------------------------------


def _narrower(a: torch.dtype, b: torch.dtype) -> torch.dtype:
    return a if torch.finfo(a).bits <= torch.finfo(b).bits else b


def _same(base: torch.Tensor, official: torch.Tensor) -> bool:
    # Compared in the narrower dtype: an fp16 copy of the base rounds the same fp32 weights the same way,
    # and with the fp32 base tav builds for importing, this is the official tensor's own dtype.
    if not (base.is_floating_point() and official.is_floating_point()):
        return torch.equal(base, official)
    dtype = _narrower(base.dtype, official.dtype)
    return torch.equal(base.detach().to("cpu", dtype), official.to(dtype))


def _example(keys: Iterable[str]) -> str:
    return sorted(keys)[0]


def to_adapter_state(official_state: dict[str, torch.Tensor], unet: nn.Module,
                     official_config: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """The `full` adapter tensors (fp32) of an official UNet3D state dict, checked against `unet`.

    `unet` is tav's inflated UNet with the base's weights and freshly initialised temporal modules (fp32
    on CPU is cheapest). Nothing is dropped silently: every official tensor must be one of the unet's,
    of the same shape, and either a tuned one or equal to the base's; `norm_temp` must be at its init,
    as tav does not store it (the official training never tunes it).
    """
    if official_config is not None:
        check_config(official_config, dict(unet.config))
    ours = unet.state_dict()
    if not any(".attn_temp." in k for k in ours):
        raise BadInput("the UNet has no temporal attention; inflate it with temporal=True before importing")
    unknown = set(official_state) - set(ours)
    if unknown:
        raise BadInput(f"{len(unknown)} official tensors have no place in tav's UNet (e.g. "
                            f"{_example(unknown)}); only Stable Diffusion v1.x Tune-A-Video UNets can be imported")
    missing = set(ours) - set(official_state)
    if missing:
        raise BadInput(f"{len(missing)} tensors of the UNet are missing from the official weights (e.g. "
                            f"{_example(missing)}); is the file a complete Tune-A-Video UNet3D?")
    for key in sorted(official_state):
        if official_state[key].shape != ours[key].shape:
            raise BadInput(f"{key} is {tuple(official_state[key].shape)} in the official weights but "
                                f"{tuple(ours[key].shape)} in the base; pass the base model it was tuned from "
                                "with --base")
    tuned = set(adapter_state(unet, AdapterSpec("full")))
    for key in sorted(k for k in official_state if ".norm_temp." in k):
        init = 1.0 if key.endswith(".weight") else 0.0
        if not torch.all(official_state[key] == init):
            raise BadInput(f"{key} is not at its initial value {init:g}: this UNet tuned norm_temp, which "
                                "tav neither tunes nor stores (the official training leaves it frozen)")
    differ = [k for k in sorted(official_state) if k not in tuned and ".norm_temp." not in k
              and not _same(ours[k], official_state[k])]
    if differ:
        raise BadInput(f"{len(differ)} weights differ from the base (e.g. {differ[0]}); pass the base model "
                            f"it was tuned from with --base (tav imports runs that tuned only "
                            f"{', '.join(TRAINABLE_MODULES)})")
    return {k: official_state[k].detach().to("cpu", torch.float32).contiguous() for k in sorted(tuned)}


# --- export -----------------------------------------------------------------------------------------


def _merged_lora_state(unet: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with every PEFT LoRA folded into its base weight, under the plain module names."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    deltas: dict[str, torch.Tensor] = {}
    for name, module in unet.named_modules():
        if isinstance(module, BaseTunerLayer) and not module.merged:
            for adapter in module.active_adapters:
                delta = module.get_delta_weight(adapter).float()
                key = f"{name}.weight"
                deltas[key] = deltas[key] + delta if key in deltas else delta
    state = {}
    for key, value in unet.state_dict().items():
        if ".lora_" in key:
            continue
        key = key.replace(".base_layer.", ".")
        state[key] = value.float() + deltas[key].to(value.device) if key in deltas else value
    return state


def official_state(unet: nn.Module) -> dict[str, torch.Tensor]:
    """The inflated, adapter-loaded UNet's full state dict (CPU, contiguous), LoRA merged, in the official layout."""
    state = unet.state_dict()
    if any(".lora_" in k for k in state):
        state = _merged_lora_state(unet)
    want = official_keys(dict(unet.config))
    if set(state) != want:
        extra, missing = set(state) - want, want - set(state)
        example = _example(extra) if extra else _example(missing)
        raise BadInput(f"the UNet's state dict is not the official UNet3D's ({len(extra)} extra, "
                            f"{len(missing)} missing, e.g. {example}); inflate it with temporal attention and "
                            "load the adapter first")
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def official_model_index(base_folder: Path) -> dict[str, Any]:
    """model_index.json as `TuneAVideoPipeline.save_pretrained` writes it for a pipeline on this base.

    diffusers 0.11.1's register_modules names a component's library after its module's top package,
    or, for a package it cannot load from (the official `tuneavideo.models.unet`), after the module's
    parent folder: hence `["models", "UNet3DConditionModel"]`. The training script builds the pipeline
    with `from_pretrained(base, text_encoder=..., vae=..., unet=...)`, so the tokenizer and scheduler
    classes are the base's.
    """
    index = _read_json(base_folder / "model_index.json") if (base_folder / "model_index.json").is_file() else {}

    def entry(name: str, library: str, default: str) -> list[str]:
        value = index.get(name)
        return [library, value[1]] if isinstance(value, list) and len(value) == 2 and value[1] else [library, default]

    scheduler_config = base_folder / "scheduler" / "scheduler_config.json"
    scheduler = _read_json(scheduler_config).get("_class_name") if scheduler_config.is_file() else None
    return {
        "_class_name": OFFICIAL_PIPELINE_CLASS,
        "_diffusers_version": OFFICIAL_DIFFUSERS_VERSION,
        "scheduler": entry("scheduler", "diffusers", scheduler or "PNDMScheduler"),
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": entry("tokenizer", "transformers", "CLIPTokenizer"),
        "unet": ["models", OFFICIAL_UNET_CLASS],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def _dump_json(data: dict[str, Any], path: Path) -> None:
    # diffusers' to_json_string: indent 2, sorted keys, trailing newline.
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _training_yaml(training: OfficialTraining, base_folder: Path, folder: Path) -> str:
    import yaml

    fields = ("video_path", "prompt", "n_sample_frames", "width", "height", "sample_start_idx", "sample_frame_rate")
    train_data = {k: getattr(training, k) for k in fields if getattr(training, k) is not None}
    doc: dict[str, Any] = {"pretrained_model_path": training.pretrained_model_path or str(base_folder),
                           "output_dir": str(folder),
                           "train_data": train_data, "trainable_modules": list(TRAINABLE_MODULES)}
    for key in ("max_train_steps", "learning_rate", "seed"):
        if getattr(training, key) is not None:
            doc[key] = getattr(training, key)
    return yaml.safe_dump(doc, sort_keys=False)


def _plain(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    t = tensor.detach().to("cpu", dtype).contiguous()
    # torch.save writes a view's whole storage: copy a tensor that shares a larger one.
    return t.clone() if t.untyped_storage().nbytes() != t.numel() * t.element_size() else t


def write_official(
    folder: str | Path,
    unet_state: dict[str, torch.Tensor],
    unet_config: dict[str, Any],
    base_folder: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    inv_latent: torch.Tensor | None = None,
    inv_step: int = 0,
    training: OfficialTraining | None = None,
    extra: Callable[[Path], object] | None = None,
) -> Path:
    """Write an output_dir the official code loads: unet/ (config.json + .bin), the base's components,
    model_index.json, and optionally inv_latents/ddim_latent-<inv_step>.pt (from tav's (B, F, C, h, w))
    and a config.yaml; `extra(folder)` adds more (a model card). Atomic: built beside `folder` and renamed;
    an existing non-empty `folder` is refused.
    """
    folder, base_folder = Path(folder).expanduser(), Path(base_folder).expanduser()
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise BadInput(f"{folder} already exists and is not empty; choose a new folder")
    config = official_unet_config(unet_config)
    want = official_keys(config)
    if set(unet_state) != want:
        diff = sorted(set(unet_state) ^ want)
        raise BadInput(f"the UNet state has {len(diff)} keys off the official layout (e.g. {diff[0]}); "
                            "pass official_state(unet)")
    missing = [c for c in COMPONENTS if not (base_folder / c).is_dir()]
    if missing:
        raise BadInput(f"{base_folder} lacks {', '.join(c + '/' for c in missing)}; pass the base's "
                            "diffusers folder")
    if inv_latent is not None and (inv_latent.ndim != 5 or inv_latent.shape[2] != config["in_channels"]):
        raise BadInput(f"the inversion latent is {tuple(inv_latent.shape)}, not tav's (B, F, "
                            f"{config['in_channels']}, h, w)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))
    try:
        (tmp / "unet").mkdir()
        _dump_json(config, tmp / "unet" / "config.json")
        # A plain dict of tensors: what diffusers 0.11.1's save_pretrained and from_pretrained_2d use.
        torch.save({k: _plain(unet_state[k], dtype) for k in sorted(unet_state)}, tmp / "unet" / WEIGHTS_BIN)
        for component in COMPONENTS:  # follows the HF cache's symlinks: the copies are real files
            shutil.copytree(base_folder / component, tmp / component)
        _dump_json(official_model_index(base_folder), tmp / "model_index.json")
        if inv_latent is not None:
            (tmp / "inv_latents").mkdir()
            official = inv_latent.detach().to("cpu").permute(0, 2, 1, 3, 4).contiguous()  # -> (B, C, F, h, w)
            torch.save(official, tmp / "inv_latents" / f"ddim_latent-{inv_step}.pt")
        if training is not None:
            (tmp / "config.yaml").write_text(_training_yaml(training, base_folder, folder))
        if extra is not None:
            extra(tmp)
        if folder.is_dir():
            folder.rmdir()  # empty (checked above): rename() would refuse to replace it on some systems
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
