"""The one home of every setting: defaults and bounds in the settings classes, flat options built into jobs,
the CLI's help and flags, tav's YAML and the official YAML all reaching the same fields."""

from __future__ import annotations

import math
import re
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tavcli.app import jobs
from tavcli.app.configs import load_config
from tavcli.engine.runtime import Runtime
from tavcli.errors import BadInput, SettingError
from tavcli.faces.cli import app
from tavcli.method.params import AdapterSpec, EditSettings, FrameSize, Norm, TuneSettings
from tavcli.settings import build, options


def test_bounds_live_in_the_classes_and_hold_for_the_python_api():
    with pytest.raises(SettingError, match="^steps must be at least 0, got -1$"):
        TuneSettings(steps=-1)
    with pytest.raises(SettingError, match="lr must be positive"):
        TuneSettings(lr=0.0)
    with pytest.raises(SettingError, match="guidance must be a finite number, got nan"):
        EditSettings(guidance=math.nan)
    with pytest.raises(SettingError, match="width must be at most 2048"):
        FrameSize(width=100_000)
    with pytest.raises(SettingError, match="width 100 is not a multiple of 8; use 96 or 104"):
        FrameSize(width=100)
    with pytest.raises(SettingError, match="adapter 'dora' is not known; use one of full, lora"):
        AdapterSpec("dora")
    assert AdapterSpec("lora", norm="frame").norm is Norm.FRAME  # modes parsed once, into enums
    assert isinstance(SettingError("x", "y"), BadInput)


def test_a_flat_option_may_fill_several_fields_and_unknown_options_fail_in_one_place():
    job = jobs.tune_job({"video": "a.mp4", "prompt": "p", "seed": 7, "size": 256, "width": 128})
    assert job.tuning.seed == 7 and job.adapter.temporal_seed == 7  # one --seed
    assert (job.size.width, job.size.height) == (128, 256)  # --size, with --width winning
    with pytest.raises(BadInput, match="stepz is not a known option"):
        jobs.tune_job({"video": "a.mp4", "prompt": "p", "stepz": 1})
    with pytest.raises(BadInput, match=r"^--steps must be at least 0, got -2$"):
        jobs.tune_job({"video": "a.mp4", "prompt": "p", "steps": -2}, {"steps": "--steps"})
    with pytest.raises(BadInput, match="prompt is missing"):
        jobs.tune_job({"video": "a.mp4"})


def test_every_tune_default_comes_from_the_settings_classes():
    job = jobs.tune_job({"video": "a.mp4", "prompt": "p"})
    assert job.tuning == TuneSettings() and job.adapter == AdapterSpec() and job.runtime == Runtime()
    assert options(jobs.TuneJob)["steps"].default == TuneSettings().steps == 300


def _help(*command: str) -> str:
    r = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200", "TERM": "dumb"})
    assert r.exit_code == 0, r.output
    return re.sub(r"\s+", " ", r.output)


# Flags not named after their option: `tav edit --inversion NAME` picks a kept inversion, and the bool option
# `inversion` (YAML `inversion: false`) is the flag `--no-inversion`, whose default is its negation.
FLAG_OF = {("edit", "inversion_name"): "inversion", ("edit", "inversion"): None}


@pytest.mark.parametrize("command, job", [("tune", jobs.TuneJob), ("edit", jobs.EditJob)])
def test_help_shows_every_default_from_the_classes(command, job):
    text = _help(command)
    shown = 0
    for name, option in options(job).items():
        flag = FLAG_OF.get((command, name), name.replace("_", "-"))
        row = re.search(rf"│ --{flag}[ /]", text) if flag else None  # the flag's row in the options table
        if row is None or option.default_shown() is None:
            continue  # not a flag of this command, or no default to show
        line = text[row.start():][:400]  # it carries the default the settings class holds
        assert f"[default: ({option.default_shown()})]" in line, (name, line)
        shown += 1
    assert shown >= (15 if command == "tune" else 12)
    assert "[default: (300)]" in text if command == "tune" else "[default: (12.5)]" in text


def test_a_new_option_reaches_the_job_from_yaml_flag_and_default(tmp_path, monkeypatch):
    """weight_decay is declared once (TuneSettings) and has one CLI line: its YAML key, its flag and its
    default all reach the TuneJob that `tav tune` runs."""
    seen: list[jobs.TuneJob] = []

    class Stop(Exception):
        pass

    def capture(job, store, reporter, **kwargs):
        seen.append(job)
        raise Stop

    monkeypatch.setattr(jobs, "tune", capture)
    monkeypatch.setenv("TAV_HOME", str(tmp_path / "home"))
    config = tmp_path / "run.yaml"
    config.write_text(textwrap.dedent("""\
        video: clip.mp4
        prompt: a man is skiing
        weight_decay: 0.5
        """))

    def tune(*args: str) -> jobs.TuneJob:
        CliRunner().invoke(app, ["tune", *args, "-q"], catch_exceptions=True)
        return seen.pop()

    assert tune("clip.mp4", "p").tuning.weight_decay == TuneSettings().weight_decay == 1e-2
    assert tune("--config", str(config)).tuning.weight_decay == 0.5
    assert tune("--config", str(config), "--weight-decay", "0.25").tuning.weight_decay == 0.25
    assert load_config(config).tune.tuning.weight_decay == 0.5
    r = CliRunner().invoke(app, ["tune", "clip.mp4", "p", "--weight-decay", "-1"])
    assert r.exit_code == 2 and "--weight-decay must be at least 0, got -1.0" in r.stderr


def test_official_yaml_keys_reach_the_same_fields(tmp_path):
    path = tmp_path / "official.yaml"
    path.write_text("train_data:\n  video_path: clip.mp4\n  prompt: p\nadam_weight_decay: 0.3\nmax_train_steps: 0\n")
    job = load_config(path).tune
    assert (job.tuning.weight_decay, job.tuning.steps) == (0.3, 0)
    path.write_text("train_data:\n  video_path: clip.mp4\n  prompt: p\nmax_train_steps: -3\n")
    with pytest.raises(BadInput, match=r"line 4: max_train_steps must be at least 0, got -3"):
        load_config(path)


def test_build_names_a_missing_required_option_by_its_place():
    with pytest.raises(BadInput, match=r"^run.yaml: prompt is missing"):
        build(jobs.TuneJob, {"video": Path("a.mp4")}, {"*": "run.yaml"})


def test_a_bug_is_an_internal_error_not_bad_input(tmp_path, monkeypatch):
    """A ValueError from a library or from tav's own code is not the user's input: exit 1, and say how to see it."""
    def broken(job, store, reporter, **kwargs):
        raise ValueError("something deep inside")

    monkeypatch.setattr(jobs, "tune", broken)
    monkeypatch.setenv("TAV_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TAV_DEBUG", raising=False)
    r = CliRunner().invoke(app, ["tune", "clip.mp4", "a man is skiing", "-q"])
    assert r.exit_code == 1
    assert r.stderr.strip() == ("tav: internal error: ValueError: something deep inside (a bug; TAV_DEBUG=1 shows "
                                "the traceback, please report it)")
    monkeypatch.setattr(jobs, "tune", lambda *a, **k: (_ for _ in ()).throw(BadInput("bad clip; give another")))
    r = CliRunner().invoke(app, ["tune", "clip.mp4", "a man is skiing", "-q"])
    assert r.exit_code == 2 and r.stderr.strip() == "tav: error: bad clip; give another"


def test_attention_kernel_auto_is_chosen_per_kind_of_attention_and_work_and_the_cpu_keeps_pytorchs():
    import torch

    from tavcli.engine.runtime import AttentionKernel, Work, attention_kernels

    cuda, cpu = torch.device("cuda"), torch.device("cpu")

    def enabled(choice, kind: str, queries: int, keys: int, sequences: int = 64) -> tuple[bool, int]:
        with choice.sdpa(kind, queries, keys, sequences):
            return torch.backends.cuda.cudnn_sdp_enabled(), torch._C._get_sdp_priority_order()[0]

    def cudnn_on(choice, kind: str, queries: int, keys: int, sequences: int = 64) -> bool:
        return enabled(choice, kind, queries, keys, sequences)[0]

    tuning, inversion, sampling = (attention_kernels("auto", w, cuda) for w in Work)
    assert tuning.fused_temporal and inversion.fused_temporal and sampling.fused_temporal
    assert tuning.shared_first_keys == inversion.shared_first_keys == sampling.shared_first_keys == 4096
    assert cudnn_on(tuning, "frames", 4096, 8192) and cudnn_on(sampling, "frames", 4096, 8192)  # the 64x64 level
    assert not cudnn_on(inversion, "frames", 4096, 8192)  # 50 calls save less than its plan costs
    assert not cudnn_on(tuning, "frames", 1024, 2048) and not cudnn_on(tuning, "cross", 4096, 77)
    assert not cudnn_on(sampling, "temporal", 8, 8)
    efficient, flash = (int(b) for b in (torch.nn.attention.SDPBackend.EFFICIENT_ATTENTION,
                                         torch.nn.attention.SDPBackend.FLASH_ATTENTION))
    assert enabled(sampling, "temporal", 8, 8, 32768)[1] == efficient  # the 64x64 level's many short sequences
    assert enabled(tuning, "temporal", 8, 8, 32768)[0]  # cuDNN: no copies of the views kept for backward
    assert enabled(tuning, "temporal", 8, 8, 8192)[1] == flash
    assert torch.backends.cuda.cudnn_sdp_enabled()  # each choice is undone when its call ends
    explicit = attention_kernels("cudnn", Work.INVERSION, cuda)
    assert cudnn_on(explicit, "cross", 4096, 77) and not explicit.fused_temporal  # an explicit choice is for all
    assert explicit.shared_first_keys is None
    assert not cudnn_on(attention_kernels("flash", Work.TUNING, cuda), "frames", 4096, 8192)
    assert attention_kernels("default", Work.TUNING, cuda).sdpa is None
    assert len({tuning.key, inversion.key, sampling.key}) == 3  # separate captures per choice
    assert explicit.key == attention_kernels("cudnn", Work.SAMPLING, cuda).key
    for kernel in AttentionKernel:
        for work in Work:
            on_cpu = attention_kernels(kernel, work, cpu)
            assert on_cpu.sdpa is None and not on_cpu.fused_temporal and on_cpu.shared_first_keys is None
    with pytest.raises(SettingError, match="attention_kernel"):
        build(jobs.TuneJob, {"video": "a.mp4", "prompt": "p", "attention_kernel": "fast"})
