"""Block-wise offloading gives the resident model's output (on CPU the blocks visit the CPU itself)."""

from __future__ import annotations

import pytest
import torch

from tempo_cli.config import DiTConfig
from tempo_cli.models.dit import MultiMaskDiT
from tempo_cli.offload import offload_blocks

TINY = DiTConfig(dim=48, in_dim=36, ffn_dim=64, freq_dim=16, text_dim=8, out_dim=16, num_heads=1, num_layers=2)


def inputs(device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 2, 4, 4, generator=g)
    y = torch.randn(1, 20, 2, 4, 4, generator=g)
    ctx = torch.randn(1, 5, 8, generator=g)
    return [t.to(device) for t in (x, torch.tensor([500.0]), ctx, y, torch.tensor([[0, 4]]))]


def run_offloaded(device: torch.device):
    torch.manual_seed(0)
    resident = MultiMaskDiT(TINY).eval().to(device)
    offloaded = MultiMaskDiT(TINY).eval()
    offloaded.load_state_dict(resident.state_dict())
    offload_blocks(offloaded, device)
    with torch.no_grad():
        expected, out = resident(*inputs(device)), offloaded(*inputs(device))
    assert all(p.device.type == "cpu" for p in offloaded.blocks.parameters())  # back home after the forward
    assert offloaded.head.head.weight.device.type == device.type
    torch.testing.assert_close(out, expected)


def test_offload_matches_resident_on_cpu():
    run_offloaded(torch.device("cpu"))


@pytest.mark.gpu
def test_offload_matches_resident_on_cuda():
    run_offloaded(torch.device("cuda"))
