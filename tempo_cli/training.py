"""``tempo train``: the paper's two-stage recipe, and the toy VAE's own training.

Stage 1 (one frame rate, multi-mask): clips at the finest rate with 0 to ``max_conditioned`` of their frames
given as conditions at random positions (sometimes the first frame, sometimes first and last, sometimes a
leading context as continuation sees it). Stage 2 (next-frame-rate): each clip picks a level (a frame
interval of the preset); its conditions are all frames of the coarser levels at their true positions, as
refinement sees them (none for the coarsest level); temporal RoPE indices ``t_start + j * interval`` with
``t_start ~ U[0, t_max]``. Both minimise the flow-matching loss ``|v(z_t, t) - (z_1 - z_0)|^2`` with
``z_t = (1 - t) z_0 + t z_1``, ``z_1`` the noise and ``t`` drawn with the schedule's shift.

VAE encoding dominates CPU training time, so clips are encoded once into a cache of prepared samples
(:func:`prepare`) that the DiT steps draw from; ``tempo train --prepare`` fills it ahead of time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from tempo_cli.conditions import condition_video, pack_mask
from tempo_cli.config import FRAME_NOISE_MODES, Preset, TrainConfig
from tempo_cli.errors import ConfigError
from tempo_cli.sampling import correlate_frames


class VideoSource(Protocol):
    """Training videos: clip ``index`` as ``frames`` uint8 frames ``[T, H, W, 3]`` at the preset's fps."""

    identity: str  # what the clips are: the same text for the same clips (names a cache of encoded clips)

    def clip(self, index: int, frames: int) -> tuple[np.ndarray, str]: ...


@dataclass(frozen=True)
class ClipLayout:
    """One training clip: ``frames`` frames at frame ``interval``, conditioned at ``anchors`` (positions)."""

    interval: int
    frames: int
    anchors: tuple[int, ...]


def clip_lengths(cfg: TrainConfig) -> list[int]:
    """The 4k+1 clip lengths a run trains on, so that batches stack: 2, 4, 8, ... latent frames, then the
    longest, ``clip_frames`` (a long blueprint or chunk is a long clip at its level's rate); none shorter than
    ``min_clip_frames`` (short clips teach appearance, only long ones show what happens over seconds)."""
    longest = (cfg.clip_frames - 1) // 4 + 1  # latent frames
    latents, n = [], 2
    while n < longest:
        latents.append(n)
        n *= 2
    return [f for f in (4 * (n - 1) + 1 for n in (*latents, longest)) if f >= cfg.min_clip_frames]


def length_weights(lengths: Sequence[int], power: float = 1.0) -> np.ndarray:
    """How often a clip of each length is drawn into a cache: in proportion to 1/frames**power. At the default
    power 1 every length brings about as many frames (long clips cost the most to encode; short ones, batched
    many at once, teach appearance fastest); lower powers draw more long clips, 0 as many of each length."""
    weights = np.asarray(lengths, dtype=np.float64) ** -power
    return weights / weights.sum()


def _clip_frames(rng: np.random.Generator, cfg: TrainConfig) -> int:
    lengths = clip_lengths(cfg)
    return int(lengths[int(rng.choice(len(lengths), p=length_weights(lengths, cfg.length_power)))])


def batch_size_for(cfg: TrainConfig, frames: int) -> int:
    """Samples in a batch of ``frames``-frame clips: ``batch_size``, fewer for long clips when
    ``batch_latent_frames`` caps the latent frames of a batch (so every step costs about the same)."""
    if not cfg.batch_latent_frames:
        return cfg.batch_size
    return max(1, min(cfg.batch_size, cfg.batch_latent_frames // ((frames - 1) // 4 + 1)))


def _multimask_anchors(rng: np.random.Generator, frames: int, most: int) -> set[int]:
    """Anchors of one multi-mask task: nothing, the first frame, first and last, a leading context (as
    continuation sees it), or up to ``most`` frames at random positions."""
    mode = rng.choice(["none", "first", "first_last", "prefix", "random"], p=[0.25, 0.2, 0.15, 0.15, 0.25])
    if mode == "first":
        return {0}
    if mode == "first_last":
        return {0, frames - 1}
    if mode == "prefix":
        return set(range(int(rng.integers(1, most + 1))))
    if mode == "random":
        return set(rng.choice(frames, size=int(rng.integers(1, most + 1)), replace=False).tolist())
    return set()


def stage1_layout(rng: np.random.Generator, cfg: TrainConfig, interval: int) -> ClipLayout:
    """Multi-mask at one frame rate: nothing, the first frame, first and last, a leading context, or up to
    ``max_conditioned`` of the frames at random positions."""
    frames = _clip_frames(rng, cfg)
    most = max(1, int(cfg.max_conditioned * frames))
    return ClipLayout(interval, frames, tuple(sorted(_multimask_anchors(rng, frames, most))))


def stage2_layout(rng: np.random.Generator, cfg: TrainConfig, intervals: Sequence[int]) -> ClipLayout:
    """Next-frame-rate: a level; every coarser level's frame (each ``ratio``-th position) is an anchor.

    A share ``stage2_multimask`` of the samples adds a multi-mask task on top (first frame, first and last, a
    leading context of up to half the clip, or random frames), so that image-to-video and continuation keep
    working at every frame rate, the blueprint's included.
    """
    weights = np.asarray(cfg.stage2_levels or [1.0] * len(intervals), dtype=np.float64)
    if len(weights) != len(intervals):
        raise ConfigError(f"train.stage2_levels needs one weight per level ({len(intervals)}), "
                          f"got {list(cfg.stage2_levels)}")
    level = int(rng.choice(len(intervals), p=weights / weights.sum()))
    frames = _clip_frames(rng, cfg)
    anchors: set[int] = set()
    if level > 0:
        ratio = intervals[level - 1] // intervals[level]
        anchors = set(range(0, frames, ratio))
    if cfg.stage2_multimask and rng.random() < cfg.stage2_multimask:
        anchors |= _multimask_anchors(rng, frames, max(1, frames // 2))
    return ClipLayout(intervals[level], frames, tuple(sorted(anchors)))


@dataclass
class Prepared:
    """Encoded samples of one clip length: targets ``[N, z, F, h, w]``, conditions ``[N, 4 + z, F, h, w]``,
    and ``focus [N, 1, F, h, w]`` in [0, 1], how much each latent cell shows of an object (:func:`latent_focus`);
    with shape contrast, ``shape_delta [N, z, F, h, w]``, each target less that of its clip with the shapes
    swapped."""

    targets: torch.Tensor
    conditions: torch.Tensor
    intervals: torch.Tensor  # [N]
    captions: list[str]
    focus: torch.Tensor
    shape_delta: torch.Tensor | None = None


def to_video(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` -> float ``[3, T, H, W]`` in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float() / 127.5 - 1


PREPARE_FRAMES = 1024  # pixel frames the VAE encodes at once while preparing


@torch.no_grad()
def prepare(source: VideoSource, vae, layouts: Sequence[ClipLayout], first_index: int,
            advance=lambda n=1: None, shape_contrast: bool = False,
            spare_objects: bool = False) -> dict[int, Prepared]:
    """Render, encode and condition one sample per layout (clip ``first_index + i``), grouped by length.

    Clips of one length are encoded in batches; a condition with no anchors is the same zero video for every
    clip of a length, so it is encoded once. ``advance(n)`` reports ``n`` more samples done. With
    ``shape_contrast`` (a source with ``swapped_clip``: the toy world) each clip is also encoded with its shapes
    swapped, for :attr:`Prepared.shape_delta`; ``spare_objects`` keeps that difference only in the cells of
    :func:`contrast_cells`.
    """
    if shape_contrast and not hasattr(source, "swapped_clip"):
        raise ConfigError("train.shape_contrast and train.shape_focus need the toy world's data (--data toyworld): "
                          "it renders each clip again with its shapes swapped")
    param = next(vae.parameters())
    by_length: dict[int, list[int]] = {}
    for i, layout in enumerate(layouts):
        by_length.setdefault(layout.frames, []).append(i)
    out = {}
    for frames, members in sorted(by_length.items()):
        step = max(1, PREPARE_FRAMES // (2 * frames))
        targets, conds, masks, captions, focus, deltas = [], [], [], [], [], []
        empty = None  # the encoded zero video of this length
        for start in range(0, len(members), step):
            videos, cond_videos, anchored, swapped = [], [], [], []
            for i in members[start:start + step]:
                layout = layouts[i]
                span = (layout.frames - 1) * layout.interval + 1  # frames at the source's rate
                clip, caption = source.clip(first_index + i, span)
                video = to_video(clip[::layout.interval])  # [3, T, H, W]
                cond, mask = condition_video(layout.frames, video.shape[2], video.shape[3],
                                             {p: video[:, p] for p in layout.anchors})
                videos.append(video)
                masks.append(mask)
                captions.append(caption)
                anchored.append(bool(layout.anchors))
                if layout.anchors:
                    cond_videos.append(cond)
                if shape_contrast:
                    swapped.append(to_video(source.swapped_clip(first_index + i, span)[::layout.interval]))
            need_empty = empty is None and not all(anchored)
            inputs = videos + cond_videos + ([torch.zeros_like(videos[0])] if need_empty else []) + swapped
            encoded = vae.encode(torch.stack(inputs).to(param.device, param.dtype)).float().cpu()
            encoded, swapped_latents = encoded[:len(inputs) - len(swapped)], encoded[len(inputs) - len(swapped):]
            clips = torch.stack(videos)
            if swapped:
                delta = encoded[:len(videos)] - swapped_latents
                if spare_objects:
                    delta *= contrast_cells(clips, torch.stack(swapped), vae.config.spatial_factor,
                                            vae.config.temporal_factor)
                deltas += list(delta.to(torch.bfloat16))
            encoded = encoded.to(torch.bfloat16)
            if need_empty:
                empty = encoded[-1]
            given = iter(encoded[len(videos):len(videos) + len(cond_videos)])
            targets += list(encoded[:len(videos)])
            focus += list(latent_focus(clips, vae.config.spatial_factor, vae.config.temporal_factor).to(torch.bfloat16))
            conds += [next(given) if has else empty for has in anchored]
            advance(len(videos))
        latents = torch.stack(conds)  # [N, z, F, h, w]
        packed = pack_mask(torch.stack(masks))[..., None, None].expand(-1, -1, -1, *latents.shape[-2:])
        out[frames] = Prepared(torch.stack(targets), torch.cat([packed.to(latents.dtype), latents], dim=1),
                               torch.tensor([layouts[i].interval for i in members]), captions, torch.stack(focus),
                               torch.stack(deltas) if deltas else None)
    return out


def sample_timesteps(rng: torch.Generator, n: int, shift: float) -> torch.Tensor:
    """Flow-matching times in (0, 1) with the schedule's shift: ``shift*u / (1 + (shift-1)*u)``, u ~ U(0, 1)."""
    return _shifted(torch.rand(n, generator=rng), shift)


def _shifted(u: torch.Tensor, shift: float) -> torch.Tensor:
    """Schedule positions ``u`` (1: pure noise), kept inside (0, 1), as times with the schedule's shift."""
    u = u.clamp(1e-3, 1 - 1e-3)
    return shift * u / (1 + (shift - 1) * u)


def sample_frame_timesteps(rng: torch.Generator, n: int, frames: int, shift: float, share: float | torch.Tensor,
                           mode: str = "independent", most_lag: float = 0.25) -> torch.Tensor:
    """Flow-matching times for ``n`` samples of ``frames`` latent frames, ``[n, frames]``: a share ``share`` of the
    samples (one share for all, or ``[n]``, one per sample) give their latent frames their own times (diffusion
    forcing), the rest one time for all their frames.

    ``mode`` "independent": each latent frame draws its time on its own. "rolling": the times rise with the frame
    index as a staggered sampler walks them (:func:`tempo_cli.sampling.rolling_schedule`): frame ``k`` is at
    schedule position ``p0 - k * lag`` (clamped to [0, 1]; 0 is pure noise, 1 clean) with ``lag ~ U(0,
    most_lag]`` and ``p0`` uniform over the whole walk, so earlier frames are cleaner, the first ones often clean
    and the last ones often pure noise. A finished frame is at exactly t = 0, as the sampler leaves it, so that
    :func:`flow_matching_loss` leaves it out."""
    if mode not in FRAME_NOISE_MODES:
        raise ConfigError(f"unknown frame noise mode {mode!r}", hint=f"use one of: {', '.join(FRAME_NOISE_MODES)}")
    t = sample_timesteps(rng, n, shift)[:, None].expand(n, frames)
    share = torch.as_tensor(share, dtype=torch.float32).expand(n)
    if not bool((share > 0).any()):
        return t.contiguous()
    if mode == "independent":
        own = sample_timesteps(rng, n * frames, shift).view(n, frames)
    else:
        lag = most_lag * (1 - torch.rand(n, 1, generator=rng))  # (0, most_lag]
        start = torch.rand(n, 1, generator=rng) * (1 + (frames - 1) * lag)
        position = (start - torch.arange(frames)[None] * lag).clamp(0, 1)
        own = torch.where(position >= 1, 0.0, _shifted(1 - position, shift))  # a finished frame is clean: t = 0
    return torch.where((torch.rand(n, generator=rng) < share)[:, None], own, t)


def frame_noise_shares(preset: Preset, intervals: torch.Tensor) -> torch.Tensor:
    """``train.frame_noise`` for each sample of a batch at frame ``intervals [B]``: ``[B]``."""
    shares = preset.train.frame_noise
    if not isinstance(shares, tuple):
        return torch.full((len(intervals),), float(shares))
    return _per_sample(preset, shares, intervals)


def _per_sample(preset: Preset, values: Sequence[float], intervals: torch.Tensor) -> torch.Tensor:
    """A per-level setting ``values`` (coarse to fine) for each sample at frame ``intervals [B]``: ``[B]``."""
    return torch.tensor([values[preset.video.level_index(int(s))] for s in intervals])


def training_noise(rng: torch.Generator, shape: Sequence[int], intervals: torch.Tensor, preset: Preset) -> torch.Tensor:
    """The noise ``z_1 [B, C, F, H, W]`` of a batch whose samples are at frame ``intervals [B]``: standard normal,
    correlated across latent frames as ``train.noise_correlation`` sets for each sample's level (independent
    where it sets nothing)."""
    noise = torch.randn(tuple(shape), generator=rng)
    cfg = preset.train
    if cfg is None or not cfg.noise_correlation:
        return noise
    correlation = _per_sample(preset, cfg.noise_correlation, intervals)
    return correlate_frames(noise, correlation, cfg.noise_prior, rng)


class FlowTerms(NamedTuple):
    """The terms of :func:`flow_matching_terms`: the own error, the error against another sample's flow and the
    caption margin term, each ``None`` where not asked for."""

    flow: torch.Tensor
    other: torch.Tensor | None = None
    caption: torch.Tensor | None = None


def flow_matching_terms(dit, target: torch.Tensor, condition: torch.Tensor, context: torch.Tensor,
                        rope: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                        weights: torch.Tensor | None = None, against_other: bool = False,
                        exaggerate: torch.Tensor | None = None, swapped_context: torch.Tensor | None = None,
                        swapped: torch.Tensor | None = None, margin: float = 0.25) -> FlowTerms:
    """The error of ``v(z_t, t)`` against the flow ``noise - target``, with ``z_t = (1 - t) target + t noise``; t in
    [0, 1], ``[B]``, or ``[B, F]`` for a time per latent frame. ``weights [B, 1, F, h, w]`` (optional) weigh the
    latent cells: each term is a weighted mean of squared errors over them.

    With ``against_other``, also the error against the flow of another sample in the batch (the one before it:
    its noise and clean latent), what contrastive flow matching subtracts; ``None`` when not asked or for a batch
    of one, which has no other sample.

    A latent frame at ``t = 0`` is given clean (rolling noise levels start many samples with their first frames
    done) and carries no loss: its target velocity ``noise - target`` is noise the input does not hold, so it
    would only add an irreducible error (1 per value) and, for a DiT that predicts the clean latent, a gradient
    scaled by ``1 / SAMPLE_MIN_T^2``.

    ``exaggerate`` (shape contrast, ``[B, z, F, h, w]``) is added to the clean latent the flow leads to, not to
    the one ``z_t`` is made from: the DiT learns to draw what sets a clip apart from others (its shapes, with
    ``train.shape_contrast`` times :attr:`Prepared.shape_delta`) more strongly than the clip holds it.

    ``swapped_context`` (caption contrast, ``[B, L, text_dim]``): the same samples' captions with a word swapped
    (their shapes, by ``train.caption_contrast``), for the samples where ``swapped [B]`` is 1. The DiT runs once
    more on them, and the caption term is the mean over those samples of how far their error under the swapped
    caption stays below ``1 + margin`` times their own error (which it does not move): a hinge that asks the
    swapped caption's velocity to miss this clip's flow, where the swapped caption is other clips' own."""
    tt = t.reshape(t.shape[0], 1, -1, 1, 1)
    z_t = (1 - tt) * target + tt * noise
    velocity = dit(z_t, t * 1000, context, condition, rope).float()
    flow = (noise - target).float() - (0 if exaggerate is None else exaggerate.float())
    weights = (tt > 0).float() if weights is None else weights.float() * (tt > 0)
    weights = weights.expand_as(velocity)
    total = weights.sum().clamp_min(1e-12)  # the terms are 0 when every frame is given

    def sample_errors(predicted: torch.Tensor, towards: torch.Tensor) -> torch.Tensor:  # [B], weighted sums
        return (weights * (predicted - towards).square()).flatten(1).sum(dim=1)

    own = sample_errors(velocity, flow)
    other = (sample_errors(velocity, flow.roll(1, dims=0)).sum() / total
             if against_other and len(flow) > 1 else None)
    caption = None
    if swapped_context is not None and swapped is not None and bool(swapped.any()):
        by_sample = weights.flatten(1).sum(dim=1).clamp_min(1e-12)
        miss = sample_errors(dit(z_t, t * 1000, swapped_context, condition, rope).float(), flow) / by_sample
        gap = torch.relu((1 + margin) * own.detach() / by_sample - miss)
        caption = (gap * swapped).sum() / swapped.sum()
    return FlowTerms(own.sum() / total, other, caption)


def flow_matching_loss(dit, target: torch.Tensor, condition: torch.Tensor, context: torch.Tensor,
                       rope: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                       weights: torch.Tensor | None = None, contrastive: float = 0.0) -> torch.Tensor:
    """``|v(z_t, t) - (noise - target)|^2``, the weighted mean of :func:`flow_matching_terms`.

    ``contrastive`` (contrastive flow matching, Stoica et al. 2025) subtracts that weight times the error against
    the flow of another sample in the batch, so that the velocity is pushed away from what other captions and
    conditions lead to, not only towards its own flow; a batch of one keeps the plain loss. The loss can then be
    negative."""
    terms = flow_matching_terms(dit, target, condition, context, rope, t, noise, weights, contrastive > 0)
    return contrastive_loss(terms.flow, terms.other, contrastive)


def contrasts(cfg: TrainConfig, latent_frames: int) -> bool:
    """Whether a batch of clips of ``latent_frames`` takes the contrastive term: ``train.contrastive`` is on and the
    clips are no longer than ``train.contrastive_max_frames`` frames at their level's rate (0: any length)."""
    frames = 4 * (latent_frames - 1) + 1
    return cfg.contrastive > 0 and frames <= (cfg.contrastive_max_frames or frames)


def contrastive_loss(flow: torch.Tensor, other: torch.Tensor | None, contrastive: float) -> torch.Tensor:
    """The loss from :func:`flow_matching_terms`: the own error less ``contrastive`` times the error against the
    other sample's flow; the plain own error where there is no other."""
    return flow if other is None else flow - contrastive * other


def rope_positions(rng: torch.Generator, intervals: torch.Tensor, latent_frames: int, t_max: int) -> torch.Tensor:
    """``t_start + j * interval`` per sample, ``t_start ~ U[0, t_max]`` (randomised temporal indexing): ``[B, F]``."""
    start = torch.randint(0, t_max + 1, (len(intervals),), generator=rng)
    return start[:, None] + torch.arange(latent_frames)[None] * intervals[:, None]


def batches(data: dict[int, Prepared], cfg: TrainConfig, rng: np.random.Generator) -> Iterator[tuple]:
    """Endless random batches, each from one clip length, chosen in proportion to the square root of its number
    of samples (long clips, few in the cache, are still visited often): (targets, conditions, intervals,
    captions, focus, shape_delta or None), float32."""
    lengths = sorted(data)
    weights = np.sqrt([len(data[n].captions) for n in lengths])
    weights /= weights.sum()
    while True:
        n = lengths[int(rng.choice(len(lengths), p=weights))]
        group = data[n]
        size = min(batch_size_for(cfg, n), len(group.captions))
        pick = rng.choice(len(group.captions), size=size, replace=False)
        index = torch.from_numpy(pick)
        yield (group.targets[index].float(), group.conditions[index].float(), group.intervals[index],
               [group.captions[i] for i in pick], group.focus[index].float(),
               None if group.shape_delta is None else group.shape_delta[index].float())


def learning_rate(step: int, peak: float, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


FOCUS_MARGIN = 2  # px around the pixels unlike the dominant colour that weigh as much as they do


def _off_dominant(video: torch.Tensor) -> torch.Tensor:
    """How far each pixel of ``video [B, 3, T, H, W]`` is from its frame's dominant (median) colour, in its most
    different channel: ``[B, 1, T, H, W]``."""
    median = video.flatten(3).median(dim=3).values[..., None, None]  # [B, 3, T, 1, 1]
    return (video - median).abs().amax(dim=1, keepdim=True)


def focus_weights(video: torch.Tensor, focus: float) -> torch.Tensor:
    """Per-pixel loss weights ``[B, 1, T, H, W]``: 1, plus up to ``focus`` where a pixel is unlike its frame's
    dominant (median) colour or within :data:`FOCUS_MARGIN` px of such a pixel. Small objects on a plain
    background then weigh as much as the background, and so do their edges on both sides: painting an object
    too large costs as much as painting it too small."""
    unlike = (_off_dominant(video) * 4).clamp(0, 1)
    side = 2 * FOCUS_MARGIN + 1
    near = F.max_pool3d(unlike, (1, side, side), stride=1, padding=(0, FOCUS_MARGIN, FOCUS_MARGIN))
    return 1 + focus * near


def latent_focus(video: torch.Tensor, spatial: int, temporal: int) -> torch.Tensor:
    """How much each latent cell shows of an object: ``[B, 3, T, H, W]`` in [-1, 1] (T = 1 + temporal * k) ->
    ``[B, 1, 1 + k, H / spatial, W / spatial]`` in [0, 1], the largest :func:`focus_weights` share (an object's
    pixels and the margin around them) over the cell's pixels: the first frame alone, then groups of
    ``temporal`` frames, as the VAE packs them."""
    near = focus_weights(video, 1.0) - 1  # [B, 1, T, H, W] in [0, 1]
    return F.max_pool3d(_packed_frames(near, temporal, torch.amax), (1, spatial, spatial))


def _packed_frames(pixels: torch.Tensor, temporal: int, reduce) -> torch.Tensor:
    """``[B, C, 1 + temporal * k, H, W]`` -> ``[B, C, 1 + k, H, W]`` as the VAE packs frames into latent frames:
    the first frame alone, then each group of ``temporal`` frames brought to one by ``reduce(x, dim=...)``."""
    groups = reduce(pixels[:, :, 1:].unflatten(2, (-1, temporal)), dim=3)
    return torch.cat([pixels[:, :, :1], groups], dim=2)


def contrast_cells(video: torch.Tensor, swapped: torch.Tensor, spatial: int, temporal: int) -> torch.Tensor:
    """The latent cells (as in :func:`latent_focus`) where shape contrast cannot fade the video's own objects:
    those that show none of them, and those that show more of them than ``swapped`` (the same scene with other
    shapes) shows of its own, where the video's shapes reach beyond the others. ``[B, 1, 1 + k, H / spatial,
    W / spatial]``, 0 or 1."""
    def cells(pixels: torch.Tensor) -> torch.Tensor:  # pixel counts per cell (a share of the cell's area)
        return F.avg_pool3d(_packed_frames(pixels, temporal, torch.sum), (1, spatial, spatial))

    def objects(frames: torch.Tensor) -> torch.Tensor:  # 1 at the pixels unlike the dominant colour
        return (_off_dominant(frames) > 0.1).float()

    own = objects(video)
    return ((cells(own) == 0) | (cells(own - objects(swapped)) > 0)).to(video.dtype)


def shape_cells(delta: torch.Tensor) -> torch.Tensor:
    """How much each latent cell is decided by the clip's shapes, from :attr:`Prepared.shape_delta` ``[B, z, F, h,
    w]``: the root mean square of the difference over the latent channels, capped at 1 (one standard deviation of
    the normalised latents), ``[B, 1, F, h, w]``. Near 0 in the background and the objects' insides, where a
    swapped shape leaves the latent as it was; near 1 at the outlines that set a square, ball or triangle apart."""
    return delta.float().square().mean(dim=1, keepdim=True).sqrt().clamp(max=1)


def vae_loss(vae, video: torch.Tensor, kl_weight: float, focus: float = 0.0,
             decoder_only: bool = False) -> tuple[torch.Tensor, dict[str, float]]:
    """Reconstruction (L1 + MSE, weighted by :func:`focus_weights`) of a sampled latent, plus a small KL to
    N(0, 1); ``video [B, 3, T, H, W]`` in [-1, 1]. ``decoder_only``: the encoder is frozen (no gradients, no KL),
    so its latents, which the DiT has learnt, stay what they are."""
    with torch.set_grad_enabled(torch.is_grad_enabled() and not decoder_only):
        mu, logvar = vae.posterior(video)
    logvar = logvar.float().clamp(-30, 20)
    mu = mu.float()
    z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
    l1, l2 = _reconstruction_errors(vae.reconstruct(z.to(video.dtype)).float(), video, focus)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).mean()
    if decoder_only:  # the terms stay tensors: the trainer reads them only when it logs them
        return l1 + l2, {"l1": l1.detach()}
    return l1 + l2 + kl_weight * kl, {"l1": l1.detach(), "kl": kl.detach()}


def decoder_loss(vae, latents: torch.Tensor, video: torch.Tensor, focus: float = 0.0
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The decoder phase's loss (:func:`vae_loss`'s reconstruction terms) on given normalised ``latents [B, z, F, h,
    w]`` (the DiT's, say) instead of the encoder's, against the clips ``video [B, 3, T, H, W]`` they stand for."""
    mean, std = vae.latent_stats()
    raw = (latents.float() * std + mean).to(video.dtype)
    l1, l2 = _reconstruction_errors(vae.reconstruct(raw).float(), video, focus)
    return l1 + l2, {"l1": l1.detach()}


def _reconstruction_errors(recon: torch.Tensor, video: torch.Tensor,
                           focus: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean L1 and squared error of ``recon`` against ``video``, weighted by :func:`focus_weights`."""
    error = (recon - video).abs()
    weights = focus_weights(video, focus) if focus else torch.ones_like(error[:, :1])
    return ((weights * error).sum() / (weights.sum() * 3), (weights * error.square()).sum() / (weights.sum() * 3))


@torch.no_grad()
def latent_statistics(vae, source: VideoSource, count: int, frames: int, first_index: int) -> tuple[list, list]:
    """Per-channel mean and std of the raw posterior means of ``count`` clips (the VAE config's normalisation)."""
    param = next(vae.parameters())
    values = []
    for i in range(count):
        clip, _ = source.clip(first_index + i, frames)
        mu, _ = vae.posterior(to_video(clip)[None].to(param.device, param.dtype))
        values.append(mu.float().cpu().transpose(0, 1).flatten(1))  # [z, n]
    stacked = torch.cat(values, dim=1)
    return stacked.mean(1).tolist(), stacked.std(1).clamp_min(1e-3).tolist()


def ema_decay_at(decay: float, step: int) -> float:
    """The EMA decay of update ``step`` (0-based) of a cycle: ``decay``, warmed up as ``(1 + step) / (10 + step)``
    while that is lower, so early weights (a random initialisation, in a run from scratch) fade out of the
    average instead of weighing ``decay ** steps`` at the end (29% after 1250 steps at 0.999)."""
    return min(decay, (1 + step) / (10 + step))


def ema_update(ema: dict[str, torch.Tensor], model: torch.nn.Module, decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * weights``, in place."""
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if value.is_floating_point():
                ema[name].mul_(decay).add_(value.detach().float(), alpha=1 - decay)


PHASES = ("vae", "stage1", "stage2", "classifier", "decoder")


def stage_plan(preset: Preset) -> list[tuple[str, int, float]]:
    """(phase, steps, learning rate) in order: the VAE (if trained), stage 1, stage 2, the shape classifier and
    the VAE decoder's fine-tuning (if any); phases with no steps are left out."""
    cfg = preset.train
    if cfg is None:
        raise ConfigError(f"preset {preset.name} has no train section", hint="use a preset made for training")
    phases = [("vae", cfg.vae_steps, cfg.vae_lr), ("stage1", cfg.stage1_steps, cfg.stage1_lr),
              ("stage2", cfg.stage2_steps, cfg.stage2_lr), ("classifier", cfg.classifier_steps, cfg.classifier_lr),
              ("decoder", cfg.decoder_steps, cfg.decoder_lr)]
    return [p for p in phases if p[1] > 0]
