"""The engine that runs a level: conditions -> denoise every chunk -> latents; and decoding back to frames.

A level's chunks are independent given the coarser level, so they denoise together as one batch (in
micro-batches of ``micro_batch`` chunks of equal length), with the conditional and unconditional guidance
passes batched together. Every chunk draws its initial noise from its own stream
(:func:`tempo_cli.sampling.initial_noise` with ``level`` = the level's frame interval and ``chunk`` = its
index), so re-running one level with the same seed reproduces it exactly.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Sequence

import torch

from tempo_cli import distributed, sampling
from tempo_cli.conditions import anchors_from_layout, condition_latents, condition_video
from tempo_cli.config import Preset
from tempo_cli.errors import ConfigError, UsageError
from tempo_cli.plan import Chunk, Level, join_spans


# ---- progress -----------------------------------------------------------------------------------------------

class Progress:
    """Where the engine reports work. This base reports nothing; the CLI passes a rich one."""

    @contextlib.contextmanager
    def task(self, description: str, total: int) -> Iterator[Callable[..., None]]:
        """A unit of work of ``total`` steps; yields ``advance(n, status="")``, where ``status`` (e.g. the
        loss) replaces the text shown after the description."""
        yield lambda n=1, status="": None

    def log(self, message: str) -> None:
        """A one-line note for the user."""


# ---- sampling settings of one level --------------------------------------------------------------------------

@dataclass(frozen=True)
class LevelSampling:
    steps: int
    shift: float
    guidance: str  # "apg" | "cfg" | "none"
    guidance_scale: float
    noise_correlation: float = 0.0
    noise_prior: str = "mixed"
    stagger: float = 0.0  # later latent frames lag behind the earlier ones (sampling.staggered_schedule)
    lag: float = 0.0  # each latent frame starts this many steps after the one before (sampling.rolling_schedule)
    eta: float = 0.0  # stochastic steps (sampling.flow_step) while sigma lies in eta_window
    eta_window: tuple[float, float] = (0.0, 1.0)
    waiting_frames: int | None = None  # waiting latent frames a DiT pass keeps (sampler.waiting_frames); None: all
    classifier_scale: float = 0.0  # classifier guidance (sampler.classifier_scale) while sigma lies in the window
    classifier_window: tuple[float, float] = (0.0, 1.0)
    classifier_every: int = 1  # a new classifier gradient every this many guided steps; the last one in between

    @classmethod
    def for_level(cls, preset: Preset, interval: int, steps: int | None = None) -> "LevelSampling":
        """The preset's settings for the level at frame ``interval`` (``steps`` overrides)."""
        index = preset.video.level_index(interval)
        sampler = preset.sampler
        return cls(steps if steps is not None else sampler.steps[index], sampler.shift[index], sampler.guidance,
                   sampler.guidance_scale_at(index),
                   sampler.noise_correlation[index] if sampler.noise_correlation else 0.0,
                   sampler.noise_prior, sampler.stagger[index] if sampler.stagger else 0.0,
                   sampler.lag[index] if sampler.lag else 0.0, sampler.eta[index] if sampler.eta else 0.0,
                   sampler.eta_window, sampler.waiting_frames, sampler.classifier_scale_at(index),
                   sampler.classifier_window, sampler.classifier_every)

    @property
    def guided(self) -> bool:
        return self.guidance != "none" and self.guidance_scale != 1.0


def shape_steering(store, settings: LevelSampling, prompt: str | None,
                   progress: Progress | None = None) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """What :func:`denoise_level`'s ``steer`` takes for classifier guidance at this level: the gradient of the
    log-probability that the frames decoded from predicted clean latents show each object ``prompt`` names with
    its shape (``tempo_cli.models.classifier``), or None where the level's ``classifier_scale`` is 0 or the
    prompt is not a toy-world caption (said on ``progress``)."""
    if not settings.classifier_scale or prompt is None:
        return None
    from tempo_cli.models.classifier import prompt_targets, shape_gradient

    targets = prompt_targets(prompt)
    if not targets:
        (progress or Progress()).log("classifier guidance is off: the prompt is not a toy-world caption")
        return None
    classifier, vae = store.classifier(), store.vae()
    return lambda x0: shape_gradient(classifier, vae, x0, targets)


def guided_anywhere(preset: Preset, intervals: Sequence[int] | None = None) -> bool:
    """Whether any level of ``preset`` (or those at frame ``intervals``) samples with guidance, so that a prompt's
    file must carry the negative prompt's embeddings for the levels that will refine it."""
    chosen = preset.video.frame_intervals if intervals is None else intervals
    return any(LevelSampling.for_level(preset, s).guided for s in chosen)


# ---- one level -------------------------------------------------------------------------------------------------

def chunk_anchors(level: Level, coarse: torch.Tensor | None,
                  anchors: Mapping[int, torch.Tensor]) -> list[dict[int, torch.Tensor]]:
    """Per chunk: slot -> frame ``[3, H, W]``. Layout anchors come from ``coarse [3, N, H, W]`` (the coarser
    level's decoded video); ``anchors`` (level frame position -> frame) add images, keyframes or context."""
    out = []
    for chunk in level.chunks:
        slots = anchors_from_layout(chunk.source_frame, coarse) if coarse is not None else {}
        slots.update({k: anchors[p] for k, p in enumerate(chunk.positions) if p is not None and p in anchors})
        out.append(slots)
    return out


def level_conditions(vae, level: Level, coarse: torch.Tensor | None, anchors: Mapping[int, torch.Tensor],
                     height: int, width: int) -> list[torch.Tensor]:
    """``y [4 + z, F, h, w]`` of every chunk of ``level`` (VAE-encoded, chunks of one length batched)."""
    param = next(vae.parameters())
    per_chunk = chunk_anchors(level, coarse, anchors)
    out: list[torch.Tensor | None] = [None] * len(level.chunks)
    for frames, members in _groups_by_length(level).items():
        videos, masks = zip(*(condition_video(frames, height, width, per_chunk[i]) for i in members))
        with torch.inference_mode():
            y = condition_latents(vae, torch.stack(videos).to(param.device, param.dtype),
                                  torch.stack(masks).to(param.device, param.dtype))
        for i, row in zip(members, y):
            out[i] = row.float()
    return out  # type: ignore[return-value]


def _groups_by_length(level: Level) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for chunk in level.chunks:
        groups.setdefault(chunk.frames, []).append(chunk.index)
    return groups


def denoise_level(dit, level: Level, conditions: Sequence[torch.Tensor], prompt_embeds: torch.Tensor,
                  negative_embeds: torch.Tensor | None, settings: LevelSampling, seed: int, *,
                  micro_batch: int | None = None, batch_guidance: bool = True,
                  progress: Progress | None = None, start: Sequence[torch.Tensor] | None = None,
                  strength: float = 1.0, shared: bool = True,
                  steer: Callable[[torch.Tensor], torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Denoise every chunk of ``level``; returns per chunk the latents ``[z, F, h, w]`` (float32, CPU).

    Under torchrun the ranks share the chunks out and gather them; ``shared=False`` keeps every chunk in this
    process, for a caller that shares out its own work.

    ``start`` (per chunk, latents ``[z, F, h, w]``) starts from those latents noised to ``strength`` instead of
    from pure noise, and runs only the schedule's steps below it (:func:`sampling.partial_schedule`).

    ``steer`` (:func:`shape_steering`) maps the clean latents ``[b, z, F, h, w]`` that a step's velocity predicts
    to the gradient of a classifier's log-probability, which moves the velocity by the level's
    ``classifier_scale`` (:func:`sampling.classifier_velocity`) in the steps where some frame's sigma lies in its
    ``classifier_window``; it is asked every ``classifier_every`` such steps, and its last gradient serves between
    (each batch of chunks asks first at its first guided step), about the band of frames in the window
    (:func:`_band_gradient`)."""
    progress = progress or Progress()
    param = next(dit.parameters())
    device, dtype = param.device, param.dtype
    guided = settings.guided and negative_embeds is not None
    context = prompt_embeds.to(device, dtype)[None]
    negative = negative_embeds.to(device, dtype)[None] if guided else None
    results: dict[int, torch.Tensor] = {}
    indices = [c.index for c in level.chunks]
    mine = distributed.my_share(indices) if shared else indices  # all of them unless shared under torchrun
    size = max(1, micro_batch or len(mine))
    batches = []
    for group in _groups_by_length(level).values():  # equal lengths batch together
        members = [i for i in group if i in mine]
        batches += [members[i:i + size] for i in range(0, len(members), size)]
    schedules = [_schedule(settings, level.chunks[members[0]].latent_frames) for members in batches]
    if start is not None:
        if len(start) != len(level.chunks):
            raise UsageError(f"start latents: {len(start)} given for {len(level.chunks)} chunk(s)")
        schedules = [sampling.partial_schedule(*schedule, strength) for schedule in schedules]
    elif strength != 1.0:
        raise UsageError("a denoising strength below 1 needs start latents to noise")
    total = sum(len(sigmas) for sigmas, _ in schedules)
    steps = (f"{settings.steps} steps" + (f", stagger {settings.stagger:g}" if settings.stagger else "")
             + (f", lag {settings.lag:g}" if settings.lag else ""))  # short: the bar's time stays on 80 columns
    with progress.task(f"{_fps_name(level)}: {len(level.chunks)} chunk(s), {steps}", total) as advance:
        for members, (sigmas, next_sigmas) in zip(batches, schedules):
            y = torch.stack([conditions[i] for i in members]).to(device, dtype)  # [b, 4+z, F, h, w]
            z_shape = (y.shape[1] - 4, *y.shape[2:])
            z = torch.stack([sampling.initial_noise(z_shape, seed, level.interval, i,
                                                    correlation=settings.noise_correlation,
                                                    prior=settings.noise_prior)
                             for i in members]).to(device)
            if start is not None:
                given = torch.stack([start[i].float() for i in members]).to(device)
                if given.shape != z.shape:
                    raise UsageError(f"start latents of shape {tuple(given.shape[1:])} for chunks of "
                                     f"{tuple(z.shape[1:])}")
                z = (1 - strength) * given + strength * z
            rope = torch.tensor([level.chunks[i].rope for i in members], device=device)
            frames = z.shape[2]
            conditioned = (y[:, :4].abs().amax(dim=(0, 1, 3, 4)) > 0).cpu()  # [F]: frames with a condition
            state, grad, guided_steps = None, None, 0
            redraw = [sampling.step_noise(z_shape, seed, level.interval, i) for i in members] if settings.eta else []
            for step in range(len(sigmas)):
                n = frames  # the leading latent frames this step's DiT pass takes
                if sigmas.dim() == 1:  # one time for every frame (a float, as the reference computes it)
                    sigma, sigma_next = sigmas[step].item(), next_sigmas[step].item()
                    t = (sigmas[step] * 1000).expand(len(members)).to(device)
                else:  # one per latent frame; a finished frame (sigma 0) stays put whatever its velocity
                    if settings.waiting_frames is not None:
                        n = frames_in_pass(next_sigmas[step], conditioned, settings.waiting_frames)
                    sigma = sigmas[step, :n].to(device).reshape(1, 1, -1, 1, 1)
                    sigma_next = next_sigmas[step, :n].to(device).reshape(1, 1, -1, 1, 1)
                    t = (sigmas[step, :n] * 1000)[None].expand(len(members), -1).to(device)
                z_in, y_in = z[:, :, :n], y[:, :, :n]
                with torch.inference_mode():
                    if not guided:
                        velocity = dit(z_in, t, context, y_in, rope[:, :n])
                    else:
                        cond_v, uncond_v = _guidance_passes(dit, z_in, t, context, negative, y_in, rope[:, :n],
                                                            batch_guidance)
                        guide_sigma = sigma if isinstance(sigma, float) else sigma.clamp_min(1e-4)  # APG divides
                        part = None if state is None else sampling.ApgState(state.running[:, :, :n])
                        velocity, part = sampling.guide(settings.guidance, cond_v, uncond_v, z_in,
                                                        guide_sigma, settings.guidance_scale, part)
                        state = _widen_state(part, frames)
                inside = sampling.in_window(sigma, settings.classifier_window) if steer is not None else None
                if inside is not None and inside.any():
                    if grad is None or grad.shape != z_in.shape or guided_steps % settings.classifier_every == 0:
                        x0 = sampling.velocity_to_x0(z_in.float(), velocity.float(), sigma)
                        grad = _band_gradient(steer, x0, inside)
                    guided_steps += 1
                    velocity = sampling.classifier_velocity(velocity.float(), grad, sigma,
                                                            settings.classifier_scale, settings.classifier_window)
                if redraw:
                    fresh = torch.stack([next(stream) for stream in redraw]).to(device)[:, :, :n]
                    stepped = sampling.flow_step(z_in, velocity.float(), sigma, sigma_next, settings.eta, fresh,
                                                 settings.eta_window)
                else:
                    stepped = sampling.euler_step(z_in, velocity.float(), sigma, sigma_next)
                z = stepped if n == frames else torch.cat([stepped, z[:, :, n:]], dim=2)
                advance(1)
            results.update(zip(members, z.cpu()))
    if shared:
        results = distributed.gather(results)
    return [results[c.index] for c in level.chunks]


STEER_CONTEXT = 2  # latent frames decoded before the guided ones, for the causal decoder's history


def _band_gradient(steer: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor,
                   inside: torch.Tensor) -> torch.Tensor:
    """``steer``'s gradient for predicted clean latents ``x0`` ``[b, z, F, h, w]``, asked only about the band of
    latent frames from the first to the last that ``inside`` (a bool per frame, or one for all) marks, after
    :data:`STEER_CONTEXT` frames before it; zero elsewhere. In a rolling schedule the band is the few frames
    in the guidance window, so a step's decode costs the same in a long clip as in a short one."""
    marked = inside.reshape(-1).cpu() if inside.dim() else torch.ones(x0.shape[2], dtype=torch.bool)
    where = marked.expand(x0.shape[2]).nonzero().flatten()
    first, last = max(0, int(where[0]) - STEER_CONTEXT), int(where[-1]) + 1
    grad = torch.zeros_like(x0)
    grad[:, :, first:last] = steer(x0[:, :, first:last])
    return grad


def frames_in_pass(next_sigmas: torch.Tensor, conditioned: torch.Tensor, waiting: int = 0) -> int:
    """How many leading latent frames a pass takes that keeps ``waiting`` of the frames still waiting their turn,
    given each frame's sigma after this step ``[F]`` and which frames hold a condition ``[F]`` (bool): through the
    last frame that has started (its sigma falls below 1 with this step, or already has) or is given, and
    ``waiting`` more. The frames after those are pure noise that this step leaves as they are."""
    busy = (next_sigmas < 1) | conditioned
    last = int(busy.nonzero().max()) if bool(busy.any()) else 0
    return min(last + 1 + waiting, len(next_sigmas))


def _widen_state(state: sampling.ApgState | None, frames: int) -> sampling.ApgState | None:
    """APG's running difference over a pass's leading latent frames, padded with zeros to all ``frames`` (a frame
    left out so far has nothing to carry)."""
    if state is None or state.running.shape[2] == frames:
        return state
    running = state.running.new_zeros((*state.running.shape[:2], frames, *state.running.shape[3:]))
    running[:, :, :state.running.shape[2]] = state.running
    return sampling.ApgState(running)


def _schedule(settings: LevelSampling, latent_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sigmas, next_sigmas)`` of a chunk: ``[steps]`` each, or ``[S, latent_frames]`` when staggered."""
    if settings.lag:
        return sampling.rolling_schedule(settings.steps, settings.shift, latent_frames, settings.lag)
    if settings.stagger:
        return sampling.staggered_schedule(settings.steps, settings.shift, latent_frames, settings.stagger)
    sigmas, _ = sampling.flow_schedule(settings.steps, settings.shift)
    return sigmas, sampling.next_sigmas(sigmas)


def _guidance_passes(dit, z, t, context, negative, y, rope, batched: bool) -> tuple[torch.Tensor, torch.Tensor]:
    b = z.shape[0]
    if batched:
        both = torch.cat([context.expand(b, -1, -1), negative.expand(b, -1, -1)])
        out = dit(torch.cat([z, z]), torch.cat([t, t]), both, torch.cat([y, y]), torch.cat([rope, rope]))
        return out[:b].float(), out[b:].float()
    return dit(z, t, context, y, rope).float(), dit(z, t, negative, y, rope).float()


def _fps_name(level: Level) -> str:
    return f"level {level.index} (interval {level.interval})"


def decode_level(vae, level: Level, chunk_latents: Sequence[torch.Tensor], progress: Progress | None = None,
                 first: int = 0) -> torch.Tensor:
    """Decode the chunks and join them into the level's video ``[3, T - first, H, W]`` in [-1, 1] (float32, CPU).

    Only chunks that hold frames at or after level position ``first`` are decoded.
    """
    progress = progress or Progress()
    param = next(vae.parameters())
    if len(chunk_latents) != len(level.chunks):
        raise ConfigError(f"level {level.index} has {len(level.chunks)} chunks, got latents of {len(chunk_latents)}")
    spans = [span for span in join_spans(level) if level.chunks[span.chunk].positions[span.stop - 1] >= first]
    pieces = []
    with progress.task(f"decoding {len(spans)} chunk(s)", len(spans)) as advance:
        for c, a, b in spans:
            with torch.inference_mode():
                video = vae.decode(chunk_latents[c][None].to(param.device, param.dtype))[0].float().cpu()
            start = max(a, a + first - level.chunks[c].positions[a])
            pieces.append(video[:, start:b])
            advance(1)
    return torch.cat(pieces, dim=1)


# ---- latent files <-> levels ------------------------------------------------------------------------------------

def chunk_records(level: Level) -> list[dict]:
    """The chunk layout of a level as stored in a latent file header."""
    return [{"start": next(p for p in c.positions if p is not None), "frames": c.frames,
             "real": sum(p is not None for p in c.positions),
             "latent_frames": c.latent_frames, "rope_start": c.rope[0], "rope": list(c.rope),
             "source_frame": list(c.source_frame), "mask": list(c.mask)} for c in level.chunks]


def level_from_header(header) -> Level:
    """Rebuild the level a latent file holds (enough to join its chunks and to refine from it)."""
    chunks = []
    for i, record in enumerate(header.chunks):
        start, frames, real = record["start"], record["frames"], record.get("real", record["frames"])
        positions = tuple(start + k if k < real and start + k < header.frames else None for k in range(frames))
        rope = tuple(record.get("rope") or [record["rope_start"] + j * header.frame_interval
                                              for j in range(record["latent_frames"])])
        source = tuple(record.get("source_frame") or [-1] * frames)
        chunks.append(Chunk(i, positions, source, tuple(record.get("mask") or [0] * frames), rope))
    return Level(len(header.levels), header.frame_interval, header.frames, tuple(chunks))


def encode_prompts(store, prompt: str, negative_prompt: str, guided: bool,
                   progress: Progress | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Prompt (and, with guidance, negative prompt) embeddings ``[text_len, dim]``; frees the encoder after."""
    with_negative = guided and not _blank(negative_prompt)
    embeds = _encode_texts(store, [prompt, negative_prompt] if with_negative else [prompt], progress, check=prompt)
    negative = (embeds[1] if with_negative else torch.zeros_like(embeds[0])) if guided else None
    return embeds[0], negative


def encode_negative(store, negative_prompt: str, like: torch.Tensor, progress: Progress | None = None) -> torch.Tensor:
    """The negative prompt's embeddings alone, shaped ``like`` the prompt's (for guiding a file made without
    guidance); an empty one is the zero embedding, and the encoder is not loaded for it."""
    return torch.zeros_like(like) if _blank(negative_prompt) else _encode_texts(store, [negative_prompt], progress)[0]


def _blank(negative_prompt: str) -> bool:
    """An empty negative prompt is all padding: its embedding is zero, and nothing needs encoding."""
    return not negative_prompt.strip()


def _encode_texts(store, texts: list[str], progress: Progress | None, check: str | None = None) -> torch.Tensor:
    """Embeddings ``[len(texts), text_len, dim]`` on the CPU, saying which words of ``check`` the tokenizer does not
    know; frees the encoder after."""
    from tempo_cli.models.text_encoder import encode_prompts as encode
    from tempo_cli.tokenizers import unknown_words

    progress = progress or Progress()
    with progress.task("encoding the prompt", 1) as advance:
        encoder, tokenizer = store.text_encoder()
        if check is not None and (unknown := unknown_words(tokenizer, check)):
            progress.log(f"preset {store.preset.name!r} does not know the word(s) {', '.join(map(repr, unknown))}: "
                         f"it reads them as unknown")
        embeds = encode(encoder, tokenizer, texts, device=store.device).float().cpu()
        advance(1)
    store.release("text_encoder")
    return embeds


def decode_file(store, latent_file, progress: Progress | None = None, first: int = 0) -> torch.Tensor:
    """The video ``[3, T - first, H, W]`` in [-1, 1] that a latent file holds from frame ``first`` on."""
    return decode_level(store.vae(), level_from_header(latent_file.header), latent_file.chunks, progress, first)
