"""Helpers shared by the image-producing stages (perceptual loss held outside the state_dict, noise mode)."""
from __future__ import annotations

import torch
from torch import nn

from pdfgc.losses.perceptual import VGGPerceptualLoss


class PerceptualHolder:
    """Owns a VGGPerceptualLoss outside the LightningModule's state_dict (its fixed weights must not bloat every
    checkpoint) and moves it to the device of its inputs on first use."""

    def __init__(self, cfg: dict | None):
        cfg = dict(cfg or {})
        self.kwargs = dict(weights_path=cfg.get("weights_path"),
                           layer_weights=tuple(cfg.get("layer_weights") or (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)),
                           resize=cfg.get("resize"))
        self.net: VGGPerceptualLoss | None = None

    def __call__(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        if self.net is None:
            self.net = VGGPerceptualLoss(**self.kwargs)
        if next(self.net.parameters()).device != fake.device:
            self.net.to(fake.device)
        return self.net(fake, real)


def frozen_call(module: nn.Module, *args, **kwargs):
    """Call a frozen module without building a graph (saves memory; it has no trainable parameters)."""
    with torch.no_grad():
        return module(*args, **kwargs)
