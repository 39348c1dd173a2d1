"""Video I/O for tav: read a clip as sampled, resized RGB frames and write frames back out.

Reading goes through decord for anything FFmpeg can decode; GIFs and directories of image
frames go through Pillow because decord cannot open them. Every failure a user can cause
(missing file, no video stream, corrupt data, impossible sampling) surfaces as a BadInput
with one sentence saying what was found and how to fix it.
"""

from __future__ import annotations

import math
import os
import re
import uuid
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import av
import decord
import numpy as np
from decord._ffi.base import DECORDError
from PIL import Image

from tavcli.errors import BadInput, counted
from tavcli.method.params import FrameSampling, FrameSize, Resize

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
DEFAULT_FPS = 8.0
# Bicubic rather than Lanczos: Pillow widens every filter's support when downscaling, so
# bicubic does not alias, and it is what decord/FFmpeg's swscale use in the official
# Tune-A-Video loader, so frames stay close to what the upstream configs were tuned on.
RESAMPLE = Image.Resampling.BICUBIC



# eq=False: a generated __eq__ would compare the frame arrays and raise on truth-testing.
@dataclass(frozen=True, eq=False)
class Clip:
    frames: np.ndarray
    indices: tuple[int, ...]
    fps: float
    source_frames: int
    source_size: tuple[int, int]


class _Source(NamedTuple):
    """What a reader found, before resizing: frames may differ in size (image directories)."""

    frames: list[np.ndarray]
    indices: list[int]
    fps: float
    total: int
    size: tuple[int, int]


def sample_indices(total: int, sampling: FrameSampling) -> list[int]:
    """Source frame indices to take from a clip of `total` frames."""
    return _sample(total, sampling, "the clip")


def _sample(total: int, sampling: FrameSampling, name: str) -> list[int]:
    frames, start, stride = sampling.frames, sampling.start, sampling.stride
    if total < 1:
        raise BadInput(f"{name} has no frames; give a clip with at least {frames}")
    available = total - start
    if available < 1:
        raise BadInput(f"{name} has {counted(total, 'frame')}; start {start} is past its end "
                       f"(use --start {total - 1} or less)")
    if available < frames:
        where = f" from frame {start}" if start else ""
        raise BadInput(
            f"{name} has {counted(total, 'frame')}; asked for {frames}{where} "
            f"(use --frames {available} or a longer clip)"
        )
    if stride is None:
        if frames == 1:
            return [start]
        # Both ends included so the sample spans the whole clip; available >= frames keeps the
        # spacing >= 1, so the rounded indices stay strictly increasing.
        return [int(i) for i in np.linspace(start, total - 1, frames).round()]
    last = start + stride * (frames - 1)
    if last >= total:
        widest = (total - 1 - start) // (frames - 1)
        raise BadInput(
            f"{name} has {counted(total, 'frame')}; start {start} + stride {stride} for {frames} frames "
            f"needs frame {last} "
            f"(use --stride {widest} or lower, or fewer frames)"
        )
    return list(range(start, last + 1, stride))


def read_video(
    path: str | Path,
    sampling: FrameSampling = FrameSampling(),
    width: int = 512,
    height: int = 512,
    resize: Resize | str = Resize.CROP,
) -> Clip:
    """Read `sampling.frames` frames from a video, GIF or frame directory, resized to width x height."""
    resize = FrameSize(width, height, resize).resize  # checked before the file is touched: a typo fails fast
    path = Path(path)
    if not path.exists():
        raise BadInput(f"{path} not found; check the path")
    if not (path.is_file() or path.is_dir()):  # decord would print its own "ERROR opening" and fail
        raise BadInput(f"{path} is not a regular file (a pipe or a device?); tav seeks in the clip, so save it to a "
                       "file first")
    if path.is_dir():
        source = _read_image_dir(path, sampling)
    elif path.suffix.lower() == ".gif":
        source = _read_gif(path, sampling)
    else:
        source = _read_with_decord(path, sampling)
    frames = np.stack([_resize_one(frame, width, height, resize) for frame in source.frames])
    return Clip(np.ascontiguousarray(frames), tuple(source.indices), source.fps, source.total, source.size)


def _read_with_decord(path: Path, sampling: FrameSampling) -> _Source:
    # PyAV looks first: decord's own failure would also print an FFmpeg error line on stderr.
    problem = _diagnose(path, undecodable=None)
    if problem:
        raise BadInput(problem)
    decord.logging.set_level(decord.logging.QUIET)  # FFmpeg's own log lines would bypass our errors
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
    except (DECORDError, RuntimeError):
        raise BadInput(_diagnose(path)) from None
    indices = _sample(len(reader), sampling, path.name)
    try:
        batch = reader.get_batch(indices).asnumpy()
    except (DECORDError, RuntimeError):
        batch = _decode_with_pyav(path, indices)  # decord refuses some valid files (widths 16, 24, 48, 72)
        if batch is None:
            raise BadInput(
                f"{path} opened but frames {indices[0]}..{indices[-1]} could not be decoded; "
                "it is probably truncated or corrupt, so re-download or re-encode it"
            ) from None
    frames = _as_rgb(batch)
    fps = float(reader.get_avg_fps())
    fps = fps if math.isfinite(fps) and fps > 0 else DEFAULT_FPS  # some containers state no rate
    return _Source(list(frames), indices, fps, len(reader), (frames.shape[2], frames.shape[1]))


def _decode_with_pyav(path: Path, indices: list[int]) -> np.ndarray | None:
    """Frames `indices` of a video decoded in order by PyAV, or None when it cannot decode them all either."""
    wanted, found = set(indices), {}
    try:
        with av.open(str(path)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i in wanted:
                    found[i] = frame.to_ndarray(format="rgb24")
                if i >= indices[-1]:
                    break
    except (av.FFmpegError, OSError):
        return None
    return np.stack([found[i] for i in indices]) if len(found) == len(wanted) else None


_UNDECODABLE = (
    "{path} has a video stream that could not be decoded; it is probably truncated or corrupt, "
    "so re-download it or re-encode it (ffmpeg -i IN -c:v libx264 OUT.mp4)"
)


def _diagnose(path: Path, undecodable: str | None = _UNDECODABLE) -> str | None:
    """What is wrong with a container, in PyAV's view; `undecodable` when it looks like a fine video."""
    try:
        # Read everything inside the block: PyAV streams segfault once their container closes.
        with av.open(str(path)) as container:
            kinds = [stream.type for stream in container.streams]
    except (av.FFmpegError, OSError) as err:
        reason = getattr(err, "strerror", None) or type(err).__name__
        return f"{path} is not a readable video ({reason}); it may be truncated, corrupt or not a video at all"
    if "video" not in kinds:
        found = ", ".join(f"{kind} stream" for kind in kinds) or "no streams"
        return f"{path} has no video stream (found: {found}); give a file that contains video"
    return undecodable.format(path=path) if undecodable else None


def _read_gif(path: Path, sampling: FrameSampling) -> _Source:
    try:
        with Image.open(path) as image:
            total = getattr(image, "n_frames", 1)
            indices = _sample(total, sampling, path.name)
            frames, durations = [], []
            for index in indices:
                image.seek(index)
                durations.append(image.info.get("duration", 0))
                frames.append(_image_to_rgb(image))
            size = image.size
    except (OSError, EOFError) as err:
        raise BadInput(f"{path} is not a readable GIF ({err}); re-export it") from None
    stated = [d for d in durations if d and d > 0]
    fps = 1000.0 / (sum(stated) / len(stated)) if stated else DEFAULT_FPS
    return _Source(frames, indices, fps, total, size)


def _natural_key(path: Path) -> list[object]:
    # So frame2.png sorts before frame10.png; zero-padded names sort the same either way.
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _read_image_dir(path: Path, sampling: FrameSampling) -> _Source:
    # Dot files are skipped: macOS "._frame.png" sidecars are not images.
    files = [p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
    files = sorted((p for p in files if p.is_file()), key=_natural_key)
    if not files:
        kinds = "/".join(sorted(s.lstrip(".") for s in IMAGE_SUFFIXES))
        raise BadInput(f"{path} is a directory with no image frames ({kinds}); add frames or give a video file")
    indices = _sample(len(files), sampling, path.name)
    frames = [_load_image(files[i]) for i in indices]
    height, width = frames[0].shape[:2]
    # Image files carry no frame rate; frames of different sizes are each resized on their own.
    return _Source(frames, indices, DEFAULT_FPS, len(files), (width, height))


def _load_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return _image_to_rgb(image)
    except OSError as err:
        raise BadInput(f"{path} is not a readable image ({err}); re-export or remove it") from None


def _image_to_rgb(image: Image.Image) -> np.ndarray:
    # convert() resolves palettes, grayscale and alpha, which the model cannot take.
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _as_rgb(frames: np.ndarray) -> np.ndarray:
    """(F, H, W[, C]) -> contiguous uint8 RGB; decord may give RGBA or padded, oddly strided rows."""
    if frames.ndim == 3:
        frames = frames[..., np.newaxis]
    if frames.ndim != 4 or frames.shape[-1] not in (1, 3, 4):
        raise BadInput(f"frames must be (F, H, W, 3) RGB; got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise BadInput(f"frames must be uint8; got {frames.dtype}")
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    return np.ascontiguousarray(frames[..., :3])


def resize_frames(frames: np.ndarray, width: int, height: int, resize: Resize | str = Resize.CROP) -> np.ndarray:
    """Resize (F, H, W, C) frames to (F, height, width, 3) uint8 by centre-crop or squash."""
    resize = FrameSize(width, height, resize).resize
    frames = _as_rgb(np.asarray(frames))
    if len(frames) == 0:
        raise BadInput("resize_frames got no frames; pass a (F, H, W, 3) array with F >= 1")
    resized = [_resize_one(frame, width, height, resize) for frame in frames]
    return np.ascontiguousarray(np.stack(resized))


def _resize_one(frame: np.ndarray, width: int, height: int, resize: str) -> np.ndarray:
    src_h, src_w = frame.shape[:2]
    if (src_w, src_h) == (width, height):
        return frame  # resampling at the same size would only blur
    image = Image.fromarray(frame)
    if resize == "squash":
        return np.asarray(image.resize((width, height), RESAMPLE))
    # Crop in source coordinates and resample once: the short side covers the target,
    # the centred box keeps the target's aspect ratio.
    scale = max(width / src_w, height / src_h)
    box_w, box_h = width / scale, height / scale
    left, top = (src_w - box_w) / 2, (src_h - box_h) / 2
    return np.asarray(image.resize((width, height), RESAMPLE, box=(left, top, left + box_w, top + box_h)))


def write_video(path: str | Path, frames: np.ndarray, fps: float = 8.0) -> Path:
    """Write (F, H, W, 3) uint8 frames to .mp4 (H.264) or .gif; returns the path written."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".mp4", ".gif"):
        raise BadInput(f"{path} has suffix {path.suffix or '(none)'!r}; write to .mp4 or .gif")
    frames = _check_frames_to_write(frames)
    if not (math.isfinite(fps) and fps > 0):
        raise BadInput(f"fps must be a positive number, got {fps}")
    if suffix == ".mp4":
        _check_even(path, frames)
    # Same directory so os.replace is an atomic rename: a crash never leaves half a video
    # under the real name. A made-up name (not mkstemp) keeps the usual file permissions.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if suffix == ".mp4":
            _write_mp4(tmp, frames, fps)
        else:
            _write_gif(tmp, frames, fps)
        os.replace(tmp, path)
    except (av.FFmpegError, OSError) as err:
        raise BadInput(f"could not write {path} ({err}); check the directory is writable and has space") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _check_frames_to_write(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        got = f"shape {frames.shape} {frames.dtype}"
        raise BadInput(f"frames must be a non-empty (F, H, W, 3) uint8 array; got {got}")
    return np.ascontiguousarray(frames)


def _check_even(path: Path, frames: np.ndarray) -> None:
    # yuv420p stores colour at half resolution, so libx264 refuses odd sizes.
    height, width = frames.shape[1:3]
    if width % 2 or height % 2:
        raise BadInput(
            f"{path.name}: H.264 needs even width and height, got {width}x{height}; "
            f"resize to {width - width % 2}x{height - height % 2} or write a .gif"
        )


def _write_mp4(tmp: Path, frames: np.ndarray, fps: float) -> None:
    # A Fraction keeps NTSC rates exact (29.97 -> 30000/1001) instead of drifting.
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"  # the only H.264 flavour every player decodes
        # crf 18: visually lossless. mbtree off: with it, x264 encoded the same small frames differently
        # from run to run (a same-seed edit must give the same file).
        stream.options = {"crf": "18", "x264-params": "mbtree=0"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())  # flush frames the encoder is still holding


def _write_gif(tmp: Path, frames: np.ndarray, fps: float) -> None:
    # Pillow merges identical consecutive frames (summing their durations), so playback time
    # is kept even when the frame count in the file is smaller.
    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(
        tmp, format="GIF", save_all=True, append_images=images[1:],
        duration=round(1000 / fps), loop=0, disposal=2,
    )
