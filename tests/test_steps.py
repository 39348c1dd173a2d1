"""REF@STEP, kept inversions, `tav invert`, `tav edit --reconstruct`, `tav prune` (issue #10, parts 2 and 5).

The checkpointed artifact here is built from two real tunes with the same seed: "one" (1 step) and "two" (2
steps); "both" is "two" with "one"'s adapter kept as its step-1 checkpoint, which is what tuning 2 steps with
`--checkpoint-every 1` keeps (the same trajectory: the first step does not depend on the step count).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tavcli.app import refs
from tavcli.app.manifest import Checkpoint, Manifest, edits_of, open_store
from tavcli.errors import BadInput
from tavcli.method.params import FrameSampling
from tavcli.method.metrics import psnr
from tests.test_cli import (
    PROMPT,
    TUNE,
    _invoke,
    assert_error,
    png_folder_frames,
    private_home,
    store_state,
    tmp_leftovers,
)
from tests.test_cli import _one_thread, cli, source_mp4  # noqa: F401 (fixtures)

EDIT = ("--steps", "2", "--format", "png")


@pytest.fixture(scope="module")
def stepped_home(tmp_path_factory, tiny_base_dir, source_mp4, _one_thread) -> Path:
    home = tmp_path_factory.mktemp("stepped") / "home"
    for name, steps in (("one", "1"), ("two", "2")):
        args = [a if a != "2" else steps for a in TUNE]  # TUNE ends in --steps 2
        r = _invoke("tune", source_mp4, PROMPT, "--name", name, "--base", tiny_base_dir, *args,
                    "--inversion-steps", "5", env={"TAV_HOME": str(home)})
        assert r.code == 0, r.stderr
    store = open_store(home)
    one, two = (store.resolve(n) for n in ("one", "two"))
    m = Manifest.of(two)
    with store.staging() as stage:
        shutil.copytree(two.path, stage, dirs_exist_ok=True, ignore=shutil.ignore_patterns("manifest.json", "*.jsonl"))
        shutil.copytree(one.path / "adapter", stage / "checkpoints" / "step-000001")
        content = m.to_json() | {"name": "both", "checkpoints": [Checkpoint(1, "checkpoints/step-000001").to_json()]}
        store.commit(stage, content)
    return home


@pytest.fixture
def home(tmp_path, monkeypatch, stepped_home) -> Path:
    return private_home(stepped_home, tmp_path / "home", monkeypatch)


def _show(cli, ref: str) -> dict:
    r = cli("show", ref, "--json")
    assert r.code == 0, r.stderr
    return json.loads(r.stdout)


def test_split_reads_ref_at_step():
    assert refs.split("slide") == ("slide", None)
    assert refs.split("slide@100") == ("slide", 100)
    assert refs.split("2e3c47@0") == ("2e3c47", 0)
    for bad in ("slide@", "@100", "slide@x", "slide@-1", "slide@1.5"):
        with pytest.raises(BadInput, match="is not REF@STEP"):
            refs.split(bad)


def test_a_checkpoint_edits_with_its_adapter_and_keeps_its_inversion(cli, home, tmp_path):
    assert [c["inversion"] for c in _show(cli, "both")["checkpoints"]] == [False]
    r = cli("edit", "both@1", "a dog", *EDIT, "--out-dir", tmp_path)
    assert r.code == 0, r.stderr
    assert "first edit" in r.stderr and Path(r.stdout.strip()).name == "both-at-1-a-dog"
    first = png_folder_frames(Path(r.stdout.strip()))
    shown = _show(cli, "both")
    assert shown["checkpoints"][0]["inversion"] is True and shown["checkpoints"][0]["bytes"] > 0
    (kept,) = shown["inversions"]
    assert (kept["name"], kept["step"], kept["steps"], kept["source"]) == ("step-1", 1, 5, "source.mp4")
    assert shown["edits"][-1]["step"] == 1

    r = cli("edit", "both@1", "a dog", *EDIT, "--out-dir", tmp_path)  # reuses the kept inversion
    assert r.code == 0 and "first edit" not in r.stderr, r.stderr
    np.testing.assert_array_equal(png_folder_frames(Path(r.stdout.strip())), first)

    # the same computation by hand: the 1-step tune's adapter, inverted from the stored clip, then edited
    r = cli("invert", "one", "--steps", "5", "--name", "src")
    assert (r.code, r.stdout.strip()) == (0, "src"), r.stderr
    r = cli("edit", "one", "a dog", *EDIT, "--inversion", "src", "--out-dir", tmp_path)
    assert r.code == 0, r.stderr
    np.testing.assert_array_equal(png_folder_frames(Path(r.stdout.strip())), first)
    assert edits_of(open_store(home).resolve("one"))[-1].inversion_name == "src"

    r = cli("edit", "both", "a dog", *EDIT, "--out-dir", tmp_path)  # the final adapter renders otherwise
    assert r.code == 0, r.stderr
    assert not np.array_equal(png_folder_frames(Path(r.stdout.strip())), first)


def test_a_step_that_was_not_kept_is_refused(cli, home, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = store_state(home)
    assert_error(cli("edit", "both@5", "a dog"), 2, "no adapter at step 5", "kept steps are 1, 2", "--checkpoint-every")
    assert_error(cli("edit", "both@x", "a dog"), 2, "'both@x' is not REF@STEP")
    assert_error(cli("show", "one@2"), 2, "kept steps are 1")
    assert cli("show", "one@1").code == 0  # the final step is always kept: the artifact's own adapter
    assert_error(cli("edit", "nothing@1", "a dog"), 3, "no artifact matches 'nothing'")
    assert_error(cli("export", "both@1", tmp_path / "x.tav"), 2, "whole artifact", "--format peft")
    assert_error(cli("rm", "both@2"), 2, "final adapter", "tav rm both")
    assert store_state(home) == before and list(tmp_path.iterdir()) == [home]


def test_show_and_export_of_a_checkpoint(cli, home, tmp_path):
    shown = _show(cli, "both@1")
    assert shown["step"] == 1 and shown["name"] == "both"
    r = cli("show", "both@1")
    assert r.code == 0 and "step      1 (a kept checkpoint" in r.stdout, r.stderr
    r = cli("export", "both@1", tmp_path / "peft", "--format", "peft")
    assert r.code == 0, r.stderr
    one = open_store(home).resolve("one").path / "adapter"
    for f in ("adapter_config.json", "adapter_model.safetensors"):
        assert (tmp_path / "peft" / f).read_bytes() == (one / f).read_bytes()


def test_invert_more_steps_and_other_frames(cli, home, tmp_path, source_mp4):
    r = cli("invert", "two", "--steps", "8", "--json", "-q")
    assert r.code == 0, r.stderr
    kept = json.loads(r.stdout)
    assert (kept["name"], kept["steps"], kept["step"], len(kept["indices"])) == ("8-steps-4-frames", 8, 2, 4)
    r = cli("invert", "two", "--frames", "3", "--stride", "2", "-q")  # other frames: read from the original clip
    assert (r.code, r.stdout.strip()) == (0, "5-steps-3-frames"), r.stderr
    (three,) = [i for i in _show(cli, "two")["inversions"] if i["name"] == "5-steps-3-frames"]
    assert three["indices"] == [0, 2, 4] and three["source"] == str(source_mp4.resolve())
    r = cli("edit", "two", "a dog", *EDIT, "--inversion", "5-steps-3-frames", "--out-dir", tmp_path)
    assert r.code == 0, r.stderr
    assert png_folder_frames(Path(r.stdout.strip())).shape[0] == 3
    assert_error(cli("edit", "two", "a dog", "--inversion", "nope"), 3, "no inversion named 'nope'", "8-steps-4-frames")
    assert_error(cli("edit", "two", "a dog", "--inversion", "8-steps-4-frames", "--no-inversion"), 2, "exclude")
    assert_error(cli("invert", "two", "--name", "8-steps-4-frames"), 2, "already keeps")


def test_invert_needs_the_video_when_the_original_moved(cli, home, tmp_path, source_mp4):
    moved = tmp_path / "moved.mp4"
    shutil.copy(source_mp4, moved)
    before = store_state(home)
    original = Manifest.of(open_store(home).resolve("two")).source.path
    Path(original).rename(tmp_path / "away.mp4")
    try:
        assert_error(cli("invert", "two", "--frames", "3"), 2, "not at its recorded path", "--video")
        assert_error(cli("invert", "two", "--frames", "99", "--video", moved), 2, "99")
        assert store_state(home) == before and tmp_leftovers(home) == []
        r = cli("invert", "two", "--frames", "3", "--video", moved, "-q")
        assert r.code == 0, r.stderr
    finally:
        (tmp_path / "away.mp4").rename(original)


def test_reconstruct_prints_the_psnr_of_the_inversion(cli, home, tmp_path):
    r = cli("edit", "two", "--reconstruct", "--steps", "5", "--format", "png", "--out-dir", tmp_path)
    assert r.code == 0, r.stderr
    path, value = r.stdout.strip().split("\t")
    frames = png_folder_frames(Path(path))
    from tavcli.app import inversions

    target = refs.resolve(open_store(home), "two")
    source = inversions.source_frames(target, None, None)[0]
    assert float(value) == pytest.approx(psnr(frames, source), abs=0.01) and float(value) > 5
    record = edits_of(target.artifact)[-1]
    assert (record.prompt, record.guidance, record.psnr) == (PROMPT, 1.0, pytest.approx(float(value), abs=0.01))
    assert_error(cli("edit", "two", "a dog", "--reconstruct"), 2, "no prompts")


def test_prune_drops_checkpoints_and_keeps_the_rest(cli, home, tmp_path):
    r = cli("edit", "both@1", "a dog", *EDIT, "--out-dir", tmp_path)  # a kept inversion that goes with it
    assert r.code == 0, r.stderr
    old = _show(cli, "both")
    r = cli("prune", "both", "--keep", "1")  # nothing to drop: same artifact
    assert (r.code, r.stdout.strip()) == (0, old["id"][:12]), r.stderr
    r = cli("rm", "both@1")
    assert r.code == 0, r.stderr
    new = _show(cli, "both")
    assert r.stdout.strip() == new["id"][:12] != old["id"][:12]
    assert new["checkpoints"] == [] and new["inversions"] == [] and new["edits"] == old["edits"]
    assert not any(rel.startswith("checkpoints/") for rel in new["files"])
    assert not (home / "artifacts" / old["id"]).exists() and tmp_leftovers(home) == []
    assert_error(cli("show", "both@1"), 2, "kept steps are 2")
    r = cli("edit", "both", "a dog", *EDIT, "--out-dir", tmp_path)
    assert r.code == 0, r.stderr


def test_a_tune_with_checkpoints_edits_each_kept_step(cli, tmp_path, monkeypatch, tiny_base_dir, source_mp4):
    home = tmp_path / "fresh"
    monkeypatch.setenv("TAV_HOME", str(home))
    r = cli("tune", source_mp4, PROMPT, "--name", "kept", "--base", tiny_base_dir, *TUNE, "--inversion-steps", "3",
            "--checkpoint-every", "1", "-q")
    assert r.code == 0, r.stderr
    shown = _show(cli, "kept")
    assert [c["step"] for c in shown["checkpoints"]] == [1, 2] and not any(c["inversion"] for c in shown["checkpoints"])
    r = cli("edit", "kept@1", "a dog", *EDIT, "--out-dir", tmp_path)
    assert r.code == 0 and "first edit" in r.stderr, r.stderr
    assert [c["inversion"] for c in _show(cli, "kept")["checkpoints"]] == [True, False]
    r = cli("prune", "kept")
    assert r.code == 0 and _show(cli, "kept")["checkpoints"] == [], r.stderr


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _invert_again(cli, home, ref: str, name: str) -> torch.Tensor:
    """`tav invert REF` with the tuning's own 5 steps, its latents."""
    from safetensors.torch import load_file

    r = cli("invert", ref, "--steps", "5", "--name", name, "--json", "-q")
    assert r.code == 0, r.stderr
    again = json.loads(r.stdout)
    assert again["source"] == "source.mp4" and again["steps"] == 5
    return load_file(open_store(home).resolve(ref).path / again["file"])["latents"]


def test_a_re_inversion_reads_the_very_frames_tuning_read_and_gives_back_its_inversion(cli, home, tmp_path):
    """`tav invert` with the tuning's settings gives back the inversion tuning stored, to float round-off (the
    adapter is reloaded as base + delta), where an inversion of the H.264 copy is far off; so are strength < 1
    edits and `--reconstruct`, which invert the same frames."""
    from safetensors.torch import load_file

    from tavcli.app import inversions
    from tavcli.method.video import read_video

    store = open_store(home)
    target = refs.resolve(store, "two")
    m = target.manifest
    kept = inversions.tuned_frames(target)
    from_mp4 = read_video(target.artifact.file("source.mp4"), FrameSampling(frames=m.video.frames), m.video.width,
                          m.video.height).frames
    assert kept.shape == from_mp4.shape and kept.dtype == np.uint8
    assert not np.array_equal(kept, from_mp4)  # H.264 moved some levels: the mp4 is not what tuning read
    stored = load_file(target.artifact.file(inversions.LATENTS))["latents"]
    assert _rel(_invert_again(cli, home, "two", "again"), stored) < 1e-3  # 1.6e-4 on 2026-12-04

    with store.staging() as stage:  # the same artifact as tav wrote it before 2026-12-04: source.mp4 alone
        shutil.copytree(target.artifact.path, stage, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("manifest.json", "*.jsonl", "added", inversions.SOURCE_FRAMES))
        store.commit(stage, m.to_json() | {"name": "older"})
    assert not refs.resolve(store, "older").manifest.has_file(inversions.SOURCE_FRAMES)
    assert np.array_equal(inversions.tuned_frames(refs.resolve(store, "older")), from_mp4)  # read as before
    assert _rel(_invert_again(cli, home, "older", "again"), stored) > 1e-2  # 0.62: the tiny VAE is sensitive
