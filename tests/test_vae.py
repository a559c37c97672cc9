"""CausalVideoVAE: the reference goldens, the official key manifest, causal streaming, tiling, input checks."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tempo_cli.config import WAN21_VAE, VAEConfig
from tempo_cli.errors import ConfigError, UsageError
from tempo_cli.loading import build_on_meta, load_into
from tempo_cli.models.vae import CausalVideoVAE

# float32 on CPU; measured: encode 8.4e-7, decode 7.7e-6 (decoded values reach +-4.5 before clamping).
GOLDEN_ATOL = 5e-5
GOLDEN_RTOL = 1e-5


def tiny_reference(reference):
    path = reference / "vae_tiny.safetensors"
    with safe_open(str(path), "pt") as f:
        official = json.loads(f.metadata()["config"])
    tensors = load_file(str(path))
    config = VAEConfig(dim=official["dim"], z_dim=official["z_dim"], dim_mult=official["dim_mult"],
                       num_res_blocks=official["num_res_blocks"],
                       temporal_downsample=official["temperal_downsample"],
                       latents_mean=tensors["latent_mean"].tolist(), latents_std=tensors["latent_std"].tolist())
    return config, tensors


@pytest.fixture(scope="module")
def golden(reference):
    config, tensors = tiny_reference(reference)
    weights = {k.removeprefix("weights."): v for k, v in tensors.items() if k.startswith("weights.")}
    model = load_into(build_on_meta(lambda: CausalVideoVAE(config)), weights, source="vae_tiny")
    return model, tensors


def test_encode_reproduces_reference(golden):
    model, t = golden
    latents = model.encode(t["video"])
    assert latents.shape == (1, 4, 3, 4, 6)
    torch.testing.assert_close(latents, t["latents"], atol=GOLDEN_ATOL, rtol=GOLDEN_RTOL)


def test_decode_reproduces_reference(golden):
    """decode() clamps to [-1, 1]. The fixture's ``decoded`` is the unclamped decoder output (it reaches
    +-4.5 despite the README), so it is compared clamped here and whole through the decoder below."""
    model, t = golden
    video = model.decode(t["latents"])
    assert video.shape == (1, 3, 9, 32, 48)
    assert video.abs().max() <= 1
    torch.testing.assert_close(video, t["decoded"].clamp(-1, 1), atol=GOLDEN_ATOL, rtol=GOLDEN_RTOL)


def test_decoder_streamed_by_hand_reproduces_unclamped_reference(golden):
    """One latent frame at a time through conv2 and the decoder, one explicit cache: the raw reference."""
    model, t = golden
    config = model.config
    mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(config.latents_std).view(1, -1, 1, 1, 1)
    z = model.conv2(t["latents"] * std + mean)
    cache: dict = {}
    with torch.no_grad():
        frames = [model.decoder(z[:, :, i:i + 1], cache) for i in range(z.shape[2])]
    assert [f.shape[2] for f in frames] == [1, 4, 4]
    torch.testing.assert_close(torch.cat(frames, 2), t["decoded"], atol=GOLDEN_ATOL, rtol=GOLDEN_RTOL)


def test_state_dict_matches_official_manifest(reference):
    manifest = json.loads((reference / "checkpoint_manifest.json").read_text())["vae_wan21"]
    model = build_on_meta(lambda: CausalVideoVAE(WAN21_VAE))
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == manifest
    assert not any("mean" in k or "std" in k for k in model.state_dict())  # statistics come from the config


def test_state_dict_matches_tiny_reference_weights(reference):
    config, tensors = tiny_reference(reference)
    expected = {k.removeprefix("weights."): tuple(v.shape) for k, v in tensors.items() if k.startswith("weights.")}
    model = build_on_meta(lambda: CausalVideoVAE(config))
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected


def test_encode_is_causal_and_streams(golden):
    """The first 1 + 4k frames encode to the first 1 + k latent frames of a longer clip, and back."""
    model, t = golden
    video, latents = t["video"], t["latents"]
    encoded = model.encode(video)
    torch.testing.assert_close(model.encode(video[:, :, :5]), encoded[:, :, :2], atol=0, rtol=0)
    torch.testing.assert_close(model.encode(video[:, :, :1]), encoded[:, :, :1], atol=0, rtol=0)
    full = model.decode(latents)
    torch.testing.assert_close(model.decode(latents[:, :, :2]), full[:, :, :5], atol=0, rtol=0)
    parts = list(model.decode_frames(latents))
    assert [p.shape[2] for p in parts] == [1, 4, 4]
    torch.testing.assert_close(torch.cat(parts, 2), full, atol=0, rtol=0)


def test_calls_do_not_share_state(golden):
    """No cache survives a call: the same input gives the same output, whatever ran in between."""
    model, t = golden
    first = model.encode(t["video"])
    model.encode(torch.flip(t["video"], dims=[2]))
    torch.testing.assert_close(model.encode(t["video"]), first, atol=0, rtol=0)


def test_batch_elements_are_independent(golden):
    model, t = golden
    video = torch.cat([t["video"], -t["video"]])
    latents = model.encode(video)
    torch.testing.assert_close(latents[:1], t["latents"], atol=GOLDEN_ATOL, rtol=GOLDEN_RTOL)
    torch.testing.assert_close(latents[1:], model.encode(-t["video"]), atol=1e-5, rtol=0)


def test_shapes_for_thirteen_frames():
    config = VAEConfig(dim=4, z_dim=4, dim_mult=(1, 2, 4, 4), num_res_blocks=1,
                       temporal_downsample=(False, True, True), latents_mean=(0.0,) * 4, latents_std=(1.0,) * 4)
    model = CausalVideoVAE(config).eval()
    video = torch.rand(2, 3, 13, 16, 24, generator=torch.Generator().manual_seed(0)) * 2 - 1
    latents = model.encode(video)
    assert latents.shape == (2, 4, 4, 2, 3)
    decoded = model.decode(latents)
    assert decoded.shape == (2, 3, 13, 16, 24)
    assert decoded.abs().max() <= 1


@pytest.mark.parametrize("frames, nearest", [(10, "9 or 13"), (4, "1 or 5"), (0, "1")])
def test_bad_frame_count_names_nearest_valid_counts(golden, frames, nearest):
    model, _ = golden
    with pytest.raises(UsageError, match="1 \\+ 4k frames") as info:
        model.encode(torch.zeros(1, 3, frames, 32, 48))
    assert f"{nearest} frames" in str(info.value)


@pytest.mark.parametrize("shape", [(1, 3, 9, 30, 48), (1, 4, 9, 32, 48), (3, 9, 32, 48)])
def test_bad_video_shape_raises(golden, shape):
    model, _ = golden
    with pytest.raises(UsageError):
        model.encode(torch.zeros(shape))


def test_bad_latents_and_tiles_raise(golden):
    model, t = golden
    with pytest.raises(UsageError, match="latents must be"):
        model.decode(torch.zeros(1, 16, 3, 4, 6))
    with pytest.raises(UsageError, match="latents must be"):
        model.decode_frames(torch.zeros(1, 16, 3, 4, 6))  # eagerly, before the first frame is asked for
    with pytest.raises(ConfigError, match="tile must be"):
        model.encode(t["video"], tile=(20, 24))
    with pytest.raises(ConfigError, match="tile_overlap"):
        model.decode(t["latents"], tile=(16, 24), tile_overlap=16)


def test_tile_as_large_as_the_frame_changes_nothing(golden):
    model, t = golden
    torch.testing.assert_close(model.encode(t["video"], tile=(32, 64)), t["latents"], atol=GOLDEN_ATOL, rtol=0)
    torch.testing.assert_close(model.decode(t["latents"], tile=(64, 48)), model.decode(t["latents"]),
                               atol=0, rtol=0)


def spatially_local(model: CausalVideoVAE) -> CausalVideoVAE:
    """A copy whose output at a position depends only on its own 8x8 pixel block (or latent cell): spatial
    kernels keep only their centre tap and attention adds nothing. Tiling is then exact up to rounding, so
    any misplaced tile, wrong crop, lost cache or unnormalised blend weight shows."""
    local = copy.deepcopy(model)
    with torch.no_grad():
        for module in local.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d)) and module.weight.shape[-1] == 3:
                centre = module.weight[..., 1:2, 1:2].clone()
                module.weight.zero_()
                module.weight[..., 1:2, 1:2] = centre
            if type(module).__name__ == "AttentionBlock":
                module.proj.weight.zero_()
                module.proj.bias.zero_()
    return local


@pytest.mark.parametrize("tile, overlap", [((16, 24), 8), ((24, 16), 8), ((16, 16), 0)])
def test_tiling_matches_untiled(golden, tile, overlap):
    """Tiling a spatially local model reproduces the untiled result (atol 1e-5); several tiles each way."""
    model, t = golden
    local = spatially_local(model)
    video = t["video"][:, :, :5]  # 32x48: a 4x6 latent grid, so 2 to 3 tiles each way
    latents = local.encode(video)
    torch.testing.assert_close(local.encode(video, tile=tile, tile_overlap=overlap), latents, atol=1e-5, rtol=0)
    decoded = local.decode(latents)
    torch.testing.assert_close(local.decode(latents, tile=tile, tile_overlap=overlap), decoded, atol=1e-5, rtol=0)


def test_tiling_with_reference_weights_keeps_shape_and_range(golden):
    """With random weights and full-frame attention, tiles differ from the whole frame; only sanity here."""
    model, t = golden
    latents = model.encode(t["video"], tile=(16, 24), tile_overlap=8)
    assert latents.shape == t["latents"].shape and latents.isfinite().all()
    video = model.decode(t["latents"], tile=(16, 24), tile_overlap=8)
    assert video.shape == t["decoded"].shape and video.abs().max() <= 1


def test_bfloat16_follows_float32(golden):
    model, t = golden
    half = copy.deepcopy(model).to(torch.bfloat16)
    latents = half.encode(t["video"])  # float32 input is cast per chunk
    assert latents.dtype == torch.bfloat16
    torch.testing.assert_close(latents.float(), t["latents"], atol=0.15, rtol=0.05)
    video = half.decode(t["latents"])
    assert video.dtype == torch.bfloat16
    torch.testing.assert_close(video.float(), model.decode(t["latents"]), atol=0.25, rtol=0.05)
