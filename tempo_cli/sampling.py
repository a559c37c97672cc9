"""Pure sampling math: the flow-matching schedule, the Euler step, guidance and the noise streams.

Flow matching as in the reference: ``z_t = (1 - sigma) * x0 + sigma * noise`` and the DiT predicts the
velocity ``v = noise - x0``, so ``x0 = z - sigma * v``. Latents are ``[B, C, F, H, W]``. Everything here
takes tensors and returns tensors; APG's momentum is an explicit :class:`ApgState` passed in and returned.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from tempo_cli.config import NOISE_PRIORS
from tempo_cli.errors import ConfigError
from tempo_cli.plan import frame_starts

GUIDANCE_KINDS = ("cfg", "apg")
# APG's momentum-averaged difference is clipped per latent frame, over (C, H, W) ...
APG_NORM_DIMS = (1, 3, 4)
# ... and projected onto the conditional x0 per sample, over (C, F, H, W), as the reference does.
APG_PROJECT_DIMS = (1, 2, 3, 4)


def flow_schedule(steps: int, shift: float) -> tuple[Tensor, Tensor]:
    """Shifted flow-matching schedule: ``(sigmas [N], timesteps [N])``, float32.

    ``sigma = linspace(1, 0, N + 1)[:-1]`` (sigma_min 0, the final step to 0 dropped), shifted as
    ``shift * sigma / (1 + (shift - 1) * sigma)``; ``timesteps = 1000 * sigma``.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"sampler steps must be an integer >= 1, got {steps!r}", "use e.g. 50")
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not (0 < shift < math.inf):
        raise ConfigError(f"sampler shift must be a finite number > 0, got {shift!r}", "use e.g. 5.0; 1.0 is no shift")
    sigmas = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float32)[:-1]
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    return sigmas, sigmas * 1000


def staggered_schedule(steps: int, shift: float, frames: int, stagger: float) -> tuple[Tensor, Tensor]:
    """A schedule whose later latent frames lag behind the earlier ones (rolling, as in diffusion forcing):
    ``(sigmas [S, F], next_sigmas [S, F])``, float32, where step ``i`` takes latent frame ``k`` from
    ``sigmas[i, k]`` to ``next_sigmas[i, k]``.

    Every frame walks the :func:`flow_schedule` of ``steps`` steps down to 0, frame ``k`` starting
    ``round(k * stagger * steps / (frames - 1))`` steps after frame 0 and waiting at 1 (pure noise) until then;
    a frame that is done stays at 0. So the last frame lags the first by ``stagger`` of a whole schedule, and
    ``S = steps + lag of the last frame``. ``stagger`` 0 is :func:`flow_schedule` for every frame.
    """
    if isinstance(stagger, bool) or not isinstance(stagger, (int, float)) or not 0 <= stagger < math.inf:
        raise ConfigError(f"sampler stagger must be a finite number >= 0, got {stagger!r}",
                          "use 0 (every frame together) to 1 (the last frame starts as the first ends)")
    _check_frames(frames)
    return _lagged_schedule(steps, shift, frame_starts(steps, frames, stagger=stagger))


def rolling_schedule(steps: int, shift: float, frames: int, lag: float) -> tuple[Tensor, Tensor]:
    """Like :func:`staggered_schedule`, but each latent frame starts ``lag`` steps after the one before
    (frame ``k``: ``round(k * lag)``), however many frames the chunk has: neighbours keep the same distance in
    long chunks too, and ``S = steps + round((frames - 1) * lag)`` grows with the chunk."""
    if isinstance(lag, bool) or not isinstance(lag, (int, float)) or not 0 <= lag < math.inf:
        raise ConfigError(f"sampler lag must be a finite number of steps >= 0, got {lag!r}")
    _check_frames(frames)
    return _lagged_schedule(steps, shift, frame_starts(steps, frames, lag=lag))


def _check_frames(frames: int) -> None:
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise ConfigError(f"a staggered schedule needs a whole number of latent frames >= 1, got {frames!r}")


def _lagged_schedule(steps: int, shift: float, starts: list[int]) -> tuple[Tensor, Tensor]:
    """Frame ``k`` walks the flow schedule ``starts[k]`` steps after step 0 (see :func:`staggered_schedule`)."""
    sigmas, _ = flow_schedule(steps, shift)
    grid = torch.cat([sigmas, sigmas.new_zeros(1)])  # [steps + 1]: the sigma after j steps
    lags = torch.tensor(starts)
    index = torch.arange(steps + int(lags[-1]))[:, None] - lags[None]  # [S, F]: steps frame k has taken
    return grid[index.clamp(0, steps)], grid[(index + 1).clamp(0, steps)]


def partial_schedule(sigmas: Tensor, next_sigmas: Tensor, strength: float) -> tuple[Tensor, Tensor]:
    """The part of a schedule (``[N]`` or ``[S, F]``, with its ``next_sigmas``) below noise level ``strength``,
    for denoising a given latent noised to ``strength`` (SDEdit; ComfyUI's "denoise"): every sigma is capped at
    ``strength`` and the steps that then move no frame are dropped, so the first step starts every frame at
    ``strength``. ``strength`` 1 is the whole schedule."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
        raise ConfigError(f"the denoising strength must be in (0, 1], got {strength!r}",
                          "1 starts from pure noise; 0.5 keeps the given latents' layout")
    sigmas, next_sigmas = sigmas.clamp(max=strength), next_sigmas.clamp(max=strength)
    moving = sigmas != next_sigmas
    keep = moving if moving.dim() == 1 else moving.any(dim=1)
    return sigmas[keep], next_sigmas[keep]


def next_sigmas(sigmas: Tensor) -> Tensor:
    """The sigma each step lands on: ``sigmas[1:]`` followed by 0. ``[N] -> [N]``."""
    return torch.cat([sigmas[1:], sigmas.new_zeros(1)])


def euler_step(z: Tensor, velocity: Tensor, sigma: float | Tensor, sigma_next: float | Tensor) -> Tensor:
    """One Euler step of the flow ODE from ``sigma`` to ``sigma_next``."""
    return z + (sigma_next - sigma) * velocity


def flow_step(z: Tensor, velocity: Tensor, sigma: float | Tensor, sigma_next: float | Tensor, eta: float,
              fresh: Tensor, window: tuple[float, float] = (0.0, 1.0)) -> Tensor:
    """One step from ``sigma`` to ``sigma_next`` that draws part of its noise anew (DDIM's eta, for the flow).

    With ``z = (1 - sigma) x0 + sigma eps``, the velocity gives the clean latent ``x0 = z - sigma v`` and the noise
    ``eps = z + (1 - sigma) v``; the step lands on ``(1 - sigma_next) x0 + sigma_next (sqrt(1 - eta^2) eps + eta
    fresh)``, ``fresh`` standard normal like ``z``. ``eta`` 0 is the Euler step, 1 ancestral sampling (the noise
    redrawn whole). Only where ``window[0] <= sigma <= window[1]`` (per latent frame when sigma is one per frame, a
    tensor broadcasting against ``z``) and ``sigma_next < sigma``; elsewhere the Euler step, so a latent frame
    that waits its turn in a rolling schedule (or is done) keeps its values. A step to ``sigma_next = 0`` lands on
    ``x0`` whatever ``eta``."""
    s = torch.as_tensor(sigma, dtype=z.dtype, device=z.device)
    s_next = torch.as_tensor(sigma_next, dtype=z.dtype, device=z.device)
    x0, eps = velocity_to_x0(z, velocity, s), z + (1 - s) * velocity
    share = eta * ((s >= window[0]) & (s <= window[1]) & (s_next < s)).to(z.dtype)
    return (1 - s_next) * x0 + s_next * ((1 - share.square()).sqrt() * eps + share * fresh)


def velocity_to_x0(z: Tensor, velocity: Tensor, sigma: float | Tensor) -> Tensor:
    return z - sigma * velocity


def x0_to_velocity(z: Tensor, x0: Tensor, sigma: float | Tensor) -> Tensor:
    """Inverse of :func:`velocity_to_x0`; ``sigma`` must be > 0 (the schedule never reaches 0)."""
    return (z - x0) / sigma


def in_window(sigma: float | Tensor, window: tuple[float, float]) -> Tensor:
    """Where classifier guidance acts: ``window[0] <= sigma <= window[1]`` and ``0 < sigma < 1`` (per latent frame
    when sigma is one per frame), so a frame still waiting at sigma 1, or done, is left alone."""
    s = torch.as_tensor(sigma)
    return (s >= window[0]) & (s <= window[1]) & (s > 0) & (s < 1)


def classifier_velocity(velocity: Tensor, grad: Tensor, sigma: float | Tensor, scale: float,
                        window: tuple[float, float] = (0.0, 1.0)) -> Tensor:
    """The velocity under classifier guidance on the predicted clean latents, by ``grad``, the gradient of a
    classifier's log-probability with respect to ``x0 = z - sigma v`` ``[B, C, F, h, w]``.

    Each latent frame's gradient is scaled to unit RMS, and the prediction moves by ``scale`` times it:
    ``x0 + scale * g`` at fixed ``z`` is the velocity ``v - scale * g / sigma``, so an Euler step to
    ``sigma_next`` moves ``z`` by ``(sigma - sigma_next) / sigma`` of that change, whatever the size of the
    classifier's gradient. Only :func:`in_window`; elsewhere the velocity is kept."""
    s = torch.as_tensor(sigma, dtype=velocity.dtype, device=velocity.device)
    inside = in_window(s, window).to(velocity.device)
    g = grad.to(velocity.dtype)
    g = g / g.square().mean(dim=(1, 3, 4), keepdim=True).sqrt().clamp_min(1e-12)
    return velocity - torch.where(inside, scale * g / s.clamp_min(1e-6), 0.0)


@dataclass(frozen=True)
class ApgState:
    """APG's momentum buffer: the running average of ``cond_x0 - uncond_x0``, ``[B, C, F, H, W]``.

    Start each chunk's denoising loop with ``None`` and thread the returned state through its steps.
    """

    running: Tensor


def cfg(
    cond_v: Tensor, uncond_v: Tensor, z: Tensor, sigma: float | Tensor, scale: float, state: ApgState | None = None
) -> tuple[Tensor, ApgState | None]:
    """Classifier-free guidance ``uncond + scale * (cond - uncond)`` in x0 space; returns a velocity.

    The map is affine, so in x0 space and in velocity space it is the same; it is computed on velocities
    (no division by sigma). ``z`` and ``sigma`` are unused and ``state`` passes through, to match :func:`apg`.
    """
    return uncond_v + scale * (cond_v - uncond_v), state


def apg(
    cond_v: Tensor,
    uncond_v: Tensor,
    z: Tensor,
    sigma: float | Tensor,
    scale: float,
    state: ApgState | None = None,
    momentum: float = -0.5,
    norm_threshold: float = 27.0,
    eta: float = 0.0,
) -> tuple[Tensor, ApgState]:
    """Adaptive projected guidance (Sadat et al., 2024) in x0 space; returns ``(velocity, new_state)``.

    ``diff = cond_x0 - uncond_x0``; ``running = diff + momentum * running``; the running difference is
    rescaled so its L2 norm over (C, H, W) of each latent frame is at most ``norm_threshold``, split into
    parts parallel and orthogonal to ``cond_x0`` (over (C, F, H, W) of each sample), and
    ``x0 = cond_x0 + (scale - 1) * (orthogonal + eta * parallel)``. Inputs are ``[B, C, F, H, W]`` velocities.
    """
    dtype = cond_v.dtype
    z, cond_v, uncond_v = z.float(), cond_v.float(), uncond_v.float()
    cond = velocity_to_x0(z, cond_v, sigma)
    diff = cond - velocity_to_x0(z, uncond_v, sigma)
    running = diff if state is None else diff + momentum * state.running
    if norm_threshold > 0:
        norm = torch.linalg.vector_norm(running, dim=APG_NORM_DIMS, keepdim=True)  # [B, 1, F, 1, 1]
        update = running * torch.clamp(norm_threshold / norm, max=1.0)
    else:
        update = running
    unit = torch.nn.functional.normalize(cond, dim=APG_PROJECT_DIMS)
    parallel = (update * unit).sum(dim=APG_PROJECT_DIMS, keepdim=True) * unit  # [B, C, F, H, W]
    guided = cond + (scale - 1) * (update - parallel + eta * parallel)
    return x0_to_velocity(z, guided, sigma).to(dtype), ApgState(running)


def guide(
    kind: str,
    cond_v: Tensor,
    uncond_v: Tensor,
    z: Tensor,
    sigma: float | Tensor,
    scale: float,
    state: ApgState | None = None,
) -> tuple[Tensor, ApgState | None]:
    """Dispatch to :func:`cfg` or :func:`apg` by name (APG with its default momentum, threshold and eta)."""
    if kind == "cfg":
        return cfg(cond_v, uncond_v, z, sigma, scale, state)
    if kind == "apg":
        return apg(cond_v, uncond_v, z, sigma, scale, state)
    raise ConfigError(f"unknown guidance {kind!r}", f"choose one of: {', '.join(GUIDANCE_KINDS)}")


def noise_seed(seed: int, level: int, chunk: int, stream: str = "") -> int:
    """The seed of one (level, chunk) noise stream of a run seeded with ``seed``; ``stream`` names another one
    of the same chunk (the initial noise's has none).

    The first 8 bytes (big-endian) of ``sha256(f"{seed}:{level}:{chunk}")`` (``f"...:{stream}"`` with a stream),
    masked to 63 bits. Stable across processes, platforms and Python versions (unlike ``hash()``).
    """
    name = f"{int(seed)}:{int(level)}:{int(chunk)}" + (f":{stream}" if stream else "")
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def step_noise(shape: tuple[int, ...] | torch.Size, seed: int, level: int, chunk: int) -> Iterator[Tensor]:
    """The noise a chunk's stochastic steps draw (:func:`flow_step`): standard normal float32 CPU tensors of
    ``shape``, one per step, from the chunk's ``steps`` stream, so that they do not depend on the batch the chunk
    is denoised in (or the rank under torchrun)."""
    generator = torch.Generator(device="cpu").manual_seed(noise_seed(seed, level, chunk, "steps"))
    while True:
        yield torch.randn(tuple(shape), generator=generator, dtype=torch.float32)


def correlate_frames(noise: Tensor, correlation: float | Tensor, prior: str = "mixed",
                     generator: torch.Generator | None = None) -> Tensor:
    """Correlate independent standard normal ``noise [B, C, F, H, W]`` across its latent frames (dim 2); every
    value stays standard normal. The two noise priors of PYoCo (Ge et al., 2023):

    - ``mixed``: all frames share a ``c`` share of each value's variance, ``sqrt(c) * shared + sqrt(1 - c) * own``
      (``shared [B, C, 1, H, W]`` drawn from ``generator`` after ``noise``); any two frames correlate ``c``.
    - ``progressive``: each frame keeps ``c`` of the one before, ``e_j = c * e_(j-1) + sqrt(1 - c^2) * n_j``
      (nothing more is drawn); frames k apart correlate ``c^k``, so nothing stays in place over a long chunk.

    ``correlation``: one value, or one per sample ``[B]``, in [0, 1); where it is 0 the noise is returned as is.
    """
    if prior not in NOISE_PRIORS:
        raise ConfigError(f"unknown noise prior {prior!r}", hint=f"use one of {', '.join(NOISE_PRIORS)}")
    c = torch.as_tensor(correlation, dtype=torch.float32).reshape(-1)
    if c.numel() not in (1, noise.shape[0]) or not bool(((c >= 0) & (c < 1)).all()):
        raise ConfigError(f"noise correlation must be in [0, 1), one value or one per sample, got {c.tolist()}")
    c = c.to(noise.device).reshape(-1, 1, 1, 1, 1).expand(noise.shape[0], 1, 1, 1, 1)
    if prior == "mixed":
        shared = torch.randn((noise.shape[0], noise.shape[1], 1, *noise.shape[3:]), generator=generator,
                             dtype=noise.dtype).to(noise.device)
        return c.sqrt() * shared + (1 - c).sqrt() * noise
    keep, fresh = c[:, :, 0], (1 - c[:, :, 0].square()).sqrt()  # [B, 1, 1, 1] against a frame [B, C, H, W]
    frames = [noise[:, :, 0]]
    for j in range(1, noise.shape[2]):
        frames.append(keep * frames[-1] + fresh * noise[:, :, j])
    return torch.stack(frames, dim=2)


def initial_noise(
    shape: tuple[int, ...] | torch.Size,
    seed: int,
    level: int,
    chunk: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    correlation: float = 0.0,
    prior: str = "mixed",
) -> Tensor:
    """Standard normal noise of ``shape`` ``[C, F, H, W]`` from the (seed, level, chunk) stream.

    ``correlation`` and ``prior``: how the latent frames (dim 1) are correlated (:func:`correlate_frames`); 0
    (independent frames) draws exactly the plain stream. Drawn in float32 on a private CPU generator, so it is
    the same on every device and leaves the global RNG alone; then moved to ``device`` and cast to ``dtype``.
    """
    generator = torch.Generator(device="cpu").manual_seed(noise_seed(seed, level, chunk))
    noise = torch.randn(tuple(shape), generator=generator, dtype=torch.float32)
    if correlation:  # correlate_frames checks the value and the prior
        noise = correlate_frames(noise[None], correlation, prior, generator)[0]
    return noise.to(device=device, dtype=dtype)
