"""The loop users iterate on, from the command line: previews while tuning, checkpoints, and resuming a run.

Tiny random base, 64x64, 2-4 frames, few steps. What must hold: a preview or a checkpoint never changes the
tune (the same adapter as without, bit for bit on the CPU); a tune stopped by SIGINT (a real process) or by a
crash resumes to the adapter an uninterrupted run ends with; bad settings are one line, exit 2, and leave the
store as it was.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tavcli.app.store import Store
from tests.test_cli import (
    PROMPT,
    _invoke,
    assert_error,
    assert_video,
    interrupt,
    make_mp4,
    run_subprocess,
    store_state,
)
from tests.test_cli import empty_home  # noqa: F401 (a fixture)

LOOP = ("--frames", "2", "--size", "64")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as test_cli: the same kernels in-process as in a `tav` subprocess
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def source_mp4(tmp_path_factory) -> Path:
    return make_mp4(tmp_path_factory.mktemp("src") / "slide.mp4")


@pytest.fixture
def home(empty_home) -> Path:
    return empty_home


def tav(home: Path, *args: object):
    return _invoke(*args, env={"TAV_HOME": str(home)})


def tensors(home: Path, short_id: str, folder: str = "adapter") -> dict[str, torch.Tensor]:
    (artifact,) = [a for a in Store(home).list() if a.id.startswith(short_id)]
    return load_file(artifact.path / folder / "adapter_model.safetensors")


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and a
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


def manifest(home: Path, short_id: str) -> dict:
    r = tav(home, "show", short_id, "--json")
    assert r.code == 0, r.stderr
    return json.loads(r.stdout)


def runs(home: Path) -> list[dict]:
    r = tav(home, "resume", "--list", "--json")
    assert r.code == 0, r.stderr
    return json.loads(r.stdout)


# --- previews and checkpoints ------------------------------------------------------------------------------------


@pytest.mark.parametrize("adapter", ["full", "lora"])
def test_previews_and_checkpoints_leave_the_tune_as_it_is(home, tmp_path, source_mp4, tiny_base_dir, adapter):
    common = (source_mp4, PROMPT, "--base", tiny_base_dir, *LOOP, "--steps", "4", "--adapter", adapter, "--rank", "2")
    plain = tav(home, "tune", *common)
    assert plain.code == 0, plain.stderr
    r = tav(home, "tune", *common, "--preview", "a blue square", "--preview", "a green square", "--preview-every", "2",
            "--preview-steps", "3", "--checkpoint-every", "2")
    assert r.code == 0, r.stderr
    plain_id, looped_id = plain.stdout.strip(), r.stdout.strip()
    assert_same(tensors(home, plain_id), tensors(home, looped_id))  # previews and checkpoints change nothing
    m = manifest(home, looped_id)
    assert m["loss"] == manifest(home, plain_id)["loss"]

    # the checkpoints are the adapter after steps 2 and 4, written as the final one is: step 4 is the final
    assert [(c["step"], c["folder"]) for c in m["checkpoints"]] == [(2, "checkpoints/step-000002"),
                                                                   (4, "checkpoints/step-000004")]
    assert_same(tensors(home, looped_id, "checkpoints/step-000004"), tensors(home, looped_id))
    early = tensors(home, looped_id, "checkpoints/step-000002")
    assert not all(torch.equal(early[k], v) for k, v in tensors(home, looped_id).items())
    dtype = torch.float16 if adapter == "full" else torch.float32
    assert {t.dtype for t in early.values()} == {dtype}

    # the previews: one per prompt and step, kept, each announced on stderr when written
    assert [(p["step"], p["prompt"]) for p in m["previews"]] == [
        (2, "a blue square"), (2, "a green square"), (4, "a blue square"), (4, "a green square")]
    path = Path(m["path"])
    for p in m["previews"]:
        assert p["file"] == f"previews/step-{p['step']:06d}-{p['prompt'].replace(' ', '-')}.mp4"
        assert_video(path / p["file"], 2)
    announced = [line for line in r.stderr.splitlines() if line.startswith("tav: preview at step ")]
    assert len(announced) == 4 and announced[0].endswith("previews/step-000002-a-blue-square.mp4")
    assert announced[1].startswith("tav: preview at step 2: ")

    shown = tav(home, "show", looped_id).stdout
    assert "checkpoint step 2, " in shown and "checkpoint step 4, " in shown
    assert f"preview   step 4: 'a green square' -> {path / 'previews/step-000004-a-green-square.mp4'}" in shown
    listed = {row["short_id"]: row for row in json.loads(tav(home, "list", "--json").stdout)}
    assert listed[looped_id]["checkpoints"] == [2, 4] and listed[looped_id]["checkpoint_bytes"] > 0
    assert listed[plain_id]["checkpoints"] == [] and listed[plain_id]["checkpoint_bytes"] == 0
    assert runs(home) == [] and not [p for p in (home / "runs").iterdir() if p.name != "finished.jsonl"]


@pytest.mark.parametrize("flags, words", [
    (("--preview", "a", "--preview-every", "0"), ("--preview-every must be at least 1, got 0",)),
    (("--preview", "a", "--preview-every", "5"), ("--preview-every 5 is more than the 4 tuning steps; use 1 to 4",)),
    (("--checkpoint-every", "0"), ("--checkpoint-every must be at least 1, got 0",)),
    (("--checkpoint-every", "9"), ("--checkpoint-every 9 is more than the 4 tuning steps; use 1 to 4",)),
    (("--preview-every", "2"), ("--preview-every has nothing to render; add --preview PROMPT",)),
    (("--preview", " "), ("--preview is empty",)),
    (("--preview", "a", "--preview-steps", "0"), ("--preview-steps must be at least 1",)),
])
def test_bad_loop_settings_are_one_line_and_change_nothing(home, source_mp4, tiny_base_dir, flags, words):
    before = store_state(home)
    r = tav(home, "tune", source_mp4, PROMPT, "--base", tiny_base_dir, *LOOP, "--steps", "4", *flags)
    assert_error(r, 2, *words)
    assert store_state(home) == before and runs(home) == []


# --- resume ---------------------------------------------------------------------------------------------------------


def _tav_config(tmp_path: Path, source_mp4: Path, tiny_base_dir: Path, steps: int) -> Path:
    config = tmp_path / "run.yaml"
    config.write_text(f"video: {source_mp4}\nprompt: {PROMPT}\nbase: {tiny_base_dir}\nframes: 2\nsize: 64\n"
                      f"steps: {steps}\ninversion_steps: 2\npreview: [a blue square]\npreview_every: 10\n"
                      "preview_steps: 2\n")
    return config


def test_sigint_then_resume_ends_bit_identical_to_an_uninterrupted_run(home, tmp_path, source_mp4, tiny_base_dir):
    steps = 30
    config = _tav_config(tmp_path, source_mp4, tiny_base_dir, steps)
    code, stderr = interrupt(home, "tune", "--config", config)
    assert code == 130, stderr
    (run,) = runs(home)
    assert run["status"] == "stopped" and 0 < run["step"] < steps and run["steps"] == steps
    assert stderr.splitlines()[-1] == (f"tav: interrupted at step {run['step']} of {steps}; `tav resume {run['id']}` "
                                       "continues it")
    assert Store(home).list() == []  # nothing half-written in the store
    shown = run_subprocess(home, "store")
    assert shown.code == 0 and "1 stopped run, " in shown.stdout and "`tav resume --list`" in shown.stdout

    resumed = tav(home, "resume", run["id"][:4])  # in this process: the same bits as in another
    assert resumed.code == 0, resumed.stderr
    assert f"tav: resuming run {run['id']} at step {run['step']}" in resumed.stderr
    reference = tav(home, "tune", "--config", config)
    assert reference.code == 0, reference.stderr
    resumed_id, reference_id = resumed.stdout.strip(), reference.stdout.strip()
    assert_same(tensors(home, resumed_id), tensors(home, reference_id))
    assert manifest(home, resumed_id)["loss"] == manifest(home, reference_id)["loss"]
    previews = [(p["step"], p["prompt"]) for p in manifest(home, resumed_id)["previews"]]
    assert previews == [(10, "a blue square"), (20, "a blue square"), (30, "a blue square")]
    assert runs(home) == []

    assert_error(tav(home, "resume", run["id"]), 2, f"run {run['id']} is finished", f"tav show {resumed_id}")
    assert_error(tav(home, "resume", "feedbeef"), 3, "no run matches 'feedbeef'", "tav resume --list")
    assert_error(tav(home, "resume"), 3, "no stopped run to resume")


def _official(tmp_path: Path, source_mp4: Path, tiny_base_dir: Path, resume: bool) -> Path:
    config = tmp_path / ("resume.yaml" if resume else "fresh.yaml")
    config.write_text(f"""pretrained_model_path: "{tiny_base_dir}"
train_data:
  video_path: "{source_mp4}"
  prompt: "{PROMPT}"
  n_sample_frames: 2
  width: 64
  height: 64
validation_data:
  prompts: ["a blue square"]
  num_inference_steps: 2
  guidance_scale: 12.5
  use_inv_latent: True
  num_inv_steps: 2
max_train_steps: 6
checkpointing_steps: 2
validation_steps: 3
seed: 33
mixed_precision: "no"
gradient_checkpointing: False
""" + ("resume_from_checkpoint: latest\n" if resume else ""))
    return config


def test_a_crashed_official_run_resumes_from_its_last_checkpoint(home, tmp_path, source_mp4, tiny_base_dir,
                                                                 monkeypatch):
    from tavcli.app import jobs

    out = tmp_path / "out"
    config = _official(tmp_path, source_mp4, tiny_base_dir, resume=True)
    afresh = tav(home, "tune", "--config", config, "--out-dir", out)  # resume_from_checkpoint: no run yet
    assert afresh.code == 0, afresh.stderr
    assert f"tav: resume_from_checkpoint: no stopped run of {config}; tuning starts afresh" in afresh.stderr
    assert "ignored keys" not in afresh.stderr  # validation_steps, checkpointing_steps: all applied
    m = manifest(home, afresh.stdout.split()[0])
    assert [c["step"] for c in m["checkpoints"]] == [2, 4, 6]
    assert [p["step"] for p in m["previews"]] == [3, 6]
    assert len(afresh.stdout.split()) == 2  # and the validation edit after it, as before

    real = jobs._Between.__call__

    def crash_at_step_5(self, loop):
        if loop.step == 5:
            raise RuntimeError("the GPU fell off the bus")
        real(self, loop)

    monkeypatch.setattr(jobs._Between, "__call__", crash_at_step_5)
    crashed = tav(home, "tune", "--config", config, "--out-dir", out)
    assert crashed.code == 1 and "the GPU fell off the bus" in crashed.stderr
    (run,) = runs(home)
    assert run["step"] == 4 and run["config"] == str(config)  # the state of the last checkpoint
    monkeypatch.setattr(jobs._Between, "__call__", real)

    resumed = tav(home, "tune", "--config", config, "--out-dir", out)
    assert resumed.code == 0, resumed.stderr
    assert f"tav: resuming run {run['id']} at step 4 (resume_from_checkpoint: latest)" in resumed.stderr
    resumed_id = resumed.stdout.split()[0]
    assert_same(tensors(home, resumed_id), tensors(home, afresh.stdout.split()[0]))
    for step in (2, 4, 6):
        folder = f"checkpoints/step-{step:06d}"
        assert_same(tensors(home, resumed_id, folder), tensors(home, afresh.stdout.split()[0], folder))
    assert runs(home) == []


def test_discard_a_run(home, tmp_path, source_mp4, tiny_base_dir, monkeypatch):
    from tavcli.app import jobs

    def crash(self, loop):
        self.run.save_state(loop, lambda folder: self.tav.save_adapter(folder, torch.float32))
        raise RuntimeError("killed")

    monkeypatch.setattr(jobs._Between, "__call__", crash)
    r = tav(home, "tune", source_mp4, PROMPT, "--base", tiny_base_dir, *LOOP, "--steps", "3")
    assert r.code == 1
    (run,) = runs(home)
    assert run["step"] == 1 and run["bytes"] > 0
    assert_error(tav(home, "resume", "--discard"), 2, "--discard needs the RUN")
    d = tav(home, "resume", "--discard", run["id"])
    assert d.code == 0 and d.stdout.strip() == run["id"]
    assert runs(home) == [] and not (home / "runs" / run["id"]).exists()
    assert "stopped run" not in tav(home, "store").stdout
