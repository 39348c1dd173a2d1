"""YAML configs for `tav tune --config FILE.yaml`: tav's own format, or the official Tune-A-Video one.

Reading only: a file becomes flat options (the names of `tav tune`'s flags) for the tune and for each
edit to run after it, with the file's line for each; `LoadedConfig` builds the jobs from them through
`tavcli.app.jobs`, and `apply_overrides` lays flags over them as a dict merge. What a value may be is the
settings classes' business (`tavcli.method.params`), so a file and a flag are checked alike, in one place.
Nothing here loads a model or imports torch.

**tav's format**: flat keys named like `tav tune`'s flags, any option of the tune (docs/configs.md lists
them), plus `size` (both sides) and `edits` (a mapping, or a list of them, of `tav edit`'s options):

    video: clip.mp4          # relative paths are relative to the config file's folder
    prompt: a man is skiing
    steps: 300
    edits:
      prompts: ["an astronaut is skiing on the moon"]
      guidance: 12.5

The official format is read by `tavcli.app.official.config`. Errors are one line naming the file, the line
and the key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import yaml

from tavcli.errors import BadInput, SettingError, counted
from tavcli.settings import convert

if TYPE_CHECKING:
    from tavcli.app.jobs import EditJob, TuneJob

Keys = tuple  # a key's path in the file: ("train_data", "prompt"), ("edits", 0, "steps")


@dataclass
class Options:
    """Flat options and where each came from (for messages); merging is laying one over another."""

    values: dict[str, Any] = field(default_factory=dict)
    where: dict[str, str] = field(default_factory=dict)

    def set(self, key: str, value: Any, where: str | None = None) -> None:
        self.values[key] = value
        if where:
            self.where[key] = where

    def over(self, base: Options) -> Options:
        """These options laid over `base`'s."""
        return Options({**base.values, **self.values}, {**base.where, **self.where})


@dataclass
class LoadedConfig:
    """A config's tune and edits, as built jobs and as the options they were built from."""

    tune: TuneJob
    edits: list[EditJob]  # each with ref="": the caller fills in the tuned artifact
    warnings: list[str]  # settings in the file that tav does not apply; empty when none
    source: str  # "official", "tav" or "cli"
    tune_options: Options = field(default_factory=Options, repr=False, compare=False)
    edit_options: list[Options] = field(default_factory=list, repr=False, compare=False)
    check: Callable[[TuneJob, list[EditJob], list[Options]], None] | None = field(default=None, repr=False,
                                                                                compare=False)
    resume: bool = False  # continue the latest stopped run of this config (official resume_from_checkpoint)

    @classmethod
    def of(cls, tune: Options, edits: list[Options], warnings: list[str], source: str,
           check: Callable[[TuneJob, list[EditJob], list[Options]], None] | None = None,
           resume: bool = False) -> LoadedConfig:
        """Build the jobs; `check` is the format's own rule between the tune and its edits."""
        from tavcli.app.jobs import edit_job, tune_job

        tune_built = tune_job(tune.values, tune.where)
        edit_built = [edit_job({"ref": "", **e.values}, e.where) for e in edits]
        if check:
            check(tune_built, edit_built, edits)
        # An edit of the tuned length needs no length of its own: it follows the tune's (an override of --frames).
        tuned = tune_built.sampling.frames
        edits = [Options({k: v for k, v in o.values.items() if k != "frames"}, o.where) if e.frames == tuned else o
                 for e, o in zip(edit_built, edits)]
        edit_built = [e.replace(frames=None) if e.frames == tuned else e for e in edit_built]
        return cls(tune_built, edit_built, warnings, source, tune, edits, check, resume)


def edits_options(tune: Options) -> Options:
    """The options of a config's tune that its edits share (seed, device, dtype, compile)."""
    from tavcli.app.jobs import SHARED_WITH_EDITS

    return Options({k: v for k, v in tune.values.items() if k in SHARED_WITH_EDITS},
                   {k: v for k, v in tune.where.items() if k in SHARED_WITH_EDITS})


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

    def error(self, keys: Keys, message: str) -> BadInput:
        return BadInput(f"{self.where(keys)}: {message}")

    def label(self, keys: Keys) -> str:
        """How a message names the key at `keys`: its file and line, and its dotted path."""
        return f"{self.where(keys)}: {_dotted(keys)}"

    def value(self, section: dict, keys: Keys, tp: Any, default: Any = None) -> Any:
        """section[keys[-1]] read as the type `tp` (as the settings would), or `default` when missing or null."""
        value = section.get(keys[-1])
        if value is None:
            return default
        try:
            return convert(value, tp, str(keys[-1]))
        except SettingError as e:
            raise e.located(self.label(keys)) from None

    def mapping(self, section: dict, keys: Keys, required: bool = False) -> dict:
        value = section.get(keys[-1])
        if value is None and not required:
            return {}
        if not isinstance(value, dict):
            what = "is missing" if value is None else f"should be a mapping of keys, got {_show(value)}"
            raise self.error(keys, f"{_dotted(keys)} {what}")
        return value


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
                raise BadInput(f"{path} line {line}: {_dotted(prefix + (key_node.value,))} is given twice "
                                  f"(lines {seen[key_node.value]} and {line}); keep one")
            seen[key_node.value] = line
            lines[prefix + (key_node.value,)] = line
            _index(value_node, prefix + (key_node.value,), lines, path, done)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[prefix + (i,)] = item.start_mark.line + 1
            _index(item, prefix + (i,), lines, path, done)


def read_text(path: Path, described: str, expected: str) -> str:
    """A user's text file (UTF-8, a leading BOM dropped), or a one-line BadInput that names it as `described`
    and says to give `expected` instead."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise BadInput(f"{described}: no such file; check the path") from None
    except IsADirectoryError:
        raise BadInput(f"{described} is a folder; give {expected}") from None
    except OSError as e:
        raise BadInput(f"{described} cannot be read ({e.strerror or e}); check the path") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BadInput(f"{described} is not UTF-8 text; give {expected}, saved as UTF-8") from None


def _read(path: Path) -> _Doc:
    text = read_text(path, f"config {path}", "a .yaml config file")
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path} line {mark.line + 1}" if mark else str(path)
        problem = e.problem or e.context or "invalid YAML"
        raise BadInput(f"{where}: could not parse ({problem}); fix the YAML") from None
    except yaml.YAMLError as e:
        raise BadInput(f"{path}: could not parse ({str(e).splitlines()[0]}); fix the YAML") from None
    finally:
        loader.dispose()
    if data is None:
        raise BadInput(f"{path} is empty; see `tav tune --help` for the config format")
    if not isinstance(data, dict):
        raise BadInput(f"{path}: the config should be a mapping of keys (like `video: clip.mp4`), "
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


def _unknown_error(doc: _Doc, keys: list, prefix: Keys, what: str) -> BadInput:
    first = prefix + (keys[0],)
    names = ", ".join(_dotted(prefix + (k,)) for k in keys)
    return doc.error(first, f"unknown key{'s' if len(keys) > 1 else ''} {names}; {what}")


# --- tav's format ----------------------------------------------------------------------------------


_PATHS = ("video", "base", "base_config")  # resolved against the config's folder


def _tav(doc: _Doc) -> LoadedConfig:
    top, tune = doc.data, Options(where={"*": str(doc.path)})
    for key, value in top.items():
        if key == "edits":
            continue
        label = doc.label((key,))
        if key in _PATHS and value is not None:
            text = doc.value(top, (key,), str)
            value = _video_path(doc, text) if key == "video" else _base(doc, text)
        tune.set(key, value, label)
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
        if not group.get("prompts"):
            raise doc.error(keys + ("prompts",), f"{_dotted(keys + ('prompts',))} is missing or empty; give at "
                                                 "least one, e.g. prompts: [\"an astronaut is skiing on the moon\"]")
        options = Options(where={"*": doc.where(keys)})
        for key, value in group.items():
            options.set(key, value, doc.label(keys + (key,)))
        edits.append(options.over(edits_options(tune)))

    def check(tune_job: TuneJob, edit_jobs: list[EditJob], edit_options: list[Options]) -> None:
        frames = tune_job.sampling.frames
        for job, options in zip(edit_jobs, edit_options):
            if job.settings.inversion and job.frames not in (None, frames):
                raise BadInput(f"{options.where['frames']} {job.frames} differs from the "
                               f"{counted(frames, 'tuned frame')}, but "
                               f"inversion starts the edits from the clip's {frames}-frame inversion; "
                               "set inversion: false or drop frames")

    return LoadedConfig.of(tune, edits, [], "tav", check)


# --- the public API ---------------------------------------------------------------------------------


def load_config(path: str | Path) -> LoadedConfig:
    """Parse and check a config file (official Tune-A-Video or tav's format); raises BadInput."""
    doc = _read(Path(path))
    if "train_data" in doc.data or "pretrained_model_path" in doc.data:
        from tavcli.app.official.config import read_official_config

        return read_official_config(doc)
    return _tav(doc)


def apply_overrides(config: LoadedConfig, **flags: Any) -> LoadedConfig:
    """A copy of `config` with the given flags laid over it (a flag whose value is None was not given).

    `seed`, `device`, `dtype` and `compile` also reach the config's edits.
    """
    given = _flags(flags)
    if not given.values:
        return config
    shared = edits_options(given)
    edits = [shared.over(e) for e in config.edit_options]
    tune, warnings = given.over(config.tune_options), config.warnings
    if config.source == "official":
        from tavcli.app.official.config import fit_to_steps

        tune, notes = fit_to_steps(tune, given)
        warnings = warnings + notes
    return LoadedConfig.of(tune, edits, warnings, config.source, config.check, config.resume)


def from_flags(**flags: Any) -> LoadedConfig:
    """What a plain `tav tune VIDEO PROMPT --flag ...` runs: a tune of the given flags, no edits."""
    return LoadedConfig.of(_flags(flags), [], [], "cli")


def _flags(flags: dict[str, Any]) -> Options:
    given = {k: v for k, v in flags.items() if v is not None}
    return Options(given, {k: f"--{k.replace('_', '-')}" for k in given})
