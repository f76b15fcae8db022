"""Style-vector assembly (SPEC 1.8) and the five fine-grained controls (SPEC 1.7): the one home of the control
rules.

`Controls` is the only representation of "which controls are on". It is built once, where user input enters
(`Controls.parse`: infer.py's settings, `Pipeline.__call__` / `Pipeline.generate`), and passed as such; the functions
that apply the reference's replacement rules (`eye_mask`, `apply_controls`) take a `Controls` and refuse anything
else, so a string can never be re-parsed further down.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Iterable, Union

import torch

from pdfgc.constants import BLINK_DIMS, CONTROLS, GAZE_DIMS
from pdfgc.errors import UserError

# accepted spellings -> canonical control name (the reference flags are the canonical names, SPEC 1.7)
CONTROL_ALIASES = {"pose": "headpose", "head": "headpose", "emotion": "emo", "expression": "emo", "exp": "emo",
                   "lip": "mouth", "lips": "mouth"}


class ControlsError(UserError, ValueError):
    """An unknown control name or a value that is not a list of control names (user input)."""


@dataclass(frozen=True)
class Controls:
    """Which of the five fine-grained controls follow their driver; an off control gets the canonical code.

    Build it with `Controls.parse(user_value)` (or `Controls.all()`, `Controls(mouth=True, ...)`).
    """

    mouth: bool = False     # lips follow the audio (lip code from the audio encoder)
    blink: bool = False     # eye-code dims BLINK_DIMS follow the eye driver
    gaze: bool = False      # eye-code dims GAZE_DIMS follow the eye driver
    emo: bool = False       # emotion code follows the expression driver
    headpose: bool = False  # pose code follows the pose driver

    def __post_init__(self):
        for f in fields(self):
            if not isinstance(getattr(self, f.name), bool):
                raise TypeError(f"Controls.{f.name} must be a bool, got {getattr(self, f.name)!r}")

    @classmethod
    def all(cls) -> "Controls":
        """Every control on (the reference's `--all`)."""
        return cls(**{c: True for c in CONTROLS})

    @classmethod
    def parse(cls, value: "ControlsLike") -> "Controls":
        """The one parser of user input: `"all"`, `"mouth,headpose"`, `["mouth", "gaze"]`, `[]` / `None` / `"none"`
        (the canonical static face) -> `Controls`. A `Controls` is returned as it is.

        Aliases: pose/head -> headpose, emotion/expression/exp -> emo, lip/lips -> mouth. Raises `ControlsError` for
        an unknown name or a value that is neither a string nor a list of strings (e.g. `controls=5`).
        """
        if isinstance(value, cls):
            return value
        if value is None:
            items: list[str] = []
        elif isinstance(value, str):
            items = value.replace(";", ",").replace("+", ",").split(",")
        elif isinstance(value, (list, tuple, set, frozenset)) or _is_list_config(value):
            items = list(value)
            bad = [v for v in items if not isinstance(v, str)]
            if bad:
                raise ControlsError(f"controls: expected control names, got {bad[0]!r} in {list(items)!r}; e.g. "
                                    "controls=[mouth,headpose], controls=[all] or controls=[]")
        else:
            raise ControlsError(f"controls: expected a list of control names, got {value!r} "
                                f"({type(value).__name__}); e.g. controls=[mouth,headpose], controls=[all] or "
                                "controls=[]")
        on = set()
        for raw in items:
            name = raw.strip().lower()
            if not name or name == "none":
                continue
            if name == "all":
                on.update(CONTROLS)
                continue
            name = CONTROL_ALIASES.get(name, name)
            if name not in CONTROLS:
                raise ControlsError(f"controls: unknown control {raw!r}; expected any of {', '.join(CONTROLS)}, "
                                    "'all' or 'none' (e.g. controls=[mouth,headpose])")
            on.add(name)
        return cls(**{c: (c in on) for c in CONTROLS})

    def names(self) -> tuple[str, ...]:
        """Names of the controls that are on, in the reference order (mouth, blink, gaze, emo, headpose)."""
        return tuple(c for c in CONTROLS if getattr(self, c))

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


ControlsLike = Union[Controls, str, Iterable[str], None]


def _is_list_config(value) -> bool:
    # an omegaconf ListConfig (infer.py's settings) without importing omegaconf here
    return type(value).__name__ == "ListConfig"


def _require_controls(controls, where: str) -> Controls:
    if not isinstance(controls, Controls):
        raise TypeError(f"{where}: controls must be a pdfgc Controls (parse user input once, with "
                        f"Controls.parse), got {type(controls).__name__} {controls!r}")
    return controls


def assemble_style(f_app: torch.Tensor, lip: torch.Tensor, emo: torch.Tensor, eye: torch.Tensor,
                   pose: torch.Tensor) -> torch.Tensor:
    """Concatenate in the reference order [f_app | lip | emo | eye | pose] -> (B, app + lip + emo + eye + pose)
    (2048 + 500 + 30 + 6 + 6 = 2590 for the released model). f_app (1, app) is broadcast to the batch."""
    b = max(t.shape[0] for t in (f_app, lip, emo, eye, pose))
    parts = [t.expand(b, -1) if t.shape[0] == 1 and b > 1 else t for t in (f_app, lip, emo, eye, pose)]
    return torch.cat(parts, dim=1)


def eye_mask(controls: Controls, eye_dim: int) -> torch.Tensor:
    """(eye_dim,) float32 multiplier of the eye code: blink off zeroes the blink dims (keeps GAZE_DIMS), gaze off
    zeroes GAZE_DIMS (keeps BLINK_DIMS), both off zeroes everything (SPEC 1.7)."""
    controls = _require_controls(controls, "eye_mask")
    m = torch.ones(eye_dim)
    if not controls.blink:
        keep = torch.zeros(eye_dim)
        keep[list(GAZE_DIMS)] = 1.0
        m = m * keep
    if not controls.gaze:
        keep = torch.zeros(eye_dim)
        keep[list(BLINK_DIMS)] = 1.0
        m = m * keep
    return m


def apply_controls(lip: torch.Tensor, emo: torch.Tensor, eye: torch.Tensor, pose: torch.Tensor,
                   controls: Controls) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Replace the codes of the controls that are off, as the reference does (after scaling and smoothing):
    mouth off -> lip 0; emo off -> emo 0; headpose off -> pose 0; blink/gaze off -> eye * eye_mask.
    Shapes (N, lip), (N, emo), (N, eye), (N, pose) are unchanged."""
    controls = _require_controls(controls, "apply_controls")
    lip = lip if controls.mouth else torch.zeros_like(lip)
    emo = emo if controls.emo else torch.zeros_like(emo)
    pose = pose if controls.headpose else torch.zeros_like(pose)
    eye = eye * eye_mask(controls, eye.shape[-1]).to(eye)
    return lip, emo, eye, pose
