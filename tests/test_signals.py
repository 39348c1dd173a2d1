"""Real signals at real moments: the commit point is the boundary of `tav tune`'s exit-code contract, and
`tav edit` keeps, prints and records each video as one step.

Before a tune's commit (the store's rename), an interrupt ends tav with 130 and the store as it was (once tuning
and inversion are done, none stops it); from the commit on, tav exits 0 with the id on stdout, whatever
arrives; never a traceback. The processes of a test
run side by side, each on its own store, with the tiny base: a few seconds each.
"""

from __future__ import annotations

import json
import queue
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tavcli.app.store import Store
from tests.test_cli import PROMPT, TAV, _invoke, _subprocess_env, make_mp4, store_state, tmp_leftovers

TUNE = ("--frames", "4", "--size", "64", "--steps", "2", "--inversion-steps", "2")


@dataclass
class Signalled:
    """A `tav` process that gets `sig` `delay` seconds after a stderr line starting with `trigger`."""

    home: Path
    args: tuple
    trigger: str
    delay: float
    sig: int = signal.SIGINT
    proc: subprocess.Popen | None = None
    stderr: list[str] = field(default_factory=list)
    stdout: queue.Queue = field(default_factory=queue.Queue)
    stdout_at_signal: list[str] = field(default_factory=list)
    sent: bool = False

    def start(self) -> Signalled:
        self.proc = subprocess.Popen([TAV, *map(str, self.args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=_subprocess_env(self.home))
        threading.Thread(target=self._watch, daemon=True).start()
        threading.Thread(target=lambda: [self.stdout.put(line) for line in self.proc.stdout], daemon=True).start()
        return self

    def _watch(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line)
            if not self.sent and line.startswith(self.trigger):
                self.sent = True
                time.sleep(self.delay)
                self.stdout_at_signal = self._drain(wait=0.0)
                self.proc.send_signal(self.sig)

    def _drain(self, wait: float) -> list[str]:
        lines = []
        while True:
            try:
                lines.append(self.stdout.get(timeout=wait))
            except queue.Empty:
                return lines

    def finish(self) -> tuple[int, str, str]:
        try:
            code = self.proc.wait(timeout=120)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        time.sleep(0.2)  # the reader threads see the pipes' ends
        out = "".join(self.stdout_at_signal + self._drain(wait=0.5))
        return code, out, "".join(self.stderr)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_mp4(tmp_path_factory.mktemp("src") / "slide.mp4")


def _home(root: Path, name: str) -> Path:
    Store(root / name)
    return root / name


def _assert_clean(stderr: str) -> None:
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert all(line.startswith("tav: ") for line in stderr.splitlines()), stderr


def test_tune_commit_point_is_the_boundary(tmp_path, clip, tiny_base_dir):
    """Signals before, around and after the commit: 130 and an unchanged store, or 0 and the id; nothing else."""
    cases = {  # name: (trigger, delay, signal, the outcome it must have, or None where either is right)
        "sigterm-tuning": ("tav: tuning", 0.0, signal.SIGTERM, 130),
        "saving+0.02": ("tav: saving", 0.02, signal.SIGINT, 0),  # tuned and inverted: it is stored
        "stored": ("tav: stored", 0.0, signal.SIGINT, 0),
        "sigterm-stored+0.3": ("tav: stored", 0.3, signal.SIGTERM, 0),  # while tav exits: library exit hooks run
    }
    runs = {name: Signalled(_home(tmp_path, name), ("tune", clip, PROMPT, "--name", "clip", "--base", tiny_base_dir,
                                                    *TUNE), trigger, delay, sig).start()
            for name, (trigger, delay, sig, _) in cases.items()}
    seen = set()
    for name, run in runs.items():
        code, out, err = run.finish()
        expected = cases[name][3]
        _assert_clean(err)
        assert run.sent, (name, err)
        assert code in (0, 130) and (expected is None or code == expected), (name, code, err)
        listing = store_state(run.home)[0]
        if code == 130:  # stopped while tuning: nothing stored (the run is kept for `tav resume`)
            assert out == "" and listing == [], (name, out, listing)
            last = err.splitlines()[-1]
            assert last.startswith("tav: ") and "interrupted" in last, (name, err)
        else:
            (artifact,) = Store(run.home).list()
            assert out == f"{artifact.short_id}\n" and artifact.name == "clip", (name, out)
            Store(run.home).verify(artifact)
        assert tmp_leftovers(run.home) == [], name
        seen.add(code)
    assert seen == {0, 130}


def test_edit_prints_each_path_once_written_and_an_interrupt_keeps_it(tmp_path, clip, tiny_base_dir):
    home = _home(tmp_path, "home")
    tuned = _invoke("tune", clip, PROMPT, "--name", "clip", "--base", tiny_base_dir, *TUNE, env={"TAV_HOME": str(home)})
    assert tuned.code == 0, tuned.stderr
    out_dir = tmp_path / "out"
    run = Signalled(home, ("edit", "clip", "a blue car", "a green tree", "--steps", "30", "--out-dir", out_dir),
                    "tav: editing: a green tree", 0.3).start()
    code, out, err = run.finish()
    _assert_clean(err)
    first = out_dir / "clip-a-blue-car.mp4"
    # The first path was on stdout while the second prompt ran, before any signal.
    assert run.stdout_at_signal == [f"{first}\n"], (run.stdout_at_signal, err)
    assert code == 130 and out == f"{first}\n", (code, out, err)
    assert sorted(out_dir.iterdir()) == [first]  # the interrupted one left nothing, not even its reserved name
    edits = json.loads(subprocess.run([TAV, "show", "clip", "--json"], capture_output=True, text=True,
                                      env=_subprocess_env(home)).stdout)["edits"]
    assert [e["output"] for e in edits] == [str(first.resolve())]
    last = err.splitlines()[-1]
    assert last.startswith("tav: interrupted; kept 1 video") and str(first) in last, last
    assert "store is as it was" not in err
    shutil.rmtree(out_dir)
