"""Video and audio container I/O through PyAV (no shell calls to ffmpeg).

Frames are uint8 RGB arrays `(T, H, W, 3)`; audio is float32 mono in [-1, 1] at `sample_rate`.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from pdfgc.constants import FPS, SAMPLE_RATE
from pdfgc.errors import UserError
from pdfgc.fileio import atomic_path

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


class MediaError(UserError, RuntimeError):
    """A media file could not be read or written; the message names the file and what to do."""


def _open(path):
    import av

    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: no such file")
    try:
        return av.open(str(path))
    except Exception as e:  # av raises many subclasses (InvalidDataError, ...)
        raise MediaError(f"{path}: cannot open as a media file ({type(e).__name__}: {e}); "
                         "is it a complete video/audio file?") from e


def read_frames(path, fps: float | None = FPS, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """Decode the first video stream of `path` as RGB uint8 `(T, H, W, 3)`.

    With `fps` set, frames are resampled by timestamp to that rate (nearest earlier source frame, i.e. frame
    duplication/dropping as ffmpeg's `-r` does); with `fps=None` every decoded frame is returned at the native rate.
    Returns `(frames, fps_out)`.
    """
    with _open(path) as container:
        if not container.streams.video:
            raise MediaError(f"{path}: has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        native = float(stream.average_rate or stream.guessed_rate or FPS)
        out, times = [], []
        try:
            for frame in container.decode(stream):
                t = float(frame.pts * frame.time_base) if frame.pts is not None else len(times) / native
                times.append(t)
                out.append(frame.to_ndarray(format="rgb24"))
                if fps is None and max_frames is not None and len(out) >= max_frames:
                    break
        except Exception as e:
            if not out:
                raise MediaError(f"{path}: video stream could not be decoded ({type(e).__name__}: {e})") from e
    if not out:
        raise MediaError(f"{path}: video stream holds no frames")
    frames = np.stack(out)
    if fps is None:
        return frames, native
    times = np.asarray(times) - times[0]
    duration = times[-1] + 1.0 / native
    n_out = max(1, int(round(duration * fps)))
    if max_frames is not None:
        n_out = min(n_out, max_frames)
    # index of the last source frame whose timestamp is <= the output timestamp (tolerance of a quarter frame)
    idx = np.searchsorted(times, np.arange(n_out) / fps + 0.25 / native, side="right") - 1
    return frames[np.clip(idx, 0, len(frames) - 1)], float(fps)


def read_audio(path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode the first audio stream of any container PyAV reads (wav, mp3, m4a, mp4, ...) to mono float32 at
    `sample_rate`. Raises MediaError when the file has no audio or cannot be decoded."""
    import av

    with _open(path) as container:
        if not container.streams.audio:
            raise MediaError(f"{path}: has no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="fltp", layout="mono", rate=sample_rate)
        chunks = []
        try:
            for frame in container.decode(stream):
                for rf in resampler.resample(frame):
                    chunks.append(rf.to_ndarray()[0])
            for rf in resampler.resample(None):
                chunks.append(rf.to_ndarray()[0])
        except Exception as e:
            if not chunks:
                raise MediaError(f"{path}: audio stream could not be decoded ({type(e).__name__}: {e})") from e
    if not chunks:
        return np.zeros(0, np.float32)
    return np.concatenate(chunks).astype(np.float32)


def write_video(path, frames, fps: float = FPS, audio: np.ndarray | None = None,
                sample_rate: int = SAMPLE_RATE, crf: int = 18) -> Path:
    """Write RGB uint8 frames `(T, H, W, 3)` (array or iterable) as H.264 (yuv420p) + AAC mp4.

    The file appears atomically (`pdfgc.fileio.atomic_path`): an interrupted call never leaves a half-written `path`. H and W are padded to even sizes (yuv420p needs them).
    """
    import av

    path = Path(path)
    if not path.parent.is_dir():
        raise MediaError(f"{path}: output folder {path.parent} does not exist; create it first")
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise MediaError(f"{path}: frames must be uint8 (T,H,W,3), got {frames.dtype} {frames.shape}")
    t, h, w, _ = frames.shape
    ph, pw = h % 2, w % 2
    if ph or pw:
        frames = np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    try:
        with atomic_path(path, make_parents=False) as tmp, av.open(str(tmp), mode="w", format="mp4") as out:
            rate = Fraction(fps).limit_denominator(1001)
            vs = out.add_stream("libx264", rate=rate)
            vs.width, vs.height, vs.pix_fmt = w + pw, h + ph, "yuv420p"
            vs.options = {"crf": str(crf), "preset": "veryfast"}
            as_ = None
            if audio is not None and len(audio):
                as_ = out.add_stream("aac", rate=sample_rate)
                as_.layout = "mono"
            for f in frames:
                for packet in vs.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                    out.mux(packet)
            for packet in vs.encode():
                out.mux(packet)
            if as_ is not None:
                a = np.clip(np.asarray(audio, np.float32), -1, 1)
                step = 1024
                for i in range(0, len(a), step):
                    af = av.AudioFrame.from_ndarray(a[None, i:i + step], format="fltp", layout="mono")
                    af.sample_rate = sample_rate
                    af.pts = i
                    for packet in as_.encode(af):
                        out.mux(packet)
                for packet in as_.encode():
                    out.mux(packet)
    except MediaError:
        raise
    except Exception as e:
        raise MediaError(f"{path}: could not write video ({type(e).__name__}: {e})") from e
    return path


def write_wav(path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write mono float32 audio as 16-bit PCM wav."""
    import soundfile as sf

    sf.write(str(path), np.asarray(audio, np.float32), sample_rate, subtype="PCM_16")
    return Path(path)
