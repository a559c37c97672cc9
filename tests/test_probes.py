"""The DiT probes of tempo_cli/probes.py on tiny models built in code."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tempo_cli import probes
from tempo_cli.config import DiTConfig
from tempo_cli.models.dit import MultiMaskDiT
from tempo_cli.toyworld import DetectedObject


def tiny_dit(dim: int, patch=(1, 2, 2), seed: int = 0) -> MultiMaskDiT:
    torch.manual_seed(seed)
    config = DiTConfig(dim=dim, in_dim=12, ffn_dim=32, freq_dim=16, text_dim=8, out_dim=4, num_heads=1, num_layers=1,
                       patch_size=patch)
    return MultiMaskDiT(config).eval()


def from_rows(rows: torch.Tensor, shape: tuple[int, int, int, int, int]) -> torch.Tensor:
    """The inverse of ``probes.patch_rows(latents, (2, 2))`` for latents of ``shape`` ``[B, C, F, H, W]``."""
    b, c, f, h, w = shape
    return rows.reshape(b, f, h // 2, w // 2, c, 2, 2).permute(0, 4, 1, 2, 5, 3, 6).reshape(shape)


def test_a_dit_narrower_than_its_patches_cannot_see_some_directions():
    dit = tiny_dit(dim=12)  # a patch of the noisy latent: 4 channels x 2 x 2 = 16 values, width 12
    directions = probes.invisible_directions(dit)
    assert directions.shape == (4, 16)
    assert torch.allclose(directions @ directions.T, torch.eye(4), atol=1e-5)
    # latents made only of those directions reach the tokens as nothing: the tokens are the zero latents' tokens
    coefficients = torch.randn(2 * 3 * 2 * 2, 4)  # [B*F*(H/2)*(W/2), k]
    rows = coefficients @ directions  # [B*F*2*2, 16], channel-major patches
    latents = from_rows(rows, (2, 4, 3, 4, 4))
    assert torch.allclose(probes.patch_rows(latents, (2, 2)), rows, atol=1e-6)
    y = torch.zeros(2, 8, 3, 4, 4)
    seen = dit.patchify(torch.cat([latents, y], dim=1))
    blank = dit.patchify(torch.cat([torch.zeros_like(latents), y], dim=1))
    assert torch.allclose(seen, blank, atol=1e-4)


def test_a_wide_dit_sees_every_direction():
    assert len(probes.invisible_directions(tiny_dit(dim=64))) == 0


def test_direction_energy_of_noise_is_one_and_of_other_directions_zero():
    directions = probes.invisible_directions(tiny_dit(dim=12))
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(8, 4, 6, 8, 8, generator=generator)
    assert probes.direction_energy(noise, directions, (2, 2)) == pytest.approx(1.0, abs=0.1)
    rows = probes.patch_rows(noise, (2, 2))
    visible = rows - (rows @ directions.T) @ directions  # the noise with its invisible part taken out
    back = from_rows(visible, tuple(noise.shape))
    assert probes.direction_energy(back, directions, (2, 2)) < 1e-8
    assert math.isnan(probes.direction_energy(noise, directions[:0], (2, 2)))


class FrameLocal(nn.Module):
    """A stand-in DiT whose velocity at each latent frame depends on that frame alone."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, x, timestep, context, y, rope):
        return x * self.scale


def test_temporal_reach_of_a_frame_local_model_is_its_own_frame():
    z, context, y = torch.randn(1, 4, 5, 4, 4), torch.zeros(1, 3, 8), torch.zeros(1, 8, 5, 4, 4)
    reach = probes.temporal_reach(FrameLocal(), z, 0.5, context, y, torch.arange(5)[None], frame=2,
                                  generator=torch.Generator().manual_seed(0))
    assert reach[2] > 1.0 and torch.count_nonzero(reach) == 1


def test_temporal_reach_of_a_transformer_spreads_beyond_the_frame():
    dit = tiny_dit(dim=32)
    z, context, y = torch.randn(1, 4, 5, 4, 4), torch.randn(1, 3, 8), torch.zeros(1, 8, 5, 4, 4)
    reach = probes.temporal_reach(dit, z, 0.5, context, y, torch.arange(5)[None], frame=0,
                                  generator=torch.Generator().manual_seed(0))
    assert reach[0] == reach.max() and (reach[1:] > 0).all()
    with pytest.raises(ValueError, match="outside"):
        probes.temporal_reach(dit, z, 0.5, context, y, torch.arange(5)[None], frame=5)


def found(x: float, y: float) -> DetectedObject:
    return DetectedObject((x, y), 100, (220.0, 40.0, 40.0), (0, 0, 10, 10))


def test_track_spread():
    first = [found(10, 10), found(12, 10), None]
    assert probes.track_spread([first, first]) == 0.0
    moved = [found(13, 14), found(15, 14), found(0, 0)]  # 5 px away where both have an object
    assert probes.track_spread([first, moved]) == pytest.approx(5.0)
    assert probes.track_spread([first, moved, first]) == pytest.approx(10 / 3)
    assert math.isnan(probes.track_spread([[None], [found(1, 1)]]))


def test_swap_words_swaps_pairs_in_one_pass():
    swap = {"left": "right", "right": "left", "red": "blue"}
    caption = "a red ball moving left and a green square moving right on a black background"
    assert probes.swap_words(caption, swap) == ("a blue ball moving right and a green square moving left on a "
                                                "black background")
    assert probes.swap_words(probes.swap_words(caption, swap), {"left": "right", "right": "left"}) == (
        "a blue ball moving left and a green square moving right on a black background")


class Velocity(nn.Module):
    """A fake DiT whose velocity is ``scale`` times its noisy input (per sample), to check the loss by hand."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(()))

    def forward(self, z, timestep, context, y, rope):
        self.timestep = timestep
        return z * context[:, 0, 0].view(-1, 1, 1, 1, 1)


def test_velocity_loss_is_the_flow_matching_loss_with_seeded_noise():
    dit = Velocity()
    x0 = torch.randn(2, 3, 4, 2, 2)
    context = torch.full((2, 5, 1), 2.0)
    y, rope = torch.zeros(2, 7, 4, 2, 2), torch.zeros(2, 4)
    t = 0.7
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    z = (1 - t) * x0 + t * noise
    expected = (2 * z - (noise - x0)).square()
    assert math.isclose(probes.velocity_loss(dit, x0, t, context, y, rope, seed=3), float(expected.mean()),
                        rel_tol=1e-5)
    later = probes.velocity_loss(dit, x0, t, context, y, rope, seed=3, frames=slice(2, None))
    assert math.isclose(later, float(expected[:, :, 2:].mean()), rel_tol=1e-5)
    # another caption (here: another scale) changes the loss on the same noise; the same one does not
    assert probes.velocity_loss(dit, x0, t, context * 0.5, y, rope, seed=3) != probes.velocity_loss(
        dit, x0, t, context, y, rope, seed=3)


def test_velocity_loss_with_a_time_per_latent_frame():
    dit = Velocity()
    x0 = torch.randn(2, 3, 4, 2, 2)
    context = torch.full((2, 5, 1), 2.0)
    y, rope = torch.zeros(2, 7, 4, 2, 2), torch.zeros(2, 4)
    times = torch.tensor([0.0, 0.0, 0.9, 0.9])  # the first two latent frames clean
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    z = x0 + times.view(1, 1, -1, 1, 1) * (noise - x0)
    assert torch.equal(z[:, :, :2], x0[:, :, :2])
    expected = (2 * z - (noise - x0)).square()[:, :, 2:].mean()
    loss = probes.velocity_loss(dit, x0, times, context, y, rope, seed=1, frames=slice(2, None))
    assert math.isclose(loss, float(expected), rel_tol=1e-5)
    assert torch.allclose(dit.timestep, torch.tensor([[0.0, 0.0, 900.0, 900.0]] * 2))
    # one time for all frames is given to the DiT as one timestep per sample
    probes.velocity_loss(dit, x0, 0.5, context, y, rope)
    assert torch.allclose(dit.timestep, torch.tensor([500.0, 500.0]))
    with pytest.raises(ValueError, match="one per latent frame"):
        probes.velocity_loss(dit, x0, torch.tensor([0.1, 0.2]), context, y, rope)


def test_next_frame_times_are_a_rolling_samplers_view_of_one_frame():
    times = probes.next_frame_times(6, 2, 0.9)
    torch.testing.assert_close(times, torch.tensor([0.0, 0.0, 0.9, probes.PURE_NOISE, probes.PURE_NOISE,
                                                    probes.PURE_NOISE]))
    torch.testing.assert_close(probes.next_frame_times(3, 1, 0.5, context=False),
                               torch.tensor([0.5, 0.5, probes.PURE_NOISE]))
    assert probes.next_frame_times(4, 0, 0.7)[0] == 0.7
    for k, t in ((4, 0.5), (-1, 0.5), (1, 1.0)):
        with pytest.raises(ValueError, match="need 0 <= k"):
            probes.next_frame_times(4, k, t)

