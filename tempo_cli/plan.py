"""The generation plan: levels, chunk layouts, temporal RoPE indices and cost estimates. Pure, no torch.

A video is generated coarse to fine in time. Level 0 (the blueprint) has ``frames`` = 4k+1 frames at the
coarsest frame interval and is generated as one chunk; every finer level is cut into chunks generated in
parallel, each conditioned on the next-coarser level's frames placed at their true time positions.

One time axis for everything: frame ``i`` of a level at frame interval ``s`` sits at base time ``i * s``,
in base frames (interval 1, ``1/base_fps`` seconds). Temporal RoPE counts in latent frames of interval 1
(4 base frames): latent frame ``j`` of a chunk at interval ``s`` has index ``start + j * s``.

Two chunk layouts (``LAYOUTS``):

``seamless`` (default): a refined level keeps coarse frame ``i`` at position ``i * ratio``, so it has
``(frames_in - 1) * ratio + 1`` frames; it is cut into 4k+1-frame chunks whose boundary frame is shared by
both neighbours and is itself a coarse frame (an anchor). Chunk spans are balanced multiples of
``lcm(4, ratio)``; where they cannot be equal the longer ones come first and the last chunks are shorter
(no padding). Every anchor holds the coarser frame of the same moment. ``start = first_position * s / 4``,
so neighbouring chunks give the shared boundary latent frame the same index.

``reference``: the released ``preparer_condition_video`` as ``condition_layouts.json`` records it. A level
of ``frames_in`` frames refined by ``ratio`` has ``new = frames_in * ratio`` frames (coarse frame ``i`` at
``i * ratio``) cut into ``n = max(4 // interval_to, 1)`` back-to-back chunks of
``L = (new // n + 2) // 4 * 4 + 1`` slots; slots past ``new`` are zero padding. Position ``p < new`` is an
anchor with coarse frame ``p // ratio`` when ``p % ratio == 0``, when ``p`` is a chunk's first position, or
when it is a chunk's last real position (``min(chunk end, new - 1)``). The last two rules are the quirks:
off the coarse grid, seam and tail slots hold a copy of an earlier moment. RoPE starts chunk ``c`` at
``c * f * s`` (``f`` latent frames per chunk), the release's formula, off the shared time axis. Levels
chain on ``frames_in * ratio`` frames; the release chains on its padded output, the same whenever there
is no padding, as for every 4k+1 blueprint at 6/12/24 or 6/24 fps.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple, Sequence, TypeVar

from tempo_cli.config import DiTConfig
from tempo_cli.errors import ConfigError

LAYOUTS = ("seamless", "reference")
TEMPORAL_FACTOR = 4  # pixel frames per latent frame after the first (Wan VAE)
SPATIAL_FACTOR = 8  # pixels per latent along height and width (Wan VAE)
PLAN_PATCH = (1, 2, 2)  # DiT patch the plan's token counts assume (the release's)

T = TypeVar("T")


def latent_frames(frames: int) -> int:
    """Latent frames of a clip of ``frames`` = 4k+1 pixel frames: the first alone, then groups of four."""
    return 1 + (frames - 1) // TEMPORAL_FACTOR


@dataclass(frozen=True)
class Chunk:
    """One chunk of a level: which level frames it generates and how each slot is conditioned.

    ``positions[k]``: level frame index at chunk slot ``k`` (``None``: padding, reference layout only).
    ``source_frame[k]``: next-coarser level frame placed at slot ``k`` as condition (-1: empty).
    ``mask[k]``: 1 where slot ``k`` is conditioned. ``rope[j]``: temporal RoPE index of latent frame ``j``.
    """

    index: int
    positions: tuple[int | None, ...]
    source_frame: tuple[int, ...]
    mask: tuple[int, ...]
    rope: tuple[int, ...]

    @property
    def frames(self) -> int:
        return len(self.positions)

    @property
    def latent_frames(self) -> int:
        return latent_frames(self.frames)

    @property
    def anchors(self) -> tuple[tuple[int, int], ...]:
        """(slot, coarser frame) of every conditioned slot."""
        return tuple((k, s) for k, (s, m) in enumerate(zip(self.source_frame, self.mask)) if m)

    def condition(self) -> dict[str, list[int]]:
        """This chunk in the schema of ``condition_layouts.json``."""
        return {"source_frame": list(self.source_frame), "mask": list(self.mask)}


@dataclass(frozen=True)
class Level:
    """One frame-rate level. ``ratio`` and ``frames_in`` describe the coarser level (None for the blueprint)."""

    index: int
    interval: int
    frames: int
    chunks: tuple[Chunk, ...]
    ratio: int | None = None
    frames_in: int | None = None

    @property
    def is_blueprint(self) -> bool:
        return self.ratio is None

    def time(self, frame: int) -> int:
        """Base time (in interval-1 frames) of this level's frame ``frame``."""
        return frame * self.interval

    @property
    def times(self) -> tuple[int, ...]:
        return tuple(self.time(i) for i in range(self.frames))


@dataclass(frozen=True)
class Plan:
    """Every level of one generation. ``frames`` are the blueprint's; ``chunks`` the per-level counts."""

    frames: int
    intervals: tuple[int, ...]
    chunks: tuple[int, ...]
    layout: str
    height: int
    width: int
    base_fps: int
    levels: tuple[Level, ...]

    @property
    def final(self) -> Level:
        return self.levels[-1]

    @property
    def tokens_per_latent_frame(self) -> int:
        """DiT tokens per latent frame with the release's (1, 2, 2) patch: (H/16) * (W/16)."""
        return (self.height // (SPATIAL_FACTOR * PLAN_PATCH[1])) * (self.width // (SPATIAL_FACTOR * PLAN_PATCH[2]))


# ---- validation -------------------------------------------------------------------------------------------

def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_frames(frames: int, option: str = "frames") -> None:
    """Raise a ConfigError naming the nearest valid counts unless ``frames`` is 4k+1 with k >= 1."""
    if isinstance(frames, bool) or not isinstance(frames, int):
        raise ConfigError(f"{option} must be an integer 4k+1, got {frames!r}")
    if frames >= 5 and frames % 4 == 1:
        return
    below = (frames - 1) // 4 * 4 + 1
    nearest = f"{below} or {below + 4}" if below >= 5 else f"{max(below + 4, 5)}"
    raise ConfigError(f"{option} must be 4k+1 (k >= 1), got {frames}; nearest valid: {nearest}")


def check_intervals(intervals: Sequence[int]) -> tuple[int, ...]:
    """Frame intervals must run coarse to fine: positive, strictly decreasing, each dividing the one before."""
    values = tuple(intervals)
    if not values:
        raise ConfigError("frame intervals must not be empty", hint="e.g. 4,2,1 for 6/12/24 fps")
    for s in values:
        if not _positive_int(s):
            raise ConfigError(f"frame intervals must be positive integers, got {s!r} in {list(values)}")
    for coarse, fine in zip(values, values[1:]):
        if fine >= coarse or coarse % fine:
            raise ConfigError(
                f"frame intervals must go coarse to fine, each dividing the previous; got {fine} after {coarse} "
                f"in {list(values)}", hint="e.g. 4,2,1 (6/12/24 fps) or 4,1 (6/24 fps)")
    return values


def intervals_from_fps(fps: Sequence[int], base_fps: int = 24) -> tuple[int, ...]:
    """``via`` levels in frames per second, e.g. (6, 12, 24) or (6, 24), to frame intervals (4, 2, 1)."""
    values = tuple(fps)
    for rate in values:
        if not _positive_int(rate) or base_fps % rate:
            raise ConfigError(f"via: {rate!r} fps does not divide the base rate {base_fps} fps",
                              hint=f"use divisors of {base_fps}, e.g. 6,12,24")
    return check_intervals([base_fps // rate for rate in values])


def _check_chunk_counts(chunks: Sequence[int], levels: int) -> tuple[int, ...]:
    values = tuple(chunks)
    if len(values) != levels:
        raise ConfigError(f"chunks needs one count per level ({levels}), got {list(values)}",
                          hint="e.g. 1,2,4 for three levels")
    for m in values:
        if not _positive_int(m):
            raise ConfigError(f"chunk counts must be positive integers, got {m!r} in {list(values)}")
    if values[0] != 1:
        raise ConfigError(f"the blueprint is generated in one chunk; chunks must start with 1, got {list(values)}")
    return values


def default_chunks(intervals: Sequence[int], layout: str = "seamless") -> tuple[int, ...]:
    """The paper's m(1, 2, 4) / m(1, 4): ``intervals[0] // s`` per level; the release's ``max(4 // s, 1)``."""
    if layout == "reference":
        return (1,) + tuple(max(4 // s, 1) for s in intervals[1:])
    return tuple(intervals[0] // s for s in intervals)


# ---- layouts ----------------------------------------------------------------------------------------------

def _chunk(index: int, positions: Sequence[int | None], ratio: int | None, rope_start: int, interval: int,
           extra: Sequence[int] = ()) -> Chunk:
    """Slot ``p`` is conditioned on coarser frame ``p // ratio`` if ``p % ratio == 0`` or ``p in extra``."""
    source = tuple(p // ratio if ratio and p is not None and (p % ratio == 0 or p in extra) else -1
                   for p in positions)
    return Chunk(index, tuple(positions), source, tuple(int(s >= 0) for s in source),
                 tuple(rope_start + j * interval for j in range(latent_frames(len(positions)))))


def max_seamless_chunks(frames: int, ratio: int) -> int:
    """Most chunks a seamless level of ``frames`` can take: spans are multiples of lcm(4, ratio)."""
    return (frames - 1) // math.lcm(TEMPORAL_FACTOR, ratio)


def _seamless_level(index: int, frames_in: int, interval_from: int, interval: int, chunks: int) -> Level:
    ratio = interval_from // interval
    frames = (frames_in - 1) * ratio + 1
    unit = math.lcm(TEMPORAL_FACTOR, ratio)
    most = max_seamless_chunks(frames, ratio)
    if chunks > most:
        raise ConfigError(
            f"level {index} (interval {interval}, {frames} frames) splits into at most {most} chunks of 4k+1 "
            f"frames that share an anchor at each boundary; got {chunks}", hint="lower its chunk count")
    q, longer = divmod((frames - 1) // unit, chunks)
    out, start = [], 0
    for c in range(chunks):
        stop = start + (q + (c < longer)) * unit
        out.append(_chunk(c, range(start, stop + 1), ratio, start * interval // TEMPORAL_FACTOR, interval))
        start = stop
    return Level(index, interval, frames, tuple(out), ratio, frames_in)


def _reference_level(index: int, frames_in: int, interval_from: int, interval: int) -> Level:
    ratio = interval_from // interval
    new = frames_in * ratio
    n = max(4 // interval, 1)
    length = (new // n + 2) // 4 * 4 + 1
    if (n - 1) * length >= new:
        raise ConfigError(
            f"the reference layout cannot split level {index} ({new} frames) into {n} chunks of {length}: "
            f"its last chunk would be empty", hint="use more blueprint frames or the seamless layout")
    out = []
    for c in range(n):
        first, last = c * length, min((c + 1) * length - 1, new - 1)  # the quirks: seam and tail copies
        positions = [p if p < new else None for p in range(first, first + length)]
        out.append(_chunk(c, positions, ratio, c * latent_frames(length) * interval, interval, (first, last)))
    return Level(index, interval, new, tuple(out), ratio, frames_in)


def reference_condition_layout(frames_in: int, interval_from: int, interval_to: int) -> dict[str, Any]:
    """The released refinement layout for one step, as an entry of ``condition_layouts.json``."""
    check_intervals([interval_from, interval_to])
    return condition_layout(_reference_level(1, frames_in, interval_from, interval_to))


def condition_layout(level: Level) -> dict[str, Any]:
    """A refinement level's conditions in the schema of ``condition_layouts.json``."""
    if level.is_blueprint:
        raise ConfigError("the blueprint has no coarser level to be conditioned on")
    return {"frames_in": level.frames_in, "interval_from": level.interval * level.ratio,
            "interval_to": level.interval, "chunks": [c.condition() for c in level.chunks]}


def make_plan(frames: int, intervals: Sequence[int] = (4, 2, 1), chunks: Sequence[int] | None = None,
              layout: str = "seamless", height: int = 480, width: int = 832, base_fps: int = 24) -> Plan:
    """Plan a generation from a blueprint of ``frames`` (4k+1) frames at ``intervals[0]`` down to ``intervals[-1]``.

    ``chunks`` gives each level's chunk count (default: :func:`default_chunks`); the reference layout fixes
    them to the release's ``max(4 // interval, 1)``. Raises :class:`ConfigError` on any invalid input.
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown layout {layout!r}", hint=f"choose one of: {', '.join(LAYOUTS)}")
    check_frames(frames)
    ivs = check_intervals(intervals)
    counts = default_chunks(ivs, layout) if chunks is None else _check_chunk_counts(chunks, len(ivs))
    if layout == "reference" and counts != default_chunks(ivs, "reference"):
        raise ConfigError(f"the reference layout fixes chunks to {list(default_chunks(ivs, 'reference'))}, "
                          f"got {list(counts)}", hint="leave chunks unset or use the seamless layout")
    for name, value in (("height", height), ("width", width)):
        if not _positive_int(value) or value % 16:
            raise ConfigError(f"{name} must be a positive multiple of 16, got {value!r}")
    if not _positive_int(base_fps):
        raise ConfigError(f"base_fps must be a positive integer, got {base_fps!r}")
    blueprint = _chunk(0, range(frames), None, 0, ivs[0])
    levels = [Level(0, ivs[0], frames, (blueprint,))]
    for i in range(1, len(ivs)):
        prev = levels[-1]
        if layout == "reference":
            levels.append(_reference_level(i, prev.frames, prev.interval, ivs[i]))
        else:
            levels.append(_seamless_level(i, prev.frames, prev.interval, ivs[i], counts[i]))
    return Plan(frames, ivs, counts, layout, height, width, base_fps, tuple(levels))


def next_level(prev: Level, interval: int, chunks: int | None = None, layout: str = "seamless") -> Level:
    """The level that refines ``prev`` to frame ``interval`` (what :func:`make_plan` chains, one step)."""
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown layout {layout!r}", hint=f"choose one of: {', '.join(LAYOUTS)}")
    check_intervals([prev.interval, interval])
    if layout == "reference":
        if chunks is not None and chunks != max(4 // interval, 1):
            raise ConfigError(f"the reference layout fixes the chunks of interval {interval} to "
                              f"{max(4 // interval, 1)}, got {chunks}", hint="use the seamless layout")
        return _reference_level(prev.index + 1, prev.frames, prev.interval, interval)
    count = prev.interval // interval if chunks is None else chunks
    if not _positive_int(count):
        raise ConfigError(f"chunk counts must be positive integers, got {count!r}")
    return _seamless_level(prev.index + 1, prev.frames, prev.interval, interval, count)


# ---- joining chunks ---------------------------------------------------------------------------------------

class Span(NamedTuple):
    """Slots ``start:stop`` of chunk ``chunk`` go next into the joined level."""

    chunk: int
    start: int
    stop: int


def join_spans(level: Level, keep_padding: bool = False) -> tuple[Span, ...]:
    """How to assemble a level's frames from its chunks, in time order.

    Seamless: chunk ``c > 0`` starts with the boundary frame chunk ``c - 1`` already gave, so its slot 0 is
    dropped: spans ``(0, 0, L0)``, ``(c, 1, Lc)``. Slot 0 is a latent frame of its own, so latents join
    the same way: drop latent frame 0 of every later chunk.
    Reference: chunks are back to back; the last chunk's padding slots are dropped, unless
    ``keep_padding``, which reproduces the release, whose decoder output keeps them.
    """
    spans, seen = [], -1
    for chunk in level.chunks:
        slots = [k for k, p in enumerate(chunk.positions) if (p is None and keep_padding) or
                 (p is not None and p > seen)]
        if slots:
            spans.append(Span(chunk.index, slots[0], slots[-1] + 1))
        seen = max([seen] + [p for p in chunk.positions if p is not None])
    return tuple(spans)


def join(level: Level, chunks: Sequence[Sequence[T]], keep_padding: bool = False) -> list[T]:
    """Concatenate per-chunk frame sequences (any sliceable sequences, one item per slot) into the level."""
    if len(chunks) != len(level.chunks):
        raise ConfigError(f"join needs {len(level.chunks)} chunks for level {level.index}, got {len(chunks)}")
    return [item for c, a, b in join_spans(level, keep_padding) for item in chunks[c][a:b]]


# ---- cost -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LevelCost:
    """Cost of one level: every chunk x ``steps`` x ``passes`` DiT forwards.

    ``flops``: 2 x multiply-adds of the linear layers (``2 * params_per_token * tokens``; cross-attention
    keys/values once per text token) plus the attention matmuls per layer (self ``4 * tokens**2 * dim``,
    cross ``4 * tokens * text_len * dim``); norms, softmax, RoPE, modulation, text encoder and VAE excluded.
    ``activation_bytes``: all chunks and guidance passes in one batch (as the engine runs a level), padded to
    the longest, ``batch * tokens * (2 * dim * 4 + max(2 * ffn_dim, 4 * dim) * dtype_bytes)``: the float32
    residual stream and its modulated copy, plus the largest live block intermediate (FFN hidden and its
    activation, or q, k, v and attention output) with memory-efficient attention. A lower bound: no weights, caches or allocator overhead. Being linear in
    tokens, a batched level costs about what one shot does; ``chunk_activation_bytes`` is the longest chunk
    alone with its guidance passes (chunks run one by one). ``attention_scores_bytes``: ``batch * heads * tokens**2 * dtype_bytes``,
    one layer's scores if attention were materialised: the quadratic term that chunking shrinks.
    """

    interval: int
    chunks: int
    steps: int
    passes: int
    max_tokens: int
    flops: int
    activation_bytes: int
    chunk_activation_bytes: int
    attention_scores_bytes: int
    lagged_steps: int = 0  # the most steps a chunk takes when its later latent frames lag (0: ``steps``)


@dataclass(frozen=True)
class CostEstimate:
    levels: tuple[LevelCost, ...]
    one_shot: LevelCost

    @property
    def flops(self) -> int:
        return sum(level.flops for level in self.levels)

    @property
    def peak_activation_bytes(self) -> int:
        return max(level.activation_bytes for level in self.levels)

    @property
    def speedup(self) -> float:
        return self.one_shot.flops / self.flops


def forward_flops(dit: DiTConfig, tokens: int, text_len: int) -> int:
    """FLOPs of one DiT forward on ``tokens`` video tokens and ``text_len`` text tokens (see LevelCost)."""
    d, f, layers, patch = dit.dim, dit.ffn_dim, dit.num_layers, math.prod(dit.patch_size)
    per_token = layers * (6 * d * d + 2 * d * f) + dit.in_dim * patch * d + d * dit.out_dim * patch
    per_text = layers * 2 * d * d + dit.text_dim * d + d * d
    attention = layers * (4 * tokens * tokens * d + 4 * tokens * text_len * d)
    return 2 * (per_token * tokens + per_text * text_len) + attention


def lagged_steps(steps: int, latent: int, stagger: float = 0.0, lag: float = 0.0) -> int:
    """DiT steps of a chunk of ``latent`` latent frames whose later frames lag (as
    :func:`tempo_cli.sampling.staggered_schedule` and :func:`tempo_cli.sampling.rolling_schedule` walk them):
    ``steps`` plus the last frame's lag (:func:`frame_starts`)."""
    return steps + frame_starts(steps, latent, stagger, lag)[-1]


def frame_starts(steps: int, latent: int, stagger: float = 0.0, lag: float = 0.0) -> list[int]:
    """The step at which each of a chunk's ``latent`` latent frames starts its walk down the schedule, as
    :func:`tempo_cli.sampling.rolling_schedule` (``lag`` steps after the frame before) and
    :func:`tempo_cli.sampling.staggered_schedule` (the last ``stagger`` of ``steps`` after the first) walk them."""
    if lag:
        return [round(k * lag) for k in range(latent)]
    return [round(k * stagger * steps / max(latent - 1, 1)) for k in range(latent)]


def pass_frames(steps: int, latent: int, stagger: float = 0.0, lag: float = 0.0,
                waiting_frames: int | None = None) -> list[int]:
    """The latent frames in each DiT pass of a chunk of ``latent`` latent frames: all of them in each of its
    :func:`lagged_steps` passes or, keeping ``waiting_frames`` of the frames still waiting their turn
    (``sampler.waiting_frames``), those that have started by each step and that many more (frames given as
    conditions, which every pass keeps, aside)."""
    walk = lagged_steps(steps, latent, stagger, lag)
    if waiting_frames is None or walk == steps:
        return [latent] * walk
    starts = frame_starts(steps, latent, stagger, lag)
    return [min(latent, sum(start <= step for start in starts) + waiting_frames) for step in range(walk)]


def _level_cost(dit: DiTConfig, interval: int, frames: Sequence[int], per_latent: int, steps: int, passes: int,
                text_len: int, dtype_bytes: int, stagger: float = 0.0, lag: float = 0.0,
                waiting_frames: int | None = None) -> LevelCost:
    tokens = [latent_frames(f) // dit.patch_size[0] * per_latent for f in frames]
    walks = [pass_frames(steps, latent_frames(f), stagger, lag, waiting_frames) for f in frames]
    flops = sum(forward_flops(dit, max(n // dit.patch_size[0], 1) * per_latent, text_len)
                for walk in walks for n in walk) * passes
    chunks, peak = len(tokens), max(tokens)
    batch = chunks * passes  # the guidance passes run as one batch
    per_token = 2 * dit.dim * 4 + max(2 * dit.ffn_dim, 4 * dit.dim) * dtype_bytes
    scores = batch * dit.num_heads * peak * peak * dtype_bytes
    most = max(len(walk) for walk in walks)
    return LevelCost(interval, chunks, steps, passes, peak, flops, batch * peak * per_token,
                     passes * peak * per_token, scores, most if most != steps else 0)


def estimate_cost(plan: Plan, dit: DiTConfig, steps: int | Sequence[int], guidance: bool = True, text_len: int = 512,
                  dtype_bytes: int = 2, one_shot_steps: int | None = None,
                  spatial_factor: int = SPATIAL_FACTOR, stagger: Sequence[float] = (),
                  lag: Sequence[float] = (), waiting_frames: int | None = None) -> CostEstimate:
    """Estimated FLOPs and activation memory per level of ``plan`` for the DiT of ``dit`` (a DiTConfig).

    ``steps`` per level (or one count for all); ``guidance`` doubles the forwards (CFG/APG); ``stagger`` and
    ``lag`` per level (the sampler's; () for none) add each chunk's lagging steps (:func:`lagged_steps`), and
    ``waiting_frames`` counts only the frames each of those passes takes (:func:`pass_frames`). The
    one-shot baseline generates the final level's frames as a single chunk with ``one_shot_steps`` (default: the
    blueprint's). Token counts use ``dit.patch_size`` on the latent grid of a VAE with ``spatial_factor``.
    """
    counts = (steps,) * len(plan.levels) if isinstance(steps, int) else tuple(steps)
    if len(counts) != len(plan.levels) or not all(map(_positive_int, counts)):
        raise ConfigError(f"steps needs one positive count per level ({len(plan.levels)}), got {steps!r}")
    if one_shot_steps is not None and not _positive_int(one_shot_steps):
        raise ConfigError(f"one_shot_steps must be a positive integer, got {one_shot_steps!r}")
    per_latent = (plan.height // (spatial_factor * dit.patch_size[1])) * (
        plan.width // (spatial_factor * dit.patch_size[2]))
    passes = 2 if guidance else 1
    staggers = tuple(stagger) or (0.0,) * len(plan.levels)
    lags = tuple(lag) or (0.0,) * len(plan.levels)
    if len(staggers) != len(plan.levels) or len(lags) != len(plan.levels):
        raise ConfigError(f"stagger and lag need one value per level ({len(plan.levels)}), got {stagger!r}, {lag!r}")
    levels = tuple(_level_cost(dit, lv.interval, [c.frames for c in lv.chunks], per_latent, n, passes, text_len,
                               dtype_bytes, st, lg, waiting_frames)
                   for lv, n, st, lg in zip(plan.levels, counts, staggers, lags))
    one_shot = _level_cost(dit, plan.final.interval, [plan.final.frames], per_latent,
                           one_shot_steps or counts[0], passes, text_len, dtype_bytes)
    return CostEstimate(levels, one_shot)


# ---- data -------------------------------------------------------------------------------------------------

def plan_to_dict(plan: Plan, cost: CostEstimate | None = None) -> dict[str, Any]:
    """JSON-able data of a plan (what ``tempo plan --json`` prints), with the cost estimate when given."""
    levels = []
    for level in plan.levels:
        levels.append({
            "index": level.index, "interval": level.interval, "fps": plan.base_fps / level.interval,
            "frames": level.frames, "ratio": level.ratio,
            "chunks": [{"index": c.index, "frames": c.frames, "latent_frames": c.latent_frames,
                        "tokens": c.latent_frames * plan.tokens_per_latent_frame,
                        "positions": list(c.positions), "times": [None if p is None else level.time(p)
                                                                  for p in c.positions],
                        "rope": list(c.rope)} for c in level.chunks],
            "condition_layout": None if level.is_blueprint else condition_layout(level),
            "join": [list(span) for span in join_spans(level)],
        })
    data: dict[str, Any] = {
        "layout": plan.layout, "frames": plan.frames, "intervals": list(plan.intervals),
        "chunks": list(plan.chunks), "height": plan.height, "width": plan.width, "base_fps": plan.base_fps,
        "tokens_per_latent_frame": plan.tokens_per_latent_frame, "final_frames": plan.final.frames,
        "duration_s": plan.final.frames * plan.final.interval / plan.base_fps, "levels": levels,
    }
    if cost is not None:
        data["cost"] = {"levels": [asdict(c) for c in cost.levels], "one_shot": asdict(cost.one_shot),
                        "flops": cost.flops, "peak_activation_bytes": cost.peak_activation_bytes,
                        "speedup": cost.speedup}
    return data
