"""Official Tune-A-Video folders in and out, and an imported UNet against a functional UNet3D written here.

The reference below follows showlab/Tune-A-Video's tuneavideo/models/{unet,unet_blocks,attention,resnet}.py
with plain torch ops over the official state dict and (b, c, f, h, w) videos; it shares no code with
tavcli.method.attention.
"""

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from tavcli.app.official.layout import (
    official_keys,
    official_state,
    official_unet_config,
    read_official,
    to_adapter_state,
    write_official,
)
from tavcli.errors import BadInput
from tavcli.method.adapters import AdapterSpec, adapter_state, attach, load_adapter, save_adapter
from tavcli.method.attention import inflate, video_forward
from tavcli.method.models import load_base
from tests.conftest import TINY_UNET, make_tiny_unet

# unet/config.json as the official save_pretrained writes it for TINY_UNET: all of UNet3DConditionModel's
# init arguments, 3-D block names.
OFFICIAL_TINY_CONFIG = {
    "_class_name": "UNet3DConditionModel", "_diffusers_version": "0.11.1", "act_fn": "silu",
    "attention_head_dim": 8, "block_out_channels": [32, 64], "center_input_sample": False, "class_embed_type": None,
    "cross_attention_dim": 32, "down_block_types": ["CrossAttnDownBlock3D", "DownBlock3D"],
    "downsample_padding": 1, "dual_cross_attention": False, "flip_sin_to_cos": True, "freq_shift": 0,
    "in_channels": 4, "layers_per_block": 1, "mid_block_scale_factor": 1, "mid_block_type": "UNetMidBlock3DCrossAttn",
    "norm_eps": 1e-05, "norm_num_groups": 8, "num_class_embeds": None, "only_cross_attention": False,
    "out_channels": 4, "resnet_time_scale_shift": "default", "sample_size": 8,
    "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D"], "upcast_attention": False,
    "use_linear_projection": False,
}

# config.yaml as OmegaConf.save writes train_tuneavideo.py's arguments (abridged).
CONFIG_YAML = """\
pretrained_model_path: ./checkpoints/stable-diffusion-v1-4
output_dir: ./outputs/man-skiing
train_data:
  video_path: data/man-skiing.mp4
  prompt: a man is skiing
  n_sample_frames: 4
  width: 64
  height: 48
  sample_start_idx: 0
  sample_frame_rate: 2
validation_data:
  prompts:
  - mickey mouse is skiing on the snow
  num_inv_steps: 50
validation_steps: 100
trainable_modules:
- attn1.to_q
- attn2.to_q
- attn_temp
train_batch_size: 1
max_train_steps: 500
learning_rate: 3.0e-05
seed: 33
"""

TUNED = ("attn1.to_q.weight", "attn2.to_q.weight", "attn_temp.to_q.weight", "attn_temp.to_k.weight",
         "attn_temp.to_v.weight", "attn_temp.to_out.0.weight", "attn_temp.to_out.0.bias")
BLOCK = "down_blocks.0.attentions.0.transformer_blocks.0"


def official_state_from(unet, seed=1, dtype=torch.float32) -> dict:
    """A tuned official UNet3D state dict over `unet`'s frozen weights: random tuned and temporal tensors."""
    g = torch.Generator().manual_seed(seed)
    state = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    for key in state:
        if key.endswith(TUNED):
            state[key] = torch.randn(state[key].shape, generator=g) * 0.2
    return {k: v.to(dtype) for k, v in state.items()}


def write_official_folder(path, state, fmt="bin", inv_steps=(2, 10), frames=4):
    """An output_dir laid out as train_tuneavideo.py leaves it."""
    (path / "unet").mkdir(parents=True)
    (path / "unet" / "config.json").write_text(json.dumps(OFFICIAL_TINY_CONFIG, indent=2, sort_keys=True))
    if fmt == "bin":
        torch.save(state, path / "unet" / "diffusion_pytorch_model.bin")
    else:
        save_file(state, path / "unet" / "diffusion_pytorch_model.safetensors")
    (path / "config.yaml").write_text(CONFIG_YAML)
    (path / "inv_latents").mkdir()
    latents = {}
    for step in inv_steps:
        latents[step] = torch.randn(1, 4, frames, 6, 8).half()  # official (b, c, f, h, w), fp16
        torch.save(latents[step], path / "inv_latents" / f"ddim_latent-{step}.pt")
    (path / "samples").mkdir()
    return latents


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tiny_base_dir):
    """The tiny random base, its UNet swapped for conftest's (8 norm groups, random norms and biases)."""
    folder = tmp_path_factory.mktemp("official") / "base"
    folder.mkdir()
    for item in tiny_base_dir.iterdir():
        if item.name != "unet":
            (folder / item.name).symlink_to(item)
    make_tiny_unet(seed=5).save_pretrained(folder / "unet")
    return folder


class Evil:
    """A pickle that creates a file when unpickled: weights_only must refuse to build it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


# --- reading and importing --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_every_tuned_key_lands_and_nothing_is_left_over(tmp_path, dtype):
    unet = inflate(make_tiny_unet())
    state = official_state_from(unet, dtype=dtype)
    latents = write_official_folder(tmp_path / "run", state)
    assert f"{BLOCK}.attn_temp.to_q.weight" in state and f"{BLOCK}.norm_temp.weight" in state
    assert f"{BLOCK}.attn1.to_q.weight" in state

    run = read_official(tmp_path / "run")
    assert run.weights_file.name == "diffusion_pytorch_model.bin" and set(run.state) == set(state)
    tensors = to_adapter_state(run.state, unet, run.unet_config)
    assert set(tensors) == set(adapter_state(unet, AdapterSpec("full")))
    assert set(tensors) == {k for k in state if k.endswith(TUNED)}
    assert len(tensors) == 7 * 4  # four transformer blocks in the tiny UNet
    for key, value in tensors.items():
        assert value.dtype == torch.float32 and torch.equal(value, state[key].float()), key

    assert run.training.prompt == "a man is skiing" and run.training.video_path == "data/man-skiing.mp4"
    assert (run.training.n_sample_frames, run.training.width, run.training.height) == (4, 64, 48)
    assert run.training.learning_rate == pytest.approx(3e-5) and run.training.max_train_steps == 500
    # The newest inversion by step number (10, not "2" which sorts after "10"), in tav's (b, f, c, h, w).
    assert run.inv_latent_step == 10
    assert torch.equal(run.inv_latent, latents[10].float().permute(0, 2, 1, 3, 4))
    assert read_official(tmp_path / "run" / "unet").inv_latent_step == 10  # the unet/ folder works too


def test_unknown_key_is_refused(tmp_path):
    unet = inflate(make_tiny_unet())
    state = official_state_from(unet)
    state[f"{BLOCK}.attn_temp.to_q.bias"] = torch.zeros(32)
    with pytest.raises(BadInput, match=r"no place in tav's UNet \(e\.g\. .*attn_temp\.to_q\.bias\)"):
        to_adapter_state(state, unet)


def test_missing_key_is_refused(tmp_path):
    unet = inflate(make_tiny_unet())
    state = official_state_from(unet)
    del state["mid_block.attentions.0.transformer_blocks.0.attn_temp.to_v.weight"]
    with pytest.raises(BadInput, match=r"1 tensors .* missing .*mid_block\.attentions\.0\..*attn_temp\.to_v"):
        to_adapter_state(state, unet)


def test_changed_frozen_weight_or_other_shape_is_refused():
    unet = inflate(make_tiny_unet())
    state = official_state_from(unet)
    state["up_blocks.1.resnets.0.conv1.bias"] = state["up_blocks.1.resnets.0.conv1.bias"] + 1e-3
    with pytest.raises(BadInput, match=r"1 weights differ from the base \(e\.g\. up_blocks\.1\.resnets\.0"
                                            r"\.conv1\.bias\); pass the base model it was tuned from with --base"):
        to_adapter_state(state, unet)
    state = official_state_from(unet)
    state["conv_in.weight"] = torch.zeros(32, 4, 1, 1)
    with pytest.raises(BadInput, match=r"conv_in\.weight is \(32, 4, 1, 1\) .* \(32, 4, 3, 3\)"):
        to_adapter_state(state, unet)
    config = OFFICIAL_TINY_CONFIG | {"attention_head_dim": 4}  # same shapes, other heads
    with pytest.raises(BadInput, match="attention_head_dim=4"):
        to_adapter_state(official_state_from(unet), unet, config)


def test_tuned_norm_temp_is_refused():
    unet = inflate(make_tiny_unet())
    state = official_state_from(unet)
    state[f"{BLOCK}.norm_temp.bias"] = torch.full((32,), 0.1)
    with pytest.raises(BadInput, match="norm_temp.bias is not at its initial value 0.*tav neither tunes"):
        to_adapter_state(state, unet)


def test_a_bin_that_is_not_plain_tensors_is_refused_without_running_it(tmp_path):
    unet = inflate(make_tiny_unet())
    state = official_state_from(unet)
    write_official_folder(tmp_path / "run", state)
    marker = tmp_path / "pwned"
    torch.save({**state, "x": Evil(marker)}, tmp_path / "run" / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(BadInput, match=r"holds Python objects besides tensors, which tav will not unpickle .*"
                                       r"torch\.load\(weights_only=True\)") as e:
        read_official(tmp_path / "run")
    assert "weights_only=False" not in str(e.value)  # tav's words, not torch's advice to run the pickle
    assert not marker.exists()
    torch.save([1, 2], tmp_path / "run" / "unet" / "diffusion_pytorch_model.bin")  # loads, but is no state dict
    with pytest.raises(BadInput, match="holds a list, not a state dict"):
        read_official(tmp_path / "run")
    torch.save(Evil(marker), tmp_path / "run" / "inv_latents" / "ddim_latent-99.pt")
    torch.save(state, tmp_path / "run" / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(BadInput, match="ddim_latent-99.pt holds Python objects besides tensors"):
        read_official(tmp_path / "run")
    assert not marker.exists()


def test_safetensors_is_preferred_over_the_bin(tmp_path):
    unet = inflate(make_tiny_unet())
    state = official_state_from(unet)
    write_official_folder(tmp_path / "run", state, fmt="safetensors")
    marker = tmp_path / "pwned"
    torch.save({"x": Evil(marker)}, tmp_path / "run" / "unet" / "diffusion_pytorch_model.bin")
    run = read_official(tmp_path / "run")
    assert run.weights_file.name == "diffusion_pytorch_model.safetensors"
    assert all(torch.equal(run.state[k], v) for k, v in state.items())
    assert not marker.exists()


def test_folders_that_are_not_official_runs_are_refused(tmp_path):
    with pytest.raises(BadInput, match="does not exist"):
        read_official(tmp_path / "nothing")
    with pytest.raises(BadInput, match="has no unet/config.json"):
        read_official(tmp_path)
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    with pytest.raises(BadInput, match="UNet2DConditionModel config, not the official UNet3DConditionModel"):
        read_official(tmp_path)
    (tmp_path / "unet" / "config.json").write_text(json.dumps(OFFICIAL_TINY_CONFIG))
    with pytest.raises(BadInput, match="has neither diffusion_pytorch_model.safetensors nor"):
        read_official(tmp_path)


def test_official_layout_and_config_for_a_stock_unet():
    from diffusers import UNet2DConditionModel

    from tavcli.method.random_base import SD_V1_UNET

    unet = inflate(make_tiny_unet())
    assert official_keys(TINY_UNET) == set(unet.state_dict())
    assert official_unet_config(dict(unet.config)) == OFFICIAL_TINY_CONFIG
    with torch.device("meta"):  # the real SD v1.4 layout, without allocating it
        sd = UNet2DConditionModel(**SD_V1_UNET)
    inflate(sd)
    keys = official_keys(SD_V1_UNET)
    assert keys == set(sd.state_dict()) and len(keys) == 798
    assert "down_blocks.2.attentions.1.transformer_blocks.0.attn_temp.to_out.0.bias" in keys
    assert "down_blocks.3.downsamplers.0.conv.weight" not in keys and "up_blocks.3.upsamplers.0.conv.weight" not in keys
    with pytest.raises(BadInput, match="'AttnDownBlock2D' has no official 3-D counterpart"):
        official_unet_config(TINY_UNET | {"down_block_types": ("AttnDownBlock2D", "DownBlock2D")})
    with pytest.raises(BadInput, match="transformer_layers_per_block=2"):
        official_unet_config(TINY_UNET | {"transformer_layers_per_block": 2})


# --- the reference: the official UNet3D's forward, functionally -------------------------------------


class Tracked(dict):
    """A state dict that records which keys were read, so the reference proves it used every tensor."""

    def __init__(self, state):
        super().__init__(state)
        self.used = set()

    def __getitem__(self, key):
        self.used.add(key)
        return super().__getitem__(key)


def reference_unet3d(W, config, x, t, text, clip_norm=True, sparse_causal=True, temporal=True):
    """noise prediction (b, c, f, h, w) of the official UNet3DConditionModel for one timestep."""
    b, _, f, _, _ = x.shape
    groups, eps, heads = config["norm_num_groups"], config["norm_eps"], config["attention_head_dim"]
    channels, layers = config["block_out_channels"], config["layers_per_block"]

    def linear(p, h, bias=True):
        return F.linear(h, W[f"{p}.weight"], W[f"{p}.bias"] if bias else None)

    def conv(p, h, stride=1, padding=1):  # InflatedConv3d: a 2-D conv on every frame
        bb, c, ff, hh, ww = h.shape
        y = F.conv2d(h.transpose(1, 2).reshape(bb * ff, c, hh, ww), W[f"{p}.weight"], W[f"{p}.bias"],
                     stride=stride, padding=padding)
        return y.reshape(bb, ff, *y.shape[1:]).transpose(1, 2)

    def group_norm(p, h):  # nn.GroupNorm on the 5-D tensor: statistics over channels-in-group, f, h, w
        if clip_norm:
            return F.group_norm(h, groups, W[f"{p}.weight"], W[f"{p}.bias"], eps)
        bb, c, ff, hh, ww = h.shape
        y = F.group_norm(h.transpose(1, 2).reshape(bb * ff, c, hh, ww), groups, W[f"{p}.weight"], W[f"{p}.bias"], eps)
        return y.reshape(bb, ff, c, hh, ww).transpose(1, 2)

    def layer_norm(p, h):
        return F.layer_norm(h, h.shape[-1:], W[f"{p}.weight"], W[f"{p}.bias"], 1e-5)

    def attention(p, q_in, kv_in):  # CrossAttention: softmax(q k^T / sqrt(d)) v per head, then to_out.0
        q, k, v = linear(f"{p}.to_q", q_in, False), linear(f"{p}.to_k", kv_in, False), linear(f"{p}.to_v", kv_in, False)
        n, c = q.shape[0], q.shape[-1]
        d = c // heads
        q, k, v = (z.reshape(n, -1, heads, d).permute(0, 2, 1, 3) for z in (q, k, v))
        out = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1) @ v
        return linear(f"{p}.to_out.0", out.permute(0, 2, 1, 3).reshape(n, -1, c))

    def block(p, h, context):  # BasicTransformerBlock on (b f) tokens
        bf, n, c = h.shape
        normed = layer_norm(f"{p}.norm1", h)
        if sparse_causal:  # frame i: keys and values of frame 0, then of frame i-1 (frame 0 sees itself twice)
            frames = normed.reshape(b, f, n, c)
            kv = torch.stack([torch.cat([frames[:, 0], frames[:, max(i - 1, 0)]], dim=1) for i in range(f)], dim=1)
            kv = kv.reshape(bf, 2 * n, c)
        else:
            kv = normed
        h = attention(f"{p}.attn1", normed, kv) + h
        h = attention(f"{p}.attn2", layer_norm(f"{p}.norm2", h), context) + h
        hidden, gate = linear(f"{p}.ff.net.0.proj", layer_norm(f"{p}.norm3", h)).chunk(2, dim=-1)
        h = linear(f"{p}.ff.net.2", hidden * F.gelu(gate)) + h
        if temporal:  # "(b f) d c -> (b d) f c", attention over frames, residual, and back
            ht = h.reshape(b, f, n, c).permute(0, 2, 1, 3).reshape(b * n, f, c)
            normed_t = layer_norm(f"{p}.norm_temp", ht)
            ht = attention(f"{p}.attn_temp", normed_t, normed_t) + ht
            h = ht.reshape(b, n, f, c).permute(0, 2, 1, 3).reshape(bf, n, c)
        return h

    def transformer(p, h):  # Transformer3DModel: per-frame GroupNorm (eps 1e-6) and 1x1 proj_in/out
        bb, c, ff, hh, ww = h.shape
        frames = h.transpose(1, 2).reshape(bb * ff, c, hh, ww)
        y = F.group_norm(frames, groups, W[f"{p}.norm.weight"], W[f"{p}.norm.bias"], 1e-6)
        y = F.conv2d(y, W[f"{p}.proj_in.weight"], W[f"{p}.proj_in.bias"])
        inner = y.shape[1]
        y = y.permute(0, 2, 3, 1).reshape(bb * ff, hh * ww, inner)
        y = block(f"{p}.transformer_blocks.0", y, text.repeat_interleave(ff, dim=0))
        y = y.reshape(bb * ff, hh, ww, inner).permute(0, 3, 1, 2)
        y = F.conv2d(y, W[f"{p}.proj_out.weight"], W[f"{p}.proj_out.bias"]) + frames
        return y.reshape(bb, ff, c, hh, ww).transpose(1, 2)

    # time: sinusoidal embedding (flip_sin_to_cos, freq_shift 0), then linear_1 -> SiLU -> linear_2
    half = channels[0] // 2
    angles = torch.tensor([float(t)] * b)[:, None] * torch.exp(-math.log(10000) * torch.arange(half) / half)[None]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    emb = linear("time_embedding.linear_2", F.silu(linear("time_embedding.linear_1", emb)))

    def resnet(p, h):  # ResnetBlock3D
        y = conv(f"{p}.conv1", F.silu(group_norm(f"{p}.norm1", h)))
        y = y + linear(f"{p}.time_emb_proj", F.silu(emb))[:, :, None, None, None]
        y = conv(f"{p}.conv2", F.silu(group_norm(f"{p}.norm2", y)))
        if f"{p}.conv_shortcut.weight" in W:
            h = conv(f"{p}.conv_shortcut", h, padding=0)
        return h + y

    h = conv("conv_in", x)
    skips = [h]
    for i, kind in enumerate(config["down_block_types"]):
        for j in range(layers):
            h = resnet(f"down_blocks.{i}.resnets.{j}", h)
            if kind.startswith("CrossAttn"):
                h = transformer(f"down_blocks.{i}.attentions.{j}", h)
            skips.append(h)
        if i < len(channels) - 1:
            h = conv(f"down_blocks.{i}.downsamplers.0.conv", h, stride=2)
            skips.append(h)
    h = resnet("mid_block.resnets.0", h)
    h = transformer("mid_block.attentions.0", h)
    h = resnet("mid_block.resnets.1", h)
    for i, kind in enumerate(config["up_block_types"]):
        for j in range(layers + 1):
            h = resnet(f"up_blocks.{i}.resnets.{j}", torch.cat([h, skips.pop()], dim=1))
            if kind.startswith("CrossAttn"):
                h = transformer(f"up_blocks.{i}.attentions.{j}", h)
        if i < len(channels) - 1:
            h = conv(f"up_blocks.{i}.upsamplers.0.conv", F.interpolate(h, scale_factor=(1, 2, 2), mode="nearest"))
    assert not skips
    return conv("conv_out", F.silu(group_norm("conv_norm_out", h)))


def test_imported_model_computes_what_the_official_unet3d_computes(base_dir, tmp_path):
    base = load_base(str(base_dir), device="cpu")  # random norms and biases: a dropped affine or bias shows
    unet = inflate(base.unet)
    state = official_state_from(unet, seed=3)
    assert state[f"{BLOCK}.attn_temp.to_out.0.weight"].abs().min() > 0  # the temporal path contributes
    write_official_folder(tmp_path / "run", state)
    run = read_official(tmp_path / "run")
    save_adapter(unet, AdapterSpec("full"), tmp_path / "adapter", dtype=torch.float32,
                 state=to_adapter_state(run.state, unet, run.unet_config))
    load_adapter(unet, tmp_path / "adapter")

    g = torch.Generator().manual_seed(4)
    x, text = torch.randn(1, 4, 4, 8, 8, generator=g), torch.randn(1, 77, 32, generator=g)
    with torch.no_grad():
        got = video_forward(unet, x, 321, text)  # tav: (b, f, c, h, w)
        weights = Tracked(run.state)
        want = reference_unet3d(weights, run.unet_config, x.permute(0, 2, 1, 3, 4), 321, text).permute(0, 2, 1, 3, 4)
        per_frame_norm = reference_unet3d(run.state, run.unet_config, x.permute(0, 2, 1, 3, 4), 321, text,
                                          clip_norm=False).permute(0, 2, 1, 3, 4)
        no_temporal = reference_unet3d(run.state, run.unet_config, x.permute(0, 2, 1, 3, 4), 321, text,
                                       temporal=False).permute(0, 2, 1, 3, 4)
        own_frame = reference_unet3d(run.state, run.unet_config, x.permute(0, 2, 1, 3, 4), 321, text,
                                     sparse_causal=False).permute(0, 2, 1, 3, 4)
    assert weights.used == set(run.state)  # every official tensor has a part in the forward
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    scale = want.abs().max()
    for variant in (per_frame_norm, no_temporal, own_frame):  # the reference notices each of the paper's parts
        assert (variant - want).abs().max() > 1e-2 * scale


# --- export -----------------------------------------------------------------------------------------


def tuned_unet(base_dir, spec=AdapterSpec("full"), seed=7):
    base = load_base(str(base_dir), device="cpu")
    unet = inflate(base.unet, seed=spec.temporal_seed)
    g = torch.Generator().manual_seed(seed)
    for p in attach(unet, spec):
        p.data.copy_(torch.randn(p.shape, generator=g) * 0.1)
    unet.requires_grad_(False)
    return base, unet


def test_export_then_import_gives_the_same_tensors_bit_for_bit(base_dir, tmp_path):
    base, unet = tuned_unet(base_dir)
    latent = torch.randn(1, 3, 4, 8, 8)
    out = write_official(tmp_path / "out", official_state(unet), dict(unet.config), base.folder,
                         inv_latent=latent, inv_step=300)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left beside it
    assert {p.name for p in out.iterdir()} == {"unet", "vae", "text_encoder", "tokenizer", "scheduler",
                                              "model_index.json", "inv_latents"}
    for component in ("vae", "text_encoder", "tokenizer", "scheduler"):
        assert {p.name for p in (out / component).iterdir()} == {p.name for p in (base_dir / component).iterdir()}
    assert {p.name for p in (out / "unet").iterdir()} == {"config.json", "diffusion_pytorch_model.bin"}
    config = json.loads((out / "unet" / "config.json").read_text())
    assert config == OFFICIAL_TINY_CONFIG
    index = json.loads((out / "model_index.json").read_text())
    assert index == {"_class_name": "TuneAVideoPipeline", "_diffusers_version": "0.11.1",
                     "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
                     "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["models", "UNet3DConditionModel"],
                     "vae": ["diffusers", "AutoencoderKL"]}
    # The .bin is a plain dict of tensors, as diffusers 0.11.1's torch.load reads it.
    raw = torch.load(out / "unet" / "diffusion_pytorch_model.bin", weights_only=True)
    assert type(raw) is dict and all(v.dtype == torch.float32 for v in raw.values())
    assert torch.equal(torch.load(out / "inv_latents" / "ddim_latent-300.pt", weights_only=True),
                       latent.permute(0, 2, 1, 3, 4))

    run = read_official(out)
    assert run.inv_latent_step == 300 and torch.equal(run.inv_latent, latent) and run.training is None
    fresh = inflate(load_base(str(base_dir), device="cpu").unet, seed=11)  # other temporal init
    tensors = to_adapter_state(run.state, fresh, run.unet_config)
    want = adapter_state(unet, AdapterSpec("full"))
    assert set(tensors) == set(want)
    for key, value in want.items():
        assert torch.equal(tensors[key], value), key


def test_a_lora_adapter_is_exported_merged(base_dir, tmp_path):
    base, unet = tuned_unet(base_dir, AdapterSpec("lora", rank=2, temporal_seed=3))
    state = official_state(unet)
    assert not any("lora_" in k or "base_layer" in k for k in state)
    fresh = inflate(load_base(str(base_dir), device="cpu").unet)
    save_adapter(fresh, AdapterSpec("full"), tmp_path / "a", dtype=torch.float32, state=to_adapter_state(state, fresh))
    load_adapter(fresh, tmp_path / "a")
    g = torch.Generator().manual_seed(2)
    x, text = torch.randn(1, 3, 4, 8, 8, generator=g), torch.randn(1, 77, 32, generator=g)
    with torch.no_grad():
        want, got = video_forward(unet, x, 500, text), video_forward(fresh, x, 500, text)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    untuned = inflate(load_base(str(base_dir), device="cpu").unet, seed=3)
    with torch.no_grad():
        assert (video_forward(untuned, x, 500, text) - want).abs().max() > 1e-3  # the LoRA is in the export


def test_export_refuses_a_non_empty_target_and_leaves_nothing_on_failure(base_dir, tmp_path):
    base, unet = tuned_unet(base_dir)
    state = official_state(unet)
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(BadInput, match="already exists and is not empty"):
        write_official(target, state, dict(unet.config), base.folder)
    assert [p.name for p in target.iterdir()] == ["keep.txt"] and (target / "keep.txt").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["out"]

    bad_base = tmp_path / "bad-base"
    bad_base.mkdir()
    for component in ("text_encoder", "tokenizer", "scheduler"):
        (bad_base / component).symlink_to(base_dir / component)
    (bad_base / "vae").mkdir()
    (bad_base / "vae" / "weights.bin").symlink_to(tmp_path / "missing")  # copying it fails midway
    with pytest.raises(OSError):
        write_official(tmp_path / "new", state, dict(unet.config), bad_base)
    assert not (tmp_path / "new").exists()
    assert sorted(os.listdir(tmp_path)) == ["bad-base", "out"]  # no partial folder left

    with pytest.raises(BadInput, match="lacks vae/"):
        write_official(tmp_path / "new", state, dict(unet.config), tmp_path / "out")
    del state["conv_in.bias"]
    with pytest.raises(BadInput, match=r"1 keys off the official layout \(e\.g\. conv_in\.bias\)"):
        write_official(tmp_path / "new", state, dict(unet.config), base.folder)
    assert not (tmp_path / "new").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_official(empty, official_state(unet), dict(unet.config), base.folder) == empty
    assert (empty / "unet" / "diffusion_pytorch_model.bin").is_file()
