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
from typing import Iterator, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from tempo_cli.conditions import condition_video, pack_mask
from tempo_cli.config import Preset, TrainConfig


class VideoSource(Protocol):
    """Training videos: clip ``index`` as ``frames`` uint8 frames ``[T, H, W, 3]`` at the preset's fps."""

    def clip(self, index: int, frames: int) -> tuple[np.ndarray, str]: ...


@dataclass(frozen=True)
class ClipLayout:
    """One training clip: ``frames`` frames at frame ``interval``, conditioned at ``anchors`` (positions)."""

    interval: int
    frames: int
    anchors: tuple[int, ...]


def clip_lengths(cfg: TrainConfig) -> list[int]:
    """The 4k+1 clip lengths a run trains on: 5 up to ``clip_frames``, a few buckets so batches stack."""
    lengths = sorted({cfg.clip_frames, max(5, (cfg.clip_frames - 1) // 2 // 4 * 4 + 1), 5})
    return [n for n in lengths if n <= cfg.clip_frames]


def stage1_layout(rng: np.random.Generator, cfg: TrainConfig, interval: int) -> ClipLayout:
    """Multi-mask at one frame rate: nothing, the first frame, first and last, a leading context, or up to
    ``max_conditioned`` of the frames at random positions."""
    frames = int(rng.choice(clip_lengths(cfg)))
    most = max(1, int(cfg.max_conditioned * frames))
    mode = rng.choice(["none", "first", "first_last", "prefix", "random"], p=[0.25, 0.2, 0.15, 0.15, 0.25])
    anchors: set[int] = set()
    if mode == "first":
        anchors = {0}
    elif mode == "first_last":
        anchors = {0, frames - 1}
    elif mode == "prefix":
        anchors = set(range(int(rng.integers(1, most + 1))))
    elif mode == "random":
        anchors = set(rng.choice(frames, size=int(rng.integers(1, most + 1)), replace=False).tolist())
    return ClipLayout(interval, frames, tuple(sorted(anchors)))


def stage2_layout(rng: np.random.Generator, cfg: TrainConfig, intervals: Sequence[int]) -> ClipLayout:
    """Next-frame-rate: a level; every coarser level's frame (each ``ratio``-th position) is an anchor."""
    level = int(rng.integers(len(intervals)))
    frames = int(rng.choice(clip_lengths(cfg)))
    if level == 0:
        return ClipLayout(intervals[0], frames, ())
    ratio = intervals[level - 1] // intervals[level]
    return ClipLayout(intervals[level], frames, tuple(range(0, frames, ratio)))


@dataclass
class Prepared:
    """Encoded samples of one clip length: targets ``[N, z, F, h, w]``, conditions ``[N, 4 + z, F, h, w]``."""

    targets: torch.Tensor
    conditions: torch.Tensor
    intervals: torch.Tensor  # [N]
    captions: list[str]


def to_video(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` -> float ``[3, T, H, W]`` in [-1, 1]."""
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1


@torch.no_grad()
def prepare(source: VideoSource, vae, layouts: Sequence[ClipLayout], first_index: int) -> dict[int, Prepared]:
    """Render, encode and condition one sample per layout (clip ``first_index + i``), grouped by length."""
    param = next(vae.parameters())
    groups: dict[int, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, str]]] = {}
    for i, layout in enumerate(layouts):
        frames, caption = source.clip(first_index + i, (layout.frames - 1) * layout.interval + 1)
        video = to_video(frames[::layout.interval])  # [3, T, H, W]
        anchors = {p: video[:, p] for p in layout.anchors}
        cond, mask = condition_video(layout.frames, video.shape[2], video.shape[3], anchors)
        both = vae.encode(torch.stack([video, cond]).to(param.device, param.dtype)).float().cpu()
        groups.setdefault(layout.frames, []).append((both[0], both[1], mask, layout.interval, caption))
    out = {}
    for frames, items in groups.items():
        targets, conds, masks, intervals, captions = zip(*items)
        latents = torch.stack(conds)
        packed = pack_mask(torch.stack(masks))[..., None, None].expand(-1, -1, -1, *latents.shape[-2:])
        out[frames] = Prepared(torch.stack(targets), torch.cat([packed, latents], dim=1),
                               torch.tensor(intervals), list(captions))
    return out


def sample_timesteps(rng: torch.Generator, n: int, shift: float) -> torch.Tensor:
    """Flow-matching times in (0, 1) with the schedule's shift: ``shift*u / (1 + (shift-1)*u)``, u ~ U(0, 1)."""
    u = torch.rand(n, generator=rng).clamp(1e-3, 1 - 1e-3)
    return shift * u / (1 + (shift - 1) * u)


def flow_matching_loss(dit, target: torch.Tensor, condition: torch.Tensor, context: torch.Tensor,
                       rope: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``|v(z_t, t) - (noise - target)|^2`` with ``z_t = (1 - t) target + t noise``; t in (0, 1), ``[B]``."""
    tt = t.view(-1, 1, 1, 1, 1)
    z_t = (1 - tt) * target + tt * noise
    velocity = dit(z_t, t * 1000, context, condition, rope)
    return F.mse_loss(velocity.float(), (noise - target).float())


def rope_positions(rng: torch.Generator, intervals: torch.Tensor, latent_frames: int, t_max: int) -> torch.Tensor:
    """``t_start + j * interval`` per sample, ``t_start ~ U[0, t_max]`` (randomised temporal indexing): ``[B, F]``."""
    start = torch.randint(0, t_max + 1, (len(intervals),), generator=rng)
    return start[:, None] + torch.arange(latent_frames)[None] * intervals[:, None]


def batches(data: dict[int, Prepared], batch_size: int, rng: np.random.Generator) -> Iterator[tuple]:
    """Endless random batches, each from one clip length: (targets, conditions, intervals, captions)."""
    lengths = sorted(data)
    weights = np.array([len(data[n].captions) for n in lengths], dtype=float)
    while True:
        n = lengths[int(rng.choice(len(lengths), p=weights / weights.sum()))]
        group = data[n]
        pick = rng.choice(len(group.captions), size=min(batch_size, len(group.captions)), replace=False)
        index = torch.from_numpy(pick)
        yield group.targets[index], group.conditions[index], group.intervals[index], [group.captions[i] for i in pick]


def learning_rate(step: int, peak: float, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def vae_loss(vae, video: torch.Tensor, kl_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Reconstruction (L1 + MSE) of a sampled latent, plus a small KL to N(0, 1); ``video [B, 3, T, H, W]``."""
    mu, logvar = vae.posterior(video)
    logvar = logvar.clamp(-30, 20)
    z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
    recon = vae.reconstruct(z)
    l1, l2 = (recon - video).abs().mean(), F.mse_loss(recon, video)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).mean()
    return l1 + l2 + kl_weight * kl, {"l1": l1.item(), "kl": kl.item()}


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


def ema_update(ema: dict[str, torch.Tensor], model: torch.nn.Module, decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * weights``, in place."""
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if value.is_floating_point():
                ema[name].mul_(decay).add_(value.detach().float(), alpha=1 - decay)


def stage_plan(preset: Preset) -> list[tuple[str, int, float]]:
    """(phase, steps, learning rate) in order: the VAE (if trained), stage 1, stage 2."""
    cfg = preset.train
    if cfg is None:
        from tempo_cli.errors import ConfigError

        raise ConfigError(f"preset {preset.name} has no train section", hint="use a preset made for training")
    phases = [("vae", cfg.vae_steps, cfg.vae_lr), ("stage1", cfg.stage1_steps, cfg.stage1_lr),
              ("stage2", cfg.stage2_steps, cfg.stage2_lr)]
    return [p for p in phases if p[1] > 0]
