"""Driver looping and the reference's temporal post-processing of the codes (SPEC 1.5-1.6).

Everything here works on per-frame code sequences `(N, D)` (N output frames, D code dims) and is pure tensor math,
so it can be tested against hand-computed values without any network. Which controls are on (`Controls`) and what
an off control does to its code (`apply_controls`, `eye_mask`) live with the style layout in `pdfgc.models.latent`.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from pdfgc.constants import FRAME_OFFSET
from pdfgc.pipeline.errors import PipelineError


def leading_drop(length: int) -> int:
    """How many leading driver frames are skipped: the reference drops 2 (`driving_img[2:]`, SPEC 1.5) to mirror
    the audio starting at video frame 2. A driver of 1 or 2 frames keeps its last frame instead of becoming empty
    (the reference crashes there)."""
    if length < 1:
        raise PipelineError("a driver holds no frames")
    return min(FRAME_OFFSET, length - 1)


def driver_indices(num_frames: int, length: int) -> np.ndarray:
    """Driver frame used by each output frame, `(num_frames,)` int64, indices into the driver AFTER the leading
    drop: output frame i uses driver frame `i mod length` (cyclic looping, SPEC 1.5), for any length >= 1."""
    if length < 1:
        raise PipelineError("a driver holds no frames")
    return np.arange(num_frames, dtype=np.int64) % length


def gaussian_kernel(size: int = 3, sigma: float = 1.0) -> torch.Tensor:
    """Normalised 1-D Gaussian `(size,)` float32, centred; size 3, sigma 1 -> [0.27407, 0.45186, 0.27407]."""
    half = (size - 1) / 2.0
    w = [math.exp(-((k - half) ** 2) / (2.0 * sigma * sigma)) for k in range(size)]
    s = sum(w)
    return torch.tensor([v / s for v in w], dtype=torch.float32)


def smooth_lip(lip: torch.Tensor, size: int = 3, sigma: float = 1.0) -> torch.Tensor:
    """Temporal Gaussian smoothing of the lip code over the whole sequence, `(N, D) -> (N, D)`.

    Depthwise 1-D convolution with zero padding (SPEC 1.6): the first and last frames are attenuated (their weights
    sum to 0.726), exactly as the reference; nothing is renormalised at the edges.
    """
    if lip.ndim != 2:
        raise ValueError(f"smooth_lip expects (N, D), got {tuple(lip.shape)}")
    k = gaussian_kernel(size, sigma).to(lip.device, lip.dtype)
    n, d = lip.shape
    x = lip.t().reshape(1, d, n)  # channels = code dims, one filter each (depthwise)
    y = torch.nn.functional.conv1d(x, k.view(1, 1, size).expand(d, 1, size).contiguous(), padding=size // 2, groups=d)
    return y.reshape(d, n).t().contiguous()


def smooth_pose(pose: torch.Tensor) -> torch.Tensor:
    """3-tap centred moving average of the pose code, `(N, D) -> (N, D)` (SPEC 1.6).

    Edge rule of the reference: frame 0 is mean(frames 0, 1) and the last frame mean(last two frames), i.e. the
    average over the frames that exist (no zero padding). A 1-frame sequence is returned unchanged.
    """
    if pose.ndim != 2:
        raise ValueError(f"smooth_pose expects (N, D), got {tuple(pose.shape)}")
    n = pose.shape[0]
    if n < 2:
        return pose.clone()
    out = torch.empty_like(pose)
    out[1:-1] = (pose[:-2] + pose[1:-1] + pose[2:]) / 3.0
    out[0] = (pose[0] + pose[1]) / 2.0
    out[-1] = (pose[-2] + pose[-1]) / 2.0
    return out
