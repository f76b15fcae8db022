"""Unified motion encoder with per-factor heads (SPEC 2.2): a single-stack Face Alignment Network trunk
(as in PC-AVS) -> unified motion feature f_mot, then lip / pose / eye / emotion heads."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import pdfgc_ops
from pdfgc.constants import EMO_DIM, EYE_DIM, IMAGE_SIZE, LIP_DIM, POSE_DIM, UNIFIED_MOTION_DIM


def bn_relu(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """relu(bn(x)). In eval mode the BatchNorm is a per-channel affine map, applied together with the ReLU in one
    pass (`pdfgc_ops.scale_shift_relu`: C++ on CPU without autograd, else the PyTorch composite); in training mode
    it normalises with batch statistics as usual."""
    if bn.training or bn.running_var is None:
        return F.relu(bn(x))
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    return pdfgc_ops.scale_shift_relu(x, scale, bn.bias - bn.running_mean * scale)


class ConvBlock(nn.Module):
    """Pre-activation FAN block: three chained BN-ReLU-conv3x3 branches (out/2, out/4, out/4) concatenated,
    plus the residual (BN-ReLU-conv1x1 when in != out)."""

    def __init__(self, in_planes: int, out_planes: int):
        super().__init__()
        h, q = out_planes // 2, out_planes // 4
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, h, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(h)
        self.conv2 = nn.Conv2d(h, q, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(q)
        self.conv3 = nn.Conv2d(q, out_planes - h - q, 3, padding=1, bias=False)
        self.downsample = None
        if in_planes != out_planes:
            self.downsample = nn.Sequential(nn.BatchNorm2d(in_planes), nn.ReLU(True),
                                            nn.Conv2d(in_planes, out_planes, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o1 = self.conv1(bn_relu(self.bn1, x))
        o2 = self.conv2(bn_relu(self.bn2, o1))
        o3 = self.conv3(bn_relu(self.bn3, o2))
        res = x if self.downsample is None else self.downsample[2](bn_relu(self.downsample[0], x))
        return pdfgc_ops.cat_add((o1, o2, o3), res)  # cat(o1, o2, o3) + res in one pass (C++ on CPU, no autograd)


class HourGlass(nn.Module):
    """Recursive hourglass of ConvBlocks; modules b1_L, b2_L, (b2_plus_1), b3_L registered in the reference order.
    Down: max-pool 2; up: bilinear (align_corners=False) to the skip size; Dropout(0.5) on the skip branch."""

    def __init__(self, depth: int, features: int):
        super().__init__()
        self.depth = depth
        self.dropout = nn.Dropout(0.5)
        self._build(depth, features)

    def _build(self, level: int, f: int) -> None:
        self.add_module(f"b1_{level}", ConvBlock(f, f))
        self.add_module(f"b2_{level}", ConvBlock(f, f))
        if level > 1:
            self._build(level - 1, f)
        else:
            self.add_module(f"b2_plus_{level}", ConvBlock(f, f))
        self.add_module(f"b3_{level}", ConvBlock(f, f))

    def _run(self, level: int, x: torch.Tensor) -> torch.Tensor:
        up1 = self.dropout(self._modules[f"b1_{level}"](x))
        low = self._modules[f"b2_{level}"](F.max_pool2d(x, 2, stride=2))
        low = self._run(level - 1, low) if level > 1 else self._modules[f"b2_plus_{level}"](low)
        low = self._modules[f"b3_{level}"](low)
        return up1 + F.interpolate(low, size=up1.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(self.depth, x)


class FAN(nn.Module):
    """Single-stack FAN feature extractor (reference `FAN_use`): (B,3,S,S) -> (B, feature_dim).
    The 68-channel landmark-heatmap layer `l0` is reduced by conv6 (3x3/2) to one (S/8)^2 map, then fc."""

    def __init__(self, image_size: int = 224, stem: int = 64, mid: int = 128, features: int = 256,
                 hourglass_depth: int = 4, n_landmarks: int = 68, feature_dim: int = 512, stem_stride: int = 2):
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem, 7, stride=stem_stride, padding=3)
        self.bn1 = nn.BatchNorm2d(stem)
        self.conv2 = ConvBlock(stem, mid)
        self.conv3 = ConvBlock(mid, mid)
        self.conv4 = ConvBlock(mid, features)
        self.m0 = HourGlass(hourglass_depth, features)
        self.top_m_0 = ConvBlock(features, features)
        self.conv_last0 = nn.Conv2d(features, features, 1)
        self.l0 = nn.Conv2d(features, n_landmarks, 1)
        self.bn_end0 = nn.BatchNorm2d(features)
        self.conv6 = nn.Conv2d(n_landmarks, 1, 3, stride=2, padding=1)
        side = -(-image_size // (4 * stem_stride))  # conv6 output: 224 -> 28 with the released stride 2
        self.fc = nn.Linear(side * side, feature_dim)
        self.bn5 = nn.BatchNorm2d(n_landmarks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = bn_relu(self.bn1, self.conv1(x))
        x = F.max_pool2d(self.conv2(x), 2)
        x = self.conv4(self.conv3(x))
        x = self.top_m_0(self.m0(x))
        x = self.l0(bn_relu(self.bn_end0, self.conv_last0(x)))
        x = self.conv6(bn_relu(self.bn5, x))
        return self.fc(F.relu(x.flatten(1)))


def _head(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.BatchNorm1d(dim), nn.Linear(dim, dim))


def _embed(dim: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.ReLU(), nn.Linear(dim, out))


class MotionEncoder(nn.Module):
    """Reference `FanEncoder`: FAN trunk (`model.*`) + heads to_mouth/mouth_embed, to_headpose/headpose_embed,
    to_eye/eye_embed, to_emo/emo_embed (trunk Linear-ReLU-BN1d-Linear, embedding ReLU-Linear).

    forward(x (B,3,S,S)) -> (pose (B,pose_dim), eye (B,eye_dim), emo (B,emo_dim), mouth_feat (B,feature_dim)),
    exactly the reference outputs; encode(x) additionally returns the unified feature and the 500-d lip code.
    """

    def __init__(
        self,
        image_size: int = IMAGE_SIZE,
        stem: int = 64,                   # FAN stem width
        mid: int = 128,                   # FAN conv2/conv3 width
        features: int = 256,              # FAN hourglass width
        hourglass_depth: int = 4,         # 4 at 224 px (56 -> 3); use <= log2(S/4)-1
        n_landmarks: int = 68,
        feature_dim: int = UNIFIED_MOTION_DIM,  # unified motion feature (and head width)
        lip_dim: int = LIP_DIM,
        pose_dim: int = POSE_DIM,
        eye_dim: int = EYE_DIM,
        emo_dim: int = EMO_DIM,
        stem_stride: int = 2,             # 2 = released (trunk at S/4); 1 keeps small crops' eyes visible (S/2)
    ):
        super().__init__()
        self.config = dict(image_size=image_size, stem=stem, mid=mid, features=features,
                           hourglass_depth=hourglass_depth, n_landmarks=n_landmarks, feature_dim=feature_dim,
                           lip_dim=lip_dim, pose_dim=pose_dim, eye_dim=eye_dim, emo_dim=emo_dim,
                           stem_stride=stem_stride)
        if stem_stride not in (1, 2):
            raise ValueError(f"MotionEncoder: stem_stride must be 1 or 2 (released: 2), got {stem_stride}")
        hg = image_size // (2 * stem_stride)  # hourglass input side
        if hg >> hourglass_depth < 1:
            raise ValueError(f"MotionEncoder: hourglass_depth={hourglass_depth} is too deep for image_size="
                             f"{image_size} (the hourglass input is {hg} px; need {hg} >= 2**depth)")
        self.feature_dim = feature_dim
        self.model = FAN(image_size, stem, mid, features, hourglass_depth, n_landmarks, feature_dim, stem_stride)
        self.to_mouth = _head(feature_dim)
        self.mouth_embed = _embed(feature_dim, lip_dim)
        self.to_headpose = _head(feature_dim)
        self.headpose_embed = _embed(feature_dim, pose_dim)
        self.to_eye = _head(feature_dim)
        self.eye_embed = _embed(feature_dim, eye_dim)
        self.to_emo = _head(feature_dim)
        self.emo_embed = _embed(feature_dim, emo_dim)

    # role -> (head trunk, embedding) attribute names; the names are the released checkpoint's keys (SPEC 2.2)
    _HEADS = {"lip": ("to_mouth", "mouth_embed"), "pose": ("to_headpose", "headpose_embed"),
              "eye": ("to_eye", "eye_embed"), "emo": ("to_emo", "emo_embed")}
    ROLES = ("trunk",) + tuple(_HEADS)

    @property
    def code_dims(self) -> dict[str, int]:
        """Width of each factor code: {"lip": 500, "pose": 6, "eye": 6, "emo": 30} for the released model."""
        c = self.config
        return {"lip": c["lip_dim"], "pose": c["pose_dim"], "eye": c["eye_dim"], "emo": c["emo_dim"]}

    def role_modules(self, role: str) -> list[nn.Module]:
        """The sub-modules that make up `role`: "trunk" (the FAN, unified motion feature) or a factor head
        ("lip", "pose", "eye", "emo": its feature MLP and its code embedding). Stages freeze and train by role."""
        if role == "trunk":
            return [self.model]
        if role not in self._HEADS:
            raise KeyError(f"MotionEncoder: unknown role {role!r}; roles are {list(self.ROLES)}")
        return [getattr(self, n) for n in self._HEADS[role]]

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """x (B,3,S,S) in [-1,1] -> unified motion feature f (B, feature_dim)."""
        return self.model(x)

    def head(self, role: str, f: torch.Tensor, with_feature: bool = False):
        """Factor code of `role` from the unified feature f (B, feature_dim): (B, code_dims[role]); with
        `with_feature` also the head's feature (B, feature_dim) before the embedding, as `(feature, code)`."""
        feat_net, embed = self.role_modules(role)
        feat = feat_net(f)
        code = embed(feat)
        return (feat, code) if with_feature else code

    def forward(self, x: torch.Tensor):
        f = self.model(x)
        pose = self.headpose_embed(self.to_headpose(f))
        eye = self.eye_embed(self.to_eye(f))
        emo = self.emo_embed(self.to_emo(f))
        return pose, eye, emo, self.to_mouth(f)

    def encode(self, x: torch.Tensor, heads: tuple[str, ...] = ("pose", "eye", "emo", "lip")) -> dict:
        """x (B,3,S,S) -> dict(motion=(B,feature_dim) unified feature, and per requested head role: `<role>` its
        code (B, code_dims[role]) and `<role>_feat` the head feature (B,feature_dim)). Skipping heads saves work
        (stage 1 needs none)."""
        f = self.model(x)
        out = {"motion": f}
        for role in heads:
            out[f"{role}_feat"], out[role] = self.head(role, f, with_feature=True)
        return out
