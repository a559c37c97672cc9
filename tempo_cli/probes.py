"""Probes of a multi-mask DiT: what a (toy) model has learnt, measured on its inputs and outputs rather than on
its videos. ``benchmarks/toy_probes.py`` prints them for a preset.

* :func:`invisible_directions`: the directions of a noisy-latent patch that the patch embedding maps to (almost)
  nothing. A DiT narrower than its patches (the toy model's 4x4 patches of 16 channels are 256 values, its width
  192) cannot see them, so it cannot predict the noise there: an irreducible part of the velocity loss, and the
  starting noise stays in those directions of every latent it generates (:func:`direction_energy` shows it).
* :func:`temporal_reach`: how much the velocity at each latent frame changes when one latent frame's input is
  replaced: how far in time the model looks.
* :func:`track_spread`: how far apart the object tracks of several videos are; videos of one seed that differ only
  in the prompt's motion should not share a track.
* :func:`velocity_loss` with :func:`swap_words`: how much a word of the prompt matters, as the rise of the
  velocity loss on true clips when the caption names another motion or colour (none: the word is not used).
* :func:`next_frame_times`: the times of a rolling sampler's view of one latent frame (the ones before it clean,
  the ones after it pure noise), for :func:`velocity_loss` on that frame: whether the model continues what it is
  given, and which way the motion word makes it go.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from tempo_cli.models.dit import patch_values
from tempo_cli.toyworld import DetectedObject, swap_words
from tempo_cli.training import flow_matching_loss


def invisible_directions(dit, tolerance: float = 0.05) -> torch.Tensor:
    """Orthonormal rows ``[k, C*ph*pw]`` spanning the patch directions of the noisy latent (``C`` channels, one
    latent frame) that the patch embedding scales by less than ``tolerance`` times its largest gain: its null space
    when a patch has more values than the model's width, and the directions it all but ignores. Patches are flattened
    channel-major (``c, ph, pw``), as :func:`patch_rows` does. Only ``patch_size[0] == 1`` is supported."""
    pt, ph, pw = dit.config.patch_size
    if pt != 1:
        raise ValueError(f"invisible_directions needs a temporal patch size of 1, got {pt}")
    channels = dit.config.out_dim
    weight = dit.patch_embedding.weight.detach().float()[:, :channels].reshape(len(dit.patch_embedding.weight), -1)
    _, gains, rows = torch.linalg.svd(weight, full_matrices=True)  # rows [C*ph*pw, C*ph*pw]
    gains = torch.cat([gains, gains.new_zeros(rows.shape[0] - len(gains))])
    return rows[gains < tolerance * gains.max()]


def patch_rows(latents: torch.Tensor, patch: tuple[int, int]) -> torch.Tensor:
    """``[B, C, F, H, W]`` -> one row per (frame, patch): ``[B*F*(H/ph)*(W/pw), C*ph*pw]``, channel-major, as the
    patch embedding reads them."""
    return patch_values(latents, (1, *patch)).flatten(0, 1)


def direction_energy(latents: torch.Tensor, directions: torch.Tensor, patch: tuple[int, int]) -> float:
    """Mean square of the latents' patches ``[B, C, F, H, W]`` along each of ``directions [k, C*ph*pw]`` (1 for
    standard normal noise); nan when there are no directions."""
    if len(directions) == 0:
        return math.nan
    return float((patch_rows(latents.float(), patch) @ directions.T.float()).square().mean())


@torch.no_grad()
def temporal_reach(dit, z: torch.Tensor, t: float, context: torch.Tensor, y: torch.Tensor, rope: torch.Tensor,
                   frame: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """The rms change of the velocity at every latent frame ``[F]`` when latent frame ``frame`` of the noisy
    latents ``z [B, C, F, H, W]`` at noise level ``t`` in (0, 1) is replaced by fresh standard normal noise."""
    if not 0 <= frame < z.shape[2]:
        raise ValueError(f"frame {frame} is outside the {z.shape[2]} latent frames")
    dtype = next(dit.parameters()).dtype
    changed = z.clone()
    changed[:, :, frame] = torch.randn(changed[:, :, frame].shape, generator=generator)
    timestep = torch.full((z.shape[0],), t * 1000.0)
    before = dit(z.to(dtype), timestep, context.to(dtype), y.to(dtype), rope).float()
    after = dit(changed.to(dtype), timestep, context.to(dtype), y.to(dtype), rope).float()
    return (after - before).square().mean(dim=(0, 1, 3, 4)).sqrt()


def track_spread(tracks: Sequence[Sequence[DetectedObject | None]]) -> float:
    """The mean distance, px, between the main objects of every pair of ``tracks`` (per frame, the main object or
    ``None``) over the frames where both have one; 0 when the tracks coincide. nan when no pair shares a frame."""
    distances = [math.dist(a.centre, b.centre)
                 for i, first in enumerate(tracks) for second in tracks[i + 1:]
                 for a, b in zip(first, second) if a is not None and b is not None]
    return sum(distances) / len(distances) if distances else math.nan


@torch.no_grad()
def velocity_loss(dit, x0: torch.Tensor, t: float | torch.Tensor, context: torch.Tensor, y: torch.Tensor,
                  rope: torch.Tensor, seed: int = 0, frames: slice = slice(None)) -> float:
    """The flow-matching loss of ``dit`` on the clean latents ``x0 [B, C, F, H, W]`` noised to ``t`` with the noise
    of ``seed`` (the same noise for the same seed, so captions can be compared), over the latent frames ``frames``.
    ``t`` in [0, 1) is one time for every latent frame, or ``[F]`` one per latent frame (0: that frame given clean,
    as diffusion forcing trains and staggered sampling runs)."""
    dtype = next(dit.parameters()).dtype
    times = torch.as_tensor(t, dtype=torch.float32).reshape(-1)
    batch, _, latent_frames = x0.shape[:3]
    if len(times) not in (1, latent_frames):
        raise ValueError(f"t must be one time or one per latent frame ({latent_frames}), got {len(times)}")
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    chosen = torch.zeros(1, 1, latent_frames, 1, 1)
    chosen[:, :, frames] = 1

    def in_dtype(z, timestep, ctx, cond, positions):
        return dit(z.to(dtype), timestep, ctx.to(dtype), cond.to(dtype), positions)

    times = times[None].expand(batch, -1) if len(times) > 1 else times.expand(batch)
    return float(flow_matching_loss(in_dtype, x0.float(), y, context, rope, times, noise, chosen))


PURE_NOISE = 0.999  # the time of a latent frame that has not started (the DiT never sees exactly 1)


def next_frame_times(frames: int, k: int, t: float, context: bool = True) -> torch.Tensor:
    """One time per latent frame ``[frames]`` for :func:`velocity_loss` on latent frame ``k`` at time ``t``: the
    frames before ``k`` clean (``context``; else at ``t`` too, nothing given) and the frames after it pure noise,
    as a rolling sampler (``sampler.lag``) runs a chunk."""
    if not 0 <= k < frames or not 0 <= t < 1:
        raise ValueError(f"need 0 <= k < frames ({frames}) and t in [0, 1), got k={k}, t={t}")
    times = torch.full((frames,), PURE_NOISE)
    times[:k] = 0.0 if context else t
    times[k] = t
    return times

