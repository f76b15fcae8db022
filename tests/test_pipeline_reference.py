"""Pipeline.generate against an oracle of the reference loop (benchmarks/bench_infer.reference_generate: batches of
8, the pose|exp|eye slices encoded together per batch, grouped-convolution modulated convs, plain-PyTorch ops).
Our pipeline encodes each distinct driver frame once and uses the fused modulated convolution; frames must agree."""
import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_infer", ROOT / "benchmarks" / "bench_infer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _compare(model: str, n: int, lengths, tol: float):
    from pdfgc.pipeline import Pipeline

    bench = _bench()
    ours_models = bench._build("ours", model)
    ref_models = bench._build("reference", model)
    ref_models.load_state_dict(ours_models.state_dict())  # same weights, different conv implementation
    size = ours_models.image_size
    g = torch.Generator().manual_seed(1)
    src = torch.rand(1, 3, size, size, generator=g) * 2 - 1
    mel = torch.rand(n, 1, 80, 20, generator=g)
    drivers = [torch.rand(L, 3, size, size, generator=g) * 2 - 1 for L in lengths]
    with torch.inference_mode():
        ref = bench.reference_generate(ref_models, src, mel, *drivers, 8, torch.device("cpu"), {})
        ours = Pipeline(ours_models, device="cpu", batch_size=8).generate(src, mel, *drivers, controls=["all"])
    assert ours.shape == ref.shape == (n, 3, size, size)
    assert (ours - ref).abs().max().item() < tol


def test_matches_reference_loop_tiny():
    # 11 frames = batches of 8 + 3; drivers of 12, 9 and 30 frames (10, 7, 28 after the drop) loop differently
    _compare("tiny", 11, (12, 9, 30), 1e-5)


@pytest.mark.slow
def test_matches_reference_loop_full_size():
    _compare("pdfgc", 2, (4, 5, 6), 1e-4)
