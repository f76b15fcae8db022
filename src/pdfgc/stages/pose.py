"""Stage 2b (pose): regression of the 6-d head pose code on the frozen motion trunk (SPEC 4.1: "with the help of a
3D prior"). Targets (B,6) = yaw, pitch, roll (radians), tx, ty, tz (face-size units) from preprocessing (or the
synthetic ground truth); NaN entries are masked. Only the motion encoder's pose head trains."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch

from pdfgc.data.stage_datasets import PoseDataset, PoseOptions
from pdfgc.losses.regression import masked_regression
from pdfgc.stages.base import StageModule
from pdfgc.stages.config import (AdamConfig, LogConfig, OptimConfig, RegressionKind, StageConfig,
                                 StageConfigError)


@dataclass
class PoseLossWeights:
    pose: float = 1.0


@dataclass
class PoseLossConfig:
    weights: PoseLossWeights = field(default_factory=PoseLossWeights)
    kind: RegressionKind = RegressionKind.smooth_l1
    beta: float = 0.1                          # smooth-L1 threshold (radians / face units)
    dim_weights: Optional[List[float]] = None  # optional 6 weights (yaw, pitch, roll, tx, ty, tz)


@dataclass
class PoseConfig(StageConfig):
    name: str = "pose"
    iterations: int = 1000
    batch_size: int = 16
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(g=AdamConfig(lr=1e-3, betas=[0.9, 0.999])))
    loss: PoseLossConfig = field(default_factory=PoseLossConfig)
    log: LogConfig = field(default_factory=lambda: LogConfig(sample_every=0))
    dataset: PoseOptions = field(default_factory=PoseOptions)


class PoseStage(StageModule):
    STAGE = "pose"
    Config = PoseConfig
    DATASET = PoseDataset
    COMPONENTS = ("motion",)
    TRAINABLE = {"motion": ("pose",)}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.batch_size < 2:
            # The reference heads are Linear-ReLU-BatchNorm1d-Linear: a trained BN1d needs >= 2 rows per batch.
            raise StageConfigError(f"stage.batch_size={self.batch_size}: the pose stage trains the head's "
                                   "BatchNorm1d, which needs at least 2 samples per batch (per process); use "
                                   "stage.batch_size>=2")
        dw = self.config.loss.dim_weights
        if dw is not None and len(dw) != 6:
            raise StageConfigError(f"stage.loss.dim_weights={list(dw)}: expected 6 weights (yaw, pitch, roll, tx, "
                                   "ty, tz) or null")

    def compute_losses(self, batch):
        motion = self.nets["motion"]
        pred = motion.head("pose", motion.trunk(batch["frames"]))
        target = batch["pose"].to(pred.dtype)
        loss = self.config.loss
        dw = loss.dim_weights
        terms = {"pose": masked_regression(pred, target, loss.kind.value, float(loss.beta),
                                           None if dw is None else torch.tensor(list(dw), dtype=pred.dtype))}
        with torch.no_grad():
            ok = torch.isfinite(target)
            err = (pred - torch.where(ok, target, pred)).abs()
            terms["mae_rot"] = err[:, :3].sum() / ok[:, :3].sum().clamp_min(1)
            terms["mae_trans"] = err[:, 3:].sum() / ok[:, 3:].sum().clamp_min(1)
        return terms
