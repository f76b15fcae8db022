"""One torch Dataset per kind of training sample, written once against any `ClipSource` (synthetic or VoxCeleb2).

Each dataset yields one sample (a dict of tensors) per index; the default DataLoader collation stacks them into the
dataset's batch contract (`CONTRACT`, checked by `pdfgc.data.contract.validate_batch`; docs/ARCHITECTURE.md). A
sample is a pure function of `(seed, index)`: every random choice (clip, frames, augmentation) comes from
`numpy.random.default_rng([seed, index])`, so results do not depend on workers, processes or order. Indices are not
bounded by `len(dataset)` (`unbounded = True`): index i >= len draws a fresh sample, so the training sampler
(`pdfgc.train.sampler`) can stream indices forever. Each dataset's options are a dataclass (`Options`), the typed
`stage.dataset` section of the stage that uses it (pdfgc.stages); its defaults are written here only.

Extra keys, when the source knows them: `identity` (int64) and `gt_<factor>` for the frames involved (NaN / -1 =
unknown). Keys per stage:

| stage  | contract keys                                   | extra keys (shapes per sample)                          |
|--------|-------------------------------------------------|---------------------------------------------------------|
| motion | app, drv, drv_aug                               | gt_* of drv, identity, clip, frame_idx (2,) [app, drv]  |
| lip    | frames (N,3,S,S), mel (N,1,80,20)               | gt_* (N, ...), identity, clip, frame_idx (N,)           |
| pose   | frames (3,S,S), pose (6,)                       | gt_* of the frame, identity, clip, frame_idx (1,)       |
| eye    | anchor, positive, negative, eye_open, gaze      | gt_* of P, gt_neg_*, paste_box, frame_idx [A, P, N]    |
| emo    | app, frames (K,3,S,S), mel (K,1,80,20)          | gt_* (K, ...), identity, clip, frame_idx (K,)           |
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum

import numpy as np
import torch
from torch.utils.data import Dataset

from pdfgc.data.audio import mel_windows
from pdfgc.data.augment import DrivingAugment, paste, soft_box_mask
from pdfgc.data.contract import IMAGE, MEL
from pdfgc.data.sources import ClipSource, audio_frame_range

# the eye box of the PC-AVS template (SPEC 1.3: eyes at (87,59), (137,59) on 224) with margins, used when a
# source does not know the eye box of a frame
TEMPLATE_EYE_BOX = (0.30, 0.19, 0.70, 0.35)
GT_KEYS = ("pose", "eye_open", "gaze", "emotion", "emotion_intensity", "mouth", "eye_box", "mouth_box")


def to_tensor_images(frames: np.ndarray) -> torch.Tensor:
    """uint8 `(..., H, W, 3)` -> float32 `(..., 3, H, W)` in [-1, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(frames)).float().div_(127.5).sub_(1.0)
    return t.movedim(-1, -3).contiguous()


def choose_offsets(rng: np.random.Generator, lo: int, hi: int, n: int, min_gap: int = 1) -> np.ndarray:
    """`n` distinct sorted integers in `[lo, hi)` with consecutive values at least `min_gap` apart (uniform over
    all such sets). `min_gap` is lowered (down to 1) when the range is too short for it."""
    span = hi - lo
    if n > span:
        raise ValueError(f"choose_offsets: cannot pick {n} distinct frames from [{lo}, {hi}) ({span} frames); "
                         "use longer clips or fewer offsets (data.num_offsets)")
    gap = max(1, int(min_gap))
    while gap > 1 and span - (n - 1) * (gap - 1) < n:
        gap -= 1
    free = span - (n - 1) * (gap - 1)
    base = np.sort(rng.choice(free, size=n, replace=False))
    return lo + base + np.arange(n) * (gap - 1)


class StageDataset(Dataset):
    """Base: holds the source, epoch length, seed and image size; subclasses implement `sample(rng, index)`.

    Args:
        source: any `ClipSource`.
        length: nominal length (samples per epoch); indices >= length are valid too (`unbounded`).
        seed: sample seed; sample `index` uses `default_rng([seed, index])`.
        image_size: expected S (must equal `source.image_size`; None = take the source's).
        options: an instance of the subclass's `Options` (None = defaults); `overrides` replace single fields.
    """

    stage = ""       # the sample kind, named in error messages
    CONTRACT: dict[str, tuple] = {}   # required batch keys -> shape templates (pdfgc.data.contract)
    Options: type = type(None)        # the dataclass of this dataset's options
    unbounded = True                  # index >= len(self) is valid (a fresh sample)

    def __init__(self, source: ClipSource, length: int = 10_000, seed: int = 0, image_size: int | None = None,
                 options=None, **overrides):
        if options is None:
            options = self.Options()
        elif isinstance(options, dict):
            options = self.Options(**options)
        self.options = replace(options, **overrides)
        if len(source) == 0:
            raise ValueError(f"{type(self).__name__}: the source {type(source).__name__} holds no clips")
        if image_size is not None and int(source.image_size) != int(image_size):
            raise ValueError(f"{type(self).__name__}: source image_size is {source.image_size} but the model expects "
                             f"{image_size}; pass image_size={image_size} to the source (data.*_source.image_size)")
        self.source = source
        self.length = int(length)
        self.seed = int(seed)
        self.image_size = int(source.image_size)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        if index < 0:
            raise IndexError(f"{type(self).__name__}: negative index {index}")
        rng = np.random.default_rng([self.seed, int(index)])
        return self.sample(rng, int(index))

    def sample(self, rng: np.random.Generator, index: int) -> dict:
        raise NotImplementedError

    # ---- helpers ----
    def _clip(self, rng: np.random.Generator, min_frames: int = 1, need_audio: bool = False) -> tuple[int, int, int]:
        """A random clip with at least `min_frames` usable frames; returns (clip, lo, hi) of its usable range
        (`[lo, hi)` = frames with a complete mel window when `need_audio`)."""
        for _ in range(64):
            i = int(rng.integers(len(self.source)))
            n = self.source.num_frames(i)
            lo, hi = audio_frame_range(n, self.source.mel(i).shape[0]) if need_audio else (0, n)
            if hi - lo >= min_frames:
                return i, lo, hi
        raise ValueError(f"{type(self).__name__}: no clip of {type(self.source).__name__} with >= {min_frames} usable "
                         f"frames{' (with audio windows)' if need_audio else ''} after 64 draws; use longer clips")

    def _extras(self, i: int, idx, prefix: str = "gt_", keys=GT_KEYS, squeeze: bool = False) -> dict:
        f = self.source.factors(i, idx)
        out = {}
        for k in keys:
            v = np.asarray(f[k])
            out[prefix + k] = torch.from_numpy(np.array(v[0] if squeeze else v))  # np.array keeps 0-d shapes
        return out

    def _common(self, i: int, idx) -> dict:
        return {"identity": torch.tensor(self.source.identity(i), dtype=torch.int64),
                "clip": torch.tensor(i, dtype=torch.int64),
                "frame_idx": torch.as_tensor(np.asarray(idx, dtype=np.int64))}


class AppearanceFrom(str, Enum):
    clip = "clip"            # another frame of the driving clip (the reference's sampling)
    identity = "identity"    # a frame of any clip of the same identity (its layout is not the driver's)


@dataclass
class MotionOptions:
    augment: DrivingAugment = field(default_factory=DrivingAugment)  # driving-frame augmentation (SPEC 4.2)
    app_from: AppearanceFrom = AppearanceFrom.clip   # where the appearance frame comes from


class MotionDataset(StageDataset):
    """Stage 1: `app` and `drv` are two different frames of one clip; `drv_aug` is `drv` colour-jittered and
    perspective-warped (`augment`), the motion encoder's input; the generator must reconstruct `drv`."""

    stage = "motion"
    CONTRACT = {"app": IMAGE, "drv": IMAGE, "drv_aug": IMAGE}
    Options = MotionOptions

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        aug = self.options.augment
        self.augment = aug if isinstance(aug, DrivingAugment) else DrivingAugment(**dict(aug))
        self._by_identity: dict[int, list[int]] | None = None  # identity -> its clips, built on first use

    def _clips_of_identity(self, i: int) -> list[int]:
        if self._by_identity is None:
            by: dict[int, list[int]] = {}
            for c in range(len(self.source)):
                by.setdefault(int(self.source.identity(c)), []).append(c)
            self._by_identity = by
        return self._by_identity[int(self.source.identity(i))]

    def sample(self, rng, index):
        i, lo, hi = self._clip(rng, 2)
        a, d = (int(v) for v in rng.choice(np.arange(lo, hi), size=2, replace=False))
        j = i  # the appearance frame's clip
        if AppearanceFrom(self.options.app_from) is AppearanceFrom.identity:
            j = int(rng.choice(self._clips_of_identity(i)))
            if j != i:
                a = int(rng.integers(self.source.num_frames(j)))
        if j == i:
            app, drv = to_tensor_images(self.source.frames(i, [a, d]))
        else:
            app = to_tensor_images(self.source.frames(j, [a]))[0]
            drv = to_tensor_images(self.source.frames(i, [d]))[0]
        out = {"app": app, "drv": drv, "drv_aug": self.augment(drv, rng)}
        out.update(self._extras(i, [d], squeeze=True))
        out.update(self._common(i, [a, d]))
        return out


@dataclass
class LipOptions:
    num_offsets: int = 5   # N frames per clip at distinct offsets
    min_gap: int = 5       # frames between offsets when the clip allows


class LipDataset(StageDataset):
    """Stage 2a: N frames of one clip at distinct offsets (at least `min_gap` frames apart when the clip allows)
    with their synchronised 20-mel windows. Other offsets and other clips of the batch are the negatives."""

    stage = "lip"
    CONTRACT = {"frames": ("B", "N", 3, "S", "S"), "mel": ("B", "N", *MEL)}
    Options = LipOptions

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.num_offsets = int(self.options.num_offsets)
        self.min_gap = int(self.options.min_gap)

    def sample(self, rng, index):
        i, lo, hi = self._clip(rng, self.num_offsets, need_audio=True)
        idx = choose_offsets(rng, lo, hi, self.num_offsets, self.min_gap)
        out = {"frames": to_tensor_images(self.source.frames(i, idx)),
               "mel": torch.from_numpy(mel_windows(self.source.mel(i), idx))}
        out.update(self._extras(i, idx))
        out.update(self._common(i, idx))
        return out


@dataclass
class PoseOptions:
    pass


class PoseDataset(StageDataset):
    """Stage 2b: one frame and its 6-d head pose (yaw, pitch, roll [rad], tx, ty, tz)."""

    stage = "pose"
    CONTRACT = {"frames": IMAGE, "pose": ("B", 6)}
    Options = PoseOptions

    def sample(self, rng, index):
        i, lo, hi = self._clip(rng, 1)
        f = int(rng.integers(lo, hi))
        out = {"frames": to_tensor_images(self.source.frames(i, [f]))[0]}
        ex = self._extras(i, [f], squeeze=True)
        out["pose"] = ex["gt_pose"].clone()
        out.update(ex)
        out.update(self._common(i, [f]))
        return out


@dataclass
class EyeOptions:
    feather: float = 0.04             # soft edge of the pasted eye region (fraction of the image size)
    box_margin: float = 0.02          # margin around the union of both frames' eye boxes (fraction)
    negative_candidates: int = 4      # negative = the frame (of this many) whose eyes differ most from P


class EyeDataset(StageDataset):
    """Stage 2c: triplets of one clip. anchor = frame A with the eye region of frame P pasted in (soft edges,
    `feather` x S pixels; region = union of both frames' eye boxes, or the template eye box when unknown);
    positive = P; negative = another frame N: of `negative_candidates` random frames, the one whose eye state
    (openness + gaze) differs most from P's when the source knows it (else the first). `eye_open` / `gaze` are
    P's (NaN when unknown)."""

    stage = "eye"
    CONTRACT = {"anchor": IMAGE, "positive": IMAGE, "negative": IMAGE, "eye_open": ("B", 2), "gaze": ("B", 2)}
    Options = EyeOptions

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.feather = float(self.options.feather)
        self.box_margin = float(self.options.box_margin)
        self.negative_candidates = max(1, int(self.options.negative_candidates))

    def sample(self, rng, index):
        i, lo, hi = self._clip(rng, 3)
        k = min(hi - lo, 2 + self.negative_candidates)
        picks = [int(v) for v in rng.choice(np.arange(lo, hi), size=k, replace=False)]
        a, p, cands = picks[0], picks[1], picks[2:]
        n = cands[0]
        if len(cands) > 1:
            # the candidate whose eye state (openness, gaze) differs most from P's, when the source knows it
            f = self.source.factors(i, [p] + cands)
            state = np.concatenate([np.asarray(f["eye_open"], np.float64), np.asarray(f["gaze"], np.float64)], 1)
            dist = np.abs(state[1:] - state[:1]).sum(1)
            if np.isfinite(dist).any():
                n = cands[int(np.nanargmax(np.where(np.isfinite(dist), dist, -np.inf)))]
        fr = self.source.frames(i, [a, p, n])
        fac = self.source.factors(i, [a, p, n])
        boxes = np.asarray(fac["eye_box"], dtype=np.float64)[:2]
        if np.isfinite(boxes).all():
            box = np.array([boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max()])
        else:
            box = np.array(TEMPLATE_EYE_BOX)
        box = np.clip(box + np.array([-1, -1, 1, 1]) * self.box_margin, 0, 1)
        s = self.image_size
        mask = soft_box_mask(s, box, self.feather * s)
        anchor = paste(fr[0], fr[1], mask)
        img = to_tensor_images(np.stack([anchor, fr[1], fr[2]]))
        out = {"anchor": img[0], "positive": img[1], "negative": img[2],
               "eye_open": torch.from_numpy(np.asarray(fac["eye_open"][1], np.float32)),
               "gaze": torch.from_numpy(np.asarray(fac["gaze"][1], np.float32)),
               "paste_box": torch.from_numpy(box.astype(np.float32))}
        out.update({"gt_" + k: torch.from_numpy(np.array(np.asarray(fac[k])[1])) for k in GT_KEYS})
        out["gt_neg_eye_open"] = torch.from_numpy(np.asarray(fac["eye_open"][2], np.float32))
        out["gt_neg_gaze"] = torch.from_numpy(np.asarray(fac["gaze"][2], np.float32))
        out["gt_anchor_eye_open"] = torch.from_numpy(np.asarray(fac["eye_open"][0], np.float32))
        out.update(self._common(i, [a, p, n]))
        return out


@dataclass
class EmoOptions:
    window: int = 5   # K consecutive frames; the centre K//2 is the target


class EmoDataset(StageDataset):
    """Stage 3: K consecutive frames (centre K//2 is the reconstruction target) with their mel windows, plus an
    appearance frame `app` of the same clip drawn outside the window when the clip is long enough."""

    stage = "emo"
    CONTRACT = {"app": IMAGE, "frames": ("B", "K", 3, "S", "S"), "mel": ("B", "K", *MEL)}
    Options = EmoOptions

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.window = int(self.options.window)

    def sample(self, rng, index):
        k = self.window
        i, lo, hi = self._clip(rng, k, need_audio=True)
        start = int(rng.integers(lo, hi - k + 1))
        idx = np.arange(start, start + k)
        n = self.source.num_frames(i)
        outside = np.setdiff1d(np.arange(n), idx)
        app = int(rng.choice(outside)) if len(outside) else int(idx[k // 2])
        fr = to_tensor_images(self.source.frames(i, np.concatenate([[app], idx])))
        out = {"app": fr[0], "frames": fr[1:], "mel": torch.from_numpy(mel_windows(self.source.mel(i), idx))}
        out.update(self._extras(i, idx))
        out.update(self._common(i, idx))
        out["app_idx"] = torch.tensor(app, dtype=torch.int64)
        return out
