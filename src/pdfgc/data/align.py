"""Face alignment of the reference system (SPEC 1.3), shared by preprocessing and inference.

Two steps turn a raw frame into what the networks see:

1. **PC-AVS alignment** (`align_video`, `align_image`): three points per frame -- the mean of the 68-point landmarks
   36-41 (eye on the image left), 42-47 (eye on the image right) and 60-67 (inner mouth) -- are mapped by one
   least-squares similarity transform (Umeyama; what skimage's `SimilarityTransform.estimate` computes) from the
   *video-average* points onto `ALIGN_TEMPLATE` = (87, 59), (137, 59), (112, 120) on a 224 x 224 canvas. Each frame
   then gets an extra translation that moves its transformed mouth centre onto (112, 120), smoothed over time as
   `bias_t = 0.2 * bias_{t-1} + 0.8 * bias_t` (the first frame unsmoothed), and is warped with `cv2.warpAffine`
   (bilinear, border value 0 = black). A photo is a one-frame video (`align_image`); `mouth_bias=False` gives the
   per-image variant used by Portrait-4D's `estimate_norm_pdfgc` (similarity only).
2. **The reference loader** (`ref_preprocess`): resize to 224 -> crop rows [0, 192), cols [16, 208) -> resize back to
   224 (both bilinear, OpenCV default) -> [-1, 1] float32 CHW. It is applied to every image the reference feeds to
   its encoders, whether or not it was aligned.

Whether an input is already an aligned crop is the caller's decision (an explicit flag), never guessed here.
Coordinates are pixels `(x, y)`; images are uint8 RGB `(H, W, 3)` (any channel order works: only geometry changes).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pdfgc.constants import ALIGN_TEMPLATE, IMAGE_SIZE, REF_CROP
from pdfgc.errors import UserError

# landmark index ranges (68-point iBUG scheme) of the three alignment points
EYE_A = slice(36, 42)  # eye on the image left (the subject's right eye)
EYE_B = slice(42, 48)  # eye on the image right
INNER_MOUTH = slice(60, 68)
BIAS_MEMORY = 0.2  # weight of the previous (smoothed) mouth bias, SPEC 1.3
TEMPLATE = np.asarray(ALIGN_TEMPLATE, dtype=np.float64)  # (3, 2) on the IMAGE_SIZE canvas


class AlignmentError(UserError, ValueError):
    """Landmarks that cannot be aligned (wrong shape, NaN, degenerate points); the message says which."""


@dataclass
class AlignResult:
    """Output of `align_video` / `align_image`.

    frames:    uint8 `(T, size, size, 3)` aligned crops (black where the source had no pixels).
    matrices:  float64 `(T, 2, 3)` per-frame affine maps, source pixel (x, y, 1) -> aligned pixel (x, y).
    landmarks: float64 `(T, 68, 2)` the input landmarks mapped into aligned coordinates.
    points:    float64 `(T, 3, 2)` eye/eye/mouth centres in aligned coordinates (close to the template).
    """

    frames: np.ndarray
    matrices: np.ndarray
    landmarks: np.ndarray
    points: np.ndarray


def three_points(landmarks: np.ndarray) -> np.ndarray:
    """Eye, eye and inner-mouth centres of 68-point landmarks: `(..., 68, 2)` -> `(..., 3, 2)` (pixels)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape[-2:] != (68, 2):
        raise AlignmentError(f"landmarks must have shape (..., 68, 2), got {lm.shape}")
    return np.stack([lm[..., EYE_A, :].mean(-2), lm[..., EYE_B, :].mean(-2), lm[..., INNER_MOUTH, :].mean(-2)], -2)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) mapping `src` onto `dst`.

    Umeyama (1991) closed form, the estimator of skimage's `SimilarityTransform.estimate`.
    Args: src, dst: `(N, 2)` corresponding points, N >= 2, not all equal.
    Returns: float64 `(2, 3)` matrix M with `dst ~= M @ [x, y, 1]`.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise AlignmentError(f"similarity_transform needs two (N>=2, 2) point sets, got {src.shape} and {dst.shape}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise AlignmentError("similarity_transform: points contain NaN or inf")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    var_s = (s0 ** 2).sum() / len(src)
    if var_s <= 1e-12:
        raise AlignmentError("similarity_transform: the source points coincide (degenerate landmarks)")
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # the best orthogonal map would be a reflection: forbid it
        d[-1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = (sig * d).sum() / var_s
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def apply_affine(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map points `(..., 2)` by a `(2, 3)` affine matrix -> `(..., 2)` float64."""
    p = np.asarray(points, dtype=np.float64)
    return p @ m[:, :2].T + m[:, 2]


def _template(size: int) -> np.ndarray:
    # the template is defined on a 224 canvas; other output sizes scale it (224 reproduces SPEC 1.3 exactly)
    return TEMPLATE * (size / IMAGE_SIZE)


def alignment_matrices(landmarks: np.ndarray, size: int = IMAGE_SIZE, mouth_bias: bool = True,
                       bias_memory: float = BIAS_MEMORY) -> np.ndarray:
    """Per-frame PC-AVS alignment matrices of one video (SPEC 1.3), without touching pixels.

    Args:
        landmarks: `(T, 68, 2)` source-pixel landmarks of one face, one entry per frame.
        size: output canvas (224 in the reference).
        mouth_bias: add the smoothed per-frame translation that pins the mouth centre (True in PC-AVS).
        bias_memory: weight of the previous smoothed bias (0.2 in PC-AVS; 0 = no smoothing).
    Returns: float64 `(T, 2, 3)`.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.ndim != 3 or lm.shape[1:] != (68, 2) or len(lm) == 0:
        raise AlignmentError(f"landmarks must have shape (T>=1, 68, 2), got {lm.shape}")
    if not np.isfinite(lm).all():
        bad = np.where(~np.isfinite(lm).all(axis=(1, 2)))[0]
        raise AlignmentError(f"landmarks of frames {bad[:10].tolist()} contain NaN/inf; fill or drop them first")
    pts = three_points(lm)  # (T, 3, 2)
    tpl = _template(size)
    base = similarity_transform(pts.mean(0), tpl)
    mats = np.repeat(base[None], len(lm), axis=0)
    if mouth_bias:
        prev = None
        for t in range(len(lm)):
            bias = tpl[2] - apply_affine(base, pts[t, 2])
            if prev is not None:
                bias = bias_memory * prev + (1.0 - bias_memory) * bias
            prev = bias
            mats[t, :, 2] = base[:, 2] + bias
    return mats


def warp(image: np.ndarray, m: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """`cv2.warpAffine(image, m, (size, size))`, bilinear, black border -> uint8 `(size, size, C)`."""
    import cv2

    return cv2.warpAffine(np.ascontiguousarray(image), np.asarray(m, np.float64), (size, size),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def align_video(frames, landmarks: np.ndarray, size: int = IMAGE_SIZE, mouth_bias: bool = True,
                bias_memory: float = BIAS_MEMORY) -> AlignResult:
    """PC-AVS alignment of a video (SPEC 1.3): one similarity from the video-average 3 points to the template,
    plus the smoothed per-frame mouth bias, warped to `size` x `size`.

    Args:
        frames: uint8 `(T, H, W, 3)` (array or sequence of equally sized images), or None to skip the warping
            (then `AlignResult.frames` is None).
        landmarks: `(T, 68, 2)` source-pixel landmarks, one face per frame (e.g. from `pdfgc.data.landmarks`).
    Returns: AlignResult (frames, matrices, aligned landmarks, aligned 3 points).
    """
    mats = alignment_matrices(landmarks, size, mouth_bias, bias_memory)
    lm = np.asarray(landmarks, dtype=np.float64)
    out = None
    if frames is not None:
        if len(frames) != len(lm):
            raise AlignmentError(f"align_video: {len(frames)} frames but {len(lm)} landmark sets")
        out = np.stack([warp(f, m, size) for f, m in zip(frames, mats)])
    lm_al = np.einsum("tij,tkj->tki", mats[:, :, :2], lm) + mats[:, None, :, 2]
    return AlignResult(out, mats, lm_al, three_points(lm_al))


def align_image(image: np.ndarray | None, landmarks: np.ndarray, size: int = IMAGE_SIZE,
                mouth_bias: bool = True) -> AlignResult:
    """Align one photo: `image` uint8 `(H, W, 3)` (or None), `landmarks` `(68, 2)`.

    `mouth_bias=True` treats the photo as a one-frame PC-AVS video (similarity + exact mouth pinning);
    `mouth_bias=False` is the per-image similarity only (Portrait-4D `estimate_norm_pdfgc`). Returns an AlignResult
    with a leading axis of 1.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2):
        raise AlignmentError(f"align_image: landmarks must have shape (68, 2), got {lm.shape}")
    return align_video(None if image is None else np.asarray(image)[None], lm[None], size, mouth_bias)


def ref_preprocess(images: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """The reference loader's geometry and scaling (SPEC 1.3 steps 2-5) on uint8 RGB images.

    resize to 224 x 224 (whatever the source size) -> keep rows [0, 192), cols [16, 208) -> resize to 224 x 224
    (bilinear, `cv2.INTER_LINEAR`) -> `x / 255 * 2 - 1`.
    Args: images `(H, W, 3)` or `(T, H, W, 3)` uint8 RGB.
    Returns: float32 `(3, size, size)` or `(T, 3, size, size)` in [-1, 1].
    """
    import cv2

    arr = np.asarray(images)
    single = arr.ndim == 3
    if single:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"ref_preprocess: expected uint8 (H, W, 3) or (T, H, W, 3) RGB images, got {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"ref_preprocess: expected uint8 images (0..255), got {arr.dtype}; convert first")
    r0, r1, c0, c1 = REF_CROP
    out = np.empty((len(arr), 3, size, size), np.float32)
    for i, img in enumerate(arr):
        x = cv2.resize(img, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_LINEAR)
        x = cv2.resize(np.ascontiguousarray(x[r0:r1, c0:c1]), (size, size), interpolation=cv2.INTER_LINEAR)
        out[i] = x.transpose(2, 0, 1).astype(np.float32) / 255.0 * 2.0 - 1.0
    return out[0] if single else out


def ref_crop_points(points: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Where points `(..., 2)` of an aligned 224 crop land after `ref_preprocess`'s crop and resize (pixels).

    Uses the pixel-centre convention of `cv2.resize`: x' = (x - c0 + 0.5) * size / w - 0.5.
    """
    r0, r1, c0, c1 = REF_CROP
    p = np.asarray(points, dtype=np.float64)
    sx, sy = size / (c1 - c0), size / (r1 - r0)
    return np.stack([(p[..., 0] - c0 + 0.5) * sx - 0.5, (p[..., 1] - r0 + 0.5) * sy - 0.5], -1)
