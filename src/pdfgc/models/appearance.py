"""Appearance encoder (SPEC 2.1): a ResNeXt trunk defined here (same structure and state_dict names as
torchvision's ResNet(Bottleneck, groups, width_per_group), so no torchvision weights are needed) producing the
global appearance code f_app and the spatial code f_sp that replaces the generator's constant input."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pdfgc.constants import IMAGE_SIZE


class Bottleneck(nn.Module):
    """ResNet bottleneck with grouped 3x3 (stride on the 3x3): 1x1 -> 3x3/groups -> 1x1 (x4), BN, ReLU."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, groups: int = 1, width_per_group: int = 64,
                 downsample: nn.Module | None = None):
        super().__init__()
        width = int(planes * (width_per_group / 64.0)) * groups
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNeXt(nn.Module):
    """ResNet/ResNeXt trunk with torchvision's attribute names (conv1, bn1, layer1..4, fc) and an ImageNet `fc`
    head that PD-FGC keeps in its checkpoint but never uses."""

    def __init__(self, layers: Sequence[int] = (3, 4, 6, 3), groups: int = 32, width_per_group: int = 4,
                 base_planes: int = 64, num_imagenet_classes: int = 1000, stem_stride: int = 2,
                 stem_pool: bool = True, layer_strides: Sequence[int] = (2, 2, 2)):
        super().__init__()
        self.inplanes = base_planes
        self.groups = groups
        self.width_per_group = width_per_group
        self.conv1 = nn.Conv2d(3, base_planes, 7, stride=stem_stride, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_planes)
        self.relu = nn.ReLU(inplace=True)
        # stem_pool=False replaces the stride-2 max-pool by the identity (no parameters either way)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if stem_pool else nn.Identity()
        self.layer1 = self._make_layer(base_planes, layers[0])
        s2, s3, s4 = (int(v) for v in layer_strides)
        self.layer2 = self._make_layer(base_planes * 2, layers[1], stride=s2)
        self.layer3 = self._make_layer(base_planes * 4, layers[2], stride=s3)
        self.layer4 = self._make_layer(base_planes * 8, layers[3], stride=s4)
        self.out_dim = base_planes * 8 * Bottleneck.expansion
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.out_dim, num_imagenet_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, 1, stride=stride,
                                                 bias=False), nn.BatchNorm2d(planes * Bottleneck.expansion))
        mods = [Bottleneck(self.inplanes, planes, stride, self.groups, self.width_per_group, downsample)]
        self.inplanes = planes * Bottleneck.expansion
        mods += [Bottleneck(self.inplanes, planes, 1, self.groups, self.width_per_group) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,S,S) -> layer4 map (B, out_dim, S/32, S/32)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class AppearanceEncoder(nn.Module):
    """ResNeXt-50 32x4d appearance encoder (reference `ResNeXtEncoder`).

    forward(x (B,3,S,S) in [-1,1]) -> (f_app (B, app_dim), f_sp (B, spatial_dim, spatial_size, spatial_size)):
    f_app = global average of the layer4 map; f_sp = adaptive_avg_pool(conv1x1(layer4), spatial_size).
    classify(f_app) -> (B, num_classes) identity logits (the released `fc` head, 5995 VoxCeleb2 identities).
    """

    def __init__(
        self,
        image_size: int = IMAGE_SIZE,     # input side (informational; any size >= 32 works)
        layers: Sequence[int] = (3, 4, 6, 3),
        groups: int = 32,                 # cardinality
        width_per_group: int = 4,
        base_planes: int = 64,            # ResNet stem width; app_dim = 32 * base_planes
        spatial_dim: int = 512,           # channels of f_sp (= generator channels at its start size)
        spatial_size: int = 7,            # side of f_sp (= generator start size)
        num_classes: int = 5995,          # identity classifier head
        num_imagenet_classes: int = 1000, # the trunk's unused ImageNet head (kept for the checkpoint keys)
        stem_stride: int = 2,             # stride of the 7x7 stem conv (reference: 2)
        stem_pool: bool = True,           # the stem's stride-2 max-pool (reference: on)
        layer_strides: Sequence[int] = (2, 2, 2),  # strides of layer2..4 (reference: 2, 2, 2)
    ):
        """The trunk's total stride is 32 with the reference stem (stem_stride 2 + max-pool), so f_sp is the
        layer4 map at spatial_size only when image_size = 32 * spatial_size (224 px -> 7x7). At smaller sizes the
        layer4 map is smaller than f_sp and `adaptive_avg_pool2d` only replicates it (56 px: a 2x2 map blown up to
        7x7): pass stem_stride=1, stem_pool=False (total stride 8) so that 56 px gives a true 7x7 map, and
        layer_strides=(2, 2, 1) (total stride 4) for a 14x14 map (a generator starting at 14)."""
        super().__init__()
        self.config = dict(image_size=image_size, layers=list(layers), groups=groups,
                           width_per_group=width_per_group, base_planes=base_planes, spatial_dim=spatial_dim,
                           spatial_size=spatial_size, num_classes=num_classes,
                           num_imagenet_classes=num_imagenet_classes, stem_stride=stem_stride, stem_pool=stem_pool)
        if tuple(int(v) for v in layer_strides) != (2, 2, 2):  # only then: earlier configs stay as they were
            self.config["layer_strides"] = [int(v) for v in layer_strides]
        self.model = ResNeXt(layers, groups, width_per_group, base_planes, num_imagenet_classes,
                             stem_stride=stem_stride, stem_pool=stem_pool, layer_strides=layer_strides)
        self.app_dim = self.model.out_dim
        self.spatial_dim = spatial_dim
        self.spatial_size = spatial_size
        self.conv1x1 = nn.Conv2d(self.app_dim, spatial_dim, 1)
        self.fc = nn.Linear(self.app_dim, num_classes)

    @staticmethod
    def output_dim(base_planes: int = 64, **_) -> int:
        """app_dim (the width of f_app) of this configuration without building it: the ResNeXt's last stage has
        8 x base_planes bottleneck planes x expansion 4 (2048 released)."""
        return int(base_planes) * 8 * Bottleneck.expansion

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.model.features(x)
        f_app = torch.flatten(self.model.avgpool(feat), 1)
        f_sp = F.adaptive_avg_pool2d(self.conv1x1(feat), (self.spatial_size, self.spatial_size))
        return f_app, f_sp

    def load_trunk_weights(self, path) -> list[str]:
        """Initialise the ResNeXt trunk from a local torchvision-style state_dict file (e.g. the ImageNet
        `resnext50_32x4d-*.pth`; keys `conv1.weight`, `layer1.0...`, optionally prefixed `model.`). Never downloads.
        Returns the trunk keys that were not in the file (e.g. `fc.*` when the file has another head size)."""
        from pathlib import Path

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"appearance trunk weights {path} not found; pass a local torchvision "
                                    "resnext50_32x4d state_dict (pdfgc never downloads weights)")
        sd = torch.load(path, map_location="cpu", weights_only=True)
        sd = {k[len("model."):] if k.startswith("model.") else k: v for k, v in sd.items()}
        own = self.model.state_dict()
        usable = {k: v for k, v in sd.items() if k in own and v.shape == own[k].shape}
        bad = [f"{k}: expected {tuple(own[k].shape)}, file has {tuple(v.shape)}" for k, v in sd.items()
               if k in own and v.shape != own[k].shape and not k.startswith("fc.")]
        if bad:
            raise ValueError(f"appearance trunk weights {path} do not fit this trunk: {bad[:5]}")
        self.model.load_state_dict(usable, strict=False)
        return sorted(k for k in own if k not in usable)

    def classify(self, f_app: torch.Tensor) -> torch.Tensor:
        """f_app (B, app_dim) -> identity logits (B, num_classes)."""
        return self.fc(f_app)
