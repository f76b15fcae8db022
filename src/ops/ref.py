"""Reference implementations in plain PyTorch: fast (one depthwise convolution), any device and dtype, and
differentiable to any order by autograd (conv2d / conv_transpose2d / pad all have higher-order derivatives)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._params import UpFirDnParams, flat_bias


def upfirdn2d_ref(x: torch.Tensor, kernel: torch.Tensor, p: UpFirDnParams) -> torch.Tensor:
    """upfirdn2d (SPEC 3.2) as one depthwise convolution.

    x: (N, C, H, W); kernel: (kh, kw); returns (N, C, OH, OW) with OH = (H*uy + py0 + py1 - kh) // dy + 1
    (same for OW). Exact sequence:
      * up == 1 on both axes: pad (negative = crop), then cross-correlate every channel with flip(kernel)
        (= true convolution with kernel) at stride (dy, dx). Symmetric non-negative pads go into conv2d itself.
      * otherwise: T = conv_transpose2d(x, kernel, stride=(uy, ux)) per channel, which equals zero insertion
        followed by a full true convolution: T[t] = sum_i x[i] k[t - u*i], t in [0, (H-1)*u + k). The requested
        output before downsampling is T[t + k - 1 - p0] for t in [0, H*u + p0 + p1 - k + 1): one crop/pad.
        Then keep every d-th sample starting at 0.
    """
    _, c, h, w = x.shape
    kh, kw = kernel.shape
    kernel = kernel.to(device=x.device, dtype=x.dtype)
    if p.ux == 1 and p.uy == 1:
        weight = kernel.flip([0, 1])[None, None].repeat(c, 1, 1, 1)  # (C, 1, kh, kw): depthwise
        if p.px0 == p.px1 >= 0 and p.py0 == p.py1 >= 0:
            return F.conv2d(x, weight, stride=(p.dy, p.dx), padding=(p.py0, p.px0), groups=c)
        x = F.pad(x, [p.px0, p.px1, p.py0, p.py1])
        return F.conv2d(x, weight, stride=(p.dy, p.dx), groups=c)
    weight = kernel[None, None].repeat(c, 1, 1, 1)  # conv_transpose2d weight (C_in, C_out / groups, kh, kw)
    t = F.conv_transpose2d(x, weight, stride=(p.uy, p.ux), groups=c)
    th, tw = t.shape[2], t.shape[3]  # (H-1)*u + k
    t = F.pad(t, [-(kw - 1 - p.px0), w * p.ux + p.px1 - tw, -(kh - 1 - p.py0), h * p.uy + p.py1 - th])
    if p.dx > 1 or p.dy > 1:
        t = t[:, :, :: p.dy, :: p.dx]
    return t


def fused_leaky_relu_ref(
    x: torch.Tensor, bias: torch.Tensor | None, negative_slope: float, scale: float
) -> torch.Tensor:
    """Eager composite: scale * leaky_relu(x + bias, negative_slope), bias broadcast on axis 1.

    x: (N, C, ...) any rank >= 2; bias: (C,), (1, C, 1, 1) or None. Three elementwise passes; any order of
    gradient through autograd.
    """
    b = flat_bias(bias, x.shape[1])
    if b is not None:
        x = x + b.reshape([1, -1] + [1] * (x.ndim - 2)).to(x.dtype)
    return F.leaky_relu(x, negative_slope) * scale


def scale_shift_relu_ref(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """relu(x * scale + shift), scale and shift (C,) broadcast on axis 1 (an eval-mode BatchNorm + ReLU)."""
    view = [1, -1] + [1] * (x.ndim - 2)
    return F.relu(x * scale.reshape(view).to(x.dtype) + shift.reshape(view).to(x.dtype))


def cat_add_ref(parts: list[torch.Tensor], residual: torch.Tensor) -> torch.Tensor:
    """torch.cat(parts, 1) + residual."""
    return torch.cat(list(parts), 1) + residual
