"""The official Tune-A-Video YAML configs (showlab/Tune-A-Video `configs/*.yaml`) as tav's flat options.

Recognised by `train_data` or `pretrained_model_path`, and mapped as the official `train_tuneavideo.py`
reads them, its defaults included (which differ from tav's: 500 steps, guidance 7.5, no inversion for the
validation samples, gradient checkpointing on, fp16):

    pretrained_model_path -> base (a relative folder that exists next to the config is resolved)
    train_data.video_path, .prompt (required), .n_sample_frames (8), .width/.height (512),
        .sample_start_idx (0), .sample_frame_rate (1) -> video, prompt, frames, width/height, start, stride;
        resize "squash" (the official reader resizes to W x H without cropping)
    max_train_steps (500), learning_rate (3e-5), seed, adam_beta1/2, adam_weight_decay, max_grad_norm
    gradient_checkpointing (True) -> low_memory, else tav's own choice; mixed_precision fp16/bf16/no -> dtype
    validation_data.prompts -> one edit with all prompts; num_inference_steps (50), guidance_scale (7.5),
        use_inv_latent (False), num_inv_steps (50, also the stored inversion's steps), negative_prompt;
        video_length -> the edit's frames when it differs from n_sample_frames (only without inversion)
    trainable_modules: tav trains attn1.to_q, attn2.to_q and attn_temp whatever it says (a warning when
        it says something else)
    validation_steps -> previews of validation_data.prompts every N steps (preview_every, preview), with
        num_inference_steps and guidance_scale (preview_steps, preview_guidance); previews start from the
        inversion with the current model, as the official configs' use_inv_latent: True does
    checkpointing_steps -> checkpoint_every; resume_from_checkpoint: latest -> continue the latest stopped
        run of this config (`tav resume`), afresh when there is none
    output_dir, use_8bit_adam, enable_xformers_memory_efficient_attention, and settings tav cannot honour
        (train_batch_size or gradient_accumulation_steps other than 1, a non-constant lr_scheduler, ...)
        -> one warning
    an unknown top-level or train_data key is an error, as it is for the official script.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tavcli.app.configs import LoadedConfig, Options, _base, _Doc, _dotted, _show, _video_path, edits_options

if TYPE_CHECKING:
    from tavcli.app.jobs import EditJob, TuneJob

PAPER_MODULES = ("attn1.to_q", "attn2.to_q", "attn_temp")
PRECISIONS = {"fp16": "fp16", "bf16": "bf16", "no": "fp32"}

OFFICIAL_KEYS = frozenset({
    "pretrained_model_path", "output_dir", "train_data", "validation_data", "validation_steps",
    "trainable_modules", "train_batch_size", "max_train_steps", "learning_rate", "scale_lr", "lr_scheduler",
    "lr_warmup_steps", "adam_beta1", "adam_beta2", "adam_weight_decay", "adam_epsilon", "max_grad_norm",
    "gradient_accumulation_steps", "gradient_checkpointing", "checkpointing_steps", "resume_from_checkpoint",
    "mixed_precision", "use_8bit_adam", "enable_xformers_memory_efficient_attention", "seed",
})
OFFICIAL_IGNORED = ("output_dir", "use_8bit_adam", "enable_xformers_memory_efficient_attention")
TRAIN_DATA_KEYS = frozenset({"video_path", "prompt", "n_sample_frames", "width", "height", "sample_start_idx",
                             "sample_frame_rate"})
VALIDATION_KEYS = frozenset({"prompts", "video_length", "width", "height", "num_inference_steps", "guidance_scale",
                             "use_inv_latent", "num_inv_steps", "negative_prompt"})

# official key path -> (tav option, the official script's default; None: tav's)
TUNE_KEYS: dict[tuple[str, ...], tuple[str, Any]] = {
    ("train_data", "prompt"): ("prompt", None),
    ("train_data", "n_sample_frames"): ("frames", 8),
    ("train_data", "width"): ("width", 512),
    ("train_data", "height"): ("height", 512),
    ("train_data", "sample_start_idx"): ("start", 0),
    ("train_data", "sample_frame_rate"): ("stride", 1),
    ("seed",): ("seed", 0),
    ("max_train_steps",): ("steps", 500),
    ("learning_rate",): ("lr", 3e-5),
    ("adam_weight_decay",): ("weight_decay", 1e-2),
    ("max_grad_norm",): ("max_grad_norm", 1.0),
    ("validation_data", "num_inv_steps"): ("inversion_steps", 50),
}
EDIT_KEYS: dict[tuple[str, ...], tuple[str, Any]] = {
    ("validation_data", "prompts"): ("prompts", None),
    ("validation_data", "video_length"): ("frames", None),
    ("validation_data", "num_inference_steps"): ("steps", 50),
    ("validation_data", "guidance_scale"): ("guidance", 7.5),
    ("validation_data", "use_inv_latent"): ("inversion", False),
    ("validation_data", "negative_prompt"): ("negative", ""),
}


def _unknown(doc: _Doc, section: dict, prefix: tuple, known: frozenset, what: str) -> None:
    unknown = [k for k in section if k not in known]
    if unknown:
        names = ", ".join(_dotted(prefix + (k,)) for k in unknown)
        raise doc.error(prefix + (unknown[0],), f"unknown key{'s' if len(unknown) > 1 else ''} {names}; {what}")


def _section(doc: _Doc, keys: tuple[str, ...]) -> dict:
    section = doc.data
    for key in keys[:-1]:
        section = section.get(key) or {}
    return section


def _mapped(doc: _Doc, table: dict[tuple[str, ...], tuple[str, Any]], options: Options) -> None:
    """Each official key of `table` as its tav option, with the official default when it is missing."""
    for keys, (option, default) in table.items():
        value = _section(doc, keys).get(keys[-1])
        value = default if value is None else value
        options.where[option] = doc.label(keys)
        if value is not None:
            options.values[option] = value


def read_official_config(doc: _Doc) -> LoadedConfig:
    top = doc.data
    _unknown(doc, top, (), OFFICIAL_KEYS, "the official train_tuneavideo.py would reject it too; check the spelling")
    train = doc.mapping(top, ("train_data",), required=True)
    _unknown(doc, train, ("train_data",), TRAIN_DATA_KEYS, f"use {', '.join(sorted(TRAIN_DATA_KEYS))}")
    val = doc.mapping(top, ("validation_data",))

    tune = Options(where={"*": str(doc.path)})
    video = doc.value(train, ("train_data", "video_path"), str)
    if video is None:
        raise doc.error(("train_data", "video_path"), "train_data.video_path is missing; add the clip to tune on, "
                                                     "e.g. video_path: \"clip.mp4\"")
    tune.set("video", _video_path(doc, video), doc.label(("train_data", "video_path")))
    if doc.value(train, ("train_data", "prompt"), str) is None:
        raise doc.error(("train_data", "prompt"), "train_data.prompt is missing; add the clip's caption, "
                                                 "e.g. prompt: \"a man is skiing\"")
    _mapped(doc, TUNE_KEYS, tune)
    tune.set("base", _base(doc, doc.value(top, ("pretrained_model_path",), str, "CompVis/stable-diffusion-v1-4")),
             doc.label(("pretrained_model_path",)))
    tune.set("resize", "squash")
    tune.set("betas", (doc.value(top, ("adam_beta1",), float, 0.9), doc.value(top, ("adam_beta2",), float, 0.999)),
             doc.label(("adam_beta1",)))
    tune.set("low_memory", doc.value(top, ("gradient_checkpointing",), bool, True),
             doc.label(("gradient_checkpointing",)))
    tune.set("dtype", _precision(doc))

    ignored = [k for k in top if k in OFFICIAL_IGNORED]
    for key in ("train_batch_size", "gradient_accumulation_steps"):
        if doc.value(top, (key,), int, 1) != 1:
            ignored.append(f"{key} (1 is the only value)")
    warmup = doc.value(top, ("lr_warmup_steps",), int, 0)
    if doc.value(top, ("lr_scheduler",), str, "constant") != "constant":  # whose warm-up the official code ignores
        ignored.append("lr_scheduler (the learning rate is constant)")
        if warmup:
            ignored.append("lr_warmup_steps (no warm-up)")
    if doc.value(top, ("adam_epsilon",), float, 1e-8) != 1e-8:
        ignored.append("adam_epsilon (1e-8 is the only value)")
    notes = _loop_keys(doc, tune)
    doc.value(top, ("scale_lr",), bool, False)  # lr x batch 1 x accumulation 1 x one process: no change
    modules = doc.value(top, ("trainable_modules",), tuple[str, ...], PAPER_MODULES)
    if sorted(modules) != sorted(PAPER_MODULES):
        notes.append(f"trainable_modules lists {', '.join(modules) or 'nothing'}; tav trains attn1.to_q, attn2.to_q "
                     "and attn_temp regardless (the paper's set)")
    width, height = doc.value(train, ("train_data", "width"), int, 512), doc.value(train, ("train_data", "height"), int, 512)
    if (doc.value(val, ("validation_data", "width"), int, width),
            doc.value(val, ("validation_data", "height"), int, height)) != (width, height):
        ignored.append(f"validation_data.width/height (edits come out at the tuned {width}x{height})")
    ignored += [f"validation_data.{k}" for k in val if k not in VALIDATION_KEYS]

    edits = []
    if doc.value(val, ("validation_data", "prompts"), tuple[str, ...]):
        edit = Options(where={"*": doc.where(("validation_data",))})
        _mapped(doc, EDIT_KEYS, edit)
        edits.append(edit.over(edits_options(tune)))
    warnings = [f"ignored keys that do not apply to tav: {', '.join(ignored)}"] if ignored else []
    return LoadedConfig.of(tune, edits, warnings + notes, "official", _check_video_length, _resume(doc))


def _loop_keys(doc: _Doc, tune: Options) -> list[str]:
    """validation_steps and checkpointing_steps: previews and checkpoints along the way, where the file asks.
    One past max_train_steps does nothing in the official script (the official configs checkpoint every
    1000 of 500 steps): a note, not an error."""
    top, notes = doc.data, []
    steps = doc.value(top, ("max_train_steps",), int, 500)
    for key in ("validation_steps", "checkpointing_steps"):
        every = doc.value(top, (key,), int)
        if every is not None and every > steps:
            notes.append(f"{key} {every} is past max_train_steps {steps}: none are made, as in the official script")
    checkpoints = doc.value(top, ("checkpointing_steps",), int)
    if checkpoints is not None and checkpoints <= steps:
        tune.set("checkpoint_every", checkpoints, doc.label(("checkpointing_steps",)))
    validation = doc.value(top, ("validation_steps",), int)
    if validation is not None and validation <= steps:
        val = doc.mapping(top, ("validation_data",))
        prompts = doc.value(val, ("validation_data", "prompts"), tuple[str, ...])
        if not prompts:
            return notes  # nothing to render, as the official loop renders nothing
        tune.set("preview_every", validation, doc.label(("validation_steps",)))
        tune.set("preview", prompts, doc.label(("validation_data", "prompts")))
        for key, option, default in (("num_inference_steps", "preview_steps", 50),
                                     ("guidance_scale", "preview_guidance", 7.5)):
            tune.set(option, val.get(key, default), doc.label(("validation_data", key)))
    return notes


def fit_to_steps(tune: Options, flags: Options) -> tuple[Options, list[str]]:
    """Under a --steps override, the file's validation_steps or checkpointing_steps past the new end make
    nothing, as in the official script (a note); a --preview-every or --checkpoint-every flag is checked as given."""
    steps, notes = tune.values.get("steps"), []
    values, where = dict(tune.values), dict(tune.where)
    for option, key in (("preview_every", "validation_steps"), ("checkpoint_every", "checkpointing_steps")):
        every = values.get(option)
        if option not in flags.values and isinstance(every, int) and isinstance(steps, int) and every > steps:
            values.pop(option)
            if option == "preview_every":
                values.pop("preview", None)
            notes.append(f"{key} {every} is past --steps {steps}: none are made, as in the official script")
    return Options(values, where), notes


def _resume(doc: _Doc) -> bool:
    value = doc.data.get("resume_from_checkpoint")
    if value in (None, False):
        return False
    if value != "latest":
        raise doc.error(("resume_from_checkpoint",), f"resume_from_checkpoint {_show(value)} is not supported; use "
                                                     "latest (tav keeps runs by id: `tav resume --list`)")
    return True


def _precision(doc: _Doc) -> str:
    precision = doc.data.get("mixed_precision", "fp16")
    if precision is None or precision is False:  # YAML 1.1 reads a bare `no` as false
        precision = "no"
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise doc.error(("mixed_precision",), f"mixed_precision {_show(precision)} is not known; "
                                              f"use one of {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


def _check_video_length(tune: TuneJob, edits: list[EditJob], options: list[Options]) -> None:
    from tavcli.errors import BadInput

    frames = tune.sampling.frames
    for edit, where in zip(edits, options):
        if edit.settings.inversion and edit.frames not in (None, frames):
            raise BadInput(f"{where.where['frames']} {edit.frames} differs from train_data.n_sample_frames {frames}, "
                           f"but use_inv_latent starts the edits from the clip's {frames}-frame inversion; "
                           f"set video_length to {frames} or use_inv_latent to False")
