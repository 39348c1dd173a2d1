"""A local artifact store of tuned videos: boring and safe, like git's object store or huggingface_hub's cache.

It knows files, not models. A caller stages files in a directory; `commit` hashes them, writes the manifest and
moves the directory into `artifacts/` with one rename, so a crash leaves either no artifact or a complete one.
An artifact's id is the sha256 of its manifest's content (file hashes included): the same result stored twice is
stored once, and an export cannot be altered unnoticed. Layout under `root`:

    artifacts/<id>/manifest.json   caller's fields + "schema", "files" {relpath: {sha256, bytes}}, "id", "created"
    artifacts/<id>/<files...>      whatever the caller staged
    artifacts/<id>/edits.jsonl     append-only edit log, one JSON object a line (not hashed: it grows)
    artifacts/<id>/added/<name>/   files kept with an artifact after it was stored (a later inversion), each
    artifacts/<id>/added.jsonl     set recorded with its files' hashes; derived data, not exported
    tmp/                           staging and removal dirs; those over an hour old and unlocked go at open
    locks/                         one lock per artifact, for its edit log; one per name a running tune reserved
    store.lock                     held while artifacts/ changes, and only for the rename

A store that is not writable (a read-only copy, another user's) still lists, shows and exports; commands
that write to it are refused before they start, naming the folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import platformdirs
from filelock import FileLock, Timeout

from tavcli.app.interrupts import held
from tavcli.errors import BadInput, Corrupt, NotFound

SCHEMA = 1  # the version an untyped store writes; tav's own manifests say theirs (tavcli.app.manifest)
STALE_SECONDS = 3600  # a staging dir this old, and not locked by a live process, is a crash's leftover
LOCK_TIMEOUT = 60.0  # seconds; locks are held for renames and appends only, never while hashing or copying
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")  # not '-x' (read as a flag), '.' or '..'
_HEX = re.compile(r"[0-9a-f]+")
_ANY_CASE_HEX = re.compile(r"[0-9a-fA-F]+")
_ID = re.compile(r"[0-9a-f]{64}")
_DRIVE = re.compile(r"[A-Za-z]:")
_RESERVED = ("manifest.json", "edits.jsonl", "added.jsonl")  # the store's own files in an artifact dir
_CHUNK = 1 << 20


def _as_is(record: dict) -> dict:
    return record


@dataclass(frozen=True)
class Schema:
    """What the store's manifests and edit records mean, given by the application (tavcli.app.manifest);
    the store itself knows files. This default keeps any JSON object as it is.

    `read` turns a stored manifest into its typed record (raising ValueError naming what does not fit);
    `read_edit` likewise for one edit-log line; `imported_edit` is what an edit record of an imported
    archive keeps (its output path was another machine's).
    """

    version: int = SCHEMA
    read: Callable[[dict], Any] = _as_is
    read_edit: Callable[[dict], Any] = _as_is
    imported_edit: Callable[[dict], dict] = _as_is


@dataclass(frozen=True)
class Damaged:
    """An artifact dir whose manifest cannot be read: listed apart, refused by commands, removable."""

    id: str
    path: Path
    problem: str
    name = None  # unreadable with the rest of its manifest

    @property
    def short_id(self) -> str:
        return self.id[:12]

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())


def default_root() -> Path:
    env = os.environ.get("TAV_HOME")
    return Path(env).expanduser() if env else Path(platformdirs.user_data_dir("tav"))


def _named(root: Path) -> str:
    """The store's folder as a message names it: by TAV_HOME when that is where it came from."""
    env = os.environ.get("TAV_HOME")
    if env and Path(env).expanduser() == root:
        return f"the store TAV_HOME={env}"
    return f"the store {root} (TAV_HOME picks another)"


@dataclass(frozen=True)
class Artifact:
    id: str
    path: Path
    manifest: dict = field(compare=False, repr=False)  # compared and hashed by id and path
    record: Any = field(default=None, compare=False, repr=False)  # the manifest as its schema reads it

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def name(self) -> str | None:
        return self.manifest.get("name")

    @property
    def created(self) -> str:
        return self.manifest["created"]

    def file(self, rel: str) -> Path:
        if rel not in self.manifest["files"]:
            raise Corrupt(f"artifact {self.short_id} has no file '{rel}'; "
                                       f"it has {', '.join(self.manifest['files']) or 'none'}")
        if not (self.path / rel).is_file():
            raise Corrupt(f"file '{rel}' of {self.short_id} is missing; {_redo(self)}")
        return self.path / rel

    def edits(self) -> list[dict]:
        try:
            data = (self.path / "edits.jsonl").read_bytes()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in _json_lines(data)]

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())


class Store:
    def __init__(self, root: Path | None = None, schema: Schema = Schema(),
                 on_commit: Callable[[Artifact], None] | None = None) -> None:
        """The store at `root` (default: $TAV_HOME, else the platform's user data folder). `on_commit` is
        called with each artifact this store commits, in the same breath as its rename (no signal between):
        the CLI uses it to know that, from then on, the command has a result."""
        self.root = Path(root) if root is not None else default_root()
        self.schema = schema
        self.on_commit = on_commit
        self._artifacts, self._tmp = self.root / "artifacts", self.root / "tmp"
        self._names: dict[str, FileLock] = {}  # names this store reserved for a running tune
        if self.root.exists() and not self.root.is_dir():
            raise BadInput(f"{_named(self.root)} is a file, not a folder; point TAV_HOME at a folder")
        self._unwritable = self._prepare()
        if self._unwritable is None:
            self._clean_tmp()

    def _prepare(self) -> str | None:
        """Make the store's folders; why they cannot be written, or None when they can."""
        try:
            for sub in ("artifacts", "tmp", "locks"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            return e.strerror or type(e).__name__
        for sub in ("artifacts", "tmp", "locks"):
            if not os.access(self.root / sub, os.W_OK | os.X_OK):
                return f"{sub}/ is read-only"
        return None

    def check_writable(self) -> None:
        """Refuse, before any work, a command that would write to a store it cannot write."""
        if self._unwritable is not None:
            raise BadInput(f"{_named(self.root)} is not writable ({self._unwritable}); fix its permissions "
                           "or point TAV_HOME at a folder you can write")

    @contextmanager
    def staging(self) -> Iterator[Path]:
        self.check_writable()
        stage = Path(tempfile.mkdtemp(prefix="stage-", dir=self._tmp))
        # Held for the stage's whole life, so another process's clean-up spares it however long a job runs.
        lock = FileLock(f"{stage}.lock", timeout=0)
        lock.acquire()
        try:
            yield stage
        finally:  # also on KeyboardInterrupt; after a commit the stage is already gone
            _rm(stage)
            lock.release()
            Path(f"{stage}.lock").unlink(missing_ok=True)

    def commit(self, stage: Path, manifest: dict, replaces: Artifact | None = None) -> Artifact:
        """Store the staged files with `manifest` as one artifact (one rename); with `replaces`, that
        artifact goes in the same locked step (its name passes to the new one): see `rewrite`."""
        stage = Path(stage)
        # Same directory, same filesystem: the final rename is atomic.
        if not stage.is_dir() or stage.resolve().parent != self._tmp.resolve():
            raise BadInput(f"{stage} is not a staging dir of this store; create one with Store.staging()")
        if (stage / "manifest.json").exists():
            raise BadInput(f"{stage} holds a manifest.json; the store writes it, pass the fields to commit()")
        if not isinstance(manifest, dict):
            raise BadInput(f"manifest must be a dict, got {type(manifest).__name__}; pass a dict of JSON values")
        try:  # a deep copy in JSON types (tuples become lists), so the id is the same once read back
            content = json.loads(_canonical(manifest))
        except (TypeError, ValueError) as e:
            raise BadInput(f"manifest is not JSON ({e}); pass only str, numbers, bools, lists and dicts") from None
        _check_name(content.get("name"))
        content.pop("id", None)
        created = content.pop("created", None) or datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if not isinstance(created, str):
            raise BadInput(f"manifest 'created' must be an ISO 8601 string, got {created!r}; leave it out")
        # an import keeps the schema it was written in (its id hashes it); a new manifest gets the store's
        content.update(schema=content.get("schema", self.schema.version), files=_scan(stage))
        full = {**content, "id": _content_id(content), "created": created}
        try:
            record = self.schema.read(full)  # a job's manifest that its own schema refuses is a bug: stop here
        except ValueError as e:
            raise BadInput(f"the manifest does not fit its schema: {e}") from None
        dest = self._artifacts / full["id"]
        _fsync_tree(stage)  # the slow part, outside the lock: the stage is ours alone
        with self._locked(self.root / "store.lock"):
            if dest.exists():  # the same content is stored once; a re-import may still bring new edits
                existing = self._load(dest)
                self._merge_edits(existing, stage / "edits.jsonl")
                _rm(stage)
                if self.on_commit is not None:
                    self.on_commit(existing)
                return existing
            self.check_name(full.get("name"), besides=replaces)
            with open(stage / "manifest.json", "w", encoding="utf-8") as f:
                json.dump(full, f, indent=2, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            _fsync(stage)
            artifact = Artifact(full["id"], dest, full, record)
            with held():  # the rename and telling the caller are one step for a signal: stored means reported
                os.rename(stage, dest)
                trash = self._discard(self._artifacts / replaces.id) if replaces is not None else None
                if self.on_commit is not None:
                    self.on_commit(artifact)
            _fsync(self._artifacts)
        if trash is not None:
            _rm(trash)
        return artifact

    def rewrite(self, artifact: Artifact, manifest: dict, keep: Callable[[str], bool]) -> Artifact:
        """`artifact` again, with `manifest` and only the files (and added files) for which `keep(rel)`
        holds, as a new artifact that takes its place and its name (its id changes: it is other content).
        Files are hard links where the filesystem allows, so dropping checkpoints costs no copy."""
        self.verify(artifact)
        old = self._artifacts / artifact.id
        with self.staging() as stage:
            rels = [rel for rel in artifact.manifest["files"] if keep(rel)]
            added = [r for r in self.added(artifact) if all(keep(rel) for rel in r.get("files", {}))]
            for rel in rels + [rel for r in added for rel in r["files"]]:
                (stage / rel).parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(old / rel, stage / rel)
                except OSError:
                    shutil.copyfile(old / rel, stage / rel)
            with self._locked(self.root / "locks" / f"{artifact.id}.lock"):
                if (old / "edits.jsonl").is_file():
                    shutil.copyfile(old / "edits.jsonl", stage / "edits.jsonl")
            (stage / "added.jsonl").write_bytes(b"".join(_canonical(r) + b"\n" for r in added))
            return self.commit(stage, manifest, replaces=artifact)

    def check_name(self, name: str | None, besides: Artifact | None = None) -> None:
        """Refuse an invalid or taken name (by another artifact than `besides`), or one another running tune
        reserved; jobs call it before their work, commit again under the lock."""
        _check_name(name)
        if name is None:
            return
        for other in self.list():
            if other.name == name and (besides is None or other.id != besides.id):
                raise BadInput(f"name '{name}' is taken by {other.short_id}; "
                                 f"choose another --name or `tav rm {name}`")
        if name not in self._names and self._unwritable is None:
            try:
                with self._name_lock(name):
                    pass
            except Timeout:
                raise BadInput(f"name '{name}' is reserved by a tav tune running now; choose another --name, "
                               "or wait for that one to finish") from None

    @contextmanager
    def reserving(self, name: str | None) -> Iterator[None]:
        """Hold `name` for a job's whole run, so a second job with the same name stops at its start rather than
        after all its work; released when the job ends, however (the OS drops the lock of a killed process)."""
        if name is None:
            yield
            return
        self.check_writable()
        self.check_name(name)
        lock = self._name_lock(name)
        try:
            lock.acquire()
        except Timeout:
            raise BadInput(f"name '{name}' is reserved by a tav tune running now; choose another --name, "
                           "or wait for that one to finish") from None
        self._names[name] = lock
        try:
            yield
        finally:
            del self._names[name]
            lock.release()

    def _name_lock(self, name: str) -> FileLock:
        return FileLock(self.root / "locks" / f"name-{name}.lock", timeout=0)

    def list(self) -> list[Artifact]:
        return self._scan_artifacts()[0]

    def damaged(self) -> list[Damaged]:
        """The artifact dirs whose manifest is missing, unreadable or does not fit the schema."""
        return self._scan_artifacts()[1]

    def _scan_artifacts(self) -> tuple[list[Artifact], list[Damaged]]:
        found, damaged = [], []
        for path in self._artifacts.iterdir() if self._artifacts.is_dir() else ():
            if _ID.fullmatch(path.name):
                try:
                    found.append(self._load(path))
                except Corrupt as e:  # listing must not fail on one damaged dir: it is listed apart
                    damaged.append(Damaged(path.name, path, str(e)))
        return sorted(found, key=lambda a: (a.created, a.id)), sorted(damaged, key=lambda d: d.id)

    def resolve(self, ref: str, damaged: bool = False) -> Artifact:
        """The artifact `ref` names: a full id, a unique id prefix (4+ characters) or a name. A damaged one
        raises Corrupt saying so, or, with `damaged`, is returned as a `Damaged` (for `tav rm`)."""
        arts, broken = self._scan_artifacts()
        if len(ref) >= 4 and _ANY_CASE_HEX.fullmatch(ref):
            ref = ref.lower()  # an id copied in upper case is still that id; no name looks like one
        exact = [a for a in arts if a.id == ref]
        if exact:
            return exact[0]
        is_hex = bool(_HEX.fullmatch(ref))
        if is_hex and 4 <= len(ref) <= 64:
            matches = [a for a in arts if a.id.startswith(ref)]  # names are never 4+ hex chars: no overlap
            matches += [d for d in broken if d.id.startswith(ref)]
        else:
            matches = [a for a in arts if a.name == ref]
        if not matches and is_hex and len(ref) < 4:
            raise NotFound(f"'{ref}' is too short to pick an artifact; use at least 4 characters of its id")
        if not matches:
            raise NotFound(f"no artifact matches '{ref}'; see `tav list`")
        if len(matches) == 1 and isinstance(matches[0], Damaged) and not damaged:
            raise Corrupt(matches[0].problem)
        if len(matches) > 1:
            listed = ", ".join(f"{a.short_id} ({a.name or 'unnamed'})" for a in matches)
            raise BadInput(f"'{ref}' matches {len(matches)} artifacts: {listed}; use more characters")
        return matches[0]

    def verify(self, artifact: Artifact) -> None:
        fresh = self._load(self._artifacts / artifact.id)  # the disk's manifest, not a possibly stale copy
        if _content_id(fresh.manifest) != fresh.id:
            raise Corrupt(f"the manifest of {fresh.short_id} does not match its id; {_redo(fresh)}")
        for rel, meta in fresh.manifest["files"].items():
            path = fresh.path / rel
            if not path.is_file():
                raise Corrupt(f"file '{rel}' of {fresh.short_id} is missing; {_redo(fresh)}")
            if not isinstance(meta, dict) or _sha256(path) != meta.get("sha256"):
                raise Corrupt(f"file '{rel}' of {fresh.short_id} does not match its sha256; "
                                           f"{_redo(fresh)}")

    def append_edit(self, artifact: Artifact, record: dict) -> None:
        if not isinstance(record, dict):
            raise BadInput(f"an edit record must be a dict, got {type(record).__name__}")
        try:
            line = _edit_line(record)
        except (TypeError, ValueError) as e:
            raise BadInput(f"edit record is not JSON ({e}); pass only str, numbers, bools, lists, dicts") from None
        self.check_writable()
        with self._locked(self.root / "locks" / f"{artifact.id}.lock"):
            self._append(self._artifacts / artifact.id / "edits.jsonl", line)

    def add(self, artifact: Artifact, name: str, stage: Path, record: dict) -> dict:
        """Keep the files of `stage` (a staging dir) with `artifact`, as `added/<name>/`, recorded in its
        `added.jsonl` with their hashes. The artifact's own files and id never change: what is added is
        derived data (e.g. an inversion computed later), verified when read, dropped by `prune`, not exported."""
        stage = Path(stage)
        if not stage.is_dir() or stage.resolve().parent != self._tmp.resolve():
            raise BadInput(f"{stage} is not a staging dir of this store; create one with Store.staging()")
        _check_name(name)
        files = {f"added/{name}/{rel}": meta for rel, meta in _scan(stage).items()}
        full = record | {"name": name, "files": files,
                         "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        line = _canonical(full) + b"\n"
        _fsync_tree(stage)
        with self._locked(self.root / "locks" / f"{artifact.id}.lock"):
            if any(r["name"] == name for r in self.added(artifact)):
                raise BadInput(f"{artifact.short_id} already keeps '{name}'; choose another name")
            dest = self._artifacts / artifact.id / "added" / name
            if dest.exists():  # a crash between the rename and the record left it: unrecorded, so unused
                _rm(dest)
            dest.parent.mkdir(exist_ok=True)
            os.rename(stage, dest)
            _fsync(dest.parent)
            self._append(self._artifacts / artifact.id / "added.jsonl", line)
        return full

    def added(self, artifact: Artifact) -> list[dict]:
        """The records of what was added to `artifact` after it was stored, oldest first."""
        try:
            data = (self._artifacts / artifact.id / "added.jsonl").read_bytes()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in _json_lines(data)]

    def added_file(self, artifact: Artifact, files: dict, rel: str) -> Path:
        """The path of file `rel` of an added record (whose `files` are given), its sha256 checked."""
        meta = files.get(rel)
        path = self._artifacts / artifact.id / rel
        if not isinstance(meta, dict) or not path.is_file() or _sha256(path) != meta.get("sha256"):
            raise Corrupt(f"'{rel}' kept with {artifact.short_id} is missing or damaged")
        return path

    def remove(self, artifact: Artifact | Damaged) -> None:
        self.check_writable()
        with self._locked(self.root / "store.lock"):
            path = self._artifacts / artifact.id
            if not path.is_dir():
                raise NotFound(f"artifact {artifact.short_id} is not in {self.root}; see `tav list`")
            trash = self._discard(path)
        _rm(trash)  # slow for big files, and already out of sight: no lock needed
        (self.root / "locks" / f"{artifact.id}.lock").unlink(missing_ok=True)

    def export(self, artifact: Artifact, dest: Path, force: bool = False) -> Path:
        dest = Path(dest)
        if dest.suffix != ".tav":
            raise BadInput(f"export file '{dest.name}' does not end in .tav; use e.g. '{dest.stem or 'video'}.tav'")
        if dest.is_dir() or (dest.exists() and not force):
            raise BadInput(f"{dest} exists; use --force to overwrite" if not dest.is_dir()
                              else f"{dest} is a directory; give a file path ending in .tav")
        if not dest.parent.is_dir():
            raise BadInput(f"directory {dest.parent} does not exist; create it first")
        self.verify(artifact)
        path = self._artifacts / artifact.id
        manifest = (path / "manifest.json").read_bytes()  # the verified one, not the caller's copy
        # A consistent snapshot of the log; a store we cannot write has no writer of ours to wait for, and a
        # line torn by another's append is dropped on import.
        log = path / "edits.jsonl"
        with (self._locked(self.root / "locks" / f"{artifact.id}.lock") if self._unwritable is None
              else nullcontext()):
            edits = log.read_bytes() if log.is_file() else None
        part = dest.parent / f".{dest.name}.{secrets.token_hex(4)}.part"
        try:
            # os.open with 0o666 lets the umask decide, as for any file the user writes (mkstemp says 0600).
            with os.fdopen(os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as raw:
                with zipfile.ZipFile(raw, "w") as zf:
                    _zip_add(zf, "manifest.json", manifest)
                    for rel in json.loads(manifest)["files"]:
                        _zip_add(zf, f"files/{rel}", path / rel)
                    if edits is not None:
                        _zip_add(zf, "edits.jsonl", edits)
                raw.flush()
                os.fsync(raw.fileno())
            os.replace(part, dest)  # readers see the old file or the whole new one
        except BaseException:
            Path(part).unlink(missing_ok=True)
            raise
        _fsync(dest.parent)
        return dest

    def export_folder(self, artifact: Artifact, rel: str, dest: Path, force: bool = False) -> Path:
        """Copy one folder of an artifact (its `adapter/`: a PEFT folder) to `dest`, verified, all or nothing."""
        with self.exporting_folder(artifact, dest, force) as part:
            shutil.copytree(self._artifacts / artifact.id / rel, part, dirs_exist_ok=True,
                            copy_function=shutil.copyfile)
        return Path(dest)

    @contextmanager
    def exporting_folder(self, artifact: Artifact, dest: Path, force: bool = False) -> Iterator[Path]:
        """Check `dest` and the artifact (verified), then give an empty folder beside `dest` to fill; when the
        block ends it is renamed into place (an existing `dest`, with `force`, swapped out first), or removed
        if the block fails: `dest` is never half-written."""
        dest = Path(dest)
        check_folder_dest(dest, force)
        self.verify(artifact)
        with replacing_folder(dest) as part:
            yield part

    def import_files(self, manifest: dict, files: dict[str, Path], edits: list[dict], where: str,
                     name: str | None = None) -> Artifact:
        """An artifact from loose files (a folder `tav export` wrote): `files` maps each of the manifest's
        relpaths to a file, whose size and sha256 must be the manifest's, as the manifest's must be its id.
        `where` names the source in errors; `name` renames it (a new id). Nothing reaches the store unless
        all of it checks out."""
        def bad(why: str) -> BadInput:
            return BadInput(f"{where} is not a tav export: {why}")

        _check_name(name)
        _check_manifest(manifest, bad, where, self.schema)
        _check_content(manifest, bad, where, self.schema)
        if name is not None:
            manifest = {**manifest, "name": name}
        if set(files) != set(manifest["files"]):
            raise bad(f"it lacks {sorted(set(manifest['files']) - set(files))[:1] or 'nothing'} or has "
                      f"{sorted(set(files) - set(manifest['files']))[:1] or 'nothing'} beyond its manifest")
        with self.staging() as stage:
            for rel, meta in manifest["files"].items():
                src, target = Path(files[rel]), stage / rel
                if not src.is_file():
                    raise bad(f"file '{src}' is missing")
                if src.stat().st_size != meta["bytes"] or _sha256(src) != meta["sha256"]:
                    raise Corrupt(f"{where}: {src.name} does not match its sha256 (damaged or altered); "
                                  "export it again")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, target)
                if _sha256(target) != meta["sha256"]:  # changed while copied
                    raise Corrupt(f"{where}: {src.name} changed while it was read; import it again")
            if edits:  # as an archive's: unfit records dropped, outputs (another machine's paths) too
                (stage / "edits.jsonl").write_bytes(self._imported_edits(b"".join(_edit_line(e) for e in edits)))
            return self.commit(stage, manifest)

    def import_file(self, src: Path, name: str | None = None) -> Artifact:
        """Bring an export in (hashes verified); `name` renames it (a new name is new content: a new id)."""
        src = Path(src)
        _check_name(name)
        if not src.is_file():
            raise BadInput(f"{src} not found; give the path of a .tav file made by `tav export`")
        try:
            zf = zipfile.ZipFile(src)
        except (zipfile.BadZipFile, OSError) as e:
            raise BadInput(f"{src} is not a tav export ({e}); give a .tav file made by `tav export`") from None
        try:
            with zf:
                manifest, members = _read_export(zf, src, self.schema)
                if name is not None:
                    manifest = {**manifest, "name": name}
                with self.staging() as stage:
                    for rel, meta in manifest["files"].items():
                        _extract(zf, members[f"files/{rel}"], stage, rel, meta, src)
                    if "edits.jsonl" in members:  # torn or unfit lines are dropped, as edit_records() would
                        (stage / "edits.jsonl").write_bytes(self._imported_edits(zf.read(members["edits.jsonl"])))
                    return self.commit(stage, manifest)
        except (zipfile.BadZipFile, zlib.error, EOFError) as e:
            raise Corrupt(f"{src} is damaged ({e}); export it again") from None
        except OSError as e:  # what the checks above did not foresee: still one line, the store as it was
            raise BadInput(f"{src} could not be imported ({e.strerror or e}); give a .tav file made by `tav "
                           "export`") from None

    def info(self) -> dict:
        arts, damaged = self._scan_artifacts()
        return {"root": str(self.root), "artifacts": len(arts), "damaged": len(damaged),
                "bytes": sum(a.size_bytes() for a in [*arts, *damaged])}

    # -- internals --------------------------------------------------------------------------------------------

    @contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        lock = FileLock(path, timeout=LOCK_TIMEOUT)
        try:
            lock.acquire()
        except Timeout:
            raise BadInput(f"{path} is held by another tav process for over {LOCK_TIMEOUT:.0f}s; "
                             "wait for it to finish and retry") from None
        try:
            yield
        finally:
            lock.release()

    def _load(self, path: Path) -> Artifact:
        try:
            manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
            ok = (isinstance(manifest, dict) and manifest.get("id") == path.name
                  and isinstance(manifest.get("created"), str) and isinstance(manifest.get("files"), dict))
        except (OSError, ValueError):
            ok = False
        if not ok:
            raise Corrupt(f"{path}/manifest.json is missing or unreadable; delete it with `tav rm {path.name[:12]}` "
                          "and run the job again")
        try:
            record = self.schema.read(manifest)
        except ValueError as e:
            raise Corrupt(f"{path}/manifest.json is unreadable ({e}); delete it with `tav rm {path.name[:12]}` "
                          "and run the job again") from None
        return Artifact(path.name, path, manifest, record)

    def _discard(self, path: Path) -> Path:
        """Move `path` out of artifacts/ in one rename (the caller holds the store lock); returns where it went."""
        trash = self._tmp / f"rm-{secrets.token_hex(8)}"
        os.rename(path, trash)
        _fsync(self._artifacts)
        return trash

    def _merge_edits(self, artifact: Artifact, log: Path) -> None:
        """Append the lines of `log` that `artifact`'s edit log lacks (a re-import must not lose edits)."""
        if not log.is_file():
            return
        with self._locked(self.root / "locks" / f"{artifact.id}.lock"):
            ours = artifact.path / "edits.jsonl"
            # as an import keeps them: a local record and its imported copy (output dropped) are one edit
            have = {self._as_imported(line) for line in _json_lines(ours.read_bytes())} if ours.is_file() else set()
            new = [line for line in _json_lines(log.read_bytes()) if self._as_imported(line) not in have]
            if new:
                self._append(ours, b"".join(line + b"\n" for line in new))

    def _as_imported(self, line: bytes) -> bytes:
        return _canonical(self.schema.imported_edit(json.loads(line)))

    def _imported_edits(self, data: bytes) -> bytes:
        """The lines of an imported edit log that fit the schema, as an import keeps them."""
        kept = []
        for line in _json_lines(data):
            try:
                self.schema.read_edit(json.loads(line))
            except ValueError:
                continue
            kept.append(self._as_imported(line))
        return b"".join(line + b"\n" for line in kept)

    @staticmethod
    def _append(log: Path, data: bytes) -> None:
        """Append whole lines to `log` and fsync; the caller holds the artifact's edit lock."""
        if not log.parent.is_dir():
            raise NotFound(f"artifact {log.parent.name[:12]} was removed; see `tav list`")
        created = not log.exists()
        with open(log, "a+b") as f:
            f.seek(0, os.SEEK_END)
            if f.tell():  # a crash mid-append left a torn line: end it, so it spoils only itself
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    data = b"\n" + data
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if created:
            _fsync(log.parent)

    def _clean_tmp(self) -> None:
        """Remove what crashed processes left in tmp/ over an hour ago; a stage a live process holds stays."""
        cutoff = time.time() - STALE_SECONDS
        for entry in list(self._tmp.iterdir()):
            try:
                if entry.lstat().st_mtime > cutoff:
                    continue
            except FileNotFoundError:
                continue
            if entry.suffix == ".lock":
                if not entry.with_suffix("").exists():
                    entry.unlink(missing_ok=True)  # its stage is gone; one with a stage goes with it below
                continue
            try:
                with FileLock(f"{entry}.lock", timeout=0):
                    _rm(entry)
            except Timeout:
                continue
            Path(f"{entry}.lock").unlink(missing_ok=True)


def _redo(artifact: Artifact) -> str:
    return f"remove it (`tav rm {artifact.short_id}`) and run the job again"


def check_name_syntax(name: object) -> None:
    """Refuse a name no artifact (or thing kept with one, `add`) may have; None passes."""
    _check_name(name)


def _check_name(name: object) -> None:
    if name is None:
        return
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise BadInput(f"invalid name {name!r}; use 1-64 letters, digits, '.', '_' or '-', starting with a letter, "
                       "digit or '_'")
    if len(name) >= 4 and _ANY_CASE_HEX.fullmatch(name):  # it would read as an id prefix in `tav` commands
        raise BadInput(f"name '{name}' looks like an artifact id; add a letter outside a-f, e.g. 'v-{name}'")


def _canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _content_id(manifest: dict) -> str:
    # "id" names the content and "created" says when it was stored: neither is content.
    return hashlib.sha256(_canonical({k: v for k, v in manifest.items() if k not in ("id", "created")})).hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _json_lines(data: bytes) -> list[bytes]:
    """The lines of a JSONL log that hold a JSON object; a line torn by a crash mid-append is skipped."""
    out = []
    for line in data.splitlines():
        try:
            if isinstance(json.loads(line), dict):
                out.append(line)
        except ValueError:
            continue
    return out


def _scan(stage: Path) -> dict[str, dict]:
    """{posix relpath: {"sha256", "bytes"}} of every staged file but the store's own, sorted."""
    files = {}
    for dirpath, dirnames, filenames in os.walk(stage):
        if Path(dirpath) == stage and "added" in dirnames:
            dirnames.remove("added")  # the store's own: derived files, recorded in added.jsonl
        for name in dirnames + filenames:
            if os.path.islink(os.path.join(dirpath, name)):
                raise BadInput(f"{os.path.join(dirpath, name)} is a symlink; stage real files (copy, don't link)")
        for name in filenames:
            path = Path(dirpath, name)
            rel = path.relative_to(stage).as_posix()
            if rel not in _RESERVED:
                files[rel] = {"sha256": _sha256(path), "bytes": path.stat().st_size}
    return dict(sorted(files.items()))


def _fsync(path: Path) -> None:
    if os.name == "nt" and path.is_dir():
        return  # Windows cannot open a directory to fsync it
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root, topdown=False):
        for name in filenames:
            _fsync(Path(dirpath, name))
        _fsync(Path(dirpath))


def _rm(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _zip_add(zf: zipfile.ZipFile, name: str, src: Path | bytes) -> None:
    # A fixed timestamp: the same artifact always exports to the same bytes.
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED if name.endswith(".safetensors") else zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    if isinstance(src, bytes):
        zf.writestr(info, src)
        return
    info.file_size = src.stat().st_size  # lets zipfile pick zip64 up front for big files
    with open(src, "rb") as f, zf.open(info, "w") as out:
        shutil.copyfileobj(f, out, _CHUNK)


def _safe_member(name: str) -> bool:
    """Only what `export` writes, with no way out of a staging dir: no absolute paths, '..', '\\' or drives."""
    if name in _RESERVED:
        return True
    parts = name.split("/")
    return (len(parts) >= 2 and parts[0] == "files" and "\\" not in name
            and all(p not in ("", ".", "..") and not _DRIVE.match(p) for p in parts))


def _read_export(zf: zipfile.ZipFile, src: Path, schema: Schema) -> tuple[dict, dict[str, zipfile.ZipInfo]]:
    """The manifest and members of an export, refused (BadInput) unless it is exactly what `export` writes."""
    def bad(why: str) -> BadInput:
        return BadInput(f"{src} is not a tav export: {why}; give a .tav file made by `tav export`")

    members: dict[str, zipfile.ZipInfo] = {}
    for info in zf.infolist():
        if info.filename in members or not _safe_member(info.filename):
            raise bad(f"unsafe, unexpected or repeated member {info.filename!r}")
        members[info.filename] = info
    if "manifest.json" not in members:
        raise bad("it has no manifest.json")
    try:
        manifest = json.loads(zf.read(members["manifest.json"]))
    except ValueError:
        raise bad("its manifest.json is not JSON") from None
    _check_manifest(manifest, bad, src, schema)
    files = manifest["files"]
    for rel in files:
        if f"files/{rel}" not in members:
            raise bad(f"file '{rel}' of its manifest is not in it")
    extra = sorted(n for n in members if n.startswith("files/") and n[len("files/"):] not in files)
    if extra:
        raise bad(f"member '{extra[0]}' is not in its manifest")
    _check_content(manifest, bad, src, schema)  # before any byte is extracted
    return manifest, members


def _check_manifest(manifest: object, bad: Callable[[str], BadInput], src: object, schema: Schema) -> None:
    """Refuse (with `bad(why)`) a manifest whose schema version, files or id are not what `commit` writes."""
    version = manifest.get("schema") if isinstance(manifest, dict) else None
    if type(version) is int and version > schema.version:
        raise BadInput(f"{src} has schema {version}, newer than this tav reads ({schema.version}); upgrade tav")
    if type(version) is not int or version < 1:
        raise bad("its manifest has no valid schema")
    files = manifest.get("files")
    if not isinstance(files, dict) or not isinstance(manifest.get("id"), str):
        raise bad("its manifest lacks files or id")
    for rel, meta in files.items():
        if rel in _RESERVED or not _safe_member(f"files/{rel}"):
            raise bad(f"its manifest names an unsafe file '{rel}'")
        if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str) or type(meta.get("bytes")) is not int:
            raise bad(f"its manifest entry for '{rel}' is malformed")
    problem = _unstorable(files)
    if problem:
        raise bad(problem)


def _check_content(manifest: dict, bad: Callable[[str], BadInput], src: object, schema: Schema) -> None:
    """Refuse a manifest altered since its id was computed, or one that does not fit the schema."""
    if _content_id(manifest) != manifest["id"]:
        raise Corrupt(f"{src}: its manifest does not match its id (altered?); export it again")
    try:  # a hash-consistent manifest can still be one no tav wrote: it must fit the schema
        schema.read(manifest)
    except ValueError as e:
        raise bad(f"its manifest does not fit schema {manifest['schema']} ({e})") from None


_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def tensor_dtypes(path: Path) -> list[str]:
    """The dtypes of a .safetensors file's tensors, read from its JSON header alone (no model library)."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(min(size, 100_000_000)))
        kinds = {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise Corrupt(f"{path} is not a readable safetensors file ({e})") from None
    return sorted(_SAFETENSORS_DTYPES.get(d, d.lower()) for d in kinds)


def _edit_line(record: dict) -> bytes:
    """One line of an edit log, as `append_edit` writes it."""
    return json.dumps(record, separators=(",", ":"), allow_nan=False).encode() + b"\n"


def check_folder_dest(dest: Path, force: bool) -> None:
    """Refuse a folder destination that exists (non-empty, unless `force`) or whose parent does not."""
    if dest.exists() and not dest.is_dir():
        raise BadInput(f"{dest} is a file; give a folder path")
    if dest.is_dir() and any(dest.iterdir()) and not force:
        raise BadInput(f"{dest} exists and is not empty; choose a new folder or use --force to replace it")
    if not dest.parent.is_dir():
        raise BadInput(f"directory {dest.parent} does not exist; create it first")


@contextmanager
def replacing_folder(dest: Path) -> Iterator[Path]:
    """An empty folder beside `dest`, renamed into place when the block ends (what was at `dest` swapped out
    and removed), or removed when it fails: `dest` is the old folder or the whole new one, never half of it."""
    dest = Path(dest)
    part = dest.parent / f".{dest.name}.{secrets.token_hex(4)}.part"
    old = dest.parent / f".{dest.name}.{secrets.token_hex(4)}.old"
    part.mkdir()
    try:
        yield part
        _fsync_tree(part)
        if dest.exists():
            os.rename(dest, old)  # out of the way; removed once the new folder is in place
        os.rename(part, dest)
    except BaseException:
        _rm(part)
        if old.exists() and not dest.exists():
            os.rename(old, dest)  # put back what was there
        raise
    _rm(old)
    _fsync(dest.parent)


_NAME_MAX = 255  # bytes of one path component on the usual filesystems


def _unstorable(files: dict) -> str | None:
    """Why a set of relative paths cannot be written as files, or None: a name too long, a file that is also
    a folder of another (the OS would refuse either midway)."""
    for rel in files:
        long = next((p for p in rel.split("/") if len(p.encode()) > _NAME_MAX), None)
        if long is not None:
            return f"member name '{long[:40]}...' is {len(long.encode())} bytes, over {_NAME_MAX}"
    folders = {"/".join(rel.split("/")[:i]) for rel in files for i in range(1, rel.count("/") + 1)}
    clash = sorted(folders & set(files))
    return f"'{clash[0]}' is both a file and a folder in it" if clash else None


def _extract(zf: zipfile.ZipFile, info: zipfile.ZipInfo, stage: Path, rel: str, meta: dict, src: Path) -> None:
    target = stage / rel
    if not target.resolve().is_relative_to(stage.resolve()):  # belt and braces over _safe_member
        raise BadInput(f"{src}: member 'files/{rel}' would land outside the store; refusing this export")
    if info.file_size != meta["bytes"]:  # also bounds what a crafted zip can make us write
        raise Corrupt(f"{src}: file '{rel}' has {info.file_size} bytes, its manifest says "
                                   f"{meta['bytes']}; export it again")
    target.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    with zf.open(info) as f, open(target, "wb") as out:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            out.write(chunk)
    if h.hexdigest() != meta["sha256"]:
        raise Corrupt(f"{src}: file '{rel}' does not match its sha256 (damaged or altered); "
                                   "export it again")
