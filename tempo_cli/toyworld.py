"""A toy world to train and judge small text-to-video models: 64x64 RGB videos at 24 fps of one or two solid objects
on a plain background, procedural and deterministic from a seed, captioned from the same parameters, with the ground
truth (per frame: each object's colour, shape, centre and size) exposed for evaluation.

Coordinates are pixels of the 64x64 world, x to the right and y down; pixel column j covers [j, j + 1), so its centre
is at j + 0.5. ``render(..., size=s)`` draws the same world at s x s. Speeds are pixels per second along the path, so
no frame-to-frame jump at ``fps`` exceeds ``speed / fps``.

Motions: "moving left/right/up/down" go at constant speed that way and bounce off the frame edges, so after a bounce
they move the other way while the caption keeps the initial direction (sampled scenes start at least a third of a
crossing away from the wall ahead, so the captioned direction is what the first frames show); "bouncing" moves
diagonally and bounces off all four edges; "circling" goes clockwise (on screen) round a circle centred on ``start``;
"standing still" stays at ``start``. Objects are drawn in order: where they overlap the later one covers the earlier,
and the ground truth still lists both.

The evaluation helpers find objects as the pixels that differ from the background and name their colour, shape and
motion, so that generated videos can be checked against their prompts and against this ground truth.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tempo_cli.errors import ConfigError

COLOURS = {
    "red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 230), "yellow": (235, 220, 50),
    "white": (240, 240, 240), "purple": (160, 60, 200), "orange": (245, 140, 30), "cyan": (40, 210, 220),
}
SHAPES = ("ball", "square", "triangle")
SHAPE_CYCLE = {shape: SHAPES[(i + 1) % len(SHAPES)] for i, shape in enumerate(SHAPES)}  # ball -> square -> ...
MOTIONS = ("moving left", "moving right", "moving up", "moving down", "bouncing", "circling", "standing still")
BACKGROUNDS = {"black": (0, 0, 0), "gray": (90, 90, 90), "dark blue": (15, 20, 70), "dark green": (15, 55, 25)}
FPS = 24
WORLD = 64  # the world's side in pixels
SIZE_RANGE = (10.0, 16.0)  # sampled object sizes, px
CROSSING_SECONDS = (2.0, 4.0)  # sampled time to cross the frame; also the period of "circling"
RADIUS_RANGE = (12.0, 20.0)  # sampled radius of "circling", px
TRIANGLE_TAPER = 0.65  # see classify_shape: rendered triangles 0.17-0.29, balls and squares 0.82-1.26
SQUARE_DIAGONAL = 1.16  # rendered squares sqrt 2, balls 1.00-1.11; rounded by the toy VAE: 1.10-1.37, 1.01-1.18
_DIRECTIONS = {"moving left": (-1, 0), "moving right": (1, 0), "moving up": (0, -1), "moving down": (0, 1)}
_DIAGONAL = (math.radians(25), math.radians(65))  # "bouncing" headings, measured from an axis within a quadrant


def _check_name(field: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"unknown {field} {value!r}", hint=f"use one of: {', '.join(allowed)}")


@dataclass(frozen=True)
class ObjectSpec:
    """One object. ``size`` is the ball's diameter, the square's side, the triangle's base and height (px); a
    triangle points up and its centre is its centroid, a third of its height above the base. ``speed`` is px/s along
    the path; ``angle`` (radians, y down) is the heading of "bouncing" and the start angle of "circling", unused
    otherwise; ``radius`` is the circle of "circling", unused otherwise. ``start`` is the centre at time 0, except
    for "circling", where it is the circle's centre."""

    colour: str
    shape: str
    motion: str
    size: float = 12.0
    start: tuple[float, float] = (32.0, 32.0)
    speed: float = 17.0
    angle: float = math.pi / 4
    radius: float = 16.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", tuple(float(v) for v in self.start))
        _check_name("colour", self.colour, tuple(COLOURS))
        _check_name("shape", self.shape, SHAPES)
        _check_name("motion", self.motion, MOTIONS)
        if not 0 < self.size <= WORLD / 2:
            raise ConfigError(f"ObjectSpec.size must be in (0, {WORLD // 2}] px, got {self.size!r}")
        if not self.speed >= 0:
            raise ConfigError(f"ObjectSpec.speed must be >= 0 px/s, got {self.speed!r}")
        if self.motion == "circling":
            x_lo, x_hi, y_lo, y_hi = _bounds(self.shape, self.size)
            (x, y), r = self.start, self.radius
            if not (r > 0 and x_lo <= x - r and x + r <= x_hi and y_lo <= y - r and y + r <= y_hi):
                raise ConfigError(f"a circling {self.shape} of size {self.size} round {self.start} with radius "
                                  f"{self.radius} leaves the {WORLD}x{WORLD} frame",
                                  hint="move its start or shrink its radius")


@dataclass(frozen=True)
class SceneSpec:
    """A background and the objects on it, drawn in order."""

    background: str
    objects: tuple[ObjectSpec, ...]

    def __post_init__(self) -> None:
        _check_name("background", self.background, tuple(BACKGROUNDS))
        object.__setattr__(self, "objects", tuple(self.objects))
        if not self.objects:
            raise ConfigError("a SceneSpec needs at least one object")

    @property
    def caption(self) -> str:
        """``a {colour} {shape} {motion}`` per object, joined by " and ", then ``on a {background} background``."""
        things = " and ".join(f"a {o.colour} {o.shape} {o.motion}" for o in self.objects)
        return f"{things} on a {self.background} background"


@dataclass(frozen=True)
class ObjectState:
    """The ground truth of one object in one frame: ``centre`` (x, y) and ``size`` in pixels of the rendered frame."""

    colour: str
    shape: str
    centre: tuple[float, float]
    size: float


@dataclass(frozen=True)
class DetectedObject:
    """A connected set of pixels that differ from the background. ``centre`` is the mean pixel centre (x, y);
    ``bbox`` is (x0, y0, x1, y1), end exclusive; ``fill_ratio`` is ``area`` over the bbox's area. Two outlines that
    survive blur (see :func:`classify_shape`): ``taper`` is the mean width of the top third of its rows over that of
    the bottom third (an upright triangle's ~0.2, a ball's and a square's 1); ``diagonal`` is its mean extent along
    the two diagonals over its mean extent along the axes (a square's sqrt 2, a ball's ~1.06)."""

    centre: tuple[float, float]
    area: int
    mean_rgb: tuple[float, float, float]
    bbox: tuple[int, int, int, int]
    taper: float = 1.0
    diagonal: float = 1.0

    @property
    def fill_ratio(self) -> float:
        x0, y0, x1, y1 = self.bbox
        return self.area / ((x1 - x0) * (y1 - y0))

    @property
    def size(self) -> int:
        """The longer side of the bbox: an estimate of the ground truth's ``size``."""
        return max(self.bbox[2] - self.bbox[0], self.bbox[3] - self.bbox[1])


def _bounds(shape: str, size: float) -> tuple[float, float, float, float]:
    """(x_lo, x_hi, y_lo, y_hi): where an object's centre can be with the whole object in the frame."""
    up, down = (2 * size / 3, size / 3) if shape == "triangle" else (size / 2, size / 2)
    return size / 2, WORLD - size / 2, up, WORLD - down


def _fold(p: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Free motion ``p`` reflected at ``lo`` and ``hi``: the position of an object bouncing between them."""
    span = hi - lo
    u = np.mod(p - lo, 2 * span)
    return lo + np.where(u <= span, u, 2 * span - u)


def _centres(obj: ObjectSpec, times: np.ndarray) -> np.ndarray:
    """The object's centre at ``times`` (seconds): float64 ``[T, 2]``."""
    x0, y0 = obj.start
    if obj.motion == "circling":
        theta = obj.angle + obj.speed / obj.radius * times
        return np.stack([x0 + obj.radius * np.cos(theta), y0 + obj.radius * np.sin(theta)], axis=-1)
    if obj.motion == "standing still":
        return np.tile(np.array([x0, y0], np.float64), (len(times), 1))
    dx, dy = _DIRECTIONS.get(obj.motion, (math.cos(obj.angle), math.sin(obj.angle)))
    x_lo, x_hi, y_lo, y_hi = _bounds(obj.shape, obj.size)
    return np.stack([_fold(x0 + obj.speed * dx * times, x_lo, x_hi),
                     _fold(y0 + obj.speed * dy * times, y_lo, y_hi)], axis=-1)


def _mask(shape: str, size: float, cx: np.ndarray, cy: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Which pixel centres (px ``[1, 1, W]``, py ``[1, H, 1]``) the shape centred at (cx, cy) ``[T, 1, 1]`` covers:
    bool ``[T, H, W]``."""
    half = size / 2
    if shape == "ball":
        return (px - cx) ** 2 + (py - cy) ** 2 <= half * half
    if shape == "square":
        return (np.abs(px - cx) <= half) & (np.abs(py - cy) <= half)
    depth = py - (cy - 2 * size / 3)  # below the apex; the width there equals the depth
    return (depth >= 0) & (py <= cy + size / 3) & (np.abs(px - cx) <= depth / 2)


def _times(frames: int, fps: float, start_frame: int) -> np.ndarray:
    if int(frames) != frames or frames < 0 or int(start_frame) != start_frame or start_frame < 0:
        raise ConfigError(f"frames and start_frame must be whole numbers >= 0, got {frames!r} and {start_frame!r}")
    if not fps > 0:
        raise ConfigError(f"fps must be positive, got {fps!r}")
    return (start_frame + np.arange(int(frames), dtype=np.float64)) / fps


def render(scene: SceneSpec, frames: int, fps: float = FPS, size: int = WORLD, start_frame: int = 0) -> np.ndarray:
    """Frames ``start_frame .. start_frame + frames - 1`` of the scene at ``fps``, crisp solid shapes without
    anti-aliasing: uint8 ``[T, size, size, 3]``."""
    times = _times(frames, fps, start_frame)
    if int(size) != size or size < 1:
        raise ConfigError(f"size must be a whole number of pixels >= 1, got {size!r}")
    coords = ((np.arange(size) + 0.5) * (WORLD / size)).astype(np.float32)  # pixel centres in world pixels
    px, py = coords[None, None, :], coords[None, :, None]
    video = np.empty((len(times), size, size, 3), np.uint8)
    video[:] = BACKGROUNDS[scene.background]
    for obj in scene.objects:
        c = _centres(obj, times).astype(np.float32)
        video[_mask(obj.shape, obj.size, c[:, 0, None, None], c[:, 1, None, None], px, py)] = COLOURS[obj.colour]
    return video


def ground_truth(scene: SceneSpec, frames: int, fps: float = FPS, start_frame: int = 0,
                 size: int = WORLD) -> list[list[ObjectState]]:
    """Per frame of ``render(scene, frames, fps, size, start_frame)``, the state of every object, in drawing order."""
    times, scale = _times(frames, fps, start_frame), size / WORLD
    tracks = [_centres(obj, times) * scale for obj in scene.objects]
    return [[ObjectState(obj.colour, obj.shape, (float(c[i, 0]), float(c[i, 1])), obj.size * scale)
             for obj, c in zip(scene.objects, tracks)] for i in range(len(times))]


def _sample_object(rng: np.random.Generator, colour: str, shape: str, motion: str,
                   others: Sequence[ObjectSpec] = ()) -> ObjectSpec:
    """An object with the given names and sampled size, speed and start, away from ``others`` at time 0."""
    size, crossing = float(rng.uniform(*SIZE_RANGE)), float(rng.uniform(*CROSSING_SECONDS))
    angle, radius = float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(*RADIUS_RANGE))
    speed = (WORLD - size) / crossing
    x_lo, x_hi, y_lo, y_hi = _bounds(shape, size)
    if motion == "circling":  # the crossing time is the period
        speed = 2 * math.pi * radius / crossing
        x_lo, x_hi, y_lo, y_hi = x_lo + radius, x_hi - radius, y_lo + radius, y_hi - radius
    elif motion == "bouncing":
        angle = float(rng.uniform(*_DIAGONAL)) + math.pi / 2 * int(rng.integers(4))
    elif motion in _DIRECTIONS:  # start at least a third of a crossing from the wall ahead
        dx, dy = _DIRECTIONS[motion]
        third_x, third_y = (x_hi - x_lo) / 3, (y_hi - y_lo) / 3
        x_lo, x_hi = (x_lo + third_x * (dx < 0), x_hi - third_x * (dx > 0))
        y_lo, y_hi = (y_lo + third_y * (dy < 0), y_hi - third_y * (dy > 0))
    for _ in range(32):  # resample the start until it is clear of the others
        start = (float(rng.uniform(x_lo, x_hi)), float(rng.uniform(y_lo, y_hi)))
        obj = ObjectSpec(colour, shape, motion, size, start, speed, angle, radius)
        at_zero = _centres(obj, np.zeros(1))[0]
        if all(math.dist(at_zero, _centres(o, np.zeros(1))[0]) > (size + o.size) / 2 + 2 for o in others):
            break
    return obj


WEIGHABLE = {"shape": SHAPES, "motion": MOTIONS, "background": tuple(BACKGROUNDS)}  # what sample_scene can weigh


def check_weights(weights: Mapping[str, float], name: str = "the toy world's weights") -> dict[str, float]:
    """``weights`` as a plain dict after checking that each names a shape, motion or background and is a number >= 0,
    and that every kind keeps some name with a positive weight (names left out weigh 1). ``name`` heads errors."""
    known = {item for kind in WEIGHABLE.values() for item in kind}
    checked: dict[str, float] = {}
    for item, weight in dict(weights).items():
        if item not in known:
            raise ConfigError(f"{name}: the toy world has no shape, motion or background {item!r}",
                              hint=f"weigh some of: {', '.join(sorted(known))}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
            raise ConfigError(f"{name}: the weight of {item!r} must be a number >= 0, got {weight!r}")
        checked[item] = float(weight)
    for kind, items in WEIGHABLE.items():
        if not any(checked.get(item, 1.0) > 0 for item in items):
            raise ConfigError(f"{name} leave no {kind} to draw", hint=f"give one of {', '.join(items)} a weight > 0")
    return checked


def _draw(rng: np.random.Generator, names: Sequence[str], weights: Mapping[str, float] | None) -> str:
    """One of ``names``, uniformly (``weights`` None) or in proportion to ``weights`` (names left out weigh 1)."""
    if weights is None:
        return names[int(rng.integers(len(names)))]
    p = np.array([weights.get(name, 1.0) for name in names])
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def sample_scene(seed: int, max_objects: int = 2, weights: Mapping[str, float] | None = None) -> SceneSpec:
    """A scene drawn from ``np.random.default_rng(seed)``: 1 to ``max_objects`` objects of distinct colours.
    ``weights`` (see :func:`check_weights`) makes some shapes, motions or backgrounds likelier than the others;
    without it each is equally likely."""
    if not 1 <= max_objects <= len(COLOURS):
        raise ConfigError(f"max_objects must be in 1..{len(COLOURS)} (one colour each), got {max_objects!r}")
    weights = check_weights(weights) if weights else None
    rng = np.random.default_rng(seed)
    background = _draw(rng, list(BACKGROUNDS), weights)
    count = int(rng.integers(1, max_objects + 1))
    objects: list[ObjectSpec] = []
    for colour in rng.permutation(list(COLOURS))[:count]:
        shape, motion = _draw(rng, SHAPES, weights), _draw(rng, MOTIONS, weights)
        objects.append(_sample_object(rng, str(colour), shape, motion, objects))
    return SceneSpec(background, tuple(objects))


_OBJECT = re.compile(rf"an? ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)}) ({'|'.join(MOTIONS)})")
_CAPTION = re.compile(rf"(.+) on an? ({'|'.join(BACKGROUNDS)}) background\.?")


def swap_words(caption: str, mapping: Mapping[str, str]) -> str:
    """``caption`` with every word that is a key of ``mapping`` replaced by its value, all in one pass (so a
    mapping that sends ``left`` to ``right`` and ``right`` to ``left`` swaps them)."""
    return " ".join(mapping.get(word, word) for word in caption.split(" "))


def parse_caption(text: str) -> tuple[list[tuple[str, str, str]], str]:
    """A caption in the toy world's template -> ([(colour, shape, motion) per object], background). Case and
    spacing are free, "an" may stand for "a", and a final full stop is allowed."""
    normal = " ".join(text.lower().split())
    whole = _CAPTION.fullmatch(normal)
    parts = [_OBJECT.fullmatch(p) for p in whole[1].split(" and ")] if whole else [None]
    if not all(parts):
        raise ConfigError(
            f"cannot read the toy-world caption {text!r}",
            hint=f"write 'a {{colour}} {{shape}} {{motion}} on a {{background}} background', objects joined by "
                 f"' and '; colours: {', '.join(COLOURS)}; shapes: {', '.join(SHAPES)}; motions: "
                 f"{', '.join(MOTIONS)}; backgrounds: {', '.join(BACKGROUNDS)}")
    return [p.groups() for p in parts], whole[2]


def scene_from_caption(text: str, seed: int = 0) -> SceneSpec:
    """A scene that ``text`` describes, its sizes, speeds and starts drawn from ``np.random.default_rng(seed)``."""
    things, background = parse_caption(text)
    rng = np.random.default_rng(seed)
    objects: list[ObjectSpec] = []
    for colour, shape, motion in things:
        objects.append(_sample_object(rng, colour, shape, motion, objects))
    return SceneSpec(background, tuple(objects))


def nearest_colour(rgb: Sequence[float], palette: dict[str, tuple[int, int, int]] = COLOURS) -> str:
    """The name in ``palette`` (``COLOURS`` or ``BACKGROUNDS``) nearest to ``rgb`` in RGB distance."""
    values = np.array(list(palette.values()), np.float32)
    return list(palette)[int(np.argmin(((values - np.asarray(rgb, np.float32)) ** 2).sum(-1)))]


def estimate_background(frames: np.ndarray) -> tuple[int, int, int]:
    """The median of the border pixels of uint8 ``[T, H, W, 3]`` (or one ``[H, W, 3]`` frame)."""
    video = np.asarray(frames).reshape(-1, *np.shape(frames)[-3:])
    border = np.concatenate([video[:, 0], video[:, -1], video[:, :, 0], video[:, :, -1]], axis=1).reshape(-1, 3)
    return tuple(int(v) for v in np.round(np.median(border, axis=0)))


def _components(mask: np.ndarray) -> np.ndarray:
    """4-connected components of bool ``[H, W]``: int ``[H, W]``, -1 off the mask, else the component's smallest flat
    pixel index. Min-label propagation with pointer jumping, so a few dozen passes at most on small frames."""
    h, w = mask.shape
    off = h * w
    labels = np.where(mask, np.arange(off).reshape(h, w), off)
    while True:
        new = labels.copy()
        new[1:] = np.minimum(new[1:], labels[:-1])
        new[:-1] = np.minimum(new[:-1], labels[1:])
        new[:, 1:] = np.minimum(new[:, 1:], labels[:, :-1])
        new[:, :-1] = np.minimum(new[:, :-1], labels[:, 1:])
        new = np.where(mask, new, off).ravel()
        on = new < off
        new[on] = new[new[on]]  # a label is a pixel of the same component with a label no larger: jump to it
        new = new.reshape(h, w)
        if np.array_equal(new, labels):
            return np.where(mask, labels, -1)
        labels = new


def find_objects(frame: np.ndarray, background: Sequence[int], threshold: int = 48,
                 min_area: int = 4) -> list[DetectedObject]:
    """The objects in uint8 ``[H, W, 3]``: 4-connected sets of at least ``min_area`` pixels whose largest channel
    difference from ``background`` exceeds ``threshold``; largest first."""
    frame = np.asarray(frame)
    diff = np.abs(frame.astype(np.int16) - np.asarray(background, np.int16)).max(axis=-1)
    labels = _components(diff > threshold)
    found = []
    for label, area in zip(*np.unique(labels[labels >= 0], return_counts=True)):
        if area < min_area:
            continue
        ys, xs = np.nonzero(labels == label)
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        mean_rgb = tuple(float(v) for v in frame[ys, xs].mean(axis=0))
        found.append(DetectedObject((float(xs.mean()) + 0.5, float(ys.mean()) + 0.5), int(area), mean_rgb,
                                    (x0, y0, x1, y1), *_outline(xs, ys, (x0, y0, x1, y1))))
    return sorted(found, key=lambda o: -o.area)


def _outline(xs: np.ndarray, ys: np.ndarray, bbox: tuple[int, int, int, int]) -> tuple[float, float]:
    """(taper, diagonal) of the pixels ``xs, ys`` in ``bbox`` (see :class:`DetectedObject`). A pixel spans one unit
    along each axis and two along x + y and x - y, whose units are 1/sqrt 2 px."""
    x0, y0, x1, y1 = bbox
    widths = np.bincount(ys - y0, minlength=y1 - y0)  # pixels per row
    band = max(1, (y1 - y0) // 3)
    taper = float(widths[:band].mean() / widths[-band:].mean())
    along = [(d.max() - d.min() + 2) / math.sqrt(2) for d in (xs + ys, xs - ys)]
    return taper, float(np.mean(along) / (((x1 - x0) + (y1 - y0)) / 2))


def classify_shape(detected: DetectedObject) -> str:
    """"triangle" if its top third is at most TRIANGLE_TAPER as wide as its bottom third, else "square" if it reaches
    SQUARE_DIAGONAL times further along the diagonals than along the axes, else "ball". Both outlines hold up under
    blur: a decoder that rounds a square's corners or softens a triangle's tip leaves them recognisable (the
    thresholds: every frame of rendered videos right, and the most frames of the toy VAE's reconstructions of them
    right for the shape it gets right least often; see docs/toy-model.md)."""
    if detected.taper < TRIANGLE_TAPER:
        return "triangle"
    return "square" if detected.diagonal >= SQUARE_DIAGONAL else "ball"


def _off_circle(points: np.ndarray) -> float:
    """The rms distance of ``points`` ``[N, 2]`` from their least-squares (Kasa) circle, over its radius."""
    d = points - points.mean(axis=0)
    (a, b, c), *_ = np.linalg.lstsq(np.c_[2 * d, np.ones(len(d))], (d**2).sum(axis=1), rcond=None)
    radius = math.sqrt(max(c + a * a + b * b, 1e-9))
    return float(np.sqrt(np.mean((np.linalg.norm(d - [a, b], axis=1) - radius) ** 2)) / radius)


def motion_direction(centres: Sequence[tuple[float, float]], still: float = 2.0, spacing: float = 4.0) -> str:
    """The motion name that a track of centres ``[T, 2]`` (x, y; y down) shows.

    "standing still" if no centre is ``still`` px from the median; otherwise the track is resampled every
    ``spacing`` px (to wash out detection jitter) and is "circling" if it turns by at least a quarter turn with
    most steps turning the same way and lies on a circle (rms distance off the best-fitting one under 8% of its
    radius, which a bounce in a corner is not), "bouncing" if it moves along both axes (at least a quarter as far
    along the lesser one), else "moving <direction>" by its first step along its main axis, which bounces do not
    change.
    """
    points = np.asarray(centres, np.float64).reshape(-1, 2)
    if len(points) < 2 or np.linalg.norm(points - np.median(points, axis=0), axis=1).max() < still:
        return "standing still"
    kept = [points[0]]
    for p in points[1:]:
        if math.dist(p, kept[-1]) >= spacing:
            kept.append(p)
    steps = np.diff(kept, axis=0) if len(kept) > 1 else (points[-1] - points[:1])
    if len(steps) >= 5:
        turns = np.diff(np.arctan2(steps[:, 1], steps[:, 0]))
        turns = (turns + math.pi) % (2 * math.pi) - math.pi  # wrapped to [-pi, pi)
        total = turns.sum()
        curving = np.mean((np.sign(turns) == np.sign(total)) & (np.abs(turns) > 0.12))
        if abs(total) >= math.pi / 2 and curving >= 0.7 and _off_circle(points) < 0.08:
            return "circling"
    path = np.abs(steps).sum(axis=0)
    if path.min() >= 0.25 * path.max():
        return "bouncing"
    axis = int(np.argmax(path))
    forward = steps[np.nonzero(steps[:, axis])[0][0], axis] > 0
    return (("moving left", "moving right"), ("moving up", "moving down"))[axis][int(forward)]
