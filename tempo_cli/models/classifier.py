"""A noise-aware classifier of the toy world's shapes on single latent frames, for classifier guidance.

Given one latent frame ``z_t = (1 - sigma) x0 + sigma eps`` (the DiT's normalised latents), its sigma and the colour
of an object, it returns logits over :data:`~tempo_cli.toyworld.SHAPES` for that object's shape. The sampler moves
the latents up the gradient of the prompted shapes' log-probability (:func:`shape_gradient`,
:func:`tempo_cli.sampling.classifier_velocity`), the classifier guidance of Dhariwal and Nichol (2021). The colour
says which object is meant when a prompt names two; the classifier knows only the toy world's vocabulary.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tempo_cli.config import ClassifierConfig
from tempo_cli.toyworld import COLOURS, SHAPES

COLOUR_NAMES = tuple(COLOURS)


class ShapeClassifier(nn.Module):
    """Convolutions over the latent frame with the colour (one-hot) and sigma as extra channels, one stride-2
    stage, then the mean and the maximum over positions into a linear head."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        width = config.dim
        self.stem = nn.Conv2d(config.z_dim + len(COLOUR_NAMES) + 1, width, 3, padding=1)
        self.block = nn.Conv2d(width, width, 3, padding=1)
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.block2 = nn.Conv2d(2 * width, 2 * width, 3, padding=1)
        self.head = nn.Linear(4 * width, len(SHAPES))

    def forward(self, z: torch.Tensor, sigma: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
        """``z`` ``[B, z_dim, H, W]``, ``sigma`` ``[B]`` in [0, 1], ``colour`` ``[B]`` indices into
        :data:`COLOUR_NAMES` -> logits ``[B, len(SHAPES)]``."""
        b, _, h, w = z.shape
        given = torch.cat([F.one_hot(colour, len(COLOUR_NAMES)).to(z.dtype), sigma.to(z.dtype)[:, None]], dim=1)
        x = F.gelu(self.stem(torch.cat([z, given[:, :, None, None].expand(b, -1, h, w)], dim=1)))
        x = x + F.gelu(self.block(x))
        x = F.gelu(self.down(x))
        x = x + F.gelu(self.block2(x))
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


def shape_gradient(classifier: ShapeClassifier, z: torch.Tensor, sigma: torch.Tensor,
                   targets: Sequence[tuple[int, int]]) -> torch.Tensor:
    """The gradient, with respect to latents ``z`` ``[B, C, F, H, W]`` at per-frame ``sigma`` ``[F]``, of the
    summed log-probability that every object of ``targets`` has its shape, each latent frame judged alone."""
    b, c, f, h, w = z.shape
    param = next(classifier.parameters())
    with torch.enable_grad():
        # a copy: latents made under inference mode cannot take a gradient themselves
        frames = z.detach().to(param.device, param.dtype).permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w).clone()
        frames.requires_grad_(True)
        sigmas = sigma.to(param.device, param.dtype).repeat(b)
        total = frames.new_zeros(())
        for colour, shape in targets:
            logits = classifier(frames, sigmas, torch.full((b * f,), colour, device=param.device))
            total = total + torch.log_softmax(logits.float(), dim=1)[:, shape].sum()
        (grad,) = torch.autograd.grad(total, frames)
    return grad.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4).to(z.device, z.dtype)
