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


class VideoWriter:
    """Streaming H.264 (yuv420p) + AAC mp4 writer: frames are encoded as they arrive, so memory does not grow with
    the video's length.

        with VideoWriter(path, fps=25, audio=wav, metadata={"comment": "..."}) as w:
            for frame in frames:          # uint8 (H, W, 3) RGB, all of one size
                w.write(frame)

    The file appears atomically (`pdfgc.fileio.atomic_path`) when the block ends without an exception: an
    interrupted or failed write never leaves a half-written `path`. H and W are padded to even sizes (yuv420p needs
    them). `metadata`: container tags (mp4 `comment`, `title`, `description`, ...), written into the file.
    """

    def __init__(self, path, fps: float = FPS, audio: np.ndarray | None = None, sample_rate: int = SAMPLE_RATE,
                 crf: int = 18, metadata: dict | None = None):
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise MediaError(f"{self.path}: output folder {self.path.parent} does not exist; create it first")
        self.fps, self.audio, self.sample_rate, self.crf = fps, audio, sample_rate, crf
        self.metadata = dict(metadata or {})
        self.count = 0
        self._atomic = self._tmp = self._out = self._vs = self._as = None
        self._shape = None

    def __enter__(self) -> "VideoWriter":
        import av

        self._atomic = atomic_path(self.path, make_parents=False)
        self._tmp = self._atomic.__enter__()
        try:
            self._out = av.open(str(self._tmp), mode="w", format="mp4")
            for k, v in self.metadata.items():
                self._out.metadata[k] = str(v)
        except Exception as e:
            self._atomic.__exit__(type(e), e, e.__traceback__)
            raise MediaError(f"{self.path}: could not write video ({type(e).__name__}: {e})") from e
        return self

    def write(self, frame: np.ndarray) -> None:
        """Encode one uint8 RGB frame (H, W, 3)."""
        import av

        f = np.asarray(frame)
        if f.ndim != 3 or f.shape[-1] != 3 or f.dtype != np.uint8:
            raise MediaError(f"{self.path}: frames must be uint8 (H,W,3), got {f.dtype} {f.shape}")
        if self._shape is None:
            self._shape = f.shape
            h, w = f.shape[:2]
            self._vs = self._out.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1001))
            self._vs.width, self._vs.height, self._vs.pix_fmt = w + w % 2, h + h % 2, "yuv420p"
            self._vs.options = {"crf": str(self.crf), "preset": "veryfast"}
            if self.audio is not None and len(self.audio):
                # every stream exists before the first packet is muxed (the mp4 header is written then)
                self._as = self._out.add_stream("aac", rate=self.sample_rate)
                self._as.layout = "mono"
        elif f.shape != self._shape:
            raise MediaError(f"{self.path}: frame {self.count} is {f.shape}, the first was {self._shape}")
        h, w = f.shape[:2]
        if h % 2 or w % 2:
            f = np.pad(f, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        for packet in self._vs.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
            self._out.mux(packet)
        self.count += 1

    def _finish(self) -> None:
        import av

        if self._vs is None:
            raise MediaError(f"{self.path}: no frames to write")
        for packet in self._vs.encode():
            self._out.mux(packet)
        as_ = self._as
        if as_ is not None:
            a = np.clip(np.asarray(self.audio, np.float32), -1, 1)
            step = 1024
            for i in range(0, len(a), step):
                af = av.AudioFrame.from_ndarray(a[None, i:i + step], format="fltp", layout="mono")
                af.sample_rate = self.sample_rate
                af.pts = i
                for packet in as_.encode(af):
                    self._out.mux(packet)
            for packet in as_.encode():
                self._out.mux(packet)

    def __exit__(self, exc_type, exc, tb):
        err = None
        try:
            if exc_type is None:
                self._finish()
        except Exception as e:  # noqa: BLE001 - reported below as a MediaError
            err = e
        finally:
            try:
                self._out.close()
            except Exception as e:  # noqa: BLE001
                err = err or e
        failed = exc_type is not None or err is not None
        if failed:
            e = exc if exc is not None else err
            self._atomic.__exit__(type(e), e, e.__traceback__)  # removes the temporary file
        else:
            self._atomic.__exit__(None, None, None)  # moves it into place
        if err is not None and exc_type is None:
            if isinstance(err, MediaError):
                raise err
            raise MediaError(f"{self.path}: could not write video ({type(err).__name__}: {err})") from err
        return False


def write_video(path, frames, fps: float = FPS, audio: np.ndarray | None = None,
                sample_rate: int = SAMPLE_RATE, crf: int = 18, metadata: dict | None = None) -> Path:
    """Write RGB uint8 frames `(T, H, W, 3)` (an array, or any iterable of (H, W, 3) frames, encoded as they come)
    as H.264 (yuv420p) + AAC mp4 through `VideoWriter` (atomic; H and W padded to even sizes)."""
    path = Path(path)
    if isinstance(frames, np.ndarray) and (frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8):
        raise MediaError(f"{path}: frames must be uint8 (T,H,W,3), got {frames.dtype} {frames.shape}")
    with VideoWriter(path, fps=fps, audio=audio, sample_rate=sample_rate, crf=crf, metadata=metadata) as w:
        for f in frames:
            w.write(f)
    return path


def write_wav(path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write mono float32 audio as 16-bit PCM wav."""
    import soundfile as sf

    sf.write(str(path), np.asarray(audio, np.float32), sample_rate, subtype="PCM_16")
    return Path(path)
