"""Control parsing, driver looping and the reference's temporal post-processing (SPEC 1.5-1.7).

Everything here works on per-frame code sequences `(N, D)` (N output frames, D code dims) and is pure tensor math,
so it can be tested against hand-computed values without any network.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch

from pdfgc.constants import CONTROLS, EYE_DIM, FRAME_OFFSET
from pdfgc.pipeline.errors import PipelineError

# accepted spellings -> canonical control name (the reference flags are the canonical names, SPEC 1.7)
_ALIASES = {"pose": "headpose", "head": "headpose", "emotion": "emo", "expression": "emo", "exp": "emo",
            "lip": "mouth", "lips": "mouth"}


@dataclass(frozen=True)
class Controls:
    """Which of the five fine-grained controls follow their driver; an off control gets the canonical code."""

    mouth: bool = False
    blink: bool = False
    gaze: bool = False
    emo: bool = False
    headpose: bool = False

    @property
    def needs_audio(self) -> bool:
        """The audio encoder runs only when the lips follow the audio (lip code is zeroed otherwise)."""
        return self.mouth

    @property
    def needs_pose(self) -> bool:
        return self.headpose

    @property
    def needs_exp(self) -> bool:
        return self.emo

    @property
    def needs_eye(self) -> bool:
        # blink off keeps dims 2,3 and gaze off keeps dims 0,1,4,5: both off zero every eye dim
        return self.blink or self.gaze

    def names(self) -> tuple[str, ...]:
        return tuple(c for c in CONTROLS if getattr(self, c))


def parse_controls(controls: str | Iterable[str] | Controls | None) -> Controls:
    """Turn `"all"`, `"mouth,headpose"`, `["mouth", "gaze"]`, `[]`/`None`/`"none"` into `Controls`.

    `all` switches the five controls on (SPEC 1.7 `--all`); an empty list or `none` gives the canonical static face.
    Aliases: pose/head -> headpose, emotion/expression/exp -> emo, lip/lips -> mouth.
    """
    if isinstance(controls, Controls):
        return controls
    if controls is None:
        items: list[str] = []
    elif isinstance(controls, str):
        items = [c for c in controls.replace(";", ",").replace("+", ",").split(",")]
    else:
        items = [str(c) for c in controls]
    on = set()
    for raw in items:
        name = raw.strip().lower()
        if not name or name == "none":
            continue
        if name == "all":
            on.update(CONTROLS)
            continue
        name = _ALIASES.get(name, name)
        if name not in CONTROLS:
            raise PipelineError(f"controls: unknown control {raw!r}; expected any of "
                                f"{', '.join(CONTROLS)}, 'all' or 'none' (e.g. controls=[mouth,headpose])")
        on.add(name)
    return Controls(**{c: (c in on) for c in CONTROLS})


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


def eye_mask(controls: Controls, device=None, dtype=torch.float32) -> torch.Tensor:
    """Per-dim multiplier `(6,)` of the eye code: blink off -> keep only the gaze dims (2, 3), gaze off -> keep
    only the blink dims (0, 1, 4, 5); both off -> zeros (SPEC 1.7). The masks live in `pdfgc.models.latent`."""
    from pdfgc.models.latent import eye_mask as _eye_mask

    return _eye_mask(controls.names(), EYE_DIM).to(device=device, dtype=dtype)


def apply_controls(lip: torch.Tensor, emo: torch.Tensor, eye: torch.Tensor, pose: torch.Tensor,
                   controls: Controls) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Replace the codes of the controls that are off (after scaling/smoothing, SPEC 1.7): mouth/emo/headpose off
    -> zeros; blink/gaze off -> eye code times its mask. Shapes `(N, 500), (N, 30), (N, 6), (N, 6)` unchanged.
    (Delegates to `pdfgc.models.latent.apply_controls`, the one home of the reference's replacement rules.)"""
    from pdfgc.models.latent import apply_controls as _apply

    return _apply(lip, emo, eye, pose, controls.names())
