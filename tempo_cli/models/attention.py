"""The one attention dispatch: flash-attn 3 or 2 for CUDA half-precision tensors; when training on CPU, plain
matrix products for short sequences (the backward pass of torch's fused CPU kernel carries a fixed cost per head
that dominates there); torch SDPA everywhere else.

All callers pass ``q, k, v`` as ``[B, L, heads, head_dim]`` and get ``[B, Lq, heads, head_dim]`` back.
flash-attn is optional: it is looked up once, on first use, and never needed to import tempo.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F

FlashFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@functools.lru_cache(maxsize=1)
def flash_backend() -> tuple[str, FlashFn | None]:
    """``("flash-attn-3", fn)``, ``("flash-attn-2", fn)`` or ``("sdpa", None)``, by what is importable."""
    try:
        from flash_attn_interface import flash_attn_func as fa3  # type: ignore[import-not-found]

        def run3(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            out = fa3(q, k, v)
            return out[0] if isinstance(out, tuple) else out  # some releases also return the LSE

        return "flash-attn-3", run3
    except ImportError:
        pass
    try:
        from flash_attn import flash_attn_func as fa2  # type: ignore[import-not-found]

        return "flash-attn-2", fa2
    except ImportError:
        return "sdpa", None


# Lq * Lk up to which matmul attention is used when training on CPU. Measured on 2 cores (4 heads of 48, bf16,
# forward and backward): 1.9x faster than SDPA at L = 144, 4.4x at L = 32, and 1.9x slower at L = 784. Without
# gradients SDPA is as fast or faster from L = 256 on, so inference keeps it.
CPU_MATMUL_MAX = 384 * 384


def matmul_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention as two matrix products in the inputs' dtype with the softmax in float32;
    ``[B, L, n, d]`` in, ``[B, Lq, n, d]`` out."""
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, n, L, d]
    scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # [B, n, Lq, Lk]
    weights = scores.float().softmax(dim=-1).to(v.dtype)
    return torch.matmul(weights, v).transpose(1, 2)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Full (bidirectional, unmasked) multi-head attention; ``[B, L, n, d]`` in, ``[B, Lq, n, d]`` out."""
    if q.is_cuda and q.dtype in (torch.bfloat16, torch.float16):
        _, flash = flash_backend()
        if flash is not None:
            return flash(q, k, v)
    if (q.device.type == "cpu" and torch.is_grad_enabled() and q.requires_grad
            and q.shape[1] * k.shape[1] <= CPU_MATMUL_MAX):
        return matmul_attention(q, k, v)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # [B, n, Lq, d]
    return out.transpose(1, 2)
