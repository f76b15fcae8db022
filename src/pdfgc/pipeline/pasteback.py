"""Paste-back: a generated face put back into the whole photo (or video frame) it was aligned from.

The networks see the reference's crop of the PC-AVS aligned face (SPEC 1.3): a raw frame is warped by the 2x3
alignment matrix M (raw pixel -> aligned 224 pixel), then `ref_preprocess` keeps rows [0,192) and cols [16,208) of
the aligned crop and resizes them to S x S. A generated pixel (x, y) of the S x S image therefore sits at the aligned
pixel  c0 + (x + 0.5) * 192 / S - 0.5,  r0 + (y + 0.5) * 192 / S - 0.5  (cv2.resize's pixel-centre convention),
and at the raw pixel M^-1 of that. `PasteBack` warps the generated face through this composite inverse map into the
frame at its own resolution (bilinear, only inside the face's bounding box), blends it with a feathered elliptical
face mask (defined on the aligned template, so the feather scales with the face) and shifts the face's colour by the
mean difference along the seam, so neither a colour step nor a hard edge shows.

Shapes: frames uint8 (H, W, 3) RGB; generated faces uint8 (S, S, 3); matrices float64 (2, 3).
"""
from __future__ import annotations

import numpy as np

from pdfgc.constants import REF_CROP

# face ellipse on the aligned 224 canvas (template: eyes at y=59, mouth at y=120, centre column x=112): centre and
# semi-axes, chosen to hold brows to chin and cheek to cheek; the mask is 1 inside FEATHER_INNER of the normalised
# elliptical radius and falls smoothly to 0 at radius 1, which stays inside the crop (rows 0..192, cols 16..208)
FACE_CENTRE = (112.0, 100.0)
FACE_AXES = (78.0, 90.0)
FEATHER_INNER = 0.72
SEAM_BAND = (0.05, 0.6)     # mask values that count as "the seam" for colour matching
OFFSET_MEMORY = 0.8         # temporal smoothing of the colour offset in a video (weight of the previous offset)


def generated_to_aligned(size: int) -> np.ndarray:
    """3x3 affine map from a generated S x S pixel to the aligned 224 pixel it shows (inverse of ref_preprocess's
    crop and resize; the first resize to 224 is the identity for aligned crops)."""
    r0, r1, c0, c1 = REF_CROP
    sx, sy = (c1 - c0) / size, (r1 - r0) / size
    return np.array([[sx, 0.0, c0 + 0.5 * sx - 0.5],
                     [0.0, sy, r0 + 0.5 * sy - 0.5],
                     [0.0, 0.0, 1.0]])


def face_mask(size: int) -> np.ndarray:
    """Feathered face mask on the generated S x S grid: float32 (S, S) in [0, 1] (1 on the face, 0 at the ellipse
    rim; a smoothstep between)."""
    g = generated_to_aligned(size)
    xs = g[0, 0] * np.arange(size) + g[0, 2]
    ys = g[1, 1] * np.arange(size) + g[1, 2]
    r = np.sqrt(((xs[None, :] - FACE_CENTRE[0]) / FACE_AXES[0]) ** 2 + ((ys[:, None] - FACE_CENTRE[1]) / FACE_AXES[1]) ** 2)
    t = np.clip((1.0 - r) / (1.0 - FEATHER_INNER), 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def _as3(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, np.float64)
    return np.vstack([m.reshape(2, 3), [0.0, 0.0, 1.0]])


class PasteBack:
    """Pastes generated faces back into the frames they were aligned from.

    Args:
        size: side S of the generated images.
        colour_match: shift the face's colour by the mean difference along the seam (per channel).
        smooth: smooth that shift over consecutive calls (a video), so the face's colour does not flicker.
    `__call__(frame, matrix, face)` -> the frame with the face pasted, uint8 (H, W, 3) (a new array).
    """

    def __init__(self, size: int, colour_match: bool = True, smooth: bool = True):
        self.size = int(size)
        self.colour_match = colour_match
        self.smooth = smooth
        self.mask = face_mask(self.size)
        self.g = generated_to_aligned(self.size)
        self._offset: np.ndarray | None = None

    def reset(self) -> None:
        self._offset = None

    def to_frame(self, matrix: np.ndarray) -> np.ndarray:
        """3x3 map from a generated pixel to the raw frame pixel (M^-1 after the crop/resize inverse)."""
        return np.linalg.inv(_as3(matrix)) @ self.g

    def __call__(self, frame: np.ndarray, matrix: np.ndarray, face: np.ndarray) -> np.ndarray:
        import cv2

        frame = np.asarray(frame)
        h, w = frame.shape[:2]
        s = self.size
        if face.shape[:2] != (s, s):
            raise ValueError(f"PasteBack: face must be ({s},{s},3), got {face.shape}")
        a = self.to_frame(matrix)
        corners = np.array([[0, 0, 1], [s - 1, 0, 1], [0, s - 1, 1], [s - 1, s - 1, 1]], np.float64) @ a.T
        x0 = max(int(np.floor(corners[:, 0].min())) - 1, 0)
        y0 = max(int(np.floor(corners[:, 1].min())) - 1, 0)
        x1 = min(int(np.ceil(corners[:, 0].max())) + 2, w)
        y1 = min(int(np.ceil(corners[:, 1].max())) + 2, h)
        out = frame.copy()
        if x1 <= x0 or y1 <= y0:
            return out  # the face lies outside the frame
        roi = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]], np.float64) @ a  # generated pixel -> ROI pixel
        bw, bh = x1 - x0, y1 - y0
        flags = cv2.INTER_LINEAR
        warped = cv2.warpAffine(np.ascontiguousarray(face), roi[:2], (bw, bh), flags=flags,
                                borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
        m = cv2.warpAffine(self.mask, roi[:2], (bw, bh), flags=flags, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=0)[..., None]
        base = frame[y0:y1, x0:x1].astype(np.float32)
        if self.colour_match:
            band = (m[..., 0] > SEAM_BAND[0]) & (m[..., 0] < SEAM_BAND[1])
            if band.any():
                off = (base[band] - warped[band]).mean(0)
                if self.smooth and self._offset is not None:
                    off = OFFSET_MEMORY * self._offset + (1.0 - OFFSET_MEMORY) * off
                self._offset = off
                warped += off
        blended = base + m * (warped - base)
        out[y0:y1, x0:x1] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
        return out

    def covered(self, frame_shape, matrix: np.ndarray) -> np.ndarray:
        """Mask float32 (H, W) of where the face is pasted into a frame of `frame_shape` (for tests and docs)."""
        import cv2

        h, w = frame_shape[:2]
        return cv2.warpAffine(self.mask, self.to_frame(matrix)[:2], (w, h), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)

