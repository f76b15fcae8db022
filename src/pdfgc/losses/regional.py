"""Region-weighted reconstruction: L1 inside the eye and mouth boxes.

The eyes and the mouth cover a few percent of a face crop (at 56 px an eye is a few pixels), so a whole-image L1
hardly sees them, yet blink, gaze and lip shape live there. `region_l1` is the mean absolute error inside a box per
sample, averaged over the samples whose box is known; boxes come with the data (`gt_eye_box`, `gt_mouth_box`:
x0, y0, x1, y1 in [0, 1] image coordinates, NaN when unknown).
"""
from __future__ import annotations

import torch


def box_masks(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, 4) boxes (x0, y0, x1, y1) in [0, 1] -> (N, 1, H, W) float masks: the fraction of each pixel's area
    inside the box (exact area coverage, so a box smaller than a pixel still weighs what it covers)."""
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"box_masks: boxes must be (N, 4) as (x0, y0, x1, y1), got {tuple(boxes.shape)}")
    b = torch.nan_to_num(boxes.float(), nan=0.0).clamp(0.0, 1.0)

    def coverage(lo, hi, n):  # (N, n): overlap of [lo, hi] (in pixels) with each pixel [i, i+1]
        edges = torch.arange(n, device=boxes.device, dtype=torch.float32)
        lo, hi = lo[:, None] * n, hi[:, None] * n
        return (torch.minimum(hi, edges + 1) - torch.maximum(lo, edges)).clamp(min=0.0)

    fy = coverage(b[:, 1], b[:, 3], height)
    fx = coverage(b[:, 0], b[:, 2], width)
    return (fy[:, :, None] * fx[:, None, :])[:, None]


def region_l1(fake: torch.Tensor, real: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Mean |fake - real| inside each sample's box (area-weighted), averaged over samples whose box is finite
    and non-empty; 0 (keeping the graph) when no sample has one.

    fake, real: (N, C, H, W); boxes: (N, 4) in [0, 1] image coordinates, NaN rows = unknown."""
    if fake.shape != real.shape or boxes.shape[0] != fake.shape[0]:
        raise ValueError(f"region_l1: fake {tuple(fake.shape)}, real {tuple(real.shape)} and boxes "
                         f"{tuple(boxes.shape)} must agree on N")
    masks = box_masks(boxes.to(fake.device), fake.shape[-2], fake.shape[-1]).to(fake.dtype)
    area = masks.flatten(1).sum(1)  # (N,) in pixels
    valid = torch.isfinite(boxes.to(fake.device)).all(1) & (area > 0)
    if not bool(valid.any()):
        return fake.sum() * 0.0
    err = ((fake - real).abs() * masks).flatten(1).sum(1) / (area * fake.shape[1]).clamp(min=1e-12)
    return err[valid].mean()
