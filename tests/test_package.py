"""The package layout promises of DESIGN.md 1."""
import subprocess
import sys

from pdfgc import constants as C


def test_constants_are_consistent():
    # SPEC 1.4: 16000 / 160 / 25 = 4 mel frames per video frame; 5-frame window = 20 mel frames
    assert C.MEL_PER_FRAME * C.HOP_LENGTH * C.FPS == C.SAMPLE_RATE
    assert C.MEL_WINDOW == 20
    # SPEC 1.8: [2048 | 500 | 30 | 6 | 6] = 2590
    assert C.STYLE_DIM == 2590 and C.MOTION_DIM == 542
    assert sorted(C.GAZE_DIMS + C.BLINK_DIMS) == list(range(C.EYE_DIM))


def test_ops_import_name_is_namespaced():
    import pdfgc_ops

    assert hasattr(pdfgc_ops, "upfirdn2d") and hasattr(pdfgc_ops, "fused_leaky_relu")


def test_pipeline_import_stays_light():
    code = ("import sys, pdfgc.pipeline; bad=[m for m in ('lightning','pytorch_lightning','hydra','wandb') "
            "if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
