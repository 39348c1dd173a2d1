"""Resumable tuning runs: what a `tav tune` keeps while it tunes, so that `tav resume` continues it.

A run lives beside the artifacts until its artifact is committed, then it is removed. Layout under the
store's root:

    runs/<id>/run.json            the job's flat options, the config it came from, its edits, the step of the
                                  saved state, the checkpoints and previews written so far (replaced whole)
    runs/<id>/state-<step>/       the tune after <step> steps: adapter/ (fp32), optimizer.safetensors (AdamW's
                                  moments and the noise generator's state) and state.json (the rest)
    runs/<id>/checkpoints/step-N/ the adapters `--checkpoint-every` keeps (linked into the artifact at commit)
    runs/<id>/previews/*.mp4      the previews (likewise)
    runs/<id>.lock                held by the process tuning it: a run whose lock is free is stopped
    runs/finished.jsonl           run id -> artifact id, one line per committed run

Every write is a new file or folder renamed into place and fsynced, then run.json is replaced: a crash or a
kill at any point leaves run.json naming a complete state (or none yet), never a half-written one. When a
state is saved: at each `--checkpoint-every` step, and on SIGINT/SIGTERM (`stopping`). Tensors go in
safetensors, the rest in JSON; never pickle.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock, Timeout

from tavcli.app.store import Store, _fsync, _fsync_tree, _json_lines, _rm
from tavcli.errors import BadInput, NotFound
from tavcli.settings import Settings, options

if TYPE_CHECKING:
    from tavcli.method.tuning import Loop, TuneState

RUN_FILE = "run.json"
FINISHED = "finished.jsonl"


def flat_options(job: Settings) -> dict[str, Any]:
    """A job's flat options as JSON values (`build(type(job), flat)` makes the same job again)."""
    flat = {}
    for name, option in options(type(job)).items():
        value: Any = job
        for part in option.paths[0]:
            value = getattr(value, part)
        flat[name] = _json(value)
    return flat


def _json(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str):  # a Mode is a str
        return str(value)
    if isinstance(value, tuple):
        return [_json(v) for v in value]
    return value


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, data: dict) -> None:
    """Replace `path` whole: a temporary file beside it, fsynced, renamed over it."""
    part = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    with open(part, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, path)
    _fsync(path.parent)


@dataclass
class RunInfo:
    """A run as `tav resume --list` shows it."""

    id: str
    path: Path
    data: dict
    running: bool

    @property
    def step(self) -> int:
        return self.data.get("step", 0)

    @property
    def steps(self) -> int:
        return self.data["job"].get("steps", 0)

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())

    def summary(self) -> dict:
        job = self.data["job"]
        return {"id": self.id, "status": "running" if self.running else "stopped", "step": self.step,
                "steps": self.steps, "prompt": job.get("prompt"), "video": job.get("video"), "name": job.get("name"),
                "config": self.data.get("config"), "created": self.data.get("created"),
                "updated": self.data.get("updated"), "bytes": self.size_bytes(), "path": str(self.path)}


class Runs:
    """The runs of one store."""

    def __init__(self, store: Store):
        self.store = store
        self.root = store.root / "runs"
        self.root.mkdir(parents=True, exist_ok=True)

    def start(self, job: Settings, config: Path | None = None, edits: list[dict] | None = None,
              out_dir: Path | None = None) -> ActiveRun:
        """A new run of `job`, held by this process until it is finished or closed."""
        run_id = secrets.token_hex(4)
        path = self.root / run_id
        lock = _hold(self.root / f"{run_id}.lock")
        part = self.root / f".{run_id}.part"
        part.mkdir()
        data = {"id": run_id, "created": _now(), "updated": _now(), "job": flat_options(job),
                "config": str(Path(config).resolve()) if config else None, "edits": edits or [],
                "out_dir": str(Path(out_dir).resolve()) if out_dir else None, "step": 0, "state": None,
                "checkpoints": [], "previews": []}
        _write_json(part / RUN_FILE, data)
        os.rename(part, path)
        _fsync(self.root)
        return ActiveRun(self, run_id, path, data, lock)

    def list(self) -> list[RunInfo]:
        found = []
        for path in sorted(self.root.iterdir()):
            if not path.is_dir() or path.name.startswith("."):
                continue
            try:
                data = json.loads((path / RUN_FILE).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # not a run (or torn by hand): nothing tav wrote
            found.append(RunInfo(path.name, path, data, self._running(path.name)))
        return sorted(found, key=lambda r: (r.data.get("updated") or "", r.id))

    def _running(self, run_id: str) -> bool:
        try:
            with FileLock(self.root / f"{run_id}.lock", timeout=0):
                return False
        except Timeout:
            return True

    def finished(self) -> dict[str, str]:
        """Committed runs: run id -> artifact id."""
        log = self.root / FINISHED
        lines = _json_lines(log.read_bytes()) if log.is_file() else []
        return {d["run"]: d["artifact"] for d in map(json.loads, lines) if "run" in d and "artifact" in d}

    def resolve(self, ref: str | None) -> RunInfo:
        """The run `ref` names (an id or a unique prefix of one), or the latest stopped run for None."""
        runs = self.list()
        if ref is None:
            stopped = [r for r in runs if not r.running]
            if not stopped:
                raise NotFound("there is no stopped run to resume; `tav resume --list` shows the runs")
            return stopped[-1]
        matches = [r for r in runs if r.id == ref] or [r for r in runs if r.id.startswith(ref)]
        if len(matches) > 1:
            raise BadInput(f"'{ref}' matches {len(matches)} runs ({', '.join(r.id for r in matches)}); "
                           "use more characters")
        if not matches:
            done = {k: v for k, v in self.finished().items() if k == ref or k.startswith(ref)}
            if len(done) == 1:
                run_id, artifact = next(iter(done.items()))
                raise BadInput(f"run {run_id} is finished: it is artifact {artifact[:12]} (`tav show {artifact[:12]}`)")
            raise NotFound(f"no run matches '{ref}'; `tav resume --list` shows the runs")
        return matches[0]

    def latest_of(self, config: Path) -> RunInfo | None:
        """The latest stopped run of a config file (`resume_from_checkpoint: latest`)."""
        config = str(Path(config).resolve())
        stopped = [r for r in self.list() if not r.running and r.data.get("config") == config]
        return stopped[-1] if stopped else None

    def take(self, info: RunInfo) -> ActiveRun:
        """Hold a stopped run to continue it."""
        try:
            lock = _hold(self.root / f"{info.id}.lock")
        except BadInput:
            raise BadInput(f"run {info.id} is being tuned by another tav process; wait for it or stop it") from None
        return ActiveRun(self, info.id, info.path, info.data, lock)

    def discard(self, info: RunInfo) -> None:
        run = self.take(info)
        trash = self.root / f".{info.id}.rm-{secrets.token_hex(4)}"
        os.rename(run.path, trash)
        _rm(trash)
        run.release()


def _hold(path: Path) -> FileLock:
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise BadInput(f"{path} is held by another tav process") from None
    return lock


class ActiveRun:
    """A run this process holds: it writes its checkpoints, previews and states, and finishes or closes it."""

    def __init__(self, runs: Runs, run_id: str, path: Path, data: dict, lock: FileLock):
        self.runs, self.id, self.path, self.data, self.lock = runs, run_id, path, data, lock

    @property
    def step(self) -> int:
        return self.data["step"]

    def _save(self) -> None:
        self.data["updated"] = _now()
        _write_json(self.path / RUN_FILE, self.data)

    # -- what the tune writes ----------------------------------------------------------------------------

    def _place(self, rel: str, write: Callable[[Path], None], folder: bool) -> None:
        """Write `rel` in the run through `write(tmp path)`, then rename it into place (replacing a redo's)."""
        dest = self.path / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(f".{secrets.token_hex(4)}-{dest.name}")  # the same suffix: a video's format
        try:
            write(part)
            _fsync_tree(part) if folder else _fsync(part)
            if dest.exists():
                _rm(dest)
            os.rename(part, dest)
        finally:
            _rm(part)
        _fsync(dest.parent)

    def has_checkpoint(self, step: int) -> bool:
        return any(c["step"] == step for c in self.data["checkpoints"])

    def add_checkpoint(self, step: int, write: Callable[[Path], None]) -> str:
        folder = f"checkpoints/step-{step:06d}"
        self._place(folder, write, folder=True)
        self.data["checkpoints"].append({"step": step, "folder": folder})
        self._save()
        return folder

    def has_preview(self, step: int, prompt: str) -> bool:
        return any(p["step"] == step and p["prompt"] == prompt for p in self.data["previews"])

    def add_preview(self, step: int, prompt: str, file: str, write: Callable[[Path], None]) -> Path:
        self._place(file, write, folder=False)
        self.data["previews"].append({"step": step, "prompt": prompt, "file": file})
        self._save()
        return self.path / file

    def save_state(self, loop: Loop, write_adapter: Callable[[Path], None]) -> None:
        """The tune as it is after `loop.step` steps: adapter (fp32), optimizer and generator, losses."""
        from safetensors.torch import save_file

        state = loop.state()
        name = f"state-{state.step:06d}"
        tensors, meta = _state_parts(state)

        def write(folder: Path) -> None:
            folder.mkdir()
            with loop.fp32_weights():
                write_adapter(folder / "adapter")
            save_file(tensors, folder / "optimizer.safetensors")
            (folder / "state.json").write_text(json.dumps(meta))

        self._place(name, write, folder=True)
        old, self.data["state"], self.data["step"] = self.data["state"], name, state.step
        self._save()
        if old and old != name:
            _rm(self.path / old)

    def load_state(self) -> tuple[Path, TuneState] | None:
        """The saved state's adapter folder and the rest of it; None for a run with no state yet. What was
        written after it (a checkpoint or preview of a later step) is forgotten: the resumed run redoes it."""
        if not self.data["state"]:
            return None
        from safetensors.torch import load_file

        folder = self.path / self.data["state"]
        state = _state_of(load_file(folder / "optimizer.safetensors"),
                          json.loads((folder / "state.json").read_text(encoding="utf-8")))
        for key in ("checkpoints", "previews"):
            self.data[key] = [e for e in self.data[key] if e["step"] <= state.step]
        return folder / "adapter", state

    # -- the end -----------------------------------------------------------------------------------------

    def link_into(self, stage: Path) -> list[str]:
        """Hard-link (or copy) the checkpoints and previews into an artifact's staging dir; their paths."""
        rels = []
        for entry in self.data["checkpoints"] + self.data["previews"]:
            rel = entry.get("folder") or entry["file"]
            src = self.path / rel
            files = [p for p in src.rglob("*") if p.is_file()] if src.is_dir() else [src]
            for f in files:
                target = stage / f.relative_to(self.path)
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(f, target)
                except OSError:
                    shutil.copyfile(f, target)
            rels.append(rel)
        return rels

    def finish(self, artifact_id: str) -> None:
        """The artifact is committed: record it and remove the run."""
        Store._append(self.runs.root / FINISHED, json.dumps({"run": self.id, "artifact": artifact_id}).encode() + b"\n")
        trash = self.runs.root / f".{self.id}.rm-{secrets.token_hex(4)}"
        os.rename(self.path, trash)
        _rm(trash)
        self.release()

    def close(self) -> None:
        """Stop holding the run; one with nothing saved yet (no state) is removed, there being nothing to
        continue but the settings."""
        if not self.lock.is_locked:
            return
        if not self.data["state"]:
            _rm(self.path)
        self.release()

    def release(self) -> None:
        if self.lock.is_locked:
            self.lock.release()
            Path(self.lock.lock_file).unlink(missing_ok=True)


def _state_parts(state: TuneState) -> tuple[dict, dict]:
    """A TuneState as safetensors tensors and JSON: AdamW's per-parameter tensors keyed by index and name."""
    tensors = {"generator": state.generator.contiguous()}
    plain: dict[str, dict] = {}
    for index, entry in state.optimizer["state"].items():
        for name, value in entry.items():
            if hasattr(value, "contiguous"):
                tensors[f"optimizer.{index}.{name}"] = value.contiguous()
            else:
                plain.setdefault(str(index), {})[name] = value
    meta = {"step": state.step, "losses": state.losses, "param_groups": state.optimizer["param_groups"],
            "optimizer_values": plain}
    return tensors, meta


def _state_of(tensors: dict, meta: dict) -> TuneState:
    from tavcli.method.tuning import TuneState

    per_param: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            per_param.setdefault(int(index), {})[name] = value
    for index, values in meta["optimizer_values"].items():
        per_param.setdefault(int(index), {}).update(values)
    groups = [g | {"betas": tuple(g["betas"])} if "betas" in g else g for g in meta["param_groups"]]
    return TuneState(meta["step"], {"state": per_param, "param_groups": groups}, tensors["generator"],
                     meta["losses"])


# --- signals: a stop at the next safe point ----------------------------------------------------------------


class Stopped(Exception):
    """SIGINT or SIGTERM arrived: the tune stops at the next step boundary, its state saved."""


class Stop:
    def __init__(self) -> None:
        self.signal: str | None = None
        self.saving = False  # tuned and inverted: the tune is being stored, and finishes whatever arrives

    def check(self) -> None:
        if self.signal:
            raise Stopped(self.signal)


@contextlib.contextmanager
def stopping() -> Iterator[Stop]:
    """While tuning, SIGINT and SIGTERM ask for a stop (`Stop.check` raises `Stopped` at the next safe
    point) rather than breaking off mid-step; a second one interrupts at once (KeyboardInterrupt). Once
    `Stop.saving` is set, they are ignored: the tune is stored."""
    stop = Stop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop.saving:
            return
        if stop.signal:
            raise KeyboardInterrupt
        stop.signal = signal.Signals(signum).name

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
