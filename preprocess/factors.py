"""Per-frame factor estimates from 68-point landmarks: head pose, eye openness, mouth shape, eye/mouth boxes.

Head pose: `cv2.solvePnP` of 20 fairly rigid landmarks (brows, nose, eye corners, mouth corners, chin) against the
generic 3D face `FACE_MODEL_3D` below, with a pinhole camera of focal length = image size and the principal point at
the image centre. The model's coordinates were written for this project from textbook adult anthropometry
(biocular width ~90 mm, intercanthal width ~32 mm, nasion-menton height ~120 mm, nose protrusion ~25 mm, mouth width
~50 mm); it is symmetric about x = 0, so mirroring an image flips the sign of yaw and roll and keeps pitch.

Solver axes (camera = OpenCV): x to the image right, y down, z away from the camera; the model faces the camera
(nose tip at the smallest z) and R = Rz(a_z) @ Ry(a_y) @ Rx(a_x) maps model to camera. The reported pose follows the
project-wide convention of `pdfgc.data.synthetic` so that both sources train the same pose head:
  yaw   = -a_y > 0: the face turns toward the image's right
  pitch = -a_x > 0: the face looks up
  roll  = +a_z > 0: the face rotates clockwise in the image
  tx, ty: position of the model origin (between the inner eye corners) relative to the optical axis, in units of the
          face half-width (FACE_SIZE_MM / 2), +x right, +y down;
  tz:     relative change of the camera distance with respect to the distance at which the face has the template
          scale of the aligned crop (eye centres 50 px apart on 224), > 0 farther.
"""
from __future__ import annotations

import numpy as np

from pdfgc.constants import ALIGN_TEMPLATE, IMAGE_SIZE

FACE_SIZE_MM = 90.0  # outer-eye-corner distance of the model: the unit of the normalised translation

# iBUG-68 index -> (x, y, z) mm; origin between the inner eye corners, x right, y down, z away from the camera
FACE_MODEL_3D: dict[int, tuple[float, float, float]] = {
    8: (0.0, 113.0, -4.0),  # menton (chin)
    17: (-56.0, -22.0, 22.0), 21: (-12.0, -20.0, -6.0),  # brow, outer / inner end (image left)
    22: (12.0, -20.0, -6.0), 26: (56.0, -22.0, 22.0),  # brow, inner / outer end (image right)
    27: (0.0, -4.0, -6.0), 28: (0.0, 11.0, -12.0), 29: (0.0, 24.0, -18.0), 30: (0.0, 37.0, -26.0),  # nose ridge, tip
    31: (-14.0, 45.0, -8.0), 32: (-7.0, 47.0, -13.0), 33: (0.0, 47.0, -15.0),  # nose base
    34: (7.0, 47.0, -13.0), 35: (14.0, 45.0, -8.0),
    36: (-45.0, -2.0, 14.0), 39: (-16.0, 0.0, 2.0),  # eye corners, image left: outer, inner
    42: (16.0, 0.0, 2.0), 45: (45.0, -2.0, 14.0),  # eye corners, image right: inner, outer
    48: (-25.0, 70.0, -2.0), 54: (25.0, 70.0, -2.0),  # mouth corners
}
PNP_INDICES = np.array(sorted(FACE_MODEL_3D))
MODEL_POINTS = np.array([FACE_MODEL_3D[i] for i in PNP_INDICES], dtype=np.float64)

EYE_A = np.arange(36, 42)  # eye on the image left (the subject's right eye)
EYE_B = np.arange(42, 48)
EAR_CLOSED = 0.08  # eye aspect ratio of a closed eye with dlib/FAN landmarks (openness 0)
EAR_MIN_RANGE = 0.1  # the "open" reference is at least EAR_CLOSED + this


def euler_from_matrix(r: np.ndarray) -> np.ndarray:
    """Solver angles (a_y, a_x, a_z) radians of R = Rz(a_z) @ Ry(a_y) @ Rx(a_x)."""
    yaw = np.arcsin(np.clip(-r[2, 0], -1.0, 1.0))
    pitch = np.arctan2(r[2, 1], r[2, 2])
    roll = np.arctan2(r[1, 0], r[0, 0])
    return np.array([yaw, pitch, roll])


def matrix_from_euler(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Model-to-camera rotation of a reported pose (yaw, pitch, roll) radians (conventions: module docstring)."""
    yaw, pitch = -yaw, -pitch  # reported -> solver angles
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    return rz @ ry @ rx


def reference_distance(focal: float, width: int) -> float:
    """Camera distance (mm, of the model origin) at which the frontal model's eye centres project as far apart as the
    alignment template's, scaled to an image of `width` px: the tz = 0 reference."""
    eye_a = MODEL_POINTS[np.isin(PNP_INDICES, [36, 39])].mean(0)
    eye_b = MODEL_POINTS[np.isin(PNP_INDICES, [42, 45])].mean(0)
    tpl_px = (ALIGN_TEMPLATE[1][0] - ALIGN_TEMPLATE[0][0]) * width / IMAGE_SIZE
    # the eye centres lie eye_a[2] mm behind the origin: spacing_px = focal * spacing_mm / (Z + depth)
    return focal * float(np.linalg.norm(eye_b - eye_a)) / tpl_px - float(eye_a[2])


def camera_matrix(width: int, height: int) -> np.ndarray:
    """Pinhole intrinsics used for pose: focal = max(width, height) px, principal point at the image centre."""
    f = float(max(width, height))
    return np.array([[f, 0, width / 2.0], [0, f, height / 2.0], [0, 0, 1.0]])


def head_pose(landmarks: np.ndarray, width: int, height: int) -> np.ndarray:
    """Head pose of each frame from 68-point landmarks.

    Args: landmarks `(T, 68, 2)` or `(68, 2)` pixels of a `width` x `height` image.
    Returns: float32 `(T, 6)` (or `(6,)`): yaw, pitch, roll [rad], tx, ty [face half-widths], tz [relative distance
    change] (conventions: module docstring).
    """
    import cv2

    lm = np.asarray(landmarks, dtype=np.float64)
    single = lm.ndim == 2
    lm = lm[None] if single else lm
    k = camera_matrix(width, height)
    out = np.zeros((len(lm), 6), np.float32)
    eye_span_model = MODEL_POINTS[PNP_INDICES.tolist().index(45)][0] - MODEL_POINTS[PNP_INDICES.tolist().index(36)][0]
    for t, pts in enumerate(lm):
        img_pts = np.ascontiguousarray(pts[PNP_INDICES])
        # start from a frontal face at the distance that matches the observed eye-corner span, so the iterative
        # solver never lands on the mirrored "face seen from behind" solution
        span = max(1e-3, float(np.linalg.norm(pts[45] - pts[36])))
        c = pts[PNP_INDICES].mean(0)
        z0 = k[0, 0] * eye_span_model / span
        t0 = np.array([(c[0] - k[0, 2]) * z0 / k[0, 0], (c[1] - k[1, 2]) * z0 / k[1, 1], z0]).reshape(3, 1)
        r0 = np.zeros((3, 1))
        ok, rvec, tvec = cv2.solvePnP(MODEL_POINTS, img_pts, k, None, r0, t0, useExtrinsicGuess=True,
                                      flags=cv2.SOLVEPNP_ITERATIVE)
        if not ok:
            out[t] = np.nan
            continue
        r, _ = cv2.Rodrigues(rvec)
        a_y, a_x, a_z = euler_from_matrix(r)
        tv = tvec.ravel()
        out[t, :3] = (-a_y, -a_x, a_z)
        out[t, 3:5] = tv[:2] / (FACE_SIZE_MM / 2)
        out[t, 5] = tv[2] / reference_distance(k[0, 0], width) - 1.0
    return out[0] if single else out


def project_model(yaw: float, pitch: float, roll: float, t_mm, width: int, height: int) -> np.ndarray:
    """Image points `(68, 2)` of the 3D model under a pose (NaN where the model has no point); a test oracle."""
    r = matrix_from_euler(yaw, pitch, roll)
    cam = MODEL_POINTS @ r.T + np.asarray(t_mm, np.float64)
    k = camera_matrix(width, height)
    uv = cam @ k.T
    out = np.full((68, 2), np.nan)
    out[PNP_INDICES] = uv[:, :2] / uv[:, 2:]
    return out


def eye_aspect_ratio(landmarks: np.ndarray) -> np.ndarray:
    """Eye aspect ratio (Soukupova & Cech 2016) of both eyes: `(..., 68, 2)` -> `(..., 2)` [image-left eye, image-right
    eye]. EAR = (|p2 - p6| + |p3 - p5|) / (2 |p1 - p4|) over the six contour points of an eye."""
    lm = np.asarray(landmarks, dtype=np.float64)
    res = []
    for idx in (EYE_A, EYE_B):
        p = lm[..., idx, :]
        v = np.linalg.norm(p[..., 1, :] - p[..., 5, :], axis=-1) + np.linalg.norm(p[..., 2, :] - p[..., 4, :], axis=-1)
        h = np.linalg.norm(p[..., 0, :] - p[..., 3, :], axis=-1)
        res.append(v / np.maximum(2.0 * h, 1e-6))
    return np.stack(res, -1)


def eye_openness(ear: np.ndarray, open_ref: float | None = None) -> np.ndarray:
    """Map eye aspect ratios `(T, 2)` to openness in [0, 1]: 0 at `EAR_CLOSED`, 1 at the clip's "open" level.

    The open level defaults to the 90th percentile of the clip's EARs (eye shapes differ between people; most frames
    of a talking-head clip have open eyes), at least `EAR_CLOSED + EAR_MIN_RANGE`.
    """
    ear = np.asarray(ear, dtype=np.float64)
    if open_ref is None:
        open_ref = float(np.nanpercentile(ear, 90)) if np.isfinite(ear).any() else EAR_CLOSED + EAR_MIN_RANGE
    open_ref = max(open_ref, EAR_CLOSED + EAR_MIN_RANGE)
    return np.clip((ear - EAR_CLOSED) / (open_ref - EAR_CLOSED), 0.0, 1.0).astype(np.float32)


def mouth_shape(landmarks: np.ndarray) -> np.ndarray:
    """Mouth (opening, width) per frame, both divided by the distance between the eye centres: `(..., 2)`.

    opening = mean inner-lip gap over the pairs (61, 67), (62, 66), (63, 65); width = |48 - 54|.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    iod = np.linalg.norm(lm[..., EYE_A, :].mean(-2) - lm[..., EYE_B, :].mean(-2), axis=-1)
    gap = np.mean([np.linalg.norm(lm[..., a, :] - lm[..., b, :], axis=-1) for a, b in ((61, 67), (62, 66), (63, 65))],
                  axis=0)
    width = np.linalg.norm(lm[..., 48, :] - lm[..., 54, :], axis=-1)
    iod = np.maximum(iod, 1e-6)
    return np.stack([gap / iod, width / iod], -1).astype(np.float32)


def region_box(landmarks: np.ndarray, indices, size: int, pad_x: float, pad_y: float, min_pad_y: float = 0.0):
    """Box `(..., 4)` = x0, y0, x1, y1 in [0, 1] around landmarks `indices` of a `size` x `size` image.

    Padding: `pad_x` x the box width on each side horizontally; `pad_y` x the box height (at least `min_pad_y` x the
    box width) on each side vertically."""
    p = np.asarray(landmarks, dtype=np.float64)[..., list(indices), :]
    lo, hi = p.min(-2), p.max(-2)
    w, h = hi[..., 0] - lo[..., 0], hi[..., 1] - lo[..., 1]
    px = pad_x * w
    py = np.maximum(pad_y * h, min_pad_y * w)
    box = np.stack([lo[..., 0] - px, lo[..., 1] - py, hi[..., 0] + px, hi[..., 1] + py], -1) / float(size)
    return np.clip(box, 0.0, 1.0).astype(np.float32)


def eye_box(landmarks: np.ndarray, size: int) -> np.ndarray:
    """Box around both eyes (landmarks 36-47) with room for lids and lashes: `(..., 4)` in [0, 1]."""
    return region_box(landmarks, range(36, 48), size, pad_x=0.12, pad_y=0.8, min_pad_y=0.12)


def mouth_box(landmarks: np.ndarray, size: int) -> np.ndarray:
    """Box around the lips (landmarks 48-67): `(..., 4)` in [0, 1]."""
    return region_box(landmarks, range(48, 68), size, pad_x=0.15, pad_y=0.25, min_pad_y=0.1)


def clip_factors(aligned_landmarks: np.ndarray, size: int) -> dict[str, np.ndarray]:
    """Every per-frame factor of one clip from its aligned landmarks `(T, 68, 2)` on a `size` x `size` crop.

    Returns float32 arrays: pose (T, 6), ear (T, 2), eye_open (T, 2), mouth (T, 2), eye_box (T, 4), mouth_box (T, 4).
    """
    lm = np.asarray(aligned_landmarks, dtype=np.float64)
    ear = eye_aspect_ratio(lm)
    return {
        "pose": head_pose(lm, size, size),
        "ear": ear.astype(np.float32),
        "eye_open": eye_openness(ear),
        "mouth": mouth_shape(lm),
        "eye_box": eye_box(lm, size),
        "mouth_box": mouth_box(lm, size),
    }
