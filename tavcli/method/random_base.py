"""Randomly initialised, Stable-Diffusion-v1-shaped base pipelines.

Tests and benchmarks need a base model that the real loading code can open
(``UNet2DConditionModel.from_pretrained(dir, subfolder="unet")`` and friends)
without any network access. This module builds such a folder from scratch:

* ``arch="sd-v1"``: the exact Stable Diffusion v1.4 architecture (shapes,
  parameter counts, scheduler config), so memory and speed measurements are
  representative; only the weights are random.
* ``arch="tiny"``: the same block types and wiring, shrunk so that building and
  saving it takes well under a second on CPU. Its VAE still has four blocks, so
  it downsamples by 8 exactly like SD's and latents are ``4 x H/8 x W/8``.

The tokenizer is a real CLIP byte-level BPE tokenizer whose vocabulary is just
the 256 byte symbols (with and without the ``</w>`` end-of-word marker), a few
merges and the two special tokens; it tokenizes any text, only less compactly
than the real 49408-token vocabulary.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from tavcli.errors import BadInput

ARCHES = ("tiny", "sd-v1")

# Stable Diffusion v1.4's special tokens; CLIP puts them at the end of the vocab.
_BOS = "<|startoftext|>"
_EOS = "<|endoftext|>"
_EOW = "</w>"
_MAX_LENGTH = 77  # CLIP's context length; SD always pads prompts to it.

# A handful of frequent English merges so the tokenizer exercises real BPE
# merging (not only single bytes). Each merge's result is added to the vocab.
_MERGES: tuple[tuple[str, str], ...] = (
    ("t", "h"),
    ("i", "n"),
    ("a", "n"),
    ("e", f"r{_EOW}"),
    ("th", f"e{_EOW}"),
    ("in", f"g{_EOW}"),
    ("o", "n"),
    ("a", f"n{_EOW}"),
)

# Stable Diffusion v1.4's noise schedule (scheduler/scheduler_config.json).
SD_V1_SCHEDULER: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}

_CROSS_DOWN = "CrossAttnDownBlock2D"
_CROSS_UP = "CrossAttnUpBlock2D"

# unet/config.json of Stable Diffusion v1.4 (859,520,964 parameters).
SD_V1_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "down_block_types": (_CROSS_DOWN, _CROSS_DOWN, _CROSS_DOWN, "DownBlock2D"),
    "up_block_types": ("UpBlock2D", _CROSS_UP, _CROSS_UP, _CROSS_UP),
    "cross_attention_dim": 768,
    # Legacy diffusers naming: for SD v1 this is the number of heads (8).
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "center_input_sample": False,
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-5,
}

# vae/config.json of Stable Diffusion v1.4 (83,653,863 parameters).
SD_V1_VAE: dict[str, Any] = {
    "sample_size": 512,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
}

# CLIP ViT-L/14 text tower (123,060,480 parameters), as used by SD v1.x.
SD_V1_TEXT: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": _MAX_LENGTH,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}

# Same structure as SD's UNet with one resnet per block and two resolutions.
TINY_UNET: dict[str, Any] = {
    **SD_V1_UNET,
    "sample_size": 8,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "down_block_types": (_CROSS_DOWN, "DownBlock2D"),
    "up_block_types": ("UpBlock2D", _CROSS_UP),
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}

# Four blocks (three downsamplers) like SD's VAE, so the x8 factor is real;
# narrow channels need groups of 8 since 8 channels cannot hold 32 groups.
TINY_VAE: dict[str, Any] = {
    **SD_V1_VAE,
    "sample_size": 64,
    "block_out_channels": (8, 16, 32, 32),
    "layers_per_block": 1,
    "norm_num_groups": 8,
}

# vocab_size is filled in from the tokenizer, which is the only vocab we have.
TINY_TEXT: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": _MAX_LENGTH,
    "hidden_act": "quick_gelu",
    "projection_dim": 32,
}

_CONFIGS: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    "tiny": (TINY_UNET, TINY_VAE, TINY_TEXT),
    "sd-v1": (SD_V1_UNET, SD_V1_VAE, SD_V1_TEXT),
}


def _check_arch(arch: str) -> None:
    if arch not in ARCHES:
        raise BadInput(f"unknown arch {arch!r}; expected one of {ARCHES}")


def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible byte -> printable unicode character table.

    Written out rather than imported because transformers 5 no longer exposes it
    from the CLIP tokenizer module.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def _tokenizer_vocab() -> dict[str, int]:
    """Vocab in CLIP's order: bytes, bytes + </w>, merge results, specials."""
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + _EOW for s in symbols]
    tokens += [a + b for a, b in _MERGES]
    tokens += [_BOS, _EOS]
    return {token: index for index, token in enumerate(tokens)}


def write_tokenizer_files(directory: str | Path) -> Path:
    """Write CLIP-format ``vocab.json`` and ``merges.txt`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(_tokenizer_vocab(), ensure_ascii=False), encoding="utf-8")
    merges = "".join(f"{a} {b}\n" for a, b in _MERGES)
    (directory / "merges.txt").write_text("#version: 0.2\n" + merges, encoding="utf-8")
    return directory


def build_tokenizer() -> Any:
    """A CLIPTokenizer over the small byte-level vocab, padded/truncated to 77.

    Loading from vocab/merges files (instead of the constructor) works with both
    transformers 4 (slow, file-based class) and 5 (tokenizers-backed class).
    """
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer_files(tmp)
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=_MAX_LENGTH)


def _build_unet(config: dict[str, Any]) -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**config)


def _build_vae(config: dict[str, Any]) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(**config)


def _build_text_encoder(config: dict[str, Any], tokenizer: Any) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    # Tiny models size their embedding to the tokenizer; sd-v1 keeps the real
    # 49408 rows (all our ids are smaller, so lookups stay in range).
    text_config = {"vocab_size": len(tokenizer), **config}
    # The pooled output is read at the EOS position, so ids must agree with the
    # tokenizer rather than with CLIP's 49406/49407.
    special_ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    return CLIPTextModel(CLIPTextConfig(**text_config, **special_ids))


def build_scheduler() -> Any:
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SD_V1_SCHEDULER)


def random_components(arch: str = "tiny", seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Build unet, vae, text_encoder, tokenizer and scheduler with random weights.

    Each model is seeded on its own (seed, seed+1, seed+2) so its weights do not
    depend on what was built before it. Weights are initialised in fp32 and
    cast afterwards, so a seed gives the same values (up to rounding) in any
    dtype. The caller's global RNG state is restored on exit.
    """
    _check_arch(arch)
    unet_config, vae_config, text_config = _CONFIGS[arch]
    tokenizer = build_tokenizer()
    # devices=[]: only the CPU generator is used for init, and this avoids
    # touching (or warning about) CUDA state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = _build_unet(unet_config)
        torch.manual_seed(seed + 1)
        vae = _build_vae(vae_config)
        torch.manual_seed(seed + 2)
        text_encoder = _build_text_encoder(text_config, tokenizer)
    if dtype != torch.float32:  # skip a no-op cast (diffusers warns on every .to(dtype))
        for model in (unet, vae, text_encoder):
            model.to(dtype=dtype)
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": build_scheduler(),
    }


def save_random_base(
    path: str | Path,
    arch: str = "tiny",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a complete StableDiffusionPipeline folder with random weights.

    The folder has model_index.json, unet/, vae/, text_encoder/, tokenizer/ and
    scheduler/ (DDIMScheduler with SD v1.4's schedule), weights in safetensors
    in ``dtype``. Returns the folder's path.
    """
    from diffusers import StableDiffusionPipeline

    path = Path(path)
    components = random_components(arch, seed, dtype)
    pipeline = StableDiffusionPipeline(
        **components,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    # save_pretrained writes model_index.json exactly as diffusers does, so the
    # folder loads like a hub checkout of SD v1.x.
    pipeline.save_pretrained(path, safe_serialization=True)
    # Keep CLIP's original file pair next to tokenizer.json, so slow/older
    # tokenizer classes can load the folder too.
    write_tokenizer_files(path / "tokenizer")
    return path


def save_random_clip(path: str | Path, image_size: int = 32, seed: int = 0) -> Path:
    """A tiny random CLIP folder (model, tokenizer, image processor) for testing `tav score` offline."""
    import transformers
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    tokenizer = build_tokenizer()
    tower = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, projection_dim=16)
    text = CLIPTextConfig(
        **tower, vocab_size=len(tokenizer), max_position_embeddings=77,
        # the text tower pools at the EOS id, which must be the tiny tokenizer's, not CLIP's 49407
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    vision = CLIPVisionConfig(**tower, image_size=image_size, patch_size=8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16))
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    processor = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    processor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
              ).save_pretrained(path)
    return path
