"""VGG19 perceptual loss (pix2pixHD / SPADE form, the one the reference's leaked trainer used).

L1 between VGG19 activations of the fake and the (detached) real image at relu1_1, relu2_1, relu3_1, relu4_1,
relu5_1, weighted 1/32, 1/16, 1/8, 1/4, 1 (SPEC 4.3). Images come in [-1, 1] and are mapped to ImageNet statistics.

ImageNet VGG19 weights cannot be downloaded here: pass `weights_path` (a torchvision `vgg19` state_dict, e.g.
`vgg19-dcbb9e9d.pth` from download.pytorch.org/models, keys `features.*` or full model). Without it the network is
randomly initialised (deterministic seed) and one warning is emitted: random conv features still give a multi-scale
structural loss, but not the ImageNet perceptual one.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# Slice ends in torchvision's vgg19().features, chosen so each slice ends just after relu{1..5}_1.
_VGG19_SLICE_ENDS = (2, 7, 12, 21, 30)
DEFAULT_LAYER_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_warned_random = False


# torchvision's VGG19 ("E") feature layout: conv widths, "M" = max-pool; module indices (and so state_dict keys
# `features.<i>.*`) follow from Conv-ReLU pairs and pools in this order.
_VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


def _vgg19_features(end: int) -> nn.Sequential:
    """The first `end` modules of torchvision's `vgg19().features` (same indices), Kaiming-initialised as
    torchvision does; building only what is used avoids the 120M-parameter classifier."""
    layers: list[nn.Module] = []
    cin = 3
    for v in _VGG19_CFG:
        if len(layers) >= end:
            break
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            conv = nn.Conv2d(cin, v, 3, padding=1)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.ReLU(inplace=False)]
            cin = v
    return nn.Sequential(*layers[:end])


def _load_vgg19_features(weights_path: str | None, num_slices: int, seed: int = 0) -> nn.Sequential:
    global _warned_random
    with torch.random.fork_rng(devices=[]):
        # The random fallback must not depend on (or disturb) the caller's RNG stream.
        torch.manual_seed(seed)
        features = _vgg19_features(_VGG19_SLICE_ENDS[num_slices - 1])
    if weights_path:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"perceptual.weights_path={str(path)!r} does not exist. Download torchvision's ImageNet VGG19 "
                "(https://download.pytorch.org/models/vgg19-dcbb9e9d.pth) and point the key at it, or set it to null "
                "to train with a randomly initialised VGG (a warning is printed).")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")} or state
        wanted = features.state_dict().keys()
        missing = [k for k in wanted if k not in state]
        if missing:
            raise KeyError(f"{path}: not a torchvision VGG19 state_dict; missing keys {missing[:4]} "
                           f"(expected 'features.<i>.weight' keys)")
        features.load_state_dict({k: state[k] for k in wanted})
    elif not _warned_random:
        _warned_random = True
        warnings.warn("VGGPerceptualLoss: no weights_path given, using a randomly initialised VGG19 (set "
                      "loss.perceptual.weights_path to torchvision's vgg19-dcbb9e9d.pth for the ImageNet loss).",
                      stacklevel=3)
    return features


class VGGPerceptualLoss(nn.Module):
    """`forward(fake (B,3,H,W) in [-1,1], real (B,3,H,W) in [-1,1]) -> scalar`.

    Args:
        weights_path: torchvision VGG19 weights file, or None for random init (one warning per process).
        layer_weights: weight of each relu{i}_1 term; its length (1..5) also truncates the network, which is the
            lever for cheap CPU runs.
        resize: optional side length to which both images are bilinearly resized first (None = as given).
    The VGG is frozen (eval mode, no grads to its parameters); gradients reach `fake` only.
    """

    def __init__(self, weights_path: str | None = None, layer_weights=DEFAULT_LAYER_WEIGHTS,
                 resize: int | None = None):
        super().__init__()
        layer_weights = tuple(float(w) for w in layer_weights)
        if not 1 <= len(layer_weights) <= 5:
            raise ValueError(f"perceptual.layer_weights: expected 1..5 weights, got {len(layer_weights)}")
        self.layer_weights = layer_weights
        self.resize = resize
        features = _load_vgg19_features(weights_path, len(layer_weights))
        ends = (0,) + _VGG19_SLICE_ENDS[: len(layer_weights)]
        self.slices = nn.ModuleList(features[a:b] for a, b in zip(ends[:-1], ends[1:]))
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        # A loss network is never trained: keep it in eval whatever the owner does.
        return super().train(False)

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.resize is not None and x.shape[-1] != self.resize:
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        x = ((x + 1) / 2 - self.mean) / self.std
        out = []
        for s in self.slices:
            x = s(x)
            out.append(x)
        return out

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            real_f = self._features(real)
        fake_f = self._features(fake)
        return sum(w * F.l1_loss(f, r) for w, f, r in zip(self.layer_weights, fake_f, real_f))
