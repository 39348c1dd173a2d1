"""`tav export --format diffusers` (self-contained and --light), loaded by diffusers in a process where tav
cannot be imported, renders what `tav edit` renders; `tav import` of those folders gives back the same artifact;
every export folder carries a model card; bad input is refused and leaves everything as it was.

Two tiny artifacts (a `full` and a `lora` adapter, 4 frames of 64x64, 2 tuning steps) are tuned once for the
module, each with one recorded edit (`--format png`, lossless: the reference frames).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import site
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from tavcli.app import interop
from tavcli.app.store import Store
from tests.test_cli import (
    PROMPT,
    _invoke,
    assert_error,
    gif_frames,
    make_mp4,
    png_folder_frames,
    store_state,
    tmp_leftovers,
)

TUNE = ("--frames", "4", "--size", "64", "--steps", "2", "--device", "cpu", "-q")
EDIT_PROMPT = "a blue square slides left"
NOISE = {"seed": 3, "frames": 3}  # the start from noise, for `--no-inversion` and `generator=`, `video_length=`
KINDS = ("full", "lora")
VARIANTS = ("self-contained", "light")

# Run in a Python without tav: -I -S drops the site machinery (so the editable install's finder and .pth files),
# and only site-packages' own directory comes back on the path; tavcli is not in it.
RENDER = r"""
import json, sys
try:
    import tavcli
    sys.exit("tavcli is importable")
except ModuleNotFoundError:
    pass
import numpy as np, torch
torch.set_num_threads(1)
from diffusers import DiffusionPipeline
jobs, out, seen = json.loads(sys.argv[1]), {}, {}
for key, folder in jobs["folders"].items():
    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    seen[key] = [type(pipe).__name__, type(pipe.unet).__name__, type(pipe.vae).__name__]
    out[key] = pipe(jobs["prompt"], num_inference_steps=2, guidance_scale=12.5, output_type="np").frames[0]
    if key.endswith("self-contained"):
        g = torch.Generator().manual_seed(jobs["seed"])
        out[key + "/noise"] = pipe(jobs["prompt"], num_inference_steps=2, generator=g, video_length=jobs["frames"],
                                   output_type="np").frames[0]
np.savez(jobs["npz"], **out)
print(json.dumps(seen))
"""


def run_without_tav(code: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    paths = [p for p in site.getsitepackages() if Path(p).is_dir()]
    prelude = f"import sys; sys.path[:0] = {paths!r}; sys.argv[1:] = {list(args)!r}\n"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TAV_HOME")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(cwd / "hf-modules"))
    return subprocess.run([sys.executable, "-I", "-S", "-c", prelude + code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def tav(*args, home: Path):
    return _invoke(*args, env={"TAV_HOME": str(home)})


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_base_dir):
    """A store with a full and a lora artifact, each with a recorded png edit and a --no-inversion one, and
    both exported in both variants."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("interop")
    home, clip = root / "home", make_mp4(root / "slide.mp4")
    refs = {}
    for kind in KINDS:
        keep = ("--checkpoint-every", "1") if kind == "full" else ()  # a checkpoint rides along (under tav/)
        r = tav("tune", clip, PROMPT, "--name", kind, "--adapter", kind, "--base", tiny_base_dir, *TUNE, *keep,
                home=home)
        assert r.code == 0, r.stderr
        refs[kind] = r.stdout.strip()
        for extra in ((), ("--no-inversion", "--seed", NOISE["seed"], "--frames", NOISE["frames"])):
            r = tav("edit", kind, EDIT_PROMPT, "--steps", "2", "--format", "png", "--out-dir", root / "edits",
                    "--device", "cpu", "-q", *extra, home=home)
            assert r.code == 0, r.stderr
    folders = {}
    for kind in KINDS:
        for variant in VARIANTS:
            folder = root / f"{kind}-{variant}"
            r = tav("export", kind, folder, "--format", "diffusers", *(("--light",) if variant == "light" else ()),
                    "-q", home=home)
            assert (r.code, r.stdout) == (0, f"{folder}\n"), r.stderr
            folders[f"{kind}/{variant}"] = folder
    return {"root": root, "home": home, "refs": refs, "folders": folders, "base": tiny_base_dir}


@pytest.fixture(scope="module")
def rendered(work):
    """What diffusers renders from each folder, in a process that cannot import tav."""
    npz = work["root"] / "rendered.npz"
    jobs = {"folders": {k: str(v) for k, v in work["folders"].items()}, "prompt": EDIT_PROMPT, "npz": str(npz),
            **NOISE}
    p = run_without_tav(RENDER, json.dumps(jobs), cwd=work["root"])
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1]), dict(np.load(npz))


def edit_frames(work, kind: str, noise: bool = False) -> np.ndarray:
    """The frames `tav edit` wrote for the artifact (the inversion's edit, or the --no-inversion one)."""
    (artifact,) = [a for a in Store(work["home"]).list() if a.name == kind]
    (edit,) = [e for e in artifact.edits() if e["inversion"] != noise]
    return png_folder_frames(Path(edit["output"]))


def assert_same_frames(diffusers_np: np.ndarray, tav_uint8: np.ndarray) -> None:
    assert diffusers_np.shape == tav_uint8.shape and diffusers_np.dtype == np.float32
    assert 0.0 <= diffusers_np.min() and diffusers_np.max() <= 1.0
    levels = np.round(diffusers_np.astype(np.float64) * 255).astype(int)
    diff = np.abs(levels - tav_uint8.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() >= 0.999, (diff.max(), (diff == 0).mean())


# --- 1. loaded without tav, rendered as tav renders -----------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind", KINDS)
def test_diffusers_without_tav_renders_what_tav_edit_renders(work, rendered, kind, variant):
    classes, frames = rendered
    assert classes[f"{kind}/{variant}"] == ["TuneAVideoPipeline", "TuneAVideoUNet", "AutoencoderKL"]
    assert_same_frames(frames[f"{kind}/{variant}"], edit_frames(work, kind))


@pytest.mark.parametrize("kind", KINDS)
def test_generator_and_video_length_start_from_noise_as_no_inversion_does(work, rendered, kind):
    frames = rendered[1][f"{kind}/self-contained/noise"]
    assert frames.shape[0] == NOISE["frames"]
    assert_same_frames(frames, edit_frames(work, kind, noise=True))


def test_the_folder_code_is_tavs_own_and_imports_no_tav(work):
    for folder in work["folders"].values():
        for rel in interop.CODE:
            assert (folder / rel).read_bytes() == interop.code_source(rel).read_bytes(), rel
        index = json.loads((folder / "model_index.json").read_text())
        assert index["_class_name"] == interop.PIPELINE_CLASS and index["unet"] == interop.UNET_CLASS
        assert (folder / f"{interop.PIPELINE_CLASS[0]}.py").is_file()
        assert (folder / "unet" / f"{interop.UNET_CLASS[0]}.py").is_file()


def test_the_folders_code_and_tavs_give_the_same_unet_on_the_same_weights(work, tiny_base):
    """In this process (tav importable): the folder's TuneAVideoUNet and tav's from_adapter, same noise."""
    from tavcli.method.attention import video_forward
    from tavcli.method.pipeline import TuneAVideo
    from tavcli.method.tune_a_video_unet import TuneAVideoUNet

    artifact = Store(work["home"]).resolve("lora")
    ours = TuneAVideo.from_adapter(tiny_base, artifact.file("adapter/adapter_config.json").parent).unet
    theirs = TuneAVideoUNet.from_pretrained(work["folders"]["lora/light"], subfolder="unet")
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(1, 4, 4, 8, 8, generator=g), torch.randn(1, 77, 32, generator=g)
    assert torch.equal(video_forward(ours, x, 500, text), video_forward(theirs, x, 500, text))


def test_light_folders_hold_no_base_weights(work):
    for kind in KINDS:
        light = work["folders"][f"{kind}/light"]
        full = work["folders"][f"{kind}/self-contained"]
        assert not any((light / c).exists() for c in ("vae", "text_encoder", "tokenizer", "scheduler"))
        assert not list((light / "unet").glob("diffusion_pytorch_model*"))
        assert (full / "unet" / "diffusion_pytorch_model.safetensors").is_file()
        base = json.loads((light / "unet" / "config.json").read_text())["_tav_base"]
        assert base == {"name": str(work["base"].resolve()), "revision": None}
        assert json.loads((light / "model_index.json").read_text())["base"] == base["name"]
        size = sum(p.stat().st_size for p in light.rglob("*") if p.is_file())
        assert size < sum(p.stat().st_size for p in full.rglob("*") if p.is_file()) / 2


# --- 2. back into tav -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind", KINDS)
def test_import_gives_back_the_same_artifact(work, tmp_path, kind, variant):
    home = tmp_path / "other"
    r = tav("import", work["folders"][f"{kind}/{variant}"], home=home)
    assert r.code == 0, r.stderr
    original = Store(work["home"]).resolve(kind)
    back = Store(home).resolve(r.stdout.strip())
    assert back.id == original.id and back.manifest == original.manifest
    for rel in ("adapter/adapter_model.safetensors", "inversion.safetensors"):
        a, b = load_file(back.file(rel)), load_file(original.file(rel))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert back.edits() == [e | {"output": None} for e in original.edits()]  # another machine's paths: dropped
    again = tav("import", work["folders"][f"{kind}/{variant}"], home=home)  # stored once
    assert again.stdout == r.stdout and len(Store(home).list()) == 1


def _copy(work, tmp_path, key: str = "full/light") -> Path:
    folder = tmp_path / "copy"
    shutil.copytree(work["folders"][key], folder)
    return folder


@pytest.mark.parametrize("damage, code, words", [
    ("marker", 2, ("not a tav diffusers export", "tav_export.json")),
    ("code", 2, ("attention.py", "differs from the code", "re-export")),
    ("weights", 1, ("adapter_model.safetensors", "sha256")),
    ("inversion", 1, ("inversion.safetensors", "sha256")),
    ("manifest", 1, ("manifest does not match its id",)),
])
def test_import_refuses_a_bad_folder_and_leaves_the_store_as_it_was(work, tmp_path, damage, code, words):
    folder = _copy(work, tmp_path)
    if damage == "marker":
        (folder / interop.MARKER).unlink()
    elif damage == "code":
        path = folder / "unet" / "attention.py"
        path.write_text(path.read_text().replace("return [[0, max(i - 1, 0)]", "return [[0, i]"))
    elif damage in ("weights", "inversion"):
        path = folder / ("unet/adapter_model.safetensors" if damage == "weights" else "inversion.safetensors")
        data = bytearray(path.read_bytes())
        data[-1] ^= 1
        path.write_bytes(bytes(data))
    else:
        record = json.loads((folder / interop.MARKER).read_text())
        record["manifest"]["prompt"] = "something else"
        (folder / interop.MARKER).write_text(json.dumps(record))
    home = tmp_path / "home"
    tav("list", home=home)
    before = store_state(home)
    assert_error(tav("import", folder, home=home), code, *words)
    assert store_state(home) == before and tmp_leftovers(home) == []


# --- 3. bad exports -------------------------------------------------------------------------------------------


def test_export_refuses_a_non_empty_folder_unless_forced(work, tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    assert_error(tav("export", "full", target, "--format", "diffusers", "--light", home=work["home"]), 2,
                 str(target), "not empty", "--force")
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    r = tav("export", "full", target, "--format", "diffusers", "--light", "--force", "-q", home=work["home"])
    assert r.code == 0, r.stderr
    assert not (target / "keep.txt").exists() and (target / interop.MARKER).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]  # no .part or .old left beside it


def test_export_with_a_missing_base_names_it_and_base(work, tmp_path, tiny_base_dir):
    base = tmp_path / "gone-base"
    shutil.copytree(tiny_base_dir, base)
    home = tmp_path / "home"
    r = tav("tune", make_mp4(tmp_path / "c.mp4"), PROMPT, "--base", base, *TUNE, home=home)
    assert r.code == 0, r.stderr
    shutil.rmtree(base)
    out = tmp_path / "out"
    assert_error(tav("export", r.stdout.strip(), out, "--format", "diffusers", home=home), 2, "gone-base",
                 "--base", progress=True)
    assert not out.exists()
    assert_error(tav("export", "full", out, "--format", "peft", "--light", home=work["home"]), 2, "--light")


def test_a_failed_export_leaves_no_folder(work, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(interop, "write_model_card", fail)
    target = tmp_path / "out"
    r = tav("export", "lora", target, "--format", "diffusers", "--light", home=work["home"])
    assert r.code == 1 and "disk full" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_light_export_of_a_single_file_base_is_refused(work, tmp_path):
    assert_error(tav("export", "full", tmp_path / "out", "--format", "diffusers", "--light", "--base",
                     tmp_path / "sd.safetensors", home=work["home"]), 2, "single checkpoint file", "without --light")
    assert_error(tav("export", "full", tmp_path / "out", "--format", "diffusers", "--light", "--base", "random:tiny",
                     home=work["home"]), 2, "built-in random base", "without --light")
    assert_error(tav("export", "full@1", tmp_path / "out", "--format", "diffusers", home=work["home"]), 2,
                 "final adapter", "--format peft")
    assert not (tmp_path / "out").exists()


# --- 4. the model card ----------------------------------------------------------------------------------------


def front_matter(readme: Path) -> tuple[dict, str]:
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


@pytest.mark.parametrize("fmt", ["diffusers", "peft", "official"])
def test_every_export_folder_has_a_model_card(work, tmp_path, fmt):
    folder = work["folders"]["lora/light"] if fmt == "diffusers" else tmp_path / fmt
    if fmt != "diffusers":
        r = tav("export", "lora", folder, "--format", fmt, "-q", home=work["home"])
        assert r.code == 0, r.stderr
    card, body = front_matter(folder / "README.md")
    assert card["base_model"] == str(work["base"].resolve())
    assert (card["library_name"], card["pipeline_tag"]) == ("diffusers", "text-to-video")
    assert {"tune-a-video", "text-to-video"} <= set(card["tags"])
    artifact = Store(work["home"]).resolve("lora")
    tav_fields = card["tav"]
    assert tav_fields["caption"] == PROMPT and tav_fields["artifact"] == artifact.id
    assert tav_fields["adapter"]["kind"] == "lora" and tav_fields["tuning"]["steps"] == 2
    assert tav_fields["tuning"]["lr"] == 3e-5 and tav_fields["tuned_with"] == tav_fields["exported_with"]
    loss = artifact.manifest["loss"]
    assert tav_fields["loss"] == {"first": loss[0], "last": loss[-1], "min": min(loss), "steps": 2}
    assert PROMPT in body and EDIT_PROMPT in body and f"{loss[0]:.4f}" in body
    source = gif_frames(folder / "samples" / "source.gif")
    assert source.shape == (4, 64, 64, 3)
    widgets = card["widget"]
    assert [w["text"] for w in widgets] == [EDIT_PROMPT, EDIT_PROMPT]
    previews = [gif_frames(folder / w["output"]["url"]) for w in widgets]
    assert [p.shape[0] for p in previews] == [4, NOISE["frames"]]
    assert "![source](samples/source.gif)" in body


# --- 5. honest docs: plain PEFT, and docs/interop.md's snippets -----------------------------------------------


def test_plain_peft_cannot_use_the_adapter(work, tmp_path, tiny_base_dir):
    """What docs/interop.md says of plain PEFT: a full adapter's config is unreadable to it; a lora one loads
    onto a stock UNet without a warning but leaves out every temporal tensor."""
    import warnings

    from diffusers import UNet2DConditionModel
    from peft import LoraConfig, PeftConfig, inject_adapter_in_model, set_peft_model_state_dict

    for kind in KINDS:
        assert tav("export", kind, tmp_path / kind, "--format", "peft", home=work["home"]).code == 0
    with pytest.raises(KeyError, match="TAV_FULL"):
        PeftConfig.from_pretrained(tmp_path / "full")
    unet = UNet2DConditionModel.from_pretrained(tiny_base_dir, subfolder="unet")
    tensors = load_file(tmp_path / "lora" / "adapter_model.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning at all
        inject_adapter_in_model(LoraConfig.from_pretrained(tmp_path / "lora"), unet)
        dropped = set(set_peft_model_state_dict(unet, tensors).unexpected_keys)
    assert dropped == {k for k in tensors if ".attn_temp." in k} and (len(dropped), len(tensors)) == (36, 52)


DOCS = Path(__file__).resolve().parents[1] / "docs" / "interop.md"
SNIPPET = re.compile(r"<!-- test: (?P<how>[^>]+?) -->\n```(?P<lang>\w+)\n(?P<code>.*?)```", re.DOTALL)


def test_the_interop_docs_run(tmp_path, monkeypatch, tiny_base_dir):
    """Each snippet of docs/interop.md, in order, in one folder, against a tiny artifact named `skiing`: the
    `tav` lines through the CLI, the diffusers ones in a process without tav, the PEFT ones with tav."""
    home = tmp_path / "home"
    r = tav("tune", make_mp4(tmp_path / "skiing.mp4"), "a man is skiing", "--name", "skiing", "--base",
            tiny_base_dir, *TUNE, home=home)
    assert r.code == 0, r.stderr
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    ran = []
    for snippet in SNIPPET.finditer(DOCS.read_text()):
        how, code = snippet["how"], snippet["code"].replace("CompVis/stable-diffusion-v1-4", str(tiny_base_dir))
        if how == "tav":
            for line in filter(None, (re.split(r"\s+#", line)[0].strip() for line in code.splitlines())):
                r = tav(*shlex.split(line)[1:], home=home)
                assert r.code == 0, (line, r.stderr)
        elif how == "without tav":
            p = run_without_tav(code, cwd=work)
            assert p.returncode == 0, (code, p.stderr[-2000:])
        elif how == "with tav":
            exec(compile(code, str(DOCS), "exec"), {})  # noqa: S102 - the docs' own snippet, run as a reader would
        else:
            assert how.startswith("needs the official code"), how
        ran.append(how)
    assert {"tav", "without tav", "with tav"} <= set(ran) and ran.count("without tav") == 2
    assert (work / "skiing.tav").is_file() and len(Store(home).list()) == 1  # the imports gave back the same one
