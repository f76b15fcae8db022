"""The shipped factor estimator ("the instrument", issue 12 item 1) and the code around it.

`test_shipped_estimator_meets_the_bars_on_held_out_identities` pins the instrument's accuracy: it loads the shipped
file and measures it on freshly rendered frames of the benchmark's held-out test identities (a render seed of its
own, fixed when the test was written, not the one the file's recorded figures used).
"""
import json
import math

import numpy as np
import pytest
import torch

from pdfgc.eval.estimator import FactorEstimator, load_estimator, round_to_half, save_estimator
from pdfgc.eval.instrument import (BARS, bars_table, heldout_sets, instrument_metrics, shipped_path,
                                   with_legacy_keys)

SIZE = 56  # the demo's size
SHIPPED = shipped_path(SIZE)
TEST_RENDER_SEED = 20261202  # fixed before measuring; the file's own figures used seed 1234


@pytest.fixture(scope="module")
def shipped():
    if not SHIPPED.is_file():
        pytest.fail(f"the shipped estimator {SHIPPED} is missing (reproduce it: python -m pdfgc.eval "
                    f"train-estimator --out {SHIPPED})")
    return load_estimator(SHIPPED)


def test_shipped_file_is_small_safe_and_describes_itself(shipped):
    assert SHIPPED.stat().st_size < 2_000_000
    assert shipped.image_size == SIZE and shipped.eye_branch and shipped.mouth_branch
    spec = shipped.spec
    for k in ("ids", "frames_per_id", "steps", "batch_size", "lr", "data_seed", "seed"):
        assert k in spec
    red = shipped.metrics["redrawn"]
    assert set(BARS) <= set(red) and "natural" in shipped.metrics
    # safetensors holds tensors only; what is not a tensor is JSON in its metadata
    with open(SHIPPED, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    assert "pdfgc_estimator" in header["__metadata__"]


def test_shipped_estimator_meets_the_bars_on_held_out_identities(shipped):
    """Issue 12 item 1: at 56 px the benchmark reads every factor from ground-truth renders of held-out identities:
    R^2 >= 0.9 for pose (yaw, pitch, roll), gaze (eyes at least half open), eye openness and mouth (opening, width);
    emotion accuracy >= 0.9 (neutral frames or intensity >= 0.4). ~1600 frames of the ~99 test identities."""
    held = heldout_sets(SIZE, frames_per_clip=8, natural_per_clip=0, seed=TEST_RENDER_SEED)
    m = instrument_metrics(shipped, *held["redrawn"])
    assert m["num_frames"] >= 1500 and m["gaze_frames"] >= 800 and m["emotion_frames"] >= 800
    got = {k: round(m[k], 3) for k in BARS}
    for k in ("pose", "gaze", "eye_open", "emotion_acc"):
        assert m[k] >= BARS[k], got
    assert m["mouth"] >= BARS["mouth"], got
    # the file's recorded figures (render seed 1234) agree with a fresh measurement (another seed)
    for k in BARS:
        assert abs(m[k] - shipped.metrics["redrawn"][k]) < 0.03, (k, m[k], shipped.metrics["redrawn"][k])


class _Oracle:
    """An 'estimator' whose prediction is given (for the metric definitions)."""

    def __init__(self, pred):
        self.pred = pred

    def predict(self, x):
        return self.pred


def _factors(n, rng):
    return {"pose": rng.normal(size=(n, 6)), "gaze": rng.normal(size=(n, 2)),
            "eye_open": np.repeat(rng.uniform(0, 1, (n, 1)), 2, 1), "mouth": rng.uniform(0, 1, (n, 2)),
            "emotion": rng.integers(0, 5, n), "emotion_intensity": rng.uniform(0, 1, n)}


def test_metric_definitions_gaze_mask_emotion_clear_frames_and_pose_claim():
    rng = np.random.default_rng(0)
    n = 400
    g = _factors(n, rng)
    g["emotion_intensity"][g["emotion"] == 0] = 0.0
    pred = {k: v.copy() for k, v in g.items()}
    pred["emotion_prob"] = np.eye(5)[g["emotion"]]
    # gaze wrong only where an eye is less than half open: excluded from the claim
    closed = g["eye_open"].min(1) < 0.5
    pred["gaze"][closed] = 5.0
    # translation wrong: reported, not claimed
    pred["pose"][:, 3:] = 0.0
    # emotion wrong only on ramping frames (an emotion below intensity 0.4)
    ramp = (g["emotion"] > 0) & (g["emotion_intensity"] < 0.4)
    pred["emotion"] = np.where(ramp, 0, g["emotion"])
    frames = np.zeros((n, SIZE, SIZE, 3), np.uint8)
    m = instrument_metrics(_Oracle(pred), frames, g)
    assert m["pose"] == pytest.approx(1.0) and m["pose_cols"][3] < 0.1
    assert m["gaze"] == pytest.approx(1.0) and m["gaze_frames"] == int((~closed).sum())
    assert m["eye_open"] == pytest.approx(1.0) and m["mouth"] == pytest.approx(1.0)
    assert m["emotion_acc"] == pytest.approx(1.0) and m["emotion_acc_all"] < 1.0
    assert m["emotion_frames"] == int((~ramp).sum())
    bins = m["emotion_acc_bins"]
    assert bins["0.4-0.7"][0] == 1.0 and bins["0.2-0.4"][0] == 0.0 and bins["0-0"][0] == 1.0
    rows = {r[0]: r for r in bars_table(m)}
    assert all(r[3] for r in rows.values())
    # predicting the mean scores R^2 = 0
    pred2 = dict(pred, mouth=np.broadcast_to(g["mouth"].mean(0), g["mouth"].shape))
    assert instrument_metrics(_Oracle(pred2), frames, g)["mouth"] == pytest.approx(0.0, abs=1e-9)


def _small(mouth=True):
    torch.manual_seed(0)
    return FactorEstimator(SIZE, width=8, mouth_branch=mouth, branch_channels=8).eval()


def test_safetensors_round_trip_full_and_half(tmp_path):
    est = _small()
    est.metrics = {"redrawn": {"pose": 0.5}}
    est.spec = {"steps": 3}
    x = torch.rand(3, 3, SIZE, SIZE) * 2 - 1
    p = save_estimator(est, tmp_path / "e.safetensors")
    again = load_estimator(p)
    assert again.mouth_branch and again.branch_channels == 8
    assert again.metrics == est.metrics and again.spec == est.spec
    np.testing.assert_array_equal(again.predict(x)["pose"], est.predict(x)["pose"])
    ph = save_estimator(est, tmp_path / "h.safetensors", half=True)
    assert ph.stat().st_size < 0.6 * p.stat().st_size
    half = load_estimator(ph)
    round_to_half(est)  # what the half file holds, exactly
    np.testing.assert_array_equal(half.predict(x)["pose"], est.predict(x)["pose"])
    assert half.mean.dtype == torch.float32


def test_loading_refuses_malformed_files_with_a_clear_error(tmp_path):
    from safetensors.torch import save_file

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not a safetensors file")
    with pytest.raises(ValueError, match="garbage.safetensors: not a readable safetensors file"):
        load_estimator(garbage)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(ValueError, match="without pdfgc estimator metadata"):
        load_estimator(plain)
    badjson = tmp_path / "badjson.safetensors"
    save_file({"w": torch.zeros(2)}, str(badjson), metadata={"pdfgc_estimator": "{not json"})
    with pytest.raises(ValueError, match="not valid JSON"):
        load_estimator(badjson)
    # weights of one architecture declared as another
    est = _small(mouth=True)
    p = save_estimator(est, tmp_path / "e.safetensors")
    from safetensors import safe_open

    with safe_open(str(p), "pt") as f:
        meta = json.loads(f.metadata()["pdfgc_estimator"])
        state = {k: f.get_tensor(k) for k in f.keys()}
    meta["mouth_branch"] = False
    lie = tmp_path / "lie.safetensors"
    save_file(state, str(lie), metadata={"pdfgc_estimator": json.dumps(meta)})
    with pytest.raises(ValueError, match="do not fit the architecture"):
        load_estimator(lie)
    meta["format"] = 99
    future = tmp_path / "future.safetensors"
    save_file(state, str(future), metadata={"pdfgc_estimator": json.dumps(meta)})
    with pytest.raises(ValueError, match="not a pdfgc estimator file"):
        load_estimator(future)


def test_get_estimator_uses_the_shipped_file_by_default(shipped, tmp_path):
    from pdfgc.eval.benchmark import get_estimator

    est, path = get_estimator(None, tmp_path, SIZE, log=None)
    assert path == SHIPPED and est.mouth_branch
    assert not (tmp_path / "estimator.pt").exists()  # nothing trained
    # another data seed: the shipped file's held-out figures do not describe it -> the per-run file
    other = _small()
    other.spec = {"data_seed": 7}
    save_estimator(other, tmp_path / "estimator.pt")
    est2, path2 = get_estimator(None, tmp_path, SIZE, data_seed=7, log=None)
    assert path2 == tmp_path / "estimator.pt"
    # an explicit path still wins
    est3, path3 = get_estimator(tmp_path / "estimator.pt", tmp_path, SIZE, log=None)
    assert path3 == tmp_path / "estimator.pt"


def test_report_prints_the_instrument_table(shipped):
    from pdfgc.eval.report import estimator_markdown

    lines = "\n".join(estimator_markdown({"path": str(SHIPPED), "held_out": shipped.metrics}))
    for k in BARS:
        assert k in lines
    assert "bar" in lines and "met" in lines and "intensity bin" in lines
    # after a JSON round trip (report.json) as well
    again = json.loads(json.dumps(shipped.metrics))
    assert estimator_markdown({"path": None, "held_out": again})
    # an on-the-fly estimator (older metrics) gets the same columns
    legacy = "\n".join(estimator_markdown({"path": None, "held_out": {"r2": {"pose": 0.95, "mouth": 0.5},
                                                                       "emotion_acc": 0.91}}))
    assert "**no**" in legacy and "yes" in legacy


def test_with_legacy_keys_feeds_the_benchmark_columns():
    m = {"redrawn": {"pose": 0.9, "gaze": 0.8, "eye_open": 0.7, "mouth": 0.6, "emotion_intensity": 0.5,
                     "emotion_acc": 0.95}, "natural": {}}
    from pdfgc.eval.report import estimator_r2

    r2 = estimator_r2({"estimator": {"held_out": with_legacy_keys(m)}})
    assert r2 == {"mouth": 0.6, "pose": 0.9, "gaze": 0.8, "blink": 0.7, "emotion": 0.5}


def test_train_estimator_cli_writes_a_loadable_file_and_errors_in_one_line(tmp_path, capsys):
    from pdfgc.eval.__main__ import main

    out = tmp_path / "e.safetensors"
    assert main(["train-estimator", "--out", str(out), "--ids", "30", "--frames-per-id", "2", "--steps", "4",
                 "--batch-size", "8", "--width", "8", "--branch-channels", "8", "--checkpoint-every", "0"]) == 0
    est = load_estimator(out)
    assert est.spec["steps"] == 4 and est.spec["ids"] == 30 and est.spec["half"] is True
    assert math.isfinite(est.metrics["redrawn"]["pose"])
    printed = capsys.readouterr().out
    assert "mouth" in printed and "bar 0.9" in printed
    assert main(["train-estimator", "--out", str(tmp_path / "e.pt")]) == 2
    assert main(["train-estimator", "--out", str(out), "--steps", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "error: --out" in err and "error: --steps must be >= 1" in err


def test_benchmark_loads_the_shipped_estimator_and_reports_its_accuracy(shipped, tmp_path):
    """The demo's path: `run_synthetic_benchmark(..., estimator=None)` trains nothing at 56 px and prints the
    instrument's held-out table in report.md."""
    from pdfgc.eval.benchmark import run_synthetic_benchmark
    from pdfgc.models.bundle import PDFGCModels

    torch.manual_seed(0)
    models = PDFGCModels.from_config("tiny").eval()
    rep = run_synthetic_benchmark(models, tmp_path, estimator=None, clips=2, frames=4, progress=False, log=None)
    assert rep["estimator"]["path"] == str(SHIPPED)
    assert not (tmp_path / "estimator.pt").exists()
    md = (tmp_path / "report.md").read_text()
    assert "### Instrument: factor estimator" in md and "emotion_acc (acc)" in md
    assert f"{shipped.metrics['redrawn']['mouth']:.3f}" in md
