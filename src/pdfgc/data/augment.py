"""Augmentation of driving frames (stage 1) and soft-edged region pasting (eye triplets, stage 2c).

Colour jitter and perspective follow the reference's training defaults (SPEC 4.2, `data.augitem`): ColorJitter
brightness 0.5, contrast 0.4, saturation 0.4, hue 0.4 (factors drawn uniformly in [1-v, 1+v], hue shift in
[-v, v] turns, the four applied in random order), RandomPerspective distortion 0.1 with probability 0.9. Every
random draw comes from a numpy `Generator` passed by the caller, so a sample is a pure function of its seed (no
global RNG state: safe in DataLoader workers).

Tensors are float32 CHW in [-1, 1].
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class DrivingAugment:
    """Colour + perspective augmentation of a driving frame; fields are config keys (`data.augment.*`).

    `__call__(img (3,S,S) in [-1,1], rng) -> (3,S,S) in [-1,1]`. Set a value to 0 to disable that part.
    """

    brightness: float = 0.5
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.4
    distortion: float = 0.1
    perspective_p: float = 0.9

    def __call__(self, img: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        x = colour_jitter(img, rng, self.brightness, self.contrast, self.saturation, self.hue)
        if self.distortion > 0 and rng.uniform() < self.perspective_p:
            x = random_perspective(x, rng, self.distortion)
        return x


def colour_jitter(img: torch.Tensor, rng: np.random.Generator, brightness: float = 0.5, contrast: float = 0.4,
                  saturation: float = 0.4, hue: float = 0.4) -> torch.Tensor:
    """torchvision-style ColorJitter with parameters drawn from `rng`; img (3,H,W) in [-1,1] -> same shape."""
    import torchvision.transforms.functional as TF

    x = ((img + 1) * 0.5).clamp(0, 1)
    ops = []
    if brightness > 0:
        f = rng.uniform(max(0.0, 1 - brightness), 1 + brightness)
        ops.append(lambda t, f=f: TF.adjust_brightness(t, f))
    if contrast > 0:
        f = rng.uniform(max(0.0, 1 - contrast), 1 + contrast)
        ops.append(lambda t, f=f: TF.adjust_contrast(t, f))
    if saturation > 0:
        f = rng.uniform(max(0.0, 1 - saturation), 1 + saturation)
        ops.append(lambda t, f=f: TF.adjust_saturation(t, f))
    if hue > 0:
        f = rng.uniform(-min(hue, 0.5), min(hue, 0.5))
        ops.append(lambda t, f=f: TF.adjust_hue(t, f))
    for k in rng.permutation(len(ops)):
        x = ops[int(k)](x)
    return (x.clamp(0, 1) * 2 - 1).to(img.dtype)


def perspective_points(height: int, width: int, distortion: float, rng: np.random.Generator):
    """Start/end corner points as torchvision's RandomPerspective draws them (each corner moves inwards by up to
    `distortion` x half the image size), with the draws taken from `rng`."""
    hh, hw = height // 2, width // 2
    dx, dy = int(distortion * hw) + 1, int(distortion * hh) + 1
    tl = [int(rng.integers(0, dx)), int(rng.integers(0, dy))]
    tr = [int(rng.integers(width - dx, width)), int(rng.integers(0, dy))]
    br = [int(rng.integers(width - dx, width)), int(rng.integers(height - dy, height))]
    bl = [int(rng.integers(0, dx)), int(rng.integers(height - dy, height))]
    start = [[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]]
    return start, [tl, tr, br, bl]


def random_perspective(img: torch.Tensor, rng: np.random.Generator, distortion: float = 0.1,
                       fill: float = -1.0) -> torch.Tensor:
    """Random perspective warp (bilinear; uncovered pixels = `fill`, black by default); img (3,H,W) in [-1,1]."""
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    h, w = img.shape[-2:]
    start, end = perspective_points(h, w, distortion, rng)
    return TF.perspective(img, start, end, interpolation=InterpolationMode.BILINEAR, fill=[fill] * img.shape[0])


def soft_box_mask(size: int, box, feather: float) -> np.ndarray:
    """float32 `(size, size)` mask, 1 inside `box` (x0, y0, x1, y1 in [0,1] image coordinates) fading linearly to
    0 over `feather` pixels outside it (so a paste has no hard seam)."""
    x0, y0, x1, y1 = (float(v) * size for v in box)
    c = np.arange(size, dtype=np.float32) + 0.5
    fx = np.clip(1.0 - np.maximum(x0 - c, c - x1) / max(feather, 1e-6), 0.0, 1.0)
    fy = np.clip(1.0 - np.maximum(y0 - c, c - y1) / max(feather, 1e-6), 0.0, 1.0)
    fx[(c >= x0) & (c <= x1)] = 1.0
    fy[(c >= y0) & (c <= y1)] = 1.0
    return np.outer(fy, fx).astype(np.float32)


def paste(dst: np.ndarray, src: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Blend `src` into `dst` (uint8 HWC images of one size) with a `(H, W)` mask in [0,1]; returns uint8."""
    m = mask[..., None]
    out = dst.astype(np.float32) * (1 - m) + src.astype(np.float32) * m
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
