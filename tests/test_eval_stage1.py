"""`python -m pdfgc.eval stage1`: the stage-1 (G0) probe on a real one-iteration stage-1 checkpoint, with an
estimator whose predictions are known constants, so every error in the report can be computed by hand from the
synthetic ground truth."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

@pytest.fixture(scope="module")
def stage1_ckpt(tmp_path_factory):
    from pdfgc.train.config import compose
    from pdfgc.train.run import run_stage

    out = tmp_path_factory.mktemp("stage1")
    cfg = compose([f"paths.output_dir={out}", "logger=none", "stage=motion", "stage.batch_size=2",
                   "stage.log.sample_every=0", "stage.checkpoint.every=0", "debug=fast_dev_run",
                   "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"])
    return Path(run_stage(cfg)["last_ckpt"])


def constant_estimator(image_size: int):
    """A real FactorEstimator whose last layer is zero: it predicts its `mean` buffer for every image and a uniform
    emotion distribution."""
    from pdfgc.eval.estimator import REG_DIM, FactorEstimator

    est = FactorEstimator(image_size=image_size, width=8)
    with torch.no_grad():
        est.head[-1].weight.zero_()
        est.head[-1].bias.zero_()
        est.mean.copy_(torch.linspace(-0.3, 0.5, REG_DIM))
    return est


def test_stage1_probe_errors_by_hand(stage1_ckpt, tmp_path):
    from pdfgc.data.synthetic import SyntheticSource
    from pdfgc.eval.stage1 import METHODS, run_stage1_probe

    est = constant_estimator(56)
    frames = 4
    rep = run_stage1_probe(stage1_ckpt, tmp_path / "probe", estimator=est, clips=2, frames=frames, progress=False,
                           log=None)
    assert rep["networks"]["stage"] == "motion" and rep["networks"]["generator"] == "generator0_ema"
    size = rep["config"]["image_size"]
    src = SyntheticSource(image_size=size, num_identities=500, clips_per_identity=2, num_frames=frames + 5,
                          split="test", seed=0)
    fidx = np.arange(2, 2 + frames)
    gt_pose = np.concatenate([src.factors(d, fidx)["pose"] for _, d, _ in rep["config"]["samples"]])
    gt_mouth = np.concatenate([src.factors(d, fidx)["mouth"] for _, d, _ in rep["config"]["samples"]])
    c = est.mean.numpy().astype(np.float64)
    want_pose = np.mean(np.abs(np.degrees(c[:3])[None] - np.degrees(gt_pose[:, :3])))
    want_mouth = np.mean(np.abs(c[10:12][None] - gt_mouth))  # REG_FACTORS order: pose 6, gaze 2, eye_open 2, mouth 2
    for m in METHODS:  # a constant estimator scores every method the same
        assert rep["errors"][m]["pose"]["err"] == pytest.approx(want_pose, rel=1e-5)
        assert rep["errors"][m]["mouth"]["err"] == pytest.approx(want_mouth, rel=1e-5)
        assert rep["errors"][m]["pose"]["nerr"] == pytest.approx(want_pose / rep["chance_scale"]["pose"])
    img = rep["image_vs_target"]
    assert all(np.isfinite(img[m]["psnr"]) for m in METHODS)
    # copying the driver of the same identity is not scored; copying the source vs a render of the source
    # identity is closer in SSIM than an untrained G0 (one iteration) -- a weak but real ordering check
    assert img["copy_source"]["ssim"] > img["g0_other_identity"]["ssim"]
    md = Path(rep["files"]["markdown"]).read_text()
    assert "G0, other identity" in md and "copy driver" in md
    assert Path(rep["files"]["json"]).is_file()


def test_stage1_probe_clear_errors(tmp_path, capsys):
    from pdfgc.eval.__main__ import main

    assert main(["stage1", "--ckpt", str(tmp_path / "nope.ckpt"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}}, bad)
    assert main(["stage1", "--ckpt", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "not a pdfgc training checkpoint" in capsys.readouterr().err
