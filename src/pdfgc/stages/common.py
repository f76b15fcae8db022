"""Helpers shared by the image-producing stages (perceptual loss held outside the state_dict)."""
from __future__ import annotations

import torch

from pdfgc.losses.perceptual import VGGPerceptualLoss
from pdfgc.stages.config import PerceptualConfig


class PerceptualHolder:
    """Owns a VGGPerceptualLoss outside the LightningModule's state_dict (its fixed weights must not bloat every
    checkpoint), built on first use and moved to the device of its inputs."""

    def __init__(self, cfg: PerceptualConfig):
        self.kwargs = dict(weights_path=cfg.weights_path, layer_weights=tuple(cfg.layer_weights), resize=cfg.resize)
        self.net: VGGPerceptualLoss | None = None

    def __call__(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        if self.net is None:
            self.net = VGGPerceptualLoss(**self.kwargs)
        if next(self.net.parameters()).device != fake.device:
            self.net.to(fake.device)
        return self.net(fake, real)

