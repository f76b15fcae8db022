"""Adversarial losses for a multiscale discriminator.

The discriminator contract (docs/ARCHITECTURE.md): `D(x) -> list over scales of list of feature maps, the last map
of each scale being the patch logits`. A plain tensor (one scale, logits only) is accepted as well, so the functions
also serve single-output discriminators.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

GAN_KINDS = ("hinge", "logistic")


def _scales(out) -> list[list[torch.Tensor]]:
    """Normalise a D output to `[[feat, ..., logits], ...]` (one inner list per scale)."""
    if isinstance(out, torch.Tensor):
        return [[out]]
    return [list(s) if isinstance(s, (list, tuple)) else [s] for s in out]


def final_logits(out) -> list[torch.Tensor]:
    """The logits map of every scale of a discriminator output."""
    return [s[-1] for s in _scales(out)]


def _check_kind(kind: str) -> None:
    if kind not in GAN_KINDS:
        raise ValueError(f"stage.gan.loss: expected one of {GAN_KINDS}, got {kind!r}")


def d_loss(real_out, fake_out, kind: str = "hinge") -> torch.Tensor:
    """Discriminator loss, averaged over patches, then over scales.

    hinge:    mean(relu(1 - D(real))) + mean(relu(1 + D(fake)))       (SPADE / pix2pixHD habit, reference default)
    logistic: mean(softplus(-D(real))) + mean(softplus(D(fake)))      (StyleGAN2 non-saturating)
    Returns a scalar; 0 is reached by hinge when real logits >= 1 and fake logits <= -1.
    """
    _check_kind(kind)
    reals, fakes = final_logits(real_out), final_logits(fake_out)
    total = 0.0
    for r, f in zip(reals, fakes):
        if kind == "hinge":
            total = total + F.relu(1.0 - r).mean() + F.relu(1.0 + f).mean()
        else:
            total = total + F.softplus(-r).mean() + F.softplus(f).mean()
    return total / len(reals)


def g_loss(fake_out, kind: str = "hinge") -> torch.Tensor:
    """Generator adversarial loss averaged over scales: hinge `-mean(D(fake))`, logistic `mean(softplus(-D(fake)))`."""
    _check_kind(kind)
    fakes = final_logits(fake_out)
    total = 0.0
    for f in fakes:
        total = total + (-f.mean() if kind == "hinge" else F.softplus(-f).mean())
    return total / len(fakes)


def feature_matching_loss(real_out, fake_out, first_layer_weight: float = 1.0) -> torch.Tensor:
    """pix2pixHD feature matching: L1 between D's intermediate features of real (detached) and fake, averaged over
    scales; the logits map is excluded. `first_layer_weight` scales the first layer's term (the reference's leaked
    trainer used lambda_image there; 1.0 = plain pix2pixHD)."""
    total, n = 0.0, 0
    for rs, fs in zip(_scales(real_out), _scales(fake_out)):
        for j, (r, f) in enumerate(zip(rs[:-1], fs[:-1])):
            w = first_layer_weight if j == 0 else 1.0
            total = total + w * F.l1_loss(f, r.detach())
        n += 1
    if n == 0:
        raise ValueError("feature_matching_loss: the discriminator returned no scales")
    return total / n


def r1_penalty(real_out, real_images: torch.Tensor) -> torch.Tensor:
    """R1 regulariser (Mescheder et al. 2018): mean over the batch of ||d sum(D(real)) / d real||^2.

    `real_images` must have `requires_grad=True` and `real_out` must be computed from it. The sum over logits of
    every scale makes the penalty independent of the patch count per image up to the scale average.
    """
    logits: Sequence[torch.Tensor] = final_logits(real_out)
    score = sum(l.sum() for l in logits)
    (grad,) = torch.autograd.grad(score, real_images, create_graph=True)
    return grad.square().flatten(1).sum(1).mean()
