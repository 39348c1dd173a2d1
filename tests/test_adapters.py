import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tavcli.errors import BadInput, Corrupt
from tavcli.method import adapters
from tavcli.method.adapters import CONFIG_NAME, WEIGHTS_NAME, AdapterSpec, load_adapter, read_spec
from tavcli.method.attention import inflate, video_forward
from tavcli.method.models import load_base
from tavcli.method.pipeline import TuneAVideo
from tavcli.method.tuning import TuneSettings


def frames(n=4, size=64, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def probe(unet) -> torch.Tensor:
    g = torch.Generator().manual_seed(9)
    x, text = torch.randn(1, 3, 4, 8, 8, generator=g), torch.randn(1, 77, 32, generator=g)
    with torch.no_grad():
        return video_forward(unet, x, 321, text)


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_save_then_load_reproduces_the_tuned_unet_bit_for_bit(tiny_base_dir, tmp_path, kind):
    tuned = TuneAVideo.create(load_base(str(tiny_base_dir), device="cpu"), AdapterSpec(kind, rank=4, temporal_seed=3))
    tuned.tune(frames(), "a man is skiing", TuneSettings(steps=3, lr=1e-2))
    want = probe(tuned.unet)
    tuned.save_adapter(tmp_path / "a", dtype=torch.float32)

    fresh = TuneAVideo.from_adapter(load_base(str(tiny_base_dir), device="cpu"), tmp_path / "a")
    assert torch.equal(probe(fresh.unet), want)
    untuned = TuneAVideo.create(load_base(str(tiny_base_dir), device="cpu"), AdapterSpec(kind, rank=4, temporal_seed=3))
    assert (probe(untuned.unet) - want).abs().max() > 1e-4  # the adapter carries the tuning


def test_full_adapter_holds_only_the_tuned_tensors_in_fp16(tiny_base, tmp_path):
    tuned = TuneAVideo.create(tiny_base)
    tuned.save_adapter(tmp_path / "a")
    tensors = load_file(tmp_path / "a" / WEIGHTS_NAME)
    assert set(tensors) == {n for n, p in tuned.unet.named_parameters() if p.requires_grad}
    assert all(t.dtype == torch.float16 for t in tensors.values())
    numbers = sum(t.numel() for t in tensors.values())
    assert numbers == sum(p.numel() for p in tuned.params)
    size = (tmp_path / "a" / WEIGHTS_NAME).stat().st_size
    assert 2 * numbers < size < 2 * numbers + 16_000  # fp16 payload plus the safetensors header
    assert read_spec(tmp_path / "a") == AdapterSpec("full")


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_the_same_adapter_is_always_the_same_bytes(tiny_base, tmp_path, kind):
    """safetensors writes its metadata from a hash map, in a new order each time; tav sorts it."""
    tuned = TuneAVideo.create(tiny_base, AdapterSpec(kind))
    files = [tuned.save_adapter(tmp_path / str(i)) / WEIGHTS_NAME for i in range(6)]
    assert len({f.read_bytes() for f in files}) == 1
    data = files[0].read_bytes()
    metadata = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])["__metadata__"]  # in the file's order
    assert list(metadata) == sorted(metadata) and len(metadata) > 3
    assert read_spec(files[0].parent) == AdapterSpec(kind)  # still a file safetensors and tav read


def test_lora_adapter_is_a_peft_lora_without_the_frozen_temporal_weights(tiny_base, tmp_path):
    from peft import LoraConfig

    tuned = TuneAVideo.create(tiny_base, AdapterSpec("lora", rank=2))
    tuned.save_adapter(tmp_path / "a")
    config = LoraConfig.from_pretrained(tmp_path / "a")
    assert config.r == 2 and config.bias == "lora_only"
    keys = set(load_file(tmp_path / "a" / WEIGHTS_NAME))
    assert all("lora_" in k or k.endswith("attn_temp.to_out.0.base_layer.bias") for k in keys), keys
    assert sum(k.endswith("to_out.0.base_layer.bias") for k in keys) == 4  # the trained temporal output biases
    assert sum("attn1.to_q.lora_A" in k for k in keys) == 4


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_adapter_for_another_model_is_refused(tiny_base, tmp_path, kind):
    from diffusers import UNet2DConditionModel

    from tests.conftest import TINY_UNET

    TuneAVideo.create(tiny_base, AdapterSpec(kind, rank=2)).save_adapter(tmp_path / "a")
    wider = inflate(UNet2DConditionModel(**(TINY_UNET | {"block_out_channels": (64, 64)})))
    with pytest.raises(Corrupt, match="does not fit this UNet"):
        load_adapter(wider, tmp_path / "a")
    with pytest.raises(Corrupt, match="does not fit this UNet"):
        load_adapter(inflate(UNet2DConditionModel(**TINY_UNET), temporal=False), tmp_path / "a")


def test_malformed_adapter_folders_give_adapter_errors(tmp_path, tiny_unet):
    from safetensors.torch import save_file

    unet = inflate(tiny_unet())
    with pytest.raises(Corrupt, match="no adapter_config.json"):
        load_adapter(unet, tmp_path)
    (tmp_path / CONFIG_NAME).write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(Corrupt, match="no adapter_model.safetensors"):
        load_adapter(unet, tmp_path)
    (tmp_path / WEIGHTS_NAME).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(Corrupt, match="not a readable safetensors"):
        load_adapter(unet, tmp_path)
    save_file({"x": torch.zeros(1)}, tmp_path / WEIGHTS_NAME)  # a PEFT file, but not one of tav's
    with pytest.raises(Corrupt, match="not a tav adapter"):
        load_adapter(unet, tmp_path)
    with pytest.raises(BadInput, match="adapter 'dora' is not known"):  # bad input, not a damaged file
        AdapterSpec("dora")


def test_the_spec_round_trips_with_the_adapter_norm_and_attention_included(tiny_base, tiny_base_dir, tmp_path):
    """An adapter tuned with per-frame GroupNorm and full attention reloads as tuned and renders the same
    frames (tav 0.1 recorded no norm: such an adapter reloaded with clip GroupNorm, silently)."""
    from tavcli.method.params import EditSettings

    spec = AdapterSpec("full", temporal_seed=3, attention="full", norm="frame")
    tav = TuneAVideo.create(tiny_base, spec)
    clip = frames(3)
    tav.tune(clip, "a clip", TuneSettings(steps=2, lr=1e-3))
    tav.save_adapter(tmp_path / "adapter", dtype=torch.float32)  # exact, to compare frames
    assert read_spec(tmp_path / "adapter") == spec
    settings = EditSettings(steps=2, inversion=False, seed=4)
    want = tav.generate(["a"], settings, frames=3, height=64, width=64)
    again = TuneAVideo.from_adapter(load_base(str(tiny_base_dir), device="cpu"), tmp_path / "adapter")
    assert again.spec == spec
    assert np.array_equal(again.generate(["a"], settings, frames=3, height=64, width=64), want)
    clip_norm = TuneAVideo.create(load_base(str(tiny_base_dir), device="cpu"), spec.replace(norm="clip"))
    adapters.load_adapter(clip_norm.unet, tmp_path / "adapter")
    assert not np.array_equal(clip_norm.generate(["a"], settings, frames=3, height=64, width=64), want)


def test_generate_shapes_and_seeds(tiny_base):
    from tavcli.method.params import EditSettings

    tav = TuneAVideo.create(tiny_base)
    clip = frames(3)
    noise = tav.invert(clip, steps=4)
    assert noise.shape == (1, 3, 4, 8, 8)
    fast = EditSettings(steps=3, guidance=5.0)
    videos = tav.generate(["a", "an astronaut"], fast, noise=noise)
    assert videos.shape == (2, 3, 64, 64, 3) and videos.dtype == np.uint8
    assert not np.array_equal(videos[0], videos[1])  # the prompt matters
    again = tav.generate(["a"], fast, noise=noise)
    assert np.array_equal(again[0], videos[0])  # DDIM from an inversion is deterministic
    a = tav.generate(["a"], EditSettings(steps=3, inversion=False, seed=1), frames=2, height=32, width=48)
    b = tav.generate(["a"], EditSettings(steps=3, inversion=False, seed=2), frames=2, height=32, width=48)
    assert a.shape == (1, 2, 32, 48, 3) and not np.array_equal(a, b)
