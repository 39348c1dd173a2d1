"""`tav import-official`, `tav export --format official` and single-file bases (`--base FILE.safetensors`,
`--base-config`, YAML `base_config:`), end to end through the command line.

Everything runs on conftest's tiny random base at 64x64, 4 frames and 2 steps on the CPU, against a store in a
per-test $TAV_HOME and a checkpoint-hash cache in a per-test $XDG_CACHE_HOME. Official folders are written here
(tests/test_official.py's helpers make the tuned tensors); single files are the tiny base converted to the LDM
layout by tests/test_single_file.py's converter. The CLI's contract is tests/test_cli.py's: results only on
stdout, one "tav: error:" line on stderr, exit 2 for bad input, the store as it was after a failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from tavcli.app.official.layout import official_keys, official_unet_config
from tavcli.app.store import Store
from tavcli.method.attention import inflate
from tavcli.method.models import fingerprint, load_base
from tavcli.method.video import write_video
from tests.test_cli import (  # noqa: F401 (cli)
    SHORT_ID,
    _invoke,
    assert_error,
    assert_video,
    cli,
    mp4_frames,
    run_subprocess,
    store_state,
    tmp_leftovers,
)
from tests.test_official import TUNED, Evil, official_state_from
from tests.test_single_file import folder_to_ldm, offline_cache  # noqa: F401 (offline_cache is a fixture)

PROMPT = "a flickering noise square"
TUNE = ("--frames", "4", "--size", "64", "--steps", "2", "--stride", "2", "--device", "cpu")
EDIT = ("--steps", "2", "--device", "cpu", "--seed", "3")
ADAPTER = "adapter/adapter_model.safetensors"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors on a small machine: one thread is faster (see test_cli)
    yield
    torch.set_num_threads(threads)


def _isolate(monkeypatch, home: Path, cache: Path) -> Path:
    Store(home)
    monkeypatch.setenv("TAV_HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))  # the checkpoint sha256 cache
    monkeypatch.delenv("TAV_DEBUG", raising=False)
    return home


@pytest.fixture
def empty_home(tmp_path, monkeypatch) -> Path:
    return _isolate(monkeypatch, tmp_path / "home", tmp_path / "cache")


@pytest.fixture(scope="module")
def clip_mp4(tmp_path_factory) -> Path:
    """10 frames of random 64x64 noise (square: tav's crop and the official squash read the same pixels)."""
    frames = np.random.default_rng(0).integers(0, 256, (10, 64, 64, 3), dtype=np.uint8)
    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", frames)


@pytest.fixture(scope="module")
def tuned_home(tmp_path_factory, tiny_base_dir, clip_mp4, _one_thread) -> Path:
    """A store with one artifact, "orig", tuned once for the module on every 2nd frame."""
    root = tmp_path_factory.mktemp("tuned")
    r = _invoke("tune", clip_mp4, PROMPT, "--name", "orig", "--base", tiny_base_dir, *TUNE, "-q",
                env={"TAV_HOME": str(root / "home"), "XDG_CACHE_HOME": str(root / "cache")})
    assert (r.code, r.stderr) == (0, ""), r.stderr
    return root / "home"


@pytest.fixture
def home(tmp_path, monkeypatch, tuned_home) -> Path:
    """A private copy of the module's tuned store, as $TAV_HOME."""
    shutil.copytree(tuned_home, tmp_path / "home")
    return _isolate(monkeypatch, tmp_path / "home", tmp_path / "cache")


def artifact(home: Path, ref: str):
    return Store(home).resolve(ref)


def tensors(a, rel: str) -> dict[str, torch.Tensor]:
    return load_file(a.path / rel)


def assert_same_tensors(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k


# --- official folders written here ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def official(tiny_base_dir):
    """A tuned official UNet3D state over the tiny base (random tuned tensors) and its unet/config.json."""
    base = load_base(str(tiny_base_dir), device="cpu")
    config = official_unet_config(dict(base.unet.config))
    state = official_state_from(inflate(base.unet, seed=0), seed=1)
    assert set(state) == official_keys(config)
    return state, config


def write_run(folder: Path, state: dict, config: dict, base: Path | str) -> Path:
    """An output_dir as train_tuneavideo.py leaves it, but without inv_latents/ (and its clip not on disk)."""
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    torch.save(state, folder / "unet" / "diffusion_pytorch_model.bin")
    (folder / "config.yaml").write_text(yaml.safe_dump({
        "pretrained_model_path": str(base), "output_dir": "./outputs/noise",
        "train_data": {"video_path": "data/gone.mp4", "prompt": PROMPT, "n_sample_frames": 4, "width": 64,
                       "height": 64, "sample_start_idx": 1, "sample_frame_rate": 3},
        "max_train_steps": 500, "learning_rate": 3e-5, "seed": 33}, sort_keys=False))
    (folder / "samples").mkdir()
    return folder


@pytest.fixture(scope="module")
def other_base(tmp_path_factory) -> Path:
    """A second tiny base: the same architecture, other random weights."""
    from tavcli.method.random_base import save_random_base

    return save_random_base(tmp_path_factory.mktemp("other") / "tiny-sd-1", arch="tiny", seed=1)


# --- 1. tune -> export official -> import-official -> the same edits ---------------------------------------------


def test_tune_export_official_import_official_edit(cli, home, tmp_path, tiny_base_dir, clip_mp4):
    orig = artifact(home, "orig")
    assert orig.manifest["source"]["indices"] == [0, 2, 4, 6]  # --stride 2
    out = tmp_path / "official"
    r = cli("export", "orig", out, "--format", "official")
    assert (r.code, r.stdout) == (0, f"{out}\n"), r.stderr

    assert {p.name for p in out.iterdir()} == {"unet", "vae", "text_encoder", "tokenizer", "scheduler",
                                              "model_index.json", "inv_latents", "config.yaml", "README.md", "samples"}
    assert {p.name for p in (out / "unet").iterdir()} == {"config.json", "diffusion_pytorch_model.bin"}
    unet_config = json.loads((out / "unet" / "config.json").read_text())
    assert unet_config["_class_name"] == "UNet3DConditionModel"
    assert unet_config["down_block_types"] == ["CrossAttnDownBlock3D", "DownBlock3D"]
    assert json.loads((out / "model_index.json").read_text())["unet"] == ["models", "UNet3DConditionModel"]
    for component in ("vae", "text_encoder", "tokenizer", "scheduler"):
        assert {p.name for p in (out / component).iterdir()} == {p.name for p in (tiny_base_dir / component).iterdir()}
    weights = torch.load(out / "unet" / "diffusion_pytorch_model.bin", weights_only=True)
    assert set(weights) == official_keys(unet_config)
    # The inversion under the tuning step count, in the official (b, c, f, h, w) layout, exactly.
    assert [p.name for p in (out / "inv_latents").iterdir()] == ["ddim_latent-2.pt"]
    latent = torch.load(out / "inv_latents" / "ddim_latent-2.pt", weights_only=True)
    inversion = tensors(orig, "inversion.safetensors")["latents"]
    assert torch.equal(latent, inversion.permute(0, 2, 1, 3, 4))
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert Path(config["pretrained_model_path"]).is_absolute()
    assert Path(config["pretrained_model_path"]) == tiny_base_dir.resolve()
    assert config["train_data"] == {"video_path": str(clip_mp4.resolve()), "prompt": PROMPT, "n_sample_frames": 4,
                                    "width": 64, "height": 64, "sample_start_idx": 0, "sample_frame_rate": 2}
    assert config["max_train_steps"] == 2 and config["seed"] == 0

    r = cli("import-official", out, "--name", "x")
    assert r.code == 0, r.stderr
    sid = r.stdout.strip()
    assert SHORT_ID.fullmatch(sid) and r.stdout == sid + "\n" and sid != orig.short_id
    assert "Traceback" not in r.stderr
    imported = artifact(home, "x")
    assert imported.short_id == sid
    # bit for bit: the official weights are fp32 (of tav's fp16 values), and the import keeps them fp32
    assert_same_tensors(tensors(imported, ADAPTER), {k: v.float() for k, v in tensors(orig, ADAPTER).items()})
    assert json.loads(imported.file("adapter/adapter_config.json").read_text()) == \
        json.loads(orig.file("adapter/adapter_config.json").read_text())
    assert_same_tensors(tensors(imported, "inversion.safetensors"), tensors(orig, "inversion.safetensors"))
    m, o = imported.manifest, orig.manifest
    assert (m["prompt"], m["video"]["frames"], m["video"]["width"], m["video"]["height"]) == (PROMPT, 4, 64, 64)
    assert m["source"]["indices"] == o["source"]["indices"] and m["source"]["sha256"] == o["source"]["sha256"]
    assert m["base"]["fingerprint"] == o["base"]["fingerprint"] == fingerprint(tiny_base_dir)
    assert m["provenance"] == {"origin": "official", "folder": str(out.resolve()),
                               "weights_sha256": m["provenance"]["weights_sha256"]} and m["tuning"]["steps"] == 2
    assert m["inversion"]["official_step"] == 2 and m["video"]["fps"] == o["video"]["fps"]
    # the source came along too, as the same frames (64x64: crop and squash agree)
    assert np.array_equal(mp4_frames(imported.file("source.mp4")), mp4_frames(orig.file("source.mp4")))

    edits = {}
    for ref in ("orig", "x"):
        r = cli("edit", ref, "a cat", *EDIT, "--out-dir", tmp_path / "edits", "-q")
        assert (r.code, r.stderr) == (0, ""), r.stderr
        edits[ref] = Path(r.stdout.strip())
    assert [p.name for p in edits.values()] == ["orig-a-cat.mp4", "x-a-cat.mp4"]
    frames = assert_video(edits["x"], 4)
    assert np.array_equal(frames, assert_video(edits["orig"], 4))
    assert edits["x"].read_bytes() == edits["orig"].read_bytes()  # mb-tree off: same frames, same file

    # Exported again, the imported artifact gives the very same official weights and inversion.
    again = tmp_path / "again"
    r = cli("export", "x", again, "--format", "official", "-q")
    assert (r.code, r.stderr) == (0, ""), r.stderr
    assert_same_tensors(torch.load(again / "unet" / "diffusion_pytorch_model.bin", weights_only=True), weights)
    assert torch.equal(torch.load(again / "inv_latents" / "ddim_latent-2.pt", weights_only=True), latent)
    assert tmp_leftovers(home) == []


# --- 2. an official folder without inv_latents ------------------------------------------------------------------


def test_import_official_without_inversion_needs_no_inversion(cli, empty_home, tmp_path, official, tiny_base_dir):
    state, config = official
    run = write_run(tmp_path / "run", state, config, tiny_base_dir)
    r = cli("import-official", run, "--name", "noinv")
    assert r.code == 0, r.stderr
    sid = r.stdout.strip()
    assert SHORT_ID.fullmatch(sid) and r.stdout == sid + "\n"
    assert r.stderr.splitlines()[-1] == f"tav: stored {sid} (noinv); no inversion came with it: edit with " \
                                        "--no-inversion"
    a = artifact(empty_home, "noinv")
    assert set(a.manifest["files"]) == {"adapter/adapter_config.json", ADAPTER}  # no inversion, no source
    tuned = {k: v for k, v in state.items() if k.endswith(TUNED)}
    assert len(tuned) == 7 * 4 and {v.dtype for v in tuned.values()} == {torch.float32}
    assert_same_tensors(tensors(a, ADAPTER), tuned)  # in the checkpoint's own precision: one-step deltas survive
    assert "clip norm, float32, " in cli("show", "noinv").stdout
    m = a.manifest
    assert m["inversion"] is None and m["source"]["indices"] == [1, 4, 7, 10]
    assert (m["tuning"]["steps"], m["tuning"]["seed"], m["run"]["device"]) == (500, 33, "official")
    assert m["provenance"]["weights_sha256"] == hashlib.sha256((run / "unet/diffusion_pytorch_model.bin").read_bytes()
                                                           ).hexdigest()

    out = tmp_path / "out"
    before = store_state(empty_home)
    assert_error(cli("edit", "noinv", "a dog", *EDIT, "--out-dir", out), 2, sid, "no stored inversion",
                 "--no-inversion")
    assert_error(cli("edit", "noinv", "a dog", *EDIT, "--no-inversion", "--grid", "--out-dir", out), 2,
                 "no source clip", "--grid")
    assert not out.exists() and store_state(empty_home) == before

    r = cli("edit", "noinv", "a dog", *EDIT, "--no-inversion", "--out-dir", out)
    assert r.code == 0, r.stderr
    assert_video(Path(r.stdout.strip()), 4)
    assert [e["prompt"] for e in a.edits()] == ["a dog"]


# --- 3. bad official folders ------------------------------------------------------------------------------------


def _changed_frozen_weight(state: dict) -> dict:
    return {**state, "up_blocks.1.resnets.0.conv1.bias": state["up_blocks.1.resnets.0.conv1.bias"] + 1e-3}


@pytest.mark.parametrize("case", ["changed frozen weight", "wrong --base"])
def test_import_official_against_other_weights_is_refused(cli, empty_home, tmp_path, official, tiny_base_dir,
                                                          request, case):
    state, config = official
    extra = ()
    if case == "changed frozen weight":
        state = _changed_frozen_weight(state)
    else:
        extra = ("--base", request.getfixturevalue("other_base"))
    run = write_run(tmp_path / "run", state, config, tiny_base_dir)
    before = store_state(empty_home)
    line = assert_error(cli("import-official", run, "--name", "x", "-q", *extra), 2, "differ from the base",
                        "--base")
    if case == "changed frozen weight":
        assert "up_blocks.1.resnets.0.conv1.bias" in line
    assert store_state(empty_home) == before == ([], {}) and tmp_leftovers(empty_home) == []


def test_import_official_missing_folder(cli, empty_home, tmp_path):
    assert_error(cli("import-official", tmp_path / "nowhere", "-q"), 2, str(tmp_path / "nowhere"), "does not exist")
    r = cli("import-official", tmp_path / "nowhere")  # without -q: progress first, the error last
    assert_error(r, 2, "does not exist", progress=True)
    assert store_state(empty_home) == ([], {}) and tmp_leftovers(empty_home) == []


def test_import_official_malicious_bin_is_never_unpickled(cli, empty_home, tmp_path, official, tiny_base_dir):
    state, config = official
    run = write_run(tmp_path / "run", state, config, tiny_base_dir)
    marker = tmp_path / "pwned"
    torch.save({**state, "x": Evil(marker)}, run / "unet" / "diffusion_pytorch_model.bin")
    line = assert_error(cli("import-official", run, "-q"), 2, "diffusion_pytorch_model.bin", "weights_only=True",
                        "will not unpickle")
    assert "weights_only=False" not in line  # tav's own advice, not torch's
    assert not marker.exists()
    assert store_state(empty_home) == ([], {}) and tmp_leftovers(empty_home) == []


def test_import_official_name_taken_fails_before_any_work(cli, empty_home, tmp_path, official, tiny_base_dir,
                                                          monkeypatch):
    import tavcli.app.official.layout
    import tavcli.method.models

    state, config = official
    run = write_run(tmp_path / "run", state, config, tiny_base_dir)
    assert cli("import-official", run, "--name", "taken", "-q").code == 0
    before = store_state(empty_home)
    work = []
    monkeypatch.setattr(tavcli.app.official.layout, "read_official", lambda *a, **k: work.append("read"))
    monkeypatch.setattr(tavcli.method.models, "load_base", lambda *a, **k: work.append("load"))
    assert_error(cli("import-official", run, "--name", "taken"), 2, "taken")  # no "tav: reading" line either
    assert work == []
    assert store_state(empty_home) == before and tmp_leftovers(empty_home) == []


# --- 4. export --format official: a non-empty target, an unknown format ------------------------------------------


def test_export_official_refuses_a_non_empty_target(cli, home, tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    before = store_state(home)
    for extra in ((), ("--force",)):  # --force picks another base for official; it never overwrites
        assert_error(cli("export", "orig", target, "--format", "official", *extra), 2, str(target), "not empty")
    assert [p.name for p in target.iterdir()] == ["keep.txt"] and (target / "keep.txt").read_text() == "mine"
    a_file = tmp_path / "a-file"
    a_file.write_text("also mine")
    assert_error(cli("export", "orig", a_file, "--format", "official"), 2, str(a_file))
    assert a_file.read_text() == "also mine"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name not in ("home", "cache")) == ["a-file", "target"]
    assert store_state(home) == before and tmp_leftovers(home) == []


def test_import_official_dtype_chooses_the_stored_precision(cli, empty_home, tmp_path, official, tiny_base_dir):
    state, config = official
    run = write_run(tmp_path / "run", state, config, tiny_base_dir)
    r = cli("import-official", run, "--name", "half", "--dtype", "fp16")
    assert r.code == 0, r.stderr
    tuned = {k: v.to(torch.float16) for k, v in state.items() if k.endswith(TUNED)}
    assert_same_tensors(tensors(artifact(empty_home, "half"), ADAPTER), tuned)
    assert "clip norm, float16, " in cli("show", "half").stdout
    assert_error(cli("import-official", run, "--dtype", "fp8"), 2, "dtype", "fp32")


def test_export_unknown_format(cli, home, tmp_path):
    before = store_state(home)
    assert_error(cli("export", "orig", tmp_path / "out", "--format", "onnx"), 2, "'onnx'", "tav", "diffusers", "peft",
                 "official")
    assert not (tmp_path / "out").exists() and store_state(home) == before


# --- 5. single-file bases --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ldm_file(tiny_base_dir, tmp_path_factory) -> Path:
    """The tiny base as one LDM-layout .safetensors (the module's pristine copy: tests copy it)."""
    path = tmp_path_factory.mktemp("single") / "tiny-sd.safetensors"
    save_file(folder_to_ldm(tiny_base_dir), path)
    return path


@pytest.fixture
def workdir(tmp_path, tiny_base_dir, ldm_file, clip_mp4) -> Path:
    """A folder with the checkpoint, a configs-only copy of the base (no weights) and the clip."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(ldm_file, work / "tiny.safetensors")
    shutil.copytree(tiny_base_dir, work / "cfg", ignore=shutil.ignore_patterns("*.safetensors"))
    shutil.copy(clip_mp4, work / "clip.mp4")
    return work


@pytest.fixture
def hashed(monkeypatch) -> list[str]:
    """The files tav hashes whole (models.sha256_file), in order."""
    import tavcli.method.models

    calls: list[str] = []
    real = tavcli.method.models.sha256_file
    monkeypatch.setattr(tavcli.method.models, "sha256_file", lambda path: calls.append(Path(path).name) or real(path))
    return calls


def test_single_file_base_tune_edit_and_its_identity(cli, empty_home, workdir, tmp_path, monkeypatch, hashed,
                                                     offline_cache):
    import tavcli.method.models

    ckpt = workdir / "tiny.safetensors"
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    monkeypatch.chdir(workdir)  # relative paths, as a user types them
    r = cli("tune", "clip.mp4", PROMPT, "--base", "tiny.safetensors", "--base-config", "cfg", *TUNE, "-q")
    assert (r.code, r.stderr) == (0, ""), r.stderr
    sid = r.stdout.strip()
    assert hashed.count("tiny.safetensors") == 1

    r = cli("show", sid, "--json")
    base = json.loads(r.stdout)["base"]
    assert base["sha256"] == digest and base["config"] == str((workdir / "cfg").resolve())
    assert Path(base["name"]).is_absolute() and Path(base["name"]).resolve() == ckpt.resolve()
    cache = json.loads((tmp_path / "cache" / "tav" / "checkpoint-sha256.json").read_text())
    assert list(cache.values()) == [digest] and str(ckpt.resolve()) in next(iter(cache))

    # Edits from elsewhere, without --base-config and offline: the recorded file and config are used, and the
    # file is not hashed again (the cache knows it by path, size and mtime).
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr(tavcli.method.models, "_default_config_folder",
                        lambda *a: pytest.fail("the default SD1.x config repo was looked up"))
    out = tmp_path / "out"
    first = None
    for _ in range(2):
        r = cli("edit", sid, "a dog", *EDIT, "--out-dir", out, "-q")
        assert (r.code, r.stderr) == (0, ""), r.stderr
        frames = assert_video(Path(r.stdout.strip()), 4)
        first = frames if first is None else first
        assert np.array_equal(frames, first)
    assert hashed.count("tiny.safetensors") == 1

    st = ckpt.stat()
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, not changed: hashed again, same base
    r = cli("edit", sid, "a dog", *EDIT, "--out-dir", out, "-q")
    assert (r.code, r.stderr) == (0, ""), r.stderr
    assert hashed.count("tiny.safetensors") == 2
    r = cli("edit", sid, "a dog", *EDIT, "--out-dir", out, "-q")
    assert r.code == 0 and hashed.count("tiny.safetensors") == 2

    # One weight changed (the file still loads, and has the same size): another base.
    state = load_file(ckpt)
    state["model.diffusion_model.out.2.bias"] = state["model.diffusion_model.out.2.bias"] + 0.5
    save_file(state, ckpt)
    assert ckpt.stat().st_size == st.st_size and hashlib.sha256(ckpt.read_bytes()).hexdigest() != digest
    before, outputs = store_state(empty_home), sorted(out.iterdir())
    line = assert_error(cli("edit", sid, "a dog", *EDIT, "--out-dir", out, "-q"), 2, str(ckpt.resolve()),
                        f"has changed since {sid} was tuned on it", "sha256", "--base NEWPATH", "--force")
    assert line.count(str(ckpt.resolve())) == 1
    assert hashed.count("tiny.safetensors") == 3
    assert store_state(empty_home) == before and sorted(out.iterdir()) == outputs and tmp_leftovers(empty_home) == []
    r = cli("edit", sid, "a dog", *EDIT, "--out-dir", out, "--force", "-q")
    assert r.code == 0, r.stderr
    assert not np.array_equal(assert_video(Path(r.stdout.strip()), 4), first)  # the changed weight shows
    assert hashed.count("tiny.safetensors") == 3  # its hash is cached now


def test_a_relative_base_folder_is_recorded_absolute(cli, empty_home, tmp_path, tiny_base_dir, clip_mp4,
                                                     monkeypatch):
    monkeypatch.chdir(tiny_base_dir.parent)
    r = cli("tune", clip_mp4, PROMPT, "--base", tiny_base_dir.name, *TUNE, "-q")
    assert r.code == 0, r.stderr
    sid = r.stdout.strip()
    base = artifact(empty_home, sid).manifest["base"]
    assert base == {"name": str(tiny_base_dir), "revision": None, "fingerprint": fingerprint(tiny_base_dir)}
    monkeypatch.chdir(tmp_path)  # an edit from elsewhere finds it
    r = cli("edit", sid, "a dog", *EDIT, "--out-dir", tmp_path / "out", "-q")
    assert (r.code, r.stderr) == (0, ""), r.stderr


def test_single_file_artifact_exports_and_imports_as_official(cli, empty_home, workdir, tmp_path, offline_cache):
    ckpt, cfg = workdir / "tiny.safetensors", workdir / "cfg"
    r = cli("tune", workdir / "clip.mp4", PROMPT, "--base", ckpt, "--base-config", cfg, *TUNE, "-q")
    assert r.code == 0, r.stderr
    sid = r.stdout.strip()
    out = tmp_path / "official"
    r = cli("export", sid, out, "--format", "official", "-q")
    assert (r.code, r.stderr) == (0, ""), r.stderr
    # a single file's folder has configs only: the VAE and text encoder are written from the file's weights
    assert (out / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    assert (out / "text_encoder" / "model.safetensors").is_file()
    assert yaml.safe_load((out / "config.yaml").read_text())["pretrained_model_path"] == str(ckpt.resolve())
    # config.yaml names the file; offline, its configs must be given
    assert_error(cli("import-official", out, "-q"), 2, "--base-config")
    r = cli("import-official", out, "--base-config", cfg, "--name", "back", "-q")
    assert r.code == 0, r.stderr
    orig, back = artifact(empty_home, sid), artifact(empty_home, "back")
    assert_same_tensors(tensors(back, ADAPTER), {k: v.float() for k, v in tensors(orig, ADAPTER).items()})
    assert back.manifest["base"]["sha256"] == orig.manifest["base"]["sha256"]


def test_single_file_base_without_config_offline(empty_home, workdir, tmp_path):
    hf_home = tmp_path / "hf"
    hf_home.mkdir()
    r = run_subprocess(empty_home, "tune", workdir / "clip.mp4", PROMPT, "--base", workdir / "tiny.safetensors",
                       *TUNE, "-q", HF_HUB_OFFLINE="1", HF_HOME=str(hf_home), XDG_CACHE_HOME=str(tmp_path / "cache"))
    line = assert_error(r, 2, "--base-config", "single-file", str(workdir / "tiny.safetensors"))
    assert "HF_HUB_OFFLINE" in line
    assert store_state(empty_home) == ([], {}) and tmp_leftovers(empty_home) == []


# --- 6. a tav YAML config with a single-file base ----------------------------------------------------------------


def test_yaml_config_with_single_file_base_and_base_config(cli, empty_home, workdir, tmp_path, monkeypatch,
                                                           offline_cache):
    config = workdir / "tune.yaml"
    config.write_text(f"""video: clip.mp4
prompt: {PROMPT}
name: from-yaml
base: tiny.safetensors
base_config: cfg
frames: 4
size: 64
stride: 3
steps: 2
device: cpu
inversion_steps: 5
edits:
  prompts: a dog
  steps: 2
""")
    monkeypatch.chdir(tmp_path)  # not the config's folder: its relative paths are still found
    r = cli("tune", "--config", config, "--out-dir", tmp_path / "out", "-q")
    assert r.code == 0, r.stderr
    (sid,) = r.stdout.split()  # -q: only the id; the edit's video is in the edit log
    (edit,) = artifact(empty_home, "from-yaml").edits()
    assert_video(Path(edit["output"]), 4)
    m = artifact(empty_home, "from-yaml").manifest
    assert m["source"]["indices"] == [0, 3, 6, 9] and m["inversion"]["steps"] == 5 and len(m["loss"]) == 2
    assert m["base"]["sha256"] == hashlib.sha256((workdir / "tiny.safetensors").read_bytes()).hexdigest()
    assert m["base"]["config"] == str((workdir / "cfg").resolve())
    assert Path(m["base"]["name"]).resolve() == (workdir / "tiny.safetensors").resolve()
    r = cli("edit", sid, "a cat", *EDIT, "--out-dir", tmp_path / "out", "-q")  # from the recorded base alone
    assert r.code == 0, r.stderr
    assert_video(Path(r.stdout.strip()), 4)
