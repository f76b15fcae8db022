"""pdfgc.data.audio against hand-computed values and naive re-derivations of the lws framing (SPEC 1.4)."""
import math
import warnings

import numpy as np
import pytest

from pdfgc.data import audio as A


@pytest.mark.parametrize("length,expected", [(0, 7), (1, 8), (159, 8), (160, 8), (161, 9), (320, 9),
                                             (16000, 107), (16001, 108)])
def test_num_mel_frames_hand_values(length, expected):
    # ceil(L/160) + 7, worked out by hand for each length
    assert A.num_mel_frames(length) == expected


@pytest.mark.parametrize("length", [1, 159, 160, 161, 1921, 3200])
def test_melspectrogram_shape_matches_formula(length):
    rng = np.random.default_rng(length)
    mel = A.melspectrogram(rng.standard_normal(length).astype(np.float32) * 0.1)
    assert mel.shape == (math.ceil(length / 160) + 7, 80)
    assert mel.dtype == np.float32
    assert mel.min() >= 0.0 and mel.max() <= 1.0


def test_frame_count_matches_reference_outputs():
    # SPEC 1.4: 15 s -> 372 frames, 20 s -> 497 frames (the shipped reference videos), N = 25 T - 3
    assert A.num_generated_frames(A.num_mel_frames(15 * 16000)) == 372
    assert A.num_generated_frames(A.num_mel_frames(20 * 16000)) == 497
    for t in range(1, 31):
        assert A.num_generated_frames(A.num_mel_frames(t * 16000)) == 25 * t - 3


def test_window_index_arithmetic():
    # T_mel = 40: T_mel//4 = 10 -> frames 2..7 (6 = 10 - 4 of them), window of f starts at (f-2)*4
    assert A.window_frame_indices(40).tolist() == [2, 3, 4, 5, 6, 7]
    assert A.num_generated_frames(40) == 6
    assert A.window_frame_indices(43).tolist() == [2, 3, 4, 5, 6, 7]
    assert A.num_generated_frames(19) == 0 and A.num_generated_frames(20) == 1
    mel = np.repeat(np.arange(40, dtype=np.float32)[:, None], 80, axis=1)  # row r holds value r
    w = A.mel_window(mel, 5)
    assert w.shape == (1, 80, 20)
    assert w[0, 0].tolist() == list(range(12, 32))  # rows (5-2)*4 = 12 .. 31, transposed to time along the last axis
    assert (w[0, :, 0] == 12).all()
    last = A.mel_window(mel, 7)
    assert last[0, 0, -1] == 39
    with pytest.raises(IndexError, match="valid frames: 2..7"):
        A.mel_window(mel, 8)
    with pytest.raises(IndexError):
        A.mel_window(mel, 1)
    ws = A.mel_windows(mel)
    assert ws.shape == (6, 1, 80, 20)
    assert [int(x[0, 0, 0]) for x in ws] == [0, 4, 8, 12, 16, 20]


def test_window_formula_equals_lws_construction():
    # lws builds its default window as sqrt(sqrt(hann_sym) * synthwin(sqrt(hann_sym), hop)); rebuild it that way
    n, hop = 1280, 160
    hann = 0.5 * (1 - np.cos(2 * np.pi * np.arange(1, 2 * n, 2) / (2 * n)))
    a0 = np.sqrt(hann)
    q = n // hop
    norm = np.tile((a0 * a0).reshape(q, hop).sum(axis=0), q)
    awin = np.sqrt(a0 * (a0 / norm))
    np.testing.assert_allclose(A.lws_window(), awin, rtol=0, atol=1e-12)
    k = np.arange(n)
    np.testing.assert_allclose(A.lws_window(), 0.5 * np.sin(np.pi * (k + 0.5) / n), atol=1e-15)


def _naive_lws_frames(x, fsize=1280, fshift=160):
    """The lws perfectrec framing written as a plain loop over frames."""
    x = list(np.asarray(x, dtype=np.float64))
    padded = [0.0] * (fsize - fshift) + x
    while len(padded) % fshift:
        padded.append(0.0)
    m_frames = len(padded) // fshift
    frames = []
    for m in range(m_frames):
        frame = []
        for k in range(fsize):
            j = m * fshift + k
            frame.append(padded[j] if j < len(padded) else 0.0)
        frames.append(frame)
    return np.array(frames)


@pytest.mark.parametrize("length", [1, 160, 1000, 1601])
def test_framing_equals_naive_loop(length):
    x = np.random.default_rng(1).standard_normal(length)
    np.testing.assert_array_equal(A.frame_signal(x), _naive_lws_frames(x))


def test_stft_magnitude_equals_naive_dft():
    x = np.random.default_rng(2).standard_normal(500)
    frames = _naive_lws_frames(x) * (0.5 * np.sin(np.pi * (np.arange(1280) + 0.5) / 1280))
    k = np.arange(641)[:, None]
    dft = np.exp(-2j * np.pi * k * np.arange(1280)[None] / 1280)  # explicit DFT matrix, bins 0..640
    expected = np.abs(frames @ dft.T)
    np.testing.assert_allclose(A.stft_magnitude(x), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("freq", [440.0, 1000.0, 3000.0])
def test_pure_tone_lands_in_nearest_mel_band(freq):
    import librosa

    t = np.arange(16000) / 16000
    mel = A.melspectrogram((0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32))
    centres = librosa.mel_frequencies(n_mels=82, fmin=125.0, fmax=7600.0, htk=False)[1:-1]
    expected = int(np.argmin(np.abs(centres - freq)))
    got = np.argmax(mel[20:-20].mean(axis=0))
    assert abs(int(got) - expected) <= 1, (got, expected, centres[got], centres[expected])


def test_db_scaling_hand_values():
    basis = A.mel_basis()
    j = 40
    k = int(np.argmax(basis[j]))
    mag = np.zeros((3, 641))
    mag[0, k] = 1.0 / basis[j, k]  # mel_j = 1      -> 20 log10(1) - 20 = -20 dB -> (-20 + 100)/100 = 0.8
    mag[1, k] = 10.0 / basis[j, k]  # mel_j = 10    -> 0 dB -> 1.0
    mag[2, k] = 1e-4 / basis[j, k]  # mel_j = 1e-4  -> -100 dB -> 0.0
    out = A.magnitude_to_mel(mag)
    np.testing.assert_allclose(out[:, j], [0.8, 1.0, 0.0], atol=1e-6)
    assert (A.magnitude_to_mel(np.zeros((2, 641))) == 0).all()  # floor 1e-5 -> -120 dB -> clipped to 0


def test_rms_normalisation_hand_values():
    np.testing.assert_allclose(A.normalize_rms(np.full(100, 0.5)), np.full(100, 0.1), rtol=1e-6)
    x = np.array([3.0, -4.0])  # rms = sqrt(12.5)
    np.testing.assert_allclose(A.normalize_rms(x), x * 0.1 / math.sqrt(12.5), rtol=1e-6)
    np.testing.assert_allclose(A.normalize_rms(np.full(10, 1e-6)), np.full(10, 1e-6 * 0.1 / 1e-4), rtol=1e-6)


def test_min_samples_and_too_short_error():
    assert A.MIN_SAMPLES == 1921  # ceil(L/160) >= 13 <=> L >= 1921
    assert A.num_generated_frames(A.num_mel_frames(1921)) == 1
    assert A.num_generated_frames(A.num_mel_frames(1920)) == 0
    assert A.min_samples_for_frames(10) == (4 * 14 - 8) * 160 + 1
    assert A.num_generated_frames(A.num_mel_frames(A.min_samples_for_frames(10))) == 10
    assert A.num_generated_frames(A.num_mel_frames(A.min_samples_for_frames(10) - 1)) == 9
    noise = np.random.default_rng(0).standard_normal(1920).astype(np.float32) * 0.1
    with pytest.raises(A.AudioError, match=r"at least 1921 samples \(0.120 s\)"):
        A.audio_to_mel(noise)
    wav, mel = A.audio_to_mel(np.concatenate([noise, noise[:1]]))
    assert mel.shape == (20, 80)


def test_empty_silent_and_unreadable_audio(tmp_path):
    with pytest.raises(A.AudioError, match="empty"):
        A.audio_to_mel(np.zeros(0, np.float32))
    with pytest.warns(A.SilentAudioWarning, match="silent"):
        A.audio_to_mel(np.zeros(16000, np.float32))
    with pytest.raises(A.AudioError, match="silent"):
        A.audio_to_mel(np.zeros(16000, np.float32), on_silence="error")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        A.audio_to_mel(np.zeros(16000, np.float32), on_silence="ignore")
    with pytest.raises(A.AudioError, match="no such audio file"):
        A.load_audio(tmp_path / "missing.wav")
    bad = tmp_path / "corrupt.wav"
    bad.write_bytes(b"RIFF\x00\x00garbage" * 10)
    with pytest.raises(A.AudioError, match="corrupt.wav"):
        A.load_audio(bad)


def test_load_resamples_stereo_wav_to_16k_mono(tmp_path):
    import soundfile as sf

    sr = 44100
    t = np.arange(sr) / sr
    left = 0.2 * np.sin(2 * np.pi * 300 * t)
    sf.write(str(tmp_path / "s.wav"), np.stack([left, left], 1), sr)
    wav = A.load_audio(tmp_path / "s.wav")
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert abs(len(wav) - 16000) <= 1
    spec = np.abs(np.fft.rfft(wav))
    assert abs(np.argmax(spec) * 16000 / len(wav) - 300) < 2  # still a 300 Hz tone after resampling
