"""Typed, frozen configs. Field names are the official constructor arguments of the released models.

Presets (YAML) fill these; nothing else holds model hyper-parameters. Each config checks itself on
construction and raises :class:`ConfigError` naming the field, the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping, TypeVar

from tempo_cli.errors import ConfigError

T = TypeVar("T")


def _positive(owner: str, **fields: int | float) -> None:
    for name, value in fields.items():
        if not value > 0:
            raise ConfigError(f"{owner}.{name} must be positive, got {value!r}")


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """Channels of one attention head given to temporal, height and width RoPE (Wan's 3-D split:
    ``d - 4 * (d // 6)`` temporal, ``2 * (d // 6)`` each for height and width; 44/42/42 at 128, 24/20/20 at 64)."""
    sixth = head_dim // 6
    return head_dim - 4 * sixth, 2 * sixth, 2 * sixth


PREDICTIONS = ("velocity", "sample")


@dataclass(frozen=True)
class DiTConfig:
    """The Wan2.1/2.2 diffusion transformer (``WanModel``) as TempoMaster uses it.

    ``in_dim`` = noisy latent channels + 4 mask channels + condition latent channels (36 in the release).
    ``prediction``: what the network's head outputs. ``velocity`` (the release) is the flow-matching velocity
    itself; ``sample`` is the clean latent, turned into the velocity ``(z_t - x0) / t`` before it leaves the
    model, so sampling and the velocity loss are the same either way. A head narrower than a patch's values
    (a toy model's 4x4 patches of 16 channels: 256 values) cannot pass the noise through to the velocity, and
    learns far faster predicting the clean latent, whose patches are simple (as JiT found for large patches).
    """

    dim: int
    in_dim: int
    ffn_dim: int
    freq_dim: int
    text_dim: int
    out_dim: int
    num_heads: int
    num_layers: int
    eps: float = 1e-6
    patch_size: tuple[int, int, int] = (1, 2, 2)
    prediction: str = "velocity"
    # not in the release: the mean of the prompt's token embeddings, projected, is added to the time embedding, so
    # every block's modulation (not only its cross-attention) reads the prompt, as pooled text vectors do in SD3
    # and FLUX; the projection starts at zero, so a DiT trained without it computes the same at first
    text_pool: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        if self.prediction not in PREDICTIONS:
            raise ConfigError(f"DiTConfig.prediction {self.prediction!r} is not one of {', '.join(PREDICTIONS)}")
        _positive("DiTConfig", dim=self.dim, in_dim=self.in_dim, ffn_dim=self.ffn_dim,
                  freq_dim=self.freq_dim, text_dim=self.text_dim, out_dim=self.out_dim,
                  num_heads=self.num_heads, num_layers=self.num_layers, eps=self.eps)
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ConfigError(f"DiTConfig.patch_size must be three positive ints (t, h, w), got {self.patch_size!r}")
        if self.dim % self.num_heads:
            raise ConfigError(f"DiTConfig.dim ({self.dim}) must be divisible by num_heads ({self.num_heads})")
        if self.freq_dim % 2:
            raise ConfigError(f"DiTConfig.freq_dim must be even (cos and sin halves), got {self.freq_dim}")
        if self.in_dim != 2 * self.out_dim + 4:
            raise ConfigError(
                f"DiTConfig.in_dim must be 2*out_dim + 4 (noisy latents, 4 mask channels, condition latents); "
                f"got in_dim={self.in_dim}, out_dim={self.out_dim}")
        parts = rope_split(self.head_dim)
        if any(p % 2 or p == 0 for p in parts):
            raise ConfigError(
                f"DiTConfig head dimension {self.head_dim} (dim/num_heads) must split into three even, non-empty "
                f"RoPE parts (temporal, height, width) = {parts}",
                hint="choose dim/num_heads such as 48, 64 or 128 (at least 6 and even)")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def latent_channels(self) -> int:
        return self.out_dim

    def num_parameters(self) -> int:
        """Parameter count of the model this config builds (no model needed)."""
        d, f = self.dim, self.ffn_dim
        patch = self.in_dim * math.prod(self.patch_size) * d + d
        text = self.text_dim * d + d + d * d + d
        time = self.freq_dim * d + d + d * d + d + d * 6 * d + 6 * d
        block = 8 * (d * d + d) + 4 * d + 2 * d + (d * f + f) + (f * d + d) + 6 * d
        head = d * self.out_dim * math.prod(self.patch_size) + self.out_dim * math.prod(self.patch_size) + 2 * d
        pool = self.text_dim * d + d if self.text_pool else 0
        return patch + text + time + pool + self.num_layers * block + head


@dataclass(frozen=True)
class VAEConfig:
    """The Wan2.1 causal video VAE. ``temporal_downsample`` is the release's ``temperal_downsample``."""

    dim: int
    z_dim: int
    dim_mult: tuple[int, ...]
    num_res_blocks: int
    temporal_downsample: tuple[bool, ...]
    latents_mean: tuple[float, ...]
    latents_std: tuple[float, ...]

    def __post_init__(self) -> None:
        for name in ("dim_mult", "temporal_downsample", "latents_mean", "latents_std"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "temporal_downsample", tuple(bool(t) for t in self.temporal_downsample))
        object.__setattr__(self, "latents_mean", tuple(float(m) for m in self.latents_mean))
        object.__setattr__(self, "latents_std", tuple(float(s) for s in self.latents_std))
        _positive("VAEConfig", dim=self.dim, z_dim=self.z_dim, num_res_blocks=self.num_res_blocks)
        if not self.dim_mult or min(self.dim_mult) < 1:
            raise ConfigError(f"VAEConfig.dim_mult must be positive ints, got {self.dim_mult!r}")
        if len(self.temporal_downsample) != len(self.dim_mult) - 1:
            raise ConfigError(
                f"VAEConfig.temporal_downsample needs one flag per downsampling stage "
                f"({len(self.dim_mult) - 1}), got {len(self.temporal_downsample)}")
        for name in ("latents_mean", "latents_std"):
            if len(getattr(self, name)) != self.z_dim:
                raise ConfigError(f"VAEConfig.{name} needs z_dim={self.z_dim} values, got {len(getattr(self, name))}")
        if min(self.latents_std) <= 0:
            raise ConfigError("VAEConfig.latents_std values must be positive")

    @property
    def temporal_factor(self) -> int:
        """Pixel frames per latent frame (after the first): 4 for the release."""
        return 2 ** sum(self.temporal_downsample)

    @property
    def spatial_factor(self) -> int:
        """Pixels per latent along height and width: 8 for the release."""
        return 2 ** (len(self.dim_mult) - 1)


@dataclass(frozen=True)
class TextEncoderConfig:
    """The UMT5 encoder in the release's native (``T5Encoder``) terms."""

    vocab: int
    dim: int
    dim_attn: int
    dim_ffn: int
    num_heads: int
    num_layers: int
    num_buckets: int
    text_len: int = 512

    def __post_init__(self) -> None:
        _positive("TextEncoderConfig", vocab=self.vocab, dim=self.dim, dim_attn=self.dim_attn,
                  dim_ffn=self.dim_ffn, num_heads=self.num_heads, num_layers=self.num_layers,
                  num_buckets=self.num_buckets, text_len=self.text_len)
        if self.dim_attn % self.num_heads:
            raise ConfigError(
                f"TextEncoderConfig.dim_attn ({self.dim_attn}) must be divisible by num_heads ({self.num_heads})")


GUIDANCE_KINDS = ("apg", "cfg", "none")
FRAME_NOISE_MODES = ("independent", "rolling")  # train.frame_noise_mode: how latent frames draw their own times
NOISE_PRIORS = ("mixed", "progressive")  # how a chunk's initial noise is correlated across latent frames


def _check_noise_prior(section: str, prior: str) -> None:
    if prior not in NOISE_PRIORS:
        raise ConfigError(f"{section}.noise_prior must be one of {', '.join(NOISE_PRIORS)}, got {prior!r}")


@dataclass(frozen=True)
class VideoConfig:
    """The video a preset makes: frame size, the finest frame rate, and the frame-rate levels.

    ``frame_intervals`` are in finest-level frames, coarse to fine ([4, 2, 1] at 24 fps = 6, 12, 24 fps);
    ``chunks`` is how many parallel chunks each level is cut into (the paper's m(1, 2, 4)).
    """

    height: int
    width: int
    fps: int = 24
    frame_intervals: tuple[int, ...] = (4, 2, 1)
    chunks: tuple[int, ...] = (1, 2, 4)

    def __post_init__(self) -> None:
        object.__setattr__(self, "frame_intervals", tuple(int(i) for i in self.frame_intervals))
        object.__setattr__(self, "chunks", tuple(int(c) for c in self.chunks))
        _positive("VideoConfig", height=self.height, width=self.width, fps=self.fps)
        for name in ("height", "width"):
            if getattr(self, name) % 16:
                raise ConfigError(f"video.{name} must be a multiple of 16, got {getattr(self, name)}")
        intervals = self.frame_intervals
        if not intervals or min(intervals) < 1 or any(a <= b or a % b for a, b in zip(intervals, intervals[1:])):
            raise ConfigError(f"video.frame_intervals must be coarse to fine, each dividing the one before "
                              f"(e.g. [4, 2, 1]), got {list(intervals)}")
        if len(self.chunks) != len(intervals) or min(self.chunks) < 1:
            raise ConfigError(f"video.chunks needs one positive count per level ({len(intervals)}), "
                              f"got {list(self.chunks)}")

    def level_fps(self) -> tuple[float, ...]:
        return tuple(self.fps / i for i in self.frame_intervals)

    def level_index(self, interval: int) -> int:
        """The level whose settings a frame ``interval`` takes: its own, or for one the preset does not list,
        the next finer listed level's (the finest for anything finer)."""
        intervals = self.frame_intervals
        return next((i for i, s in enumerate(intervals) if s <= interval), len(intervals) - 1)


@dataclass(frozen=True)
class SamplerConfig:
    """Denoising per level (coarse to fine): Euler steps, schedule shift, guidance, and how the initial noise of a
    chunk's latent frames is correlated (``noise_correlation`` per level, () or 0: independent; ``noise_prior``:
    ``mixed`` or ``progressive``, see :func:`tempo_cli.sampling.correlate_frames`). A model samples best with the
    noise it was trained on (``train.noise_correlation`` and ``train.noise_prior``)."""

    steps: tuple[int, ...]
    shift: tuple[float, ...]
    guidance: str = "apg"
    # one scale for every level, or one per level (coarse to fine); 1 turns guidance off there, which halves the
    # level's DiT passes
    guidance_scale: float | tuple[float, ...] = 8.0
    negative_prompt: str = ""
    noise_correlation: tuple[float, ...] = ()
    noise_prior: str = "mixed"
    # per level, how far the last latent frame of a chunk lags the first (sampling.staggered_schedule): a share of
    # the schedule; () or 0: every frame together. For models trained with train.frame_noise.
    stagger: tuple[float, ...] = ()
    # per level, how many steps each latent frame of a chunk starts after the one before
    # (sampling.rolling_schedule), however long the chunk; () or 0: every frame together. For models trained
    # with train.frame_noise_mode: rolling. A level takes stagger or lag, not both.
    lag: tuple[float, ...] = ()
    # per level, how much of the noise each step draws anew while sigma lies in eta_window (sampling.flow_step:
    # DDIM's eta for the flow; 1 is ancestral sampling); () or 0: the plain ODE, Euler steps.
    eta: tuple[float, ...] = ()
    eta_window: tuple[float, float] = (0.0, 1.0)
    # where later latent frames lag (lag or stagger), how many of those still waiting their turn (pure noise)
    # each DiT pass keeps after the last frame that has started or holds a condition; null keeps them all. Fewer
    # tokens, and a different video.
    waiting_frames: int | None = None
    # per level, the scale of classifier guidance by the preset's classifier section: each step moves the DiT's
    # prediction of the clean latent frames whose sigma lies in classifier_window up the gradient of the
    # log-probability that the frames decoded from it show each object the prompt names with its shape, by scale
    # times a gradient of unit RMS per latent frame; () or 0: off. Toy-world prompts only. Each gradient decodes
    # the level's latents through the VAE and back; classifier_every > 1 asks for a new one only every so many
    # guided steps and keeps the last one between.
    classifier_scale: tuple[float, ...] = ()
    classifier_window: tuple[float, float] = (0.0, 1.0)
    classifier_every: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(int(s) for s in self.steps))
        object.__setattr__(self, "classifier_scale", tuple(float(c) for c in self.classifier_scale))
        if self.classifier_scale and (len(self.classifier_scale) != len(self.steps)
                                      or not all(0 <= c < math.inf for c in self.classifier_scale)):
            raise ConfigError(f"sampler.classifier_scale needs one value >= 0 per level, got "
                              f"{list(self.classifier_scale)}")
        object.__setattr__(self, "classifier_window", tuple(float(w) for w in self.classifier_window))
        if len(self.classifier_window) != 2 or not 0 <= self.classifier_window[0] <= self.classifier_window[1] <= 1:
            raise ConfigError(f"sampler.classifier_window is [low, high] with 0 <= low <= high <= 1, got "
                              f"{list(self.classifier_window)}")
        if isinstance(self.classifier_every, bool) or not isinstance(self.classifier_every, int) \
                or self.classifier_every < 1:
            raise ConfigError(f"sampler.classifier_every is a whole number of steps >= 1, got "
                              f"{self.classifier_every!r}")
        if self.waiting_frames is not None and (isinstance(self.waiting_frames, bool)
                                                or not isinstance(self.waiting_frames, int) or self.waiting_frames < 0):
            raise ConfigError(f"sampler.waiting_frames is a number of latent frames >= 0, or null for all of them; "
                              f"got {self.waiting_frames!r}")
        object.__setattr__(self, "eta", tuple(float(e) for e in self.eta))
        if self.eta and (len(self.eta) != len(self.steps) or not all(0 <= e <= 1 for e in self.eta)):
            raise ConfigError(f"sampler.eta needs one value in [0, 1] per level, got {list(self.eta)}")
        object.__setattr__(self, "eta_window", tuple(float(w) for w in self.eta_window))
        if len(self.eta_window) != 2 or not 0 <= self.eta_window[0] <= self.eta_window[1] <= 1:
            raise ConfigError(f"sampler.eta_window is [low, high] with 0 <= low <= high <= 1, got "
                              f"{list(self.eta_window)}")
        object.__setattr__(self, "stagger", tuple(float(s) for s in self.stagger))
        if self.stagger and (len(self.stagger) != len(self.steps) or not all(0 <= s <= 4 for s in self.stagger)):
            raise ConfigError(f"sampler.stagger needs one value in [0, 4] per level, got {list(self.stagger)}")
        object.__setattr__(self, "lag", tuple(float(s) for s in self.lag))
        if self.lag and (len(self.lag) != len(self.steps) or not all(0 <= s <= 64 for s in self.lag)):
            raise ConfigError(f"sampler.lag needs one number of steps in [0, 64] per level, got {list(self.lag)}")
        if self.lag and self.stagger and any(a and b for a, b in zip(self.lag, self.stagger)):
            raise ConfigError(f"sampler.stagger {list(self.stagger)} and sampler.lag {list(self.lag)} both set a "
                              "level's lag", hint="give each level one of them (0 in the other)")
        object.__setattr__(self, "shift", tuple(float(s) for s in self.shift))
        object.__setattr__(self, "noise_correlation", tuple(float(c) for c in self.noise_correlation))
        if self.noise_correlation and (len(self.noise_correlation) != len(self.steps)
                                       or not all(0 <= c < 1 for c in self.noise_correlation)):
            raise ConfigError(f"sampler.noise_correlation needs one value in [0, 1) per level, got "
                              f"{list(self.noise_correlation)}")
        _check_noise_prior("sampler", self.noise_prior)
        if not self.steps or min(self.steps) < 1:
            raise ConfigError(f"sampler.steps must be positive, got {list(self.steps)}")
        if len(self.shift) != len(self.steps) or min(self.shift) <= 0:
            raise ConfigError(f"sampler.shift needs one positive value per level, got {list(self.shift)}")
        if self.guidance not in GUIDANCE_KINDS:
            raise ConfigError(f"sampler.guidance must be one of {', '.join(GUIDANCE_KINDS)}, got {self.guidance!r}")
        if isinstance(self.guidance_scale, (list, tuple)):
            object.__setattr__(self, "guidance_scale", tuple(float(g) for g in self.guidance_scale))
            if len(self.guidance_scale) != len(self.steps) or not all(1 <= g < math.inf for g in self.guidance_scale):
                raise ConfigError(f"sampler.guidance_scale needs one number, or one per level, each at least 1; got "
                                  f"{list(self.guidance_scale)}")
        elif not 1 <= float(self.guidance_scale) < math.inf:
            raise ConfigError(f"sampler.guidance_scale must be at least 1, got {self.guidance_scale}")
        else:
            object.__setattr__(self, "guidance_scale", float(self.guidance_scale))

    def classifier_scale_at(self, index: int) -> float:
        """The classifier guidance scale of level ``index`` (coarse to fine); 0: off."""
        return self.classifier_scale[index] if self.classifier_scale else 0.0

    def guidance_scale_at(self, index: int) -> float:
        """The guidance scale of level ``index`` (coarse to fine)."""
        scale = self.guidance_scale
        return scale[index] if isinstance(scale, tuple) else scale


@dataclass(frozen=True)
class ClassifierConfig:
    """A toy-world shape classifier on decoded frames, for classifier guidance (``sampler.classifier_scale``;
    :mod:`tempo_cli.models.classifier`). ``dim``: channels of its first convolutions."""

    dim: int = 32

    def __post_init__(self) -> None:
        _positive("classifier", dim=self.dim)


@dataclass(frozen=True)
class WeightsConfig:
    """Where a preset's weights come from: the official file names, or random weights from a seed."""

    dit: str = ""
    vae: str = ""
    text_encoder: str = ""
    tokenizer: str = ""
    classifier: str = ""  # only with a classifier section
    random_seed: int | None = None

    def __post_init__(self) -> None:
        if self.random_seed is None and not all((self.dit, self.vae, self.text_encoder, self.tokenizer)):
            raise ConfigError("weights: name the dit, vae, text_encoder and tokenizer files, or set random_seed")

    @property
    def is_random(self) -> bool:
        return self.random_seed is not None


@dataclass(frozen=True)
class TrainConfig:
    """The two-stage recipe (and the toy VAE's training), for ``tempo train``.

    Stage 1 learns multi-mask denoising at one frame rate; stage 2 next-frame-rate prediction on levels at the
    preset's frame intervals, with randomised temporal start indices in ``[0, t_max]``.
    """

    stage1_steps: int
    stage1_lr: float
    stage2_steps: int
    stage2_lr: float
    batch_size: int = 8
    clip_frames: int = 17  # frames of one training clip at its level's frame rate (4k+1)
    min_clip_frames: int = 0  # DiT clips shorter than this are not drawn (0: down to 2 latent frames)
    length_power: float = 1.0  # a clip length is drawn in proportion to 1/frames**length_power (0: all alike)
    max_conditioned: float = 0.15  # stage 1: at most this share of frames given as conditions
    t_max: int = 64  # stage 2: temporal RoPE start index drawn from U[0, t_max]
    timestep_shift: float = 3.0
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    warmup_steps: int = 100
    ema_decay: float = 0.0  # 0: no EMA; warmed up as (1 + step) / (10 + step) while that is lower
    vae_steps: int = 0  # 0: the VAE is frozen (the real presets keep the official one)
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    text_encoder_lr: float = 0.0  # 0: the text encoder is frozen
    checkpoint_every: int = 500
    sample_every: int = 0  # 0: no sample videos
    batch_latent_frames: int = 0  # cap on latent frames per batch (long clips come in smaller batches); 0: none
    caption_dropout: float = 0.0  # share of DiT samples trained with an empty prompt (for guidance)
    stage2_multimask: float = 0.0  # share of stage-2 samples with extra anchors: first, first+last or a context
    # share of DiT samples whose latent frames each have their own time (diffusion forcing): one share, or one per
    # level (coarse to fine); frame_noise_mode "independent" draws each frame's time on its own, "rolling" makes
    # the times rise with the frame index as a sampler with sampler.lag walks them, each latent frame up to
    # frame_noise_lag of the schedule behind the one before
    frame_noise: float | tuple[float, ...] = 0.0
    frame_noise_mode: str = "independent"
    frame_noise_lag: float = 0.25
    vae_focus: float = 0.0  # extra VAE loss weight on pixels unlike the frame's dominant colour
    dit_focus: float = 0.0  # extra DiT loss weight on latent cells that show an object
    contrastive: float = 0.0  # contrastive flow matching: weight of the error against another sample's flow
    contrastive_max_frames: int = 0  # the contrastive term only on clips of at most this many frames (0: on all)
    # toy world only: the flow leads to the clean latent plus this times (it less the same clip's with its shapes
    # swapped), so the DiT draws shapes more distinctly than the flow alone asks (0: the plain flow)
    shape_contrast: float = 0.0
    # leave the contrast out of the latent cells that show some of the clip's objects and no more of them than of
    # the swapped ones, so that no target is moved away from its own object's colour (where a triangle's edge
    # cuts a cell the ball fills, the contrast would fade the triangle)
    shape_contrast_spare_objects: bool = False
    # toy world only: extra DiT loss weight on the latent cells that the clip's shapes decide, up to this much
    # where swapping its shapes moves the cell's latent by one standard deviation or more (training.shape_cells)
    shape_focus: float = 0.0
    # caption contrast: each step the DiT also sees each clip under its caption with the shape words swapped (ball ->
    # square -> triangle -> ball), and this weight times a hinge asks that velocity to miss the clip's flow by
    # caption_contrast_margin more (relative) than the own caption's does (0: off; captions without shape words
    # are left out)
    caption_contrast: float = 0.0
    caption_contrast_margin: float = 0.25
    decoder_steps: int = 0  # after the DiT: the VAE decoder alone on the frozen encoder's latents (0: none)
    decoder_lr: float = 5e-4
    # the decoder phase: this share of its steps decodes the DiT's own latents instead of the encoder's, so that the
    # decoder learns to draw what it will be given: decoder_dit_pairs clips of decoder_dit_frames frames at
    # the coarsest level, each noised to a strength drawn from decoder_dit_strength and denoised by the run's DiT with
    # the preset's sampler, made once at the phase's start and kept in out/cache (0: the encoder's latents only)
    decoder_dit_share: float = 0.0
    decoder_dit_pairs: int = 400
    decoder_dit_frames: int = 33
    decoder_dit_strength: tuple[float, float] = (0.5, 0.9)
    vae_batch_size: int = 0  # 0: batch_size; clips longer than 9 frames come fewer to a batch (at least 2)
    vae_frames: tuple[int, ...] = (1, 5, 9)  # VAE clip lengths, drawn uniformly (repeat one to draw it more often)
    stage2_levels: tuple[float, ...] = ()  # stage 2: how often each level (coarse to fine) is drawn; (): equally
    cache_refresh: int = 0  # DiT phases: encode new clips every this many steps (0: one set of clips per round)
    # after the DiT: the classifier section's network learns the shapes of the stage-2 clips' objects from their
    # latent frames noised to a uniform time, classifier_batch frames a step (0 steps: none); toy-world captions
    classifier_steps: int = 0
    classifier_lr: float = 2e-3
    classifier_batch: int = 256
    # the DiT's training noise per level, correlated across latent frames like sampler.noise_correlation and
    # sampler.noise_prior (PYoCo trains and samples with the same prior); (): independent frames
    noise_correlation: tuple[float, ...] = ()
    noise_prior: str = "mixed"
    # --data toyworld: how often each shape, motion or background is drawn against the others (those left out: 1)
    world_weights: dict[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        _positive("TrainConfig", batch_size=self.batch_size, stage1_lr=self.stage1_lr, stage2_lr=self.stage2_lr,
                  timestep_shift=self.timestep_shift, checkpoint_every=self.checkpoint_every,
                  decoder_lr=self.decoder_lr, classifier_lr=self.classifier_lr, classifier_batch=self.classifier_batch)
        for name in ("stage1_steps", "stage2_steps", "vae_steps", "warmup_steps", "sample_every", "t_max",
                     "batch_latent_frames", "vae_batch_size", "decoder_steps", "cache_refresh", "classifier_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must not be negative, got {getattr(self, name)}")
        if self.clip_frames < 5 or self.clip_frames % 4 != 1:
            raise ConfigError(f"train.clip_frames must be 4k+1 (k >= 1), got {self.clip_frames}")
        if not 0 <= self.length_power <= 4:
            raise ConfigError(f"train.length_power must be in [0, 4], got {self.length_power}")
        if not 0 <= self.min_clip_frames <= self.clip_frames:
            raise ConfigError(f"train.min_clip_frames must be in [0, clip_frames = {self.clip_frames}], got "
                              f"{self.min_clip_frames}")
        if not 0 <= self.max_conditioned <= 1 or not 0 <= self.ema_decay < 1:
            raise ConfigError("train.max_conditioned must be in [0, 1] and train.ema_decay in [0, 1)")
        for name in ("caption_dropout", "stage2_multimask", "decoder_dit_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"train.{name} is a share in [0, 1], got {getattr(self, name)}")
        shares = self.frame_noise if isinstance(self.frame_noise, (list, tuple)) else (self.frame_noise,)
        if not shares or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1
                                 for v in shares):
            raise ConfigError(f"train.frame_noise is a share of samples in [0, 1], or one per level, got "
                              f"{self.frame_noise!r}")
        if isinstance(self.frame_noise, (list, tuple)):
            object.__setattr__(self, "frame_noise", tuple(float(v) for v in self.frame_noise))
        if self.frame_noise_mode not in FRAME_NOISE_MODES:
            raise ConfigError(f"unknown train.frame_noise_mode {self.frame_noise_mode!r}",
                              hint=f"use one of: {', '.join(FRAME_NOISE_MODES)}")
        if not 0 < self.frame_noise_lag <= 1:
            raise ConfigError(f"train.frame_noise_lag is a share of the schedule in (0, 1], got {self.frame_noise_lag}")
        if self.decoder_dit_pairs < 1:
            raise ConfigError(f"train.decoder_dit_pairs must be at least 1, got {self.decoder_dit_pairs}")
        if self.decoder_dit_frames < 5 or self.decoder_dit_frames % 4 != 1:
            raise ConfigError(f"train.decoder_dit_frames must be 4k+1 (k >= 1), got {self.decoder_dit_frames}")
        low_high = tuple(self.decoder_dit_strength)
        if len(low_high) != 2 or not 0 < low_high[0] <= low_high[1] <= 1:
            raise ConfigError(f"train.decoder_dit_strength is a range of noise strengths [low, high] with 0 < low <= "
                              f"high <= 1, got {list(low_high)}", hint="for example [0.5, 0.9]")
        object.__setattr__(self, "decoder_dit_strength", tuple(float(v) for v in low_high))
        object.__setattr__(self, "stage2_levels", tuple(float(w) for w in self.stage2_levels))
        object.__setattr__(self, "noise_correlation", tuple(float(c) for c in self.noise_correlation))
        if not all(0 <= c < 1 for c in self.noise_correlation):
            raise ConfigError(f"train.noise_correlation needs values in [0, 1), got {list(self.noise_correlation)}")
        _check_noise_prior("train", self.noise_prior)
        object.__setattr__(self, "vae_frames", tuple(int(n) for n in self.vae_frames))
        if not self.vae_frames or any(n < 1 or n % 4 != 1 for n in self.vae_frames):
            raise ConfigError(f"train.vae_frames must be clip lengths of 4k+1 frames, got {list(self.vae_frames)}")
        if self.stage2_levels and (min(self.stage2_levels) < 0 or not sum(self.stage2_levels) > 0):
            raise ConfigError(f"train.stage2_levels are weights >= 0 with a positive sum, got {list(self.stage2_levels)}")
        for name in ("vae_focus", "dit_focus", "shape_contrast", "shape_focus", "caption_contrast",
                     "caption_contrast_margin"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must not be negative, got {getattr(self, name)}")
        if self.shape_focus and self.shape_contrast_spare_objects:
            raise ConfigError("train.shape_focus weighs the cells by the whole shape difference, which "
                              "train.shape_contrast_spare_objects leaves out where the objects are",
                              hint="set one of them only")
        if not 0 <= self.contrastive < 1:  # at 1 or more the loss has no minimum: it rewards any velocity far off
            raise ConfigError(f"train.contrastive must be in [0, 1), got {self.contrastive}",
                              hint="the paper uses 0.05")
        if self.contrastive_max_frames < 0:
            raise ConfigError(f"train.contrastive_max_frames must be 0 (every clip) or a clip length, got "
                              f"{self.contrastive_max_frames}")
        if not isinstance(self.world_weights, dict):
            raise ConfigError(f"train.world_weights maps shapes, motions or backgrounds to weights, got "
                              f"{self.world_weights!r}", hint="for example {triangle: 2, circling: 2}")
        if self.world_weights:  # imported here: the toy world brings numpy, which loading a preset need not
            from tempo_cli.toyworld import check_weights

            object.__setattr__(self, "world_weights", check_weights(self.world_weights, "train.world_weights"))


@dataclass(frozen=True)
class Preset:
    """Everything one model setup needs; filled from ``presets/<name>.yaml``."""

    name: str
    description: str
    dit: DiTConfig
    vae: VAEConfig
    text_encoder: TextEncoderConfig
    video: VideoConfig
    sampler: SamplerConfig
    weights: WeightsConfig
    train: TrainConfig | None = None
    classifier: ClassifierConfig | None = None
    notice: str = ""  # said on stderr whenever the preset is used (e.g. that it is a toy model)
    # the folder of the preset's file, where weights it names are also looked for; not part of its identity
    folder: str = dataclasses.field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.dit.out_dim != self.vae.z_dim:
            raise ConfigError(f"preset {self.name}: dit.out_dim ({self.dit.out_dim}) must equal vae.z_dim "
                              f"({self.vae.z_dim})")
        if self.dit.text_dim != self.text_encoder.dim:
            raise ConfigError(f"preset {self.name}: dit.text_dim ({self.dit.text_dim}) must equal "
                              f"text_encoder.dim ({self.text_encoder.dim})")
        if len(self.sampler.steps) != len(self.video.frame_intervals):
            raise ConfigError(f"preset {self.name}: sampler.steps needs one value per level "
                              f"({len(self.video.frame_intervals)})")
        if self.vae.temporal_factor != 4:
            raise ConfigError(f"preset {self.name}: the VAE must pack 4 frames per latent frame "
                              f"(temporal_downsample with two True flags)")
        if (self.video.height % (self.vae.spatial_factor * self.dit.patch_size[1])
                or self.video.width % (self.vae.spatial_factor * self.dit.patch_size[2])):
            raise ConfigError(f"preset {self.name}: video size must be a multiple of the VAE and patch factors")
        levels = len(self.video.frame_intervals)
        if any(self.sampler.classifier_scale) and self.classifier is None:
            raise ConfigError(f"preset {self.name}: sampler.classifier_scale needs a classifier section",
                              hint="add classifier: {dim: 32} and weights.classifier, or set the scale to 0")
        if self.train and self.train.classifier_steps and self.classifier is None:
            raise ConfigError(f"preset {self.name}: train.classifier_steps needs a classifier section",
                              hint="add classifier: {dim: 32}")
        if (self.classifier is not None and not self.weights.is_random and not self.weights.classifier
                and any(self.sampler.classifier_scale)):
            raise ConfigError(f"preset {self.name}: sampler.classifier_scale needs weights.classifier",
                              hint="name the classifier's file, or set the scale to 0")
        if self.train and self.train.noise_correlation and len(self.train.noise_correlation) != levels:
            raise ConfigError(f"preset {self.name}: train.noise_correlation needs one value per level ({levels})")
        if self.train and isinstance(self.train.frame_noise, tuple) and len(self.train.frame_noise) != levels:
            raise ConfigError(f"preset {self.name}: train.frame_noise needs one share per level ({levels}), or one "
                              f"for all, got {list(self.train.frame_noise)}")


def config_from_dict(cls: type[T], data: Mapping[str, Any], *, source: str = "config") -> T:
    """Build a config dataclass from plain data; unknown or missing keys raise a ConfigError."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r} for {cls.__name__}",
                          hint=f"allowed keys: {', '.join(sorted(names))}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain JSON-able data of a config (tuples become lists)."""
    return json_ready(dataclasses.asdict(config))


def json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


# The released TempoMaster model (Wan2.2-A14B high-noise expert architecture, 36 input channels).
TEMPOMASTER_14B_DIT = DiTConfig(dim=5120, in_dim=36, ffn_dim=13824, freq_dim=256, text_dim=4096, out_dim=16,
                                num_heads=40, num_layers=40, eps=1e-6, patch_size=(1, 2, 2))

# Wan2.1_VAE.pth, with the per-channel latent statistics published with it.
WAN21_VAE = VAEConfig(
    dim=96, z_dim=16, dim_mult=(1, 2, 4, 4), num_res_blocks=2, temporal_downsample=(False, True, True),
    latents_mean=(-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                  0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921),
    latents_std=(2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                 3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160),
)

# models_t5_umt5-xxl-enc-bf16.pth
UMT5_XXL = TextEncoderConfig(vocab=256384, dim=4096, dim_attn=4096, dim_ffn=10240, num_heads=64, num_layers=24,
                             num_buckets=32, text_len=512)
