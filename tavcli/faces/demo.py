"""`tav demo`: the whole loop on a synthetic clip and the built-in random:tiny base, in under a minute on a
CPU and with nothing to download. Each command is printed as a user would type it, then run in this process
(the same code as the real command, without paying for Python and torch to start again each time)."""

from __future__ import annotations

import os
import shlex
import secrets
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import typer

from tavcli.app.builtin import synthetic_clip

CAPTION = "colour waves drift across the frame"
PROMPTS = ("colour waves, Van Gogh style", "a sunset over the sea")


def _commands(name: str) -> list[list[str]]:
    return [
        ["tune", "clip.mp4", CAPTION, "--name", name, "--base", "random:tiny", "--frames", "4", "--size", "64",
         "--steps", "10", "--inversion-steps", "10"],
        ["edit", name, *PROMPTS, "--steps", "10", "--out-dir", "edits"],
        ["show", name],
        ["export", name, f"{name}.tav"],
        ["rm", name],
        ["import", f"{name}.tav"],
        ["list"],
    ]


@contextmanager
def _in(folder: Path, home: Path) -> Iterator[None]:
    """cwd `folder` and TAV_HOME `home` for the demo's commands; both put back afterwards."""
    cwd, old = Path.cwd(), os.environ.get("TAV_HOME")
    os.chdir(folder)
    os.environ["TAV_HOME"] = str(home)
    try:
        yield
    finally:
        os.chdir(cwd)
        if old is None:
            os.environ.pop("TAV_HOME", None)
        else:
            os.environ["TAV_HOME"] = old


def run(app: typer.Typer, out_dir: Path | None, store: Path | None) -> int:
    """Run the demo; returns the exit code of the first command that failed, else 0."""
    folder = Path(out_dir or tempfile.mkdtemp(prefix="tav-demo-")).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    home = Path(store).resolve() if store else folder / "store"
    # in a store of the user's, a name of its own: the demo removes and re-imports what it made
    name = f"demo-{secrets.token_hex(2)}" if store else "waves"
    synthetic_clip(folder / "clip.mp4", frames=8, size=64)
    command = typer.main.get_command(app)
    typer.echo(f"$ cd {shlex.quote(str(folder))}   # clip.mp4: 8 synthetic frames, made by the demo")
    typer.echo(f"$ export TAV_HOME={shlex.quote(str(home))}")
    with _in(folder, home):
        for args in _commands(name):
            typer.echo("$ " + shlex.join(["tav", *args]), color=False)
            code = command.main(args, prog_name="tav", standalone_mode=False)
            if isinstance(code, int) and code != 0:
                return code
    typer.echo(f"# done: the edits are in {folder / 'edits'}, the export is {folder / (name + '.tav')}; "
               f"the store is {home}" + ("" if store else " (delete the folder when you are done)"))
    typer.echo("# random:tiny has random weights, so the videos are noise: with a real base "
               "(e.g. --base CompVis/stable-diffusion-v1-4) and a GPU, the same commands make real edits")
    return 0
