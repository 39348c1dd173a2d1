"""What tuning trains, and how it is stored: small PEFT-layout adapters, never a whole model.

Two kinds, both an `adapter_config.json` beside an `adapter_model.safetensors`:

* `full` — the paper's: the tuned attn1/attn2 query weights and the whole temporal attention, dense
  (74,354,880 numbers for SD v1.4). Its config is tav's own (`"peft_type": "TAV_FULL"`); the weights load
  onto an inflated UNet with `load_state_dict(strict=False)`.
* `lora` — a genuine PEFT LoRA (rank r) on the same query projections and on the temporal q/k/v/out
  projections, plus the temporal output bias. The temporal modules' frozen weights are not stored: they
  are regenerated from `temporal_seed` (see `attention.init_temporal`).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save
from torch import nn

from tavcli.errors import Corrupt
from tavcli.method.attention import init_temporal
from tavcli.method.params import AdapterKind, AdapterSpec

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
# The modules the paper tunes: W^Q of the spatial and cross attention, and all of the temporal attention.
TUNED_MODULES = re.compile(r"(^|\.)(attn1\.to_q|attn2\.to_q|attn_temp\.(to_q|to_k|to_v|to_out\.0))$")
_PEFT_TARGETS = r".*(attn1\.to_q|attn2\.to_q|attn_temp\.(to_q|to_k|to_v|to_out\.0))"




def _lora_config(spec: AdapterSpec):
    from peft import LoraConfig

    # alpha = rank keeps the LoRA scale at 1, so the learning rate means the same at every rank.
    return LoraConfig(r=spec.rank, lora_alpha=spec.rank, target_modules=_PEFT_TARGETS, bias="lora_only",
                      init_lora_weights=True)


def attach(unet: nn.Module, spec: AdapterSpec) -> list[nn.Parameter]:
    """Freeze the inflated UNet but for what `spec` trains; returns those parameters (in fp32)."""
    unet.requires_grad_(False)
    if spec.kind == AdapterKind.LORA:
        from peft import inject_adapter_in_model

        with torch.random.fork_rng():  # LoRA A's random init: the same for the same seed, always
            torch.manual_seed(spec.temporal_seed)
            inject_adapter_in_model(_lora_config(spec), unet)
        for name, p in unet.named_parameters():
            p.requires_grad_("lora_" in name or name.endswith("attn_temp.to_out.0.base_layer.bias"))
    else:
        for name, module in unet.named_modules():
            if TUNED_MODULES.search(name):
                module.requires_grad_(True)
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()  # the optimizer and its state stay fp32 whatever the frozen weights are
    return params


def adapter_state(unet: nn.Module, spec: AdapterSpec) -> dict[str, torch.Tensor]:
    """The tensors an adapter of `spec` stores, keyed as in the UNet's (PEFT-stripped) state dict."""
    if spec.kind == AdapterKind.LORA:
        from peft import get_peft_model_state_dict

        return dict(get_peft_model_state_dict(unet))
    return {f"{name}.{pname}": p.detach() for name, module in unet.named_modules() if TUNED_MODULES.search(name)
            for pname, p in module.named_parameters(recurse=False)}


def save_adapter(unet: nn.Module, spec: AdapterSpec, folder: str | Path, dtype: torch.dtype | None = None,
                 metadata: dict[str, str] | None = None, state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the adapter to `folder` (created). `dtype` defaults to fp16 for `full`, fp32 for `lora`.

    `state` overrides the UNet's own tensors (e.g. the fp32 ones kept from before an inference cast).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dtype = dtype or (torch.float16 if spec.kind == AdapterKind.FULL else torch.float32)
    state = state if state is not None else adapter_state(unet, spec)
    tensors = {k: v.to("cpu", dtype).contiguous() for k, v in state.items()}
    if spec.kind == AdapterKind.LORA:
        config = _lora_config(spec).to_dict()
        config["target_modules"] = _PEFT_TARGETS  # to_dict() returns a set for regex-free lists only
    else:
        config = {"peft_type": "TAV_FULL", "target_modules": _PEFT_TARGETS}
    # tav's own fields (the whole spec) ride in the safetensors header, so the JSON stays a config PEFT reads
    # without warnings and every loader rebuilds the UNet the adapter was tuned on.
    header = {f"tav_{k}": str(v) for k, v in asdict(spec).items()}
    header |= {"format": "pt", **(metadata or {})}
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2, default=str) + "\n")
    (folder / WEIGHTS_NAME).write_bytes(_safetensors_bytes(tensors, header))
    return folder


def _safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """A safetensors file whose header lists the metadata sorted: safetensors writes it from a Rust HashMap,
    in a random order each time, so the same adapter would not be the same bytes (nor its export's import)."""
    data = save(tensors, metadata=metadata)
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > n:  # not the writer's spelling after all: keep its bytes, order and all
        return data
    return data[:8] + text.ljust(n) + data[8 + n:]  # the same length: safetensors pads its header with spaces


def read_metadata(folder: str | Path) -> dict[str, str]:
    """The adapter's safetensors header: tav's spec fields (`tav_*`) and whatever the caller stored."""
    path = Path(folder) / WEIGHTS_NAME
    if not (Path(folder) / CONFIG_NAME).is_file():
        raise Corrupt(f"{folder} has no {CONFIG_NAME}; is it a tav adapter folder?")
    if not path.is_file():
        raise Corrupt(f"{folder} has no {WEIGHTS_NAME}")
    try:
        with safe_open(path, "pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types for a damaged header
        raise Corrupt(f"{path} is not a readable safetensors file ({e})") from e


def read_spec(folder: str | Path) -> AdapterSpec:
    """The spec stored with an adapter; attention and norm default to the paper's for adapters written before
    tav recorded them (attention since 0.1, norm since 0.2: all of those were tuned with clip GroupNorm)."""
    meta = read_metadata(folder)
    try:
        return AdapterSpec(meta["tav_kind"], int(meta["tav_rank"]), int(meta["tav_temporal_seed"]),
                           meta.get("tav_attention", AdapterSpec.attention), meta.get("tav_norm", AdapterSpec.norm))
    except (KeyError, ValueError) as e:
        raise Corrupt(f"{Path(folder) / WEIGHTS_NAME} is not a tav adapter (no {e} in its header)") from e


def load_into(unet: nn.Module, spec: AdapterSpec, folder: str | Path) -> None:
    """Copy a saved adapter's tensors into a UNet already inflated and attached for `spec` (in place, in the
    trained tensors' fp32): a tune continues from them."""
    folder = Path(folder)
    stored = read_spec(folder)
    if stored != spec:
        raise Corrupt(f"{folder} holds a {stored.kind} adapter of another spec than this tune's")
    tensors = load_file(folder / WEIGHTS_NAME, device=str(unet.conv_in.weight.device))
    unexpected = _copy_in(unet, spec, tensors)
    missing = set(adapter_state(unet, spec)) - set(tensors)
    if unexpected or missing:
        raise Corrupt(f"{folder} does not fit this tune: {len(unexpected)} unknown and {len(missing)} missing tensors")


def _copy_in(unet: nn.Module, spec: AdapterSpec, tensors: dict[str, torch.Tensor]) -> list[str]:
    """Copy the tensors into the attached UNet's own (in place); the keys it does not know."""
    if spec.kind == AdapterKind.LORA:
        from peft import set_peft_model_state_dict

        return list(set_peft_model_state_dict(unet, tensors).unexpected_keys or [])
    return list(unet.load_state_dict(tensors, strict=False).unexpected_keys)


def load_adapter(unet: nn.Module, folder: str | Path, scale: float = 1.0) -> AdapterSpec:
    """Apply a saved adapter to a freshly inflated UNet, its deltas scaled by `scale` (`scale_adapter`);
    returns its spec."""
    folder = Path(folder)
    spec = read_spec(folder)
    tensors = load_file(folder / WEIGHTS_NAME, device=str(unet.conv_in.weight.device))
    try:
        init_temporal(unet, spec.temporal_seed)
        attach(unet, spec)  # LoRA layers where a LoRA adapter needs them; tuned tensors in fp32
        base = _base_queries(unet) if scale != 1 and spec.kind == AdapterKind.FULL else {}
        unexpected = _copy_in(unet, spec, tensors)
    except (AttributeError, RuntimeError) as e:  # no temporal layers, or tensors of other shapes
        raise Corrupt(f"{folder} does not fit this UNet ({str(e).splitlines()[0]}); "
                           "is the base the one it was tuned on?") from e
    missing = set(adapter_state(unet, spec)) - set(tensors)
    if unexpected or missing:
        raise Corrupt(f"{folder} does not fit this UNet: {len(unexpected)} unknown and {len(missing)} "
                           f"missing tensors (e.g. {(unexpected or sorted(missing))[0]}); is the base the one it "
                           "was tuned on?")
    unet.requires_grad_(False)
    if scale != 1:  # 1 leaves the tuned tensors untouched, bit for bit
        scale_adapter(unet, spec, scale, base)
    return spec


_QUERY = re.compile(r"(^|\.)attn[12]\.to_q$")
_TEMPORAL_OUT = re.compile(r"(^|\.)attn_temp\.to_out\.0$")


def _base_queries(unet: nn.Module) -> dict[str, torch.Tensor]:
    """The base's attn1/attn2 query weights (fp32 copies), before a `full` adapter overwrites them."""
    return {f"{name}.{pname}": p.detach().float().clone() for name, module in unet.named_modules()
            if _QUERY.search(name) for pname, p in module.named_parameters(recurse=False)}


@torch.no_grad()
def scale_adapter(unet: nn.Module, spec: AdapterSpec, scale: float, base: dict[str, torch.Tensor]) -> None:
    """Scale a loaded adapter's deltas by `scale`, alike for both kinds:

    * the spatial and cross attention's query projections (which the base has) become base + scale * (tuned -
      base): for `full` from `base` (`_base_queries`), for `lora` through PEFT's per-layer scaling;
    * the temporal attention (which the base has not) adds scale times its tuned output: its output
      projection's weight and bias (for `lora`, its LoRA delta and its trained bias) are multiplied by
      `scale`; its q, k and v stay as tuned, as they only act through that output.

    So 0 is the base's weights in the video UNet: the query projections are the base's and the temporal
    layers add exactly zero (the frame attention and clip GroupNorm stay as tuned: they are the architecture,
    not weights), and 1 is the tuned model; other values interpolate (or extrapolate) the deltas.
    """
    for name, module in unet.named_modules():
        if spec.kind == AdapterKind.LORA:
            from peft.tuners.lora import LoraLayer

            if isinstance(module, LoraLayer) and (_QUERY.search(name) or _TEMPORAL_OUT.search(name)):
                module.scale_layer(scale)  # scaling *= scale
                if _TEMPORAL_OUT.search(name):
                    for p in module.base_layer.parameters():
                        p.mul_(scale)
        elif _QUERY.search(name):
            for pname, p in module.named_parameters(recurse=False):
                start = base[f"{name}.{pname}"].to(p.device)
                p.copy_(start + scale * (p.float() - start))
        elif _TEMPORAL_OUT.search(name):
            for p in module.parameters():
                p.mul_(scale)
