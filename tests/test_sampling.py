"""sampling: schedule and guidance goldens, the Euler step on an exact linear flow, noise streams, validation."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from tempo_cli.errors import ConfigError, TempoError
from tempo_cli.sampling import (
    APG_NORM_DIMS,
    apg,
    cfg,
    correlate_frames,
    euler_step,
    flow_schedule,
    flow_step,
    guide,
    initial_noise,
    partial_schedule,
    next_sigmas,
    noise_seed,
    rolling_schedule,
    staggered_schedule,
    velocity_to_x0,
    x0_to_velocity,
)

# The golden's guidance calls: sigma of each call (t = timestep / 1000) and the guidance scale.
GOLDEN_SIGMAS = (0.97, 0.6, 0.2)
GOLDEN_SCALE = 8.0
# Guided outputs reach |70|; float32 reorderings differ from the reference by < 1e-5 absolute.
GUIDANCE_ATOL = 1e-5
GUIDANCE_RTOL = 1e-5


@pytest.fixture(scope="module")
def golden(reference):
    return load_file(str(reference / "sampling.safetensors"))


@pytest.mark.parametrize(("steps", "shift"), [(50, 5.0), (32, 3.0), (4, 5.0)])
def test_schedule_matches_reference(golden, steps, shift):
    sigmas, timesteps = flow_schedule(steps, shift)
    assert sigmas.shape == timesteps.shape == (steps,)
    torch.testing.assert_close(sigmas, golden[f"sigmas_{steps}_{shift}"], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(timesteps, golden[f"timesteps_{steps}_{shift}"], atol=1e-4, rtol=1e-6)


def test_next_sigmas_end_at_zero():
    sigmas, _ = flow_schedule(4, 5.0)
    nxt = next_sigmas(sigmas)
    torch.testing.assert_close(nxt[:-1], sigmas[1:])
    assert nxt[-1].item() == 0.0


@pytest.mark.parametrize("kind", ["cfg", "apg"])
def test_guidance_matches_reference(golden, kind):
    """Three successive calls on one guidance state; cond, uncond and out are velocities."""
    z = golden[f"{kind}.z"]
    state = None
    for i, sigma in enumerate(GOLDEN_SIGMAS):
        cond, uncond = golden[f"{kind}.cond"][i], golden[f"{kind}.uncond"][i]
        out, state = guide(kind, cond, uncond, z, sigma, GOLDEN_SCALE, state)
        torch.testing.assert_close(out, golden[f"{kind}.out"][i], atol=GUIDANCE_ATOL, rtol=GUIDANCE_RTOL)


def test_apg_momentum_is_needed_for_the_reference(golden):
    """Dropping the state between calls must not match: the golden really exercises the momentum."""
    z, cond, uncond = golden["apg.z"], golden["apg.cond"][1], golden["apg.uncond"][1]
    out, _ = apg(cond, uncond, z, GOLDEN_SIGMAS[1], GOLDEN_SCALE, None)
    assert not torch.allclose(out, golden["apg.out"][1], atol=1e-2)


def test_apg_state_is_not_mutated():
    z, cond, uncond = torch.randn(3, 1, 4, 2, 3, 3).unbind(0)
    _, state = apg(cond, uncond, z, 0.5, 5.0, None)
    before = state.running.clone()
    apg(cond, uncond, z, 0.4, 5.0, state)
    torch.testing.assert_close(state.running, before, atol=0, rtol=0)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), threshold=st.floats(0.1, 20.0))
def test_apg_update_respects_norm_threshold(seed, threshold):
    """With eta 1 the update is the clipped difference: per-frame norm (C, H, W) <= threshold."""
    g = torch.Generator().manual_seed(seed)
    z, cond, uncond = (5 * torch.randn(3, 2, 4, 3, 2, 2, generator=g)).unbind(0)
    sigma, scale = 0.5, 3.0
    out, _ = apg(cond, uncond, z, sigma, scale, None, norm_threshold=threshold, eta=1.0)
    update = (velocity_to_x0(z, out, sigma) - velocity_to_x0(z, cond, sigma)) / (scale - 1)
    assert (torch.linalg.vector_norm(update, dim=APG_NORM_DIMS) <= threshold * (1 + 1e-4)).all()


def test_cfg_scale_one_is_cond_and_velocity_x0_round_trip():
    z, cond, uncond = torch.randn(3, 1, 4, 2, 3, 3).unbind(0)
    out, state = cfg(cond, uncond, z, 0.3, 1.0, None)
    torch.testing.assert_close(out, cond)
    assert state is None
    torch.testing.assert_close(x0_to_velocity(z, velocity_to_x0(z, cond, 0.3), 0.3), cond)


def test_euler_integrates_a_linear_flow_exactly():
    """With the exact velocity noise - x0, every step lands on the path and the last one on x0."""
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 1, 4, 3, 4, 4, generator=g).unbind(0)
    sigmas, _ = flow_schedule(8, 3.0)
    z = noise.clone()  # sigma 1
    for sigma, sigma_next in zip(sigmas.tolist(), next_sigmas(sigmas).tolist()):
        z = euler_step(z, noise - x0, sigma, sigma_next)
        torch.testing.assert_close(z, (1 - sigma_next) * x0 + sigma_next * noise, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(z, x0, atol=1e-5, rtol=1e-5)


def test_flow_step_draws_a_share_of_its_noise_anew_inside_its_window():
    """With the exact velocity, a stochastic step lands on the path to x0 with its noise partly redrawn; eta 0, a
    sigma outside the window, a finished latent frame and one that waits its turn take the Euler step."""
    g = torch.Generator().manual_seed(0)
    x0, noise, fresh = torch.randn(3, 1, 4, 3, 4, 4, generator=g).unbind(0)
    sigma, sigma_next = 0.6, 0.45
    z, velocity = (1 - sigma) * x0 + sigma * noise, noise - x0
    for eta in (0.0, 0.6, 1.0):
        kept = math.sqrt(1 - eta**2) * noise + eta * fresh
        torch.testing.assert_close(flow_step(z, velocity, sigma, sigma_next, eta, fresh),
                                   (1 - sigma_next) * x0 + sigma_next * kept)
    torch.testing.assert_close(flow_step(z, velocity, sigma, sigma_next, 1.0, fresh, (0.1, 0.5)),
                               euler_step(z, velocity, sigma, sigma_next))
    per_frame = torch.tensor([0.0, sigma, 1.0]).reshape(1, 1, 3, 1, 1)  # done, stepping, waiting at 1
    per_frame_next = torch.tensor([0.0, sigma_next, 1.0]).reshape(1, 1, 3, 1, 1)
    stepped = flow_step(z, velocity, per_frame, per_frame_next, 1.0, fresh)
    assert torch.equal(stepped[:, :, 0], z[:, :, 0]) and torch.equal(stepped[:, :, 2], z[:, :, 2])
    torch.testing.assert_close(stepped[:, :, 1], ((1 - sigma_next) * x0 + sigma_next * fresh)[:, :, 1])


def test_noise_seed_is_documented_and_stable():
    assert noise_seed(42, 1, 3) == 8828425261858405347  # first 8 bytes of sha256(b"42:1:3"), 63 bits
    assert 0 <= noise_seed(-7, 0, 0) < 2**63


def test_noise_streams_reproduce_and_differ():
    shape = (1, 4, 2, 3, 3)
    base = initial_noise(shape, 42, 1, 2)
    torch.testing.assert_close(initial_noise(shape, 42, 1, 2), base, atol=0, rtol=0)
    for other in [(43, 1, 2), (42, 0, 2), (42, 1, 3), (42, 2, 1)]:
        assert not torch.equal(initial_noise(shape, *other), base)


def test_noise_stream_is_independent_of_other_draws():
    shape = (1, 4, 2, 3, 3)
    alone = initial_noise(shape, 5, 2, 1)
    torch.manual_seed(0)
    global_before = torch.random.get_rng_state()
    initial_noise(shape, 5, 2, 0)  # another chunk drawn first
    torch.rand(10)  # and the global RNG used
    after = initial_noise(shape, 5, 2, 1)
    torch.testing.assert_close(after, alone, atol=0, rtol=0)
    torch.manual_seed(0)
    assert torch.equal(torch.random.get_rng_state(), global_before)


def test_noise_dtype_is_a_cast_of_float32():
    shape = (1, 4, 2, 3, 3)
    noise = initial_noise(shape, 1, 0, 0, dtype=torch.bfloat16)
    assert noise.dtype == torch.bfloat16
    assert torch.equal(noise, initial_noise(shape, 1, 0, 0).to(torch.bfloat16))


@pytest.mark.parametrize(
    ("steps", "shift", "match"),
    [(0, 5.0, "steps"), (-3, 5.0, "steps"), (2.5, 5.0, "steps"), (True, 5.0, "steps"),
     (10, 0.0, "shift"), (10, -1.0, "shift"), (10, math.nan, "shift"), (10, math.inf, "shift")],
)
def test_invalid_schedule_raises_config_error(steps, shift, match):
    with pytest.raises(ConfigError, match=match) as info:
        flow_schedule(steps, shift)
    assert isinstance(info.value, TempoError) and info.value.hint


def test_unknown_guidance_names_the_choices():
    z = torch.zeros(1, 1, 1, 1, 1)
    with pytest.raises(ConfigError, match="unknown guidance 'pag'") as info:
        guide("pag", z, z, z, 0.5, 5.0)
    assert "cfg" in info.value.hint and "apg" in info.value.hint


def test_initial_noise_can_share_part_of_itself_across_latent_frames():
    plain = initial_noise((4, 6, 8, 8), seed=3, level=4, chunk=0)
    assert torch.equal(plain, initial_noise((4, 6, 8, 8), 3, 4, 0, correlation=0.0))  # as trained
    shared = initial_noise((4, 6, 8, 8), seed=3, level=4, chunk=0, correlation=0.8)
    frames = shared.permute(1, 0, 2, 3).flatten(1)  # [F, C*H*W]
    corr = torch.corrcoef(frames)[~torch.eye(6, dtype=torch.bool)]
    assert 0.7 < corr.mean() < 0.9 and 0.8 < shared.std() < 1.2  # each frame is still standard normal
    plain_corr = torch.corrcoef(plain.permute(1, 0, 2, 3).flatten(1))[~torch.eye(6, dtype=torch.bool)]
    assert plain_corr.abs().max() < 0.2
    with pytest.raises(ConfigError):
        initial_noise((4, 6, 8, 8), 3, 4, 0, correlation=1.0)


def frame_correlations(noise: torch.Tensor) -> torch.Tensor:
    """``[B, C, F, H, W]`` -> the correlation matrix of its latent frames ``[F, F]``, over everything else."""
    return torch.corrcoef(noise.transpose(0, 2).flatten(1))


def test_progressive_noise_keeps_a_share_of_each_frame_in_the_next():
    rng = torch.Generator().manual_seed(0)
    plain = torch.randn(64, 4, 8, 8, 8, generator=rng)
    noise = correlate_frames(plain, 0.9, "progressive")
    corr = frame_correlations(noise)
    for k in (1, 2, 5):  # frames k apart correlate 0.9^k: nothing stays in place over a long chunk
        assert torch.diagonal(corr, k).mean().item() == pytest.approx(0.9 ** k, abs=0.03)
    assert noise.std().item() == pytest.approx(1.0, abs=0.03)  # still standard normal
    assert torch.equal(noise[:, :, 0], plain[:, :, 0])
    assert torch.equal(correlate_frames(plain, 0.0, "progressive"), plain)


def test_noise_correlation_can_differ_per_sample():
    plain = torch.randn(8, 4, 6, 8, 8, generator=torch.Generator().manual_seed(1))
    for prior in ("mixed", "progressive"):
        noise = correlate_frames(plain, torch.tensor([0.8] * 4 + [0.0] * 4), prior,
                                 torch.Generator().manual_seed(2))
        assert torch.allclose(noise[4:], plain[4:])  # 0: independent frames, as drawn
        assert torch.diagonal(frame_correlations(noise[:4]), 1).mean() > 0.6
    with pytest.raises(ConfigError, match="unknown noise prior 'pink'"):
        correlate_frames(plain, 0.5, "pink")
    with pytest.raises(ConfigError, match="one value or one per sample"):
        correlate_frames(plain, torch.tensor([0.5, 0.5]), "mixed")


def test_initial_noise_follows_the_noise_prior():
    mixed = initial_noise((4, 12, 8, 8), seed=3, level=4, chunk=0, correlation=0.8)
    progressive = initial_noise((4, 12, 8, 8), seed=3, level=4, chunk=0, correlation=0.8, prior="progressive")
    far = (torch.diagonal(frame_correlations(n[None]), 10).mean().item() for n in (mixed, progressive))
    assert next(far) > 0.6 and next(far) < 0.3  # mixed: every pair shares 0.8; progressive: 0.8^10


def test_staggered_schedule_without_stagger_is_the_flow_schedule():
    sigmas, following = staggered_schedule(6, 3.0, 4, 0.0)
    flat, _ = flow_schedule(6, 3.0)
    assert sigmas.shape == (6, 4)
    assert torch.equal(sigmas, flat[:, None].expand(6, 4)) and torch.equal(following, next_sigmas(flat)[:, None].expand(6, 4))


def test_staggered_schedule_lets_later_frames_lag():
    sigmas, following = staggered_schedule(8, 1.0, 5, 0.5)  # the last frame starts 4 steps late
    assert sigmas.shape == following.shape == (12, 5)
    assert torch.equal(following[:-1], sigmas[1:]) and bool((following[-1] == 0).all())
    flat, _ = flow_schedule(8, 1.0)
    for k, lag in enumerate([0, 1, 2, 3, 4]):  # round(k * 0.5 * 8 / 4)
        assert bool((sigmas[:lag, k] == 1).all())  # waiting as pure noise
        assert torch.equal(sigmas[lag:lag + 8, k], flat)  # then the whole schedule
        assert bool((sigmas[lag + 8:, k] == 0).all())  # then done
    assert bool((sigmas[:, :-1] <= sigmas[:, 1:]).all())  # earlier frames are never noisier


@pytest.mark.parametrize("stagger, frames", [(-0.1, 4), (math.inf, 4), (True, 4), (0.5, 0)])
def test_invalid_stagger_raises_config_error(stagger, frames):
    with pytest.raises(ConfigError, match="stagger|latent frames"):
        staggered_schedule(8, 3.0, frames, stagger)


def test_rolling_schedule_keeps_neighbours_a_fixed_number_of_steps_apart():
    for frames in (3, 12):
        sigmas, following = rolling_schedule(6, 3.0, frames, 1.5)
        lags = [round(k * 1.5) for k in range(frames)]
        assert sigmas.shape == following.shape == (6 + lags[-1], frames)
        flat, _ = flow_schedule(6, 3.0)
        for k, lag in enumerate(lags):
            assert bool((sigmas[:lag, k] == 1).all()) and torch.equal(sigmas[lag:lag + 6, k], flat)
            assert bool((sigmas[lag + 6:, k] == 0).all())
        assert torch.equal(following[:-1], sigmas[1:]) and bool((following[-1] == 0).all())
    torch.testing.assert_close(rolling_schedule(8, 1.0, 5, 1.0), staggered_schedule(8, 1.0, 5, 0.5))
    assert torch.equal(rolling_schedule(6, 3.0, 4, 0.0)[0], staggered_schedule(6, 3.0, 4, 0.0)[0])


@pytest.mark.parametrize("lag, frames", [(-1.0, 4), (math.inf, 4), (True, 4), (2.0, 0)])
def test_invalid_lag_raises_config_error(lag, frames):
    with pytest.raises(ConfigError, match="lag|latent frames"):
        rolling_schedule(8, 3.0, frames, lag)


class _Recorder(torch.nn.Module):
    """A stand-in DiT: records the timesteps it is given and returns a velocity of ones."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.calls = []

    def forward(self, z, t, context, y, rope):
        self.calls.append(t.clone())
        return torch.ones_like(z)


@pytest.mark.parametrize("stagger, lag", [(0.0, 0.0), (0.5, 0.0), (0.0, 3.0)])
def test_denoise_level_walks_each_latent_frame_along_its_schedule(stagger, lag):
    from tempo_cli import pipeline
    from tempo_cli.plan import make_plan

    level = make_plan(17, (4,), (1,), height=16, width=16).levels[0]  # one chunk of 5 latent frames
    settings = pipeline.LevelSampling(steps=8, shift=3.0, guidance="none", guidance_scale=1.0, stagger=stagger,
                                      lag=lag)
    dit = _Recorder()
    y = torch.zeros(4 + 4, 5, 2, 2)
    (z,) = pipeline.denoise_level(dit, level, [y], torch.zeros(3, 8), None, settings, seed=1)
    start = initial_noise((4, 5, 2, 2), 1, level.interval, 0)
    sigmas, _ = rolling_schedule(8, 3.0, 5, lag) if lag else staggered_schedule(8, 3.0, 5, stagger)
    assert len(dit.calls) == len(sigmas) == 8 + round(stagger * 8) + round(4 * lag)
    if stagger or lag:
        assert torch.equal(torch.stack(dit.calls)[:, 0], sigmas * 1000)  # one time per latent frame
    else:
        assert torch.equal(torch.stack(dit.calls)[:, 0], sigmas[:, 0] * 1000)  # one time per sample, as always
    # a velocity of ones takes every frame from its noise down by its whole schedule: 1 - 0
    torch.testing.assert_close(z, start - 1.0)


class _FrameLocal(torch.nn.Module):
    """A stand-in DiT whose velocity at a latent frame depends only on that frame's latents, time and condition
    (and the prompt), so that leaving other frames out of a pass cannot change it; records each pass's frames."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.widths = []

    def forward(self, z, t, context, y, rope):
        assert y.shape[2] == rope.shape[1] == t.shape[1] == z.shape[2]
        self.widths.append(z.shape[2])
        prompt = context.mean(dim=(1, 2)).reshape(-1, 1, 1, 1, 1)
        return 0.3 * z - t.reshape(t.shape[0], 1, -1, 1, 1) / 1000 + y[:, 4:] + prompt


@pytest.mark.parametrize("stagger, lag, eta, waiting", [(0.0, 2.0, 0.0, 0), (0.5, 0.0, 0.0, 1), (0.0, 3.0, 0.6, 2)])
def test_waiting_frames_left_out_of_the_passes_change_no_frame_local_result(stagger, lag, eta, waiting):
    from tempo_cli import pipeline
    from tempo_cli.plan import make_plan

    level = make_plan(17, (4,), (1,), height=16, width=16).levels[0]  # one chunk of 5 latent frames
    settings = pipeline.LevelSampling(steps=8, shift=3.0, guidance="cfg", guidance_scale=4.0, stagger=stagger,
                                      lag=lag, eta=eta, eta_window=(0.2, 0.9))
    prompt, negative = torch.full((3, 8), 0.5), torch.zeros(3, 8)
    y = torch.zeros(4 + 4, 5, 2, 2)
    y[4:, 0] = 0.7  # condition latents with no mask: what the frames are given, not a condition
    runs = {}
    for kept in (None, waiting):
        dit = _FrameLocal()
        (z,) = pipeline.denoise_level(dit, level, [y], prompt, negative,
                                      dataclasses.replace(settings, waiting_frames=kept), seed=1)
        runs[kept] = z, dit.widths
    torch.testing.assert_close(runs[waiting][0], runs[None][0])  # the same video from a frame-local model
    sigmas, following = (rolling_schedule(8, 3.0, 5, lag) if lag else staggered_schedule(8, 3.0, 5, stagger))
    assert runs[None][1] == [5] * len(sigmas)
    started = [int((row < 1).sum()) for row in following]  # frames whose sigma has left 1 after each step
    assert runs[waiting][1] == [min(5, n + waiting) for n in started]
    assert started[0] == 1 and sum(runs[waiting][1]) < 5 * len(sigmas)


def test_leaving_waiting_frames_out_keeps_a_later_condition_in_every_pass():
    from tempo_cli import pipeline
    from tempo_cli.plan import make_plan

    level = make_plan(17, (4,), (1,), height=16, width=16).levels[0]
    for guidance in ("cfg", "apg"):
        settings = pipeline.LevelSampling(steps=6, shift=3.0, guidance=guidance, guidance_scale=4.0, lag=2.0,
                                          waiting_frames=0)
        y = torch.zeros(4 + 4, 5, 2, 2)
        y[:4, 3] = 1.0  # latent frame 3 given (a keyframe): the frames up to it are in every pass
        dit = _FrameLocal()
        (z,) = pipeline.denoise_level(dit, level, [y], torch.full((3, 8), 0.5), torch.zeros(3, 8), settings,
                                      seed=1)
        assert min(dit.widths) == 4 and dit.widths[-1] == 5 and bool(z.isfinite().all())
    assert pipeline.frames_in_pass(torch.ones(5), torch.zeros(5, dtype=torch.bool)) == 1  # nothing started yet


def test_stochastic_steps_draw_each_chunks_own_noise_whatever_the_batch():
    from tempo_cli import pipeline
    from tempo_cli.plan import make_plan

    level = make_plan(65, (4, 2), (1, 2), height=16, width=16).levels[1]  # the 12 fps level, in two chunks
    assert len(level.chunks) == 2 and level.chunks[0].latent_frames == level.chunks[1].latent_frames
    settings = pipeline.LevelSampling(steps=6, shift=3.0, guidance="none", guidance_scale=1.0, eta=0.5,
                                      eta_window=(0.2, 0.9))
    conditions = [torch.zeros(4 + 4, c.latent_frames, 2, 2) for c in level.chunks]

    def denoise(chosen, micro_batch=None):
        return pipeline.denoise_level(_Recorder(), level, conditions, torch.zeros(3, 8), None, chosen, seed=1,
                                      micro_batch=micro_batch)

    together, alone = denoise(settings), denoise(settings, micro_batch=1)
    euler = denoise(dataclasses.replace(settings, eta=0.0))
    for a, b, plain in zip(together, alone, euler):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)  # each chunk's own stream, batched or not
        assert not torch.allclose(a, plain, atol=1e-3)
    torch.testing.assert_close(together, denoise(settings))  # reproducible from the seed


def test_partial_schedule_starts_every_frame_at_the_strength():
    flat, _ = flow_schedule(8, 3.0)
    sigmas, following = partial_schedule(flat, next_sigmas(flat), 0.6)
    assert sigmas[0] == pytest.approx(0.6) and bool((sigmas <= 0.6).all()) and following[-1] == 0
    assert torch.equal(sigmas[1:], flat[flat < 0.6]) and torch.equal(following[:-1], sigmas[1:])
    assert torch.equal(partial_schedule(flat, next_sigmas(flat), 1.0)[0], flat)
    grid, grid_next = rolling_schedule(8, 3.0, 4, 2.0)
    sigmas, following = partial_schedule(grid, grid_next, 0.6)
    assert bool((sigmas[0] == 0.6).all()) and bool((sigmas <= 0.6).all()) and bool((following[-1] == 0).all())
    assert bool((sigmas != following).any(dim=1).all())  # no step that moves nothing
    for k in range(4):  # each frame walks its own schedule below the strength, the later ones lagging
        column = sigmas[:, k][sigmas[:, k] < 0.6]
        assert torch.equal(column[column > 0], flat[(flat < 0.6) & (flat > 0)])
    torch.testing.assert_close(partial_schedule(grid, grid_next, 1.0), (grid, grid_next))


@pytest.mark.parametrize("strength", [0.0, -0.5, 1.5, True, math.nan])
def test_partial_schedule_refuses_a_strength_outside_0_1(strength):
    flat, _ = flow_schedule(8, 3.0)
    with pytest.raises(ConfigError, match="strength"):
        partial_schedule(flat, next_sigmas(flat), strength)


@pytest.mark.parametrize("lag", [0.0, 2.0])
def test_denoise_level_from_start_latents_noised_to_a_strength(lag):
    from tempo_cli import pipeline
    from tempo_cli.errors import UsageError
    from tempo_cli.plan import make_plan

    level = make_plan(17, (4,), (1,), height=16, width=16).levels[0]
    settings = pipeline.LevelSampling(steps=8, shift=3.0, guidance="none", guidance_scale=1.0, lag=lag)
    clean = torch.randn(4, 5, 2, 2)
    y = torch.zeros(4 + 4, 5, 2, 2)
    dit = _Recorder()
    (z,) = pipeline.denoise_level(dit, level, [y], torch.zeros(3, 8), None, settings, seed=1, start=[clean],
                                  strength=0.4)
    noise = initial_noise((4, 5, 2, 2), 1, level.interval, 0)
    times = torch.stack(dit.calls)[:, 0]
    assert bool((times <= 400 + 1e-3).all()) and bool((times[0] == 400).all())
    # a velocity of ones takes every frame from its noised start down by 0.4, to 0
    torch.testing.assert_close(z, 0.6 * clean + 0.4 * noise - 0.4)
    with pytest.raises(UsageError, match="start latents"):
        pipeline.denoise_level(dit, level, [y], torch.zeros(3, 8), None, settings, seed=1, start=[clean, clean],
                               strength=0.4)
    with pytest.raises(UsageError, match="shape"):
        pipeline.denoise_level(dit, level, [y], torch.zeros(3, 8), None, settings, seed=1,
                               start=[clean[:, :3]], strength=0.4)
    with pytest.raises(UsageError, match="needs start latents"):
        pipeline.denoise_level(dit, level, [y], torch.zeros(3, 8), None, settings, seed=1, strength=0.4)
