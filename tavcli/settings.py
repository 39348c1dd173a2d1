"""How tav's settings are declared, checked and filled: one home for each default and each bound.

A settings class is a frozen dataclass deriving from `Settings`; each field is declared with `setting(...)`,
which holds its default, its help text, its flat option name and its bound. `__post_init__` checks every
bound (and the class's own `check()` for rules that span fields), so a value outside its bound cannot
exist, however it was made: the Python API, a flag or a YAML key.

A job is a tree of settings classes. Its flat options are the leaves' option names (`steps`, `lr`,
`attention`, ...; two leaves may share one, like `seed`). The CLI, tav's YAML and the official YAML each
produce a flat dict of options; an override is a dict merge; `build(Job, flat, where)` makes the job,
refusing an unknown option in one place, and naming where a bad value came from (`--steps`, `run.yaml
line 4: steps`) through `where`.

Standard library only: the CLI reads help texts and defaults from here without importing torch.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

from tavcli.errors import BadInput, SettingError

S = TypeVar("S", bound="Settings")


class Mode(str, Enum):
    """A choice among named modes: parsed once from text, compared and stored as its text."""

    def __str__(self) -> str:
        return self.value

    @classmethod
    def choices(cls) -> tuple[str, ...]:
        return tuple(m.value for m in cls)


def setting(default: Any = dataclasses.MISSING, help: str = "", *, option: str | None = None,
            min: float | None = None, max: float | None = None, positive: bool = False,
            multiple_of: int | None = None, nonempty: bool = False, default_text: str | None = None) -> Any:
    """A settings field: its default, help, flat option name (default: the field's name) and bound.

    `min`/`max` are inclusive; `positive` means > 0; every float must be finite; `default_text` is what
    `--help` shows when the default needs words (e.g. "the one tuned on").
    """
    meta = {"help": help, "option": option, "min": min, "max": max, "positive": positive,
            "multiple_of": multiple_of, "nonempty": nonempty, "default_text": default_text}
    if isinstance(default, (list, dict, set)):
        raise TypeError("a mutable default; use a tuple")
    return dataclasses.field(default=default, metadata=meta)


def nested(cls: type[Settings]) -> Any:
    """A field holding another settings class (its options become this class's options)."""
    return dataclasses.field(default_factory=cls, metadata={"nested": True})


@dataclasses.dataclass(frozen=True)
class Settings:
    """Base of tav's settings classes: checks each field's bound, parses modes, then `check()`."""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            if f.metadata.get("nested"):
                continue
            value = getattr(self, f.name)
            kind = _leaf_type(hints[f.name])
            if isinstance(kind, type) and issubclass(kind, Mode) and isinstance(value, str):
                object.__setattr__(self, f.name, _parse_mode(kind, value, option_of(f)))
            elif kind is Path and isinstance(value, str):
                object.__setattr__(self, f.name, Path(value))
            elif kind is tuple and isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
            _check_bound(f, getattr(self, f.name))
        self.check()

    def check(self) -> None:
        """Rules that span several fields; a subclass overrides it."""

    def replace(self: S, **changes: Any) -> S:
        return dataclasses.replace(self, **changes)


def option_of(f: dataclasses.Field) -> str:
    return f.metadata.get("option") or f.name


def _parse_mode(kind: type[Mode], value: str, option: str) -> Mode:
    try:
        return kind(value)
    except ValueError:
        raise SettingError(option, f"{value!r} is not known; use one of {', '.join(kind.choices())}") from None


def _check_bound(f: dataclasses.Field, value: Any) -> None:
    meta, option = f.metadata, option_of(f)
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise SettingError(option, f"must be a finite number, got {value}")
    if isinstance(value, (int, float)):
        if meta.get("positive") and not value > 0:
            raise SettingError(option, f"must be positive, got {value}")
        if meta.get("multiple_of") and meta.get("min") is not None and value < meta["min"]:
            raise SettingError(option, f"{value} must be a multiple of {meta['multiple_of']}, at least {meta['min']}")
        if meta.get("min") is not None and value < meta["min"]:
            raise SettingError(option, f"must be at least {meta['min']}, got {value}")
        if meta.get("max") is not None and value > meta["max"]:
            raise SettingError(option, f"must be at most {meta['max']}, got {value}")
        if meta.get("multiple_of") and value % meta["multiple_of"]:
            low = value - value % meta["multiple_of"]
            raise SettingError(option, f"{value} is not a multiple of {meta['multiple_of']}; use {low or meta['multiple_of']} "
                                       f"or {low + meta['multiple_of']}")
    if meta.get("nonempty") and isinstance(value, str) and not value.strip():
        raise SettingError(option, "is empty")


# --- a job's flat options --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Option:
    """One flat option of a job: the leaf fields it fills (a path of field names each) and how it reads."""

    name: str
    paths: tuple[tuple[str, ...], ...]
    type: Any
    default: Any
    help: str
    default_text: str | None

    def default_shown(self) -> str | None:
        """The default as `--help` shows it; None for no default worth showing."""
        if self.default_text is not None:
            return self.default_text
        if self.default is None or self.default is dataclasses.MISSING:
            return None
        if isinstance(self.default, bool):
            return "yes" if self.default else "no"
        if isinstance(self.default, tuple):
            return ", ".join(str(v) for v in self.default)
        return str(self.default) if str(self.default) != "" else '""'


def options(cls: type[Settings]) -> dict[str, Option]:
    """Every flat option of a settings tree, by name."""
    found: dict[str, Option] = {}
    for path, f, tp in _leaves(cls, ()):
        name = option_of(f)
        default = f.default if f.default is not dataclasses.MISSING else dataclasses.MISSING
        if name in found:
            prev = found[name]
            found[name] = dataclasses.replace(prev, paths=prev.paths + (path,))
        else:
            found[name] = Option(name, (path,), tp, default, f.metadata.get("help", ""),
                                 f.metadata.get("default_text"))
    return found


def _leaves(cls: type[Settings], prefix: tuple[str, ...]):
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("nested"):
            yield from _leaves(_leaf_type(hints[f.name]), prefix + (f.name,))
        else:
            yield prefix + (f.name,), f, hints[f.name]


def build(cls: type[S], flat: Mapping[str, Any], where: Mapping[str, str] | None = None) -> S:
    """The job `cls` with the flat options `flat` set and every other at its default.

    `where` names the place each option came from, for messages: `{"steps": "--steps"}`, `{"steps": "run.yaml
    line 4: steps"}`; its entry "*" is the place of options it does not name (a missing one: "run.yaml").
    """
    where = where or {}

    def label(key: str) -> str:
        return where.get(key) or (f"{where['*']}: {key}" if "*" in where else key)

    known = options(cls)
    unknown = [k for k in flat if k not in known]
    if unknown:
        others = f" (so {'is' if len(unknown) == 2 else 'are'} {', '.join(unknown[1:])})" if len(unknown) > 1 else ""
        raise BadInput(f"{label(unknown[0])} is not a known option{others}; use {', '.join(sorted(known))}")
    values: dict[tuple[str, ...], Any] = {}
    for key, value in flat.items():
        option = known[key]
        try:
            converted = convert(value, option.type, key)
        except SettingError as e:
            raise e.located(label(key)) from None
        for path in option.paths:
            values[path] = converted
    try:
        return _make(cls, (), values)
    except SettingError as e:
        raise e.located(label(e.option)) from None


def _make(cls: type[S], prefix: tuple[str, ...], values: dict[tuple[str, ...], Any]) -> S:
    hints, kwargs = _hints(cls), {}
    for f in dataclasses.fields(cls):
        path = prefix + (f.name,)
        if f.metadata.get("nested"):
            kwargs[f.name] = _make(_leaf_type(hints[f.name]), path, values)
        elif path in values:
            kwargs[f.name] = values[path]
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SettingError(option_of(f), "is missing; give it")
    return cls(**kwargs)


_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "text (quote it)",
          Path: "a path", tuple: "a list"}


def convert(value: Any, tp: Any, option: str) -> Any:
    """`value` (from YAML, or already typed by the CLI) as the field type `tp`; SettingError if it is not."""
    optional = _is_optional(tp)
    kind = _leaf_type(tp)
    if value is None:
        if optional:
            return None
        raise SettingError(option, f"should be {_WORDS.get(kind, 'a value')}, got null")
    if isinstance(kind, type) and issubclass(kind, Mode):
        if isinstance(value, str):
            return _parse_mode(kind, value, option)
        raise SettingError(option, f"should be one of {', '.join(kind.choices())}, got {_show(value)}")
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-5 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind is str:
        ok = isinstance(value, str)
    elif kind is Path:
        ok = isinstance(value, (str, Path))
        value = Path(value) if ok else value
    elif kind is tuple:
        item = _tuple_item(tp)
        if isinstance(value, str) and item is str:
            value = [value]  # one text where a list of texts goes: `prompts: a panda`
        ok = isinstance(value, (list, tuple))
        value = tuple(convert(v, item, option) for v in value) if ok else value
    else:
        ok = True
    if not ok:
        raise SettingError(option, f"should be {_WORDS.get(kind, 'a value')}, got {_show(value)}")
    return value


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _is_optional(tp: Any) -> bool:
    return type(None) in typing.get_args(tp) and typing.get_origin(tp) in (typing.Union, types.UnionType)


def _leaf_type(tp: Any) -> Any:
    """int | None -> int; tuple[float, float] -> tuple; a class -> itself."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0] if len(args) == 1 else tp
    return typing.get_origin(tp) or tp


def _tuple_item(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    args = [a for a in typing.get_args(tp) if a is not Ellipsis]
    return args[0] if args else str
