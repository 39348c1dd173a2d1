"""YAML configs for `tav tune --config FILE.yaml`: the official Tune-A-Video format, or tav's own.

Parsing and validation only: `load_config` turns a file into a `TuneJob` (and the `EditJob`s to run
right after tuning); `apply_overrides` lays command-line flags over it. Nothing here loads a model,
and this module imports no torch itself (the job classes are imported when a config is loaded).

**Official format** (showlab/Tune-A-Video `configs/*.yaml`), recognised by `train_data` or
`pretrained_model_path`. Mapped as the official `train_tuneavideo.py` reads it, its defaults included:

    pretrained_model_path -> base (a relative folder that exists next to the config is resolved)
    train_data.video_path, .prompt (required), .n_sample_frames (8), .width/.height (512),
        .sample_start_idx (0), .sample_frame_rate (1) -> video, prompt, frames, size, start, stride;
        resize "squash" (the official reader resizes to W x H without cropping)
    max_train_steps (500), learning_rate (3e-5), seed, adam_beta1/2, adam_weight_decay, max_grad_norm
    gradient_checkpointing (True) -> on, else tav's own choice; mixed_precision fp16/bf16/no -> dtype
    validation_data.prompts -> one EditJob with all prompts; num_inference_steps (50),
        guidance_scale (7.5), use_inv_latent (False), num_inv_steps (50, also the stored inversion's
        steps), negative_prompt; video_length -> the edit's frames when it differs from n_sample_frames
        (only without inversion: the stored inversion has n_sample_frames frames)
    trainable_modules: tav trains attn1.to_q, attn2.to_q and attn_temp whatever it says (a warning
        when it says something else)
    output_dir, validation_steps, checkpointing_steps, use_8bit_adam,
        enable_xformers_memory_efficient_attention, and settings tav cannot honour (train_batch_size
        or gradient_accumulation_steps other than 1, a non-constant lr_scheduler, ...) -> one warning
    an unknown top-level or train_data key is an error, as it is for the official script.

**tav's format**: flat keys named like `tav tune`'s flags, all optional but `video` and `prompt`:

    video: clip.mp4          # relative paths are relative to the config file's folder
    prompt: a man is skiing
    name: skiing
    base: CompVis/stable-diffusion-v1-4
    frames: 8
    size: 512                # square; width/height override it
    width: 512
    height: 512
    start: 0
    stride: null             # null: spread the frames over the clip
    resize: crop             # or squash
    steps: 300
    lr: 3.0e-5
    adapter: full            # or lora
    rank: 16                 # lora only
    attention: sparse-causal # first-frame, full, frame
    seed: 0                  # tuning, temporal init and edit noise
    low_memory: false        # true: gradient checkpointing
    compile: false           # true: torch.compile the UNet's repeated blocks (tuning and these edits)
    device: auto
    dtype: auto              # bf16, fp16, fp32
    inversion_steps: 50      # DDIM steps of the stored inversion
    edits:                   # optional: edits run right after tuning (or a list of such groups)
      prompts: ["an astronaut is skiing on the moon"]   # or one string
      steps: 50
      guidance: 12.5
      negative: ""
      inversion: true
      frames: null           # another length: only with inversion: false

An unknown key is an error (a typo should not pass silently). Errors are `ConfigError`s of one line
that name the file and, where the key is in it, the line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from tavcli.app.jobs import EditJob, TuneJob


class ConfigError(ValueError):
    """A config that cannot be used (exit 2): one line naming the file, the line and the fix."""


@dataclass
class LoadedConfig:
    tune: TuneJob
    edits: list[EditJob]  # each with ref="": the caller fills in the tuned artifact
    warnings: list[str]  # settings in the file that tav does not apply; empty when none
    source: str  # "official" or "tav"


PAPER_MODULES = ("attn1.to_q", "attn2.to_q", "attn_temp")
DTYPES = ("auto", "bf16", "fp16", "fp32")
PRECISIONS = {"fp16": "fp16", "bf16": "bf16", "no": "fp32"}

OFFICIAL_KEYS = frozenset({
    "pretrained_model_path", "output_dir", "train_data", "validation_data", "validation_steps",
    "trainable_modules", "train_batch_size", "max_train_steps", "learning_rate", "scale_lr", "lr_scheduler",
    "lr_warmup_steps", "adam_beta1", "adam_beta2", "adam_weight_decay", "adam_epsilon", "max_grad_norm",
    "gradient_accumulation_steps", "gradient_checkpointing", "checkpointing_steps", "resume_from_checkpoint",
    "mixed_precision", "use_8bit_adam", "enable_xformers_memory_efficient_attention", "seed",
})
OFFICIAL_IGNORED = ("output_dir", "validation_steps", "checkpointing_steps", "use_8bit_adam",
                    "enable_xformers_memory_efficient_attention")
TRAIN_DATA_KEYS = frozenset({"video_path", "prompt", "n_sample_frames", "width", "height", "sample_start_idx",
                             "sample_frame_rate"})
VALIDATION_KEYS = frozenset({"prompts", "video_length", "width", "height", "num_inference_steps", "guidance_scale",
                             "use_inv_latent", "num_inv_steps", "negative_prompt"})

TAV_KEYS = ("video", "prompt", "name", "base", "base_config", "frames", "size", "width", "height", "start", "stride", "resize",
            "steps", "lr", "adapter", "rank", "attention", "seed", "low_memory", "compile", "device", "dtype",
            "inversion_steps", "edits")
TAV_EDIT_KEYS = ("prompts", "steps", "guidance", "negative", "inversion", "frames")

OVERRIDES = ("video", "prompt", "name", "base", "base_config", "frames", "width", "height", "start", "stride", "resize", "steps",
             "lr", "adapter", "rank", "attention", "seed", "device", "dtype", "low_memory", "compile")

_REQUIRED = object()
Keys = tuple  # a key's path in the file: ("train_data", "prompt"), ("edits", 0, "steps")


def _choices() -> dict[str, tuple[str, ...]]:
    from tavcli.method.adapters import KINDS
    from tavcli.method.attention import ATTENTION_MODES
    from tavcli.method.video import RESIZE_MODES

    return {"resize": RESIZE_MODES, "attention": ATTENTION_MODES, "adapter": KINDS, "dtype": DTYPES}


_AT_LEAST = {"frames": 1, "start": 0, "stride": 1, "width": 1, "height": 1, "size": 1, "steps": 0, "rank": 1,
             "inversion_steps": 1, "edit_steps": 1, "edit_frames": 1}


def _problem(check: str, value: Any) -> str | None:
    """What is wrong with a setting's value (None when nothing), checked alike for files and flags."""
    if value is None:
        return None
    if check in _AT_LEAST and value < _AT_LEAST[check]:
        return f"must be at least {_AT_LEAST[check]}, got {value}"
    if check == "lr" and not value > 0:
        return f"must be positive, got {value}"
    choices = _choices().get(check) if check in ("resize", "attention", "adapter", "dtype") else None
    if choices is not None and value not in choices:
        return f"{value!r} is not known; use one of {', '.join(choices)}"
    if check == "device" and not value.strip():
        return "is empty; use auto, cuda or cpu"
    return None


# --- reading the file ------------------------------------------------------------------------------


class _Doc:
    """The parsed file, with the line of each key for messages that point into it."""

    def __init__(self, path: Path, data: dict, lines: dict[Keys, int]):
        self.path, self.data, self.lines = path, data, lines
        self.folder = Path(os.path.abspath(path)).parent

    def where(self, keys: Keys) -> str:
        while keys and keys not in self.lines:  # a missing key: point at its section
            keys = keys[:-1]
        return f"{self.path} line {self.lines[keys]}" if keys else str(self.path)

    def error(self, keys: Keys, message: str) -> ConfigError:
        return ConfigError(f"{self.where(keys)}: {message}")

    def get(self, section: dict, keys: Keys, kind: str, default: Any = _REQUIRED, hint: str = "",
            check: str | None = None) -> Any:
        """section[keys[-1]] as `kind`; a missing or null key gives `default` (an error when required)."""
        value = section.get(keys[-1])
        if value is None:
            if default is _REQUIRED:
                raise self.error(keys, f"{_dotted(keys)} is missing; add {hint or 'it'}")
            return default
        value = _convert(value, kind)
        if value is _BAD:
            raise self.error(keys, f"{_dotted(keys)} should be {_KINDS[kind]}, got {_show(section[keys[-1]])}")
        problem = _problem(check or str(keys[-1]), value)
        if problem:
            raise self.error(keys, f"{_dotted(keys)} {problem}")
        return value

    def mapping(self, section: dict, keys: Keys, required: bool = False) -> dict:
        value = section.get(keys[-1])
        if value is None and not required:
            return {}
        if not isinstance(value, dict):
            what = "is missing" if value is None else f"should be a mapping of keys, got {_show(value)}"
            raise self.error(keys, f"{_dotted(keys)} {what}")
        return value


_BAD = object()
_KINDS = {"int": "an integer", "number": "a number", "bool": "true or false", "text": "text (quote it)",
          "texts": "a list of texts"}


def _convert(value: Any, kind: str) -> Any:
    if kind == "int":
        return value if isinstance(value, int) and not isinstance(value, bool) else _BAD
    if kind == "number":
        if isinstance(value, bool):
            return _BAD
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 3e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                return _BAD
        return _BAD
    if kind == "bool":
        return value if isinstance(value, bool) else _BAD
    if kind == "text":
        return value if isinstance(value, str) else _BAD
    if kind == "texts":
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        return _BAD
    raise AssertionError(kind)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _dotted(keys: Keys) -> str:
    out = ""
    for key in keys:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out


def _index(node: yaml.Node, prefix: Keys, lines: dict[Keys, int], path: Path, done: set[int] | None = None) -> None:
    """Record the line of every key (and list item) under `node`; a key given twice is an error."""
    done = set() if done is None else done
    if id(node) in done:  # an alias of a node already seen (perhaps of itself)
        return
    done.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            line = key_node.start_mark.line + 1
            if key_node.value in seen:
                raise ConfigError(f"{path} line {line}: {_dotted(prefix + (key_node.value,))} is given twice "
                                  f"(lines {seen[key_node.value]} and {line}); keep one")
            seen[key_node.value] = line
            lines[prefix + (key_node.value,)] = line
            _index(value_node, prefix + (key_node.value,), lines, path, done)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[prefix + (i,)] = item.start_mark.line + 1
            _index(item, prefix + (i,), lines, path, done)


def _read(path: Path) -> _Doc:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a folder; pass a .yaml config file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text; pass a .yaml config file") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path} line {mark.line + 1}" if mark else str(path)
        problem = e.problem or e.context or "invalid YAML"
        raise ConfigError(f"{where}: could not parse ({problem}); fix the YAML") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: could not parse ({str(e).splitlines()[0]}); fix the YAML") from None
    finally:
        loader.dispose()
    if data is None:
        raise ConfigError(f"{path} is empty; see `tav tune --help` for the config format")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config should be a mapping of keys (like `video: clip.mp4`), "
                          f"got {type(data).__name__}")
    lines: dict[Keys, int] = {}
    _index(node, (), lines, path)
    return _Doc(path, data, lines)


def _video_path(doc: _Doc, value: str) -> Path:
    """Relative to the config's folder; failing that, to the working directory if it is there (the official
    configs name `data/...` relative to the repository root they are run from)."""
    p = Path(value).expanduser()
    if p.is_absolute():
        return p
    beside = doc.folder / p
    if not beside.exists() and p.exists():
        return Path.cwd() / p
    return beside


def _base(doc: _Doc, value: str) -> str:
    """A relative folder or checkpoint file next to the config is resolved; anything else (a hub id) is kept."""
    p = Path(value).expanduser()
    if not p.is_absolute() and (doc.folder / p).exists():
        return str(doc.folder / p)
    return str(p) if value.startswith("~") else value


def _unknown_error(doc: _Doc, keys: list, prefix: Keys, what: str) -> ConfigError:
    first = prefix + (keys[0],)
    names = ", ".join(_dotted(prefix + (k,)) for k in keys)
    return doc.error(first, f"unknown key{'s' if len(keys) > 1 else ''} {names}; {what}")


# --- the official format ---------------------------------------------------------------------------


def _official(doc: _Doc) -> LoadedConfig:
    from tavcli.method.adapters import AdapterSpec
    from tavcli.method.ddim import EditSettings
    from tavcli.app.jobs import EditJob, TuneJob
    from tavcli.method.models import DEFAULT_BASE
    from tavcli.method.tuning import TuneSettings
    from tavcli.method.video import FrameSampling

    top = doc.data
    unknown = [k for k in top if k not in OFFICIAL_KEYS]
    if unknown:
        raise _unknown_error(doc, unknown, (), "the official train_tuneavideo.py would reject it too; "
                                               "check the spelling")
    train = doc.mapping(top, ("train_data",), required=True)
    unknown = [k for k in train if k not in TRAIN_DATA_KEYS]
    if unknown:
        raise _unknown_error(doc, unknown, ("train_data",), f"use {', '.join(sorted(TRAIN_DATA_KEYS))}")

    def t(key, kind, default=_REQUIRED, hint="", check=None):
        return doc.get(train, ("train_data", key), kind, default, hint, check)

    def g(key, kind, default=_REQUIRED, check=None):
        return doc.get(top, (key,), kind, default, check=check)

    video = _video_path(doc, t("video_path", "text", hint="the clip to tune on, e.g. video_path: \"clip.mp4\""))
    prompt = t("prompt", "text", hint="the clip's caption, e.g. prompt: \"a man is skiing\"")
    frames = t("n_sample_frames", "int", 8, check="frames")
    width, height = t("width", "int", 512), t("height", "int", 512)
    start = t("sample_start_idx", "int", 0, check="start")
    stride = t("sample_frame_rate", "int", 1, check="stride")

    base = _base(doc, g("pretrained_model_path", "text", DEFAULT_BASE))
    seed = g("seed", "int", 0)
    steps = g("max_train_steps", "int", 500, check="steps")
    lr = g("learning_rate", "number", 3e-5, check="lr")
    betas = (g("adam_beta1", "number", 0.9), g("adam_beta2", "number", 0.999))
    weight_decay = g("adam_weight_decay", "number", 1e-2)
    max_grad_norm = g("max_grad_norm", "number", 1.0)
    checkpointing = g("gradient_checkpointing", "bool", True)
    precision = top.get("mixed_precision", "fp16")
    if precision is None or precision is False:  # YAML 1.1 reads a bare `no` as false
        precision = "no"
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise doc.error(("mixed_precision",), f"mixed_precision {_show(precision)} is not known; "
                                              f"use one of {', '.join(PRECISIONS)}")
    dtype = PRECISIONS[precision]

    ignored = [k for k in top if k in OFFICIAL_IGNORED]
    notes = []
    for key, ok, why in (
        ("train_batch_size", 1, "1 is the only value"),
        ("gradient_accumulation_steps", 1, "1 is the only value"),
    ):
        if g(key, "int", ok) != ok:
            ignored.append(f"{key} ({why})")
    warmup = g("lr_warmup_steps", "int", 0)
    if g("lr_scheduler", "text", "constant") != "constant":  # whose warm-up the official code ignores
        ignored.append("lr_scheduler (the learning rate is constant)")
        if warmup:
            ignored.append("lr_warmup_steps (no warm-up)")
    if g("adam_epsilon", "number", 1e-8) != 1e-8:
        ignored.append("adam_epsilon (1e-8 is the only value)")
    if top.get("resume_from_checkpoint"):
        ignored.append("resume_from_checkpoint (tuning starts afresh)")
    g("scale_lr", "bool", False)  # lr x batch 1 x accumulation 1 x one process: no change

    modules = g("trainable_modules", "texts", list(PAPER_MODULES))
    if sorted(modules) != sorted(PAPER_MODULES):
        notes.append(f"trainable_modules lists {', '.join(modules) or 'nothing'}; tav trains attn1.to_q, attn2.to_q "
                     "and attn_temp regardless (the paper's set)")

    val = doc.mapping(top, ("validation_data",))

    def v(key, kind, default, check=None):
        return doc.get(val, ("validation_data", key), kind, default, check=check)

    prompts = v("prompts", "texts", [])
    length = v("video_length", "int", frames, check="edit_frames")
    edit_steps = v("num_inference_steps", "int", 50, check="edit_steps")
    guidance = v("guidance_scale", "number", 7.5)
    inversion = v("use_inv_latent", "bool", False)
    inversion_steps = v("num_inv_steps", "int", 50, check="inversion_steps")
    negative = v("negative_prompt", "text", "")
    if prompts and inversion and length != frames:
        raise doc.error(("validation_data", "video_length"),
                        f"validation_data.video_length {length} differs from train_data.n_sample_frames {frames}, "
                        f"but use_inv_latent starts the edits from the clip's {frames}-frame inversion; "
                        f"set video_length to {frames} or use_inv_latent to False")
    if (v("width", "int", width), v("height", "int", height)) != (width, height):
        ignored.append(f"validation_data.width/height (edits come out at the tuned {width}x{height})")
    ignored += [f"validation_data.{k}" for k in val if k not in VALIDATION_KEYS]

    warnings = [f"ignored keys that do not apply to tav: {', '.join(ignored)}"] if ignored else []
    tune = TuneJob(
        video=video, prompt=prompt, base=base, sampling=FrameSampling(frames=frames, start=start, stride=stride),
        width=width, height=height, resize="squash", adapter=AdapterSpec("full", temporal_seed=seed),
        settings=TuneSettings(steps=steps, lr=lr, betas=betas, weight_decay=weight_decay,
                              max_grad_norm=max_grad_norm, seed=seed,
                              gradient_checkpointing=True if checkpointing else None),
        inversion_steps=inversion_steps, dtype=dtype,
    )
    edits = [EditJob(ref="", prompts=prompts, frames=length if length != frames else None, dtype=dtype,
                     settings=EditSettings(steps=edit_steps, guidance=guidance, negative_prompt=negative, seed=seed,
                                           inversion=inversion, inversion_steps=inversion_steps))] if prompts else []
    return LoadedConfig(tune=tune, edits=edits, warnings=warnings + notes, source="official")


# --- tav's format ----------------------------------------------------------------------------------


def _tav(doc: _Doc) -> LoadedConfig:
    from tavcli.method.adapters import AdapterSpec
    from tavcli.method.ddim import EditSettings
    from tavcli.app.jobs import EditJob, TuneJob
    from tavcli.method.models import DEFAULT_BASE
    from tavcli.method.tuning import TuneSettings
    from tavcli.method.video import FrameSampling

    top = doc.data
    unknown = [k for k in top if k not in TAV_KEYS]
    if unknown:
        raise _unknown_error(doc, unknown, (), f"use {', '.join(TAV_KEYS)} (or the official Tune-A-Video format)")

    def g(key, kind, default=_REQUIRED, hint=""):
        return doc.get(top, (key,), kind, default, hint)

    video = _video_path(doc, g("video", "text", hint="the clip to tune on, e.g. video: clip.mp4"))
    prompt = g("prompt", "text", hint="the clip's caption, e.g. prompt: a man is skiing")
    size = g("size", "int", 512)
    frames = g("frames", "int", 8)
    seed = g("seed", "int", 0)
    dtype, device = g("dtype", "text", "auto"), g("device", "text", "auto")
    compiled = g("compile", "bool", False)
    tune = TuneJob(
        video=video, prompt=prompt, name=g("name", "text", None), base=_base(doc, g("base", "text", DEFAULT_BASE)),
        base_config=None if (bc := g("base_config", "text", None)) is None else _base(doc, bc),
        sampling=FrameSampling(frames=frames, start=g("start", "int", 0), stride=g("stride", "int", None)),
        width=g("width", "int", size), height=g("height", "int", size), resize=g("resize", "text", "crop"),
        adapter=AdapterSpec(g("adapter", "text", "full"), rank=g("rank", "int", 16), temporal_seed=seed),
        attention=g("attention", "text", "sparse-causal"),
        settings=TuneSettings(steps=g("steps", "int", 300), lr=g("lr", "number", 3e-5), seed=seed, compile=compiled,
                              gradient_checkpointing=True if g("low_memory", "bool", False) else None),
        inversion_steps=g("inversion_steps", "int", 50), device=device, dtype=dtype,
    )

    groups = top.get("edits")
    if groups is None:
        groups, where = [], []
    elif isinstance(groups, dict):
        groups, where = [groups], [("edits",)]
    elif isinstance(groups, list):
        where = [("edits", i) for i in range(len(groups))]
    else:
        raise doc.error(("edits",), f"edits should be a mapping (prompts, steps, ...) or a list of them, "
                                    f"got {_show(groups)}")
    edits = []
    for group, keys in zip(groups, where):
        if not isinstance(group, dict):
            raise doc.error(keys, f"{_dotted(keys)} should be a mapping (prompts, steps, ...), got {_show(group)}")
        unknown = [k for k in group if k not in TAV_EDIT_KEYS]
        if unknown:
            raise _unknown_error(doc, unknown, keys, f"use {', '.join(TAV_EDIT_KEYS)}")

        def e(key, kind, default=_REQUIRED, check=None, hint=""):
            return doc.get(group, keys + (key,), kind, default, hint, check)

        prompts = e("prompts", "texts", hint="the edit prompts, e.g. prompts: [\"an astronaut is skiing on the moon\"]")
        if not prompts:
            raise doc.error(keys + ("prompts",), f"{_dotted(keys + ('prompts',))} is empty; give at least one")
        inversion = e("inversion", "bool", True)
        length = e("frames", "int", None, check="edit_frames")
        if inversion and length is not None and length != frames:
            raise doc.error(keys + ("frames",),
                            f"{_dotted(keys + ('frames',))} {length} differs from the {frames} tuned frames, but "
                            f"inversion starts the edits from the clip's {frames}-frame inversion; "
                            f"set inversion: false or drop frames")
        edits.append(EditJob(
            ref="", prompts=prompts, frames=length if length != frames else None, device=device, dtype=dtype,
            settings=EditSettings(steps=e("steps", "int", 50, check="edit_steps"),
                                  guidance=e("guidance", "number", 12.5), negative_prompt=e("negative", "text", ""),
                                  seed=seed, inversion=inversion, inversion_steps=tune.inversion_steps,
                                  compile=compiled),
        ))
    return LoadedConfig(tune=tune, edits=edits, warnings=[], source="tav")


# --- the public API ---------------------------------------------------------------------------------


def load_config(path: str | Path) -> LoadedConfig:
    """Parse and check a config file (official Tune-A-Video or tav's format); raises ConfigError."""
    doc = _read(Path(path))
    official = "train_data" in doc.data or "pretrained_model_path" in doc.data
    return _official(doc) if official else _tav(doc)


def apply_overrides(config: LoadedConfig, **flags: Any) -> LoadedConfig:
    """A copy of `config` with the given flags set (a flag whose value is None was not given).

    `seed`, `device`, `dtype` and `compile` also reach the config's edits; `low_memory=False` means tav's own
    choice of gradient checkpointing, as without --low-memory.
    """
    unknown = sorted(set(flags) - set(OVERRIDES))
    if unknown:
        raise TypeError(f"unknown override{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}")
    given = {k: v for k, v in flags.items() if v is not None}
    for key, value in given.items():
        problem = _problem(key, value)
        if problem:
            raise ConfigError(f"--{key.replace('_', '-')} {problem}")

    def pick(obj, **fields):
        changes = {field: given[flag] for field, flag in fields.items() if flag in given}
        return replace(obj, **changes) if changes else obj

    job = config.tune
    settings = pick(job.settings, steps="steps", lr="lr", seed="seed")
    if "low_memory" in given:
        settings = replace(settings, gradient_checkpointing=True if given["low_memory"] else None)
    settings = pick(settings, compile="compile")
    tune = pick(job, prompt="prompt", name="name", base="base", base_config="base_config", width="width", height="height", resize="resize",
                attention="attention", device="device", dtype="dtype")
    tune = replace(tune, sampling=pick(job.sampling, frames="frames", start="start", stride="stride"),
                   adapter=pick(job.adapter, kind="adapter", rank="rank", temporal_seed="seed"), settings=settings)
    if "video" in given:
        tune = replace(tune, video=Path(given["video"]))
    edits = [pick(replace(e, settings=pick(e.settings, seed="seed", compile="compile")), device="device", dtype="dtype")
             for e in config.edits]
    return replace(config, tune=tune, edits=edits)
