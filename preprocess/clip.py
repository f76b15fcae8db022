"""One clip, end to end: decode -> landmarks -> smoothing -> PC-AVS alignment -> factors -> audio + mel -> file.

`process_clip` never raises for bad data: it returns a manifest record whose `status` is "ok", "skipped" (a data
problem: no face, several faces, too short, no audio, silent audio) or "failed" (unreadable file or an unexpected
error, with the exception text), so one bad clip never stops a run over a million.
"""
from __future__ import annotations

import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pdfgc.constants import FPS, IMAGE_SIZE, SAMPLE_RATE

from pdfgc.data import clipstore

from . import factors as F

AUDIO_SUFFIXES = (".wav", ".m4a", ".aac", ".flac", ".mp3", ".ogg")
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640


@dataclass
class ClipOptions:
    """Per-clip settings (the CLI flags of the same names)."""

    backend: str = "dlib"  # landmark backend: dlib | face_alignment
    min_frames: int = 25  # clips shorter than this (after trimming to the audio) are skipped
    max_frames: int = 0  # 0 = keep every frame; else cut clips to their first max_frames frames
    max_missing: float = 0.1  # fraction of frames without a detected face that are interpolated instead of skipping
    detect_every: int = 1  # run the face detector every k-th frame (dlib: landmarks re-fit in between)
    smooth_sigma: float = 1.0  # temporal Gaussian smoothing of the landmarks, in frames (0 = off)
    several_faces: str = "skip"  # a clip where a frame shows several faces: skip it, or follow the "largest" face
    jpeg_quality: int = 95
    image_size: int = IMAGE_SIZE

    def to_dict(self) -> dict:
        return asdict(self)


class ClipSkipped(Exception):
    """A data problem that makes a clip unusable; `reason` is a short code for the report."""

    def __init__(self, reason: str, detail: str, status: str = "skipped"):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.status = reason, detail, status


def find_audio(video: Path) -> tuple[np.ndarray, str]:
    """16 kHz mono float32 audio of a clip: the video's own audio track, else a sibling file with the same stem
    (`.wav`, `.m4a`, ...). Returns (audio, where it came from). Raises ClipSkipped('no_audio') otherwise."""
    from pdfgc.data.video import MediaError, read_audio

    try:
        wav = read_audio(video, SAMPLE_RATE)
        if len(wav):
            return wav, "video"
    except MediaError:
        pass
    for suf in AUDIO_SUFFIXES:
        sib = video.with_suffix(suf)
        if sib.is_file():
            try:
                from pdfgc.data.audio import load_audio

                return load_audio(sib, SAMPLE_RATE), sib.name
            except Exception as e:  # an unreadable sibling is as good as none, but say why
                raise ClipSkipped("no_audio", f"{sib}: unreadable audio ({e})") from e
    raise ClipSkipped("no_audio", f"{video}: no audio track and no sibling {'/'.join(AUDIO_SUFFIXES)} file")


def _timed(timings: dict, name: str, t0: float) -> float:
    t1 = time.perf_counter()
    timings[name] = timings.get(name, 0.0) + (t1 - t0)
    return t1


def build_clip(src: Path, backend, opts: ClipOptions, timings: dict | None = None) -> tuple[dict, dict]:
    """All arrays of one clip file (the format of `pdfgc.data.clipstore`) and a summary dict. Raises ClipSkipped.

    timings (optional) accumulates seconds per step: decode, audio, landmarks, align, factors, encode.
    """
    from pdfgc.data.align import AlignmentError, align_video
    from pdfgc.data.audio import AudioError, audio_to_mel
    from pdfgc.data.landmarks import MultipleFacesError, NoFaceError, smooth_landmarks, track_video
    from pdfgc.data.video import MediaError, read_frames

    timings = {} if timings is None else timings
    t0 = time.perf_counter()
    try:
        frames, _ = read_frames(src, fps=FPS, max_frames=opts.max_frames or None)
    except MediaError as e:
        raise ClipSkipped("unreadable", str(e), status="failed") from e
    t0 = _timed(timings, "decode", t0)

    wav, audio_from = find_audio(src)
    n = min(len(frames), len(wav) // SAMPLES_PER_FRAME)  # frames covered by audio
    if n < opts.min_frames:
        raise ClipSkipped("too_short", f"{n} frames with audio (video {len(frames)} frames, audio "
                                       f"{len(wav) / SAMPLE_RATE:.2f} s); need --min-frames {opts.min_frames}")
    frames, wav = frames[:n], wav[:n * SAMPLES_PER_FRAME]
    try:
        wav, mel = audio_to_mel(wav, SAMPLE_RATE, on_silence="error")
    except AudioError as e:
        raise ClipSkipped("silent_audio" if "silent" in str(e) else "bad_audio", str(e)) from e
    t0 = _timed(timings, "audio", t0)

    try:
        multiple = "largest" if opts.several_faces == "largest" else "error"
        lm_src, found = track_video(backend, frames, multiple=multiple, max_missing=opts.max_missing,
                                    detect_every=opts.detect_every, name=str(src))
    except MultipleFacesError as e:
        raise ClipSkipped("several_faces", str(e)) from e
    except NoFaceError as e:
        raise ClipSkipped("no_face", str(e)) from e
    lm_src = smooth_landmarks(lm_src, opts.smooth_sigma)
    t0 = _timed(timings, "landmarks", t0)

    try:
        res = align_video(frames, lm_src, size=opts.image_size)
    except AlignmentError as e:
        raise ClipSkipped("alignment", str(e)) from e
    t0 = _timed(timings, "align", t0)

    fac = F.clip_factors(res.landmarks, opts.image_size)
    t0 = _timed(timings, "factors", t0)

    jpeg, offsets = clipstore.encode_jpeg_frames(res.frames, opts.jpeg_quality)
    arrays = {
        "jpeg": jpeg, "jpeg_offsets": offsets,
        "audio": clipstore.pcm16(wav),
        "mel": mel.astype(np.float32),
        "landmarks": res.landmarks.astype(np.float32),
        "landmarks_src": lm_src.astype(np.float32),
        "found": found.astype(bool),
        "matrices": res.matrices.astype(np.float32),
        **{k: v.astype(np.float32) for k, v in fac.items()},
    }
    _timed(timings, "encode", t0)
    summary = {"num_frames": int(n), "image_size": int(opts.image_size), "num_mel": int(len(mel)),
               "seconds": round(n / FPS, 3), "interpolated": int((~found).sum()), "audio_from": audio_from}
    return arrays, summary


def process_clip(src, key: str, identity: str, out_dir, backend, opts: ClipOptions, rel_src: str | None = None,
                 timings: dict | None = None) -> dict:
    """Process one clip into `out_dir/clips/<key>.npz`; returns its manifest record (never raises for bad data)."""
    src = Path(src)
    t_start = time.perf_counter()
    rec = {"key": key, "identity": identity, "src": rel_src or str(src), "backend": opts.backend}
    try:
        arrays, summary = build_clip(src, backend, opts, timings)
        meta = {**rec, **summary, "fps": FPS, "sample_rate": SAMPLE_RATE,
                "version": clipstore.FORMAT_VERSION, "options": opts.to_dict()}
        t0 = time.perf_counter()
        clipstore.write_clip(clipstore.clip_path(out_dir, key), arrays, meta)
        if timings is not None:
            timings["write"] = timings.get("write", 0.0) + time.perf_counter() - t0
        rec.update(status="ok", reason="", path=clipstore.clip_relpath(key), **summary)
    except ClipSkipped as e:
        rec.update(status=e.status, reason=e.reason, detail=e.detail)
    except Exception as e:  # a bug or an unforeseen file problem: record it, keep the run going
        tb = traceback.format_exc(limit=3)
        rec.update(status="failed", reason="error", detail=f"{type(e).__name__}: {e}", traceback=tb)
    rec["time_s"] = round(time.perf_counter() - t_start, 3)
    return rec
