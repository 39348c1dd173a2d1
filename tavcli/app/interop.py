"""tav's tuned models outside tav: `tav export --format diffusers`, `tav import` of such a folder, and the
model card (README.md with Hugging Face front matter) that every export folder carries.

A diffusers export is a folder that `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` loads
without tav: its code is tav's own `method/attention.py`, `ddim.py`, `tune_a_video_pipeline.py` and
`tune_a_video_unet.py`, copied verbatim (`CODE`); the artifact's files ride along byte for byte (`LAYOUT`),
with the manifest in `tav_export.json`, so `tav import folder` gives back the very same artifact:

    model_index.json                 TuneAVideoPipeline, its components, the tuned clip's size, the base (--light)
    tune_a_video_pipeline.py  attention.py  ddim.py
    unet/                            config.json, tune_a_video_unet.py, attention.py, the adapter (PEFT layout)
                                     and, unless --light, the base UNet's weights
    vae/ text_encoder/ tokenizer/ scheduler/   the base's (not in a --light folder)
    inversion.safetensors  source.mp4          the clip's DDIM inversion and the clip
    samples/*.gif  README.md  tav_export.json  previews, the model card, what `tav import` reads
    tav/                                       the artifact's other files (source.safetensors: the exact frames)

Every manifest field read here is read in `_card_fields`.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

from tavcli import __version__
from tavcli.app import builtin
from tavcli.app.manifest import Manifest, edits_of
from tavcli.app.progress import Reporter, Stage
from tavcli.app.store import Artifact, Store, check_folder_dest
from tavcli.errors import BadInput

METHOD = Path(__file__).resolve().parents[1] / "method"
# The folder's code: where each file goes, and the tav module it is a verbatim copy of.
CODE = {
    "tune_a_video_pipeline.py": "tune_a_video_pipeline.py",
    "attention.py": "attention.py",
    "ddim.py": "ddim.py",
    "unet/tune_a_video_unet.py": "tune_a_video_unet.py",
    "unet/attention.py": "attention.py",
}
PIPELINE_CLASS = ["tune_a_video_pipeline", "TuneAVideoPipeline"]  # [module file, class], as diffusers reads them
UNET_CLASS = ["tune_a_video_unet", "TuneAVideoUNet"]
MARKER = "tav_export.json"
FORMAT, FORMAT_VERSION = "tav-diffusers", 1
# Where an artifact's files go in the folder; any other file goes under tav/.
LAYOUT = {"adapter/adapter_config.json": "unet/adapter_config.json",
          "adapter/adapter_model.safetensors": "unet/adapter_model.safetensors",
          "inversion.safetensors": "inversion.safetensors", "source.mp4": "source.mp4"}
PREVIEW_SIDE = 256  # the model card's GIFs: at most this many pixels a side, at most PREVIEW_FRAMES frames
PREVIEW_FRAMES = 24
PAPER = "https://arxiv.org/abs/2212.11565"
CITATION = """```bibtex
@inproceedings{wu2023tune,
  title={Tune-A-Video: One-Shot Tuning of Image Diffusion Models for Text-to-Video Generation},
  author={Wu, Jay Zhangjie and Ge, Yixiao and Wang, Xintao and Lei, Stan Weixian and Gu, Yuchao and Shi, Yufei
          and Hsu, Wynne and Shan, Ying and Qie, Xiaohu and Shou, Mike Zheng},
  booktitle={ICCV},
  year={2023}
}
```
"""


def code_source(rel: str) -> Path:
    """The tav module that the folder's file `rel` is a copy of."""
    return METHOD / CODE[rel]


def _card_fields(artifact: Artifact) -> dict[str, Any]:
    """What exports and model cards need of an artifact's manifest: the one place this module reads it."""
    from dataclasses import asdict

    m = Manifest.of(artifact)
    tuning = {k: v for k, v in (m.tuning.to_json() | m.run.to_json()).items() if v is not None}
    return {
        "id": artifact.id, "short_id": artifact.short_id, "name": m.name, "prompt": m.prompt,
        "base": m.base.name, "base_revision": m.base.revision, "single_file_base": m.base.sha256 is not None,
        "frames": m.video.frames, "width": m.video.width, "height": m.video.height, "fps": m.video.fps,
        "adapter": {k: str(v) if isinstance(v, str) else v for k, v in asdict(m.adapter).items()},
        "tuning": tuning, "imported_from": m.provenance.folder if m.provenance.origin == "official" else None,
        "inversion_steps": m.inversion.steps if m.inversion else None, "loss": list(m.loss),
        "tav_version": m.versions.get("tav"), "files": sorted(m.files), "created": artifact.created,
        "edits": [(e.prompt, e.output) for e in edits_of(artifact)],
    }


# --- export ----------------------------------------------------------------------------------------------------


def export_diffusers(ref: str, dest: Path, store: Store, light: bool = False, base: str | None = None,
                     base_config: str | None = None, force: bool = False, reporter: Reporter = Reporter()) -> Path:
    """Write an artifact as a diffusers pipeline folder (see the module's docstring); returns `dest`.

    Self-contained, the base's components are written from the base as loaded (CPU, fp32: what `tav edit`
    computes with); `light`, the folder only names the base (`base`, default the recorded one), which must be
    a hub id or a diffusers folder. `force` replaces a non-empty `dest` and accepts a `base` other than the
    one tuned on.
    """
    dest = Path(dest)
    artifact = store.resolve(ref)
    fields = _card_fields(artifact)
    check_folder_dest(dest, force)  # before minutes of loading
    if light:
        named = _light_base(fields, base)
        loaded = None
    else:
        from tavcli.app.jobs import load_recorded_base

        recorded = Path(fields["base"])
        if base is None and recorded.is_absolute() and not recorded.exists():
            raise BadInput(f"the base {recorded} that {fields['short_id']} was tuned on is not there; pass --base "
                           "with that model's folder or hub id, or export with --light")
        loaded = load_recorded_base(artifact, base, base_config, force, "cpu", "fp32", reporter)
        named = None
    reporter.stage(Stage.WRITING, str(dest))
    with store.exporting_folder(artifact, dest, force) as part:
        for rel in CODE:
            (part / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(code_source(rel), part / rel)
        if loaded is not None:
            _write_components(part, loaded)
        else:
            _dump_json({"_class_name": UNET_CLASS[1], "_diffusers_version": _diffusers_version(), "_tav_base": named},
                       part / "unet" / "config.json")
        layout = {rel: LAYOUT.get(rel, f"tav/{rel}") for rel in fields["files"]}
        for rel, there in layout.items():
            (part / there).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(artifact.file(rel), part / there)
        _dump_json(_model_index(fields, named), part / "model_index.json")
        _dump_json({"format": FORMAT, "version": FORMAT_VERSION, "tav": __version__, "light": light,
                    "files": layout, "code": {rel: _sha256(part / rel) for rel in CODE},
                    "manifest": artifact.manifest,  # whole and as stored: its id must come back on import
                    "edits": artifact.edits()}, part / MARKER)
        write_model_card(part, artifact, "diffusers", base=named["name"] if named else base, light=light)
    return dest


def _light_base(fields: dict, base: str | None) -> dict:
    """The base a --light folder names: a hub id or diffusers folder that diffusers loads by itself."""
    name = base or fields["base"]
    if builtin.is_random(name):
        raise BadInput(f"the base {name} is one of tav's built-in random bases, which a --light folder cannot name "
                       "(diffusers does not know it); export without --light")
    if base is None and fields["single_file_base"] or Path(name).suffix.lower() in (".safetensors", ".ckpt"):
        raise BadInput(f"the base {name} is a single checkpoint file, which a --light folder cannot name; export "
                       "without --light, or pass --base with the hub id or diffusers folder of the same model")
    return {"name": name, "revision": None if base else fields["base_revision"]}


def _write_components(part: Path, base) -> None:
    """The base's UNet (stock, not inflated), VAE, text encoder, tokenizer and a DDIM scheduler, as diffusers
    writes them; the UNet's config names tav's class, which inflates it and puts the adapter on at load."""
    from diffusers import DDIMScheduler

    base.unet.save_pretrained(part / "unet")
    config = json.loads((part / "unet" / "config.json").read_text())
    _dump_json(config | {"_class_name": UNET_CLASS[1]}, part / "unet" / "config.json")
    base.vae.save_pretrained(part / "vae")
    base.text_encoder.save_pretrained(part / "text_encoder")
    base.tokenizer.save_pretrained(part / "tokenizer")
    DDIMScheduler.from_config(base.scheduler_config).save_pretrained(part / "scheduler")


def _model_index(fields: dict, light_base: dict | None) -> dict:
    components = {"vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
                  "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "DDIMScheduler"]}
    if light_base is not None:  # not in the folder: the pipeline loads them from `base`
        components = {k: [None, None] for k in components}
    return {"_class_name": PIPELINE_CLASS, "_diffusers_version": _diffusers_version(), "unet": UNET_CLASS,
            **components, "base": light_base and light_base["name"], "base_revision": light_base and
            light_base["revision"], "video_length": fields["frames"], "height": fields["height"],
            "width": fields["width"],
            "inversion": "inversion.safetensors" if "inversion.safetensors" in fields["files"] else None}


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def export_peft(artifact: Artifact, adapter: str, dest: Path, store: Store, force: bool = False) -> Path:
    """An adapter folder of the artifact (`adapter/`, or a checkpoint's) in PEFT's layout (docs/method.md),
    with a model card; no model library is loaded."""
    with store.exporting_folder(artifact, dest, force) as part:
        for rel in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copyfile(artifact.file(f"{adapter}/{rel}"), part / rel)
        write_model_card(part, artifact, "peft")
    return Path(dest)


# --- import ----------------------------------------------------------------------------------------------------


def import_diffusers(folder: Path, store: Store, name: str | None = None) -> Artifact:
    """The artifact a `tav export --format diffusers` folder (either variant) was written from, back in the
    store: its code must be what this tav writes, its files what its manifest hashes; `name` renames it."""
    folder = Path(folder)
    marker = folder / MARKER
    if not marker.is_file():
        raise BadInput(f"{folder} is not a tav diffusers export (it has no {MARKER}); give a folder written by "
                       "`tav export --format diffusers`, or a .tav file")
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BadInput(f"{marker} is not readable JSON ({e}); export the folder again") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(record.get("files"), dict):
        raise BadInput(f"{marker} is not a tav diffusers export's record; export the folder again")
    if record.get("version") != FORMAT_VERSION:
        raise BadInput(f"{folder} is a tav diffusers export of format version {record.get('version')}; this tav "
                       f"reads version {FORMAT_VERSION}; import it with the tav that wrote it ({record.get('tav')})")
    for rel in CODE:
        ours = code_source(rel).read_bytes()
        if not (folder / rel).is_file() or (folder / rel).read_bytes() != ours:
            raise BadInput(f"{folder / rel} differs from the code this tav ({__version__}) writes, so the folder "
                           f"may not render what tav would; re-export it with tav {__version__}, or import its "
                           ".tav file")
    files = {}
    for rel, there in record["files"].items():
        path = (folder / str(there)).resolve()
        if not path.is_relative_to(folder.resolve()):
            raise BadInput(f"{marker} names a file outside the folder ({there}); refusing it")
        files[rel] = path
    edits = [e for e in record.get("edits") or [] if isinstance(e, dict)]
    return store.import_files(record.get("manifest"), files, edits, str(folder), name=name)


# --- the model card --------------------------------------------------------------------------------------------


def write_model_card(folder: Path, artifact: Artifact, fmt: str, base: str | None = None, light: bool = False) -> Path:
    """README.md with Hugging Face front matter, and GIF previews of the source and of the recorded edits
    under samples/, for an export folder of format `fmt` (diffusers, official or peft); `base` is the base
    the folder names or holds (default: the one tuned on)."""
    import yaml

    fields = _card_fields(artifact)
    base = base or fields["base"]
    samples = folder / "samples"
    source = _preview(artifact.file("source.mp4"), samples / "source.gif", fields["fps"]) \
        if "source.mp4" in fields["files"] else None
    edits = []
    for i, (prompt, output) in enumerate(fields["edits"], 1):
        gif = _preview(Path(output), samples / f"edit-{i}-{_slug(prompt)}.gif", fields["fps"]) if output else None
        edits.append((prompt, gif))
    front = {
        "base_model": base, "library_name": "diffusers", "pipeline_tag": "text-to-video",
        "tags": ["tune-a-video", "text-to-video", "tav", f"tav-{fmt}"],
        "instance_prompt": fields["prompt"],
        "widget": [{"text": prompt, "output": {"url": f"samples/{gif.name}"}} for prompt, gif in edits if gif],
        "tav": {"caption": fields["prompt"], "artifact": fields["id"], "format": fmt, "light": light,
                "video": {k: fields[k] for k in ("frames", "width", "height", "fps")},
                "adapter": fields["adapter"], "tuning": fields["tuning"], "inversion_steps": fields["inversion_steps"],
                "loss": _loss_summary(fields["loss"]), "tuned_with": fields["tav_version"],
                "exported_with": __version__},
    }
    if not front["widget"]:
        del front["widget"]
    body = _card_body(fields, fmt, base, light, source, edits)
    text = "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---\n\n" + body
    (folder / "README.md").write_text(text, encoding="utf-8")
    return folder / "README.md"


def _preview(video: Path, gif: Path, fps: float) -> Path | None:
    """A small GIF of a video (file or frames folder), or None if it is no longer there or unreadable."""
    from tavcli.method.params import FrameSampling
    from tavcli.method.video import read_video, write_video

    if not video.exists():
        return None
    try:
        probe = read_video(video, FrameSampling(frames=1), 8, 8)
        w, h = probe.source_size
        scale = min(1.0, PREVIEW_SIDE / max(w, h))
        size = [max(8, int(side * scale) // 8 * 8) for side in (w, h)]
        clip = read_video(video, FrameSampling(frames=min(probe.source_frames, PREVIEW_FRAMES)), *size, "squash")
        return write_video(gif, clip.frames, fps or 8.0)
    except BadInput:
        return None


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40].rstrip("-") or "edit"


def _loss_summary(loss: list[float]) -> dict | None:
    if not loss:
        return None
    return {"first": loss[0], "last": loss[-1], "min": min(loss), "steps": len(loss)}


_USAGE = {
    "diffusers": '''```python
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained("{where}", trust_remote_code=True)
video = pipe("{prompt}", num_inference_steps=50, guidance_scale=12.5, output_type="np").frames[0]
```

`video` is (frames, height, width, 3) in [0, 1]. Sampling starts from the clip's DDIM inversion (in this folder),
so this renders what `tav edit` renders; pass `generator=`, `latents=` or another `video_length=` to start from
noise. Needs torch, diffusers, transformers{peft} (not tav).{light}''',
    "official": '''```python
import torch
from tuneavideo.models.unet import UNet3DConditionModel
from tuneavideo.pipelines.pipeline_tuneavideo import TuneAVideoPipeline

unet = UNet3DConditionModel.from_pretrained("{where}", subfolder="unet", torch_dtype=torch.float16).to("cuda")
pipe = TuneAVideoPipeline.from_pretrained("{where}", unet=unet, torch_dtype=torch.float16).to("cuda")
video = pipe("{prompt}", video_length={frames}, height={height}, width={width}, num_inference_steps=50,
             guidance_scale=12.5).videos
```

This is the layout of the official Tune-A-Video code (showlab/Tune-A-Video, diffusers 0.11.1); the clip's
inversion is in `inv_latents/` (pass it as `latents=` to edit the clip).''',
    "peft": '''This folder is tav's adapter in PEFT's layout (`adapter_config.json` + `adapter_model.safetensors`, tav's
spec in the safetensors header). It needs tav's inflated UNet (sparse-causal and temporal attention) to mean
anything: plain PEFT loads a `lora` adapter's spatial layers but drops its temporal tensors, and cannot read a
`full` one (`peft_type` TAV_FULL). With tav:

```python
from tavcli.method.adapters import load_adapter, read_spec
from tavcli.method.attention import inflate

spec = read_spec("{where}")
inflate(unet, attention=spec.attention, norm=spec.norm, seed=spec.temporal_seed)  # a stock SD v1 UNet
load_adapter(unet, "{where}")
```

To use the model without tav, export it with `tav export REF DIR --format diffusers` instead.''',
}


def _card_body(fields: dict, fmt: str, base: str, light: bool, source: Path | None, edits: list) -> str:
    title = fields["name"] or fields["short_id"]
    lora = fields["adapter"].get("kind") == "lora"
    light_note = (f"\n\nA light folder: the base model's weights are not in it; the pipeline loads them from "
                  f"`{base}` (named in model_index.json), which must be reachable: a hub id, or a folder on this "
                  "machine.") if light else ""
    usage = _USAGE[fmt].format(where=".", prompt="a panda is skiing", frames=fields["frames"],
                               height=fields["height"], width=fields["width"],
                               peft=" and peft (a LoRA adapter)" if lora else "", light=light_note)
    intro = (f"A [Tune-A-Video]({PAPER}) model: Stable Diffusion v1.x (`{base}`) tuned on one clip captioned "
             f"\"{fields['prompt']}\" ({fields['frames']} frames, {fields['width']}×{fields['height']}), with tav "
             f"{fields['tav_version'] or ''}; exported by tav {__version__} as a {fmt} folder.")
    lines = [f"# {title}: Tune-A-Video of \"{fields['prompt']}\"", "", intro, ""]
    if source is not None:
        lines += ["| source clip |", "| --- |", f"| ![source](samples/{source.name}) |", ""]
    if edits:
        lines += ["## Recorded edits", "", "| prompt | video |", "| --- | --- |"]
        for prompt, gif in edits:
            shown = f"![edit](samples/{gif.name})" if gif else "(not on this machine)"
            lines.append(f"| {prompt.replace('|', '/')} | {shown} |")
        lines.append("")
    lines += ["## How to use", "", usage, "", "## Tuning", "", "| setting | value |", "| --- | --- |"]
    adapter = {f"adapter.{k}": v for k, v in fields["adapter"].items()}
    for key, value in {**adapter, **fields["tuning"], "inversion steps": fields["inversion_steps"]}.items():
        lines.append(f"| {key} | {value} |")
    if fields["imported_from"]:
        lines += ["", f"Imported from an official Tune-A-Video run ({fields['imported_from']})."]
    loss = fields["loss"]
    if loss:
        lines += ["", (f"Loss over {len(loss)} steps: {loss[0]:.4f} at the first, {loss[-1]:.4f} at the last, "
                       f"{min(loss):.4f} at its lowest.")]
    lines += ["", "## Citation", "", CITATION]
    return "\n".join(lines)


# --- small helpers ---------------------------------------------------------------------------------------------


def _dump_json(data: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
