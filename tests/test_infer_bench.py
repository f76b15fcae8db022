"""`pytest -m benchmark -s`: runs benchmarks/bench_infer.py (full-size 224 px, 2 threads) and prints its table.
No timing assertions (DESIGN 8); it only checks that our frames equal the reference approach's."""
import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.benchmark
def test_bench_infer(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_infer", ROOT / "benchmarks" / "bench_infer.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    frames = os.environ.get("PDFGC_BENCH_FRAMES", "8")
    out = tmp_path / "bench.json"
    assert bench.main(["--frames", frames, "--batch-sizes", "1", "8", "16", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    with capsys.disabled():
        print(text)
    for line in text.splitlines():
        if "max |output difference|" in line:
            assert float(line.rsplit(" ", 1)[-1]) < 1e-3
