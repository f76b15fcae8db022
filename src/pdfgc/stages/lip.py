"""Stage 2a (lip): audio / visual lip feature alignment by bidirectional InfoNCE (SPEC 4.1, 4.3).

Batch: N frames of one clip at distinct offsets and their synchronised mel windows, for B clips. Row i of the
flattened (B*N) audio and visual features is a positive pair; negatives are the other offsets of the same clip and
(with `negatives: all`) the other clips. Terms:
  nce      L_a2v + L_v2a on the 512-d features (audio f_aud vs the visual lip head's feature);
  nce_lip  the same on the 500-d lip codes (audio lip head vs visual lip code), so the code that drives the
           generator at inference (audio) and the one read from images (visual, used by the emo stage's lip-sync
           consistency) live in one space;
  mse      MSE(audio lip code, visual lip code detached) (the reference's lambda_crossmodal term).
The motion trunk is frozen (eval); the audio encoder and the motion encoder's lip head train.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import torch
import torch.nn.functional as F

from pdfgc.data.stage_datasets import LipDataset, LipOptions
from pdfgc.losses.contrastive import bidirectional_info_nce, pairwise_similarity
from pdfgc.stages.base import StageModule
from pdfgc.stages.config import AdamConfig, OptimConfig, Similarity, StageConfig


class Negatives(str, Enum):
    all = "all"                # other offsets + other clips
    same_clip = "same_clip"    # other offsets of the same clip only


@dataclass
class LipLossWeights:
    nce: float = 1.0
    nce_lip: float = 1.0
    mse: float = 1.0


@dataclass
class LipLossConfig:
    weights: LipLossWeights = field(default_factory=LipLossWeights)
    temperature: float = 0.07
    similarity: Similarity = Similarity.cosine
    negatives: Negatives = Negatives.all
    detach_other: bool = True   # each direction trains only its query modality (leaked trainer)


@dataclass
class LipConfig(StageConfig):
    name: str = "lip"
    iterations: int = 2000
    batch_size: int = 4          # clips, x dataset.num_offsets windows each
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(g=AdamConfig(lr=1e-4, betas=[0.5, 0.999])))
    loss: LipLossConfig = field(default_factory=LipLossConfig)
    dataset: LipOptions = field(default_factory=LipOptions)


def clip_mask(batch_size: int, num_offsets: int, negatives: str, device=None) -> torch.Tensor | None:
    """Negatives mask for B clips x N offsets (rows flattened clip-major): None for "all"; block-diagonal (same clip
    only) for "same_clip"."""
    if negatives == "all":
        return None
    if negatives != "same_clip":
        raise ValueError(f"stage.loss.negatives: expected 'all' or 'same_clip', got {negatives!r}")
    ids = torch.arange(batch_size, device=device).repeat_interleave(num_offsets)
    return ids[:, None] == ids[None, :]


class LipStage(StageModule):
    STAGE = "lip"
    Config = LipConfig
    DATASET = LipDataset
    COMPONENTS = ("motion", "audio")
    TRAINABLE = {"motion": ("lip",), "audio": "all"}

    def features(self, batch):
        frames, mel = batch["frames"], batch["mel"]
        b, n = frames.shape[:2]
        vis = self.nets["motion"].encode(frames.flatten(0, 1), heads=("lip",))
        f_aud, lip_a = self.nets["audio"](mel.flatten(0, 1))
        if f_aud.shape[1] != vis["lip_feat"].shape[1]:
            raise ValueError(f"lip stage: audio embed_dim {f_aud.shape[1]} != motion feature_dim "
                             f"{vis['lip_feat'].shape[1]}; set model.audio.embed_dim = model.motion.feature_dim")
        return b, n, f_aud, lip_a, vis["lip_feat"], vis["lip"]

    def compute_losses(self, batch):
        b, n, f_aud, lip_a, f_vis, lip_v = self.features(batch)
        loss = self.config.loss
        t, sim = float(loss.temperature), loss.similarity.value
        mask = clip_mask(b, n, loss.negatives.value, f_aud.device)
        detach = bool(loss.detach_other)
        terms = {}
        if self.on("nce"):
            d = bidirectional_info_nce(f_aud, f_vis, t, sim, detach, mask)
            terms["nce"] = d["a2v"] + d["v2a"]
            terms["nce_a2v"], terms["nce_v2a"] = d["a2v"].detach(), d["v2a"].detach()
        if self.on("nce_lip"):
            d = bidirectional_info_nce(lip_a, lip_v, t, sim, detach, mask)
            terms["nce_lip"] = d["a2v"] + d["v2a"]
        if self.on("mse"):
            terms["mse"] = F.mse_loss(lip_a, lip_v.detach())
        with torch.no_grad():  # retrieval accuracy: does audio i pick its own frame among all B*N?
            s = pairwise_similarity(f_aud, f_vis, sim)
            terms["acc_a2v"] = (s.argmax(1) == torch.arange(len(s), device=s.device)).float().mean()
        return terms

    @torch.no_grad()
    def sample_media(self, batch):
        _, _, f_aud, _, f_vis, _ = self.features(batch)
        s = pairwise_similarity(f_aud, f_vis, self.config.loss.similarity.value)
        s = (s - s.min()) / (s.max() - s.min() + 1e-8) * 2 - 1
        img = F.interpolate(s[None, None], scale_factor=4, mode="nearest")[0].expand(3, -1, -1)
        return {"av_similarity": img}
