"""The store commands are for shell loops: they must not pay for importing torch, diffusers or transformers
(seconds each time), which only the commands that load models need."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import json, sys
from typer.testing import CliRunner
from tavcli.faces.cli import app
r = CliRunner().invoke(app, sys.argv[1:])
heavy = sorted(m for m in ("torch", "diffusers", "transformers", "peft") if m in sys.modules)
print(json.dumps({"code": r.exit_code, "stdout": r.stdout, "heavy": heavy}))
"""


@pytest.mark.parametrize("argv", [[], ["--version"], ["list"], ["list", "--json"], ["store"], ["store", "--json"],
                                  ["--help"], ["tune", "--help"], ["show", "nothing"], ["rm", "nothing"],
                                  ["export", "nothing", "x.tav"]])
def test_store_commands_import_no_model_libraries(tmp_path, argv):
    env = {"TAV_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=env, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["code"] == (3 if argv[-1:] in (["nothing"], ["x.tav"]) else 0), result  # 3: not found
    assert result["heavy"] == []
    if argv == []:  # bare `tav`: its help, and success
        assert "Usage: tav" in result["stdout"] and "tune" in result["stdout"]
    if argv == ["list", "--json"]:
        assert json.loads(result["stdout"]) == []


@pytest.fixture(scope="module")
def home_with_artifact(tmp_path_factory, tiny_base_dir):
    """A store holding one tiny tuned artifact named "clip" (tuned in this process, probed in others)."""
    import numpy as np
    from typer.testing import CliRunner

    from tavcli.faces.cli import app
    from tavcli.method.video import write_video

    root = tmp_path_factory.mktemp("light")
    video = write_video(root / "clip.mp4", np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3), np.uint8))
    mp = pytest.MonkeyPatch()
    mp.setenv("TAV_HOME", str(root / "home"))
    r = CliRunner().invoke(app, ["tune", str(video), "a noise square", "--name", "clip", "--base", str(tiny_base_dir),
                                 "--frames", "4", "--size", "64", "--steps", "1", "--device", "cpu", "-q"])
    mp.undo()
    assert r.exit_code == 0, r.output
    return root


def test_show_export_import_rm_import_no_model_libraries(home_with_artifact, tmp_path):
    import shutil

    home = tmp_path / "home"
    shutil.copytree(home_with_artifact / "home", home)
    env = {"TAV_HOME": str(home), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}

    def probe(*argv: str) -> dict:
        out = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=env, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert result["code"] == 0 and result["heavy"] == [], (argv, result)
        return result

    shown = json.loads(probe("show", "clip", "--json")["stdout"])
    assert shown["name"] == "clip" and shown["prompt"] == "a noise square"
    assert probe("export", "clip", str(tmp_path / "clip.tav"))["stdout"].strip() == str(tmp_path / "clip.tav")
    probe("export", "clip", str(tmp_path / "peft"), "--format", "peft")
    assert (tmp_path / "peft" / "adapter_model.safetensors").is_file()
    probe("rm", "clip")
    assert json.loads(probe("list", "--json")["stdout"]) == []
    assert shown["id"].startswith(probe("import", str(tmp_path / "clip.tav"))["stdout"].strip())
