"""The `tav` command line: parses, calls `jobs` and the store, renders.

stdout carries results only (ids, paths, tables, JSON); progress, logs and errors go to stderr.
Exit codes: 0 ok, 1 runtime failure, 2 usage or bad input, 3 not found, 130 interrupted.
"""

from __future__ import annotations

import atexit
import functools
import json
import math
import os
import signal
import sys
import threading
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from tavcli import __version__
from tavcli.app import builtin
from tavcli.app.interrupts import HELD
from tavcli.app.jobs import EditJob, ScoreJob, TuneJob
from tavcli.app.manifest import Manifest, edits_of
from tavcli.app.progress import Stage
from tavcli.engine.runtime import Runtime
from tavcli.errors import EXIT_FAILURE, EXIT_INTERRUPTED, BadInput, Interrupted, TavError, counted, exit_code
from tavcli.faces.bench import BenchSettings
from tavcli.settings import options

app = typer.Typer(
    name="tav",
    help="Tune-A-Video: turn one clip and its caption into a text-to-video model, then edit the clip.",
    invoke_without_command=True,  # bare `tav`: the help, exit 0 (click's no_args_is_help exits 2)
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _option(job: type, key: str, *names: str, help: str | None = None, **kwargs) -> typer.models.OptionInfo:
    """A flag for the flat option `key` of `job`: its help and default come from the settings class."""
    option = options(job)[key]
    shown = option.default_shown()
    return typer.Option(*(names or (f"--{key.replace('_', '-')}",)), help=help or option.help,
                        show_default=shown if shown is not None else False, **kwargs)


def _invert_job() -> type:
    from tavcli.app.inversions import InvertJob

    return InvertJob


def _official_job() -> type:
    from tavcli.app.official.jobs import ImportOfficialJob

    return ImportOfficialJob


def _flags(values: dict, job: type) -> dict:
    """The given (non-None) flat options of `job` among a command's parameters."""
    known = options(job)
    return {k: v for k, v in values.items() if (k in known or k == "size") and v is not None}


# Options several commands share, declared once (as huggingface_hub's CLI does).
Device = Annotated[str | None, _option(Runtime, "device")]
Dtype = Annotated[str | None, _option(Runtime, "dtype")]
Compile = Annotated[bool | None, _option(Runtime, "compile")]
AttentionKernel = Annotated[str | None, _option(Runtime, "attention_kernel")]
Base = Annotated[str | None, _option(TuneJob, "base")]
BaseConfig = Annotated[str | None, _option(TuneJob, "base_config")]
Name = Annotated[str | None, _option(TuneJob, "name")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON value.")]
Quiet = Annotated[bool, typer.Option("-q", "--quiet", help="Only the result on stdout, nothing on stderr.")]


def _stdout() -> Console:
    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal:  # piped: no wrapping of table cells at a pretend 80 columns
        console = Console(highlight=False, soft_wrap=True, width=400)
    return console


def _quiet_library_imports() -> None:
    """What diffusers and transformers log as they import (advisories such as transformers' note that
    torchvision is missing) stays off tav's stderr: their verbosity, from the environment, set before
    they are imported, unless the user set it."""
    for variable in ("DIFFUSERS_VERBOSITY", "TRANSFORMERS_VERBOSITY"):
        os.environ.setdefault(variable, "error")


def _quiet_libraries() -> None:
    """Our stderr is for tav's own progress: silence the libraries' load bars and advisory warnings."""
    import diffusers
    import transformers

    for lib in (diffusers, transformers):
        lib.utils.logging.set_verbosity_error()
        lib.utils.logging.disable_progress_bar()


def _stderr() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


class _Signals:
    """What SIGINT and SIGTERM mean to a command: before its result exists, stop (exit 130, the store as it
    was); once it exists (an artifact committed), nothing more: tav prints it and exits 0. From the end of a
    command to the process's exit they are ignored too, so that no library's exit hook (torch's
    `dump_compile_times`) is cut short with a traceback.

    `kept` lists what an interrupted command had already made, for the message it ends with."""

    def __init__(self) -> None:
        self.finishing = False
        self.whole_process = False  # `tav` itself, not the app called in-process (tests)
        self.kept: list[str] = []
        self._previous: dict = {}

    def __call__(self, signum: int, frame) -> None:
        if not self.finishing:
            raise KeyboardInterrupt

    def start(self) -> None:
        self.finishing, self.kept = False, []
        self._previous = {s: signal.getsignal(s) for s in HELD}
        for s in HELD:
            signal.signal(s, self)

    def finish(self) -> None:
        self.finishing = True
        for s in HELD:  # `tav` ignores them to its end: Python's finalization would reset a handler to the default
            restored = signal.SIG_IGN if self.whole_process else self._previous.get(s)  # in-process: the caller's
            signal.signal(s, restored if restored is not None else signal.SIG_DFL)

    def committed(self, artifact) -> None:
        """The store's `on_commit`: the command has its result."""
        self.finishing = True

    def interrupted(self) -> str:
        if not self.kept:
            return "tav: interrupted; the store is as it was"
        return (f"tav: interrupted; kept {counted(len(self.kept), 'video')}, written and "
                f"recorded in the edit log: {', '.join(self.kept)}; the other prompts were not run")


_SIGNALS = _Signals()
_PACKAGE = Path(__file__).resolve().parents[1]  # tavcli/


def run() -> None:
    """The `tav` program."""
    _SIGNALS.whole_process = True
    try:
        app(prog_name="tav")
        code = 0
    except SystemExit as e:
        code = e.code
    _exit(code)


def _exit(code: int | str | None) -> None:
    """End the process without Python's teardown of the thousands of modules torch and diffusers import (0.6 s
    on a 2-core CPU, 2 s on an H200 machine, after every command), once the exit hooks have run and the output
    is flushed; the ordinary exit with a thread still running, output that cannot be flushed, a profiler or
    coverage watching (they write their files after the program returns) or TAV_DEBUG set."""
    if not isinstance(code, int):  # sys.exit(None) or sys.exit("a message"), read as Python reads them
        if code is not None:
            print(code, file=sys.stderr)
        code = 0 if code is None else 1
    if _watched() or any(t.is_alive() and not t.daemon for t in threading.enumerate()
                         if t is not threading.main_thread()):
        sys.exit(code)  # Python joins such a thread first
    atexit._run_exitfuncs()  # what the ordinary exit runs first: torch's and logging's hooks, temp dirs' removal
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe (`tav list | head -1`): as Python reports it
        sys.exit(code)
    os._exit(code)


def _watched() -> bool:
    """Is a profiler, a tracer (coverage, a debugger) or TAV_DEBUG watching this process?"""
    monitoring = getattr(sys, "monitoring", None)  # Python 3.12's tools: coverage's sysmon core
    tools = monitoring and any(monitoring.get_tool(i) for i in range(6))
    return bool(sys.gettrace() or sys.getprofile() or tools or os.environ.get("TAV_DEBUG"))


def _errors(fn):
    """One line on stderr and a meaningful exit code instead of a traceback (TAV_DEBUG=1 shows it)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _SIGNALS.start()
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            _SIGNALS.finishing = True  # a second Ctrl-C while this is said changes nothing
            _stderr().print(_SIGNALS.interrupted(), markup=False)
            raise typer.Exit(EXIT_INTERRUPTED)
        except Interrupted as e:  # a stopped tune: the message says how to continue it
            _stderr().print(f"tav: {_first_line(e)}", markup=False)
            raise typer.Exit(EXIT_INTERRUPTED)
        except TavError as e:  # the one place tav's errors become exit codes
            if os.environ.get("TAV_DEBUG"):
                raise
            _stderr().print(f"tav: error: {_first_line(e)}", markup=False)
            raise typer.Exit(exit_code(e))
        except Exception as e:  # noqa: BLE001 - not one of tav's errors: a bug, in tav or a library
            if os.environ.get("TAV_DEBUG"):
                raise
            _stderr().print(f"tav: internal error: {type(e).__name__}: {_first_line(e)} (a bug; TAV_DEBUG=1 shows "
                            "the traceback, please report it)", markup=False)
            raise typer.Exit(EXIT_FAILURE)
        finally:
            _SIGNALS.finish()

    return wrapper


class _Progress:
    """Draws jobs' progress on stderr: a Rich bar on a terminal, plain lines otherwise, nothing with -q.

    Every command that loads models reports through this, so this is where the libraries are quietened:
    their import-time logging at once, their load bars at a job's first stage, which comes after the job
    has checked its input. Importing them takes seconds (8 s on the H200 machine), which `tav list` and the
    other store commands should not pay, nor an edit of a mistyped id before it is refused.
    """

    def __init__(self, quiet: bool):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        _quiet_library_imports()
        self.libraries_quiet = False
        self.quiet = quiet
        self.console = _stderr()
        self.live = not quiet and self.console.is_terminal
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=self.console,
                            transient=True) if self.live else None
        self.task = None
        self._warnings = warnings.catch_warnings()

    def __enter__(self):
        self._warnings.__enter__()
        warnings.showwarning = self._warning
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, *exc):
        if self.bar:
            self.bar.stop()
        self._warnings.__exit__(*exc)

    def _warning(self, message, category, filename, lineno, file=None, line=None) -> None:
        """tav's own warnings as `tav: warning:` lines; a library's are for its developers (TAV_DEBUG shows them)."""
        if Path(filename).resolve().is_relative_to(_PACKAGE):
            self.log(f"warning: {message}")
        elif os.environ.get("TAV_DEBUG"):
            self.console.print(warnings.formatwarning(message, category, filename, lineno, line), markup=False)

    def stage(self, stage: Stage, detail: str = "", total: int | None = None) -> None:
        if not self.libraries_quiet:  # before the job loads anything (its first stage)
            _quiet_libraries()
            self.libraries_quiet = True
        name = stage.describe(detail)
        if self.bar:
            if self.task is not None:
                self.bar.remove_task(self.task)
            self.task = self.bar.add_task(name, total=total, info="")
        elif not self.quiet:
            self.console.print(f"tav: {name}" + (f" ({counted(total, 'step')})" if total else ""),
                               markup=False)

    def step(self, i: int, loss: float | None = None) -> None:
        if self.bar and self.task is not None:
            self.bar.update(self.task, completed=i + 1, info="" if loss is None else f"loss {loss:.4f}")

    def detail(self, text: str) -> None:
        if self.bar and self.task is not None:
            self.bar.update(self.task, info=text)

    def log(self, message: str) -> None:
        if not self.quiet:
            self.console.print(f"tav: {message}", markup=False)


def _store():
    from tavcli.app.manifest import open_store

    return open_store(on_commit=_SIGNALS.committed)  # reads tav's manifests: typed, migrated, validated


@dataclass(frozen=True)
class _Summary:
    """One artifact of `tav list --json` (and `tav show --json`'s head): every key in every row; what a
    damaged entry cannot say is null, and `damaged` says why."""

    id: str | None = None
    short_id: str | None = None
    name: str | None = None
    prompt: str | None = None
    source: str | None = None
    frames: int | None = None
    width: int | None = None
    height: int | None = None
    base: str | None = None
    adapter: str | None = None
    bytes: int | None = None
    created: str | None = None
    edits: int | None = None
    path: str | None = None
    damaged: str | None = None
    checkpoints: list[int] | None = None
    checkpoint_bytes: int | None = None
    previews: int | None = None


def _artifact_summary(a) -> dict:
    m = Manifest.of(a)
    return asdict(_Summary(
        id=a.id, short_id=a.short_id, name=a.name, prompt=m.prompt, source=m.source.path,
        frames=m.video.frames, width=m.video.width, height=m.video.height,
        base=m.base.name, adapter=str(m.adapter.kind), bytes=a.size_bytes(),
        created=a.created, edits=len(edits_of(a)), path=str(a.path),
        checkpoints=[c.step for c in m.checkpoints], checkpoint_bytes=_bytes_under(m, "checkpoints/"),
        previews=len(m.previews),
    ))


def _bytes_under(m: Manifest, prefix: str) -> int:
    return sum(meta.get("bytes", 0) for rel, meta in m.files.items() if rel.startswith(prefix))


def _damaged_summary(d) -> dict:
    return asdict(_Summary(id=d.id, short_id=d.short_id, bytes=d.size_bytes(), path=str(d.path), damaged=d.problem))


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tav {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Tune-A-Video from the command line. Store: $TAV_HOME, else the platform's user data folder."""
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit()


@app.command()
@_errors
def tune(
    video: Annotated[Path | None, typer.Argument(help=options(TuneJob)["video"].help, show_default=False)] = None,
    prompt: Annotated[str | None, typer.Argument(help=options(TuneJob)["prompt"].help, show_default=False)] = None,
    config: Annotated[Path | None, typer.Option("--config", help="An official Tune-A-Video YAML config, or tav's own "
                                                "(docs/configs.md); flags override it. Its validation prompts run "
                                                "as edits.")] = None,
    name: Name = None,
    base: Base = None,
    base_config: BaseConfig = None,
    frames: Annotated[int | None, _option(TuneJob, "frames")] = None,
    size: Annotated[int | None, typer.Option("--size", help="Square size; --width/--height override it.",
                                             show_default="512")] = None,
    width: Annotated[int | None, _option(TuneJob, "width")] = None,
    height: Annotated[int | None, _option(TuneJob, "height")] = None,
    start: Annotated[int | None, _option(TuneJob, "start")] = None,
    stride: Annotated[int | None, _option(TuneJob, "stride")] = None,
    resize: Annotated[str | None, _option(TuneJob, "resize", help="crop (keep aspect, centre-crop) or squash "
                                          "(official configs: squash).")] = None,
    steps: Annotated[int | None, _option(TuneJob, "steps")] = None,
    inversion_steps: Annotated[int | None, _option(TuneJob, "inversion_steps")] = None,
    lr: Annotated[float | None, _option(TuneJob, "lr")] = None,
    weight_decay: Annotated[float | None, _option(TuneJob, "weight_decay")] = None,
    adapter: Annotated[str | None, _option(TuneJob, "adapter")] = None,
    rank: Annotated[int | None, _option(TuneJob, "rank")] = None,
    attention: Annotated[str | None, _option(TuneJob, "attention")] = None,
    seed: Annotated[int | None, _option(TuneJob, "seed")] = None,
    low_memory: Annotated[bool | None, _option(TuneJob, "low_memory")] = None,
    preview: Annotated[list[str] | None, _option(TuneJob, "preview")] = None,
    preview_every: Annotated[int | None, _option(TuneJob, "preview_every")] = None,
    preview_steps: Annotated[int | None, _option(TuneJob, "preview_steps")] = None,
    preview_guidance: Annotated[float | None, _option(TuneJob, "preview_guidance")] = None,
    checkpoint_every: Annotated[int | None, _option(TuneJob, "checkpoint_every")] = None,
    compile: Compile = None,
    attention_kernel: AttentionKernel = None,
    device: Device = None,
    dtype: Dtype = None,
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Where a config's validation edits go.")] = Path("."),
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Tune on one clip; store the adapter and the clip's inversion; print the artifact's id.

    Ctrl-C (or SIGTERM) stops at the next step and keeps the run: `tav resume` continues it."""
    from tavcli.app.configs import apply_overrides, from_flags, load_config
    from tavcli.app.runs import Runs, flat_options

    if config is None and (video is None or prompt is None):
        raise BadInput("give VIDEO and PROMPT (e.g. tav tune clip.mp4 \"a man is skiing\"), or --config FILE.yaml")
    flags = _flags(locals(), TuneJob)
    loaded = apply_overrides(load_config(config), **flags) if config else from_flags(**flags)
    store = _store()
    notes, run = [f"warning: {w}" for w in loaded.warnings], None
    store.check_writable()  # before a run is started in it
    if loaded.resume:  # an official config's resume_from_checkpoint: latest
        found = Runs(store).latest_of(config)
        if found is None:
            notes.append(f"resume_from_checkpoint: no stopped run of {config}; tuning starts afresh")
        else:
            run = Runs(store).take(found)
            notes.append(f"resuming run {run.id} at step {run.step} (resume_from_checkpoint: latest)")
    resumed = run is not None
    if run is None:
        run = Runs(store).start(loaded.tune, config, [flat_options(e) for e in loaded.edits], out_dir)
    _tune_and_edit(store, run, _job_of(run) if resumed else loaded.tune, loaded.edits, out_dir, notes, as_json,
                   quiet)


def _job_of(run) -> TuneJob:
    from tavcli.app.jobs import tune_job

    return tune_job(run.data["job"], {"*": f"run {run.id}"})


def _tune_and_edit(store, run, job: TuneJob, edits: list, out_dir: Path, notes: list[str], as_json: bool,
                   quiet: bool) -> None:
    """Tune (a new run or a resumed one), then run the config's edits; print the id as soon as the artifact
    is stored, then each edit's path as soon as its video is written (with -q: only the id)."""
    from tavcli.app.jobs import check_outputs
    from tavcli.app.jobs import tune as run_tune

    edits = [e.replace(out_dir=out_dir) for e in edits]
    try:
        for e in edits:
            check_outputs(e)  # before the tune, not after it
        progress = _Progress(quiet)
    except BaseException:
        run.close()
        raise
    with progress:
        for note in notes:
            progress.log(note)
        artifact = run_tune(job, store, progress, run=run)  # from its commit on, signals do not stop tav
        m = Manifest.of(artifact)
        progress.log(f"stored {artifact.short_id}" + (f" ({artifact.name})" if artifact.name else "")
                     + (f"; loss {m.loss[0]:.4f} -> {m.loss[-1]:.4f}" if m.loss else ""))
        if not as_json:
            typer.echo(artifact.short_id)  # now, not after the edits: a script has its id whatever comes next
        outputs = _validation_edits(edits, artifact, store, progress, echo=not as_json and not quiet)
    if as_json:
        _stdout().print_json(json.dumps(_artifact_summary(artifact) | {"edit_outputs": [str(p) for p in outputs]}))


def _validation_edits(edits: list, artifact, store, progress: _Progress, echo: bool) -> list[Path]:
    """A config's validation edits after its tune: each path printed once written (unless -q or --json). An
    interrupt stops them, keeping what was written; the tune succeeded, so tav still exits 0."""
    from tavcli.app.jobs import edit as run_edit

    outputs: list[Path] = []

    def written(result) -> None:
        outputs.append(result.path)
        if echo:
            typer.echo(str(result.path))

    _SIGNALS.finishing = False
    try:
        for job in edits:
            run_edit(job.replace(ref=artifact.id), store, progress, on_result=written)
    except KeyboardInterrupt:
        progress.log(f"interrupted; {artifact.short_id} is stored; kept {counted(len(outputs), 'validation edit')}; "
                     "the others were not run")
    finally:
        _SIGNALS.finishing = True
    return outputs


@app.command()
@_errors
def resume(
    run: Annotated[str | None, typer.Argument(help="A run's id (or a unique prefix of it).",
                                              show_default="the latest stopped run")] = None,
    list_runs: Annotated[bool, typer.Option("--list", help="List the runs that can be resumed.")] = False,
    discard: Annotated[bool, typer.Option("--discard", help="Remove RUN (its saved state, checkpoints and "
                                          "previews) instead of continuing it.")] = False,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Continue a tune that was stopped (Ctrl-C, SIGTERM, a crash): to the same adapter as if it never was."""
    from tavcli.app.jobs import edit_job
    from tavcli.app.runs import Runs

    runs = Runs(_store())
    if list_runs:
        rows = [r.summary() for r in runs.list()]
        if as_json:
            _stdout().print_json(json.dumps(rows))
        else:
            for r in rows:
                typer.echo(f"{r['id']}\t{r['status']}\tstep {r['step']}/{r['steps']}\t{_human_bytes(r['bytes'])}"
                           f"\t{(r['updated'] or '')[:19]}\t{r['name'] or r['prompt']}")
        return
    if discard and run is None:
        raise BadInput("--discard needs the RUN to remove; `tav resume --list` shows the runs")
    found = runs.resolve(run)
    if discard:
        runs.discard(found)
        typer.echo(found.id)
        return
    runs.store.check_writable()
    active = runs.take(found)
    try:
        job = _job_of(active)
        edits = [edit_job({"ref": "", **e}, {"*": f"run {active.id}"}) for e in active.data.get("edits", [])]
    except BaseException:
        active.release()
        raise
    out_dir = Path(active.data.get("out_dir") or ".")
    _tune_and_edit(runs.store, active, job, edits, out_dir, [f"resuming run {active.id} at step {active.step}"],
                   as_json, quiet)


def _read_prompts(prompts: list[str] | None, prompts_file: str | None) -> list[str]:
    found = list(prompts or [])
    if prompts_file:
        found += [line.strip() for line in _prompts_text(prompts_file).splitlines() if line.strip()]
    return found  # none: EditJob says what is missing (or --reconstruct needs none)


def _seed_list(text: str) -> tuple[int, ...]:
    """`--seeds 1,2,3` as seeds."""
    try:
        found = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise BadInput(f"--seeds takes whole numbers separated by commas, e.g. 1,2,3; got {text!r}") from None
    return found


def _prompts_text(prompts_file: str) -> str:
    """The text of --prompts-file ('-': stdin), or one line saying why it cannot be read."""
    from tavcli.app.configs import read_text

    if prompts_file == "-":
        return sys.stdin.read()
    return read_text(Path(prompts_file), f"--prompts-file {prompts_file}", "a text file with one prompt a line")


@app.command()
@_errors
def edit(
    ref: Annotated[str, typer.Argument(help=options(EditJob)["ref"].help)],
    prompts: Annotated[list[str] | None, typer.Argument(help=options(EditJob)["prompts"].help)] = None,
    prompts_file: Annotated[str | None, typer.Option("--prompts-file", help="More prompts, one per line "
                                                     "('-' = stdin).")] = None,
    output: Annotated[Path | None, _option(EditJob, "output", "-o", "--output")] = None,
    out_dir: Annotated[Path | None, _option(EditJob, "out_dir")] = None,
    format: Annotated[str | None, _option(EditJob, "format")] = None,
    steps: Annotated[int | None, _option(EditJob, "steps")] = None,
    guidance: Annotated[float | None, _option(EditJob, "guidance")] = None,
    negative: Annotated[str | None, _option(EditJob, "negative")] = None,
    seed: Annotated[int | None, _option(EditJob, "seed")] = None,
    seeds: Annotated[str | None, _option(EditJob, "seeds")] = None,
    eta: Annotated[float | None, _option(EditJob, "eta")] = None,
    strength: Annotated[float | None, _option(EditJob, "strength")] = None,
    scheduler: Annotated[str | None, _option(EditJob, "scheduler")] = None,
    adapter_scale: Annotated[float | None, _option(EditJob, "adapter_scale")] = None,
    inversion: Annotated[str | None, _option(EditJob, "inversion_name", "--inversion")] = None,
    no_inversion: Annotated[bool, typer.Option("--no-inversion", help="Start from noise, not from an inversion "
                                               "(the paper's ablation; plain text-to-video).")] = False,
    reconstruct: Annotated[bool | None, _option(EditJob, "reconstruct")] = None,
    frames: Annotated[int | None, _option(EditJob, "frames")] = None,
    grid: Annotated[bool | None, _option(EditJob, "grid")] = None,
    fps: Annotated[float | None, _option(EditJob, "fps")] = None,
    base: Annotated[str | None, _option(EditJob, "base")] = None,
    base_config: Annotated[str | None, _option(EditJob, "base_config")] = None,
    force: Annotated[bool | None, _option(EditJob, "force")] = None,
    score: Annotated[bool | None, _option(EditJob, "score")] = None,
    clip: Annotated[str | None, _option(EditJob, "clip")] = None,
    compile: Compile = None,
    attention_kernel: AttentionKernel = None,
    device: Device = None,
    dtype: Dtype = None,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Edit the tuned clip with new prompts; print each written path (with --score: path, CLIP score,
    frame consistency; with --reconstruct: path, PSNR in dB; tab-separated)."""
    from tavcli.app.jobs import edit as run_edit
    from tavcli.app.jobs import edit_job
    from tavcli.app.refs import split

    given = {k: v for k, v in locals().items() if k not in ("inversion", "no_inversion")}
    flags = (_flags(given, EditJob) | {"prompts": _read_prompts(prompts, prompts_file)}
             | ({"inversion_name": inversion} if inversion is not None else {})
             | ({"inversion": False} if no_inversion else {}))
    where = {k: f"--{k.replace('_', '-')}" for k in flags} | {"inversion_name": "--inversion",
                                                              "inversion": "--no-inversion"}
    if seeds is not None:
        flags["seeds"] = _seed_list(seeds)
    job = edit_job(flags, where)
    store = _store()

    def written(r) -> None:  # each path as soon as its video is written and recorded: pipes need not wait
        _SIGNALS.kept.append(str(r.path))
        if not as_json:
            extra = [f"{v:.2f}" for v in (r.scores or {}).values()] + ([f"{r.psnr:.2f}"] if job.reconstruct else [])
            typer.echo("\t".join([str(r.path)] + extra))

    with _Progress(quiet) as progress:
        results = run_edit(job, store, progress, on_result=written)
        s = job.settings
        if seed is not None and s.inversion and s.eta == 0:  # after the edit: a failed one says only why
            progress.log(f"note: --seed {seed} changed nothing: DDIM from the inversion with --eta 0 draws no "
                         "noise (add --eta or --no-inversion for the seed to matter)")
    if as_json:
        artifact = store.resolve(split(ref)[0])
        _stdout().print_json(json.dumps({
            "artifact": artifact.short_id, "strength": s.strength, "eta": s.eta, "scheduler": str(s.scheduler),
            "adapter_scale": job.adapter_scale, "fps": job.fps or Manifest.of(artifact).video.fps,
            "outputs": [{"prompt": r.prompt, "path": str(r.path), "seed": r.seed} | (r.scores or {})
                        | ({"psnr": r.psnr if math.isfinite(r.psnr) else None} if job.reconstruct else {})
                        for r in results]}))


@app.command()
@_errors
def score(
    target: Annotated[str, typer.Argument(help=options(ScoreJob)["target"].help)],
    prompt: Annotated[str | None, _option(ScoreJob, "prompt")] = None,
    clip: Annotated[str | None, _option(ScoreJob, "clip")] = None,
    device: Device = None,
    as_json: Json = False,
) -> None:
    """The paper's metrics: CLIP score (text alignment) and frame consistency, both x100.

    Prints one line per video: path, CLIP score, frame consistency (tab-separated).
    """
    from tavcli.app.jobs import score as run_score
    from tavcli.settings import build

    job = build(ScoreJob, _flags(locals(), ScoreJob))
    with _Progress(quiet=False) as progress:
        rows = run_score(job, _store(), progress)
    if as_json:
        _stdout().print_json(json.dumps(rows))
    else:
        for r in rows:
            typer.echo(f"{r['video']}\t{r['clip_score']:.2f}\t{r['frame_consistency']:.2f}")


def _list_table(rows: list[dict], width: int) -> Table:
    """One line per artifact, short id first; the name and the prompt give way (ellipsis) so 80 columns fit."""
    cells = []
    for r in rows:
        if r["damaged"]:
            cells.append((r["short_id"], "", "", "", _human_bytes(r["bytes"]), "", "",
                          f"damaged: remove it with `tav rm {r['short_id']}`"))
        else:
            kind = r["adapter"] + ("*" if builtin.is_random(r["base"]) else "")
            cells.append((r["short_id"], r["name"] or "", f"{r['frames']}×{r['width']}×{r['height']}", kind,
                          _human_bytes(r["bytes"]), str(r["edits"]), r["created"][:10], r["prompt"]))
    table = Table(box=None, pad_edge=False)
    columns = ("id", "name", "video", "kind", "size", "edits", "created", "prompt")
    widest = [max([len(col)] + [len(row[i]) for row in cells]) for i, col in enumerate(columns)]
    fixed = sum(widest) - widest[1] - widest[-1] + 2 * (len(columns) - 1)  # Rich puts 2 spaces between columns
    left = max(16, width - fixed)  # for the name and the prompt, which give way
    widest[1] = min(widest[1], 16, max(6, left // 2))
    widest[-1] = min(widest[-1], left - widest[1])
    for col, size in zip(columns, widest):
        table.add_column(col, no_wrap=True, overflow="ellipsis", width=size)
    for row in cells:
        table.add_row(*row)
    return table


@app.command("list")
@_errors
def list_(as_json: bool = typer.Option(False, "--json", help="One JSON array.")) -> None:
    """The stored artifacts, oldest first; damaged ones (an unreadable manifest) last, marked."""
    store = _store()
    rows = [_artifact_summary(a) for a in store.list()] + [_damaged_summary(d) for d in store.damaged()]
    if as_json:
        _stdout().print_json(json.dumps(rows))
        return
    out = _stdout()
    out.print(_list_table(rows, out.width))
    if any(builtin.is_random(r["base"]) for r in rows):
        out.print("* tuned on a built-in random base (random:…): its pictures are noise")


def _sparkline(values: list[float], width: int = 40) -> str:
    if not values:
        return ""
    step = max(1, len(values) // width)
    points = [sum(values[i:i + step]) / len(values[i:i + step]) for i in range(0, len(values), step)]
    lo, hi = min(points), max(points)
    bars = "▁▂▃▄▅▆▇█"
    return "".join(bars[int((p - lo) / (hi - lo) * 7) if hi > lo else 0] for p in points)


def _adapter_dtype(artifact) -> str:
    """The stored adapter's precision, from its safetensors header (no model library needed)."""
    from tavcli.app.store import tensor_dtypes

    try:
        return "/".join(tensor_dtypes(artifact.file("adapter/adapter_model.safetensors"))) or "no tensors"
    except TavError:
        return "unreadable"


def _show_lines(a) -> list[str]:
    """`tav show`'s text: the typed manifest, one labelled line per part."""
    m = Manifest.of(a)
    spec, t, run = m.adapter, m.tuning, m.run
    adapter = f"{spec.kind}" + (f" rank {spec.rank}" if spec.kind == "lora" else "")
    inversion = ("none stored (edit with --no-inversion)" if not m.has_inversion
                 else f"{m.inversion.steps} steps" if m.inversion.steps is not None
                 else f"imported (official step {m.inversion.official_step})")
    lines = [
        f"id        {a.id}", f"name      {a.name or ''}", f"prompt    {m.prompt}",
        f"source    {m.source.path} (frames {list(m.source.indices)})",
        f"video     {m.video.frames} frames, {m.video.width}×{m.video.height}, {m.video.fps:g} fps, {m.video.resize}",
        f"base      {m.base.name}" + (f" @ {m.base.revision}" if m.base.revision else "")
        + (" (built-in random weights: its pictures are noise)" if builtin.is_random(m.base.name) else ""),
        (f"adapter   {adapter}, {spec.attention} attention, {spec.norm} norm, {_adapter_dtype(a)}, "
         f"{_human_bytes(a.size_bytes())}"),
        f"tuning    {t.steps} steps, lr {t.lr}, seed {t.seed}" + (f", weight decay {t.weight_decay}"
                                                                   if t.weight_decay is not None else ""),
        f"run       {run.device} {run.dtype}" + (f", {run.seconds} s" if run.seconds is not None else "")
        + (", low memory" if run.low_memory else "") + (", compiled" if run.compile else ""),
        f"inversion {inversion}",
    ]
    if m.provenance.origin == "official":
        lines.append(f"imported  from {m.provenance.folder} (official Tune-A-Video)")
    if m.loss:
        lines.append(f"loss      {m.loss[0]:.4f} {_sparkline(list(m.loss))} {m.loss[-1]:.4f}")
    lines += [f"versions  tav {m.versions.get('tav', '?')}, torch {m.versions.get('torch', '?')}",
              f"created   {a.created}", f"stored at {a.path}"]
    for e in edits_of(a):
        scores = "".join(f", {k.replace('_', ' ')} {v:.2f}" for k, v in (e.scores or {}).items())
        lines.append(f"edit      {e.created}  {e.prompt!r} -> {e.output or '(imported; not on this machine)'} "
                     f"({e.seconds} s{scores})")
        lines.append(f"          {_edit_settings(e)}")
    return lines


def _edit_settings(e) -> str:
    """How an edit sampled, as one line under it in `tav show`."""
    start = f"strength {e.strength:g}" if e.inversion else "from noise"
    parts = [f"{e.scheduler} {e.steps} step{'s' if e.steps != 1 else ''}", f"guidance {e.guidance:g}", start,
             f"eta {e.eta:g}", f"seed {e.seed}", f"adapter scale {e.adapter_scale:g}"]
    if e.fps is not None:
        parts.append(f"{e.fps:g} fps")
    if e.negative_prompt:
        parts.append(f"negative {e.negative_prompt!r}")
    return ", ".join(parts)


@app.command()
@_errors
def show(
    ref: str = typer.Argument(..., help="Artifact id, unique id prefix, or name (REF@STEP: that checkpoint)."),
    as_json: bool = typer.Option(False, "--json", help="The whole manifest, checkpoints, inversions and edits."),
) -> None:
    """Everything stored about one artifact: settings, loss curve, checkpoints, inversions, edits."""
    from tavcli.app import inversions, refs

    store = _store()
    target = refs.resolve(store, ref)
    a, m = target.artifact, target.manifest
    kept = inversions.kept(store, a)
    if as_json:
        _stdout().print_json(json.dumps(m.to_json() | {
            "id": a.id, "created": a.created, "files": m.files, "path": str(a.path),
            "step": target.step, "checkpoints": _checkpoints(a, m, kept),
            "inversions": [i.to_json() for i in kept], "edits": [e.to_json() for e in edits_of(a)]}))
        return
    lines = _show_lines(a)
    lines += [f"checkpoint step {c['step']}, {_human_bytes(c['bytes'])}, inversion "
              f"{'kept' if c['inversion'] else 'made at its first edit'}" for c in _checkpoints(a, m, kept)]
    lines += [f"inversion {i.name}: adapter of step {i.step}, {i.steps} steps, {i.frames} frames "
              f"{list(i.indices)} of {i.source}" for i in kept]
    lines += [f"preview   step {p.step}: {p.prompt!r} -> {a.path / p.file}" for p in m.previews]
    if not target.final:
        lines.insert(1, f"step      {target.step} (a kept checkpoint; the final adapter is step {m.tuning.steps})")
    _stdout().print("\n".join(lines), markup=False)


def _checkpoints(a, m: Manifest, kept) -> list[dict]:
    """`tav show`'s checkpoints: step, folder, bytes and whether an inversion made with it is kept."""
    with_inversion = {i.step for i in kept}
    return [{"step": c.step, "folder": c.folder, "inversion": c.step in with_inversion,
             "bytes": sum(meta["bytes"] for rel, meta in m.files.items() if rel.startswith(c.folder + "/"))}
            for c in m.checkpoints]


@app.command()
@_errors
def export(
    ref: Annotated[str, typer.Argument(help="Artifact id, unique id prefix, or name (REF@STEP: a checkpoint).")],
    dest: Annotated[Path, typer.Argument(help="A .tav file, or a folder with --format diffusers, peft or official.")],
    fmt: Annotated[str, typer.Option("--format", help="tav (one portable file), diffusers (a folder diffusers "
                                     "loads without tav), peft (the adapter folder) or official (a pipeline folder "
                                     "the official Tune-A-Video code loads).")] = "tav",
    light: Annotated[bool, typer.Option("--light", help="With diffusers: no base weights in the folder, only the "
                                        "tuned UNet's adapter, the code and the inversion; the base is named "
                                        "(--base, default the one tuned on).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite DEST (tav, diffusers, peft); with diffusers or "
                                        "official: use --base even if it is not the one tuned on.")] = False,
    base: Annotated[str | None, _option(EditJob, "base", help="With diffusers or official: the base whose weights "
                                        "go in; with --light, the base the folder names (a hub id, for "
                                        "sharing).")] = None,
    base_config: Annotated[str | None, _option(EditJob, "base_config", help="With diffusers or official: configs "
                                               "for a single-file base.")] = None,
    quiet: Quiet = False,
) -> None:
    """Write an artifact as one portable .tav file, a diffusers pipeline folder, its adapter as a PEFT folder, or
    an official pipeline folder; folders carry a model card (README.md). REF@STEP writes that checkpoint's
    adapter (peft, official)."""
    from tavcli.app import refs

    store = _store()
    target = refs.resolve(store, ref)
    if fmt not in ("tav", "diffusers", "peft", "official"):
        raise BadInput(f"unknown export format {fmt!r}; choose tav, diffusers, peft or official")
    if light and fmt != "diffusers":
        raise BadInput("--light is for --format diffusers only")
    if fmt in ("tav", "diffusers") and not target.final:
        what = "a .tav file holds the whole artifact with every checkpoint" if fmt == "tav" else \
            "a diffusers folder holds the artifact's final adapter (and `tav import` gives the artifact back)"
        raise BadInput(f"{what}; export {target.artifact.name or target.artifact.short_id}, or {ref} with "
                       "--format peft or official")
    if fmt == "official":
        from tavcli.app.official.jobs import export_official

        with _Progress(quiet) as progress:
            typer.echo(str(export_official(ref, dest, store, base, base_config, force, progress)))
    elif fmt == "diffusers":
        from tavcli.app.interop import export_diffusers

        with _Progress(quiet) as progress:
            typer.echo(str(export_diffusers(target.artifact.id, dest, store, light, base, base_config, force,
                                            progress)))
    elif fmt == "tav":
        typer.echo(str(store.export(target.artifact, dest, force=force)))
    else:
        from tavcli.app.interop import export_peft

        typer.echo(str(export_peft(target.artifact, target.adapter_folder, dest, store, force=force)))


@app.command("import")
@_errors
def import_(
    source: Annotated[Path, typer.Argument(help="A .tav file, or a folder written by `tav export --format "
                                           "diffusers`.")],
    name: Annotated[str | None, typer.Option("--name", help="Store it under this name instead of its own (a name "
                                             "is part of the content: the id changes with it).")] = None,
) -> None:
    """Bring an exported artifact into this store (hashes verified); print its id."""
    if source.is_dir():
        from tavcli.app.interop import import_diffusers

        typer.echo(import_diffusers(source, _store(), name=name).short_id)
    else:
        typer.echo(_store().import_file(source, name=name).short_id)


@app.command("import-official")
@_errors
def import_official(
    folder: Annotated[Path, typer.Argument(help="An official Tune-A-Video output folder (with unet/), or its unet/.")],
    base: Annotated[str | None, _option(_official_job(), "base")] = None,
    base_config: Annotated[str | None, _option(_official_job(), "base_config")] = None,
    name: Name = None,
    prompt: Annotated[str | None, _option(_official_job(), "prompt")] = None,
    dtype: Annotated[str | None, _option(_official_job(), "dtype")] = None,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Turn an official Tune-A-Video tuned model into a tav artifact (a `full` adapter, kept in the checkpoint's
    precision unless --dtype says otherwise); print its id."""
    from tavcli.app.official.jobs import ImportOfficialJob
    from tavcli.app.official.jobs import import_official as run_import
    from tavcli.settings import build

    job = build(ImportOfficialJob, _flags(locals(), ImportOfficialJob))
    with _Progress(quiet) as progress:
        artifact = run_import(job, _store(), progress)
        progress.log(f"stored {artifact.short_id}" + (f" ({artifact.name})" if artifact.name else "")
                     + ("" if Manifest.of(artifact).has_inversion
                        else "; no inversion came with it: edit with --no-inversion"))
    if as_json:
        _stdout().print_json(json.dumps(_artifact_summary(artifact)))
    else:
        typer.echo(artifact.short_id)


@app.command()
@_errors
def rm(refs: list[str] = typer.Argument(..., help="Artifact ids, unique prefixes or names; REF@STEP removes "
                                         "one checkpoint.")) -> None:
    """Delete artifacts (damaged ones too), or one kept checkpoint (REF@STEP: the artifact gets a new id,
    printed); all refs are resolved before anything is removed."""
    from tavcli.app import refs as steps
    from tavcli.app.jobs import prune

    store = _store()
    whole = [store.resolve(r, damaged=True) for r in refs if "@" not in r]
    checkpoints = [steps.resolve(store, r) for r in refs if "@" in r]
    for t in checkpoints:
        if t.final:
            raise BadInput(f"step {t.step} is {t.label}'s final adapter, the artifact itself; "
                           f"`tav rm {t.artifact.name or t.artifact.short_id}` removes it all")
    for a in {a.id: a for a in whole}.values():
        store.remove(a)
        typer.echo(a.short_id)
    for t in checkpoints:
        if t.artifact.id in {a.id for a in whole}:
            continue
        current = store.resolve(t.artifact.name or t.artifact.id)  # an earlier checkpoint's removal renamed it
        keep = tuple(s for s in steps.kept_steps(Manifest.of(current)) if s != t.step)
        typer.echo(prune(store, current.id, keep).short_id)


@app.command()
@_errors
def prune(
    ref: Annotated[str, typer.Argument(help="Artifact id, unique id prefix, or name.")],
    keep: Annotated[list[int] | None, typer.Option("--keep", help="A checkpoint step to keep (repeat it); the "
                                                   "final adapter always stays.")] = None,
) -> None:
    """Drop an artifact's checkpoints but the --keep ones (and the inversions made with them); print the
    artifact's new id (its content changed)."""
    from tavcli.app.jobs import prune as run_prune

    typer.echo(run_prune(_store(), ref, tuple(keep or ())).short_id)


@app.command()
@_errors
def invert(
    ref: Annotated[str, typer.Argument(help=options(_invert_job())["ref"].help)],
    steps: Annotated[int | None, _option(_invert_job(), "steps")] = None,
    frames: Annotated[int | None, _option(_invert_job(), "frames")] = None,
    start: Annotated[int | None, _option(_invert_job(), "start")] = None,
    stride: Annotated[int | None, _option(_invert_job(), "stride")] = None,
    video: Annotated[Path | None, _option(_invert_job(), "video")] = None,
    name: Annotated[str | None, _option(_invert_job(), "name")] = None,
    device: Device = None,
    dtype: Dtype = None,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Invert the stored source (or --video) again with the tuned model: more steps, other or more frames.
    Kept with the artifact; prints its name, for `tav edit REF --inversion NAME`."""
    from tavcli.app.inversions import InvertJob
    from tavcli.app.inversions import invert as run_invert
    from tavcli.settings import build

    flags = _flags(locals(), InvertJob)
    job = build(InvertJob, flags, {k: f"--{k.replace('_', '-')}" for k in flags})
    with _Progress(quiet) as progress:
        kept = run_invert(job, _store(), progress)
    if as_json:
        _stdout().print_json(json.dumps(kept.to_json()))
    else:
        typer.echo(kept.name)


@app.command()
@_errors
def demo(
    out_dir: Annotated[Path | None, typer.Option("--out-dir", help="Where the clip, the edits and the export go.",
                                                 show_default="a new temporary folder")] = None,
    store: Annotated[Path | None, typer.Option("--store", help="The store to use.",
                                               show_default="a throwaway one in --out-dir")] = None,
) -> None:
    """Try tav with nothing to download: a synthetic clip tuned on the built-in random:tiny base, two edits,
    list, export and import, each command shown as you would type it (under a minute on a CPU)."""
    from tavcli.faces.demo import run

    raise typer.Exit(run(app, out_dir, store))


@app.command("store")
@_errors
def store_info(as_json: bool = typer.Option(False, "--json")) -> None:
    """Where the store lives and how big it is ($TAV_HOME overrides the location)."""
    from tavcli.app.runs import Runs

    store = _store()
    info = store.info()
    runs = [r.summary() for r in Runs(store).list()]
    info |= {"runs": runs}
    if as_json:
        _stdout().print_json(json.dumps(info))
    else:
        stopped = [r for r in runs if r["status"] == "stopped"]
        typer.echo(f"{info['root']}\t{info['artifacts']} artifacts\t{_human_bytes(info['bytes'])}"
                   + (f"\t{info['damaged']} damaged (see `tav list`)" if info["damaged"] else "")
                   + (f"\t{len(stopped)} stopped run{'s' if len(stopped) != 1 else ''}, "
                      f"{_human_bytes(sum(r['bytes'] for r in stopped))} (`tav resume --list`)" if stopped else ""))


@app.command()
@_errors
def bench(
    frames: Annotated[int | None, _option(BenchSettings, "frames")] = None,
    size: Annotated[int | None, _option(BenchSettings, "size")] = None,
    steps: Annotated[int | None, _option(BenchSettings, "steps")] = None,
    edit_steps: Annotated[int | None, _option(BenchSettings, "edit_steps")] = None,
    inversion_steps: Annotated[int | None, _option(BenchSettings, "inversion_steps")] = None,
    device: Device = None,
    tiny: Annotated[bool | None, _option(BenchSettings, "tiny")] = None,
    low_memory: Annotated[bool | None, _option(BenchSettings, "low_memory")] = None,
    compile: Compile = None,
    attention_kernel: AttentionKernel = None,
    fresh_tune_steps: Annotated[int | None, _option(BenchSettings, "fresh_tune_steps")] = None,
    edit_prompts: Annotated[int | None, _option(BenchSettings, "edit_prompts")] = None,
    preview: Annotated[bool | None, _option(BenchSettings, "preview", "--preview/--no-preview")] = None,
    edit_strength: Annotated[float | None, _option(BenchSettings, "edit_strength")] = None,
    as_json: Json = False,
) -> None:
    """Time a whole tune and edit on random SD v1.4-sized weights (no download), as `tav tune`/`edit` run."""
    from tavcli.faces.bench import run
    from tavcli.settings import build

    settings = build(BenchSettings, _flags(locals(), BenchSettings))
    with _Progress(quiet=False) as progress:
        result = run(settings, progress)
    if as_json:
        _stdout().print_json(json.dumps(result))
        return
    for key, value in result.items():
        if key != "settings":
            typer.echo(f"{key}\t{value}")
