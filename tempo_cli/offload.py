"""Block-wise offloading for GPUs smaller than the model: the DiT's blocks live in (pinned) CPU memory and
each is copied to the GPU only for its own forward, so GPU memory holds one block plus activations.

For inference only: weights are frozen, so after a block's forward its parameters simply point back at the
CPU copies (nothing is copied back). Slower than a resident model (every step copies every block once), so
it is opt-in (``--offload``).
"""

from __future__ import annotations

import torch
from torch import nn


def offload_blocks(model: nn.Module, device: torch.device, blocks: str = "blocks") -> nn.Module:
    """Keep ``model.<blocks>`` on the CPU and everything else on ``device``; blocks visit ``device`` one at a
    time during the forward. Returns ``model``."""
    stack = getattr(model, blocks)
    for name, child in model.named_children():
        if name != blocks:
            child.to(device)
    for param in model.parameters(recurse=False):
        param.data = param.data.to(device)
    for block in stack:
        params = list(block.parameters())
        host = [p.data.to("cpu") for p in params]
        if device.type == "cuda":
            host = [t.pin_memory() for t in host]
        for param, tensor in zip(params, host):
            param.data = tensor

        def visit(module, args, params=params, host=host):
            for param, tensor in zip(params, host):
                param.data = tensor.to(device, non_blocking=True)

        def leave(module, args, output, params=params, host=host):
            for param, tensor in zip(params, host):
                param.data = tensor

        block.register_forward_pre_hook(visit)
        block.register_forward_hook(leave)
    return model
