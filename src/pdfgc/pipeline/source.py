"""The source of a run: what the appearance is taken from and, for paste-back, the frames it came from.

    photo (raw)         one aligned crop + the photo + its alignment matrix  -> output pasted into the photo
    aligned crop        one crop, no frame (224x224 inputs under aligned=auto, anything under aligned=true)
    video file (raw)    dubbing: every frame aligned (one video-averaged transform + per-frame mouth bias, SPEC 1.3),
                        the frames and matrices kept -> output frame i is pasted into video frame i mod T
    array               uint8 (H,W,3) or (T,H,W,3): its first frame, as a photo

Reading and the aligned-or-not rule are `pdfgc.pipeline.inputs`'; this module only keeps what paste-back needs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pdfgc.constants import FPS
from pdfgc.data.video import VIDEO_EXTENSIONS, MediaError
from pdfgc.pipeline.errors import PipelineError


@dataclass
class Source:
    """crops: uint8 (T, 224, 224, 3) aligned crops (T = 1 unless a video is dubbed);
    frames: uint8 (T, H, W, 3) the raw frames the crops were aligned from, or None (the input was already a crop);
    matrices: float64 (T, 2, 3) raw pixel -> aligned pixel, or None; video: a video to dub."""

    crops: np.ndarray
    frames: np.ndarray | None = None
    matrices: np.ndarray | None = None
    video: bool = False

    @property
    def can_paste(self) -> bool:
        return self.frames is not None and self.matrices is not None


def is_video_path(x) -> bool:
    return isinstance(x, (str, os.PathLike)) and Path(x).suffix.lower() in VIDEO_EXTENSIONS and not Path(x).is_dir()


def load(source, *, aligned: str, landmarks: str, landmark_weights, max_frames: int | None = None) -> Source:
    """Read the source (module doc). `max_frames` bounds the frames of a dubbed video that are decoded and aligned
    (the output needs at most N of them)."""
    from pdfgc.pipeline import _align_adapter, inputs

    read = dict(aligned=aligned, landmarks=landmarks, landmark_weights=landmark_weights)
    label = f"source {source}" if isinstance(source, (str, os.PathLike)) else "source"
    if is_video_path(source):
        from pdfgc.data.video import read_frames

        path = Path(source)
        if not path.is_file():
            raise PipelineError(f"source: {path} does not exist (expected a photo, a video or an aligned crop)")
        try:
            frames, _ = read_frames(path, fps=FPS, max_frames=max_frames)
        except MediaError as e:
            raise PipelineError(f"source: {e}") from e
        if inputs_passthrough(frames, aligned, landmarks, landmark_weights):
            return Source(inputs.prepare_frames(frames, label, True, **read), video=True)
        crops, mats = _align_adapter.align(frames, sequence=True, backend=landmarks, weights=landmark_weights,
                                           name=label, return_matrices=True)
        return Source(crops, frames, mats, video=True)
    if isinstance(source, (str, os.PathLike)) and Path(source).is_file():
        frame = inputs.read_image(source)
    elif isinstance(source, (str, os.PathLike)):
        return Source(inputs.load_source(source, **read)[None])  # inputs reports what is wrong with it
    else:
        arr = np.asarray(source)
        if arr.ndim == 4 and arr.dtype == np.uint8 and len(arr):
            arr = arr[0]
        if arr.ndim != 3 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
            return Source(inputs.load_source(source, **read)[None])  # reports the bad array
        frame = arr
    if inputs_passthrough(frame[None], aligned, landmarks, landmark_weights):
        return Source(inputs.prepare_frames(frame[None], label, False, **read))
    crops, mats = _align_adapter.align(frame[None], sequence=False, backend=landmarks, weights=landmark_weights,
                                       name=label, return_matrices=True)
    return Source(crops, frame[None], mats)


def inputs_passthrough(frames: np.ndarray, aligned: str, landmarks: str, landmark_weights) -> bool:
    """Whether `inputs.prepare_frames` takes these frames as aligned crops (no alignment, so no paste-back)."""
    from pdfgc.pipeline import inputs

    if aligned in ("true", "false"):
        return aligned == "true"
    return inputs.is_aligned_crop(frames, landmarks, landmark_weights)
