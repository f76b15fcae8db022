"""Regression with NaN-masked targets (pose stage, eye-layout regression)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

REGRESSION_KINDS = ("l1", "smooth_l1", "mse")


def masked_regression(pred: torch.Tensor, target: torch.Tensor, kind: str = "smooth_l1", beta: float = 0.1,
                      dim_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean element-wise regression loss over the entries whose target is finite.

    pred, target: same shape (B, D); NaN / inf targets are masked out (unknown factors, e.g. gaze on real data).
    kind: "l1", "smooth_l1" (Huber with threshold `beta`, in target units) or "mse". `dim_weights (D,)` optionally
    weights each dimension. Returns 0 (with a gradient path) when no target is known.
    """
    if kind not in REGRESSION_KINDS:
        raise ValueError(f"regression kind: expected one of {REGRESSION_KINDS}, got {kind!r}")
    if pred.shape != target.shape:
        raise ValueError(f"masked_regression: pred {tuple(pred.shape)} vs target {tuple(target.shape)}")
    valid = torch.isfinite(target)
    safe_target = torch.where(valid, target, pred.detach())
    if kind == "l1":
        err = (pred - safe_target).abs()
    elif kind == "mse":
        err = (pred - safe_target).square()
    else:
        err = F.smooth_l1_loss(pred, safe_target, reduction="none", beta=beta)
    w = valid.to(pred.dtype)
    if dim_weights is not None:
        w = w * dim_weights.to(pred)
    denom = valid.sum().clamp_min(1)
    return (err * w).sum() / denom
