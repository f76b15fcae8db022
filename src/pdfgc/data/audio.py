"""The reference audio front-end (SPEC 1.4), without the `lws` dependency.

Pipeline, for a waveform of L samples at 16 kHz mono:

1. RMS normalisation: `wav * 0.1 / max(1e-4, rms(wav))`.
2. STFT exactly as `lws.lws(1280, 160, mode="speech").stft` frames it: analysis window
   `w[k] = 0.5 * sin(pi * (k + 0.5) / 1280)`, the signal pre-padded with 1120 zeros, post-padded with zeros to a
   multiple of 160, one frame every 160 samples (frames near the end read zeros past the signal), plain FFT of
   1280 points -> 641 bins, magnitude. T_mel = ceil(L / 160) + 7 frames; frame j covers original samples
   [160 j - 1120, 160 j + 160).
3. 80 Slaney mel bands 125-7600 Hz (`librosa.filters.mel`, area-normalised) applied to the magnitude.
4. `20 * log10(max(1e-5, mel)) - 20`, then `clip((S + 100) / 100, 0, 1)` -> float32 `(T_mel, 80)`.

Video frame f (25 fps, 4 mel frames per video frame) owns the 20-mel window starting at `(f - 2) * 4`, as a
`(1, 80, 20)` array; valid frames are `f = 2 .. T_mel//4 - 3`, so a clip yields `N = T_mel//4 - 4` generated frames
(N = 25 T - 3 for T seconds of audio).

Silent audio: the reference would amplify the noise floor by up to 1000x. `melspectrogram` and `load_audio` warn
(`SilentAudioWarning`) when the RMS is below `SILENCE_RMS` and `audio_to_mel(..., on_silence="error")` raises.
"""
from __future__ import annotations

import functools
import math
import warnings
from pathlib import Path

import numpy as np

from pdfgc.constants import (FMAX, FMIN, FRAME_OFFSET, HOP_LENGTH, MEL_PER_FRAME, MEL_WINDOW, N_FFT, N_MELS,
                             SAMPLE_RATE, WIN_LENGTH)
from pdfgc.data.video import (MAX_AUDIO_CHANNELS, MAX_AUDIO_RATE, MAX_AUDIO_SECONDS, MIN_AUDIO_RATE,  # noqa: F401
                              AudioError, check_audio_header)

RMS_TARGET = 0.1  # reference loudness after normalisation
RMS_FLOOR = 1e-4  # denominator floor of the reference normalisation
SILENCE_RMS = 1e-4  # below this RMS (about -80 dBFS) the audio is treated as silent
MIN_LEVEL_DB = -100.0
REF_LEVEL_DB = 20.0
AMP_FLOOR = 1e-5  # = 10 ** (MIN_LEVEL_DB / 20)
PRE_PAD = WIN_LENGTH - HOP_LENGTH  # 1120 zeros before the signal (lws perfectrec with 1280 % 160 == 0)


# plausibility limits checked on a file's header before decoding (a lying header must not make pdfgc allocate without
# bound); every loader takes them as arguments, these are the defaults




class SilentAudioWarning(UserWarning):
    """The audio is (nearly) silent: the reference RMS normalisation would amplify its noise floor."""


# --------------------------------------------------------------------------------------------------------------
# index arithmetic (pure integers; SPEC 1.4)

def num_mel_frames(num_samples: int) -> int:
    """T_mel for `num_samples` samples at 16 kHz: `ceil(L / 160) + 7` (lws framing with 1120 zeros pre-pad)."""
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    return -(-int(num_samples) // HOP_LENGTH) + PRE_PAD // HOP_LENGTH


def num_generated_frames(t_mel: int) -> int:
    """Number of video frames the reference generates from `t_mel` mel frames: `T_mel//4 - 4` (>= 0)."""
    # frames f = 2 .. T_mel//4 - 3 (see window_frame_indices): T_mel//4 - 4 of them
    return max(0, int(t_mel) // MEL_PER_FRAME - 4)


def window_frame_indices(t_mel: int) -> np.ndarray:
    """Video frame indices f with a complete mel window: `2, ..., T_mel//4 - 3` (int64, length `T_mel//4 - 4`)."""
    return np.arange(FRAME_OFFSET, FRAME_OFFSET + num_generated_frames(t_mel), dtype=np.int64)


def mel_window_start(f: int) -> int:
    """First mel row of the window of video frame `f`: `(f - 2) * 4`."""
    return (int(f) - FRAME_OFFSET) * MEL_PER_FRAME


def mel_window(mel: np.ndarray, f: int) -> np.ndarray:
    """The `(1, 80, 20)` mel window of video frame `f` from a `(T_mel, 80)` spectrogram.

    Raises IndexError when f is outside `2 .. T_mel//4 - 3` (the window would be incomplete).
    """
    t_mel = mel.shape[0]
    s = mel_window_start(f)
    if int(f) < FRAME_OFFSET or s + MEL_WINDOW > t_mel:
        raise IndexError(f"mel_window: video frame {f} has no complete 20-mel window in a spectrogram of "
                         f"{t_mel} mel frames (valid frames: {FRAME_OFFSET}..{t_mel // MEL_PER_FRAME - 3})")
    return np.ascontiguousarray(mel[s:s + MEL_WINDOW].T[None])


def mel_windows(mel: np.ndarray, frames=None) -> np.ndarray:
    """Stack of mel windows `(n, 1, 80, 20)` for video frames `frames` (default: all, `window_frame_indices`)."""
    if frames is None:
        frames = window_frame_indices(mel.shape[0])
    frames = np.asarray(frames, dtype=np.int64).reshape(-1)
    if len(frames) == 0:
        return np.zeros((0, 1, mel.shape[1], MEL_WINDOW), dtype=mel.dtype)
    return np.stack([mel_window(mel, f) for f in frames])


# --------------------------------------------------------------------------------------------------------------
# signal processing

def normalize_rms(wav: np.ndarray, target: float = RMS_TARGET, floor: float = RMS_FLOOR) -> np.ndarray:
    """Reference loudness normalisation: `wav * target / max(floor, rms(wav))` (float32, same length)."""
    wav = np.asarray(wav, dtype=np.float64)
    rms = math.sqrt(float(np.mean(wav * wav))) if len(wav) else 0.0
    return (wav * (target / max(floor, rms))).astype(np.float32)


@functools.lru_cache(maxsize=4)
def lws_window(size: int = WIN_LENGTH) -> np.ndarray:
    """lws's default analysis window for an integer frame size with hop size/8: `0.5 * sin(pi (k + 0.5) / size)`.

    (lws builds sqrt(sqrt(hann) * synthesis-normaliser); with 8x overlap the normaliser is constant 1/4.)
    Read-only float64 `(size,)`.
    """
    w = 0.5 * np.sin(np.pi * (np.arange(size) + 0.5) / size)
    w.setflags(write=False)
    return w


def frame_signal(wav: np.ndarray, win: int = WIN_LENGTH, hop: int = HOP_LENGTH) -> np.ndarray:
    """lws `perfectrec` framing: `(T, win)` float64 frames of `wav` (T = ceil(L/hop) + (win - hop)/hop).

    The signal is pre-padded with `win - hop` zeros and post-padded to a multiple of `hop`; frame m starts at
    `m * hop` of the padded signal and reads zeros beyond its end. Requires `win % hop == 0` (true for 1280/160).
    """
    if win % hop:
        raise ValueError(f"frame_signal: win ({win}) must be a multiple of hop ({hop})")
    x = np.asarray(wav, dtype=np.float64).reshape(-1)
    n_frames = -(-len(x) // hop) + (win - hop) // hop
    total = (n_frames - 1) * hop + win
    padded = np.zeros(total, dtype=np.float64)
    padded[win - hop:win - hop + len(x)] = x
    return np.lib.stride_tricks.sliding_window_view(padded, win)[::hop][:n_frames]


def stft_magnitude(wav: np.ndarray) -> np.ndarray:
    """|STFT| of `wav` (16 kHz) with the reference lws framing and window: float64 `(T_mel, 641)`."""
    frames = frame_signal(wav) * lws_window()
    return np.abs(np.fft.rfft(frames, n=N_FFT, axis=1))


@functools.lru_cache(maxsize=2)
def mel_basis(sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Slaney mel filterbank `(80, 641)` float64: `librosa.filters.mel(sr, n_fft=1280, n_mels=80, fmin=125,
    fmax=7600)` with librosa's defaults (htk=False, norm='slaney'). Read-only."""
    import librosa

    m = librosa.filters.mel(sr=sample_rate, n_fft=N_FFT, n_mels=N_MELS, fmin=FMIN, fmax=FMAX,
                            htk=False, norm="slaney", dtype=np.float64)
    m.setflags(write=False)
    return m


def magnitude_to_mel(mag: np.ndarray) -> np.ndarray:
    """Reference mel scaling of a `(T, 641)` magnitude spectrogram -> float32 `(T, 80)` in [0, 1]."""
    mel = mag @ mel_basis().T
    db = 20.0 * np.log10(np.maximum(AMP_FLOOR, mel)) - REF_LEVEL_DB
    return np.clip((db - MIN_LEVEL_DB) / -MIN_LEVEL_DB, 0.0, 1.0).astype(np.float32)


def melspectrogram(wav: np.ndarray, normalize: bool = True, name: str = "audio") -> np.ndarray:
    """The reference features of a 16 kHz mono waveform: float32 `(T_mel, 80)` in [0, 1], T_mel = ceil(L/160)+7.

    Args:
        wav: float waveform `(L,)` at 16 kHz, nominally in [-1, 1].
        normalize: apply the reference RMS normalisation first (True in the reference).
        name: used in warnings/errors.
    Warns SilentAudioWarning when the RMS is below `SILENCE_RMS`.
    """
    wav = np.asarray(wav)
    if wav.ndim != 1:
        raise AudioError(f"{name}: expected a mono waveform (L,), got shape {wav.shape}; average the channels first")
    if len(wav) == 0:
        raise AudioError(f"{name}: the audio is empty (0 samples)")
    if not np.isfinite(wav).all():
        raise AudioError(f"{name}: the waveform holds NaN or inf samples")
    if normalize:
        _check_silence(wav, name, "warn")
        wav = normalize_rms(wav)
    return magnitude_to_mel(stft_magnitude(wav))


def _check_silence(wav: np.ndarray, name: str, on_silence: str) -> None:
    rms = math.sqrt(float(np.mean(np.asarray(wav, np.float64) ** 2))) if len(wav) else 0.0
    if rms >= SILENCE_RMS or on_silence == "ignore":
        return
    msg = (f"{name}: the audio is silent (RMS {rms:.2e} < {SILENCE_RMS:.0e}); RMS normalisation would amplify "
           "its noise floor and the mouth will not follow any speech. Check the file / the audio track.")
    if on_silence == "error":
        raise AudioError(msg)
    warnings.warn(msg, SilentAudioWarning, stacklevel=3)


# --------------------------------------------------------------------------------------------------------------
# loading

def to_mono(wav: np.ndarray) -> np.ndarray:
    """Average channels of `(L,)`, `(L, C)` (soundfile layout) or `(C, L)` with C <= 8 -> float32 `(L,)`."""
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim == 1:
        return wav
    if wav.ndim == 2:
        axis = 0 if wav.shape[0] <= 8 and wav.shape[0] < wav.shape[1] else 1
        return wav.mean(axis=axis).astype(np.float32)
    raise AudioError(f"expected a 1-D or 2-D waveform, got shape {wav.shape}")


def resample(wav: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Resample mono float audio from `orig_sr` to `target_sr` Hz (librosa's default high-quality resampler)."""
    if int(orig_sr) == int(target_sr):
        return np.asarray(wav, dtype=np.float32)
    import librosa

    return librosa.resample(np.asarray(wav, dtype=np.float32), orig_sr=int(orig_sr),
                            target_sr=int(target_sr)).astype(np.float32)



def load_audio(path, sample_rate: int = SAMPLE_RATE, *, max_seconds: float = MAX_AUDIO_SECONDS,
               min_rate: float = MIN_AUDIO_RATE, max_rate: float = MAX_AUDIO_RATE,
               max_channels: int = MAX_AUDIO_CHANNELS) -> np.ndarray:
    """Decode an audio file (wav/flac/ogg via soundfile, anything else -- mp3, m4a, mp4 -- via PyAV) to float32
    mono at `sample_rate` Hz. The header (rate, channels, duration) is checked against the limits before anything
    is decoded (`check_audio_header`), and decoding stops at `max_seconds` whatever the header says. Raises
    AudioError for missing, unreadable, implausible or empty files."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such audio file")
    limits = dict(max_seconds=max_seconds, min_rate=min_rate, max_rate=max_rate, max_channels=max_channels)
    try:
        import soundfile as sf

        info = sf.info(str(path))
    except Exception:  # not a format libsndfile knows: PyAV (ffmpeg) reads it, with the same limits
        info = None
    wav = None
    if info is not None:
        seconds = info.frames / info.samplerate if info.samplerate > 0 and info.frames >= 0 else None
        check_audio_header(path, info.samplerate, info.channels, seconds, **limits)
        try:
            # never more than the limit, whatever the frame count in the header says
            data, sr = sf.read(str(path), dtype="float32", always_2d=True,
                               frames=int(math.ceil(max_seconds * info.samplerate)) + 1)
        except Exception:  # libsndfile knows the container but not this content: let PyAV try
            data = None
        if data is not None:
            if len(data) > max_seconds * sr:
                raise AudioError(f"{path}: more than max_seconds={max_seconds:g} s of audio "
                                 "(pdfgc.data.audio.MAX_AUDIO_SECONDS); cut it into shorter parts or raise the limit")
            wav = resample(data.mean(axis=1), sr, sample_rate)
    if wav is None:
        from pdfgc.data.video import MediaError, read_audio

        try:
            wav = read_audio(path, sample_rate, **limits)
        except MediaError as e:
            if isinstance(e.__cause__, AudioError):
                raise e.__cause__ from None
            raise AudioError(f"{path}: cannot decode audio ({e}); convert it to a 16 kHz mono wav") from e
    if len(wav) == 0:
        raise AudioError(f"{path}: the audio stream is empty (0 samples)")
    return np.asarray(wav, dtype=np.float32)


def audio_to_mel(audio, sample_rate: int | None = None, on_silence: str = "warn",
                 min_frames: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Load (if a path) and featurise audio as the reference does. Returns `(wav 16 kHz float32 (L,),
    mel float32 (T_mel, 80))`.

    Args:
        audio: a path, or a float waveform (then `sample_rate` is its rate, default 16 kHz).
        on_silence: "warn" (default), "error" or "ignore" for audio whose RMS is below `SILENCE_RMS`.
        min_frames: minimum number of generated video frames required (N = T_mel//4 - 4).
    Raises AudioError for unreadable, empty or too-short audio (the message gives the minimum duration).
    """
    if on_silence not in ("warn", "error", "ignore"):
        raise ValueError(f"on_silence must be 'warn', 'error' or 'ignore', got {on_silence!r}")
    if isinstance(audio, (str, Path)):
        name = str(audio)
        wav = load_audio(audio)
    else:
        name = "audio array"
        wav = resample(to_mono(audio), sample_rate or SAMPLE_RATE)
    if len(wav) == 0:
        raise AudioError(f"{name}: the audio is empty (0 samples)")
    need = min_samples_for_frames(min_frames)
    if len(wav) < need:
        raise AudioError(f"{name}: audio too short: {len(wav)} samples ({len(wav) / SAMPLE_RATE:.3f} s) at 16 kHz; "
                         f"at least {need} samples ({need / SAMPLE_RATE:.3f} s) are needed for {min_frames} "
                         "video frame(s) (N = 25*T - 3 frames for T seconds)")
    if not np.isfinite(wav).all():
        raise AudioError(f"{name}: the waveform holds NaN or inf samples")
    _check_silence(wav, name, on_silence)
    mel = magnitude_to_mel(stft_magnitude(normalize_rms(wav)))
    return wav, mel


def min_samples_for_frames(n_frames: int = 1) -> int:
    """Smallest number of 16 kHz samples whose mel spectrogram yields `n_frames` generated frames.

    N = T_mel//4 - 4 >= n  <=>  T_mel >= 4 (n + 4)  <=>  ceil(L/160) >= 4 (n + 4) - 7.
    """
    need_tmel = MEL_PER_FRAME * (int(n_frames) + 4)
    return max(1, (need_tmel - PRE_PAD // HOP_LENGTH - 1) * HOP_LENGTH + 1)


MIN_SAMPLES = min_samples_for_frames(1)  # 1921 samples (0.12 s): the shortest audio yielding one video frame
