"""MultiMaskDiT: the reference goldens, the official key manifest, RoPE and config checks."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tempo_cli.config import TEMPOMASTER_14B_DIT, DiTConfig, config_from_dict
from tempo_cli.errors import ConfigError
from tempo_cli.loading import build_on_meta, load_into
from tempo_cli.models.dit import MultiMaskDiT, rope_angles

# float32 throughout; the reference used float64 for RoPE and the timestep embedding, we use float32.
GOLDEN_ATOL = 2e-4
GOLDEN_RTOL = 1e-4


def tiny_reference(reference):
    path = reference / "dit_tiny.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    official = json.loads(meta["config"])
    config = config_from_dict(DiTConfig, {k: v for k, v in official.items() if k in DiTConfig.__dataclass_fields__})
    return config, json.loads(meta["cases"]), load_file(str(path))


@pytest.fixture(scope="module")
def golden(reference):
    config, cases, tensors = tiny_reference(reference)
    weights = {k.removeprefix("weights."): v for k, v in tensors.items() if k.startswith("weights.")}
    model = load_into(build_on_meta(lambda: MultiMaskDiT(config)), weights, source="dit_tiny")
    return model, cases, tensors


def reference_positions(b: int, f: int, interval: int) -> torch.Tensor:
    """The golden's RoPE layout: batch element idx, latent frame j -> idx*f*interval + j*interval."""
    return torch.arange(b)[:, None] * f * interval + torch.arange(f)[None] * interval


@pytest.mark.parametrize("case", [0, 1, 2])
def test_reproduces_reference_forward(golden, case):
    model, cases, t = golden
    x = t[f"case{case}.x"]
    b, _, f, _, _ = x.shape
    with torch.no_grad():
        out = model(x, t[f"case{case}.timestep"], t[f"case{case}.context"], t[f"case{case}.y"],
                    reference_positions(b, f, cases[case]["interval"]))
    torch.testing.assert_close(out, t[f"case{case}.output"], atol=GOLDEN_ATOL, rtol=GOLDEN_RTOL)


def test_batch_timesteps_match_single_runs(golden):
    """A [B] timestep gives each element what a [1] timestep run on it alone gives."""
    model, _, t = golden
    x, y, ctx = t["case2.x"], t["case2.y"], t["case2.context"]
    steps = torch.tensor([10.0, 400.0, 700.0, 999.0])
    pos = reference_positions(4, 2, 1)
    with torch.no_grad():
        batched = model(x, steps, ctx, y, pos)
        singles = torch.cat([model(x[i:i + 1], steps[i:i + 1], ctx, y[i:i + 1], pos[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(batched, singles, atol=1e-5, rtol=1e-5)


def test_positions_beyond_1024_and_fractional_are_accepted(golden):
    model, _, t = golden
    x, y, ctx = t["case1.x"], t["case1.y"], t["case1.context"]
    with torch.no_grad():
        far = model(x, t["case1.timestep"], ctx, y, torch.tensor([[5000, 5004, 5008, 5012]]))
        near = model(x, t["case1.timestep"], ctx, y, torch.tensor([[0, 4, 8, 12]]))
    assert torch.isfinite(far).all()
    assert not torch.allclose(far, near)  # the temporal index reaches the model


def test_rope_is_relative_in_time(golden):
    """Shifting every temporal index by the same amount leaves self-attention (and the output) unchanged."""
    model, _, t = golden
    x, y, ctx = t["case1.x"], t["case1.y"], t["case1.context"]
    pos = torch.tensor([[0, 4, 8, 12]])
    with torch.no_grad():
        a = model(x, t["case1.timestep"], ctx, y, pos)
        b = model(x, t["case1.timestep"], ctx, y, pos + 37)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_bfloat16_forward_is_close_to_float32(golden):
    model, cases, t = golden
    x, y, ctx = t["case0.x"], t["case0.y"], t["case0.context"]
    pos = reference_positions(2, 3, 2)
    bf16 = MultiMaskDiT(model.config).to(torch.bfloat16)
    bf16.load_state_dict(model.state_dict())
    with torch.no_grad():
        ref = model(x, t["case0.timestep"], ctx, y, pos)
        out = bf16(x, t["case0.timestep"], ctx, y, pos)
    assert out.dtype == torch.float32  # output follows x
    rel = (out - ref).norm() / ref.norm()
    assert rel < 3e-2, rel


def test_rope_angles_layout():
    angles = rope_angles(torch.tensor([[0.0, 3.0]]), height=2, width=3, head_dim=48)
    assert angles.shape == (1, 2 * 2 * 3, 24) and angles.dtype == torch.float32
    grid = angles.reshape(2, 2, 3, 24)
    assert torch.all(grid[0, :, :, :8] == 0) and torch.all(grid[1, :, :, 0] == 3.0)  # temporal part: 16 ch
    assert torch.all(grid[:, 1, :, 8] == 1.0) and torch.all(grid[:, :, 2, 16] == 2.0)  # height, width


def test_official_config_matches_manifest_on_meta(reference):
    manifest = json.loads((reference / "checkpoint_manifest.json").read_text())
    official = manifest["dit_config"]
    assert TEMPOMASTER_14B_DIT.prediction == "velocity"  # the release's head outputs the velocity itself
    assert not TEMPOMASTER_14B_DIT.text_pool  # and has no pooled prompt
    for field in set(DiTConfig.__dataclass_fields__) - {"prediction", "text_pool"}:
        expected = official[field]
        assert list(getattr(TEMPOMASTER_14B_DIT, field)) == expected if field == "patch_size" else \
            getattr(TEMPOMASTER_14B_DIT, field) == expected, field
    model = build_on_meta(lambda: MultiMaskDiT(TEMPOMASTER_14B_DIT))
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == manifest["dit_tempomaster_14b"]
    params = sum(p.numel() for p in model.parameters())
    assert params == TEMPOMASTER_14B_DIT.num_parameters()
    assert 14.0e9 < params < 14.6e9
    assert all(p.is_meta for p in model.parameters())


@pytest.mark.parametrize("change, words", [
    (dict(num_heads=7), "divisible"),
    (dict(dim=42, num_heads=2), "even"),  # head_dim 21 -> RoPE parts (7, 7, 7)
    (dict(in_dim=35), "in_dim"),
    (dict(patch_size=(1, 2)), "patch_size"),
    (dict(num_layers=0), "positive"),
])
def test_invalid_configs_explain_themselves(change, words):
    base = dict(dim=96, in_dim=36, ffn_dim=192, freq_dim=32, text_dim=24, out_dim=16, num_heads=2, num_layers=2)
    base.update(change)
    with pytest.raises(ConfigError, match=words):
        DiTConfig(**base)


def test_unknown_config_key_is_named():
    with pytest.raises(ConfigError, match="'heads'"):
        config_from_dict(DiTConfig, dict(heads=3))


def velocity_and_sample_models():
    """tiny-random's DiT config and two models with the same (seeded) weights: one predicting the velocity, one
    the sample; the next draws of the global generator follow."""
    import dataclasses

    from tempo_cli.presets import load_preset

    config = load_preset("tiny-random").dit
    torch.manual_seed(0)
    velocity_model = MultiMaskDiT(config)
    sample_model = MultiMaskDiT(dataclasses.replace(config, prediction="sample"))
    sample_model.load_state_dict(velocity_model.state_dict())
    return config, velocity_model, sample_model


def test_a_sample_predicting_head_is_turned_into_the_velocity():
    """prediction "sample": the same network, its head read as the clean latent x0, returns (z_t - x0) / t."""
    import dataclasses

    from tempo_cli.models.dit import SAMPLE_MIN_T

    config, velocity_model, sample_model = velocity_and_sample_models()
    x, y = torch.randn(2, 16, 2, 4, 4), torch.randn(2, 20, 2, 4, 4)
    ctx, pos = torch.randn(2, 3, config.text_dim), torch.tensor([[0, 4], [2, 6]])
    steps = torch.tensor([600.0, 10.0])
    with torch.no_grad():
        head = velocity_model(x, steps, ctx, y, pos)  # what the shared weights' head gives
        velocity = sample_model(x, steps, ctx, y, pos)
    t = torch.tensor([0.6, SAMPLE_MIN_T]).view(2, 1, 1, 1, 1)  # 10/1000 is below the floor
    torch.testing.assert_close(velocity, (x - head) / t, atol=1e-4, rtol=1e-4)
    with pytest.raises(ConfigError, match="prediction"):
        dataclasses.replace(config, prediction="epsilon")


def test_a_pooled_prompt_joins_the_time_embedding_from_zero():
    """dit.text_pool: the mean of the prompt's tokens (those it has), projected, is added to the time embedding;
    the projection starts at zero, so the DiT computes what it did without it."""
    import dataclasses

    from tempo_cli.models.dit import pooled_prompt

    config, plain, _ = velocity_and_sample_models()
    pooled_model = MultiMaskDiT(dataclasses.replace(config, text_pool=True))
    assert sum(p.numel() for p in pooled_model.parameters()) == pooled_model.config.num_parameters()
    missing = pooled_model.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["text_pool.bias", "text_pool.weight"]
    assert not pooled_model.text_pool.weight.any() and not pooled_model.text_pool.bias.any()
    x, y = torch.randn(2, 16, 2, 4, 4), torch.randn(2, 20, 2, 4, 4)
    ctx, pos, steps = torch.randn(2, 3, config.text_dim), torch.tensor([[0, 4], [2, 6]]), torch.tensor([600.0, 300.0])
    ctx[0, 2] = 0  # the first prompt has two tokens
    pooled = pooled_prompt(ctx)
    torch.testing.assert_close(pooled[0], ctx[0, :2].mean(dim=0))
    torch.testing.assert_close(pooled[1], ctx[1].mean(dim=0))
    assert not pooled_prompt(torch.zeros(1, 3, config.text_dim)).any()  # a dropped caption pools to zero
    with torch.no_grad():
        torch.testing.assert_close(pooled_model(x, steps, ctx, y, pos), plain(x, steps, ctx, y, pos))
        torch.nn.init.normal_(pooled_model.text_pool.weight)
        changed = pooled_model(x, steps, ctx, y, pos)
        assert not torch.allclose(changed, plain(x, steps, ctx, y, pos), atol=1e-3)
        # it reads the prompt through its pooled mean only: the tokens' order does not matter to it, so a
        # model whose cross-attention is shut (its output projections zero) gives the same for reversed tokens
        for block in pooled_model.blocks:
            torch.nn.init.zeros_(block.cross_attn.o.weight)
            torch.nn.init.zeros_(block.cross_attn.o.bias)
        torch.testing.assert_close(pooled_model(x, steps, ctx[:, [1, 0, 2]][[1]].expand(2, -1, -1), y, pos)[1],
                                   pooled_model(x, steps, ctx, y, pos)[1])


def test_one_timestep_per_latent_frame(golden):
    """[B, F] timesteps (Wan2.2's per-token timesteps, a frame at a time): equal columns are the [B] run; frames at
    their own times get their own modulation (with no blocks, each frame is what a run at its time gives it)."""
    import copy

    model, _, t = golden
    x, y, ctx = t["case2.x"], t["case2.y"], t["case2.context"]
    b, f = x.shape[0], x.shape[2]
    steps = torch.tensor([10.0, 400.0, 700.0, 999.0])
    pos = reference_positions(b, f, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x, steps[:, None].expand(b, f), ctx, y, pos), model(x, steps, ctx, y, pos),
                                   atol=1e-5, rtol=1e-5)
    headless = copy.deepcopy(model)
    headless.blocks = torch.nn.ModuleList()  # patch embedding and head only: no frame sees another
    per_frame = torch.stack([steps, steps.flip(0)], dim=1)  # [B, 2]: frame 0 and frame 1 at different times
    with torch.no_grad():
        mixed = headless(x, per_frame, ctx, y, pos)
        for k in range(f):
            alone = headless(x, per_frame[:, k], ctx, y, pos)
            torch.testing.assert_close(mixed[:, :, k], alone[:, :, k], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(mixed, headless(x, steps, ctx, y, pos), atol=1e-3)


def test_a_sample_predicting_head_divides_each_frame_by_its_own_time():
    config, velocity_model, sample_model = velocity_and_sample_models()
    x, y = torch.randn(1, 16, 2, 4, 4), torch.randn(1, 20, 2, 4, 4)
    ctx, pos, steps = torch.randn(1, 3, config.text_dim), torch.tensor([[0, 4]]), torch.tensor([[800.0, 200.0]])
    with torch.no_grad():
        head = velocity_model(x, steps, ctx, y, pos)
        velocity = sample_model(x, steps, ctx, y, pos)
    torch.testing.assert_close(velocity, (x - head) / torch.tensor([0.8, 0.2]).view(1, 1, 2, 1, 1),
                               atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("shape", [(2, 3), (3,), (2, 2, 1)])
def test_timesteps_of_a_wrong_shape_are_refused(golden, shape):
    model, _, t = golden
    x, y, ctx = t["case2.x"], t["case2.y"], t["case2.context"]  # 4 samples of 2 latent frames
    with pytest.raises(ValueError, match="timestep"):
        model(x, torch.full(shape, 500.0), ctx, y, reference_positions(4, 2, 1))
