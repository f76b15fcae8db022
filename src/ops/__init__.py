"""pdfgc_ops: StyleGAN2 fused ops (upfirdn2d, fused leaky ReLU).

PLACEHOLDER (bootstrap): pure-PyTorch reference only; the ops owner replaces this with the dispatching
implementation (ref / cpu / cuda). Public names and signatures below are the contract and must not change.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["upfirdn2d", "fused_leaky_relu", "FusedLeakyReLU", "backend_info"]


def upfirdn2d(x, kernel, up=1, down=1, pad=(0, 0), impl="auto"):
    """x: (N,C,H,W); kernel: (kh,kw). Zero-insert upsample, pad (p0 before, p1 after) on both axes, true
    convolution with `kernel`, keep every `down`-th sample."""
    n, c, h, w = x.shape
    p0, p1 = pad
    if up > 1:
        y = x.new_zeros(n, c, h * up, w * up)
        y[:, :, ::up, ::up] = x
        x = y
    x = F.pad(x, [max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)])
    x = x[:, :, max(-p0, 0): x.shape[2] - max(-p1, 0), max(-p0, 0): x.shape[3] - max(-p1, 0)]
    k = torch.flip(kernel, [0, 1]).to(x)[None, None].repeat(c, 1, 1, 1)
    x = F.conv2d(x, k, groups=c)
    return x[:, :, ::down, ::down]


def fused_leaky_relu(x, bias=None, negative_slope=0.2, scale=math.sqrt(2), impl="auto"):
    if bias is not None:
        shape = [1, -1] + [1] * (x.ndim - 2)
        x = x + bias.reshape(shape)
    return F.leaky_relu(x, negative_slope) * scale


class FusedLeakyReLU(nn.Module):
    def __init__(self, channels, negative_slope=0.2, scale=math.sqrt(2)):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.negative_slope = negative_slope
        self.scale = scale

    def forward(self, x):
        return fused_leaky_relu(x, self.bias, self.negative_slope, self.scale)


def backend_info():
    return {"requested": "ref", "upfirdn2d": "ref", "fused_leaky_relu": "ref", "errors": {}}
