"""Stage 2c (eye): eye-motion code by contrastive triplets with eye-region pasting (SPEC 4.1) + weak regression
that fixes the code layout to the reference's control masks (SPEC 1.7).

Triplet: anchor = frame A with the eye box of frame P pasted in, positive = P, negative = another frame of the
clip. Anchor and positive share only the eyes, anchor and negative share everything but the eyes, so the eye
feature must be about the eyes alone. Layout (our choice where SPEC 4.5 says unknown): blink dims are 0,1,4,5 and
gaze dims 2,3 (the reference's masks); dims 0/1 regress the left/right eye openness in [0,1], dims 2/3 the
horizontal/vertical gaze in [-1,1] (masked where unknown, NaN), dims 4/5 are left to the contrastive term.
Only to_eye + eye_embed train.
"""
from __future__ import annotations

import torch

from pdfgc.losses.contrastive import triplet_info_nce
from pdfgc.losses.regression import masked_regression
from pdfgc.stages.base import StageModule

OPEN_DIMS = (0, 1)
GAZE_CODE_DIMS = (2, 3)


class EyeStage(StageModule):
    STAGE = "eye"
    COMPONENTS = ("motion",)
    TRAINABLE = {"motion": ("to_eye", "eye_embed")}
    LOSS_TERMS = ("triplet", "open", "gaze")

    def compute_losses(self, batch):
        net = self.nets["motion"]
        b = batch["anchor"].shape[0]
        x = torch.cat([batch["anchor"], batch["positive"], batch["negative"]], 0)
        f = net.model(x)
        feat = net.to_eye(f)
        code = net.eye_embed(feat)
        space = feat if str(self.cfg("loss.contrastive_on", "feature")) == "feature" else code
        a, p, n = space[:b], space[b:2 * b], space[2 * b:]
        terms = {}
        if self.on("triplet"):
            terms["triplet"] = triplet_info_nce(a, p, n, float(self.cfg("loss.temperature", 0.1)),
                                                str(self.cfg("loss.similarity", "cosine")),
                                                bool(self.cfg("loss.batch_negatives", True)))
        pos_code = code[b:2 * b]
        kind = str(self.cfg("loss.kind", "smooth_l1"))
        if self.on("open"):
            terms["open"] = masked_regression(pos_code[:, list(OPEN_DIMS)], batch["eye_open"].to(code.dtype), kind)
        if self.on("gaze"):
            terms["gaze"] = masked_regression(pos_code[:, list(GAZE_CODE_DIMS)], batch["gaze"].to(code.dtype), kind)
        with torch.no_grad():
            from pdfgc.losses.contrastive import pairwise_similarity

            sp = pairwise_similarity(a, p).diagonal()
            sn = pairwise_similarity(a, n).diagonal()
            terms["triplet_acc"] = (sp > sn).float().mean()
        return terms
