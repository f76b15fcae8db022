"""Stage 1 (motion): appearance / motion disentanglement (SPEC 4.1, DESIGN 3).

The appearance encoder sees the appearance frame; the motion trunk sees an appearance-augmented (colour /
perspective) copy of the driving frame; G0([f_app | f_mot], f_sp) must reconstruct the clean driving frame. Because
the augmentation destroys the driving frame's appearance, the only way to succeed is appearance from E_app and
motion from E_mot. Losses: hinge GAN + feature matching + VGG perceptual + L1 + motion consistency
(f_mot(drv_aug) vs f_mot(drv): augmentation must not change the motion feature) + optional identity CE.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import torch
import torch.nn.functional as F

from pdfgc.data.stage_datasets import MotionDataset, MotionOptions
from pdfgc.losses.consistency import feature_consistency
from pdfgc.stages.base import GANStage
from pdfgc.stages.config import GANStageConfig, PerceptualConfig


class MotKind(str, Enum):
    vicreg = "vicreg"    # MSE + variance hinge: no collapse (docs/training.md)
    l1 = "l1"
    mse = "mse"
    cosine = "cosine"


@dataclass
class MotionLossWeights:
    gan: float = 1.0
    fm: float = 10.0
    vgg: float = 10.0
    l1: float = 1.0
    lap: float = 0.0         # Laplacian-pyramid L1 (every octave weighted alike; losses.pyramid)
    l1_eye: float = 0.0      # L1 inside the eye box of the target
    l1_mouth: float = 0.0    # L1 inside the mouth box
    mot: float = 1.0         # motion consistency (augmented vs clean driving frame)
    id: float = 0.0          # identity cross-entropy of f_app (VoxCeleb identities)


@dataclass
class MotionLossConfig:
    weights: MotionLossWeights = field(default_factory=MotionLossWeights)
    mot_kind: MotKind = MotKind.vicreg
    perceptual: PerceptualConfig = field(default_factory=PerceptualConfig)


@dataclass
class MotionConfig(GANStageConfig):
    name: str = "motion"
    iterations: int = 2000
    batch_size: int = 8
    loss: MotionLossConfig = field(default_factory=MotionLossConfig)
    dataset: MotionOptions = field(default_factory=MotionOptions)


class MotionStage(GANStage):
    STAGE = "motion"
    Config = MotionConfig
    DATASET = MotionDataset
    COMPONENTS = ("appearance", "motion", "generator0", "discriminator")
    TRAINABLE = {"appearance": "all", "motion": ("trunk",), "generator0": "all", "discriminator": "all"}
    GENERATOR = "generator0"

    def _style(self, f_app, f_mot):
        return torch.cat([f_app, f_mot], dim=1)

    def generate(self, batch):
        f_app, f_sp = self.nets["appearance"](batch["app"])
        f_mot = self.nets["motion"].trunk(batch["drv_aug"])
        fake = self.generator(self._style(f_app, f_mot), f_sp, noise_mode=self.noise_mode)
        return {"fake": fake, "real": batch["drv"], "f_app": f_app, "f_mot": f_mot}

    def compute_losses(self, batch, out=None):
        terms = self.reconstruction_terms(out["fake"], out["real"],
                                          {"eye": batch.get("gt_eye_box"), "mouth": batch.get("gt_mouth_box")})
        if self.on("mot"):
            clean = self.nets["motion"].trunk(batch["drv"])
            terms["mot"] = feature_consistency(out["f_mot"], clean, self.config.loss.mot_kind.value)
        if self.on("id") and "identity" in batch:
            app = self.nets["appearance"]
            logits = app.classify(out["f_app"])
            ids = batch["identity"].long()
            valid = (ids >= 0) & (ids < logits.shape[1])
            if valid.any():
                terms["id"] = F.cross_entropy(logits[valid], ids[valid])
        return terms

    def calibration_forward(self, batch) -> None:
        # BatchNorm statistics for what inference feeds: the appearance frame and the clean driving frame (training
        # normalises the trunk's augmented and clean passes alike, so its running averages mix the two)
        self.nets["appearance"](batch["app"])
        self.nets["motion"].trunk(batch["drv"])

    @torch.no_grad()
    def sample_media(self, batch):
        from pdfgc.stages.media import image_grid, swap_grid

        n = min(int(self.config.log.num_samples), batch["app"].shape[0])
        app, drv, aug = batch["app"][:n], batch["drv"][:n], batch["drv_aug"][:n]
        f_app, f_sp = self.nets["appearance"](app)
        f_mot = self.nets["motion"].trunk(aug)
        g = self.ema.shadow
        noise = "const"
        fake = g(self._style(f_app, f_mot), f_sp, noise_mode=noise)
        media = {"recon": image_grid([app, aug, fake, drv])}
        # swap: row i takes the motion of drv_i, column j the appearance of app_j
        cells = torch.stack([g(self._style(f_app, f_mot[i:i + 1].expand(n, -1)), f_sp, noise_mode=noise)
                             for i in range(n)])
        media["swap_motion"] = swap_grid(aug, app, cells)
        return media
