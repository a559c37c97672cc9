"""Training videos: the toy world, or a folder of captioned videos. Both implement ``training.VideoSource``:
``clip(index, frames)`` -> (uint8 ``[frames, H, W, 3]`` at the preset's fps, caption), the same for the same index.

A folder holds video files (any of :data:`tempo_cli.video.VIDEO_SUFFIXES`; hidden files and subfolders are skipped)
and their captions: ``name.txt`` beside ``name.mp4``, or a line ``{"file": "name.mp4", "caption": "..."}`` in
``captions.jsonl`` in the folder. Where both give one, the ``.txt`` wins. Clip ``index`` is a window of the video
``index % count`` (videos sorted by file name) at an offset drawn from ``index``; a video shorter than the window
holds its last frame to fill it. Videos at another frame rate are resampled to the preset's by nearest frame;
each is scaled to cover the preset's frame size and centre-cropped.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tempo_cli.errors import ConfigError
from tempo_cli.toyworld import FPS, SHAPES, check_weights, render, sample_scene
from tempo_cli.video import VIDEO_SUFFIXES, read_video, resize_frames

if TYPE_CHECKING:
    from tempo_cli.config import Preset
    from tempo_cli.training import VideoSource

CAPTIONS_FILE = "captions.jsonl"
TOYWORLD = "toyworld"


def _stable_int(*values: int) -> int:
    """A 64-bit integer drawn from ``values`` (whole numbers >= 0): the same on every machine and run."""
    return int(np.random.SeedSequence(values).generate_state(1, np.uint64)[0])


def _check_request(index: int, frames: int) -> None:
    if int(index) != index or index < 0 or int(frames) != frames or frames < 1:
        raise ConfigError(f"a clip needs a whole index >= 0 and frames >= 1, got index {index!r}, frames {frames!r}")


class ToyWorldSource:
    """Clip ``index`` is ``sample_scene`` of a seed drawn from (``seed``, ``index``), rendered from frame 0 (so
    the captioned direction is what the clip shows first) at ``fps`` and ``size`` x ``size``, with its caption."""

    def __init__(self, seed: int = 0, size: int = 64, max_objects: int = 2, fps: float = FPS,
                 weights: Mapping[str, float] | None = None):
        if int(seed) != seed or seed < 0:
            raise ConfigError(f"the toy world's seed must be a whole number >= 0, got {seed!r}")
        self.seed, self.size, self.max_objects, self.fps = int(seed), size, max_objects, fps
        self.weights = check_weights(weights) if weights else None

    @property
    def identity(self) -> str:
        weighed = f" weights={sorted(self.weights.items())}" if self.weights else ""
        return f"toyworld seed={self.seed} size={self.size} max_objects={self.max_objects} fps={self.fps}{weighed}"

    def _scene(self, index: int, frames: int):
        _check_request(index, frames)
        return sample_scene(_stable_int(self.seed, int(index)), self.max_objects, self.weights)

    def clip(self, index: int, frames: int) -> tuple[np.ndarray, str]:
        scene = self._scene(index, frames)
        return render(scene, int(frames), self.fps, self.size), scene.caption

    def swapped_clip(self, index: int, frames: int) -> np.ndarray:
        """Clip ``index`` with every object's shape swapped for another, the rest of the scene as it is: what
        ``train.shape_contrast`` pushes the flow target away from. Each object takes the next shape (ball ->
        square -> triangle -> ball), or the one after where that one would leave the frame (shapes reach out
        differently from their centre); one that no other shape fits keeps its own."""
        scene = self._scene(index, frames)
        objects = []
        for spec in scene.objects:
            here = SHAPES.index(spec.shape)
            for shape in (SHAPES[(here + k) % len(SHAPES)] for k in range(1, len(SHAPES) + 1)):
                try:
                    objects.append(dataclasses.replace(spec, shape=shape))
                    break
                except ConfigError:  # this shape would leave the frame on the object's path
                    continue
        return render(dataclasses.replace(scene, objects=tuple(objects)), int(frames), self.fps, self.size)


class FolderSource:
    """The captioned videos of ``folder`` (see the module docstring), as clips ``height`` x ``width`` at ``fps``.

    Captions are found when the source is made; videos are decoded when a clip first needs them, and the last
    ``cache_videos`` of them are kept in memory, resampled and resized.
    """

    def __init__(self, folder: str | Path, height: int, width: int, fps: float = 24, cache_videos: int = 8):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ConfigError(f"cannot read training videos from {self.folder}: "
                              f"{'not a folder' if self.folder.exists() else 'no such folder'}",
                              hint="name a folder of videos with captions, or use 'toyworld'")
        if height < 1 or width < 1 or not fps > 0 or cache_videos < 1:
            raise ConfigError(f"FolderSource needs a positive size, fps and cache, got {height}x{width} at {fps} "
                              f"fps, cache_videos={cache_videos}")
        self.height, self.width, self.fps, self.cache_videos = height, width, fps, cache_videos
        self.videos = sorted(p for p in self.folder.iterdir()
                             if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in VIDEO_SUFFIXES)
        if not self.videos:
            raise ConfigError(f"no videos in {self.folder}",
                              hint=f"put video files ({', '.join(VIDEO_SUFFIXES)}) with captions in it")
        listed = _read_captions_file(self.folder / CAPTIONS_FILE)
        self.captions = [_caption(video, listed) for video in self.videos]
        self._cache: OrderedDict[Path, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self.videos)

    @property
    def identity(self) -> str:
        return f"folder {self.folder.resolve()} ({len(self.videos)} videos) {self.height}x{self.width} at {self.fps} fps"

    def clip(self, index: int, frames: int) -> tuple[np.ndarray, str]:
        _check_request(index, frames)
        number = int(index) % len(self.videos)
        video = self._frames(self.videos[number])  # [N, height, width, 3] at self.fps
        spare = len(video) - int(frames)
        if spare < 0:  # too short: hold the last frame
            return np.concatenate([video, np.repeat(video[-1:], -spare, axis=0)]), self.captions[number]
        offset = _stable_int(int(index)) % (spare + 1)
        return video[offset:offset + int(frames)], self.captions[number]

    def _frames(self, path: Path) -> np.ndarray:
        """The video at ``path`` resampled to ``fps`` and resized: uint8 ``[N, height, width, 3]``, cached."""
        if path in self._cache:
            self._cache.move_to_end(path)
            return self._cache[path]
        frames, rate = read_video(path)
        frames = resize_frames(frames[resample_indices(len(frames), rate, self.fps)], self.height, self.width)
        self._cache[path] = frames
        while len(self._cache) > self.cache_videos:
            self._cache.popitem(last=False)
        return frames


def resample_indices(count: int, fps: float, target_fps: float) -> np.ndarray:
    """Which of ``count`` frames at ``fps`` to show at ``target_fps``: for each target time ``k / target_fps``
    within the video (``k / target_fps < count / fps``), the frame nearest to it, the earlier one on a tie (so 12 to
    24 fps shows each frame twice). int ``[ceil(count * target_fps / fps)]``; ``arange(count)`` at equal rates."""
    if fps == target_fps:
        return np.arange(count)
    ratio = fps / target_fps  # source frames per target frame
    length = max(1, math.ceil(count / ratio - 1e-9))
    nearest = np.ceil(np.arange(length) * ratio - 0.5 - 1e-9).astype(np.int64)
    return np.clip(nearest, 0, count - 1)


def _read_captions_file(path: Path) -> dict[str, str]:
    """``captions.jsonl``: file name -> caption; {} when there is none."""
    if not path.is_file():
        return {}
    captions: dict[str, str] = {}
    fix = 'write one JSON object per line: {"file": "name.mp4", "caption": "..."}'
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}, line {number}: not JSON ({exc.msg})", hint=fix) from None
        if not (isinstance(entry, dict) and all(isinstance(entry.get(key), str) for key in ("file", "caption"))):
            raise ConfigError(f"{path}, line {number}: needs a string \"file\" and a string \"caption\"", hint=fix)
        if entry["file"] in captions:
            raise ConfigError(f"{path}, line {number}: a second caption for {entry['file']!r}", hint="keep one")
        captions[entry["file"]] = entry["caption"]
    return captions


def _caption(video: Path, listed: dict[str, str]) -> str:
    """The caption of ``video``: its ``.txt`` beside it, else its line in ``captions.jsonl``; whitespace collapsed."""
    beside = video.with_suffix(".txt")
    if beside.is_file():
        text, where = beside.read_text(encoding="utf-8"), str(beside)
    elif video.name in listed:
        text, where = listed[video.name], f"{video.parent / CAPTIONS_FILE} for {video.name}"
    else:
        raise ConfigError(f"the video {video} has no caption",
                          hint=f"write it in {beside.name} beside the video, or add "
                               f'{{"file": "{video.name}", "caption": "..."}} to {CAPTIONS_FILE} in the folder')
    caption = " ".join(text.split())
    if not caption:
        raise ConfigError(f"the caption in {where} is empty", hint="describe the video in it")
    return caption


def open_source(spec: str, preset: Preset) -> VideoSource:
    """``--data``: ``toyworld`` or ``toyworld:SEED`` (the toy world at the preset's square frame size, its scenes
    drawn with the preset's ``train.world_weights``), else a folder of captioned videos at the preset's frame size
    and fps. A folder named ``toyworld`` is ``./toyworld``."""
    video = preset.video
    name, _, seed = spec.partition(":")
    if name == TOYWORLD:
        if seed and not seed.isdigit():
            raise ConfigError(f"--data {spec!r}: the toy world's seed must be a whole number >= 0",
                              hint="write toyworld or toyworld:SEED, e.g. toyworld:1")
        if video.height != video.width:
            raise ConfigError(f"--data {spec!r}: the toy world is square, but preset {preset.name} makes "
                              f"{video.width}x{video.height} videos", hint="use a preset with square videos")
        weights = preset.train.world_weights if preset.train else None
        return ToyWorldSource(int(seed or 0), size=video.height, fps=video.fps, weights=weights)
    return FolderSource(spec, video.height, video.width, video.fps)
