"""Regional torch.compile of the inflated UNet (`tav tune/edit/bench --compile`), on the CPU.

Dynamo traces the very graphs a GPU run compiles; the `aot_eager` backend runs them without generating
kernels (inductor's C++ build of even the tiny UNet takes minutes on a 2-core machine), so these tests check
what compiling must not change: the numbers, the gradients, and that a step compiles once, not every step.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel

from tavcli.engine.compiling import compile_regions
from tavcli.method.attention import inflate, video_forward
from tavcli.method.models import encode_frames, encode_prompts
from tavcli.method.pipeline import TuneAVideo, _alphas_cumprod
from tavcli.method.tuning import ClipLatents, TuneSettings, tune


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def _breaks() -> dict:
    from torch._dynamo.utils import counters

    return dict(counters["graph_break"])


def _regions(unet) -> int:
    return sum(isinstance(m, (Transformer2DModel, ResnetBlock2D)) for m in unet.modules())


@pytest.mark.parametrize("mode", ["sparse-causal", "first-frame", "full", "frame"])
def test_compiled_regions_compute_what_eager_computes(tiny_unet, mode):
    unet = inflate(tiny_unet(), attention=mode)
    for p in unet.parameters():  # the temporal output weight starts at zero: make the temporal path count
        p.data.add_(torch.randn_like(p) * 0.01)
    torch.manual_seed(0)
    x, text = torch.randn(2, 3, 4, 8, 8), torch.randn(2, 5, 32)
    with torch.no_grad():
        want = video_forward(unet, x, 10, text)
        assert compile_regions(unet, backend="aot_eager") == _regions(unet) > 0
        got = video_forward(unet, x, 10, text)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.equal(want, video_forward(inflate(tiny_unet(), attention=mode), x, 10, text).detach())
    assert _breaks() == {}  # whole regions, not fragments between graph breaks


@pytest.fixture
def clip(tiny_base):
    frames = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    mean, std = encode_frames(tiny_base, frames)
    return ClipLatents(mean, std, encode_prompts(tiny_base, ["a man is skiing"]))


def _tune(base, clip, steps: int, compiled: bool, graphs_after: list[int] | None = None) -> tuple[list[float], dict]:
    tav = TuneAVideo.create(base)
    if compiled:
        tav.compile(backend="aot_eager")
    grads: dict[str, torch.Tensor] = {}

    def keep_first(name: str):
        def hook(p: torch.Tensor) -> None:
            grads.setdefault(name, p.grad.detach().abs().sum())
        return hook

    for name, p in tav.unet.named_parameters():
        if p.requires_grad:
            p.register_post_accumulate_grad_hook(keep_first(name))
    callback = (lambda i, loss: graphs_after.append(_graphs())) if graphs_after is not None else None
    losses = tune(tav.unet, tav.params, clip, _alphas_cumprod(base.scheduler_config), TuneSettings(steps=steps),
                  callback=callback)
    return losses, grads


def test_compiled_tuning_trains_the_same_parameters_to_the_same_losses(tiny_base_dir, clip):
    from tavcli.method.models import load_base

    eager_losses, eager_grads = _tune(load_base(str(tiny_base_dir), device="cpu"), clip, 3, compiled=False)
    graphs: list[int] = []
    losses, grads = _tune(load_base(str(tiny_base_dir), device="cpu"), clip, 3, compiled=True, graphs_after=graphs)
    np.testing.assert_allclose(losses, eager_losses, rtol=1e-4)
    assert grads.keys() == eager_grads.keys() and len(grads) > 0  # every trainable tensor, compiled too
    for name, g in grads.items():  # the first step's gradients (q/k/v's are 0 there: attn_temp's output starts at 0)
        torch.testing.assert_close(g, eager_grads[name], rtol=1e-4, atol=1e-7, msg=name)
    assert sum(float(g) > 0 for g in grads.values()) > len(grads) / 2
    # The first step compiles every distinct block; later steps reuse them. (A per-frame-count cache in the
    # attention processor once made dynamo recompile at the second step: 32 s on an H200.)
    assert graphs[0] > 0 and graphs[1:] == [graphs[0]] * (len(graphs) - 1)
    assert _breaks() == {}


def test_compile_flag_reaches_tuning_and_editing(tmp_path, monkeypatch, tiny_base_dir):
    """`tav tune --compile` and `tav edit --compile`: regions compiled, the setting recorded, the cache in tav's."""
    from typer.testing import CliRunner

    import tavcli.engine.compiling
    from tavcli.faces.cli import app
    from tavcli.method.video import write_video

    calls = []
    real = tavcli.engine.compiling.compile_regions
    monkeypatch.setattr(tavcli.engine.compiling, "compile_regions",
                        lambda unet, **k: calls.append(k) or real(unet, **k | {"backend": "aot_eager"}))
    monkeypatch.setenv("TAV_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    video = write_video(tmp_path / "clip.mp4", np.random.default_rng(1).integers(0, 256, (4, 64, 64, 3), np.uint8))
    runner = CliRunner()
    r = runner.invoke(app, ["tune", str(video), "a noise square", "--base", str(tiny_base_dir), "--frames", "4",
                            "--size", "64", "--steps", "2", "--device", "cpu", "--compile", "--json", "-q"])
    assert r.exit_code == 0, r.output
    artifact = json.loads(r.stdout)
    assert len(calls) == 1
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cache" / "tav" / "inductor")
    r = runner.invoke(app, ["show", artifact["id"], "--json"])
    assert json.loads(r.stdout)["run"]["compile"] is True  # schema 2: how it ran, apart from the paper's settings
    r = runner.invoke(app, ["edit", artifact["id"], "a cat", "b dog", "--steps", "2", "--device", "cpu", "--compile",
                            "--out-dir", str(tmp_path / "out"), "-q"])
    assert r.exit_code == 0, r.output
    assert len(calls) == 2 and len(r.stdout.split()) == 2  # one compile serves both prompts
    edits = json.loads(runner.invoke(app, ["show", artifact["id"], "--json"]).stdout)["edits"]
    assert [e["compile"] for e in edits] == [True, True]
