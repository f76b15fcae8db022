"""Multiscale PatchGAN discriminator (SPEC 2.7, pix2pixHD/SPADE style; training only)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm


class NLayerDiscriminator(nn.Module):
    """PatchGAN: 4x4 convs (pad 2), ndf doubling to max_nf, last hidden conv stride 1, LeakyReLU 0.2; hidden convs
    use spectral norm + non-affine InstanceNorm ("spectralinstance") and, as in the reference, no bias (a bias
    before a non-affine InstanceNorm is removed by its mean subtraction, so the reference deletes it).

    forward(x) -> list of every block output (the last one is the (B,1,h,w) logit map); with include_input=True
    the input itself comes first, as the reference's feature list does (its feature matching then contains an
    image L1 term, weighted by the trainer's lambda_image).
    """

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 4, max_nf: int = 512,
                 include_input: bool = False):
        super().__init__()
        kw, pad = 4, 2
        blocks = [[nn.Conv2d(input_nc, ndf, kw, stride=2, padding=pad), nn.LeakyReLU(0.2, False)]]
        nf = ndf
        for n in range(1, n_layers):
            prev, nf = nf, min(nf * 2, max_nf)
            stride = 1 if n == n_layers - 1 else 2
            blocks.append([spectral_norm(nn.Conv2d(prev, nf, kw, stride=stride, padding=pad, bias=False)),
                           nn.InstanceNorm2d(nf, affine=False), nn.LeakyReLU(0.2, False)])
        blocks.append([nn.Conv2d(nf, 1, kw, stride=1, padding=pad)])
        for i, b in enumerate(blocks):
            self.add_module(f"model{i}", nn.Sequential(*b))
        self.n_blocks = len(blocks)
        self.include_input = include_input

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [x] if self.include_input else []
        for i in range(self.n_blocks):
            x = getattr(self, f"model{i}")(x)
            feats.append(x)
        return feats


class MultiscaleDiscriminator(nn.Module):
    """num_D PatchGANs on the image downsampled by 3x3/2 average pooling (count_include_pad=False) between scales.

    forward(x (B,input_nc,S,S) in [-1,1]) -> list over scales (full resolution first) of the list of feature maps
    of that scale (last = logits), for the hinge loss and feature matching. include_input=True (the reference's
    layout) puts that scale's input image first in each list (n_layers + 2 entries instead of n_layers + 1).
    """

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 4, num_D: int = 2, max_nf: int = 512,
                 include_input: bool = False):
        super().__init__()
        self.config = dict(input_nc=input_nc, ndf=ndf, n_layers=n_layers, num_D=num_D, max_nf=max_nf,
                           include_input=include_input)
        for i in range(num_D):
            self.add_module(f"discriminator_{i}", NLayerDiscriminator(input_nc, ndf, n_layers, max_nf, include_input))
        self.num_D = num_D

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        out = []
        for i in range(self.num_D):
            out.append(getattr(self, f"discriminator_{i}")(x))
            if i + 1 < self.num_D:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
        return out
