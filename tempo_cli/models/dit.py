"""The multi-mask diffusion transformer: Wan2.1/2.2 ``WanModel`` with TempoMaster's frame-rate RoPE.

One network does every job. The noisy latents are concatenated on channels with ``y`` = [4 mask channels,
condition latents], and each latent frame carries its own temporal RoPE index, so a level at frame
interval ``s`` places latent frame ``j`` at ``start + j*s`` on the shared time axis.

Attribute names are the official state-dict names, so the released file loads with no renaming.
The residual stream, the norms and the time modulation run in float32; the linear layers and attention run
in the parameters' dtype (bfloat16 on GPUs and AMX CPUs).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tempo_cli.config import DiTConfig, rope_split
from tempo_cli.models.attention import attention

ROPE_THETA = 10000.0
SAMPLE_MIN_T = 0.05  # prediction "sample": the velocity divides by t, never by less than this


def timestep_embedding(timestep: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding ``[cos | sin]`` of timesteps in [0, 1000]: ``[B] -> [B, dim]`` (float32)."""
    half = dim // 2
    freqs = torch.pow(ROPE_THETA, -torch.arange(half, dtype=torch.float32, device=timestep.device) / half)
    angles = timestep.float()[:, None] * freqs[None]  # [B, half]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


def frame_timesteps(timestep: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
    """A DiT's timesteps as ``[B|1, 1|F]``: ``[B]`` or ``[1]`` (one per sample) become a column, ``[B|1, F]``
    (one per latent frame) stay; anything else is an error."""
    if timestep.dim() <= 1:
        timestep = timestep.reshape(-1, 1)
    if timestep.dim() != 2 or timestep.shape[0] not in (1, batch) or timestep.shape[1] not in (1, frames):
        raise ValueError(f"timestep {tuple(timestep.shape)} fits neither [{batch}] nor [{batch}, {frames}]")
    return timestep


def rope_frequencies(channels: int, device: torch.device) -> torch.Tensor:
    """Inverse frequencies of one RoPE axis with ``channels`` channels: ``[channels // 2]`` (float32)."""
    return 1.0 / ROPE_THETA ** (torch.arange(0, channels, 2, dtype=torch.float32, device=device) / channels)


def rope_angles(frame_positions: torch.Tensor, height: int, width: int, head_dim: int) -> torch.Tensor:
    """RoPE angles of every token, in float32: ``[B, F] -> [B, F*height*width, head_dim // 2]``.

    The temporal index of each latent frame is given (any non-negative value); height and width indices
    are the token row and column. Channel pairs are split temporal | height | width as in Wan.
    """
    b, f = frame_positions.shape
    device = frame_positions.device
    dt, dh, dw = rope_split(head_dim)
    t = frame_positions.float()[..., None] * rope_frequencies(dt, device)  # [B, F, dt/2]
    h = torch.arange(height, device=device, dtype=torch.float32)[:, None] * rope_frequencies(dh, device)
    w = torch.arange(width, device=device, dtype=torch.float32)[:, None] * rope_frequencies(dw, device)
    angles = torch.cat([
        t[:, :, None, None, :].expand(b, f, height, width, dt // 2),
        h[None, None, :, None, :].expand(b, f, height, width, dh // 2),
        w[None, None, None, :, :].expand(b, f, height, width, dw // 2),
    ], dim=-1)  # [B, F, h, w, head_dim/2]
    return angles.reshape(b, f * height * width, head_dim // 2)


def apply_rope(x: torch.Tensor, rotation: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Rotate adjacent channel pairs of float32 ``x [B, L, n, d]`` by unit complex numbers
    ``rotation [B, L, 1, d/2]`` (complex64); returns ``dtype``."""
    pairs = torch.view_as_complex(x.unflatten(-1, (-1, 2)))  # [B, L, n, d/2]
    return torch.view_as_real(pairs * rotation).flatten(-2).to(dtype)


def patch_values(x: torch.Tensor, patch_size: tuple[int, int, int]) -> torch.Tensor:
    """The values of every patch, in the patch embedding's order: ``[B, C, F, H, W] -> [B, f*h*w, C*pt*ph*pw]``
    with (f, h, w) the patch grid."""
    pt, ph, pw = patch_size
    b, c, f, h, w = x.shape
    patches = x.reshape(b, c, f // pt, pt, h // ph, ph, w // pw, pw)
    return patches.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, -1, c * pt * ph * pw)


def _cpu_fused_gelu_available() -> bool:
    return hasattr(torch.ops.mkldnn, "_linear_pointwise") and torch.backends.mkldnn.is_available()


CPU_FUSED_GELU = _cpu_fused_gelu_available()


def linear_gelu(x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """``gelu_tanh(linear(x))``; on CPU in bfloat16 one oneDNN kernel does both (about twice as fast on AMX)."""
    if (CPU_FUSED_GELU and x.device.type == "cpu" and x.dtype == linear.weight.dtype == torch.bfloat16
            and not torch.is_grad_enabled()):
        return torch.ops.mkldnn._linear_pointwise(x, linear.weight, linear.bias, "gelu", [], "tanh")
    return F.gelu(linear(x), approximate="tanh")


def fused_linear(x: torch.Tensor, *linears: nn.Linear) -> tuple[torch.Tensor, ...]:
    """Several linear layers on the same input as one matrix product (one pass over ``x``)."""
    weight = torch.cat([layer.weight for layer in linears])
    bias = torch.cat([layer.bias for layer in linears])
    return F.linear(x, weight, bias).chunk(len(linears), dim=-1)


class RMSNorm(nn.Module):
    """RMS norm over the last dimension with a learned scale ``weight``; computes and returns float32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + self.eps) * self.weight.float()


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)

    def forward(self, x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
        """``x [B, L, dim]`` in the compute dtype -> ``[B, L, dim]``."""
        q, k, v = fused_linear(x, self.q, self.k, self.v)
        q = self.norm_q(q).unflatten(-1, (self.num_heads, -1))  # [B, L, n, d] float32
        k = self.norm_k(k).unflatten(-1, (self.num_heads, -1))
        v = v.unflatten(-1, (self.num_heads, -1))
        out = attention(apply_rope(q, rotation, x.dtype), apply_rope(k, rotation, x.dtype), v)
        return self.o(out.flatten(2))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """``x [B, L, dim]`` attends to ``context [B, Lc, dim]``."""
        q = self.norm_q(self.q(x)).to(x.dtype).unflatten(-1, (self.num_heads, -1))
        k = self.norm_k(self.k(context)).to(x.dtype).unflatten(-1, (self.num_heads, -1))
        v = self.v(context).unflatten(-1, (self.num_heads, -1))
        return self.o(attention(q, k, v).flatten(2))


class DiTBlock(nn.Module):
    def __init__(self, config: DiTConfig):
        super().__init__()
        dim, eps = config.dim, config.eps
        self.eps = eps
        self.self_attn = SelfAttention(dim, config.num_heads, eps)
        self.cross_attn = CrossAttention(dim, config.num_heads, eps)
        self.norm3 = nn.LayerNorm(dim, eps=eps)
        self.ffn = nn.Sequential(nn.Linear(dim, config.ffn_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(config.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, context: torch.Tensor, t_mod: torch.Tensor,
                rotation: torch.Tensor) -> torch.Tensor:
        """``x [B, L, dim]`` float32 residual stream; ``t_mod [B|1, T, 6, dim]`` float32, one modulation for all
        tokens (T = 1) or one per latent frame (T = F, the tokens frame by frame)."""
        dtype = context.dtype
        frames = t_mod.shape[1]
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = (
            m.squeeze(2) for m in (self.modulation.float() + t_mod)[:, :, None].chunk(6, dim=3))  # [B|1, T, 1, dim]

        def by_frame(tokens: torch.Tensor) -> torch.Tensor:  # [B, L, dim] -> [B, T, L / T, dim], a view
            return tokens.unflatten(1, (frames, -1))

        h = torch.addcmul(shift_sa, F.layer_norm(by_frame(x), x.shape[-1:], eps=self.eps), 1 + scale_sa)
        x = torch.addcmul(by_frame(x), by_frame(self.self_attn(h.flatten(1, 2).to(dtype), rotation)), gate_sa)
        x = x.flatten(1, 2)
        h = F.layer_norm(x, x.shape[-1:], self.norm3.weight.float(), self.norm3.bias.float(), self.eps)
        x = x + self.cross_attn(h.to(dtype), context)
        h = torch.addcmul(shift_ff, F.layer_norm(by_frame(x), x.shape[-1:], eps=self.eps), 1 + scale_ff)
        ffn = self.ffn[2](linear_gelu(h.flatten(1, 2).to(dtype), self.ffn[0]))
        return torch.addcmul(by_frame(x), by_frame(ffn), gate_ff).flatten(1, 2)


class Head(nn.Module):
    def __init__(self, config: DiTConfig):
        super().__init__()
        self.eps = config.eps
        self.head = nn.Linear(config.dim, config.out_dim * math.prod(config.patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, config.dim) / config.dim**0.5)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x [B, L, dim]`` float32, ``t [B|1, T, dim]`` float32 (T = 1 or one per latent frame) ->
        ``[B, L, out_dim * prod(patch)]``."""
        shift, scale = (m.squeeze(2) for m in (self.modulation.float() + t[:, :, None])[:, :, None].chunk(2, dim=3))
        h = F.layer_norm(x.unflatten(1, (t.shape[1], -1)), x.shape[-1:], eps=self.eps) * (1 + scale) + shift
        return self.head(h.flatten(1, 2).to(self.head.weight.dtype))


def pooled_prompt(context: torch.Tensor) -> torch.Tensor:
    """The mean of a prompt's token embeddings ``[B, L, text_dim] -> [B, text_dim]``, over the tokens it has
    (:func:`encode_prompts` zeroes the rest); zero for a prompt with none (a dropped caption)."""
    present = context.abs().amax(dim=-1, keepdim=True).gt(0).to(context.dtype)  # [B, L, 1]
    return (context * present).sum(dim=1) / present.sum(dim=1).clamp_min(1)


class MultiMaskDiT(nn.Module):
    """``forward(x, timestep, context, y, frame_positions) -> velocity`` (see :meth:`forward`)."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        dim = config.dim
        self.patch_embedding = nn.Conv3d(config.in_dim, dim, kernel_size=config.patch_size, stride=config.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(config.text_dim, dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(config.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        if config.text_pool:
            self.text_pool = nn.Linear(config.text_dim, dim)
            nn.init.zeros_(self.text_pool.weight)
            nn.init.zeros_(self.text_pool.bias)
        self.blocks = nn.ModuleList(DiTBlock(config) for _ in range(config.num_layers))
        self.head = Head(config)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, F, H, W] -> [B, f*h*w, dim]`` with (f, h, w) the patch grid; the conv as one matmul."""
        weight = self.patch_embedding.weight.flatten(1)
        return F.linear(patch_values(x, self.config.patch_size).to(weight.dtype), weight, self.patch_embedding.bias)

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """``[B, f*h*w, pt*ph*pw*C] -> [B, C, f*pt, h*ph, w*pw]``."""
        pt, ph, pw = self.config.patch_size
        f, h, w = grid
        b = x.shape[0]
        x = x.reshape(b, f, h, w, pt, ph, pw, -1)
        return x.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(b, -1, f * pt, h * ph, w * pw)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor, y: torch.Tensor,
                frame_positions: torch.Tensor) -> torch.Tensor:
        """Predict the flow-matching velocity.

        x: ``[B, out_dim, F, H, W]`` noisy latents; timestep: in [0, 1000], ``[B]`` or ``[1]``, or one per latent
        frame, ``[B|1, F]`` (frames at different noise levels, as Wan2.2's per-token timesteps allow);
        context: ``[B|1, L, text_dim]`` prompt embeddings; y: ``[B, in_dim - out_dim, F, H, W]`` =
        [4 mask channels, condition latents]; frame_positions: ``[B|1, F]`` temporal RoPE index of each
        latent frame. Returns ``[B, out_dim, F, H, W]`` in x's dtype: the velocity, also when the head predicts
        the clean latent (``config.prediction == "sample"``).
        """
        cfg = self.config
        b, _, f, h, w = x.shape
        if y.shape[0] != b or y.shape[2:] != x.shape[2:] or x.shape[1] + y.shape[1] != cfg.in_dim:
            raise ValueError(f"x {tuple(x.shape)} and y {tuple(y.shape)} do not make {cfg.in_dim} input channels")
        pt, ph, pw = cfg.patch_size
        grid = (f // pt, h // ph, w // pw)
        dtype = self.patch_embedding.weight.dtype

        tokens = self.patchify(torch.cat([x, y], dim=1)).float()  # [B, L, dim] residual stream
        timestep = frame_timesteps(timestep, b, f).to(x.device)  # [B|1, 1|F]
        if timestep.shape[1] > 1 and pt > 1:
            timestep = timestep[:, ::pt]
        per_frame = timestep.shape
        t = self.time_embedding(timestep_embedding(timestep.reshape(-1), cfg.freq_dim).to(dtype)).float()
        t = t.unflatten(0, per_frame)  # [B|1, 1|f, dim]
        if cfg.text_pool:
            t = t + self.text_pool(pooled_prompt(context).to(dtype)).float()[:, None]
        t_mod = self.time_projection(t.to(dtype)).float().unflatten(-1, (6, cfg.dim))  # [B|1, 1|f, 6, dim]
        context = self.text_embedding(context.to(dtype))
        if context.shape[0] != b:
            context = context.expand(b, -1, -1)

        positions = frame_positions.to(x.device)[:, ::pt] if pt > 1 else frame_positions.to(x.device)
        angles = rope_angles(positions.expand(b, -1), grid[1], grid[2], cfg.head_dim)[:, :, None]  # [B, L, 1, d/2]
        rotation = torch.polar(torch.ones_like(angles), angles)  # complex64
        for block in self.blocks:
            tokens = block(tokens, context, t_mod, rotation)
        out = self.unpatchify(self.head(tokens, t), grid)
        if cfg.prediction == "sample":  # the head gave the clean latent: v = (z_t - x0) / t
            noise_level = (timestep.float() / 1000).clamp_min(SAMPLE_MIN_T)
            if noise_level.shape[1] > 1:
                noise_level = noise_level.repeat_interleave(pt, dim=1)
            out = (x.float() - out.float()) / noise_level[:, None, :, None, None]
        return out.to(x.dtype)
