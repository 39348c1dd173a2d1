"""The `tav` command line: parses, calls `jobs` and the store, renders.

stdout carries results only (ids, paths, tables, JSON); progress, logs and errors go to stderr.
Exit codes: 0 ok, 1 runtime failure, 2 usage or bad input, 3 not found, 130 interrupted.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tavcli import __version__

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

app = typer.Typer(
    name="tav",
    help="Tune-A-Video: turn one clip and its caption into a text-to-video model, then edit the clip.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _stdout() -> Console:
    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal:  # piped: no wrapping of table cells at a pretend 80 columns
        console = Console(highlight=False, soft_wrap=True, width=400)
    return console


def _quiet_libraries() -> None:
    """Our stderr is for tav's own progress: silence the libraries' load bars and advisory warnings."""
    import diffusers
    import transformers

    for lib in (diffusers, transformers):
        lib.utils.logging.set_verbosity_error()
        lib.utils.logging.disable_progress_bar()


def _stderr() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _exit_code(error: BaseException) -> int:
    from tavcli.app.store import CorruptArtifactError, NotFoundError, StoreError

    # The method modules' errors (JobError, VideoError, ConfigError, BaseModelError, ...) are ValueErrors:
    # bad input. Only adapters' need a closer look, and a module not imported raised none of its errors:
    # importing it here would cost a store command's error seconds of loading torch.
    adapters = sys.modules.get("tavcli.method.adapters")
    if isinstance(error, NotFoundError):
        return EXIT_NOT_FOUND
    if adapters and isinstance(error, adapters.AdapterSpecError):
        return EXIT_USAGE
    if isinstance(error, CorruptArtifactError) or (adapters and isinstance(error, adapters.AdapterError)):
        return EXIT_FAILURE
    if isinstance(error, (StoreError, ValueError)):
        return EXIT_USAGE
    return EXIT_FAILURE


def _errors(fn):
    """One line on stderr and a meaningful exit code instead of a traceback (TAV_DEBUG=1 shows it)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            _stderr().print("tav: interrupted; the store is as it was")
            raise typer.Exit(EXIT_INTERRUPTED)
        except Exception as e:  # noqa: BLE001 - this is the one place errors become exit codes
            if os.environ.get("TAV_DEBUG"):
                raise
            code = _exit_code(e)
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if code == EXIT_FAILURE and not e.__class__.__module__.startswith("tavcli"):
                message = f"{type(e).__name__}: {message} (TAV_DEBUG=1 shows the traceback)"
            _stderr().print(f"tav: error: {message}", markup=False)
            raise typer.Exit(code)

    return wrapper


class _Progress:
    """Draws jobs' progress on stderr: a Rich bar on a terminal, plain lines otherwise, nothing with -q.

    Every command that loads models reports through this, so this is where the libraries are quietened:
    importing them takes seconds, which `tav list` and the other store commands should not pay.
    """

    def __init__(self, quiet: bool):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        _quiet_libraries()
        self.quiet = quiet
        self.console = _stderr()
        self.live = not quiet and self.console.is_terminal
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=self.console,
                            transient=True) if self.live else None
        self.task = None

    def __enter__(self):
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, *exc):
        if self.bar:
            self.bar.stop()

    def stage(self, name: str, total: int | None = None) -> None:
        if self.bar:
            if self.task is not None:
                self.bar.remove_task(self.task)
            self.task = self.bar.add_task(name, total=total, info="")
        elif not self.quiet:
            self.console.print(f"tav: {name}" + (f" ({total} steps)" if total else ""), markup=False)

    def step(self, i: int, loss: float | None = None) -> None:
        if self.bar and self.task is not None:
            self.bar.update(self.task, completed=i + 1, info="" if loss is None else f"loss {loss:.4f}")

    def log(self, message: str) -> None:
        if not self.quiet:
            self.console.print(f"tav: {message}", markup=False)


def _store():
    from tavcli.app.store import Store

    return Store()


def _artifact_summary(a) -> dict:
    m = a.manifest
    return {
        "id": a.id, "short_id": a.short_id, "name": a.name, "prompt": m["prompt"], "source": m["source"]["path"],
        "frames": m["video"]["frames"], "width": m["video"]["width"], "height": m["video"]["height"],
        "base": m["base"]["name"], "adapter": m["adapter"]["kind"], "bytes": a.size_bytes(),
        "created": a.created, "edits": len(a.edits()), "path": str(a.path),
    }


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
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Tune-A-Video from the command line. Store: $TAV_HOME, else the platform's user data folder."""


@app.command()
@_errors
def tune(
    video: Path = typer.Argument(None, help="A video file, a GIF, or a folder of frames.", show_default=False),
    prompt: str = typer.Argument(None, help="The clip's caption, e.g. \"a man is skiing\".", show_default=False),
    config: Path = typer.Option(None, "--config", help="An official Tune-A-Video YAML config, or tav's own "
                                "(docs/configs.md); flags override it. Its validation prompts run as edits."),
    name: str = typer.Option(None, "--name", help="A name to refer to the artifact by."),
    base: str = typer.Option(None, "--base", help="SD v1.x hub id, diffusers folder, or single-file .safetensors/.ckpt "
                             "checkpoint [default: CompVis/stable-diffusion-v1-4]."),
    base_config: str = typer.Option(None, "--base-config", help="For a single-file --base: an SD v1.x diffusers "
                                    "folder (or hub id) with its configs, tokenizer and scheduler (needed offline)."),
    frames: int = typer.Option(None, "--frames", help="Frames to sample from the clip [default: 8]."),
    size: int = typer.Option(None, "--size", help="Square size; --width/--height override it [default: 512]."),
    width: int = typer.Option(None, "--width"),
    height: int = typer.Option(None, "--height"),
    start: int = typer.Option(None, "--start", help="First frame index [default: 0]."),
    stride: int = typer.Option(None, "--stride", help="Take every K-th frame instead of spreading over the clip."),
    resize: str = typer.Option(None, "--resize", help="crop (keep aspect, centre-crop) or squash [default: crop; "
                               "official configs: squash]."),
    steps: int = typer.Option(None, "--steps", help="Tuning steps [default: 300]."),
    lr: float = typer.Option(None, "--lr", help="AdamW learning rate [default: 3e-5]."),
    adapter: str = typer.Option(None, "--adapter", help="full (paper-exact) or lora [default: full]."),
    rank: int = typer.Option(None, "--rank", help="LoRA rank (with --adapter lora) [default: 16]."),
    attention: str = typer.Option(None, "--attention", help="sparse-causal, first-frame, full or frame "
                                  "[default: sparse-causal]."),
    seed: int = typer.Option(None, "--seed", help="[default: 0]"),
    low_memory: bool = typer.Option(False, "--low-memory",
                                    help="Gradient checkpointing: slower steps, far less GPU memory "
                                         "(chosen by itself when the clip would not fit)."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the UNet's repeated blocks: faster "
                                  "steps after minutes of compiling (docs/performance.md)."),
    device: str = typer.Option(None, "--device", help="auto, cuda or cpu [default: auto]."),
    dtype: str = typer.Option(None, "--dtype", help="auto, bf16, fp16 or fp32 (frozen weights) [default: auto]."),
    out_dir: Path = typer.Option(Path("."), "--out-dir", help="Where a config's validation edits go."),
    as_json: bool = typer.Option(False, "--json", help="Print the artifact as one JSON object."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Only the id on stdout, nothing on stderr."),
) -> None:
    """Tune on one clip; store the adapter and the clip's inversion; print the artifact's id."""
    from tavcli.app.configs import LoadedConfig, apply_overrides, load_config
    from tavcli.app.jobs import EditJob, JobError, TuneJob
    from tavcli.app.jobs import edit as run_edit
    from tavcli.app.jobs import tune as run_tune

    if config is None and (video is None or prompt is None):
        raise JobError("give VIDEO and PROMPT (e.g. tav tune clip.mp4 \"a man is skiing\"), or --config FILE.yaml")
    loaded = load_config(config) if config else LoadedConfig(TuneJob(video, prompt), [], [], "cli")
    if size is not None:
        width, height = width or size, height or size
    loaded = apply_overrides(
        loaded, video=video, prompt=prompt, name=name, base=base, base_config=base_config, frames=frames, width=width, height=height,
        start=start, stride=stride, resize=resize, steps=steps, lr=lr, adapter=adapter, rank=rank,
        attention=attention, seed=seed, device=device, dtype=dtype, low_memory=True if low_memory else None,
        compile=True if compile_ else None)
    store = _store()
    outputs = []
    with _Progress(quiet) as progress:
        for warning in loaded.warnings:
            progress.log(f"warning: {warning}")
        artifact = run_tune(loaded.tune, store, progress)
        loss = artifact.manifest["loss"]
        progress.log(f"stored {artifact.short_id}" + (f" ({artifact.name})" if artifact.name else "")
                     + (f"; loss {loss[0]:.4f} -> {loss[-1]:.4f}" if loss else ""))
        for job in loaded.edits:
            job = EditJob(**{**job.__dict__, "ref": artifact.id, "out_dir": out_dir})
            outputs += [r.path for r in run_edit(job, store, progress)]
    if as_json:
        _stdout().print_json(json.dumps(_artifact_summary(artifact) | {"edit_outputs": [str(p) for p in outputs]}))
    else:
        typer.echo(artifact.short_id)
        for path in outputs:
            typer.echo(str(path))


def _read_prompts(prompts: list[str] | None, prompts_file: str | None) -> list[str]:
    found = list(prompts or [])
    if prompts_file:
        text = sys.stdin.read() if prompts_file == "-" else Path(prompts_file).read_text()
        found += [line.strip() for line in text.splitlines() if line.strip()]
    if not found:
        from tavcli.app.jobs import JobError

        raise JobError("no prompt given; pass one or more prompts, or --prompts-file FILE ('-' for stdin)")
    return found


@app.command()
@_errors
def edit(
    ref: str = typer.Argument(..., help="Artifact id, unique id prefix, or name."),
    prompts: list[str] = typer.Argument(None, help="One or more prompts; each makes one video."),
    prompts_file: str = typer.Option(None, "--prompts-file", help="More prompts, one per line ('-' = stdin)."),
    output: Path = typer.Option(None, "-o", "--output", help="Output path (one prompt only)."),
    out_dir: Path = typer.Option(Path("."), "--out-dir", help="Folder for outputs named after artifact and prompt."),
    fmt: str = typer.Option("mp4", "--format", help="mp4, gif or png (a folder of frames)."),
    steps: int = typer.Option(50, "--steps", help="DDIM steps."),
    guidance: float = typer.Option(12.5, "--guidance", help="Classifier-free guidance scale."),
    negative: str = typer.Option("", "--negative", help="Negative prompt."),
    seed: int = typer.Option(0, "--seed", help="Noise seed (with --no-inversion)."),
    no_inversion: bool = typer.Option(False, "--no-inversion", help="Start from noise, not the clip's inversion."),
    frames: int = typer.Option(None, "--frames", help="Frames to generate (with --no-inversion)."),
    grid: bool = typer.Option(False, "--grid", help="Source and edit side by side."),
    fps: float = typer.Option(8.0, "--fps", help="Output frame rate (the official samples' 8 by default)."),
    base: str = typer.Option(None, "--base", help="Base model [default: the one tuned on]."),
    base_config: str = typer.Option(None, "--base-config", help="Configs for a single-file base "
                                    "[default: the ones recorded at tuning]."),
    force: bool = typer.Option(False, "--force", help="Use --base even if it is not the one tuned on."),
    score: bool = typer.Option(False, "--score", help="Also print and record CLIP score and frame consistency."),
    clip: str = typer.Option("openai/clip-vit-large-patch14", "--clip", help="CLIP model for --score."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the UNet's repeated blocks: faster "
                                  "steps after minutes of compiling; pays over many prompts (docs/performance.md)."),
    device: str = typer.Option("auto", "--device"),
    dtype: str = typer.Option("auto", "--dtype"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Nothing on stderr."),
) -> None:
    """Edit the tuned clip with new prompts; print each written path (with --score: path, CLIP score,
    frame consistency, tab-separated)."""
    from tavcli.method.ddim import EditSettings
    from tavcli.app.jobs import EditJob
    from tavcli.app.jobs import edit as run_edit

    job = EditJob(
        ref=ref, prompts=_read_prompts(prompts, prompts_file),
        settings=EditSettings(steps=steps, guidance=guidance, negative_prompt=negative, seed=seed,
                              inversion=not no_inversion, compile=compile_),
        output=output, out_dir=out_dir, format=fmt, frames=frames, grid=grid, fps=fps, base=base,
        base_config=base_config, force=force,
        device=device, dtype=dtype, score=score, clip=clip,
    )
    store = _store()
    with _Progress(quiet) as progress:
        results = run_edit(job, store, progress)
    if as_json:
        artifact = store.resolve(ref)
        _stdout().print_json(json.dumps({"artifact": artifact.short_id, "outputs": [
            {"prompt": r.prompt, "path": str(r.path)} | (r.scores or {}) for r in results]}))
    else:
        for r in results:
            typer.echo("\t".join([str(r.path)] + [f"{v:.2f}" for v in (r.scores or {}).values()]))


@app.command()
@_errors
def score(
    target: str = typer.Argument(..., help="A video (file or frames folder), or an artifact ref: its edits."),
    prompt: str = typer.Option(None, "--prompt", help="The text the video should match [ref: each edit's prompt]."),
    clip: str = typer.Option("openai/clip-vit-large-patch14", "--clip", help="CLIP model id or folder."),
    device: str = typer.Option("auto", "--device"),
    as_json: bool = typer.Option(False, "--json", help="One JSON array."),
) -> None:
    """The paper's metrics: CLIP score (text alignment) and frame consistency, both x100.

    Prints one line per video: path, CLIP score, frame consistency (tab-separated).
    """
    from tavcli.app.jobs import ScoreJob
    from tavcli.app.jobs import score as run_score

    with _Progress(quiet=False) as progress:
        rows = run_score(ScoreJob(target, prompt, clip, device), _store(), progress)
    if as_json:
        _stdout().print_json(json.dumps(rows))
    else:
        for r in rows:
            typer.echo(f"{r['video']}\t{r['clip_score']:.2f}\t{r['frame_consistency']:.2f}")


@app.command("list")
@_errors
def list_(as_json: bool = typer.Option(False, "--json", help="One JSON array.")) -> None:
    """The stored artifacts, oldest first."""
    rows = [_artifact_summary(a) for a in _store().list()]
    if as_json:
        _stdout().print_json(json.dumps(rows))
        return
    table = Table(box=None, pad_edge=False)
    for col in ("id", "name", "source", "prompt", "frames", "base", "adapter", "size", "created", "edits"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["short_id"], r["name"] or "", Path(r["source"]).name, r["prompt"],
                      f"{r['frames']}×{r['width']}×{r['height']}", r["base"], r["adapter"], _human_bytes(r["bytes"]),
                      r["created"][:19].replace("T", " "), str(r["edits"]))
    _stdout().print(table)


def _sparkline(values: list[float], width: int = 40) -> str:
    if not values:
        return ""
    step = max(1, len(values) // width)
    points = [sum(values[i:i + step]) / len(values[i:i + step]) for i in range(0, len(values), step)]
    lo, hi = min(points), max(points)
    bars = "▁▂▃▄▅▆▇█"
    return "".join(bars[int((p - lo) / (hi - lo) * 7) if hi > lo else 0] for p in points)


@app.command()
@_errors
def show(
    ref: str = typer.Argument(..., help="Artifact id, unique id prefix, or name."),
    as_json: bool = typer.Option(False, "--json", help="The whole manifest and edits as JSON."),
) -> None:
    """Everything stored about one artifact: settings, loss curve, edits."""
    a = _store().resolve(ref)
    if as_json:
        _stdout().print_json(json.dumps(a.manifest | {"path": str(a.path), "edits": a.edits()}))
        return
    m, out = a.manifest, _stdout()
    loss = m["loss"]
    out.print(f"id        {a.id}\nname      {a.name or ''}\nprompt    {m['prompt']}\n"
              f"source    {m['source']['path']} (frames {m['source']['indices']})\n"
              f"video     {m['video']['frames']} frames, {m['video']['width']}×{m['video']['height']}, "
              f"{m['video']['fps']} fps\nbase      {m['base']['name']}"
              + (f" @ {m['base']['revision']}" if m["base"]["revision"] else "")
              + f"\nadapter   {m['adapter']['kind']} ({m['adapter']['attention']}), {_human_bytes(a.size_bytes())}\n"
              f"tuning    {m['tuning']['steps']} steps, lr {m['tuning']['lr']}, seed {m['tuning']['seed']}, "
              f"{m['tuning']['device']} {m['tuning']['dtype']}, {m['tuning']['seconds']} s\n"
              + (f"loss      {loss[0]:.4f} {_sparkline(loss)} {loss[-1]:.4f}\n" if loss else "")
              + f"created   {a.created}\nstored at {a.path}", markup=False)
    for e in a.edits():
        out.print(f"edit      {e['created']}  {e['prompt']!r} -> {e['output']} ({e['seconds']} s)", markup=False)


@app.command()
@_errors
def export(
    ref: str = typer.Argument(..., help="Artifact id, unique id prefix, or name."),
    dest: Path = typer.Argument(..., help="A .tav file, or a folder with --format peft or official."),
    fmt: str = typer.Option("tav", "--format", help="tav (one portable file), peft (the adapter folder) or "
                            "official (a pipeline folder the official Tune-A-Video code loads)."),
    force: bool = typer.Option(False, "--force", help="Overwrite DEST (tav, peft); with official: use --base even "
                               "if it is not the one tuned on."),
    base: str = typer.Option(None, "--base", help="With official: the base whose weights go in [default: the one "
                             "tuned on]."),
    base_config: str = typer.Option(None, "--base-config", help="With official: configs for a single-file base."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Nothing on stderr."),
) -> None:
    """Write an artifact as one portable .tav file, its adapter as a PEFT folder, or an official pipeline folder."""
    from tavcli.app.store import ExportError

    store = _store()
    artifact = store.resolve(ref)
    if fmt == "official":
        from tavcli.app.jobs import export_official

        with _Progress(quiet) as progress:
            typer.echo(str(export_official(artifact.id, dest, store, base, base_config, force, progress)))
        return
    if fmt == "tav":
        typer.echo(str(store.export(artifact, dest, force=force)))
        return
    if fmt != "peft":
        raise ExportError(f"unknown export format {fmt!r}; choose tav, peft or official")
    store.verify(artifact)
    if dest.exists() and not force:
        raise ExportError(f"{dest} exists; use --force to overwrite")
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(artifact.path / "adapter", tmp)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    typer.echo(str(dest))


@app.command("import")
@_errors
def import_(file: Path = typer.Argument(..., help="A .tav file made by `tav export`.")) -> None:
    """Bring an exported artifact into this store (hashes verified); print its id."""
    typer.echo(_store().import_file(file).short_id)


@app.command("import-official")
@_errors
def import_official(
    folder: Path = typer.Argument(..., help="An official Tune-A-Video output folder (with unet/), or its unet/."),
    base: str = typer.Option(None, "--base", help="The base it was tuned from [default: config.yaml's "
                             "pretrained_model_path when found, else CompVis/stable-diffusion-v1-4]."),
    base_config: str = typer.Option(None, "--base-config", help="Configs for a single-file --base."),
    name: str = typer.Option(None, "--name", help="A name to refer to the artifact by."),
    prompt: str = typer.Option(None, "--prompt", help="The caption it was tuned on [default: config.yaml's]."),
    as_json: bool = typer.Option(False, "--json", help="Print the artifact as one JSON object."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Only the id on stdout, nothing on stderr."),
) -> None:
    """Turn an official Tune-A-Video tuned model into a tav artifact (a `full` adapter); print its id."""
    from tavcli.app.jobs import ImportOfficialJob
    from tavcli.app.jobs import import_official as run_import

    with _Progress(quiet) as progress:
        artifact = run_import(ImportOfficialJob(folder, base, base_config, name, prompt), _store(), progress)
        progress.log(f"stored {artifact.short_id}" + (f" ({artifact.name})" if artifact.name else "")
                     + ("" if "inversion.safetensors" in artifact.manifest["files"]
                        else "; no inversion came with it: edit with --no-inversion"))
    if as_json:
        _stdout().print_json(json.dumps(_artifact_summary(artifact)))
    else:
        typer.echo(artifact.short_id)


@app.command()
@_errors
def rm(refs: list[str] = typer.Argument(..., help="Artifact ids, unique prefixes or names.")) -> None:
    """Delete artifacts; all refs are resolved before anything is removed."""
    store = _store()
    artifacts = [store.resolve(r) for r in refs]
    for a in {a.id: a for a in artifacts}.values():
        store.remove(a)
        typer.echo(a.short_id)


@app.command("store")
@_errors
def store_info(as_json: bool = typer.Option(False, "--json")) -> None:
    """Where the store lives and how big it is ($TAV_HOME overrides the location)."""
    info = _store().info()
    if as_json:
        _stdout().print_json(json.dumps(info))
    else:
        typer.echo(f"{info['root']}\t{info['artifacts']} artifacts\t{_human_bytes(info['bytes'])}")


@app.command()
@_errors
def bench(
    frames: int = typer.Option(8, "--frames"),
    size: int = typer.Option(512, "--size"),
    steps: int = typer.Option(30, "--steps", help="Tuning steps to time."),
    edit_steps: int = typer.Option(50, "--edit-steps"),
    device: str = typer.Option("auto", "--device"),
    tiny: bool = typer.Option(False, "--tiny", help="A tiny random architecture: a quick CPU smoke test."),
    low_memory: bool = typer.Option(False, "--low-memory", help="Time `tav tune --low-memory`."),
    compile_: bool = typer.Option(False, "--compile", help="Time `tav tune --compile` and `tav edit --compile`."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Time a whole tune and edit on random SD v1.4-sized weights (no download), as `tav tune`/`edit` run."""
    from tavcli.faces.bench import BenchSettings, run

    with _Progress(quiet=False) as progress:
        result = run(BenchSettings(frames, size, steps, edit_steps, device, tiny, low_memory, compile_), progress)
    if as_json:
        _stdout().print_json(json.dumps(result))
        return
    for key, value in result.items():
        if key != "settings":
            typer.echo(f"{key}\t{value}")
