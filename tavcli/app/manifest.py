"""What an artifact is, as typed records: its source, settings, adapter spec, base identity, inversion,
losses and versions; and what each edit of it was.

The store (`tavcli.app.store`) keeps manifests as JSON and names an artifact by the hash of that JSON; this
module says what the JSON means. `Manifest.from_json` reads any schema this tav knows, applying the numbered
migrations in `MIGRATIONS` in memory (the bytes on disk, and so the artifact's id, never change), and refuses
what does not fit the schema with one line naming the field. `Manifest.to_json` writes the current schema.

Standard library only (plus the torch-free settings classes): `tav list` and `tav show` read it without
loading a model library.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tavcli.app.store import Artifact, Schema, Store
from tavcli.errors import SettingError
from tavcli.method.params import AdapterSpec, TuneSettings
from tavcli.settings import Mode, Settings, convert

SCHEMA = 2
R = TypeVar("R", bound="Record")


class ManifestError(ValueError):
    """A manifest or edit record that does not fit the schema; its message names the field."""


class Origin(Mode):
    TUNED = "tuned"  # by `tav tune`
    OFFICIAL = "official"  # imported from the official Tune-A-Video code's output folder


@dataclass(frozen=True)
class Record:
    """A typed, frozen piece of a manifest, read from and written to JSON by its fields' types."""

    @classmethod
    def from_json(cls: type[R], data: Any, where: str = "") -> R:
        return _read(cls, data, where or cls.__name__.lower())

    def to_json(self) -> dict[str, Any]:
        return _plain(self)


@dataclass(frozen=True)
class Source(Record):
    """The clip tuned on: where it was, its hash, which of its frames were read, at what rate and size."""

    path: str | None
    sha256: str | None
    indices: tuple[int, ...]
    fps: float | None
    frames: int | None
    size: tuple[int, ...] | None


@dataclass(frozen=True)
class Video(Record):
    """The frames the model was tuned on: count, size, playback rate, how the clip was resized."""

    frames: int
    width: int
    height: int
    fps: float
    resize: str = "crop"


@dataclass(frozen=True)
class BaseIdentity(Record):
    """The base model: its name (hub id or absolute path), and what recognises its weights again."""

    name: str
    revision: str | None = None
    fingerprint: str | None = None  # a folder or hub id: see tavcli.method.models.fingerprint
    sha256: str | None = None  # a single-file checkpoint, hashed whole
    config: str | None = None  # a single file's configs folder or hub id

    def to_json(self) -> dict[str, Any]:
        kept = {"name": self.name, "revision": self.revision}
        return kept | {k: v for k, v in _plain(self).items() if k not in kept and v is not None}


def _as_record(settings: type[Settings], name: str, doc: str) -> type[Record]:
    """A record with the fields of a settings class, each optional (None: not known, e.g. for an import), so
    a new setting is recorded without touching the manifest (and reads as None from older manifests)."""
    hints = typing.get_type_hints(settings)
    fields = [(f.name, hints[f.name] | None, field(default=None)) for f in dataclasses.fields(settings)]
    record = dataclasses.make_dataclass(name, fields, bases=(Record,), frozen=True, namespace={"__doc__": doc})
    record.__module__ = __name__
    return record


# The paper's tuning hyper-parameters as run (tavcli.method.params.TuneSettings): steps, lr, betas,
# weight_decay, max_grad_norm, seed; None where an imported model does not say.
Tuning = _as_record(TuneSettings, "Tuning", "The paper's tuning hyper-parameters as run; None where not known.")


@dataclass(frozen=True)
class Run(Record):
    """Where and how the tuning ran: not the paper's, but what explains its speed and its numerics."""

    device: str
    dtype: str
    seconds: float | None = None
    low_memory: bool | None = None
    compile: bool | None = None


@dataclass(frozen=True)
class Provenance(Record):
    """Where the weights came from: tav's own tuning, or an official output folder (and its weights' hash)."""

    origin: Origin = Origin.TUNED
    folder: str | None = None
    weights_sha256: str | None = None


@dataclass(frozen=True)
class Inversion(Record):
    """The stored DDIM inversion of the clip: its steps (None when imported), the official run's step."""

    steps: int | None
    official_step: int | None = None


@dataclass(frozen=True)
class Checkpoint(Record):
    """The adapter as it was after `step` tuning steps (`--checkpoint-every`), beside the final one."""

    step: int
    folder: str  # in the artifact, e.g. "checkpoints/step-000100": an adapter folder like "adapter/"


@dataclass(frozen=True)
class Preview(Record):
    """A video rendered with the model as it was after `step` steps (`--preview`), kept with the artifact."""

    step: int
    prompt: str
    file: str  # in the artifact, e.g. "previews/step-000100-a-panda-is-skiing.mp4"


@dataclass(frozen=True)
class Manifest(Record):
    """Everything stored about an artifact but its files' bytes. `files`, `id` and `created` are the store's:
    read back, never written by `to_json` (the store adds them at commit)."""

    prompt: str
    source: Source
    video: Video
    base: BaseIdentity
    adapter: AdapterSpec
    tuning: Tuning
    run: Run
    inversion: Inversion | None
    loss: tuple[float, ...]
    versions: dict[str, str]
    name: str | None = None
    provenance: Provenance = field(default_factory=Provenance)
    checkpoints: tuple[Checkpoint, ...] = ()  # by step; the final adapter is "adapter/", not listed here
    previews: tuple[Preview, ...] = ()
    files: dict[str, dict] = field(default_factory=dict, compare=False)
    id: str | None = field(default=None, compare=False)
    created: str | None = field(default=None, compare=False)

    @classmethod
    def from_json(cls, data: Any, where: str = "manifest") -> Manifest:
        return _read(cls, migrate(data), where)

    def to_json(self) -> dict[str, Any]:
        content = _plain(self)
        for key in ("files", "id", "created"):
            content.pop(key)
        return content | {"schema": SCHEMA}

    @classmethod
    def of(cls, artifact: Any) -> Manifest:
        """An artifact's typed manifest: the one its store read, or read now (a store opened untyped)."""
        return artifact.record if isinstance(artifact.record, Manifest) else cls.from_json(artifact.manifest)

    def has_file(self, rel: str) -> bool:
        return rel in self.files

    @property
    def has_inversion(self) -> bool:
        return self.inversion is not None and self.has_file("inversion.safetensors")


@dataclass(frozen=True)
class KeptInversion(Record):
    """An inversion computed after the artifact was stored (`tav invert`, or the first edit of a checkpoint),
    kept with it under `added/<name>/` (a record of the store's added.jsonl)."""

    name: str
    step: int  # the tuning step whose adapter inverted it (the final one: the artifact's steps)
    steps: int  # DDIM steps
    indices: tuple[int, ...]  # the source frames it holds
    start: int  # ... as read: `frames` from `start`, every `stride`-th (None: spread over the clip)
    stride: int | None
    source: str  # "source.mp4" (the artifact's copy of the tuned frames: source.safetensors where kept) or the
    # video file read
    file: str  # the latents, e.g. "added/<name>/inversion.safetensors"
    created: str
    files: dict[str, dict] = field(default_factory=dict, compare=False)

    @property
    def frames(self) -> int:
        return len(self.indices)


@dataclass(frozen=True)
class EditRecord(Record):
    """One line of an artifact's edit log: what was asked, where the video went, how long it took."""

    prompt: str
    created: str
    steps: int
    guidance: float
    seed: int
    inversion: bool = True
    negative_prompt: str = ""
    frames: int | None = None
    grid: bool = False
    format: str = "mp4"
    compile: bool = False
    output: str | None = None  # a local path; None for a record that came with an imported artifact
    seconds: float | None = None
    scores: dict[str, float] | None = None
    step: int | None = None  # the tuning step whose adapter edited (REF@STEP); None: the final adapter
    inversion_name: str | None = None  # a kept inversion (`tav invert`), None: the one stored at tuning
    psnr: float | None = None  # `--reconstruct`: dB against the source frames
    # Since issue #10 (absent from older lines, which ran with exactly these defaults; fps: not recorded).
    strength: float = 1.0
    eta: float = 0.0
    scheduler: str = "ddim"
    adapter_scale: float = 1.0
    fps: float | None = None


def edits_of(artifact: Any) -> list[EditRecord]:
    """An artifact's edit log as records, oldest first; a line that does not fit is skipped, like a torn one."""
    found = []
    for i, edit in enumerate(artifact.edits()):
        try:
            found.append(EditRecord.from_json(edit, f"edit {i + 1}"))
        except ManifestError:
            continue
    return found


# --- migrations: MIGRATIONS[n - 1] turns a schema-n manifest into schema n+1 --------------------------------


def _split_tuning(m: dict) -> dict:
    """1 -> 2: `tuning` held the paper's settings, the run's device/dtype/time and, for an official import,
    where the weights came from; schema 2 keeps those apart (`tuning`, `run`, `provenance`). Adapters
    recorded before the `norm` setting pooled their GroupNorms over the clip."""
    tuning = dict(m.get("tuning") or {})
    m["run"] = {k: tuning.pop(k) for k in ("device", "dtype", "seconds", "low_memory", "compile") if k in tuning}
    m["run"].setdefault("device", "unknown")
    m["run"].setdefault("dtype", "unknown")
    folder = tuning.pop("imported_from", None)
    weights = tuning.pop("weights_sha256", None)
    m["provenance"] = ({"origin": "official", "folder": folder, "weights_sha256": weights} if folder
                       else {"origin": "tuned"})
    paper = {f.name for f in dataclasses.fields(Tuning)}
    m["tuning"] = {k: v for k, v in tuning.items() if k in paper}  # cuda_graphs & co. were the runtime's
    if isinstance(m.get("adapter"), dict):
        m["adapter"] = {"norm": "clip"} | m["adapter"]
    return m


MIGRATIONS: tuple[Callable[[dict], dict], ...] = (_split_tuning,)
assert len(MIGRATIONS) == SCHEMA - 1, "one migration per schema step"


def migrate(data: Any) -> dict:
    """A copy of the manifest `data` at the current schema; ManifestError for a schema this tav cannot read."""
    if not isinstance(data, dict):
        raise ManifestError(f"manifest should be a JSON object, got {type(data).__name__}")
    schema = data.get("schema")
    if type(schema) is not int or schema < 1:
        raise ManifestError(f"manifest has no valid schema (got {schema!r})")
    if schema > SCHEMA:
        raise ManifestError(f"manifest has schema {schema}, newer than this tav reads ({SCHEMA}); upgrade tav")
    m = copy.deepcopy(data)
    for step in MIGRATIONS[schema - 1:]:
        m = step(m)
    m["schema"] = SCHEMA
    return m


# --- reading and writing by type ----------------------------------------------------------------------------


def _read(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ManifestError(f"{where} should be a JSON object, got {_kind(data)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ManifestError(f"{where} lacks '{f.name}'")
            continue
        kwargs[f.name] = _value(hints[f.name], data[f.name], f"{where}.{f.name}")
    try:
        return cls(**kwargs)
    except SettingError as e:  # a settings class's own bound (e.g. an adapter's rank)
        raise ManifestError(f"{where}.{e}") from None


def _value(tp: Any, value: Any, where: str) -> Any:
    kind = _strip_optional(tp)
    if value is None and kind is not tp:
        return None
    if isinstance(kind, type) and issubclass(kind, (Record, Settings)):  # Settings: the adapter's spec
        return _read(kind, value, where)
    if typing.get_origin(kind) is tuple and _is_record(typing.get_args(kind)[0]):
        if not isinstance(value, list):
            raise ManifestError(f"{where} should be a list, got {_kind(value)}")
        return tuple(_read(typing.get_args(kind)[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if typing.get_origin(kind) is dict:
        item = typing.get_args(kind)[1]
        if not isinstance(value, dict):
            raise ManifestError(f"{where} should be a JSON object, got {_kind(value)}")
        return {str(k): (v if item is dict else _value(item, v, f"{where}.{k}")) for k, v in value.items()}
    if kind is dict:
        if not isinstance(value, dict):
            raise ManifestError(f"{where} should be a JSON object, got {_kind(value)}")
        return value
    if kind in (int, float) and isinstance(value, str):  # convert() reads YAML's "3e-5"; JSON has real numbers
        raise ManifestError(f"{where} should be a number, got {_kind(value)}")
    try:
        return convert(value, tp, where)
    except SettingError as e:
        raise ManifestError(str(e)) from None


def _plain(obj: Any) -> Any:
    """JSON values of a record's fields (a nested record as its own `to_json` writes it)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: _json_value(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    return _json_value(obj)


def _json_value(obj: Any) -> Any:
    if isinstance(obj, Record):
        return obj.to_json()
    if dataclasses.is_dataclass(obj):
        return _plain(obj)
    if isinstance(obj, Mode):
        return obj.value
    if isinstance(obj, (tuple, list)):
        return [_json_value(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _json_value(v) for k, v in obj.items()}
    return obj


def _is_record(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, Record)


def _strip_optional(tp: Any) -> Any:
    args = typing.get_args(tp)
    if type(None) in args and len(args) == 2:
        return next(a for a in args if a is not type(None))
    return tp


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "text", bool: "true/false", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


# --- the store's view ----------------------------------------------------------------------------------------


def _imported_edit(record: dict) -> dict:
    """An edit record that came in an archive: its output path named a file on another machine, never one to
    open here (`tav score` would read it), so it is dropped."""
    return record | {"output": None}


STORE_SCHEMA = Schema(version=SCHEMA, read=Manifest.from_json, read_edit=EditRecord.from_json,
                      imported_edit=_imported_edit)


def open_store(root: Path | None = None, on_commit: Callable[[Artifact], None] | None = None) -> Store:
    """The artifact store at `root` (default: $TAV_HOME or the user data folder), reading tav's manifests;
    `on_commit` as `Store` takes it."""
    return Store(root, STORE_SCHEMA, on_commit=on_commit)
