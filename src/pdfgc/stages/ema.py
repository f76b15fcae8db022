"""Exponential moving average of a generator with a batch-size-independent half-life (StyleGAN habit).

The half-life is given in thousands of images (`half_life_kimg`): after that many images have been seen, the
weight of the old average has halved, whatever the batch size or number of GPUs. Per update with `batch_images`
images: `beta = 0.5 ** (batch_images / (half_life_kimg * 1000))`. With `rampup` r > 0 the half-life is capped at
`r * images_seen` so the average follows the fast early changes instead of lagging behind the random init.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def ema_beta(batch_images: int, images_seen: int, half_life_kimg: float, rampup: float | None = 0.05) -> float:
    """Decay factor applied to the average for one update (1 = keep the average, 0 = copy the model)."""
    if half_life_kimg <= 0:
        return 0.0
    half_life_img = half_life_kimg * 1000.0
    if rampup is not None and rampup > 0:
        half_life_img = min(half_life_img, images_seen * rampup)
    if half_life_img <= 0:
        return 0.0
    return 0.5 ** (batch_images / half_life_img)


class EMA(nn.Module):
    """Holds `shadow`, a frozen copy of `model` in eval mode; `update(model, batch_images, images_seen)` moves it
    toward the model. Buffers (BN statistics, noise) are copied, not averaged, as in StyleGAN.

    The shadow is a registered submodule, so it is saved in (and restored from) Lightning checkpoints.
    """

    def __init__(self, model: nn.Module, half_life_kimg: float = 10.0, rampup: float | None = 0.05):
        super().__init__()
        self.half_life_kimg = float(half_life_kimg)
        self.rampup = rampup
        self.shadow = copy.deepcopy(model)
        self.shadow.requires_grad_(False)
        self.shadow.eval()

    def train(self, mode: bool = True):
        # The average is an inference network: keep it in eval whatever Lightning does.
        return super().train(False)

    @torch.no_grad()
    def update(self, model: nn.Module, batch_images: int, images_seen: int) -> float:
        """Blend: `shadow = beta * shadow + (1 - beta) * model`; returns beta."""
        beta = ema_beta(batch_images, images_seen, self.half_life_kimg, self.rampup)
        for p_ema, p in zip(self.shadow.parameters(), model.parameters()):
            p_ema.copy_(p.detach().lerp(p_ema, beta))
        for b_ema, b in zip(self.shadow.buffers(), model.buffers()):
            b_ema.copy_(b)
        return beta

    def forward(self, *args, **kwargs):
        return self.shadow(*args, **kwargs)
