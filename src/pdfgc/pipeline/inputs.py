"""Loading the pipeline's inputs: the source portrait, the three drivers and the audio (issue 3 items 4-5).

Every loader returns uint8 RGB arrays of ALIGNED 224x224 crops (the PC-AVS geometry of SPEC 1.3), which the
pipeline then passes through the reference's crop/resize/normalise (`pdfgc.data.align.ref_preprocess`).

Accepted forms:
    source   photo path | video path (its first frame) | uint8 array (H,W,3) or (T,H,W,3) (first frame)
    driver   video path | folder of frames (sorted lexicographically, like the reference) | single image |
             uint8 array (T,H,W,3) or (H,W,3)
    audio    any file PyAV decodes (wav, mp3, m4a, mp4 ...) | float array of samples at 16 kHz

The reading options come from `InferenceSettings` (parsed and checked there; these functions take its values):
Alignment (`aligned`): "auto" treats an input whose frames are already 224x224 as an aligned crop and passes it
through unchanged; anything else is aligned with 68-point landmarks (`landmarks="dlib"` offline by default,
"face_alignment" when its weights exist): per image for photos, one video-averaged transform for videos and frame
folders (SPEC 1.3). `aligned="true"` always passes through (resizing to 224 if needed), `"false"` always aligns.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pdfgc.constants import FPS, IMAGE_SIZE, SAMPLE_RATE
from pdfgc.data.video import VIDEO_EXTENSIONS, MediaError
from pdfgc.pipeline.errors import PipelineError
from pdfgc.pipeline.settings import ALIGNED_MODES

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass
class Driver:
    """An aligned driver: `frames` uint8 (L, 224, 224, 3); `key` identifies the input so that the same file given
    for several controls is loaded and encoded once."""

    frames: np.ndarray
    key: str
    name: str
    path: Path | None = None


MAX_IMAGE_PIXELS = 100_000_000  # 100 MP (300 MB of RGB); checked on the header before decoding


def image_header_size(path) -> tuple[int, int] | None:
    """(width, height) from an image file's header without decoding it (PIL reads headers lazily); None when PIL
    does not know the format (OpenCV then decides)."""
    try:
        import warnings

        from PIL import Image
    except ImportError:
        return None
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # our own limit applies; PIL's bomb check would raise before we can name it
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                return int(im.size[0]), int(im.size[1])
    except Exception:
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _jpeg_truncation(path: Path, img: np.ndarray) -> str | None:
    """A description of how much of a truncated JPEG decoded, or None when the file is complete. A JPEG ends with
    the end-of-image marker FF D9; libjpeg paints the rows it never received a flat grey (128)."""
    with open(path, "rb") as f:
        if f.read(2) != b"\xff\xd8":
            return None
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 4096))
        tail = f.read().rstrip(b"\x00\r\n ")
    if tail.endswith(b"\xff\xd9"):
        return None
    painted = np.flatnonzero(~(img == 128).all(axis=(1, 2)))
    usable = int(painted[-1]) + 1 if len(painted) else 0
    if usable == img.shape[0]:  # a progressive JPEG: every row, but only the coarse passes that arrived
        return f"truncated JPEG ({size:,} bytes, no end-of-image marker): it decodes only in part (reduced detail)"
    return (f"truncated JPEG ({size:,} bytes, no end-of-image marker): only the top {usable} of {img.shape[0]} rows "
            f"({usable / img.shape[0]:.0%}) decode, the rest would be flat grey")


def read_image(path, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Read one image file as uint8 RGB `(H, W, 3)` (grey and RGBA are converted); clear error if unreadable,
    larger than `max_pixels` (checked on the header, before decoding) or a truncated JPEG."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: no such image file")
    size = image_header_size(path)
    if size is not None and size[0] * size[1] > max_pixels:
        raise PipelineError(f"{path}: the header says {size[0]}x{size[1]} = {size[0] * size[1]:,} pixels, more than "
                            f"max_pixels={max_pixels:,} (pdfgc.pipeline.inputs.MAX_IMAGE_PIXELS); scale the image "
                            "down (a portrait needs a few hundred pixels around the face)")
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise PipelineError(f"{path}: cannot read as an image (corrupt or unsupported format); "
                            f"use one of {', '.join(IMAGE_EXTENSIONS)}")
    truncated = _jpeg_truncation(path, img)
    if truncated is not None:
        raise PipelineError(f"{path}: {truncated}; re-download or re-export the image")
    return np.ascontiguousarray(img[:, :, ::-1])


def list_frame_folder(folder) -> list[Path]:
    """Image files of a frame folder in lexicographic order of their names (the reference's `sort()`)."""
    folder = Path(folder)
    files = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
                   key=lambda p: p.name)
    if not files:
        raise PipelineError(f"{folder}: folder holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                            "put the driver frames there, named so that they sort in order (000000.jpg, ...)")
    return files


def read_frame_folder(folder, frame_limit: int | None = None, max_bytes: int | None = None) -> np.ndarray:
    """All images of a folder as uint8 `(T, H, W, 3)`; every image must have the same size. At most `frame_limit`
    images and `max_bytes` bytes of decoded frames (defaults: pdfgc.data.video's MAX_VIDEO_FRAMES and
    MAX_DECODED_BYTES, the limits of a video driver)."""
    from pdfgc.data import video as V

    frame_limit = V.MAX_VIDEO_FRAMES if frame_limit is None else frame_limit
    max_bytes = V.MAX_DECODED_BYTES if max_bytes is None else max_bytes
    files = list_frame_folder(folder)
    if len(files) > frame_limit:
        raise PipelineError(f"{folder}: {len(files):,} images, more than frame_limit={frame_limit:,} "
                            "(pdfgc.data.video.MAX_VIDEO_FRAMES); use a shorter driver")
    frames, nbytes = [], 0
    for f in files:
        frames.append(read_image(f))
        nbytes += frames[-1].nbytes
        if nbytes > max_bytes:
            raise PipelineError(f"{folder}: more than max_bytes={max_bytes:,} bytes of decoded frames after "
                                f"{len(frames)} of {len(files)} images (pdfgc.data.video.MAX_DECODED_BYTES); use "
                                "fewer or smaller frames")
    first = frames[0].shape
    for f, im in zip(files, frames):
        if im.shape != first:
            raise PipelineError(f"{folder}: images differ in size: {files[0].name} is {first[1]}x{first[0]} but "
                                f"{f.name} is {im.shape[1]}x{im.shape[0]}; a frame folder must hold frames of one "
                                "video (resize or re-extract them)")
    return np.stack(frames)


def _label(what: str, x) -> str:
    return f"{what} {x}" if isinstance(x, (str, os.PathLike)) else what


def _is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def _as_uint8_frames(arr, what: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8 or arr.shape[0] == 0:
        raise PipelineError(f"{what}: expected uint8 RGB frames (T,H,W,3) or an image (H,W,3), "
                            f"got {arr.dtype} {arr.shape}")
    return arr


def _read_raw(x, what: str, first_only: bool) -> tuple[np.ndarray, str, bool]:
    """-> (uint8 frames (T,H,W,3), key, is_sequence). Sequences (videos, folders) get video-averaged alignment."""
    if isinstance(x, (str, os.PathLike)):
        path = Path(x)
        if path.is_dir():
            return read_frame_folder(path), f"dir:{path.resolve()}", True
        if not path.exists():
            raise PipelineError(f"{what}: {path} does not exist (expected an image, a video or a folder of frames)")
        if _is_video(path):
            from pdfgc.data.video import read_frames

            try:
                # a source needs only its first frame: decode just that one (no resampling to 25 fps needed)
                frames, _ = read_frames(path, fps=None, max_frames=1) if first_only else read_frames(path, fps=FPS)
            except MediaError as e:
                raise PipelineError(f"{what}: {e}") from e
            return frames, f"video:{path.resolve()}", True
        return read_image(path)[None], f"image:{path.resolve()}", False
    arr = _as_uint8_frames(x, what)
    return arr, f"array:{id(x)}", arr.shape[0] > 1


def _align(frames: np.ndarray, what: str, sequence: bool, landmarks: str, landmark_weights) -> np.ndarray:
    """Align raw frames to 224x224 PC-AVS crops through pdfgc.data.align (video-average for sequences)."""
    from pdfgc.pipeline import _align_adapter

    return _align_adapter.align(frames, sequence=sequence, backend=landmarks, weights=landmark_weights, name=what)


def _resize_to_canvas(frames: np.ndarray) -> np.ndarray:
    import cv2

    if frames.shape[1:3] == (IMAGE_SIZE, IMAGE_SIZE):
        return frames
    return np.stack([cv2.resize(f, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_LINEAR) for f in frames])


def is_aligned_crop(frames: np.ndarray, landmarks: str = "dlib", landmark_weights=None) -> bool:
    """aligned=auto: whether raw frames `(T,H,W,3)` are already aligned crops (`_align_adapter.looks_aligned`)."""
    from pdfgc.pipeline import _align_adapter

    return _align_adapter.looks_aligned(frames, landmarks, landmark_weights)


def prepare_frames(frames: np.ndarray, what: str, sequence: bool, *, aligned: str, landmarks: str,
                   landmark_weights) -> np.ndarray:
    """Raw uint8 frames `(T,H,W,3)` -> aligned uint8 `(T,224,224,3)` following the `aligned` rule (module doc):
    `aligned` is "auto", "true" or "false" (`InferenceSettings.aligned`)."""
    if aligned not in ALIGNED_MODES:
        raise TypeError(f"prepare_frames: aligned must be one of {ALIGNED_MODES} (parsed by InferenceSettings), "
                        f"got {aligned!r}")
    if aligned == "true" or (aligned == "auto" and is_aligned_crop(frames, landmarks, landmark_weights)):
        # already an aligned crop (auto: 224x224 inputs, and square ones whose landmarks sit at the template)
        return _resize_to_canvas(frames)
    return _align(frames, what, sequence, landmarks, landmark_weights)


def load_source(source, *, aligned: str, landmarks: str, landmark_weights) -> np.ndarray:
    """The appearance image as an aligned uint8 crop `(224, 224, 3)`; a video contributes its first frame, an
    array of frames its first frame. Raw photos are aligned per image (exactly one face required)."""
    frames, _, _ = _read_raw(source, "source", first_only=True)
    return prepare_frames(frames[:1], _label("source", source), False, aligned=aligned, landmarks=landmarks,
                          landmark_weights=landmark_weights)[0]


def load_driver(driver, what: str, *, aligned: str, landmarks: str, landmark_weights,
                cache: dict | None = None) -> Driver:
    """A driver (pose, exp or eye) as aligned uint8 crops `(L, 224, 224, 3)`; see the module doc for the forms.

    `cache` (key -> Driver) lets the same file, given for several controls, be read, aligned and later encoded once.
    """
    if cache is not None and isinstance(driver, (str, os.PathLike)):
        hit = next((d for d in cache.values() if d.path == Path(driver).resolve()), None)
        if hit is not None:  # same file for another control: no second decode/alignment
            return hit
    frames, key, sequence = _read_raw(driver, what, first_only=False)
    if cache is not None and key in cache:
        return cache[key]
    out = Driver(prepare_frames(frames, _label(what, driver), sequence, aligned=aligned, landmarks=landmarks,
                                landmark_weights=landmark_weights), key,
                 what, Path(driver).resolve() if isinstance(driver, (str, os.PathLike)) else None)
    if cache is not None:
        cache[key] = out
    return out


def load_audio(audio) -> np.ndarray:
    """Audio as mono float32 samples at 16 kHz (the original signal, before any normalisation).

    A path is decoded by `pdfgc.data.audio.load_audio` (soundfile, else PyAV: wav, flac, mp3, m4a, mp4 ...); an
    array is taken as 16 kHz samples ((L,), or (L,C)/(C,L) channels averaged).
    """
    from pdfgc.data import audio as A

    try:
        if isinstance(audio, (str, os.PathLike)):
            wav = A.load_audio(audio, SAMPLE_RATE)
            name = str(audio)
        else:
            wav = A.to_mono(np.asarray(audio, dtype=np.float32))
            name = "audio array"
    except A.AudioError as e:
        raise PipelineError(f"audio: {e}") from e
    if wav.size == 0:
        raise PipelineError(f"audio: {name} holds no samples; give a speech recording")
    if not np.all(np.isfinite(wav)):
        raise PipelineError(f"audio: {name} holds NaN/inf samples")
    return np.asarray(wav, dtype=np.float32)


def check_output_path(out) -> Path:
    """Validate the output file path BEFORE the expensive work: its folder must exist and be writable."""
    out = Path(out)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise PipelineError(f"out: folder {parent} does not exist; create it first (mkdir -p {parent}) "
                            "or choose another output path")
    if not os.access(parent, os.W_OK):
        raise PipelineError(f"out: folder {parent} is not writable")
    if out.is_dir():
        raise PipelineError(f"out: {out} is a folder; give a file name such as {out / 'result.mp4'}")
    if out.suffix.lower() not in (".mp4", ".m4v", ".mov"):
        raise PipelineError(f"out: {out} should end in .mp4 (H.264 + AAC)")
    return out
