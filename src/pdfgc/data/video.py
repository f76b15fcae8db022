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


# plausibility limits checked on a video's header before decoding, and again while decoding (headers can lie); every
# reader takes them as arguments, these are the defaults
MAX_FRAME_PIXELS = 8192 * 8192  # 8K is 7680x4320
MAX_VIDEO_FRAMES = 200_000  # over two hours at 25 fps
MAX_DECODED_BYTES = 16 * 2 ** 30  # RGB frames held in memory by one read_frames call (16 GiB)
# audio headers (the loaders of pdfgc.data.audio and read_audio below take these as arguments)
MAX_AUDIO_SECONDS = 3600.0  # one hour: 230 MB of 16 kHz float32, the largest decode buffer at 48 kHz stereo 1.4 GB
MIN_AUDIO_RATE = 4000  # Hz; below this no speech survives (and resampling up would multiply the length)
MAX_AUDIO_RATE = 384000  # Hz; the highest rate of real audio interfaces
MAX_AUDIO_CHANNELS = 32


class MediaError(UserError, RuntimeError):
    """A media file could not be read or written; the message names the file and what to do."""


class AudioError(UserError, ValueError):
    """Audio that cannot be turned into mel features; the message names the file and what to do."""


class PartialMediaWarning(UserWarning):
    """A media file decoded only in part (truncated or damaged); the message says how much was used."""


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


def _header_frames(container, stream, native: float) -> int | None:
    """Frame count a video's header announces (the stream's frame count, else its or the container's duration x
    rate); None if unknown."""
    if stream.frames:
        return int(stream.frames)
    if stream.duration and stream.time_base:
        return int(round(float(stream.duration * stream.time_base) * native))
    if container.duration:  # in microseconds (AV_TIME_BASE), e.g. Matroska
        return int(round(container.duration / 1e6 * native))
    return None


def read_frames(path, fps: float | None = FPS, max_frames: int | None = None, *,
                max_pixels: int = MAX_FRAME_PIXELS, frame_limit: int = MAX_VIDEO_FRAMES,
                max_bytes: int = MAX_DECODED_BYTES) -> tuple[np.ndarray, float]:
    """Decode the first video stream of `path` as RGB uint8 `(T, H, W, 3)`.

    With `fps` set, frames are resampled by timestamp to that rate (nearest earlier source frame, i.e. frame
    duplication/dropping as ffmpeg's `-r` does); with `fps=None` every decoded frame is returned at the native rate.
    `max_frames` keeps the first frames only (the rest is not decoded). Returns `(frames, fps_out)`.

    Limits (MediaError naming the limit): the header's frame size must be at most `max_pixels`; a video of more than
    `frame_limit` frames or `max_bytes` bytes of decoded RGB is refused from its header and, should the header lie,
    while decoding. A file that decodes only in part (truncated) gives a `PartialMediaWarning` saying how many frames
    were read and are used.
    """
    with _open(path) as container:
        if not container.streams.video:
            raise MediaError(f"{path}: has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        native = float(stream.average_rate or stream.guessed_rate or FPS)
        w, h = int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)
        if w * h > max_pixels:
            raise MediaError(f"{path}: frames of {w}x{h} = {w * h:,} pixels, more than max_pixels={max_pixels:,} "
                             "(pdfgc.data.video.MAX_FRAME_PIXELS); scale the video down (e.g. to 1920 wide)")
        announced = _header_frames(container, stream, native)
        wanted = announced if max_frames is None or announced is None else min(announced, int(max_frames))
        if fps is not None and max_frames is not None and announced is not None:
            wanted = min(announced, int(np.ceil((int(max_frames) + 1) * native / fps)))
        if wanted is not None and (wanted > frame_limit or wanted * max(w * h * 3, 1) > max_bytes):
            raise MediaError(f"{path}: the header announces {wanted:,} frames of {w}x{h}, more than "
                             f"frame_limit={frame_limit:,} frames or max_bytes={max_bytes:,} bytes of decoded "
                             "frames (pdfgc.data.video.MAX_VIDEO_FRAMES / MAX_DECODED_BYTES); cut the video "
                             "shorter or scale it down")
        # with fps and max_frames, frames past this time are never selected: stop decoding there
        t_stop = None if fps is None or max_frames is None else (int(max_frames) + 1) / fps
        out, times, nbytes, failure = [], [], 0, None
        try:
            for frame in container.decode(stream):
                t = float(frame.pts * frame.time_base) if frame.pts is not None else len(times) / native
                if t_stop is not None and times and t - times[0] > t_stop:
                    break
                times.append(t)
                out.append(frame.to_ndarray(format="rgb24"))
                nbytes += out[-1].nbytes
                if len(out) > frame_limit or nbytes > max_bytes:
                    raise MediaError(f"{path}: more than frame_limit={frame_limit:,} frames or max_bytes="
                                     f"{max_bytes:,} bytes decoded (the header announced "
                                     f"{'no count' if announced is None else f'{announced:,} frames'}; "
                                     "pdfgc.data.video.MAX_VIDEO_FRAMES / MAX_DECODED_BYTES); cut the video "
                                     "shorter or scale it down")
                if fps is None and max_frames is not None and len(out) >= max_frames:
                    break
            else:
                if announced and len(out) < announced - max(2, announced // 50):
                    failure = "ends early"
        except MediaError:
            raise
        except Exception as e:
            if not out:
                raise MediaError(f"{path}: video stream could not be decoded ({type(e).__name__}: {e})") from e
            failure = f"decoding failed: {type(e).__name__}: {e}"
    if not out:
        raise MediaError(f"{path}: video stream holds no frames")
    if failure is not None:
        import warnings

        of = f" of the {announced} its header announces" if announced else ""
        warnings.warn(f"{path}: only {len(out)} frames{of} could be decoded ({failure}; the file is truncated or "
                      f"damaged); using those {len(out)} frames ({len(out) / native:.2f} s). Re-export or "
                      "re-download the video to use all of it", PartialMediaWarning, stacklevel=2)
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


def check_audio_header(path, sample_rate: float | None, channels: int | None, seconds: float | None, *,
                       max_seconds: float = MAX_AUDIO_SECONDS, min_rate: float = MIN_AUDIO_RATE,
                       max_rate: float = MAX_AUDIO_RATE, max_channels: int = MAX_AUDIO_CHANNELS) -> None:
    """AudioError unless a header's sample rate (Hz), channel count and duration (s) are plausible (None = the
    header does not say; decoding is bounded anyway); the message names the limit (an argument of the loaders,
    default `pdfgc.data.video.<NAME>`)."""
    if sample_rate is not None and not min_rate <= float(sample_rate) <= max_rate:
        raise AudioError(f"{path}: the header says {sample_rate} Hz, outside [{min_rate}, {max_rate}] Hz (limits "
                         "min_rate/max_rate, pdfgc.data.audio.MIN_AUDIO_RATE/MAX_AUDIO_RATE); the file is damaged "
                         "or not audio: re-export it as a 16 kHz mono wav")
    if channels is not None and not 1 <= int(channels) <= max_channels:
        raise AudioError(f"{path}: the header says {channels} channels, outside [1, {max_channels}] (limit "
                         "max_channels, pdfgc.data.audio.MAX_AUDIO_CHANNELS); re-export it as a mono wav")
    if seconds is not None and seconds > max_seconds:
        raise AudioError(f"{path}: the header says {seconds:.1f} s of audio, more than max_seconds={max_seconds:g} "
                         "(pdfgc.data.audio.MAX_AUDIO_SECONDS); cut the audio into shorter parts or raise the limit")


def read_audio(path, sample_rate: int = SAMPLE_RATE, *, max_seconds: float | None = None,
               min_rate: float | None = None, max_rate: float | None = None,
               max_channels: int | None = None) -> np.ndarray:
    """Decode the first audio stream of any container PyAV reads (wav, mp3, m4a, mp4, ...) to mono float32 at
    `sample_rate`. The stream header (rate, channels, duration) is checked first and decoding stops past
    `max_seconds` whatever the header says (limits default to pdfgc.data.audio's MAX_AUDIO_* values). Raises
    MediaError when the file has no audio, cannot be decoded or exceeds a limit."""
    import av

    limits = dict(max_seconds=MAX_AUDIO_SECONDS if max_seconds is None else max_seconds,
                  min_rate=MIN_AUDIO_RATE if min_rate is None else min_rate,
                  max_rate=MAX_AUDIO_RATE if max_rate is None else max_rate,
                  max_channels=MAX_AUDIO_CHANNELS if max_channels is None else max_channels)
    cap = int(limits["max_seconds"] * sample_rate) + sample_rate  # output samples; one second of slack
    with _open(path) as container:
        if not container.streams.audio:
            raise MediaError(f"{path}: has no audio stream")
        stream = container.streams.audio[0]
        seconds = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else None
        try:
            check_audio_header(path, stream.sample_rate or None, stream.channels or None, seconds, **limits)
        except AudioError as e:
            raise MediaError(str(e)) from e
        resampler = av.AudioResampler(format="fltp", layout="mono", rate=sample_rate)
        chunks, total = [], 0
        try:
            for frame in container.decode(stream):
                for rf in resampler.resample(frame):
                    chunks.append(rf.to_ndarray()[0])
                    total += len(chunks[-1])
                if total > cap:
                    raise AudioError(f"{path}: more than max_seconds={limits['max_seconds']:g} s of audio "
                                       "decoded (pdfgc.data.audio.MAX_AUDIO_SECONDS; the header said "
                                       f"{'nothing' if seconds is None else f'{seconds:.1f} s'}); cut it into "
                                       "shorter parts or raise the limit")
            for rf in resampler.resample(None):
                chunks.append(rf.to_ndarray()[0])
        except AudioError as e:
            raise MediaError(str(e)) from e
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
