import shutil

import numpy as np
import pytest
import torch

from tavcli.errors import BadInput
from tavcli.method.models import (
    decode_latents,
    encode_frames,
    encode_prompts,
    fingerprint,
    load_base,
    locate_base,
    resolve_device,
    resolve_dtype,
)


def test_local_folder_loads_frozen_fp32_on_cpu(tiny_base):
    assert tiny_base.device.type == "cpu" and tiny_base.dtype == torch.float32
    for m in (tiny_base.unet, tiny_base.vae, tiny_base.text_encoder):
        assert not any(p.requires_grad for p in m.parameters())
        assert next(m.parameters()).dtype == torch.float32
    assert tiny_base.vae_factor == 8 and tiny_base.revision is None


def test_latents_are_4_by_h8_by_w8_and_scaled(tiny_base):
    frames = np.random.default_rng(0).integers(0, 256, (3, 64, 48, 3), dtype=np.uint8)
    mean, std = encode_frames(tiny_base, frames)
    assert mean.shape == std.shape == (1, 3, 4, 8, 6)
    x = torch.from_numpy(frames[:1]).permute(0, 3, 1, 2).float() / 127.5 - 1
    raw = tiny_base.vae.encode(x).latent_dist.mean
    torch.testing.assert_close(mean[0, :1], raw * 0.18215)
    video = decode_latents(tiny_base, mean)
    assert video.shape == (1, 3, 64, 48, 3) and video.dtype == np.uint8
    assert encode_prompts(tiny_base, ["a", "b c"]).shape == (2, 77, 32)


def test_folder_errors_are_clear(tmp_path, tiny_base_dir):
    with pytest.raises(BadInput, match="missing .*unet"):
        locate_base(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(BadInput, match="single file"):
        locate_base(str(tmp_path / "model.safetensors"))
    with pytest.raises(BadInput, match="neither a folder nor a hub id"):
        locate_base("no-such-folder")


def test_hub_id_offline_with_an_empty_cache_says_how_to_get_the_weights(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(BadInput) as e:
        load_base("CompVis/stable-diffusion-v1-4", device="cpu")
    msg = str(e.value)
    assert "HF_HUB_OFFLINE" in msg and "hf download CompVis/stable-diffusion-v1-4" in msg and "--base" in msg


def test_dtypes_and_devices():
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int8", cpu)
    assert resolve_device("cpu") == cpu
    if not torch.cuda.is_available():
        assert resolve_device("auto") == cpu
        with pytest.raises(BadInput, match="no CUDA GPU"):
            resolve_device("cuda")


def test_fingerprint_follows_the_weights_not_the_folder(tmp_path, tiny_base_dir):
    copy = shutil.copytree(tiny_base_dir, tmp_path / "copy")
    assert fingerprint(str(copy)) == fingerprint(str(tiny_base_dir))
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert fingerprint(str(copy)) != fingerprint(str(tiny_base_dir))


def test_fingerprint_ignores_what_a_library_stamps_into_a_config_but_not_a_setting(tmp_path, tiny_base_dir):
    import json

    from tavcli.method.models import fingerprint_matches

    copy = shutil.copytree(tiny_base_dir, tmp_path / "resaved")
    config = copy / "text_encoder" / "config.json"
    before = config.read_text()
    settings = json.loads(before) | {"transformers_version": "0.0.1", "_name_or_path": "/elsewhere"}
    config.write_text(json.dumps(settings, indent=4))  # re-saved by another version, laid out another way
    unet = copy / "unet" / "config.json"
    unet.write_text(unet.read_text().replace('"_diffusers_version": "', '"_diffusers_version": "9'))
    assert fingerprint(copy) == fingerprint(tiny_base_dir)
    assert fingerprint_matches(copy, fingerprint(tiny_base_dir))

    config.write_text(json.dumps(settings | {"layer_norm_eps": 1e-6}))  # a setting is the model
    assert fingerprint(copy) != fingerprint(tiny_base_dir)
    assert not fingerprint_matches(copy, fingerprint(tiny_base_dir)) and not fingerprint_matches(copy, None)


def test_a_fingerprint_recorded_before_the_stamps_were_ignored_still_matches_its_folder(tmp_path, tiny_base_dir):
    import hashlib

    from tavcli.method.models import fingerprint_matches

    h = hashlib.sha256()  # as tav recorded it until 2026-12-04: every file's bytes, configs' stamps included
    for path in sorted(p for c in ("unet", "vae", "text_encoder") for p in (tiny_base_dir / c).iterdir()):
        data = path.read_bytes()
        h.update(f"{path.parent.name}/{path.name}:{len(data)}\n".encode() + data[:1 << 20] + data[-(1 << 20):])
    legacy = h.hexdigest()
    assert legacy != fingerprint(tiny_base_dir)  # a stamp-free fingerprint is another hash
    assert fingerprint_matches(tiny_base_dir, legacy)
    config = tiny_base_dir / "text_encoder" / "config.json"
    copy = shutil.copytree(tiny_base_dir, tmp_path / "other-stamp")
    stamped = copy / "text_encoder" / "config.json"
    stamped.write_text(config.read_text().replace('"transformers_version": "', '"transformers_version": "1'))
    assert not fingerprint_matches(copy, legacy)  # the old scheme saw the stamp (so its record tells)


def test_a_hub_base_in_the_cache_loads_without_asking_the_network(tmp_path, tiny_base_dir):
    """No hub is reachable here, and a base in the HF cache still loads, at once (huggingface_hub's
    snapshot_download falls back to its cache when the hub cannot be reached: 0.15 s on 2026-12-04)."""
    import os
    import time

    from tests.conftest import hub_cache_with, run_python

    snapshot = hub_cache_with(tiny_base_dir, "tav-test/tiny-sd", tmp_path / "hub")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_HOME")}
    env["HF_HUB_CACHE"] = str(tmp_path / "hub")
    code = ("from tavcli.method.models import load_base, locate_base\n"
            "print(locate_base('tav-test/tiny-sd')[0])\n"
            "print(type(load_base('tav-test/tiny-sd', device='cpu').unet).__name__)\n")
    started = time.perf_counter()
    done = run_python(code, env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [str(snapshot), "UNet2DConditionModel"]
    assert time.perf_counter() - started < 30, "the network was waited for"
