"""The Wan2.1 causal video VAE: as released, 8x spatial and 4x temporal compression to 16 channels.

The model is causal in time. A clip of ``1 + 4k`` frames is encoded as its first frame alone, then groups of
four frames, each group becoming one latent frame; decoding runs one latent frame at a time. Every causal
layer carries the few frames of the previous chunk it needs in a :data:`Cache`, a plain dict created per call
and passed down explicitly, so activation memory does not grow with the clip length. Large frames can also be
split into overlapping spatial tiles, each with its own cache, blended with linear ramps.

Module attribute names are those of the released ``Wan2.1_VAE.pth`` (``encoder.downsamples.3.residual.2``,
``decoder.upsamples.3.time_conv``, ...), so the checkpoint loads without renaming.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from tempo_cli.config import VAEConfig
from tempo_cli.errors import ConfigError, UsageError

# Per causal layer of one encode/decode pass: the input frames it needs from the previous chunk.
Cache = dict[nn.Module, torch.Tensor]
# One spatial tile: ((h0, h1), (w0, w1)) on the latent grid.
Span = tuple[tuple[int, int], tuple[int, int]]


_MKLDNN = torch.backends.mkldnn.is_available() and hasattr(torch, "mkldnn_convolution")


class CausalConv3d(nn.Conv3d):
    """A Conv3d that sees only the past along time: ``2 * padding_t`` frames of padding in front, none after.

    With a cache, that front padding is replaced by the last input frames of the previous chunk, so running a
    clip chunk by chunk gives the same result as running it whole.
    """

    def __init__(self, in_dim: int, out_dim: int, kernel: int | tuple[int, int, int],
                 stride: int | tuple[int, int, int] = 1, padding: int | tuple[int, int, int] = 0):
        super().__init__(in_dim, out_dim, kernel, stride=stride)
        pad_t, pad_h, pad_w = (padding,) * 3 if isinstance(padding, int) else padding
        self.history = 2 * pad_t  # frames from before a chunk that its first outputs need
        self.space_pad = (pad_w, pad_w, pad_h, pad_h)

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:  # [B, C, T, H, W]
        past = cache.get(self) if cache is not None and self.history else None
        if past is not None:
            x = torch.cat([past, x], dim=2)
        if cache is not None and self.history:
            cache[self] = x[:, :, -self.history:].clone()
        front = self.history - (0 if past is None else past.shape[2])
        x = F.pad(x, (*self.space_pad, front, 0))
        if _MKLDNN and x.device.type == "cpu" and x.dtype == self.weight.dtype == torch.float32 \
                and not torch.is_autocast_enabled("cpu"):
            # torch sends small float32 batches to its slow native conv3d; oneDNN is up to ~9x faster there
            return torch.mkldnn_convolution(x, self.weight, self.bias, (0, 0, 0), self.stride, self.dilation,
                                            self.groups)
        return super().forward(x)


class RMSNorm(nn.Module):
    """Scales each position's channel vector to norm sqrt(dim), times a learned gain; float32 inside."""

    def __init__(self, dim: int, images: bool = False):
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1) if images else torch.ones(dim, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, ...]
        return (F.normalize(x.float(), dim=1) * self.scale * self.gamma).to(x.dtype)


def _per_frame(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2-D layer to every frame: [B, C, T, H, W] -> [B, C', T, H', W']."""
    y = layer(x.transpose(1, 2).flatten(0, 1))  # [B*T, C', H', W']
    return y.unflatten(0, (x.shape[0], -1)).transpose(1, 2)


class ResidualBlock(nn.Module):
    """Two (RMSNorm, SiLU, causal 3x3x3 conv) layers plus a skip, a 1x1x1 conv where the width changes."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.residual = nn.Sequential(
            RMSNorm(in_dim), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim), nn.SiLU(), nn.Identity(),  # index 5 held the (training-only) dropout
            CausalConv3d(out_dim, out_dim, 3, padding=1))
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:  # [B, in, T, H, W] -> [B, out, T, H, W]
        return self.shortcut(x) + _run(self.residual, x, cache)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the positions of each frame (nothing crosses frames)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T, H, W]
        b, c, t, h, w = x.shape
        frames = self.norm(x.transpose(1, 2).flatten(0, 1))  # [B*T, C, H, W]
        qkv = self.to_qkv(frames).flatten(2).transpose(1, 2).unsqueeze(1)  # [B*T, 1, H*W, 3C]
        out = F.scaled_dot_product_attention(*qkv.chunk(3, dim=-1))  # [B*T, 1, H*W, C]
        out = self.proj(out.squeeze(1).transpose(1, 2).reshape(b * t, c, h, w))
        return x + out.unflatten(0, (b, t)).transpose(1, 2)


class Downsample(nn.Module):
    """Halves height and width; with ``temporal``, also halves the frames that follow the first.

    The first chunk passes through unchanged in time. Each later chunk is prefixed with the previous chunk's
    last frame and convolved with stride 2, so 4 frames (+1 carried) become 2, and 2 (+1) become 1.
    """

    def __init__(self, dim: int, temporal: bool):
        super().__init__()
        self.temporal = temporal
        self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        if temporal:
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        x = _per_frame(self.resample, x)  # [B, C, T, H/2, W/2]
        if self.temporal:
            past = cache.get(self)
            cache[self] = x[:, :, -1:].clone()
            if past is not None:
                x = self.time_conv(torch.cat([past, x], dim=2))  # [B, C, T/2, H/2, W/2]
        return x


class Upsample(nn.Module):
    """Doubles height and width and halves the channels; with ``temporal``, doubles frames after the first.

    ``time_conv`` makes two frames (channel halves, interleaved) from each input frame. It skips the first
    chunk, so the first frame stays single, and sees only frames from the second chunk on.
    """

    def __init__(self, dim: int, temporal: bool):
        super().__init__()
        self.temporal = temporal
        self.resample = nn.Sequential(nn.Upsample(scale_factor=(2.0, 2.0), mode="nearest-exact"),
                                      nn.Conv2d(dim, dim // 2, 3, padding=1))
        if temporal:
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))

    def forward(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        if self.temporal:
            if self.time_conv in cache:
                b, c, t, h, w = x.shape
                x = self.time_conv(x, cache).unflatten(1, (2, c))  # [B, 2, C, T, H, W]
                x = x.permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)
            else:  # an empty history: from the next chunk on, time_conv runs, starting from zero padding
                cache[self.time_conv] = x[:, :, :0].clone()
        return _per_frame(self.resample, x)  # [B, C/2, T', 2H, 2W]


_CAUSAL = (CausalConv3d, ResidualBlock, Downsample, Upsample)


def _run(layers: nn.Sequential, x: torch.Tensor, cache: Cache) -> torch.Tensor:
    for layer in layers:
        x = layer(x, cache) if isinstance(layer, _CAUSAL) else layer(x)
    return x


class Encoder3d(nn.Module):
    """[B, 3, T, H, W] -> [B, out_dim, latent frames, H/8, W/8] for one chunk (statistics, not yet conv1)."""

    def __init__(self, config: VAEConfig, out_dim: int):
        super().__init__()
        dims = [config.dim * m for m in (1, *config.dim_mult)]
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        blocks: list[nn.Module] = []
        for i, (in_dim, dim) in enumerate(zip(dims[:-1], dims[1:])):
            for j in range(config.num_res_blocks):
                blocks.append(ResidualBlock(in_dim if j == 0 else dim, dim))
            if i < len(config.temporal_downsample):
                blocks.append(Downsample(dim, config.temporal_downsample[i]))
        self.downsamples = nn.Sequential(*blocks)
        self.middle = nn.Sequential(ResidualBlock(dims[-1], dims[-1]), AttentionBlock(dims[-1]),
                                    ResidualBlock(dims[-1], dims[-1]))
        self.head = nn.Sequential(RMSNorm(dims[-1]), nn.SiLU(), CausalConv3d(dims[-1], out_dim, 3, padding=1))

    def forward(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        x = self.conv1(x, cache)
        for layers in (self.downsamples, self.middle, self.head):
            x = _run(layers, x, cache)
        return x


class Decoder3d(nn.Module):
    """[B, z_dim, latent frames, h, w] -> [B, 3, frames, 8h, 8w] for one chunk."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        dims = [config.dim * m for m in (config.dim_mult[-1], *reversed(config.dim_mult))]
        temporal_upsample = config.temporal_downsample[::-1]
        self.conv1 = CausalConv3d(config.z_dim, dims[0], 3, padding=1)
        self.middle = nn.Sequential(ResidualBlock(dims[0], dims[0]), AttentionBlock(dims[0]),
                                    ResidualBlock(dims[0], dims[0]))
        blocks: list[nn.Module] = []
        for i, (in_dim, dim) in enumerate(zip(dims[:-1], dims[1:])):
            in_dim = in_dim // 2 if i > 0 else in_dim  # every Upsample halves the channels
            for j in range(config.num_res_blocks + 1):
                blocks.append(ResidualBlock(in_dim if j == 0 else dim, dim))
            if i < len(temporal_upsample):
                blocks.append(Upsample(dim, temporal_upsample[i]))
        self.upsamples = nn.Sequential(*blocks)
        self.head = nn.Sequential(RMSNorm(dims[-1]), nn.SiLU(), CausalConv3d(dims[-1], 3, 3, padding=1))

    def forward(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        x = self.conv1(x, cache)
        for layers in (self.middle, self.upsamples, self.head):
            x = _run(layers, x, cache)
        return x


class CausalVideoVAE(nn.Module):
    """The Wan2.1 video VAE (``WanVAE_``): pixels in [-1, 1] <-> latents normalised per channel.

    Inputs may live on another device (a long clip in CPU memory): each chunk is moved to the model's device
    and dtype, and results are returned there. ``tile=(height, width)`` in pixels (multiples of the spatial
    factor) splits frames into tiles overlapping by ``tile_overlap`` pixels (default: a quarter of the smaller
    tile side). Tiling is off by default, and a tile as large as the frame changes nothing.
    """

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder3d(config, 2 * config.z_dim)
        self.conv1 = CausalConv3d(2 * config.z_dim, 2 * config.z_dim, 1)
        self.conv2 = CausalConv3d(config.z_dim, config.z_dim, 1)
        self.decoder = Decoder3d(config)

    def encode(self, video: torch.Tensor, *, tile: tuple[int, int] | None = None,
               tile_overlap: int | None = None) -> torch.Tensor:
        """[B, 3, T, H, W] in [-1, 1], T = 1 + 4k -> normalised posterior mean [B, z_dim, 1 + k, H/8, W/8]."""
        self._check_video(video)
        sf, tf = self.config.spatial_factor, self.config.temporal_factor
        overlap = _overlap(tile, tile_overlap, sf)
        tiles = _tiles((video.shape[3] // sf, video.shape[4] // sf), tile, overlap, sf)
        chunks = [(0, 1)] + [(s, s + tf) for s in range(1, video.shape[2], tf)]  # first frame, then groups
        mean, std = self.latent_stats()

        def step(x: torch.Tensor, cache: Cache) -> torch.Tensor:
            stats = self.conv1(self.encoder(x.to(self.conv1.weight.dtype), cache))  # [B, 2z, t, h, w]
            mu = stats.chunk(2, dim=1)[0]  # the posterior mean; the log-variance is not used
            return ((mu.float() - mean) / std).to(mu.dtype)

        parts = self._stream(step, video, chunks, tiles, (sf, 1), overlap // sf)
        return torch.cat(list(parts), dim=2)

    def decode(self, latents: torch.Tensor, *, tile: tuple[int, int] | None = None,
               tile_overlap: int | None = None) -> torch.Tensor:
        """Normalised [B, z_dim, F, h, w] -> video [B, 3, 1 + 4(F-1), 8h, 8w] clamped to [-1, 1]."""
        return torch.cat(list(self.decode_frames(latents, tile=tile, tile_overlap=tile_overlap)), dim=2)

    def decode_frames(self, latents: torch.Tensor, *, tile: tuple[int, int] | None = None,
                      tile_overlap: int | None = None) -> Iterator[torch.Tensor]:
        """Like :meth:`decode`, one latent frame at a time: yields [B, 3, 1, H, W], then [B, 3, 4, H, W]s."""
        if latents.ndim != 5 or latents.shape[1] != self.config.z_dim:
            raise UsageError(f"latents must be [batch, {self.config.z_dim}, frames, height, width], "
                             f"got shape {tuple(latents.shape)}")
        sf = self.config.spatial_factor
        overlap = _overlap(tile, tile_overlap, sf)
        tiles = _tiles(tuple(latents.shape[3:]), tile, overlap, sf)
        chunks = [(i, i + 1) for i in range(latents.shape[2])]
        mean, std = self.latent_stats()

        def step(z: torch.Tensor, cache: Cache) -> torch.Tensor:
            x = self.conv2((z.float() * std + mean).to(self.conv2.weight.dtype))
            return self.decoder(x, cache).clamp(-1, 1)  # [B, 3, 1 or 4, 8h, 8w]

        return self._stream(step, latents, chunks, tiles, (1, sf), overlap)

    def posterior(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For training: raw (un-normalised) posterior mean and log-variance ``[B, z, 1 + k, h, w]``, with
        gradients; chunked in time exactly like :meth:`encode`, untiled."""
        self._check_video(video)
        tf = self.config.temporal_factor
        cache: Cache = {}
        parts = [self.conv1(self.encoder(video[:, :, t0:t0 + (1 if t0 == 0 else tf)], cache))
                 for t0 in [0, *range(1, video.shape[2], tf)]]
        return torch.cat(parts, dim=2).chunk(2, dim=1)

    def reconstruct(self, raw: torch.Tensor) -> torch.Tensor:
        """For training: raw latents ``[B, z, F, h, w]`` -> video ``[B, 3, 1 + 4(F-1), H, W]`` (not clamped),
        with gradients; one latent frame at a time like :meth:`decode`."""
        cache: Cache = {}
        x = self.conv2(raw)
        return torch.cat([self.decoder(x[:, :, i:i + 1], cache) for i in range(x.shape[2])], dim=2)

    def latent_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel latent mean and std, [1, z, 1, 1, 1] float32, made on the model's device per call."""
        device = self.conv1.weight.device
        mean = torch.tensor(self.config.latents_mean, dtype=torch.float32, device=device)
        std = torch.tensor(self.config.latents_std, dtype=torch.float32, device=device)
        return mean.view(1, -1, 1, 1, 1), std.view(1, -1, 1, 1, 1)

    def _check_video(self, video: torch.Tensor) -> None:
        if video.ndim != 5 or video.shape[1] != 3:
            raise UsageError(f"video must be [batch, 3, frames, height, width], got shape {tuple(video.shape)}")
        frames, (height, width) = video.shape[2], video.shape[3:]
        tf, sf = self.config.temporal_factor, self.config.spatial_factor
        if frames < 1 or (frames - 1) % tf:
            below = 1 + tf * ((frames - 1) // tf)
            nearest = " or ".join(str(n) for n in (below, below + tf) if n >= 1)
            raise UsageError(f"the VAE encodes 1 + {tf}k frames (1, {1 + tf}, {1 + 2 * tf}, ...), got {frames}",
                             hint=f"trim or pad the clip to {nearest} frames")
        if height % sf or width % sf:
            raise UsageError(f"frame size must be a multiple of {sf}, got {height}x{width}",
                             hint=f"crop or resize to {height // sf * sf}x{width // sf * sf}")

    @torch.no_grad()
    def _stream(self, step: Callable[[torch.Tensor, Cache], torch.Tensor], x: torch.Tensor,
                chunks: list[tuple[int, int]], tiles: list[Span], scale: tuple[int, int],
                ramp: int) -> Iterator[torch.Tensor]:
        """Run ``step`` over the time chunks of ``x`` in order, one cache per tile; yield each output chunk.

        ``tiles`` are spans on the latent grid, ``scale`` = (input, output) pixels per latent. Where tiles
        overlap, outputs are averaged with weights rising linearly over ``ramp`` output samples.
        """
        (s_in, s_out), device = scale, self.conv1.weight.device
        height, width = x.shape[3] // s_in * s_out, x.shape[4] // s_in * s_out  # of the output
        caches: list[Cache] = [{} for _ in tiles]
        for t0, t1 in chunks:
            if len(tiles) == 1:
                yield step(x[:, :, t0:t1].to(device), caches[0])
                continue
            total = weight = None
            for ((h0, h1), (w0, w1)), cache in zip(tiles, caches):
                y = step(x[:, :, t0:t1, h0 * s_in:h1 * s_in, w0 * s_in:w1 * s_in].to(device), cache)
                if total is None:
                    total = y.new_zeros(*y.shape[:3], height, width, dtype=torch.float32)  # [B, C, t, H, W]
                    weight = y.new_zeros(height, width, dtype=torch.float32)
                wgt = _ramp(y.shape[3], ramp, h0 > 0, h1 * s_out < height, device)[:, None] \
                    * _ramp(y.shape[4], ramp, w0 > 0, w1 * s_out < width, device)  # [tile h, tile w]
                rows, cols = slice(h0 * s_out, h1 * s_out), slice(w0 * s_out, w1 * s_out)
                total[..., rows, cols] += y.float() * wgt
                weight[rows, cols] += wgt
            yield (total / weight).to(y.dtype)


def _overlap(tile: tuple[int, int] | None, overlap: int | None, sf: int) -> int:
    """Tile overlap in pixels: as given, or a quarter of the smaller tile side (0 without tiles)."""
    if tile is None:
        return 0
    return min(tile) // 4 // sf * sf if overlap is None else overlap


def _tiles(grid: tuple[int, int], tile: tuple[int, int] | None, overlap: int, sf: int) -> list[Span]:
    """Tile spans ((h0, h1), (w0, w1)) on the latent grid; ``tile`` and ``overlap`` are in pixels."""
    if tile is None:
        return [((0, grid[0]), (0, grid[1]))]
    if len(tile) != 2 or min(tile) <= 0 or any(t % sf for t in tile):
        raise ConfigError(f"tile must be (height, width) in pixels, positive multiples of {sf}, got {tile!r}")
    if overlap < 0 or overlap % sf or overlap >= min(tile):
        raise ConfigError(f"tile_overlap must be a multiple of {sf} in [0, {min(tile)}), got {overlap!r}")
    spans = []
    for length, size in zip(grid, (tile[0] // sf, tile[1] // sf)):
        if size >= length:
            spans.append([(0, length)])
            continue
        stride = size - overlap // sf
        count = math.ceil((length - size) / stride) + 1
        starts = [min(i * stride, length - size) for i in range(count)]  # the last tile ends at the edge
        spans.append([(s, s + size) for s in starts])
    return [(h, w) for h in spans[0] for w in spans[1]]


def _ramp(n: int, ramp: int, left: bool, right: bool, device: torch.device) -> torch.Tensor:
    """Blend weights along one tile side: rising over ``ramp`` samples at each edge shared with a neighbour."""
    i = torch.arange(n, dtype=torch.float32, device=device)
    w = torch.ones(n, device=device)
    if ramp and left:
        w = torch.minimum(w, (i + 1) / (ramp + 1))
    if ramp and right:
        w = torch.minimum(w, (n - i) / (ramp + 1))
    return w
