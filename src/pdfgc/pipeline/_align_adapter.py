"""The pipeline's bridge to the shared data code: audio features (`pdfgc.data.audio`), landmarks
(`pdfgc.data.landmarks`) and PC-AVS alignment (`pdfgc.data.align`). Errors become `PipelineError`s."""
from __future__ import annotations

import functools
import warnings

import numpy as np
import torch

from pdfgc.constants import IMAGE_SIZE
from pdfgc.pipeline.errors import PipelineError


def ref_preprocess(frames: np.ndarray, size: int = IMAGE_SIZE) -> torch.Tensor:
    """uint8 aligned crops (T,H,W,3) -> float32 tensor (T,3,size,size) in [-1,1] (SPEC 1.3 steps 2-5)."""
    from pdfgc.data.align import ref_preprocess as _ref

    return torch.from_numpy(np.ascontiguousarray(_ref(np.asarray(frames), size=size)))


def mel_windows(wav: np.ndarray, need_speech: bool, name: str = "audio") -> torch.Tensor:
    """16 kHz samples -> (N,1,80,20) mel windows, N = T_mel//4 - 4 (SPEC 1.4).

    Audio too short for one frame is an error; silent audio is an error when the mouth control is on (the lips
    would follow amplified noise) and a warning otherwise.
    """
    from pdfgc.data import audio as A

    need = A.min_samples_for_frames(1)
    if len(wav) < need:
        raise PipelineError(f"audio: {name} is too short: {len(wav)} samples ({len(wav) / A.SAMPLE_RATE:.3f} s) at "
                            f"16 kHz; at least {need} samples ({need / A.SAMPLE_RATE:.2f} s) give one video frame "
                            "(T seconds give 25*T - 3 frames); give a longer recording")
    rms = float(np.sqrt(np.mean(np.asarray(wav, np.float64) ** 2)))
    if rms < A.SILENCE_RMS:
        msg = (f"audio: {name} is silent (RMS {rms:.1e} < {A.SILENCE_RMS:.0e}): the mouth would follow amplified "
               "noise. Give a speech recording, or switch the mouth control off (controls without mouth)")
        if need_speech:
            raise PipelineError(msg)
        warnings.warn(msg, UserWarning, stacklevel=2)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", A.SilentAudioWarning)  # already reported above
            mel = A.melspectrogram(np.asarray(wav, np.float32), name=name)
    except A.AudioError as e:
        raise PipelineError(f"audio: {e}") from e
    return torch.from_numpy(np.ascontiguousarray(A.mel_windows(mel)))


@functools.lru_cache(maxsize=4)
def landmark_backend(backend: str, weights=None):
    """A cached landmark backend ("dlib" offline, or "face_alignment" with weights from `weights` or the torch
    cache); a missing model is a PipelineError that says where to get it."""
    from pdfgc.data import landmarks as L

    kwargs = {}
    if weights is not None:
        kwargs["predictor_path" if backend == "dlib" else "weights_dir"] = str(weights)
    try:
        return L.get_backend(backend, **kwargs)
    except (ValueError, FileNotFoundError, ImportError) as e:
        raise PipelineError(f"landmarks={backend}: {e} [infer.py: pass landmark_weights=DIR, or landmarks=dlib; "
                            "or give aligned 224x224 crops]") from e


VIDEO_MAX_MISSING = 0.2  # fraction of a driver's frames that may lack a face (interpolated over)


def align(frames: np.ndarray, sequence: bool, backend: str, weights=None, name: str = "input",
          return_matrices: bool = False):
    """Raw uint8 frames (T,H,W,3) -> aligned uint8 crops (T,224,224,3) (SPEC 1.3); with `return_matrices` also the
    float64 (T,2,3) maps raw pixel -> aligned pixel (what paste-back inverts).

    Photos (sequence=False): exactly one face per image, one transform per image. Videos / frame folders: the face
    is tracked (the largest face when several are seen, up to 20% of frames without a face are interpolated) and
    one video-averaged transform plus the smoothed mouth bias is used, as PC-AVS does.
    """
    from pdfgc.data import align as AL
    from pdfgc.data import landmarks as L

    det = landmark_backend(backend, weights)
    try:
        if sequence and len(frames) > 1:
            try:
                lm, _ = L.track_video(det, frames, multiple="largest", max_missing=VIDEO_MAX_MISSING, name=name)
            except L.NoFaceError as e:  # the library's advice names preprocess's --max-missing: infer has none
                raise PipelineError(str(e).split("; raise max_missing")[0] + "; infer.py interpolates over at "
                                    f"most {VIDEO_MAX_MISSING:.0%} of a driver's frames: cut the video to the part "
                                    "where the face is visible, or give aligned 224x224 crops (aligned=true)") from e
            r = AL.align_video(frames, lm)
            return (r.frames, r.matrices) if return_matrices else r.frames
        out, mats = [], []
        for t, f in enumerate(frames):
            lm = L.detect_one(det, f, multiple="error", name=name if len(frames) == 1 else f"{name} frame {t}")
            r = AL.align_image(f, lm)
            out.append(r.frames)
            mats.append(r.matrices)
        return (np.concatenate(out), np.concatenate(mats)) if return_matrices else np.concatenate(out)
    except L.MultipleFacesError as e:
        raise PipelineError(f"{e}".split("; crop")[0] + "; crop the image to one person, or pass an aligned "
                            "224x224 crop of that face") from e
    except (L.LandmarkError, AL.AlignmentError) as e:
        raise PipelineError(str(e)) from e


# how far (pixels on the 224 canvas) the eye and mouth centres of a square input may lie from ALIGN_TEMPLATE for
# aligned=auto to take it as an already aligned crop (PC-AVS crops pin the mouth exactly and the eyes within a few
# pixels; a raw photo whose face happens to sit there is aligned already, so it needs no alignment either)
TEMPLATE_TOLERANCE = 8.0


def looks_aligned(frames: np.ndarray, backend: str, weights=None) -> bool:
    """aligned=auto's rule: 224x224 frames are aligned crops (the reference's convention); other SQUARE frames
    (e.g. the reference's pre-cropped 256x256 example drivers) are aligned crops when the landmarks of their first,
    middle and last frames, scaled to the 224 canvas, put both eye centres and the inner-mouth centre within
    `TEMPLATE_TOLERANCE` pixels of the template. Anything else is aligned."""
    from pdfgc.constants import ALIGN_TEMPLATE
    from pdfgc.data import align as AL
    from pdfgc.data import landmarks as L

    h, w = frames.shape[1:3]
    if (h, w) == (IMAGE_SIZE, IMAGE_SIZE):
        return True
    if h != w:
        return False
    det = landmark_backend(backend, weights)
    for t in sorted({0, len(frames) // 2, len(frames) - 1}):
        try:
            lm = L.detect_one(det, frames[t], multiple="largest")
        except (L.LandmarkError, ValueError):
            return False  # no face: not an aligned crop (alignment then reports the problem)
        pts = AL.three_points(lm) * (IMAGE_SIZE / w)
        if np.abs(pts - np.asarray(ALIGN_TEMPLATE)).max() > TEMPLATE_TOLERANCE:
            return False
    return True
