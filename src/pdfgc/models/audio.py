"""Audio encoder (SPEC 2.3): ResNetSE34-V2 (voxceleb_trainer) on one 80x20 log-mel window, self-attentive
pooling over time, a 512-d embedding and the 500-d lip code (`mouth_embed`)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from pdfgc.constants import LIP_DIM, N_MELS


class SELayer(nn.Module):
    """Squeeze-excitation: channel scale sigmoid(fc(avgpool(x))), bottleneck C/reduction."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels),
                                nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean(dim=(2, 3)))[:, :, None, None]


class SEBasicBlock(nn.Module):
    """conv3x3(stride) -> ReLU -> BN -> conv3x3 -> BN -> SE, + shortcut, ReLU (ReLU before BN, as the reference)."""

    def __init__(self, inplanes: int, planes: int, stride=1, downsample: nn.Module | None = None,
                 reduction: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.se = SELayer(planes, reduction)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(self.relu(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        res = x if self.downsample is None else self.downsample(x)
        return self.relu(out + res)


class ResNetSE(nn.Module):
    """ResNetSE34-V2 trunk + SAP pooling + fc: (B,1,n_mels,T) -> (B, embed_dim)."""

    def __init__(self, layers: Sequence[int], num_filters: Sequence[int], embed_dim: int, n_mels: int = 80,
                 attention_dim: int = 128, se_reduction: int = 8):
        super().__init__()
        self.inplanes = num_filters[0]
        self.se_reduction = se_reduction
        self.conv1 = nn.Conv2d(1, num_filters[0], 3, stride=1, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.layer1 = self._make_layer(num_filters[0], layers[0])
        self.layer2 = self._make_layer(num_filters[1], layers[1], stride=2)
        self.layer3 = self._make_layer(num_filters[2], layers[2], stride=2)
        self.layer4 = self._make_layer(num_filters[3], layers[3], stride=2)
        pooled = num_filters[3] * (n_mels // 8)  # channels x remaining mel bins
        self.attention = nn.Sequential(nn.Conv1d(pooled, attention_dim, 1), nn.ReLU(), nn.BatchNorm1d(attention_dim),
                                       nn.Conv1d(attention_dim, pooled, 1), nn.Softmax(dim=2))
        self.fc = nn.Linear(pooled, embed_dim)
        for m in self.modules():  # the reference's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes))
        mods = [SEBasicBlock(self.inplanes, planes, stride, downsample, self.se_reduction)]
        self.inplanes = planes
        mods += [SEBasicBlock(planes, planes, reduction=self.se_reduction) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.relu(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = x.reshape(x.shape[0], -1, x.shape[-1])  # (B, C*mels/8, T/8)
        w = self.attention(x)  # softmax over time
        return self.fc(torch.sum(x * w, dim=2))


class AudioEncoder(nn.Module):
    """Reference `ResSESyncEncoder`: forward(mel (B,1,n_mels,T) or (B,K,1,n_mels,T)) -> (f_aud (B[*K], embed_dim),
    lip (B[*K], lip_dim)); mel windows are 80 x 20 (0.2 s) in [0,1] (SPEC 1.4)."""

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 6, 3),
        num_filters: Sequence[int] = (32, 64, 128, 256),
        n_mels: int = N_MELS,
        embed_dim: int = 512,             # f_aud
        lip_dim: int = LIP_DIM,           # lip code (shared space with the motion encoder's mouth_embed)
        attention_dim: int = 128,         # SAP attention bottleneck
        se_reduction: int = 8,
    ):
        super().__init__()
        self.config = dict(layers=list(layers), num_filters=list(num_filters), n_mels=n_mels, embed_dim=embed_dim,
                           lip_dim=lip_dim, attention_dim=attention_dim, se_reduction=se_reduction)
        self.model = ResNetSE(layers, num_filters, embed_dim, n_mels, attention_dim, se_reduction)
        self.mouth_embed = nn.Sequential(nn.ReLU(), nn.Linear(embed_dim, lip_dim))

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if mel.ndim == 5:
            mel = mel.flatten(0, 1)
        f = self.model(mel)
        return f, self.mouth_embed(f)
