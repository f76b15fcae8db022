"""Laplacian-pyramid L1: reconstruction error measured per frequency band.

A plain L1 on a small generator's output is satisfied early by a blur: the fine bands (eyes, lids, lip line) hold
little of the image's energy, so their errors are a small part of the mean. Comparing band by band gives every
octave the same weight (each band's mean absolute difference, averaged over bands), so missing detail costs as much
as a wrong low-frequency colour (Bojanowski et al., "Optimizing the latent space of generative networks", use the
same idea with a 2^-2j weighting of summed bands).

The pyramid is exactly invertible: `sum(bands)` (each upsampled back, coarsest first) reconstructs the input, and
`laplacian_pyramid` is the only place that defines a band.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# binomial 5-tap low-pass (the classic Burt-Adelson kernel)
_TAPS = (1.0, 4.0, 6.0, 4.0, 1.0)


def _blur(x: torch.Tensor) -> torch.Tensor:
    k = torch.tensor(_TAPS, dtype=x.dtype, device=x.device) / 16.0
    c = x.shape[1]
    x = F.pad(x, (2, 2, 2, 2), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, 5).expand(c, 1, 1, 5), groups=c)
    return F.conv2d(x, k.view(1, 1, 5, 1).expand(c, 1, 5, 1), groups=c)


def _up(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def default_levels(size: int, min_size: int = 7, max_levels: int = 5) -> int:
    """Number of bands for a `size`-pixel image: halve while the next level keeps >= `min_size` pixels."""
    levels = 1
    while levels < max_levels and size // (2 ** levels) >= min_size:
        levels += 1
    return levels


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """(N,C,H,W) -> `levels` tensors: band-pass images finest first, then the low-pass residual.
    Band j = low_j - up(low_{j+1}), where low_{j+1} = blur(low_j) subsampled by 2."""
    if levels < 1:
        raise ValueError(f"laplacian_pyramid: levels must be >= 1, got {levels}")
    bands, cur = [], x
    for _ in range(levels - 1):
        low = _blur(cur)[..., ::2, ::2]
        bands.append(cur - _up(low, cur.shape[-2:]))
        cur = low
    bands.append(cur)
    return bands


def reconstruct(bands: list[torch.Tensor]) -> torch.Tensor:
    """Inverse of `laplacian_pyramid`."""
    cur = bands[-1]
    for band in reversed(bands[:-1]):
        cur = band + _up(cur, band.shape[-2:])
    return cur


def laplacian_l1(fake: torch.Tensor, real: torch.Tensor, levels: int | None = None) -> torch.Tensor:
    """Mean over pyramid bands of the mean absolute difference of each band; `levels` defaults to
    `default_levels(min(H, W))` (4 at 56 px: 56, 28, 14, 7)."""
    if fake.shape != real.shape:
        raise ValueError(f"laplacian_l1: fake {tuple(fake.shape)} and real {tuple(real.shape)} differ")
    if levels is None:
        levels = default_levels(min(fake.shape[-2:]))
    diffs = laplacian_pyramid(fake - real, levels)  # the pyramid is linear: bands of the difference
    return torch.stack([d.abs().mean() for d in diffs]).mean()
