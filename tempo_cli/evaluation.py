"""Judging generated toy-world videos: does a video show what its prompt says, and does a long one stay the same
world from its first second to its last?

Objects are found as the pixels that differ from the background (:func:`tempo_cli.toyworld.find_objects`), so a
generated video is measured exactly like a rendered one, and a rendered one scores what its ground truth says.
The *main object* of a frame is its largest object. Limits come from the world itself: no object of the world
moves faster than :func:`max_speed` of its motion, so a larger jump between two frames is an artefact.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from tempo_cli.toyworld import (BACKGROUNDS, COLOURS, CROSSING_SECONDS, MOTIONS, RADIUS_RANGE, SHAPES, SIZE_RANGE,
                                WORLD, DetectedObject, classify_shape, find_objects, motion_direction, nearest_colour,
                                parse_caption)

JITTER = 2.0  # px: how far the found centre of a drawn (or generated) object may wander between frames at rest


def max_speed(motion: str, size: int = WORLD) -> float:
    """The fastest an object with ``motion`` moves in the world, px/s of a ``size`` x ``size`` frame."""
    if motion == "standing still":
        return 0.0
    if motion == "circling":
        return 2 * math.pi * RADIUS_RANGE[1] / CROSSING_SECONDS[0] * size / WORLD
    return (WORLD - SIZE_RANGE[0]) / CROSSING_SECONDS[0] * size / WORLD


def prompt_set(count: int = 24) -> list[str]:
    """``count`` single-object prompts that go through the vocabulary together: prompt ``i`` takes colour
    ``i % 8``, shape ``i % 3``, motion ``i % 7`` and background ``(i // 2) % 4``, so 24 prompts name every colour
    three times, every shape eight times and every motion three or four times."""
    colours, backgrounds = list(COLOURS), list(BACKGROUNDS)
    return [f"a {colours[i % len(colours)]} {SHAPES[i % len(SHAPES)]} {MOTIONS[i % len(MOTIONS)]} on a "
            f"{backgrounds[(i // 2) % len(backgrounds)]} background" for i in range(count)]


@dataclass(frozen=True)
class Track:
    """Per frame of a video: its objects (largest first) on the background ``background`` (RGB)."""

    background: tuple[int, int, int]
    objects: list[list[DetectedObject]]

    @property
    def main(self) -> list[DetectedObject | None]:
        return [found[0] if found else None for found in self.objects]

    @property
    def counts(self) -> list[int]:
        return [len(found) for found in self.objects]


def track(frames: np.ndarray, background: str | Sequence[int]) -> Track:
    """The objects of every frame of uint8 ``[T, H, W, 3]`` on ``background`` (a world background's name or RGB).

    Objects smaller than a fifth of the world's smallest object are specks, not objects."""
    rgb = tuple(BACKGROUNDS[background]) if isinstance(background, str) else tuple(int(v) for v in background)
    scale = frames.shape[1] / WORLD
    min_area = max(4, int((SIZE_RANGE[0] * scale) ** 2 * math.pi / 4 / 5))
    return Track(rgb, [find_objects(frame, rgb, min_area=min_area) for frame in frames])


@dataclass(frozen=True)
class Adherence:
    """How well a video follows its prompt, judged on its main object."""

    prompt: str
    colour: str  # prompted, of the first object
    shape: str
    motion: str
    frames: int
    found: float  # share of frames with an object
    colour_share: float  # share of frames whose main object has the prompted colour (nearest named colour)
    shape_share: float  # share of frames whose main object has the prompted shape
    shown_motion: str  # the motion the main object's track shows
    jump_share: float  # share of neighbouring frames (both with an object) between which it moves faster than
    # anything in the world can: jumps to another place, the sign of frames generated without regard to each other

    @property
    def shape_ok(self) -> bool:
        """The prompted shape is what most frames show."""
        return self.shape_share > 0.5

    @property
    def motion_ok(self) -> bool:
        return self.shown_motion == self.motion


def adherence(frames: np.ndarray, prompt: str, fps: float = 6.0) -> Adherence:
    """Judge uint8 frames ``[T, H, W, 3]`` at ``fps`` (a blueprint's, by default) against a toy-world prompt (its
    first object and its background)."""
    things, background = parse_caption(prompt)
    colour, shape, motion = things[0]
    main = track(frames, background).main
    found = [m for m in main if m is not None]
    count = len(main)
    colour_share = sum(nearest_colour(m.mean_rgb) == colour for m in found) / count
    shape_share = sum(classify_shape(m) == shape for m in found) / count
    shown = motion_direction([m.centre for m in found]) if len(found) >= 2 else "standing still"
    limit = _move_limit(MOTIONS, fps, frames.shape[1])
    moves = [math.dist(a.centre, b.centre) for a, b in zip(main, main[1:]) if a is not None and b is not None]
    jump_share = sum(move > limit for move in moves) / len(moves) if moves else 0.0
    return Adherence(prompt, colour, shape, motion, count, len(found) / count, colour_share, shape_share, shown,
                     jump_share)


def adherence_summary(judged: Sequence[Adherence]) -> dict[str, float]:
    """The figures of many prompts' adherence: mean share of frames with the prompted colour ("colour"), the
    worst prompt's share ("worst colour"), share of prompts whose shape most frames show ("shape"), share of
    the moving prompts that move the prompted way ("motion"; "moving" counts them), and mean share of
    neighbouring frames the main object jumps between ("jumps")."""
    moving = [j for j in judged if j.motion != "standing still"]
    return {"colour": float(np.mean([j.colour_share for j in judged])),
            "worst colour": min(j.colour_share for j in judged),
            "shape": float(np.mean([j.shape_ok for j in judged])),
            "motion": float(np.mean([j.motion_ok for j in moving])) if moving else float("nan"),
            "moving": len(moving), "jumps": float(np.mean([j.jump_share for j in judged]))}


@dataclass(frozen=True)
class Consistency:
    """How a long video of one prompt holds together over time."""

    frames: int
    fps: float
    expected_objects: int
    count_share: float  # share of frames showing exactly the prompted number of objects
    missing: int  # frames with no object at all
    colour_drift: float  # RGB distance between the main object's mean colour in the first and the last second
    colour_names: tuple[str, str]  # its nearest named colour in the first and the last second
    size_drift: float  # px between its mean size in the first and the last second
    max_jump: float  # the largest move of the main object's centre between neighbouring frames, px
    jump_limit: float  # the largest move the world allows between neighbouring frames, px


def consistency(frames: np.ndarray, fps: float, prompt: str) -> Consistency:
    """Judge a long video ``[T, H, W, 3]`` at ``fps`` of a toy-world prompt from its first second to its last."""
    things, background = parse_caption(prompt)
    found = track(frames, background)
    main = found.main
    second = max(1, round(fps))
    first, last = _present(main[:second]), _present(main[-second:])
    colour_a, colour_b = _mean_rgb(first), _mean_rgb(last)
    return Consistency(
        frames=len(frames), fps=fps, expected_objects=len(things),
        count_share=sum(c == len(things) for c in found.counts) / len(frames),
        missing=sum(m is None for m in main),
        colour_drift=float(np.linalg.norm(colour_a - colour_b)),
        colour_names=(nearest_colour(colour_a), nearest_colour(colour_b)),
        size_drift=abs(float(np.mean([m.size for m in first])) - float(np.mean([m.size for m in last]))),
        max_jump=max_jump(main),
        jump_limit=jump_limit(prompt, fps, frames.shape[1]))


def jump_limit(prompt: str, fps: float, size: int = WORLD) -> float:
    """The largest move, px, between neighbouring frames at ``fps`` of a ``size`` x ``size`` video of ``prompt``
    that the world allows (its fastest object's speed), plus the found centre's jitter."""
    return _move_limit([motion for _, _, motion in parse_caption(prompt)[0]], fps, size)


def _move_limit(motions: Sequence[str], fps: float, size: int) -> float:
    """The largest move, px, between neighbouring frames that the fastest of ``motions`` allows, plus jitter."""
    return max(max_speed(m) for m in motions) * size / WORLD / fps + JITTER


def max_jump(main: Sequence[DetectedObject | None], at: Sequence[int] | None = None) -> float:
    """The largest move of the main object's centre between frames ``i - 1`` and ``i`` (for every ``i``, or
    only those in ``at``), where both frames have one; 0 if none do."""
    indices = range(1, len(main)) if at is None else [i for i in at if 0 < i < len(main)]
    jumps = [math.dist(main[i - 1].centre, main[i].centre) for i in indices
             if main[i - 1] is not None and main[i] is not None]
    return max(jumps, default=0.0)


def majority_colour(main: Sequence[DetectedObject | None]) -> str | None:
    """The named colour most frames' main object has."""
    names = Counter(nearest_colour(m.mean_rgb) for m in main if m is not None)
    return names.most_common(1)[0][0] if names else None


def _present(main: Sequence[DetectedObject | None]) -> list[DetectedObject]:
    present = [m for m in main if m is not None]
    if not present:
        raise ValueError("no object in the frames judged")
    return present


def _mean_rgb(objects: Sequence[DetectedObject]) -> np.ndarray:
    return np.mean([m.mean_rgb for m in objects], axis=0)


