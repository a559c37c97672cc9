"""The one attention dispatch: flash-attn 3 or 2 for CUDA half-precision tensors, else torch SDPA.

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


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Full (bidirectional, unmasked) multi-head attention; ``[B, L, n, d]`` in, ``[B, Lq, n, d]`` out."""
    if q.is_cuda and q.dtype in (torch.bfloat16, torch.float16):
        _, flash = flash_backend()
        if flash is not None:
            return flash(q, k, v)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # [B, n, Lq, d]
    return out.transpose(1, 2)
