"""Stage 2c (eye): eye-motion code by contrastive triplets with eye-region pasting (SPEC 4.1) + weak regression
that fixes the code layout to the reference's control masks (SPEC 1.7).

Triplet: anchor = frame A with the eye box of frame P pasted in, positive = P, negative = another frame of the
clip. Anchor and positive share only the eyes, anchor and negative share everything but the eyes, so the eye
feature must be about the eyes alone. Layout (our choice where SPEC 4.5 says unknown): blink dims are 0,1,4,5 and
gaze dims 2,3 (the reference's masks, `pdfgc.constants.BLINK_DIMS` / `GAZE_DIMS`); dims 0/1 regress the left/right
eye openness in [0,1], dims 2/3 the horizontal/vertical gaze in [-1,1] (masked where unknown, NaN), dims 4/5 are
left to the contrastive term. Only the motion encoder's eye head trains.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import torch

from pdfgc.constants import BLINK_DIMS, GAZE_DIMS
from pdfgc.data.stage_datasets import EyeDataset, EyeOptions
from pdfgc.losses.contrastive import pairwise_similarity, triplet_info_nce
from pdfgc.losses.regression import masked_regression
from pdfgc.stages.base import StageModule
from pdfgc.stages.config import AdamConfig, LogConfig, OptimConfig, RegressionKind, Similarity, StageConfig

# the regressed dims: openness of the left/right eye = the first two blink dims; gaze x/y = the gaze dims
OPEN_DIMS = tuple(BLINK_DIMS[:2])
GAZE_CODE_DIMS = tuple(GAZE_DIMS)


class ContrastiveSpace(str, Enum):
    feature = "feature"   # the head's 512-d feature before the embedding
    code = "code"         # the 6-d eye code


@dataclass
class EyeLossWeights:
    triplet: float = 1.0
    open: float = 0.5
    gaze: float = 0.5


@dataclass
class EyeLossConfig:
    weights: EyeLossWeights = field(default_factory=EyeLossWeights)
    temperature: float = 0.1
    similarity: Similarity = Similarity.cosine
    contrastive_on: ContrastiveSpace = ContrastiveSpace.feature
    batch_negatives: bool = True       # also use the other rows' frames as negatives
    kind: RegressionKind = RegressionKind.smooth_l1


@dataclass
class EyeConfig(StageConfig):
    name: str = "eye"
    iterations: int = 1000
    batch_size: int = 16
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(g=AdamConfig(lr=1e-3, betas=[0.9, 0.999])))
    loss: EyeLossConfig = field(default_factory=EyeLossConfig)
    log: LogConfig = field(default_factory=lambda: LogConfig(sample_every=0))
    dataset: EyeOptions = field(default_factory=EyeOptions)


class EyeStage(StageModule):
    STAGE = "eye"
    Config = EyeConfig
    DATASET = EyeDataset
    COMPONENTS = ("motion",)
    TRAINABLE = {"motion": ("eye",)}

    def compute_losses(self, batch):
        motion = self.nets["motion"]
        loss = self.config.loss
        b = batch["anchor"].shape[0]
        x = torch.cat([batch["anchor"], batch["positive"], batch["negative"]], 0)
        feat, code = motion.head("eye", motion.trunk(x), with_feature=True)
        space = feat if loss.contrastive_on == ContrastiveSpace.feature else code
        a, p, n = space[:b], space[b:2 * b], space[2 * b:]
        terms = {}
        if self.on("triplet"):
            terms["triplet"] = triplet_info_nce(a, p, n, float(loss.temperature), loss.similarity.value,
                                                bool(loss.batch_negatives))
        pos_code = code[b:2 * b]
        kind = loss.kind.value
        if self.on("open"):
            terms["open"] = masked_regression(pos_code[:, list(OPEN_DIMS)], batch["eye_open"].to(code.dtype), kind)
        if self.on("gaze"):
            terms["gaze"] = masked_regression(pos_code[:, list(GAZE_CODE_DIMS)], batch["gaze"].to(code.dtype), kind)
        with torch.no_grad():
            sp = pairwise_similarity(a, p).diagonal()
            sn = pairwise_similarity(a, n).diagonal()
            terms["triplet_acc"] = (sp > sn).float().mean()
        return terms
