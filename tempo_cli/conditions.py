"""Multi-mask conditions: condition frames at their true time positions in an otherwise zero video.

Every task is the same mechanism. Text-to-video conditions on nothing (zero video, zero mask); image-to-video
on frame 0; first+last frame on both ends; keyframes on any frames; refinement on the coarser level's
decoded frames; continuation on the last seconds of an existing video.

The DiT reads ``y = [mask, condition latents]``: the condition video is VAE-encoded like any video, and
the 4-channel mask follows the VAE's packing of pixel frames into latent frames (latent 0 <- pixel frame 0
repeated 4 times; latent k >= 1 <- pixel frames 4k-3 .. 4k).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from tempo_cli.plan import TEMPORAL_FACTOR as FRAMES_PER_LATENT


def pack_mask(pixel_mask: torch.Tensor) -> torch.Tensor:
    """Per-pixel-frame mask ``[..., T]`` (T = 4k+1) -> the DiT's mask channels ``[..., 4, 1 + (T-1)/4]``."""
    first = pixel_mask[..., :1].expand(*pixel_mask.shape[:-1], FRAMES_PER_LATENT)  # [..., 4]
    rest = pixel_mask[..., 1:].unflatten(-1, (-1, FRAMES_PER_LATENT))  # [..., k, 4]
    return torch.cat([first[..., None, :], rest], dim=-2).transpose(-1, -2)  # [..., 4, 1+k]


def condition_video(frames: int, height: int, width: int, anchors: Mapping[int, torch.Tensor],
                    dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """A zero video with ``anchors`` (position -> ``[3, H, W]`` in [-1, 1]) placed at their positions.

    Returns the video ``[3, T, H, W]`` and the pixel mask ``[T]`` (1 where a frame is conditioned).
    """
    video = torch.zeros(3, frames, height, width, dtype=dtype)
    mask = torch.zeros(frames, dtype=dtype)
    for position, frame in anchors.items():
        if not 0 <= position < frames:
            raise ValueError(f"anchor position {position} outside a {frames}-frame chunk")
        video[:, position] = frame.to(dtype)
        mask[position] = 1
    return video, mask


def anchors_from_layout(source_frame: Sequence[int], coarse: torch.Tensor) -> dict[int, torch.Tensor]:
    """Anchors of a chunk from its layout: position i holds ``coarse[:, source_frame[i]]`` unless it is -1.

    ``coarse`` is the coarser level's decoded video ``[3, N, H, W]``.
    """
    return {i: coarse[:, src] for i, src in enumerate(source_frame) if src >= 0}


def condition_latents(vae, videos: torch.Tensor, pixel_masks: torch.Tensor) -> torch.Tensor:
    """``y`` for the DiT: ``videos [B, 3, T, H, W]``, ``pixel_masks [B, T]`` -> ``[B, 4 + z, F, H/8, W/8]``.

    A chunk with nothing conditioned still gets its (zero) video encoded, as the release does.
    """
    latents = vae.encode(videos)  # [B, z, F, h, w]
    mask = pack_mask(pixel_masks).to(latents.dtype)  # [B, 4, F]
    mask = mask[..., None, None].expand(-1, -1, -1, *latents.shape[-2:])
    return torch.cat([mask, latents], dim=1)
