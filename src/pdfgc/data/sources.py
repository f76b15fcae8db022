"""The `ClipSource` protocol: what every stage dataset needs from a collection of talking-face clips.

Both the procedural source (`pdfgc.data.synthetic.SyntheticSource`) and the VoxCeleb2 shard reader
(`pdfgc.data.vox2.Vox2Source`) implement it, so the per-stage datasets of `pdfgc.data.stage_datasets` are written
once. A clip is a 25 fps video of aligned face crops plus its audio, already turned into the reference mel
spectrogram (`pdfgc.data.audio`, SPEC 1.4).

Conventions (docs/ARCHITECTURE.md):
    frames   uint8 (n, S, S, 3) RGB aligned crops, S = `image_size`
    mel      float32 (T_mel, 80) in [0, 1], time-major; 4 mel frames per video frame
    factors  dict of per-frame arrays with leading axis n (keys and shapes in `FACTOR_SPECS`); unknown values are
             NaN (floats) or -1 (emotion class)

This module also holds small helpers shared by every source: empty factor dicts, the frames that own a complete
audio window, a deterministic identity split and a subset view.
"""
from __future__ import annotations

import hashlib
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from pdfgc.constants import FRAME_OFFSET, MEL_PER_FRAME, MEL_WINDOW, N_MELS


@runtime_checkable
class ClipSource(Protocol):
    """A finite collection of clips (see module docstring for array conventions)."""

    image_size: int

    def __len__(self) -> int:
        """Number of clips."""
        ...

    def num_frames(self, i: int) -> int:
        """Number of video frames (25 fps) of clip `i`."""
        ...

    def identity(self, i: int) -> int:
        """Identity label of clip `i` (train/test splits are by identity)."""
        ...

    def frames(self, i: int, idx: Sequence[int]) -> np.ndarray:
        """uint8 `(len(idx), S, S, 3)` RGB frames `idx` of clip `i`."""
        ...

    def mel(self, i: int) -> np.ndarray:
        """float32 `(T_mel, 80)` mel spectrogram of the whole clip `i` (SPEC 1.4)."""
        ...

    def factors(self, i: int, idx: Sequence[int]) -> dict[str, np.ndarray]:
        """Per-frame factors of frames `idx` of clip `i`; keys of `FACTOR_SPECS`, leading axis `len(idx)`."""
        ...


# key -> (per-frame shape, dtype, unknown value). Units: pose = yaw, pitch, roll [rad], tx, ty, tz [face-size
# units]; eye_open in [0,1] (1 open); gaze in [-1,1]; mouth = opening, width (source-defined normalised units);
# boxes = x0, y0, x1, y1 in [0,1] image coordinates (eye_box holds both eyes).
FACTOR_SPECS: dict[str, tuple[tuple[int, ...], type, float]] = {
    "pose": ((6,), np.float32, np.nan),
    "eye_open": ((2,), np.float32, np.nan),
    "gaze": ((2,), np.float32, np.nan),
    "emotion": ((), np.int64, -1),
    "emotion_intensity": ((), np.float32, np.nan),
    "mouth": ((2,), np.float32, np.nan),
    "eye_box": ((4,), np.float32, np.nan),
    "mouth_box": ((4,), np.float32, np.nan),
}
FACTOR_KEYS = tuple(FACTOR_SPECS)


def empty_factors(n: int) -> dict[str, np.ndarray]:
    """Factor dict for `n` frames with every value "unknown" (NaN, or -1 for the emotion class)."""
    return {k: np.full((n, *shape), fill, dtype=dt) for k, (shape, dt, fill) in FACTOR_SPECS.items()}


def check_factors(factors: dict, n: int, where: str = "factors") -> None:
    """Raise ValueError unless `factors` holds every key of `FACTOR_SPECS` with shape `(n, *shape)`."""
    for k, (shape, _dt, _fill) in FACTOR_SPECS.items():
        if k not in factors:
            raise ValueError(f"{where}: missing factor key '{k}' (expected keys {list(FACTOR_KEYS)}); "
                             "fill unknown factors with pdfgc.data.sources.empty_factors")
        got = tuple(np.shape(factors[k]))
        if got != (n, *shape):
            raise ValueError(f"{where}: factor '{k}' has shape {got}, expected {(n, *shape)}")


def audio_frame_range(num_frames: int, t_mel: int) -> tuple[int, int]:
    """Video frames `[lo, hi)` of a clip that own a complete 20-mel window (SPEC 1.4).

    Frame f uses mel rows `[(f-2)*4, (f-2)*4 + 20)`, valid for `2 <= f <= T_mel//4 - 3`, and must also exist in the
    video (`f < num_frames`). Returns `(2, min(num_frames, T_mel//4 - 2))`; empty (`hi <= lo`) for too-short clips.
    """
    # (f-2)*4 + 20 <= 4*(T_mel//4)  <=>  f <= T_mel//4 - 3, so the exclusive end is T_mel//4 - 2
    hi_audio = t_mel // MEL_PER_FRAME - (MEL_WINDOW // MEL_PER_FRAME - FRAME_OFFSET) + 1
    return FRAME_OFFSET, max(FRAME_OFFSET, min(num_frames, hi_audio))


def identity_is_test(identity: int, test_fraction: float, salt: str = "pdfgc") -> bool:
    """Deterministic, order-free identity split: True if `identity` belongs to the test split.

    A hash of (salt, identity) is compared with `test_fraction`, so the split is stable across processes,
    machines and source sizes (adding identities never moves existing ones).
    """
    h = hashlib.blake2b(f"{salt}:{int(identity)}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2.0 ** 64 < float(test_fraction)


class SubsetSource:
    """A view of clips `indices` of another `ClipSource` (e.g. one split); behaves as a ClipSource."""

    def __init__(self, source: ClipSource, indices: Sequence[int]):
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)
        self.image_size = source.image_size
        if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= len(source)):
            raise IndexError(f"SubsetSource: indices must lie in [0, {len(source)}), got "
                             f"[{self.indices.min()}, {self.indices.max()}]")

    def __len__(self) -> int:
        return len(self.indices)

    def _j(self, i: int) -> int:
        return int(self.indices[i])

    def num_frames(self, i: int) -> int:
        return self.source.num_frames(self._j(i))

    def identity(self, i: int) -> int:
        return self.source.identity(self._j(i))

    def frames(self, i: int, idx: Sequence[int]) -> np.ndarray:
        return self.source.frames(self._j(i), idx)

    def mel(self, i: int) -> np.ndarray:
        return self.source.mel(self._j(i))

    def factors(self, i: int, idx: Sequence[int]) -> dict[str, np.ndarray]:
        return self.source.factors(self._j(i), idx)


def check_source(source: ClipSource, clip: int = 0, name: str | None = None) -> None:
    """Cheap conformance check of one clip of `source`; raises TypeError/ValueError naming what is wrong."""
    name = name or type(source).__name__
    for attr in ("image_size", "__len__", "num_frames", "identity", "frames", "mel", "factors"):
        if not hasattr(source, attr):
            raise TypeError(f"{name}: not a ClipSource, missing '{attr}' (see pdfgc.data.sources.ClipSource)")
    if len(source) == 0:
        raise ValueError(f"{name}: holds no clips")
    s = int(source.image_size)
    n = source.num_frames(clip)
    idx = [0, n - 1] if n > 1 else [0]
    fr = source.frames(clip, idx)
    if fr.dtype != np.uint8 or fr.shape != (len(idx), s, s, 3):
        raise ValueError(f"{name}.frames({clip}, {idx}): expected uint8 {(len(idx), s, s, 3)}, "
                         f"got {fr.dtype} {fr.shape}")
    mel = source.mel(clip)
    if mel.dtype != np.float32 or mel.ndim != 2 or mel.shape[1] != N_MELS:
        raise ValueError(f"{name}.mel({clip}): expected float32 (T_mel, {N_MELS}), got {mel.dtype} {mel.shape}")
    check_factors(source.factors(clip, idx), len(idx), where=f"{name}.factors({clip}, {idx})")
