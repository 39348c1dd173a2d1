"""Single-file SD1.x checkpoints (.safetensors / .ckpt in the original LDM layout) as base models.

The tiny random base is written out in the LDM/CompVis key layout by a converter written here (the inverse of
what diffusers does when loading), then loaded back through `load_base` and compared with the folder it came
from, tensor by tensor.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tavcli.errors import BadInput
from tavcli.method.models import base_identity, fingerprint, load_base, matches_identity, read_checkpoint, sha256_file

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # the config repo diffusers picks for an SD1.x checkpoint
UNSAFE_LOADS: list[str] = []  # filled if unpickling ever runs code from a .ckpt


class PickledTrap:
    """A non-tensor object in a .ckpt: unpickling it would run __setstate__ (arbitrary code, in general)."""

    def __setstate__(self, state):
        UNSAFE_LOADS.append("PickledTrap.__setstate__")


# ---- diffusers -> LDM layout, for SD-shaped UNets and VAEs of any width/depth ---------------------------------

_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
                "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _unet_prefixes(config: dict) -> dict[str, str]:
    per_down = config["layers_per_block"] + 1  # resnets (+ attentions) then a downsampler, one LDM block each
    m = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
         "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2.",
         "mid_block.resnets.0.": "middle_block.0.", "mid_block.attentions.0.": "middle_block.1.",
         "mid_block.resnets.1.": "middle_block.2."}
    for i, up_type in enumerate(config["up_block_types"]):
        for j in range(config["layers_per_block"]):
            m[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{i * per_down + j + 1}.0."
            m[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{i * per_down + j + 1}.1."
        m[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{(i + 1) * per_down}.0.op."
        for j in range(per_down):  # up blocks have one more layer
            m[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{i * per_down + j}.0."
            m[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{i * per_down + j}.1."
        # the upsampler follows the last layer's resnet (and its attention, in a cross-attention block)
        m[f"up_blocks.{i}.upsamplers.0."] = (f"output_blocks.{i * per_down + per_down - 1}."
                                             f"{2 if up_type.startswith('CrossAttn') else 1}.")
    return m


def _vae_prefixes(config: dict) -> dict[str, str]:
    n = len(config["block_out_channels"])
    m = {"encoder.conv_norm_out.": "encoder.norm_out.", "decoder.conv_norm_out.": "decoder.norm_out."}
    for part in ("encoder", "decoder"):
        m[f"{part}.conv_in."], m[f"{part}.conv_out."] = f"{part}.conv_in.", f"{part}.conv_out."
        m[f"{part}.mid_block.attentions.0."] = f"{part}.mid.attn_1."
        for j in range(2):
            m[f"{part}.mid_block.resnets.{j}."] = f"{part}.mid.block_{j + 1}."
    m["quant_conv."], m["post_quant_conv."] = "quant_conv.", "post_quant_conv."
    for i in range(n):
        for j in range(config["layers_per_block"]):
            m[f"encoder.down_blocks.{i}.resnets.{j}."] = f"encoder.down.{i}.block.{j}."
        m[f"encoder.down_blocks.{i}.downsamplers.0."] = f"encoder.down.{i}.downsample."
        for j in range(config["layers_per_block"] + 1):  # LDM numbers decoder levels from the bottom up
            m[f"decoder.up_blocks.{i}.resnets.{j}."] = f"decoder.up.{n - 1 - i}.block.{j}."
        m[f"decoder.up_blocks.{i}.upsamplers.0."] = f"decoder.up.{n - 1 - i}.upsample."
    return m


def _rename(key: str, prefixes: dict[str, str], inner: dict[str, str]) -> str:
    prefix = max((p for p in prefixes if key.startswith(p)), key=len)  # a KeyError-free max: every key must match
    rest = key[len(prefix):]
    for old, new in inner.items():
        if rest.startswith(old + "."):
            rest = new + rest[len(old):]
            break
    return prefixes[prefix] + rest


def unet_to_ldm(state: dict, config: dict) -> dict:
    prefixes = _unet_prefixes(config)
    out = {}
    for k, v in state.items():
        inner = _UNET_RESNET if ".resnets." in k else {}
        out["model.diffusion_model." + _rename(k, prefixes, inner)] = v
    return out


def vae_to_ldm(state: dict, config: dict) -> dict:
    prefixes = _vae_prefixes(config)
    out = {}
    for k, v in state.items():
        if ".attentions." in k:
            inner = _VAE_ATTENTION
            if k.endswith("weight") and v.ndim == 2:  # LDM's VAE attention uses 1x1 convolutions
                v = v[:, :, None, None]
        else:
            inner = _VAE_RESNET if ".resnets." in k else {}
        out["first_stage_model." + _rename(k, prefixes, inner)] = v
    return out


def text_encoder_to_ldm(state: dict) -> dict:
    out = {"cond_stage_model.transformer.text_model." + k.removeprefix("text_model."): v for k, v in state.items()}
    # real SD1.x files carry CLIP's position_ids buffer, which transformers no longer keeps in its state dict
    n = state[next(k for k in state if k.endswith("position_embedding.weight"))].shape[0]
    out["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(n)[None]
    return out


def folder_to_ldm(folder: Path) -> dict:
    """The LDM-layout state dict of a diffusers SD folder, with the extras a real training checkpoint has."""
    def part(name: str) -> tuple[dict, dict]:
        weights = next((folder / name).glob("*.safetensors"))
        return load_file(weights), json.loads((folder / name / "config.json").read_text())

    unet, unet_config = part("unet")
    vae, vae_config = part("vae")
    text, _ = part("text_encoder")
    ldm = {**unet_to_ldm(unet, unet_config), **vae_to_ldm(vae, vae_config), **text_encoder_to_ldm(text)}
    assert len(ldm) == len(unet) + len(vae) + len(text) + 1  # no two weights renamed onto one key
    ldm["betas"] = torch.linspace(0.00085, 0.012, 1000)  # the LDM wrapper's schedule buffers
    ldm["alphas_cumprod"] = torch.cumprod(1 - ldm["betas"], 0)
    return {k: v.contiguous() for k, v in ldm.items()}


# ---- fixtures -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ldm_state(tiny_base_dir) -> dict:
    return folder_to_ldm(tiny_base_dir)


@pytest.fixture(scope="module")
def single_file(tiny_base_dir, ldm_state, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("single") / "tiny-sd.safetensors"
    save_file(ldm_state, path)
    return path


@pytest.fixture(scope="module")
def folder_base(tiny_base_dir):
    return load_base(str(tiny_base_dir), device="cpu")


@pytest.fixture
def offline_cache(tmp_path, monkeypatch) -> Path:
    """An empty (or test-filled) HF cache, offline, so that nothing tries the network."""
    import huggingface_hub.constants as hf

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(cache))
    return cache


def assert_same_weights(a, b) -> None:
    for name in ("unet", "vae", "text_encoder"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert sa.keys() == sb.keys(), name
        for k in sa:
            assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), f"{name}: {k}"


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


# ---- loading --------------------------------------------------------------------------------------------------


def test_safetensors_file_loads_the_folders_weights_exactly(single_file, tiny_base_dir, folder_base):
    base = load_base(str(single_file), device="cpu", config=str(tiny_base_dir))
    assert_same_weights(base, folder_base)
    assert base.checkpoint == single_file and base.folder == tiny_base_dir and base.revision is None
    assert base.name == str(single_file) and base.config == str(tiny_base_dir.resolve())
    assert base.scheduler_config == folder_base.scheduler_config and base.vae_factor == 8
    assert base.tokenizer("a cat").input_ids == folder_base.tokenizer("a cat").input_ids
    for m in (base.unet, base.vae, base.text_encoder):
        assert not m.training and not any(p.requires_grad for p in m.parameters())
    gen = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 77, 32, generator=gen)
    with torch.no_grad():
        out = base.unet(x, 10, encoder_hidden_states=ctx).sample
        ref = folder_base.unet(x, 10, encoder_hidden_states=ctx).sample
    assert torch.equal(out, ref)


def test_ckpt_loads_the_same_with_a_pickle_warning(ldm_state, tiny_base_dir, folder_base, tmp_path):
    path = tmp_path / "tiny-sd.ckpt"
    torch.save({"state_dict": ldm_state, "global_step": 3, "epoch": 1}, path)  # Lightning's shape
    with pytest.warns(UserWarning, match=r"pickle.*safetensors"):
        base = load_base(str(path), device="cpu", config=str(tiny_base_dir))
    assert_same_weights(base, folder_base)
    assert base.checkpoint == path


def test_ckpt_with_a_python_object_is_refused_without_running_it(ldm_state, tiny_base_dir, tmp_path):
    path = tmp_path / "trap.ckpt"
    torch.save({"state_dict": ldm_state, "callbacks": PickledTrap()}, path)
    with pytest.warns(UserWarning), pytest.raises(BadInput) as e:
        load_base(str(path), device="cpu", config=str(tiny_base_dir))
    msg = one_line(e)
    assert str(path) in msg and ".safetensors" in msg
    assert UNSAFE_LOADS == []


def test_no_config_offline_says_to_pass_base_config(single_file, offline_cache):
    with pytest.raises(BadInput) as e:
        load_base(str(single_file), device="cpu")
    msg = one_line(e)
    assert "single-file checkpoint" in msg and "--base-config PATH" in msg and SD15 in msg
    assert "stable-diffusion-v1-5 folder" in msg and str(single_file) in msg


def test_no_config_uses_diffusers_sd1_config_repo_from_the_hf_cache(single_file, tiny_base_dir, folder_base,
                                                                     offline_cache):
    # a cache holding only the configs of the repo diffusers maps SD1.x checkpoints to (here: the tiny ones)
    commit = "0" * 40
    repo = offline_cache / ("models--" + SD15.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    for rel in ("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
                "scheduler/scheduler_config.json"):
        (snapshot / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tiny_base_dir / rel, snapshot / rel)
    shutil.copytree(tiny_base_dir / "tokenizer", snapshot / "tokenizer")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    base = load_base(str(single_file), device="cpu")
    assert base.config == SD15 and base.folder == snapshot
    assert_same_weights(base, folder_base)


@pytest.mark.parametrize("case, expected", [
    ("random keys", "not a Stable Diffusion 1.x checkpoint"),
    ("sdxl", "SDXL checkpoint"),
    ("no vae", "no VAE weights"),
    ("unet weight missing", "lacks 1 UNet weights"),
    ("garbage bytes", "not a readable .safetensors"),
    ("unknown suffix", "unknown type '.bin'"),
    ("missing file", "does not exist"),
])
def test_files_that_are_not_sd1_checkpoints_are_refused(case, expected, ldm_state, tiny_base_dir, tmp_path):
    path = tmp_path / "model.safetensors"
    if case == "random keys":
        save_file({"encoder.weight": torch.randn(4, 4), "head.bias": torch.randn(4)}, path)
    elif case == "sdxl":
        xl = {**ldm_state, "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias": torch.zeros(4)}
        save_file(xl, path)
    elif case == "no vae":
        save_file({k: v for k, v in ldm_state.items() if not k.startswith("first_stage_model.")}, path)
    elif case == "unet weight missing":
        save_file({k: v for k, v in ldm_state.items() if k != "model.diffusion_model.out.2.bias"}, path)
    elif case == "garbage bytes":
        path.write_bytes(b"not a safetensors file at all")
    elif case == "unknown suffix":
        path = tmp_path / "model.bin"
        path.write_bytes(b"x")
    with pytest.raises(BadInput) as e:
        load_base(str(path), device="cpu", config=str(tiny_base_dir))
    assert expected in one_line(e)


def test_a_config_of_another_architecture_is_refused(single_file, tiny_base_dir, tmp_path):
    # e.g. an SD1.x file with an SD2 folder as --base-config: the cross-attention widths disagree
    other = shutil.copytree(tiny_base_dir, tmp_path / "other", ignore=shutil.ignore_patterns("*.safetensors"))
    config = json.loads((other / "unet" / "config.json").read_text())
    config["cross_attention_dim"] = 64
    (other / "unet" / "config.json").write_text(json.dumps(config))
    with pytest.raises(BadInput) as e:
        load_base(str(single_file), device="cpu", config=str(other))
    assert "do not fit the SD1.x configuration" in one_line(e)
    with pytest.raises(BadInput) as e:
        load_base(str(single_file), device="cpu", config=str(tmp_path))  # not a diffusers folder at all
    assert "lacks unet/config.json" in one_line(e)


def test_config_and_revision_only_where_they_apply(single_file, tiny_base_dir):
    with pytest.raises(BadInput, match="only for single-file"):
        load_base(str(tiny_base_dir), device="cpu", config=str(tiny_base_dir))
    with pytest.raises(BadInput, match="revision applies to hub ids"):
        load_base(str(single_file), device="cpu", revision="main", config=str(tiny_base_dir))


def test_read_checkpoint_unwraps_lightning_state_dicts(ldm_state, tmp_path):
    path = tmp_path / "nested.ckpt"
    torch.save({"state_dict": {"state_dict": ldm_state}, "global_step": 3}, path)
    with pytest.warns(UserWarning, match="pickle"):
        state = read_checkpoint(path)
    assert state.keys() == ldm_state.keys()


# ---- identity -------------------------------------------------------------------------------------------------


def test_single_file_identity_is_the_whole_files_sha256(single_file, tiny_base_dir, tmp_path):
    base = load_base(str(single_file), device="cpu", config=str(tiny_base_dir))
    digest = hashlib.sha256(single_file.read_bytes()).hexdigest()
    assert sha256_file(single_file) == digest
    identity = base_identity(base)
    assert identity == {"name": str(single_file), "revision": None, "sha256": digest,
                        "config": str(tiny_base_dir.resolve())}
    assert base_identity(base, sha256="f" * 64)["sha256"] == "f" * 64  # a known hash is not recomputed
    assert matches_identity(base, identity)

    # one changed byte inside a tensor's data: still a loadable checkpoint, but other weights
    changed = tmp_path / "changed.safetensors"
    data = bytearray(single_file.read_bytes())
    data[-1] ^= 0x01
    changed.write_bytes(bytes(data))
    other = load_base(str(changed), device="cpu", config=str(tiny_base_dir))
    assert sha256_file(changed) != digest
    assert base_identity(other)["sha256"] == hashlib.sha256(bytes(data)).hexdigest()
    assert not matches_identity(other, identity)


def test_folder_identity_is_unchanged(folder_base, tiny_base_dir, single_file):
    identity = base_identity(folder_base)
    assert identity == {"name": str(tiny_base_dir), "revision": None, "fingerprint": fingerprint(tiny_base_dir)}
    assert matches_identity(folder_base, identity)
    single = base_identity(load_base(str(single_file), device="cpu", config=str(tiny_base_dir)))
    assert not matches_identity(folder_base, single)  # same weights, but recorded as another kind of base
