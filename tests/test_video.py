"""Tests for tavcli.method.video: sampling, reading, resizing and writing clips.

Sources are built inside each test with PyAV / Pillow so colours are known exactly; H.264 is
lossy, so colours read back from an mp4 are compared with a tolerance on flat regions.
"""

from __future__ import annotations

import os
import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from tavcli.errors import BadInput
from tavcli.method.video import Clip, FrameSampling, read_video, resize_frames, sample_indices, write_video

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
TOL = 8  # H.264 (yuv420p, crf 18) moves flat colours by a few levels


def ramp_colour(i: int) -> tuple[int, int, int]:
    return (20 + 10 * i, 100, 220 - 10 * i)


def ramp_frames(n: int = 20, width: int = 96, height: int = 64) -> np.ndarray:
    """Frame i is a solid colour whose red rises and blue falls with i."""
    frames = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        frames[i] = ramp_colour(i)
    return frames


def thirds_frame(width: int = 128, height: int = 64) -> np.ndarray:
    """Left third red, middle third green, right third blue."""
    frame = np.zeros((height, width, 3), np.uint8)
    edges = np.linspace(0, width, 4).round().astype(int)
    for colour, lo, hi in zip((RED, GREEN, BLUE), edges[:-1], edges[1:]):
        frame[:, lo:hi] = colour
    return frame


def make_mp4(path: Path, frames: np.ndarray, fps: int = 8, **container_options: str) -> Path:
    """Encode with PyAV directly, so reading is tested independently of write_video."""
    with av.open(str(path), "w", options=container_options) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "18"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def make_gif(path: Path, frames: np.ndarray, duration_ms: int) -> Path:
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
    return path


def flat_mean(frame: np.ndarray) -> np.ndarray:
    """Mean colour away from the borders, where chroma subsampling and resampling bleed."""
    h, w = frame.shape[:2]
    return frame[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4].reshape(-1, 3).mean(axis=0)


def assert_rgb_uint8(frames: np.ndarray, shape: tuple[int, ...]) -> None:
    assert frames.shape == shape
    assert frames.dtype == np.uint8
    assert frames.flags["C_CONTIGUOUS"]


def assert_ramp(clip: Clip, tol: float = TOL) -> None:
    for frame, index in zip(clip.frames, clip.indices):
        assert np.abs(flat_mean(frame) - ramp_colour(index)).max() < tol, index
    reds = [flat_mean(frame)[0] for frame in clip.frames]
    assert all(a < b for a, b in zip(reds, reds[1:])), "frames out of order"


@pytest.fixture
def ramp_mp4(tmp_path: Path) -> Path:
    return make_mp4(tmp_path / "ramp.mp4", ramp_frames())


# --- sampling -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "sampling", "expected"),
    [
        (20, FrameSampling(8), [0, 3, 5, 8, 11, 14, 16, 19]),
        (20, FrameSampling(20), list(range(20))),
        (20, FrameSampling(1, start=7), [7]),
        (20, FrameSampling(4, start=4), [4, 9, 14, 19]),
        (20, FrameSampling(5, start=2, stride=3), [2, 5, 8, 11, 14]),
        (20, FrameSampling(4, stride=6), [0, 6, 12, 18]),
    ],
)
def test_sample_indices(total: int, sampling: FrameSampling, expected: list[int]) -> None:
    assert sample_indices(total, sampling) == expected


def test_uniform_sampling_is_linspace_and_strictly_increasing() -> None:
    for total in range(1, 60):
        for frames in range(1, total + 1):
            got = sample_indices(total, FrameSampling(frames))
            assert len(set(got)) == frames and got == sorted(got)
            assert got[0] == 0 and got[-1] == (total - 1 if frames > 1 else 0)
            if frames > 1:
                assert got == np.linspace(0, total - 1, frames).round().astype(int).tolist()


@pytest.mark.parametrize(
    ("total", "sampling", "words"),
    [
        (5, lambda: FrameSampling(8), ["has 5 frames", "asked for 8", "--frames 5"]),
        (20, lambda: FrameSampling(8, start=15), ["has 20 frames", "from frame 15", "--frames 5"]),
        (20, lambda: FrameSampling(5, stride=5), ["has 20 frames", "stride 5", "needs frame 20", "--stride 4"]),
        (20, lambda: FrameSampling(2, start=20), ["start 20", "--start 19"]),
        (20, lambda: FrameSampling(0), ["frames", "0"]),
        (20, lambda: FrameSampling(2, start=-1), ["start", "-1"]),
        (20, lambda: FrameSampling(2, stride=0), ["stride", "0"]),
        (1, lambda: FrameSampling(2), ["has 1 frame;", "--frames 1"]),  # not "1 frames"
    ],
)
def test_sample_indices_errors(total: int, sampling, words: list[str]) -> None:
    """A bad sampling is refused when it is made (its bounds) or when it meets the clip."""
    with pytest.raises(BadInput) as err:
        sample_indices(total, sampling())
    for word in words:
        assert word in str(err.value)


# --- reading mp4 ----------------------------------------------------------------------------


def test_read_mp4_uniform(ramp_mp4: Path) -> None:
    clip = read_video(ramp_mp4, width=96, height=64)
    assert clip.indices == (0, 3, 5, 8, 11, 14, 16, 19)
    assert_rgb_uint8(clip.frames, (8, 64, 96, 3))
    assert (clip.fps, clip.source_frames, clip.source_size) == (8.0, 20, (96, 64))
    assert_ramp(clip)


def test_read_mp4_stride_and_start(ramp_mp4: Path) -> None:
    clip = read_video(ramp_mp4, FrameSampling(4, start=3, stride=4), width=96, height=64)
    assert clip.indices == (3, 7, 11, 15)
    assert_ramp(clip)


@pytest.mark.parametrize(("width", "height"), [(64, 32), (40, 24), (512, 512)])
@pytest.mark.parametrize("resize", ["crop", "squash"])
def test_read_mp4_other_sizes(ramp_mp4: Path, width: int, height: int, resize: str) -> None:
    clip = read_video(ramp_mp4, FrameSampling(4), width=width, height=height, resize=resize)
    assert_rgb_uint8(clip.frames, (4, height, width, 3))
    assert_ramp(clip)


def test_read_mp4_too_few_frames(tmp_path: Path) -> None:
    path = make_mp4(tmp_path / "clip.mp4", ramp_frames(5))
    with pytest.raises(BadInput, match=r"clip\.mp4 has 5 frames; asked for 8 \(use --frames 5"):
        read_video(path, width=96, height=64)


def test_read_mp4_stride_overrun(ramp_mp4: Path) -> None:
    with pytest.raises(BadInput, match=r"ramp\.mp4 has 20 frames.*stride 3"):
        read_video(ramp_mp4, FrameSampling(8, stride=3))


def test_odd_sized_source_gives_contiguous_rgb(tmp_path: Path) -> None:
    # 90 is even (H.264 allows it) but no multiple of 16/32, which is where decoders pad rows.
    path = make_mp4(tmp_path / "odd.mp4", ramp_frames(10, width=90, height=50))
    clip = read_video(path, FrameSampling(3), width=88, height=48)
    assert_rgb_uint8(clip.frames, (3, 48, 88, 3))
    assert clip.source_size == (90, 50)
    assert_ramp(clip)


@pytest.mark.parametrize("width", [16, 24, 48, 72])
def test_narrow_clips_decord_refuses_are_read_through_pyav(tmp_path: Path, width: int) -> None:
    # decord's get_batch fails on these widths (a from_size == to_size check); PyAV decodes them fully.
    path = make_mp4(tmp_path / "narrow.mp4", ramp_frames(12, width=width, height=128))
    with av.open(str(path)) as container:
        every = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    clip = read_video(path, FrameSampling(4), width=width, height=128)
    assert clip.indices == (0, 4, 7, 11) and clip.source_size == (width, 128)
    assert np.array_equal(clip.frames, every[list(clip.indices)])


def test_a_pipe_is_refused_before_any_reader_opens_it(tmp_path: Path) -> None:
    fifo = tmp_path / "clip.mp4"
    os.mkfifo(fifo)
    with pytest.raises(BadInput, match="not a regular file .* save it to a file first"):
        read_video(fifo, FrameSampling(4), width=64, height=64)


# --- resizing -------------------------------------------------------------------------------


def test_crop_keeps_centre_squash_keeps_everything() -> None:
    source = thirds_frame(128, 64)[np.newaxis]  # 2:1
    crop = resize_frames(source, 64, 64, "crop")[0]
    squash = resize_frames(source, 64, 64, "squash")[0]

    def is_red(px: np.ndarray) -> bool:
        return px[0] > 200 and px[1] < 60 and px[2] < 60

    assert tuple(crop[32, 32]) == GREEN and tuple(squash[32, 32]) == GREEN
    # The crop keeps source columns 32..96: a sixth of the width is red instead of a third.
    red_crop = np.mean([is_red(px) for px in crop[32]])
    red_squash = np.mean([is_red(px) for px in squash[32]])
    assert 0.10 < red_crop < 0.22 and 0.28 < red_squash < 0.40
    assert is_red(squash[0, 0]) and tuple(squash[0, -1]) == BLUE
    # Cropping the centre square by hand must give the same picture as resize="crop".
    assert np.array_equal(crop, source[0, :, 32:96])


def test_crop_wide_source_loses_edges(tmp_path: Path) -> None:
    path = make_mp4(tmp_path / "wide.mp4", np.stack([thirds_frame(192, 64)] * 3))  # 3:1
    crop = read_video(path, FrameSampling(1), width=64, height=64).frames[0]
    squash = read_video(path, FrameSampling(1), width=64, height=64, resize="squash").frames[0]
    for corner in (crop[0, 0], crop[-1, -1], crop[32, 32]):
        assert corner[1] > 200 and corner[0] < 60 and corner[2] < 60  # all green
    assert squash[32, 2, 0] > 200 and squash[32, 2, 1] < 60  # red survives at the left edge
    assert squash[32, -3, 2] > 200 and squash[32, -3, 1] < 60  # blue at the right


def test_resize_frames_accepts_rgba_gray_and_strided() -> None:
    rgba = np.zeros((2, 20, 30, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    out = resize_frames(rgba[:, :, ::-1], 16, 8)  # negative stride, 4 channels
    assert_rgb_uint8(out, (2, 8, 16, 3))
    assert np.all(out == (200, 0, 0))
    gray = np.full((1, 20, 30), 77, np.uint8)
    assert np.all(resize_frames(gray, 16, 16) == 77)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [({"width": 500}, ["500", "496 or 504"]), ({"height": 0}, ["height 0"]), ({"resize": "fit"}, ["'fit'", "crop"])],
)
def test_bad_size_or_mode(ramp_mp4: Path, kwargs: dict, words: list[str]) -> None:
    with pytest.raises(BadInput) as err:
        read_video(ramp_mp4, **kwargs)
    assert all(word in str(err.value) for word in words)


# --- GIF and image-directory input ----------------------------------------------------------


def test_read_gif(tmp_path: Path) -> None:
    path = make_gif(tmp_path / "in.gif", ramp_frames(10, 40, 24), duration_ms=50)
    clip = read_video(path, FrameSampling(5), width=40, height=24)
    assert clip.indices == (0, 2, 4, 7, 9)
    assert (clip.fps, clip.source_frames, clip.source_size) == (20.0, 10, (40, 24))
    assert_rgb_uint8(clip.frames, (5, 24, 40, 3))
    assert_ramp(clip, tol=2)


def test_read_frame_directory(tmp_path: Path) -> None:
    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    for i in range(12):  # unpadded names: frame_10 must come after frame_9
        rgba = np.zeros((51, 91, 4), np.uint8)
        rgba[..., :3], rgba[..., 3] = ramp_colour(i), 255
        Image.fromarray(rgba, "RGBA").save(frames_dir / f"frame_{i}.png")
    (frames_dir / "notes.txt").write_text("not a frame")
    clip = read_video(frames_dir, FrameSampling(4), width=48, height=24)
    assert clip.indices == (0, 4, 7, 11)
    assert (clip.fps, clip.source_frames, clip.source_size) == (8.0, 12, (91, 51))
    assert_rgb_uint8(clip.frames, (4, 24, 48, 3))
    assert_ramp(clip, tol=1)


def test_read_grayscale_jpeg_directory(tmp_path: Path) -> None:
    for i in range(3):
        Image.new("L", (32, 16), 50 + 50 * i).save(tmp_path / f"{i:03d}.jpg")
    clip = read_video(tmp_path, FrameSampling(3), width=32, height=16)
    assert_rgb_uint8(clip.frames, (3, 16, 32, 3))
    assert [int(round(flat_mean(f)[0])) for f in clip.frames] == [50, 100, 150]


# --- bad inputs -----------------------------------------------------------------------------


def make_audio_m4a(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def make_wav(path: Path) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"\0\0" * 8000)
    return path


def test_bad_files(tmp_path: Path) -> None:
    good = make_mp4(tmp_path / "good.mp4", ramp_frames())
    # faststart puts the index first, so half a file still opens and fails while decoding.
    noise = np.random.default_rng(0).integers(0, 255, (40, 64, 96, 3), np.uint8)
    faststart = make_mp4(tmp_path / "fs.mp4", noise, movflags="faststart")
    (tmp_path / "notes.mp4").write_text("this is not a video\n")
    (tmp_path / "head.mp4").write_bytes(good.read_bytes()[:300])
    (tmp_path / "half.mp4").write_bytes(faststart.read_bytes()[: faststart.stat().st_size // 2])
    cases = {
        "missing.mp4": "not found",
        "notes.mp4": "not a readable video",
        "head.mp4": "not a readable video",
        "half.mp4": "truncated or corrupt",
        make_audio_m4a(tmp_path / "sound.m4a").name: "no video stream (found: audio stream)",
        make_wav(tmp_path / "sound.wav").name: "no video stream",
    }
    for name, words in cases.items():
        with pytest.raises(BadInput) as err:
            read_video(tmp_path / name, FrameSampling(8), width=64, height=64)
        assert type(err.value) is BadInput
        assert name in str(err.value) and words in str(err.value), str(err.value)


def test_empty_frame_directory(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="no image frames"):
        read_video(tmp_path)


# --- writing --------------------------------------------------------------------------------


def test_write_mp4_round_trip(tmp_path: Path) -> None:
    out = write_video(tmp_path / "nested" / "dir" / "out.mp4", ramp_frames(20), fps=12)
    assert out == tmp_path / "nested" / "dir" / "out.mp4"
    assert [p.name for p in out.parent.iterdir()] == ["out.mp4"]
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.format.name) == ("h264", "yuv420p")
        assert stream.average_rate == Fraction(12)
    clip = read_video(out, FrameSampling(20), width=96, height=64)
    assert clip.indices == tuple(range(20)) and clip.fps == pytest.approx(12.0)
    assert_ramp(clip)


def test_write_mp4_ntsc_rate(tmp_path: Path) -> None:
    out = write_video(tmp_path / "ntsc.mp4", ramp_frames(4), fps=30000 / 1001)
    with av.open(str(out)) as container:
        assert container.streams.video[0].average_rate == Fraction(30000, 1001)


def test_write_gif_round_trip(tmp_path: Path) -> None:
    frames = ramp_frames(20)
    out = write_video(tmp_path / "out.gif", frames, fps=10)
    assert [p.name for p in tmp_path.iterdir()] == ["out.gif"]
    with Image.open(out) as gif:
        assert (gif.n_frames, gif.size, gif.info["loop"], gif.info["duration"]) == (20, (96, 64), 0, 100)
        for i in (0, 7, 19):
            gif.seek(i)
            assert np.abs(np.asarray(gif.convert("RGB"), dtype=int) - frames[i]).max() <= 2
    assert_ramp(read_video(out, FrameSampling(20), width=96, height=64), tol=2)


@pytest.mark.parametrize(
    ("name", "frames", "words"),
    [
        ("out.avi", ramp_frames(2), "'.avi'"),
        ("out", ramp_frames(2), "(none)"),
        ("odd.mp4", ramp_frames(2, width=91, height=51), "91x51"),
        ("float.mp4", ramp_frames(2).astype(np.float32), "float32"),
        ("gray.gif", np.zeros((2, 8, 8), np.uint8), "(2, 8, 8)"),
    ],
)
def test_write_rejects(tmp_path: Path, name: str, frames: np.ndarray, words: str) -> None:
    with pytest.raises(BadInput) as err:
        write_video(tmp_path / name, frames)
    assert words in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out.mp4"
    out.write_bytes(b"previous take")
    calls = []

    def crash_on_third(frame: np.ndarray, format: str) -> av.VideoFrame:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # e.g. Ctrl-C mid-encode
        return real(frame, format=format)

    real = av.VideoFrame.from_ndarray
    monkeypatch.setattr(av.VideoFrame, "from_ndarray", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        write_video(out, ramp_frames(6))
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]
    assert out.read_bytes() == b"previous take"


# --- real clips -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["man-skiing.mp4", "rabbit-watermelon.mp4"])
def test_real_clip(name: str, tmp_path: Path) -> None:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    clip = read_video(path)
    assert_rgb_uint8(clip.frames, (8, 512, 512, 3))
    assert clip.indices[0] == 0 and clip.indices[-1] == clip.source_frames - 1
    assert all(a < b for a, b in zip(clip.indices, clip.indices[1:]))
    assert clip.fps > 0 and min(clip.source_size) > 0
    assert np.abs(np.diff(clip.frames.astype(np.int16), axis=0)).mean() > 1  # the clip moves
    out = write_video(tmp_path / name, clip.frames, fps=clip.fps)
    back = read_video(out)
    assert back.source_frames == 8 and back.indices == tuple(range(8))
    assert np.abs(back.frames.astype(int) - clip.frames).mean() < 4
