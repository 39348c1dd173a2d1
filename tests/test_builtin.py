"""Built-in random bases (`random:tiny`, `random:sd-v1`) and `tav demo` (issue #13)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tavcli.app import builtin
from tavcli.app.manifest import Manifest, open_store
from tavcli.errors import BadInput
from tavcli.method.models import fingerprint
from tests.test_cli import _invoke, assert_error, cli, mp4_frames  # noqa: F401 (cli is a fixture)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("TAV_HOME", str(tmp_path / "home"))
    return tmp_path / "cache"


def test_an_unknown_random_base_lists_the_known_ones(cache):
    with pytest.raises(BadInput, match="'random:huge'.*random:tiny, random:sd-v1"):
        builtin.locate("random:huge")
    assert builtin.locate("CompVis/stable-diffusion-v1-4") == "CompVis/stable-diffusion-v1-4"


def test_random_tiny_is_built_once_and_the_same_each_time(cache, tmp_path):
    folder = Path(builtin.locate("random:tiny"))
    assert folder == cache / "tav" / "bases" / "random-tiny-seed0" and (folder / "model_index.json").is_file()
    first = fingerprint(folder)
    mtime = (folder / "unet" / "config.json").stat().st_mtime
    assert builtin.locate("random:tiny") == str(folder) and (folder / "unet" / "config.json").stat().st_mtime == mtime
    (tmp_path / "again").mkdir()
    builtin._build("tiny", tmp_path / "again" / "tiny")  # another machine, or a cleared cache: the same weights
    assert fingerprint(tmp_path / "again" / "tiny") == first


def test_a_random_base_artifact_records_its_name_and_edits_anywhere(cli, cache, tmp_path, monkeypatch):
    clip = builtin.synthetic_clip(tmp_path / "clip.mp4", frames=4, size=64)
    r = cli("tune", clip, "waves", "--base", "random:tiny", "--frames", "4", "--size", "64", "--steps", "2",
            "--inversion-steps", "2", "--name", "waves", "-q")
    assert r.code == 0, r.stderr
    m = Manifest.of(open_store().resolve("waves"))
    assert m.base.name == "random:tiny" and m.base.fingerprint == fingerprint(builtin.locate("random:tiny"))
    r = cli("list")
    assert r.code == 0 and "full*" in r.stdout and "random base" in r.stdout
    assert "random:tiny (built-in random weights" in cli("show", "waves").stdout
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "elsewhere"))  # a machine that has not built it yet
    r = cli("edit", "waves", "a dog", "--steps", "2", "--out-dir", tmp_path / "out", "-q")
    assert r.code == 0, r.stderr
    assert mp4_frames(Path(r.stdout.strip())).shape == (4, 64, 64, 3)
    assert_error(cli("tune", clip, "x", "--base", "random:huge", "-q"), 2, "random:tiny, random:sd-v1")


def test_demo_runs_the_whole_loop(cache, tmp_path):
    r = _invoke("demo", "--out-dir", tmp_path / "demo")
    assert r.code == 0, r.stderr
    commands = [line for line in r.stdout.splitlines() if line.startswith("$ tav ")]
    assert [c.split()[2] for c in commands] == ["tune", "edit", "show", "export", "rm", "import", "list"]
    assert "--base random:tiny" in commands[0]
    edits = sorted((tmp_path / "demo" / "edits").iterdir())
    assert [p.name for p in edits] == ["waves-a-sunset-over-the-sea.mp4", "waves-colour-waves-van-gogh-style.mp4"]
    assert (tmp_path / "demo" / "waves.tav").is_file()
    (artifact,) = open_store(tmp_path / "demo" / "store").list()
    assert artifact.name == "waves" and Manifest.of(artifact).base.name == "random:tiny"
    assert json.loads(_invoke("list", "--json", env={"TAV_HOME": str(tmp_path / "home")}).stdout) == []  # not ours
