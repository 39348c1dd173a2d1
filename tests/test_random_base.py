"""Tests for tavcli.method.random_base: random SD-v1-shaped base folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import load_file
from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from tavcli.method.random_base import (
    ARCHES,
    SD_V1_SCHEDULER,
    SD_V1_TEXT,
    SD_V1_UNET,
    SD_V1_VAE,
    random_components,
    save_random_base,
)

PROMPT = "a man is skiing"
UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_base(tmp_path_factory.mktemp("tiny") / "base", arch="tiny", seed=0)


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _tokenize(tokenizer, text: str = PROMPT) -> torch.Tensor:
    return tokenizer(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


def test_arches() -> None:
    assert ARCHES == ("tiny", "sd-v1")
    with pytest.raises(ValueError):
        random_components("sd-v2")


def test_folder_layout_and_model_index(tiny_dir: Path) -> None:
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (tiny_dir / sub).is_dir()
    assert (tiny_dir / UNET_WEIGHTS).is_file()
    assert (tiny_dir / "vae/diffusion_pytorch_model.safetensors").is_file()
    assert (tiny_dir / "text_encoder/model.safetensors").is_file()
    index = json.loads((tiny_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert "_diffusers_version" in index
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["tokenizer"][1] == "CLIPTokenizer"
    assert index["scheduler"] == ["diffusers", "DDIMScheduler"]
    assert index["safety_checker"] == [None, None]
    assert index["feature_extractor"] == [None, None]
    assert index["requires_safety_checker"] is False


def test_components_load_and_run(tiny_dir: Path) -> None:
    unet = UNet2DConditionModel.from_pretrained(tiny_dir, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(tiny_dir, subfolder="vae")
    text_encoder = CLIPTextModel.from_pretrained(tiny_dir, subfolder="text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(tiny_dir, subfolder="tokenizer")
    auto_tokenizer = AutoTokenizer.from_pretrained(tiny_dir, subfolder="tokenizer")

    ids = _tokenize(tokenizer)
    assert ids.shape == (1, 77)
    assert torch.equal(_tokenize(auto_tokenizer), ids)
    assert ids[0, 0] == tokenizer.bos_token_id
    assert tokenizer.model_max_length == 77
    assert int(ids.max()) < text_encoder.config.vocab_size
    assert text_encoder.config.eos_token_id == tokenizer.eos_token_id

    # The VAE downsamples by 8 like SD's: 2 ** (len(block_out_channels) - 1).
    assert 2 ** (len(vae.config.block_out_channels) - 1) == 8
    with torch.no_grad():
        hidden = text_encoder(ids).last_hidden_state
        assert hidden.shape == (1, 77, 32)
        noise_pred = unet(torch.randn(2, 4, 8, 8), 10, encoder_hidden_states=hidden.expand(2, -1, -1)).sample
        assert noise_pred.shape == (2, 4, 8, 8)
        latents = vae.encode(torch.randn(1, 3, 64, 64)).latent_dist.sample()
        assert latents.shape == (1, 4, 8, 8)
        assert vae.decode(latents).sample.shape == (1, 3, 64, 64)


def test_schedulers_load_with_sd_v1_schedule(tiny_dir: Path) -> None:
    ddim = DDIMScheduler.from_pretrained(tiny_dir, subfolder="scheduler")
    ddpm = DDPMScheduler.from_pretrained(tiny_dir, subfolder="scheduler")
    for key, value in SD_V1_SCHEDULER.items():
        assert ddim.config[key] == value, key
    for key in ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps", "clip_sample", "prediction_type"):
        assert ddpm.config[key] == SD_V1_SCHEDULER[key], key
    saved = json.loads((tiny_dir / "scheduler/scheduler_config.json").read_text())
    assert saved["_class_name"] == "DDIMScheduler"


def test_pipeline_round_trip(tiny_dir: Path) -> None:
    pipe = StableDiffusionPipeline.from_pretrained(tiny_dir)
    assert pipe.safety_checker is None
    assert pipe.vae_scale_factor == 8


def test_seed_determinism_and_global_rng(tmp_path: Path, tiny_dir: Path) -> None:
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    same = save_random_base(tmp_path / "same", arch="tiny", seed=0)
    assert torch.equal(torch.get_rng_state(), before)
    other = save_random_base(tmp_path / "other", arch="tiny", seed=1)

    reference = load_file(tiny_dir / UNET_WEIGHTS)
    same_weights = load_file(same / UNET_WEIGHTS)
    other_weights = load_file(other / UNET_WEIGHTS)
    assert reference.keys() == same_weights.keys() == other_weights.keys()
    key = "conv_in.weight"
    assert torch.equal(reference[key], same_weights[key])
    assert not torch.equal(reference[key], other_weights[key])
    assert all(torch.equal(reference[k], same_weights[k]) for k in reference)
    text_a = load_file(tiny_dir / "text_encoder/model.safetensors")
    text_b = load_file(same / "text_encoder/model.safetensors")
    assert all(torch.equal(text_a[k], text_b[k]) for k in text_a)


def test_dtype_is_saved(tmp_path: Path) -> None:
    folder = save_random_base(tmp_path / "half", arch="tiny", dtype=torch.float16)
    for weights in (UNET_WEIGHTS, "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        assert {t.dtype for t in load_file(folder / weights).values()} == {torch.float16}, weights


def test_sd_v1_shapes_on_meta() -> None:
    # Building sd-v1 for real costs ~3.4 GB; the meta device checks the shapes.
    assert SD_V1_UNET["block_out_channels"] == (320, 640, 1280, 1280)
    assert SD_V1_UNET["cross_attention_dim"] == 768
    assert SD_V1_UNET["attention_head_dim"] == 8
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD_V1_UNET)
        vae = AutoencoderKL(**SD_V1_VAE)
        text_encoder = CLIPTextModel(CLIPTextConfig(**SD_V1_TEXT))
    assert _n_params(unet) == 859_520_964
    assert _n_params(vae) == 83_653_863
    assert _n_params(text_encoder) == 123_060_480
    assert 2 ** (len(vae.config.block_out_channels) - 1) == 8
