"""Time one MultiMaskDiT forward against diffusers' WanTransformer3DModel of the same size, fp32 and bf16.

Both models get the same random weights (copied key by key), the same inputs and the same thread count.
Prints the median of several timed runs after warm-up, the ratios, and how far the two outputs differ.
Needs diffusers: ``pip install -e ".[bench]"``.

    python benchmarks/dit_forward.py [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tempo_cli.config import DiTConfig
from tempo_cli.models.dit import MultiMaskDiT

CONFIG = DiTConfig(dim=384, in_dim=36, ffn_dim=1152, freq_dim=256, text_dim=64, out_dim=16, num_heads=12,
                   num_layers=8)
LATENT = (16, 16, 16)  # F, H, W -> 16 * 8 * 8 = 1024 tokens with patch (1, 2, 2)
TEXT_TOKENS = 32


def diffusers_model(config: DiTConfig):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=config.patch_size, num_attention_heads=config.num_heads, attention_head_dim=config.head_dim,
        in_channels=config.in_dim, out_channels=config.out_dim, text_dim=config.text_dim,
        freq_dim=config.freq_dim, ffn_dim=config.ffn_dim, num_layers=config.num_layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=config.eps,
    ).eval()


def diffusers_name(key: str) -> str:
    """Our (official Wan) state-dict name -> diffusers' name for the same tensor."""
    swaps = [
        ("patch_embedding.", "patch_embedding."), ("text_embedding.0.", "condition_embedder.text_embedder.linear_1."),
        ("text_embedding.2.", "condition_embedder.text_embedder.linear_2."),
        ("time_embedding.0.", "condition_embedder.time_embedder.linear_1."),
        ("time_embedding.2.", "condition_embedder.time_embedder.linear_2."),
        ("time_projection.1.", "condition_embedder.time_proj."), ("head.head.", "proj_out."),
        ("head.modulation", "scale_shift_table"),
    ]
    for ours, theirs in swaps:
        if key.startswith(ours):
            return theirs + key[len(ours):]
    block, rest = key.split(".", 2)[1], key.split(".", 2)[2]
    table = {"self_attn.q.": "attn1.to_q.", "self_attn.k.": "attn1.to_k.", "self_attn.v.": "attn1.to_v.",
             "self_attn.o.": "attn1.to_out.0.", "self_attn.norm_q.": "attn1.norm_q.",
             "self_attn.norm_k.": "attn1.norm_k.", "cross_attn.q.": "attn2.to_q.", "cross_attn.k.": "attn2.to_k.",
             "cross_attn.v.": "attn2.to_v.", "cross_attn.o.": "attn2.to_out.0.", "cross_attn.norm_q.": "attn2.norm_q.",
             "cross_attn.norm_k.": "attn2.norm_k.", "norm3.": "norm2.", "ffn.0.": "ffn.net.0.proj.",
             "ffn.2.": "ffn.net.2.", "modulation": "scale_shift_table"}
    for ours, theirs in table.items():
        if rest.startswith(ours):
            return f"blocks.{block}.{theirs}{rest[len(ours):]}"
    raise KeyError(key)


def median_seconds(fn, repeats: int) -> float:
    fn()
    fn()  # warm-up: allocator, oneDNN primitive caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    ours = MultiMaskDiT(CONFIG).eval()
    theirs = diffusers_model(CONFIG)
    theirs.load_state_dict({diffusers_name(k): v for k, v in ours.state_dict().items()}, strict=True)

    f, h, w = LATENT
    x = torch.randn(1, CONFIG.out_dim, f, h, w)
    y = torch.randn(1, CONFIG.in_dim - CONFIG.out_dim, f, h, w)
    context = torch.randn(1, TEXT_TOKENS, CONFIG.text_dim)
    timestep = torch.tensor([700.0])
    positions = torch.arange(f)[None]
    tokens = f * (h // 2) * (w // 2)
    print(f"DiT dim {CONFIG.dim}, {CONFIG.num_layers} layers, {CONFIG.num_heads} heads, ffn {CONFIG.ffn_dim}; "
          f"{tokens} video tokens, {TEXT_TOKENS} text tokens; {args.threads} threads; median of {args.repeats}")

    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        ours.to(dtype)
        theirs.to(dtype)
        with torch.inference_mode():
            run_ours = lambda: ours(x.to(dtype), timestep, context.to(dtype), y.to(dtype), positions)  # noqa: E731
            run_theirs = lambda: theirs(torch.cat([x, y], 1).to(dtype), timestep, context.to(dtype),  # noqa: E731
                                        return_dict=False)[0]
            diff = (run_ours().float() - run_theirs().float()).norm() / run_theirs().float().norm()
            t_ours, t_theirs = median_seconds(run_ours, args.repeats), median_seconds(run_theirs, args.repeats)
        results[dtype] = (t_ours, t_theirs)
        name = str(dtype).removeprefix("torch.")
        print(f"{name:9s} tempo {t_ours * 1000:8.1f} ms   diffusers {t_theirs * 1000:8.1f} ms   "
              f"diffusers/tempo {t_theirs / t_ours:5.2f}x   relative output difference {diff:.1e}")
    (o32, d32), (o16, d16) = results[torch.float32], results[torch.bfloat16]
    print(f"tempo bf16 speed-up over its fp32: {o32 / o16:.2f}x; diffusers': {d32 / d16:.2f}x")


if __name__ == "__main__":
    main()
