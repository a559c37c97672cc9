"""The attention dispatch: every path computes the same attention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tempo_cli.models import attention as attn


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


@pytest.mark.parametrize("lq,lk", [(7, 7), (16, 5)])
def test_matmul_attention_equals_sdpa(lq, lk):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, lq, 3, 8, generator=g)
    k, v = torch.randn(2, lk, 3, 8, generator=g), torch.randn(2, lk, 3, 8, generator=g)
    torch.testing.assert_close(attn.matmul_attention(q, k, v), sdpa(q, k, v), atol=1e-5, rtol=1e-5)


def test_matmul_attention_keeps_bfloat16_and_its_gradients_match():
    g = torch.Generator().manual_seed(1)
    inputs = [torch.randn(2, 12, 2, 16, generator=g, requires_grad=True) for _ in range(3)]
    attn.matmul_attention(*inputs).square().sum().backward()
    grads = [x.grad.clone() for x in inputs]
    for x in inputs:
        x.grad = None
    sdpa(*inputs).square().sum().backward()
    for mine, theirs in zip(grads, [x.grad for x in inputs]):
        torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=1e-4)
    low = [x.detach().bfloat16() for x in inputs]
    assert attn.matmul_attention(*low).dtype == torch.bfloat16


def test_cpu_training_takes_matmul_for_short_sequences_and_sdpa_otherwise(monkeypatch):
    calls = []
    monkeypatch.setattr(attn, "matmul_attention", lambda q, k, v: calls.append(q.shape[1]) or sdpa(q, k, v))
    short = torch.randn(1, 32, 2, 8, requires_grad=True)
    attn.attention(short, short, short)
    with torch.no_grad():
        attn.attention(short, short, short)  # inference: SDPA
    side = int(attn.CPU_MATMUL_MAX ** 0.5) + 1
    long = torch.randn(1, side, 1, 8, requires_grad=True)
    out = attn.attention(long, long, long)
    assert calls == [32] and out.shape == long.shape
    torch.testing.assert_close(out, sdpa(long, long, long))
