"""Video and image files in and out. Frames are uint8 numpy arrays ``[T, H, W, 3]``; the models' videos are float
tensors ``[3, T, H, W]`` in [-1, 1], converted by ``to_uint8_frames`` / ``from_uint8_frames``.

mp4 and webm are written through moviepy's ``FFMPEG_VideoWriter``, one frame written per frame given, so counts are
exact. moviepy's ``ImageSequenceClip(frames, fps).write_videofile`` is not: its duration is the float sum of n
durations of 1/fps (65 of 1/24 sum to 2.708333333333332 < 65/24), and ``iter_frames`` writes
``int(duration * fps)`` = 64 frames. gif goes straight to the same ffmpeg with a whole-clip palette filter. Every
written file is counted again before it replaces the target, and a mismatch is an error.
"""

from __future__ import annotations

import math
import os
import secrets
import subprocess
import tempfile
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from fractions import Fraction
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

import imageio_ffmpeg
import numpy as np
from PIL import Image, ImageDraw, ImageOps, ImageSequence
from PIL.PngImagePlugin import PngInfo

from tempo_cli.errors import ConfigError, TempoError, UsageError

if TYPE_CHECKING:
    import torch

    Frames = np.ndarray | torch.Tensor  # uint8 [T, H, W, 3], or float [3, T, H, W] in [-1, 1]

WRITE_SUFFIXES = (".mp4", ".webm", ".gif")
VIDEO_SUFFIXES = (*WRITE_SUFFIXES, ".mov", ".mkv", ".avi")
DEFAULT_QUALITY = 18  # the crf: x264 calls 18 visually lossless; lower is better, 0..51
_CODECS = {  # suffix -> (moviepy codec, extra ffmpeg options); "-crf quality" follows
    ".mp4": ("libx264", ["-movflags", "+faststart"]),
    ".webm": ("libvpx-vp9", ["-b:v", "0", "-row-mt", "1"]),
}
_ENCODERS = {  # suffix -> ffmpeg output options of the files written without moviepy
    # one palette for the whole clip; unlike PIL, ffmpeg keeps identical neighbouring frames, and it spreads the
    # centisecond rounding of 1000/fps ms over the frames so the total duration stays right
    ".gif": ["-filter_complex", "split[a][b];[a]palettegen=stats_mode=full[p];[b][p]paletteuse"],
}
_SHEET_GAP = 2  # pixels between and around the contact sheet's cells


def is_video(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a video file (by its suffix), rather than an image or a latent file."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """A video ``[3, T, H, W]`` in [-1, 1] (any float dtype, any device) -> uint8 frames ``[T, H, W, 3]``."""
    import torch

    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"expected a video tensor [3, T, H, W], got shape {tuple(video.shape)}")
    pixels = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(1, 2, 3, 0).contiguous().cpu().numpy()  # [T, H, W, 3]


def from_uint8_frames(frames: np.ndarray) -> torch.Tensor:
    """uint8 frames ``[T, H, W, 3]`` -> a float32 video ``[3, T, H, W]`` in [-1, 1] on the CPU."""
    import torch

    # converted in numpy: frames may be read-only (an image's pixels), which torch.from_numpy warns about
    frames = _as_uint8(frames).astype(np.float32)
    return torch.from_numpy(frames).permute(3, 0, 1, 2) / 127.5 - 1  # [3, T, H, W]


def write_video(
    frames: Frames, path: str | os.PathLike, fps: float, *, quality: int | None = None, force: bool = False,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``frames`` (uint8 ``[T, H, W, 3]`` or a tensor ``[3, T, H, W]`` in [-1, 1]) to ``path`` atomically.

    ``.mp4`` is H.264 yuv420p and ``.webm`` VP9, both at crf ``quality`` (default 18; lower is better) and both
    needing an even width and height; ``.gif`` plays each frame for about 1000/fps ms. ``metadata`` (e.g. title,
    comment) goes into the container's global tags, which ``read_metadata`` reads back; a gif has no place for it
    and drops it. Returns ``path``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WRITE_SUFFIXES:
        raise UsageError(
            f"cannot write video {path}: unknown suffix {path.suffix!r}", hint=f"use one of {', '.join(WRITE_SUFFIXES)}"
        )
    if not (math.isfinite(fps) and fps > 0):
        raise UsageError(f"--fps must be a positive number, got {fps}")
    crf = DEFAULT_QUALITY if quality is None else quality
    if not 0 <= crf <= 51:
        raise UsageError(f"--quality must be a crf from 0 to 51, got {crf}", hint="lower is better; 18 looks lossless")
    frames = _as_uint8(frames)
    count, height, width, _ = frames.shape
    if count == 0:
        raise UsageError(f"cannot write video {path}: there are no frames")
    if suffix != ".gif" and (height % 2 or width % 2):
        raise UsageError(
            f"cannot write video {path}: {suffix[1:]} needs an even width and height, got {width}x{height}",
            hint="resize the frames to even sizes, or write a .gif",
        )
    tags = [option for key, value in (metadata or {}).items() for option in ("-metadata", f"{key}={value}")]
    with _atomic(path, force) as tmp:
        if suffix in _CODECS:
            _encode_moviepy(frames, tmp, fps, crf, f"cannot write video {path}", tags)
        else:
            _encode(frames, tmp, fps, _ENCODERS[suffix], f"cannot write video {path}")
        written = count_frames(tmp)
        if written != count:
            raise TempoError(f"wrote {written} frames to {path} instead of {count}", hint="this is a bug in tempo")
    return path


def count_frames(path: str | os.PathLike) -> int:
    """The number of frames in a video file, by decoding it with ffmpeg."""
    path = _existing(path, "video")
    try:
        return imageio_ffmpeg.count_frames_and_secs(str(path))[0]
    except (OSError, RuntimeError) as exc:
        raise ConfigError(f"cannot read video {path}: {_ffmpeg_reason(exc)}") from exc


def read_video(
    path: str | os.PathLike, *, max_frames: int | None = None, last_seconds: float | None = None
) -> tuple[np.ndarray, float]:
    """Every frame of a video as uint8 ``[T, H, W, 3]``, and its frame rate.

    ``max_frames`` keeps the first frames only; ``last_seconds`` then keeps the trailing
    ``round(last_seconds * fps)`` of those (at least one). A GIF's rate is its mean frame time.
    """
    path = _existing(path, "video")
    if max_frames is not None and max_frames < 1:
        raise UsageError(f"max_frames must be at least 1, got {max_frames}")
    if last_seconds is not None and not last_seconds > 0:
        raise UsageError(f"last_seconds must be positive, got {last_seconds}")
    with _decoded(path) as (stream, fps):
        if not fps > 0:
            raise ConfigError(f"cannot read video {path}: it has no frame rate")
        keep = None if last_seconds is None else max(1, round(last_seconds * fps))
        try:
            frames = list(deque(islice(stream, max_frames), maxlen=keep))  # maxlen=None keeps them all
        except (OSError, RuntimeError) as exc:
            raise ConfigError(f"cannot read video {path}: {_ffmpeg_reason(exc)}") from exc
    if not frames:
        raise ConfigError(f"cannot read video {path}: it has no frames")
    return np.stack(frames), fps


def sample_video(
    path: str | os.PathLike, fps: float, size: tuple[int, int], *, max_frames: int | None = None
) -> tuple[np.ndarray, float]:
    """A video resampled to ``fps`` from its first frame: output frame ``j`` is the source frame nearest to time
    ``j / fps`` (the earlier on a tie, as ``datasets.resample_indices``), scaled to cover ``size = (height, width)``
    and centre-cropped. Returns uint8 ``[T, H, W, 3]`` (at most ``max_frames``) and the source's frame rate. Frames
    are decoded one at a time, so a long or large source is never held whole."""
    path = _existing(path, "video")
    if not fps > 0:
        raise UsageError(f"fps must be positive, got {fps:g}")
    out: list[np.ndarray] = []
    with _decoded(path) as (stream, rate):
        if not rate > 0:
            raise ConfigError(f"cannot read video {path}: it has no frame rate")
        try:
            for i, frame in enumerate(stream):
                # a higher fps than the source's repeats a source frame
                while (math.ceil(len(out) * rate / fps - 0.5 - 1e-9) == i
                       and (max_frames is None or len(out) < max_frames)):
                    out.append(np.asarray(_cover(Image.fromarray(frame), *size)))
                if max_frames is not None and len(out) >= max_frames:
                    break
        except (OSError, RuntimeError) as exc:
            raise ConfigError(f"cannot read video {path}: {_ffmpeg_reason(exc)}") from exc
    if not out:
        raise ConfigError(f"cannot read video {path}: it has no frames")
    return np.stack(out), rate


def read_image(path: str | os.PathLike, size: tuple[int, int] | None = None) -> np.ndarray:
    """An image as uint8 ``[H, W, 3]``; with ``size=(height, width)`` scaled to cover it and center-cropped."""
    path = _existing(path, "image")
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ConfigError(f"cannot read image {path}: {exc}") from exc
    if size is not None:
        image = _cover(image, *size)
    return np.asarray(image)


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Scale uint8 frames ``[T, H, W, 3]`` to cover ``height x width`` and center-crop: ``[T, height, width, 3]``."""
    frames = _as_uint8(frames)
    if frames.shape[1:3] == (height, width):
        return frames
    return np.stack([np.asarray(_cover(Image.fromarray(frame), height, width)) for frame in frames])


def contact_sheet(
    frames: Frames,
    path: str | os.PathLike,
    *,
    columns: int | None = None,
    max_frames: int = 64,
    cell_width: int = 256,
    label: bool = True,
    force: bool = False,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write a PNG grid of the frames (``max_frames`` evenly sampled when there are more), each labelled with its
    frame index and shrunk to at most ``cell_width`` pixels wide; ``columns`` defaults to a near-square grid.
    ``metadata`` becomes the PNG's text chunks (UTF-8), which ``read_metadata`` reads back."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise UsageError(f"cannot write contact sheet {path}: it must be a .png file")
    frames = _as_uint8(frames)
    count, height, width, _ = frames.shape
    if count == 0:
        raise UsageError(f"cannot write contact sheet {path}: there are no frames")
    picked = np.unique(np.linspace(0, count - 1, min(count, max(1, max_frames))).round().astype(int))
    columns = min(columns or math.ceil(math.sqrt(len(picked))), len(picked))
    rows = math.ceil(len(picked) / columns)
    scale = min(1.0, cell_width / width)
    cell = (max(1, round(width * scale)), max(1, round(height * scale)))
    step_x, step_y = cell[0] + _SHEET_GAP, cell[1] + _SHEET_GAP
    sheet = Image.new("RGB", (columns * step_x + _SHEET_GAP, rows * step_y + _SHEET_GAP), (16, 16, 16))
    draw = ImageDraw.Draw(sheet)
    for k, index in enumerate(picked):
        x, y = _SHEET_GAP + (k % columns) * step_x, _SHEET_GAP + (k // columns) * step_y
        sheet.paste(Image.fromarray(frames[index]).resize(cell, Image.Resampling.LANCZOS), (x, y))
        if label:
            box = draw.textbbox((x + 3, y + 2), str(index))
            draw.rectangle((box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1), fill=(0, 0, 0))
            draw.text((x + 3, y + 2), str(index), fill=(255, 255, 255))
    text = PngInfo()
    for key, value in (metadata or {}).items():
        text.add_itxt(key, value)
    with _atomic(path, force) as tmp:
        sheet.save(tmp, format="PNG", pnginfo=text)
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The global tags of a video (keys in lower case) or the text chunks of a PNG: what ``write_video`` and
    ``contact_sheet`` store as ``metadata``, besides what the container adds (an mp4's ``encoder``, ...)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path} does not exist")
    if path.suffix.lower() == ".png":
        try:
            with Image.open(path) as image:
                return dict(getattr(image, "text", {}))
        except OSError as exc:
            raise ConfigError(f"cannot read image {path}: {exc}") from exc
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-i", str(path),
               "-f", "ffmetadata", "-"]
    done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True)
    if done.returncode != 0:
        raise ConfigError(f"cannot read video {path}: {_ffmpeg_reason(done.stderr.decode(errors='replace'))}")
    return _ffmetadata(done.stdout.decode(errors="replace"))


def _ffmetadata(text: str) -> dict[str, str]:
    """The global ``key=value`` entries of ffmpeg's metadata format: ``\\`` escapes ``=``, ``;``, ``#``, ``\\``
    and a newline; lines starting with ``;`` or ``#`` are comments; the first ``[SECTION]`` ends the global ones."""
    tags: dict[str, str] = {}
    entry: list[str] = []
    key: str | None = None
    chars = iter(text)
    for char in chars:
        if char == "\\":
            entry.append(next(chars, ""))
            continue
        if char == "\n":
            if key is not None:
                tags[key.lower()] = "".join(entry)
            entry, key = [], None
            continue
        if not entry and key is None and char in ";#[":
            if char == "[":
                break
            for skipped in chars:  # a comment runs to the end of its line
                if skipped == "\n":
                    break
            continue
        if char == "=" and key is None:
            key, entry = "".join(entry), []
        else:
            entry.append(char)
    if key is not None:
        tags[key.lower()] = "".join(entry)
    return tags


def _as_uint8(frames: Frames) -> np.ndarray:
    """uint8 ``[T, H, W, 3]`` as it is, or a float tensor ``[3, T, H, W]`` in [-1, 1] converted."""
    if not isinstance(frames, np.ndarray):
        return to_uint8_frames(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [T, H, W, 3], got {frames.dtype} {frames.shape}")
    return frames


def _cover(image: Image.Image, height: int, width: int) -> Image.Image:
    """Scale ``image`` to cover ``height x width`` keeping its aspect, then crop the center."""
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {height}x{width}")
    return ImageOps.fit(image, (width, height), Image.Resampling.LANCZOS)


@contextmanager
def _decoded(path: Path) -> Iterator[tuple[Iterator[np.ndarray], float]]:
    """Yield the frames (uint8 ``[H, W, 3]``, decoded lazily) and the frame rate; ffmpeg stops on exit."""
    if path.suffix.lower() == ".gif":
        yield _gif_frames(path)
        return
    try:
        reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24", output_params=["-map", "0:v:0"])
        meta = next(reader)
    except (OSError, RuntimeError) as exc:
        raise ConfigError(f"cannot read video {path}: {_ffmpeg_reason(exc)}") from exc
    width, height = meta["size"]
    try:
        yield (np.frombuffer(raw, np.uint8).reshape(height, width, 3) for raw in reader), float(meta["fps"])
    finally:
        reader.close()


def _gif_frames(path: Path) -> tuple[Iterator[np.ndarray], float]:
    """A GIF's frames (composited by PIL), and its rate from the mean frame time (GIFs count centiseconds)."""
    try:
        with Image.open(path) as image:
            frames, total_ms = [], 0
            for frame in ImageSequence.Iterator(image):
                frames.append(np.asarray(frame.convert("RGB")))
                total_ms += frame.info.get("duration", 0)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read video {path}: {exc}") from exc
    fps = round(len(frames) * 1000 / total_ms, 3) if total_ms else 10.0  # browsers play untimed GIFs at ~10 fps
    return iter(frames), fps


def _encode_moviepy(frames: np.ndarray, tmp: Path, fps: float, crf: int, failure: str, options: list[str]) -> None:
    """Write uint8 frames ``[T, H, W, 3]`` with moviepy's ffmpeg writer (yuv420p, crf ``crf``, then ``options``)."""
    from moviepy.video.io.ffmpeg_writer import FFMPEG_VideoWriter

    codec, codec_options = _CODECS[tmp.suffix.lower()]
    _, height, width, _ = frames.shape
    with tempfile.TemporaryFile() as log:  # ffmpeg's messages, for a one-line reason on failure
        status = 0
        try:
            writer = FFMPEG_VideoWriter(str(tmp), (width, height), fps, codec=codec, preset="medium", logfile=log,
                                        pixel_format="yuv420p",
                                        ffmpeg_params=[*codec_options, "-crf", str(crf), *options])
            process = writer.proc  # close() forgets it
            try:
                for frame in frames:
                    writer.write_frame(np.ascontiguousarray(frame))
            finally:
                writer.close()
                status = process.wait()
        except OSError as exc:
            status = status or 1
            log.write(f"\n{exc}".encode())
        if status != 0 or not tmp.is_file():
            log.seek(0)
            raise TempoError(f"{failure}: {_ffmpeg_reason(log.read().decode(errors='replace'))}")


def _encode(frames: np.ndarray, tmp: Path, fps: float, output_options: list[str], failure: str) -> None:
    """Pipe uint8 frames ``[T, H, W, 3]`` into ffmpeg, one raw frame each, writing ``tmp`` (format by suffix).

    Run here rather than through imageio-ffmpeg's ``write_frames``, which prints ffmpeg's errors to the terminal
    and does not check its exit status: here a failure is one line, "``failure``: <ffmpeg's reason>".
    """
    _, height, width, _ = frames.shape
    rate = str(Fraction(fps).limit_denominator(1_000_000))  # 24000/1001 stays exact
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", rate, "-i", "-",
        "-an", *output_options, str(tmp),
    ]  # fmt: skip
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: ffmpeg can never block on a full stderr
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log)
        try:
            for frame in frames:
                process.stdin.write(np.ascontiguousarray(frame).tobytes())
        except BrokenPipeError:
            pass  # ffmpeg stopped early; its exit status and log say why
        finally:
            try:
                process.stdin.close()
            except BrokenPipeError:
                pass
            status = process.wait()
        if status != 0:
            log.seek(0)
            raise TempoError(f"{failure}: {_ffmpeg_reason(log.read().decode(errors='replace'))}")


def _existing(path: str | os.PathLike, kind: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"cannot read {kind} {path}: {'not a file' if path.exists() else 'no such file'}")
    return path


def _ffmpeg_reason(log: Exception | str) -> str:
    """The last line ffmpeg printed, without its prefixes: 'Invalid data found when processing input'."""
    lines = [line.strip() for line in str(log).splitlines() if line.strip()]
    return lines[-1].rsplit(": ", 1)[-1] if lines else "ffmpeg failed"


@contextmanager
def _atomic(path: Path, force: bool) -> Iterator[Path]:
    """Yield a hidden temporary path beside ``path`` with the same suffix; it replaces ``path`` on success and is
    removed on failure. Created by the writer itself, so it gets the usual permissions (mkstemp's are 0600)."""
    if path.is_dir():
        raise UsageError(f"cannot write {path}: it is a folder", hint="name a file inside it")
    if path.exists() and not force:
        raise UsageError(f"{path} already exists", hint="pass --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
