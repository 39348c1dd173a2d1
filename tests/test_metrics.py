"""CLIP score and frame consistency, checked against an independent computation on a tiny random CLIP.

The reference preprocesses frames by hand (PIL bicubic resize of the shortest side, centre crop, CLIP mean/std),
runs the vision/text towers and projections directly, and applies the formulas with explicit Python loops over
frames and pairs, in float64 from the unnormalised features. Nothing in it goes through tavcli.method.metrics.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tavcli.errors import BadInput
from tavcli.method.metrics import DEFAULT_CLIP, Scorer

SIZE = 32  # the tiny CLIP's input resolution (shortest_edge and crop)
MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's, written out so the reference does not read them back
STD = (0.26862954, 0.26130258, 0.27577711)
TOL = 1e-4  # on 100 x cos; measured differences are ~1e-5 (fp32 vs float64 pixel arithmetic)


def _image_processor(**kwargs):
    import transformers

    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    return cls(**kwargs)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    """A tiny random CLIP folder (model, tokenizer, image processor) written with save_pretrained."""
    from tavcli.method.random_base import save_random_clip

    return save_random_clip(tmp_path_factory.mktemp("clip") / "tiny-clip", image_size=SIZE)


@pytest.fixture(scope="module")
def scorer(clip_dir) -> Scorer:
    return Scorer.load(str(clip_dir))


@pytest.fixture(scope="module")
def model(scorer):
    return scorer.model


# --- the independent reference ---------------------------------------------------------------------------------


def _preprocess(frame: np.ndarray) -> np.ndarray:
    """CHW float32: bicubic-resize the shortest side to SIZE, centre crop SIZE x SIZE, /255, CLIP mean/std."""
    h, w = frame.shape[:2]
    if h <= w:
        new_h, new_w = SIZE, int(SIZE * w / h)
    else:
        new_h, new_w = int(SIZE * h / w), SIZE
    image = np.asarray(Image.fromarray(frame).resize((new_w, new_h), Image.BICUBIC))
    top, left = (new_h - SIZE) // 2, (new_w - SIZE) // 2
    image = image[top:top + SIZE, left:left + SIZE].astype(np.float64) / 255.0
    image = (image - np.array(MEAN)) / np.array(STD)
    return image.transpose(2, 0, 1).astype(np.float32)


@torch.no_grad()
def _ref_image_features(model, frames: np.ndarray) -> list[np.ndarray]:
    out = []
    for frame in frames:
        pixels = torch.from_numpy(_preprocess(frame))[None]
        pooled = model.vision_model(pixel_values=pixels).pooler_output
        out.append(model.visual_projection(pooled)[0].double().numpy())
    return out


@torch.no_grad()
def _ref_text_features(model, tokenizer, prompt: str) -> np.ndarray:
    ids = tokenizer(prompt, padding="max_length", max_length=77, truncation=True).input_ids
    pooled = model.text_model(input_ids=torch.tensor([ids])).pooler_output
    return model.text_projection(pooled)[0].double().numpy()


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def _ref_clip_score(images: list[np.ndarray], text: np.ndarray) -> float:
    return 100.0 * sum(_cos(image, text) for image in images) / len(images)


def _ref_consistency(images: list[np.ndarray]) -> float:
    sims = [_cos(images[i], images[j]) for i in range(len(images)) for j in range(i + 1, len(images))]
    return 100.0 * sum(sims) / len(sims)


def _frames(count: int, h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, h, w, 3), dtype=np.uint8)


# --- agreement with the reference ------------------------------------------------------------------------------


@pytest.mark.parametrize("h, w", [(SIZE, SIZE), (48, 64), (70, 40)])
def test_metrics_match_reference(scorer, model, h, w):
    """32x32 makes resize and crop the identity; 48x64 and 70x40 exercise resize + crop on both orientations."""
    frames = _frames(5, h, w, seed=h * w)
    prompt = "a man is surfing on the moon"
    images = _ref_image_features(model, frames)
    text = _ref_text_features(model, scorer.tokenizer, prompt)

    assert scorer.clip_score(frames, prompt) == pytest.approx(_ref_clip_score(images, text), abs=TOL)
    assert scorer.frame_consistency(frames) == pytest.approx(_ref_consistency(images), abs=TOL)


def test_embeddings_match_reference(scorer, model):
    frames = _frames(3, 48, 64, seed=1)
    got = scorer.image_embeddings(frames)
    assert got.shape == (3, 16) and got.dtype == torch.float32
    assert torch.allclose(got.norm(dim=-1), torch.ones(3), atol=1e-5)
    want = np.stack([f / np.linalg.norm(f) for f in _ref_image_features(model, frames)])
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)

    text = scorer.text_embedding("a cat")
    assert text.shape == (16,) and text.dtype == torch.float32
    ref = _ref_text_features(model, scorer.tokenizer, "a cat")
    np.testing.assert_allclose(text.numpy(), ref / np.linalg.norm(ref), atol=1e-5)


def test_batching_does_not_change_embeddings(scorer):
    """More frames than one batch of 16: each frame's embedding is the same as when scored alone."""
    frames = _frames(20, SIZE, SIZE, seed=2)
    together = scorer.image_embeddings(frames)
    alone = torch.cat([scorer.image_embeddings(frames[i:i + 1]) for i in (0, 15, 16, 19)])
    assert torch.allclose(together[[0, 15, 16, 19]], alone, atol=1e-5)


def test_prompt_changes_clip_score(scorer):
    frames = _frames(4, SIZE, SIZE, seed=3)
    assert scorer.clip_score(frames, "a red car") != pytest.approx(scorer.clip_score(frames, "the ocean at night"))


# --- behaviour -------------------------------------------------------------------------------------------------


def test_identical_frames_are_fully_consistent(scorer):
    frames = np.repeat(_frames(1, 48, 64, seed=4), 6, axis=0)
    assert scorer.frame_consistency(frames) == pytest.approx(100.0, abs=1e-3)


def test_noise_is_less_consistent_than_a_perturbed_still(scorer):
    rng = np.random.default_rng(5)
    still = rng.integers(0, 256, (1, SIZE, SIZE, 3)).astype(np.int16)
    perturbed = np.clip(still + rng.integers(-8, 9, (6, SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    noise = _frames(6, SIZE, SIZE, seed=6)
    assert scorer.frame_consistency(noise) < scorer.frame_consistency(perturbed) < 100.0


def test_clip_score_is_bounded(scorer):
    for seed in range(3):
        assert -100.0 <= scorer.clip_score(_frames(3, 40, 40, seed), f"prompt number {seed}") <= 100.0


def test_score_is_both_metrics_from_one_image_pass(scorer):
    frames = _frames(4, 48, 64, seed=7)
    prompt = "a puppy running on the beach"
    calls = []
    counting = Scorer(scorer.model, scorer.tokenizer, scorer.image_processor, scorer.device)
    counting.image_embeddings = lambda f: calls.append(len(f)) or scorer.image_embeddings(f)

    both = counting.score(frames, prompt)
    assert calls == [4]
    assert set(both) == {"clip_score", "frame_consistency"}
    assert all(isinstance(v, float) for v in both.values())
    assert both["clip_score"] == pytest.approx(scorer.clip_score(frames, prompt), abs=1e-9)
    assert both["frame_consistency"] == pytest.approx(scorer.frame_consistency(frames), abs=1e-9)


def test_hub_format_preprocessor_config(clip_dir, tmp_path):
    """The hub's openai/clip-* folders keep the old int size/crop_size; they must mean shortest side + square crop."""
    folder = shutil.copytree(clip_dir, tmp_path / "old-format")
    old = {
        "crop_size": SIZE, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": list(MEAN), "image_std": list(STD),
        "resample": 3, "size": SIZE,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(old))
    old_scorer = Scorer.load(str(folder))
    frames = _frames(3, 48, 64, seed=8)
    images = _ref_image_features(old_scorer.model, frames)
    assert old_scorer.frame_consistency(frames) == pytest.approx(_ref_consistency(images), abs=TOL)


# --- errors ----------------------------------------------------------------------------------------------------


def test_one_frame_has_no_consistency(scorer):
    one = _frames(1, SIZE, SIZE, seed=9)
    with pytest.raises(BadInput, match="at least 2 frames"):
        scorer.frame_consistency(one)
    with pytest.raises(BadInput, match="at least 2 frames"):
        scorer.score(one, "a cat")
    assert math.isfinite(scorer.clip_score(one, "a cat"))  # the CLIP score of one frame is still defined


@pytest.mark.parametrize("prompt", ["", "   "])
def test_empty_prompt(scorer, prompt):
    frames = _frames(2, SIZE, SIZE, seed=10)
    for call in (lambda: scorer.clip_score(frames, prompt), lambda: scorer.score(frames, prompt),
                 lambda: scorer.text_embedding(prompt)):
        with pytest.raises(BadInput, match="empty prompt"):
            call()


@pytest.mark.parametrize("frames", [
    np.zeros((2, SIZE, SIZE), np.uint8),  # no channel axis
    np.zeros((2, SIZE, SIZE, 4), np.uint8),  # RGBA
    np.zeros((2, SIZE, SIZE, 3), np.float32),  # not uint8
    np.zeros((0, SIZE, SIZE, 3), np.uint8),  # no frames
])
def test_bad_frames(scorer, frames):
    with pytest.raises(BadInput):
        scorer.image_embeddings(frames)


def test_missing_model_path(tmp_path):
    with pytest.raises(BadInput, match="--clip PATH") as info:
        Scorer.load(str(tmp_path / "no-such-clip"))
    assert "\n" not in str(info.value)


def test_folder_that_is_not_a_clip_model(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(BadInput, match="could not load a CLIP model") as info:
        Scorer.load(str(tmp_path))
    assert "\n" not in str(info.value)


def test_hub_id_not_cached_offline(tmp_path):
    """A subprocess, so HF_HUB_OFFLINE and an empty cache apply from import (huggingface_hub reads them once)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_HUB_CACHE", None)
    code = ("from tavcli.method.metrics import Scorer, BadInput\n"
            "try:\n    Scorer.load()\nexcept BadInput as e:\n    print('ERR', e)\n")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    lines = [line for line in run.stdout.splitlines() if line.startswith("ERR ")]
    assert len(lines) == 1, run.stdout + run.stderr
    assert f"hf download {DEFAULT_CLIP}" in lines[0] and "--clip PATH" in lines[0]


def test_no_torchvision_warning(clip_dir):
    """Loading must not print transformers' 'requires torchvision ... falling back' warning."""
    code = f"from tavcli.method.metrics import Scorer\nScorer.load({str(clip_dir)!r})\nprint('ok')\n"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert run.stdout.strip() == "ok", run.stderr
    assert "torchvision" not in run.stderr, run.stderr


def test_bad_device(clip_dir):
    with pytest.raises(BadInput, match="device"):
        Scorer.load(str(clip_dir), device="not-a-device")
    if not torch.cuda.is_available():
        with pytest.raises(BadInput, match="no CUDA GPU"):
            Scorer.load(str(clip_dir), device="cuda")


def test_a_hub_clip_in_the_cache_loads_without_asking_the_network(tmp_path, clip_dir):
    """No hub is reachable here: asked first, transformers' client retries each of the three files for ~50 s
    before it falls back to the cache (about 2 minutes on 2026-12-04); the cache is read first now."""
    import time

    from tests.conftest import hub_cache_with, run_python

    hub_cache_with(clip_dir, "tav-test/tiny-clip", tmp_path / "hub")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_HOME")}
    env["HF_HUB_CACHE"] = str(tmp_path / "hub")
    started = time.perf_counter()
    done = run_python("from tavcli.method.metrics import Scorer\n"
                      "print(type(Scorer.load('tav-test/tiny-clip').model).__name__)\n", env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "CLIPModel"
    assert time.perf_counter() - started < 30, "the network was asked first"
