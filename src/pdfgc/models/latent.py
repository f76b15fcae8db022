"""Style-vector assembly (SPEC 1.8) and the six control flags (SPEC 1.7)."""
from __future__ import annotations

from typing import Iterable

import torch

from pdfgc.constants import BLINK_DIMS, CONTROLS, EYE_DIM, GAZE_DIMS


def assemble_style(f_app: torch.Tensor, lip: torch.Tensor, emo: torch.Tensor, eye: torch.Tensor,
                   pose: torch.Tensor) -> torch.Tensor:
    """Concatenate in the reference order [f_app | lip | emo | eye | pose] -> (B, app + lip + emo + eye + pose)
    (2048 + 500 + 30 + 6 + 6 = 2590 for the released model). f_app (1, app) is broadcast to the batch."""
    b = max(t.shape[0] for t in (f_app, lip, emo, eye, pose))
    parts = [t.expand(b, -1) if t.shape[0] == 1 and b > 1 else t for t in (f_app, lip, emo, eye, pose)]
    return torch.cat(parts, dim=1)


def normalize_controls(controls: Iterable[str] | str | None) -> frozenset[str]:
    """Validate control names; "all" expands to every control. Returns the set of enabled controls."""
    if controls is None:
        return frozenset()
    if isinstance(controls, str):
        controls = [controls]
    out = set()
    for c in controls:
        if c == "all":
            out.update(CONTROLS)
        elif c in CONTROLS:
            out.add(c)
        else:
            raise ValueError(f"unknown control {c!r}: expected some of {CONTROLS + ('all',)}")
    return frozenset(out)


def eye_mask(controls: Iterable[str] | str | None, eye_dim: int = EYE_DIM) -> torch.Tensor:
    """(eye_dim,) float multiplier of the eye code: blink off zeroes the blink dims (keeps GAZE_DIMS), gaze off
    zeroes GAZE_DIMS (keeps BLINK_DIMS), both off zeroes everything (SPEC 1.7)."""
    on = normalize_controls(controls)
    m = torch.ones(eye_dim)
    if "blink" not in on:
        keep = torch.zeros(eye_dim)
        keep[list(GAZE_DIMS)] = 1.0
        m = m * keep
    if "gaze" not in on:
        keep = torch.zeros(eye_dim)
        keep[list(BLINK_DIMS)] = 1.0
        m = m * keep
    return m


def apply_controls(lip: torch.Tensor, emo: torch.Tensor, eye: torch.Tensor, pose: torch.Tensor,
                   controls: Iterable[str] | str | None):
    """Return (lip, emo, eye, pose) with the codes of disabled controls replaced as the reference does:
    mouth off -> lip 0; emo off -> emo 0; headpose off -> pose 0; blink/gaze off -> eye * eye_mask."""
    on = normalize_controls(controls)
    lip = lip if "mouth" in on else torch.zeros_like(lip)
    emo = emo if "emo" in on else torch.zeros_like(emo)
    pose = pose if "headpose" in on else torch.zeros_like(pose)
    eye = eye * eye_mask(on, eye.shape[-1]).to(eye)
    return lip, emo, eye, pose
