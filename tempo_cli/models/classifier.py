"""A classifier of the toy world's shapes on decoded frames, for classifier guidance.

Given one RGB frame and the colour of an object, it returns logits over :data:`~tempo_cli.toyworld.SHAPES` and
one more class, :data:`ABSENT`: no object of that colour in the frame. The sampler guides through the VAE's
decoder: at each step it decodes the DiT's prediction of the clean latents, asks the classifier how likely each
prompted object is to show its shape, and moves that prediction up the gradient of the log-probability
(:func:`shape_gradient`, :func:`tempo_cli.sampling.classifier_velocity`). So the classifier judges frames like
those it learnt from, clean ones, not noisy latents, and the decoder turns the gradient into a change of the
picture. The colour says which object is meant when a prompt names two; the classifier knows only the toy world's
vocabulary.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tempo_cli.config import ClassifierConfig
from tempo_cli.toyworld import COLOURS, SHAPES

COLOUR_NAMES = tuple(COLOURS)
ABSENT = len(SHAPES)  # the class after the shapes: no object of the given colour


class ShapeClassifier(nn.Module):
    """Convolutions over the frame with the colour (one-hot) as extra channels, two stride-2 stages, then the mean
    and the maximum over positions into a linear head over the shapes and :data:`ABSENT`."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        width = config.dim
        self.stem = nn.Conv2d(3 + len(COLOUR_NAMES), width, 3, padding=1)
        self.block = nn.Conv2d(width, width, 3, padding=1)
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.block2 = nn.Conv2d(2 * width, 2 * width, 3, padding=1)
        self.down2 = nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1)
        self.block3 = nn.Conv2d(4 * width, 4 * width, 3, padding=1)
        self.head = nn.Linear(8 * width, len(SHAPES) + 1)

    def forward(self, frames: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
        """``frames`` ``[B, 3, H, W]`` in [-1, 1], ``colour`` ``[B]`` indices into :data:`COLOUR_NAMES` -> logits
        ``[B, len(SHAPES) + 1]``."""
        b, _, h, w = frames.shape
        given = F.one_hot(colour, len(COLOUR_NAMES)).to(frames.dtype)[:, :, None, None].expand(b, -1, h, w)
        x = F.gelu(self.stem(torch.cat([frames, given], dim=1)))
        x = x + F.gelu(self.block(x))
        x = F.gelu(self.down(x))
        x = x + F.gelu(self.block2(x))
        x = F.gelu(self.down2(x))
        x = x + F.gelu(self.block3(x))
        return self.head(torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1))


def prompt_targets(prompt: str) -> list[tuple[int, int]] | None:
    """``(colour index, shape index)`` of each object a toy-world caption names, or None for a prompt that is not
    one (nothing to guide towards)."""
    from tempo_cli.errors import ConfigError
    from tempo_cli.toyworld import parse_caption

    try:
        objects, _ = parse_caption(prompt)
    except ConfigError:
        return None
    return [(COLOUR_NAMES.index(colour), SHAPES.index(shape)) for colour, shape, _ in objects]


def frames_log_prob(classifier: ShapeClassifier, frames: torch.Tensor,
                    targets: Sequence[tuple[int, int]]) -> torch.Tensor:
    """The summed log-probability that every frame of ``frames`` ``[N, 3, H, W]`` shows every object of
    ``targets`` with its shape."""
    param = next(classifier.parameters())
    frames = frames.to(param.device, param.dtype)
    total = frames.new_zeros((), dtype=torch.float32)
    for colour, shape in targets:
        logits = classifier(frames, torch.full((len(frames),), colour, device=param.device))
        total = total + torch.log_softmax(logits.float(), dim=1)[:, shape].sum()
    return total


def shape_gradient(classifier: ShapeClassifier, vae, x0: torch.Tensor,
                   targets: Sequence[tuple[int, int]]) -> torch.Tensor:
    """The gradient, with respect to predicted clean latents ``x0`` ``[B, C, F, h, w]`` (normalised, as the DiT
    makes them), of :func:`frames_log_prob` over the frames ``vae`` decodes from them (through its decoder, one
    latent frame at a time as in :meth:`~tempo_cli.models.vae.CausalVideoVAE.decode`, so a latent frame's gradient
    also carries what it does to the frames after it)."""
    vae_param = next(vae.parameters())
    mean, std = vae.latent_stats()
    with torch.enable_grad():
        # a copy: latents made under inference mode cannot take a gradient themselves
        latents = x0.detach().float().clone().requires_grad_(True)
        raw = (latents.to(vae_param.device) * std + mean).to(vae_param.dtype)
        video = vae.reconstruct(raw).clamp(-1, 1)  # [B, 3, T, H, W]
        frames = video.permute(0, 2, 1, 3, 4).reshape(-1, *video.shape[1:2], *video.shape[3:])
        (grad,) = torch.autograd.grad(frames_log_prob(classifier, frames, targets), latents)
    return grad.to(x0.device, x0.dtype)


def augment(frames: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """What the classifier learns from: decoded frames ``[B, 3, H, W]`` in [-1, 1], each blurred by a Gaussian of
    its own width (0 to 1.5 px), with pixel noise and smooth colour blotches of their own strength (0 to 0.15), so
    that the soft, stained frames a DiT's early predictions decode to still read as shapes."""
    b, c, h, w = frames.shape
    width = torch.rand(b, generator=generator) * 1.5
    taps = torch.arange(-3, 4, dtype=torch.float32)
    kernels = torch.exp(-taps[None] ** 2 / (2 * width[:, None].clamp_min(1e-3) ** 2))
    kernels = kernels / kernels.sum(dim=1, keepdim=True)  # [B, 7]; a width near 0 keeps the frame
    flat = frames.float().reshape(1, b * c, h, w)
    weight = kernels.repeat_interleave(c, dim=0)
    flat = F.conv2d(F.pad(flat, (3, 3, 0, 0), mode="replicate"), weight[:, None, None, :], groups=b * c)
    flat = F.conv2d(F.pad(flat, (0, 0, 3, 3), mode="replicate"), weight[:, None, :, None], groups=b * c)
    out = flat.reshape(b, c, h, w)
    strength = torch.rand(2, b, 1, 1, 1, generator=generator) * 0.15
    blotches = F.interpolate(torch.randn(b, c, max(1, h // 8), max(1, w // 8), generator=generator), size=(h, w),
                             mode="bilinear", align_corners=False)
    out = out + strength[0] * torch.randn(out.shape, generator=generator) + strength[1] * blotches
    return out.clamp(-1, 1)
