"""Stage 2b (pose): regression of the 6-d head pose code on the frozen motion trunk (SPEC 4.1: "with the help of a
3D prior"). Targets (B,6) = yaw, pitch, roll (radians), tx, ty, tz (face-size units) from preprocessing (or the
synthetic ground truth); NaN entries are masked. Only to_headpose + headpose_embed train."""
from __future__ import annotations

import torch

from pdfgc.losses.regression import masked_regression
from pdfgc.stages.base import StageModule


class PoseStage(StageModule):
    STAGE = "pose"
    COMPONENTS = ("motion",)
    TRAINABLE = {"motion": ("to_headpose", "headpose_embed")}
    LOSS_TERMS = ("pose",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.batch_size < 2:
            # The reference heads are Linear-ReLU-BatchNorm1d-Linear: a trained BN1d needs >= 2 rows per batch.
            raise ValueError(f"stage.batch_size={self.batch_size}: the pose stage trains the head's BatchNorm1d, "
                             "which needs at least 2 samples per batch (per process); use stage.batch_size>=2")

    def compute_losses(self, batch):
        pred = self.nets["motion"].encode(batch["frames"], heads=("pose",))["pose"]
        target = batch["pose"].to(pred.dtype)
        dw = self.cfg("loss.dim_weights")
        terms = {"pose": masked_regression(pred, target, str(self.cfg("loss.kind", "smooth_l1")),
                                           float(self.cfg("loss.beta", 0.1)),
                                           None if dw is None else torch.tensor(list(dw), dtype=pred.dtype))}
        with torch.no_grad():
            ok = torch.isfinite(target)
            err = (pred - torch.where(ok, target, pred)).abs()
            terms["mae_rot"] = err[:, :3].sum() / ok[:, :3].sum().clamp_min(1)
            terms["mae_trans"] = err[:, 3:].sum() / ok[:, 3:].sum().clamp_min(1)
        return terms
