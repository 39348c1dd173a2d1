"""Tests for tavcli.app.configs: the official Tune-A-Video YAML and tav's own, overrides, and bad files."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from tavcli.app.configs import LoadedConfig, apply_overrides, load_config
from tavcli.errors import BadInput

MAN_SKIING = """\
pretrained_model_path: "./checkpoints/stable-diffusion-v1-4"
output_dir: "./outputs/man-skiing"

train_data:
  video_path: "data/man-skiing.mp4"
  prompt: "a man is skiing"
  n_sample_frames: 24
  width: 512
  height: 512
  sample_start_idx: 0
  sample_frame_rate: 2

validation_data:
  prompts:
    - "mickey mouse is skiing on the snow"
    - "spider man is skiing on the beach, cartoon style"
    - "wonder woman, wearing a cowboy hat, is skiing"
    - "a man, wearing pink clothes, is skiing at sunset"
  video_length: 24
  width: 512
  height: 512
  num_inference_steps: 50
  guidance_scale: 12.5
  use_inv_latent: True
  num_inv_steps: 50

learning_rate: 3e-5
train_batch_size: 1
max_train_steps: 500
checkpointing_steps: 1000
validation_steps: 100
trainable_modules:
  - "attn1.to_q"
  - "attn2.to_q"
  - "attn_temp"

seed: 33
mixed_precision: fp16
use_8bit_adam: False
gradient_checkpointing: True
enable_xformers_memory_efficient_attention: True
"""

MINIMAL_OFFICIAL = """\
train_data:
  video_path: clip.mp4
  prompt: a man is skiing
"""


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def official(tmp_path: Path, text: str = MAN_SKIING, **replacements: str) -> LoadedConfig:
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    return load_config(write(tmp_path, text))


def config_error(path: Path) -> str:
    with pytest.raises(BadInput) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- the official format ---------------------------------------------------------------------------


def test_official_man_skiing_parses_into_the_exact_jobs(tmp_path):
    config = official(tmp_path)
    job = config.tune
    assert config.source == "official"
    assert job.video == tmp_path / "data" / "man-skiing.mp4"  # beside the config, not the working directory
    assert job.prompt == "a man is skiing"
    assert job.base == "./checkpoints/stable-diffusion-v1-4"  # no such folder: kept as given
    assert (job.sampling.frames, job.sampling.start, job.sampling.stride) == (24, 0, 2)
    assert (job.size.width, job.size.height, job.size.resize) == (512, 512, "squash")
    assert job.tuning.steps == 500
    assert isinstance(job.tuning.lr, float) and job.tuning.lr == 3e-5
    assert job.tuning.seed == 33 and job.adapter.temporal_seed == 33
    assert job.adapter.kind == "full"
    assert job.runtime.low_memory is True
    assert job.runtime.dtype == "fp16" and job.runtime.device == "auto"
    assert job.inversion.steps == 50
    assert job.name is None and job.adapter.attention == "sparse-causal"

    assert len(config.edits) == 1
    edit = config.edits[0]
    assert edit.ref == ""
    assert list(edit.prompts) == ["mickey mouse is skiing on the snow", "spider man is skiing on the beach, cartoon style",
                            "wonder woman, wearing a cowboy hat, is skiing",
                            "a man, wearing pink clothes, is skiing at sunset"]
    assert (edit.settings.steps, edit.settings.guidance, edit.settings.inversion) == (50, 12.5, True)
    assert edit.settings.seed == 33 and edit.settings.negative_prompt == ""
    assert edit.frames is None  # video_length == n_sample_frames

    # validation_steps: the validation prompts render as previews every 100 steps, as the official ones do
    assert (job.preview.every, job.preview.prompts, job.preview.steps, job.preview.guidance) == (
        100, edit.prompts, 50, 12.5)
    assert job.checkpoint.every is None  # checkpointing_steps 1000 is past the 500 steps: none, officially too

    assert len(config.warnings) == 2
    warning, note = config.warnings
    assert warning.startswith("ignored keys that do not apply to tav: ")
    for key in ("output_dir", "use_8bit_adam", "enable_xformers_memory_efficient_attention"):
        assert key in warning
    for key in ("trainable_modules", "train_batch_size", "learning_rate", "seed", "mixed_precision",
                "checkpointing_steps", "validation_steps"):
        assert key not in warning
    assert note == "checkpointing_steps 1000 is past max_train_steps 500: none are made, as in the official script"
    assert not config.resume


def test_official_checkpoints_and_resume_map(tmp_path):
    config = official(tmp_path, **{"checkpointing_steps: 1000": "checkpointing_steps: 250\nresume_from_checkpoint: latest"})
    assert config.tune.checkpoint.every == 250 and config.resume
    message = config_error(write(tmp_path, MAN_SKIING.replace("checkpointing_steps: 1000",
                                                              "resume_from_checkpoint: checkpoint-200")))
    assert "config.yaml line 30: " in message and "resume_from_checkpoint 'checkpoint-200' is not supported" in message
    # --steps 50 leaves validation_steps 100 nothing to do, as the official script would; --preview-every is a flag
    shorter = apply_overrides(official(tmp_path), steps=50)
    assert shorter.tune.preview.every is None and not shorter.tune.preview.prompts
    assert shorter.warnings[-1] == "validation_steps 100 is past --steps 50: none are made, as in the official script"
    with pytest.raises(BadInput, match=r"^--preview-every 60 is more than the 50 tuning steps; use 1 to 50$"):
        apply_overrides(official(tmp_path), steps=50, preview_every=60)


def test_official_defaults_are_the_official_scripts(tmp_path):
    config = load_config(write(tmp_path, MINIMAL_OFFICIAL))
    job = config.tune
    assert config.source == "official"
    assert (job.sampling.frames, job.sampling.start, job.sampling.stride) == (8, 0, 1)
    assert (job.size.width, job.size.height, job.size.resize) == (512, 512, "squash")
    assert (job.tuning.steps, job.tuning.lr, job.runtime.low_memory) == (500, 3e-5, True)
    assert job.base == "CompVis/stable-diffusion-v1-4"
    assert job.runtime.dtype == "fp16"
    assert config.edits == [] and config.warnings == []


def test_official_optimizer_settings_and_precisions_map(tmp_path):
    text = MINIMAL_OFFICIAL + ("adam_beta1: 0.8\nadam_beta2: 0.99\nadam_weight_decay: 0\nmax_grad_norm: 0.5\n"
                               "gradient_checkpointing: false\nmixed_precision: no\nseed: null\n")
    job = load_config(write(tmp_path, text)).tune
    assert job.tuning.betas == (0.8, 0.99)
    assert (job.tuning.weight_decay, job.tuning.max_grad_norm) == (0.0, 0.5)
    assert job.runtime.low_memory is False  # off in the file: tav decides
    assert job.runtime.dtype == "fp32"  # a bare `no` is YAML 1.1's false
    assert job.tuning.seed == 0
    assert load_config(write(tmp_path, MINIMAL_OFFICIAL + "mixed_precision: bf16\n")).tune.runtime.dtype == "bf16"
    assert load_config(write(tmp_path, MINIMAL_OFFICIAL + 'mixed_precision: "no"\n')).tune.runtime.dtype == "fp32"


def test_unknown_mixed_precision_is_an_error_with_its_line(tmp_path):
    message = config_error(write(tmp_path, MAN_SKIING.replace("fp16", "int8")))
    assert "line 38" in message and "mixed_precision" in message and "'int8'" in message
    assert "fp16" in message and "bf16" in message  # the values it takes


def test_trainable_modules_in_another_order_is_the_papers_set(tmp_path):
    config = official(tmp_path, **{'  - "attn1.to_q"\n  - "attn2.to_q"': '  - "attn2.to_q"\n  - "attn1.to_q"'})
    assert not any("trainable_modules" in w for w in config.warnings)


def test_other_trainable_modules_and_batch_size_warn(tmp_path):
    config = official(tmp_path, **{'  - "attn_temp"\n': '  - "attn_temp"\n  - "to_k"\n',
                                   "train_batch_size: 1": "train_batch_size: 4"})
    assert len(config.warnings) == 3  # and checkpointing_steps past max_train_steps
    assert "train_batch_size (1 is the only value)" in config.warnings[0]
    note = config.warnings[2]
    assert "trainable_modules" in note and "to_k" in note
    assert "attn1.to_q, attn2.to_q and attn_temp regardless" in note
    assert config.tune.tuning.steps == 500  # still parsed


def test_validation_size_and_schedule_that_tav_cannot_honour_warn(tmp_path):
    config = official(tmp_path, **{"  width: 512\n  height: 512\n  num_inference_steps":
                                   "  width: 256\n  height: 512\n  num_inference_steps",
                                   "seed: 33": "seed: 33\nlr_scheduler: cosine\nlr_warmup_steps: 10"})
    warning = config.warnings[0]
    assert "validation_data.width/height" in warning and "512x512" in warning
    assert "lr_scheduler" in warning and "lr_warmup_steps" in warning
    assert config.tune.size.width == 512


def test_inversion_with_another_video_length_is_an_error(tmp_path):
    path = write(tmp_path, MAN_SKIING.replace("video_length: 24", "video_length: 8"))
    message = config_error(path)
    assert "line 19" in message
    assert "video_length 8" in message and "n_sample_frames 24" in message and "use_inv_latent" in message


def test_another_video_length_without_inversion_sets_the_edit_frames(tmp_path):
    config = official(tmp_path, **{"video_length: 24": "video_length: 8",
                                   "use_inv_latent: True": "use_inv_latent: False"})
    edit = config.edits[0]
    assert edit.frames == 8 and edit.settings.inversion is False
    assert config.tune.sampling.frames == 24


def test_relative_base_folder_is_resolved_against_the_config(tmp_path):
    (tmp_path / "checkpoints" / "stable-diffusion-v1-4").mkdir(parents=True)
    assert official(tmp_path).tune.base == str(tmp_path / "checkpoints" / "stable-diffusion-v1-4")
    hub = official(tmp_path, **{'"./checkpoints/stable-diffusion-v1-4"': "runwayml/stable-diffusion-v1-5"})
    assert hub.tune.base == "runwayml/stable-diffusion-v1-5"


def test_video_relative_to_the_working_directory_when_only_there(tmp_path, monkeypatch):
    """The official layout: configs/x.yaml names data/x.mp4 relative to the repository root."""
    repo = tmp_path / "repo"
    (repo / "configs").mkdir(parents=True)
    (repo / "data").mkdir()
    (repo / "data" / "man-skiing.mp4").write_bytes(b"")
    path = write(repo / "configs", MAN_SKIING)
    monkeypatch.chdir(repo)
    assert load_config(path).tune.video == repo / "data" / "man-skiing.mp4"
    (repo / "configs" / "data").mkdir()
    (repo / "configs" / "data" / "man-skiing.mp4").write_bytes(b"")
    assert load_config(path).tune.video == repo / "configs" / "data" / "man-skiing.mp4"  # beside the config first


def test_official_missing_prompt_names_the_key_and_the_file(tmp_path):
    path = write(tmp_path, MAN_SKIING.replace('  prompt: "a man is skiing"\n', ""))
    message = config_error(path)
    assert str(path) in message and "train_data.prompt" in message and "missing" in message


def test_official_missing_train_data_and_video(tmp_path):
    assert "train_data is missing" in config_error(write(tmp_path, "pretrained_model_path: x\n"))
    assert "train_data.video_path" in config_error(write(tmp_path, "train_data:\n  prompt: a man is skiing\n"))


def test_official_wrong_type_names_key_type_and_line(tmp_path):
    message = config_error(write(tmp_path, MAN_SKIING.replace("n_sample_frames: 24", 'n_sample_frames: "eight"')))
    assert "line 7" in message and "train_data.n_sample_frames" in message and "integer" in message
    assert "'eight'" in message
    message = config_error(write(tmp_path, MAN_SKIING.replace("learning_rate: 3e-5", "learning_rate: fast")))
    assert "line 27" in message and "learning_rate" in message and "number" in message


def test_official_unknown_key_is_an_error(tmp_path):
    message = config_error(write(tmp_path, MAN_SKIING.replace("max_train_steps: 500", "max_train_step: 300")))
    assert "max_train_step" in message and "line 29" in message
    message = config_error(write(tmp_path, MAN_SKIING.replace("sample_start_idx", "sample_start")))
    assert "train_data.sample_start" in message


# --- overrides ---------------------------------------------------------------------------------------


def test_apply_overrides_changes_only_the_given_fields(tmp_path):
    config = official(tmp_path)
    changed = apply_overrides(config, steps=200, video="other.mp4", prompt=None, frames=None)
    assert changed.tune.tuning.steps == 200
    assert changed.tune.video == Path("other.mp4")
    expected = replace(config.tune, video=Path("other.mp4"), tuning=replace(config.tune.tuning, steps=200))
    assert changed.tune == expected
    assert changed.edits == config.edits and changed.warnings == config.warnings and changed.source == "official"
    assert config.tune.tuning.steps == 500  # the original is untouched
    assert apply_overrides(config) == config
    assert apply_overrides(config, **dict.fromkeys(("video", "prompt", "seed", "low_memory", "dtype"))) == config


def test_apply_overrides_every_flag(tmp_path):
    config = official(tmp_path)
    changed = apply_overrides(config, video="b.mp4", prompt="a dog", name="dog", base="some/base", frames=4,
                              width=256, height=320, start=3, stride=5, resize="crop", steps=7, lr=1e-4,
                              adapter="lora", rank=4, attention="full", seed=9, device="cpu", dtype="fp32",
                              low_memory=False, compile=True)
    job = changed.tune
    assert (job.video, job.prompt, job.name, job.base) == (Path("b.mp4"), "a dog", "dog", "some/base")
    assert (job.sampling.frames, job.sampling.start, job.sampling.stride) == (4, 3, 5)
    assert (job.size.width, job.size.height, job.size.resize, job.adapter.attention) == (256, 320, "crop", "full")
    assert (job.tuning.steps, job.tuning.lr, job.tuning.seed) == (7, 1e-4, 9)
    assert job.runtime.low_memory is False
    assert (job.adapter.kind, job.adapter.rank, job.adapter.temporal_seed) == ("lora", 4, 9)
    assert (job.runtime.device, job.runtime.dtype) == ("cpu", "fp32")
    assert job.runtime.compile is True and config.tune.runtime.compile is False
    edit = changed.edits[0]
    assert (edit.settings.seed, edit.runtime.device, edit.runtime.dtype, edit.runtime.compile) == (9, "cpu", "fp32", True)
    assert edit.prompts == config.edits[0].prompts


def test_apply_overrides_rejects_bad_values_and_unknown_flags(tmp_path):
    config = official(tmp_path)
    with pytest.raises(BadInput, match="--resize 'stretch' is not known"):
        apply_overrides(config, resize="stretch")
    with pytest.raises(BadInput, match="--frames must be at least 1"):
        apply_overrides(config, frames=0)
    with pytest.raises(BadInput, match="guidance"):  # not an option of the tune
        apply_overrides(config, guidance=3.0)


# --- tav's format ------------------------------------------------------------------------------------

EVERY_KEY = """\
video: clips/dog.mp4
prompt: a dog is running
name: dog
base: runwayml/stable-diffusion-v1-5
frames: 12
size: 384
width: 320
height: 256
start: 4
stride: 3
resize: squash
steps: 150
lr: 3e-5
adapter: lora
rank: 8
attention: first-frame
seed: 7
low_memory: true
compile: true
device: cpu
dtype: bf16
inversion_steps: 20
edits:
  prompts: ["a cat is running", "a fox is running"]
  steps: 25
  guidance: 7.5
  negative: blurry
  inversion: false
  frames: 16
"""


def test_tav_format_with_every_key(tmp_path):
    config = load_config(write(tmp_path, EVERY_KEY))
    job = config.tune
    assert config.source == "tav" and config.warnings == []
    assert job.video == tmp_path / "clips" / "dog.mp4"
    assert (job.prompt, job.name, job.base) == ("a dog is running", "dog", "runwayml/stable-diffusion-v1-5")
    assert (job.sampling.frames, job.sampling.start, job.sampling.stride) == (12, 4, 3)
    assert (job.size.width, job.size.height, job.size.resize) == (320, 256, "squash")
    assert (job.tuning.steps, job.tuning.lr, job.tuning.seed) == (150, 3e-5, 7)
    assert isinstance(job.tuning.lr, float)
    assert job.runtime.low_memory is True and job.runtime.compile is True
    assert (job.adapter.kind, job.adapter.rank, job.adapter.temporal_seed) == ("lora", 8, 7)
    assert (job.adapter.attention, job.runtime.device, job.runtime.dtype, job.inversion.steps) == ("first-frame", "cpu", "bf16", 20)
    [edit] = config.edits
    assert edit.ref == "" and edit.prompts == ("a cat is running", "a fox is running")
    s = edit.settings
    assert (s.steps, s.guidance, s.negative_prompt, s.inversion, s.seed) == (25, 7.5, "blurry", False, 7)
    assert (edit.frames, edit.runtime.device, edit.runtime.dtype) == (16, "cpu", "bf16")
    assert edit.runtime.compile is True  # the edits run in the same process, on the model compiled for tuning


def test_tav_format_defaults(tmp_path):
    config = load_config(write(tmp_path, "video: /abs/clip.mp4\nprompt: a man is skiing\n"))
    job = config.tune
    assert config.source == "tav" and config.edits == [] and config.warnings == []
    assert job.video == Path("/abs/clip.mp4")
    assert (job.sampling.frames, job.sampling.start, job.sampling.stride) == (8, 0, None)
    assert (job.size.width, job.size.height, job.size.resize) == (512, 512, "crop")
    assert (job.tuning.steps, job.tuning.lr, job.tuning.seed) == (300, 3e-5, 0)
    assert job.runtime.low_memory is False and job.runtime.compile is False
    assert (job.adapter.kind, job.adapter.attention, job.runtime.device, job.runtime.dtype) == ("full", "sparse-causal", "auto", "auto")
    assert job.base == "CompVis/stable-diffusion-v1-4"


def test_tav_size_sets_both_sides_and_edits_may_be_a_list(tmp_path):
    config = load_config(write(tmp_path, """\
        video: clip.mp4
        prompt: a man is skiing
        size: 256
        edits:
          - prompts: an astronaut is skiing
          - prompts: [a bear is skiing]
            inversion: false
            frames: 8
        """))
    assert (config.tune.size.width, config.tune.size.height) == (256, 256)
    assert [e.prompts for e in config.edits] == [("an astronaut is skiing",), ("a bear is skiing",)]
    assert config.edits[0].settings.inversion is True
    assert config.edits[1].frames is None  # the tuned length: no need to name it


def test_tav_edit_frames_with_inversion_is_an_error(tmp_path):
    text = "video: clip.mp4\nprompt: p\nframes: 24\nedits:\n  prompts: [q]\n  frames: 8\n"
    message = config_error(write(tmp_path, text))
    assert "line 6" in message and "edits.frames" in message and "inversion: false" in message


def test_tav_unknown_key_is_an_error(tmp_path):
    message = config_error(write(tmp_path, "video: clip.mp4\nprompt: p\nstesp: 100\nguidance: 3\n"))
    assert "line 3" in message and "stesp" in message and "guidance" in message
    message = config_error(write(tmp_path, "video: clip.mp4\nprompt: p\nedits:\n  prompts: [q]\n  cfg: 3\n"))
    assert "line 5" in message and "edits.cfg" in message


def test_tav_missing_prompt_and_wrong_types(tmp_path):
    path = write(tmp_path, "video: clip.mp4\nframes: 8\n")
    message = config_error(path)
    assert str(path) in message and "prompt is missing" in message
    message = config_error(write(tmp_path, "video: clip.mp4\nprompt: p\nframes: eight\n"))
    assert "line 3" in message and "frames should be an integer" in message
    message = config_error(write(tmp_path, "video: clip.mp4\nprompt: p\nlow_memory: maybe\n"))
    assert "low_memory should be true or false" in message
    message = config_error(write(tmp_path, "video: 12\nprompt: p\n"))
    assert "line 1" in message and "video should be text" in message
    message = config_error(write(tmp_path, "video: clip.mp4\nprompt: p\nresize: stretch\n"))
    assert "line 3" in message and "'stretch' is not known" in message
    message = config_error(write(tmp_path, "video: clip.mp4\nprompt: p\nframes: 0\n"))
    assert "frames must be at least 1" in message


# --- files that are no config ------------------------------------------------------------------------


@pytest.mark.parametrize("text, line", [
    ("video: clip.mp4\nprompt: p\nframes: 8\nwidth: 512\nheight: 512\nsteps: 300\nname: a: b\n", 7),
    ("video: clip.mp4\nprompt: \"unclosed\nframes: 8\n", 4),
    ("video: clip.mp4\n  prompt: p\n", 2),
])
def test_malformed_yaml_names_its_line(tmp_path, text, line):
    path = write(tmp_path, text)
    message = config_error(path)
    assert message.startswith(f"{path} line {line}: could not parse (")
    assert message.endswith("; fix the YAML")


def test_not_a_config(tmp_path):
    assert "empty" in config_error(write(tmp_path, ""))
    assert "empty" in config_error(write(tmp_path, "# nothing\n"))
    assert "mapping" in config_error(write(tmp_path, "- video: clip.mp4\n"))
    assert "mapping" in config_error(write(tmp_path, "just text\n"))
    assert "no such file" in config_error(tmp_path / "missing.yaml")
    assert "folder" in config_error(tmp_path)
    message = config_error(write(tmp_path, "video: a.mp4\nprompt: p\nvideo: b.mp4\n"))
    assert "given twice" in message and "lines 1 and 3" in message


def test_importing_configs_does_not_import_torch():
    code = "import sys, tavcli.app.configs; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
