"""Factor estimator, synthetic disentanglement benchmark, report files and the `python -m pdfgc.eval` CLI.

One small estimator is trained once for the module (~20-40 s on one thread) and shared by the tests.
"""
import json
import math
import shutil

import numpy as np
import pytest
import torch

from pdfgc.data.synthetic import SyntheticSource
from pdfgc.eval.benchmark import FACTORS, run_synthetic_benchmark
from pdfgc.eval.estimator import load_estimator, save_estimator, train_estimator

SIZE = 56  # the tiny model's size


@pytest.fixture(scope="module")
def estimator():
    torch.manual_seed(0)
    kw = dict(image_size=SIZE, num_identities=400, clips_per_identity=2, num_frames=25)
    est = train_estimator(SyntheticSource(split="train", **kw), SyntheticSource(split="test", **kw), steps=250,
                          batch_size=32, lr=3e-3, num_clips=300, frames_per_clip=8, width=16, test_clips=80,
                          progress=False, log=None)
    return est


@pytest.fixture(scope="module")
def tiny_models():
    from pdfgc.models.bundle import PDFGCModels

    torch.manual_seed(0)
    return PDFGCModels.from_config("tiny").eval()


def test_estimator_recovers_factors_on_held_out_identities(estimator):
    m = estimator.metrics
    # stated accuracy of this small (250-step, ~30 s) estimator on renders of unseen identities: head rotation
    # within 5 degrees MAE (chance: ~8 degrees) with most of its variance explained, mouth shape clearly above
    # chance (R^2 > 0 = better than predicting the mean). Gaze, blink and emotion need the CLI's longer budget.
    assert m["num_frames"] == 320
    assert m["pose_deg_mae"] < 5.0
    assert m["r2"]["pose"] > 0.5
    assert m["r2"]["mouth"] > 0.2
    assert m["natural"]["r2"]["pose"] > 0.5  # natural (not re-rendered) test frames too


def test_estimator_cache_round_trip(estimator, tmp_path):
    path = save_estimator(estimator, tmp_path / "est.pt")
    again = load_estimator(path)
    x = torch.rand(3, 3, SIZE, SIZE) * 2 - 1
    a, b = estimator.predict(x), again.predict(x)
    np.testing.assert_array_equal(a["pose"], b["pose"])
    assert again.metrics == estimator.metrics
    with pytest.raises(FileNotFoundError, match="--estimator"):
        load_estimator(tmp_path / "missing.pt")


def test_benchmark_end_to_end_with_baselines(estimator, tiny_models, tmp_path):
    rep = run_synthetic_benchmark(tiny_models, tmp_path, estimator=estimator, clips=3, frames=8, progress=False,
                                  log=None)
    # files: strict JSON, markdown tables, a PNG heatmap
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["factors"] == list(FACTORS)
    md = (tmp_path / "report.md").read_text()
    assert "| factor |" in md and "copy driver" in md and "| driver changed" in md
    import matplotlib.image as mpimg

    png = mpimg.imread(tmp_path / "leakage.png")
    assert png.ndim == 3 and png.shape[0] > 100 and png.shape[1] > 300

    leak = {k: np.asarray(v) for k, v in rep["leakage"].items()}
    # copy source never changes when a driver changes: exactly no movement anywhere
    np.testing.assert_array_equal(leak["copy_source"], np.zeros((5, 5)))
    # copy driver outputs the pose driver: only the pose row moves, and by exactly the real driver change (= 1)
    pose_row = FACTORS.index("pose")
    others = np.delete(leak["copy_driver"], pose_row, axis=0)
    np.testing.assert_array_equal(others, np.zeros_like(others))
    np.testing.assert_allclose(leak["copy_driver"][pose_row], np.ones(5), rtol=1e-6)
    # copy driver's frames are the real driver frames: its control error is the estimator's own error
    for f in FACTORS:
        assert rep["control"]["copy_driver"][f]["err"] == pytest.approx(rep["control"]["estimator_on_driver"][f]["err"])
    # head pose: copying the driver follows it (estimator floor); copying the source ignores it (~chance)
    assert rep["control"]["copy_driver"]["pose"]["nerr"] < 0.6 * rep["control"]["copy_source"]["pose"]["nerr"]
    assert rep["control"]["copy_source"]["pose"]["nerr"] > 0.5
    # image metrics against the ground-truth render are finite and in range
    for meth in ("model", "copy_source", "copy_driver"):
        assert -1.0 <= rep["image_vs_target"][meth]["ssim"] <= 1.0
        assert math.isfinite(rep["image_vs_target"][meth]["psnr"])


def test_synthetic_cli_with_cached_estimator(estimator, tiny_models, tmp_path, capsys):
    from pdfgc.eval.__main__ import main

    ckpt = tmp_path / "ckpt"
    tiny_models.save_pretrained(ckpt)
    est_path = save_estimator(estimator, tmp_path / "est.pt")
    before = est_path.stat().st_mtime_ns
    assert main(["synthetic", "--ckpt", str(ckpt), "--out", str(tmp_path / "out"), "--estimator", str(est_path),
                 "--clips", "2", "--frames", "6"]) == 0
    assert est_path.stat().st_mtime_ns == before  # loaded from the cache, not retrained
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["config"]["clips"] == 2 and data["estimator"]["path"] == str(est_path)
    assert "Synthetic disentanglement benchmark" in capsys.readouterr().out


def test_videos_cli_identical_and_different(tmp_path, capsys):
    from pdfgc.data.video import write_video
    from pdfgc.eval.__main__ import main

    src = SyntheticSource(image_size=64, num_identities=20, clips_per_identity=1, num_frames=12, split="all")
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir()
    ref.mkdir()
    write_video(ref / "a.mp4", src.frames(0, range(12)))
    shutil.copy(ref / "a.mp4", pred / "a.mp4")  # identical file: PSNR inf, SSIM 1, CSIM 1
    write_video(ref / "b.mp4", src.frames(1, range(12)))
    write_video(pred / "b.mp4", src.frames(2, range(12)))  # another identity
    write_video(pred / "unmatched.mp4", src.frames(3, range(12)))
    assert main(["videos", "--pred", str(pred), "--ref", str(ref), "--out", str(tmp_path / "rep"),
                 "--no-lmd", "--stride", "4"]) == 0
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert data["num_videos"] == 2
    a, b = data["videos"]
    assert a["name"] == "a" and a["psnr"] == "inf" and a["ssim"] == pytest.approx(1.0)
    assert a["csim"] == pytest.approx(1.0, abs=1e-9)
    assert b["psnr"] < 30 and b["ssim"] < 0.95 and b["csim"] < 1.0
    assert "| video |" in capsys.readouterr().out


def test_cli_user_error_is_one_line_and_exit_2(tmp_path, capsys):
    from pdfgc.eval.__main__ import main

    assert main(["videos", "--pred", str(tmp_path / "nope"), "--ref", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --pred") and "not a folder of videos" in err and "Traceback" not in err


class _PoseOnlyPipeline:
    """A stand-in model with known behaviour: with `headpose` on it outputs the pose driver frames, otherwise the
    source image. Its pose control is perfect and it leaks everything the pose driver carries."""

    image_size = SIZE

    def generate(self, source, mel, pose=None, exp=None, eye=None, controls=("all",), drop_leading=True):
        from pdfgc.pipeline import parse_controls

        assert not drop_leading  # the benchmark aligns output frame i with driver frame i + 2 itself
        if parse_controls(controls).headpose:
            return pose.clone()
        return source.expand(mel.shape[0], -1, -1, -1).clone()


def test_benchmark_model_path_and_control_off_with_known_model(estimator, tmp_path):
    rep = run_synthetic_benchmark(_PoseOnlyPipeline(), tmp_path, estimator=estimator, clips=2, frames=6,
                                  progress=False, log=None, write=False)
    ctrl = rep["control"]
    # headpose on: the output is the driver itself, so the error equals the estimator's error on the driver
    assert ctrl["model"]["pose"]["err"] == pytest.approx(ctrl["estimator_on_driver"]["pose"]["err"])
    # headpose off: the output is the source frame, exactly the copy-source baseline
    assert ctrl["model_control_off"]["pose"]["err"] == pytest.approx(ctrl["copy_source"]["pose"]["err"])
    # other controls off change nothing for this model
    assert ctrl["model_control_off"]["mouth"]["err"] == pytest.approx(ctrl["model"]["mouth"]["err"])
    leak = np.asarray(rep["leakage"]["model"])
    np.testing.assert_allclose(leak[FACTORS.index("pose")], np.ones(5), rtol=1e-6)
    assert np.count_nonzero(np.delete(leak, FACTORS.index("pose"), axis=0)) == 0
