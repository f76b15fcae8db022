"""`pytest -m benchmark -s tests/test_ops_bench.py` prints the ops benchmark table (no timing assertions)."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.benchmark
def test_ops_benchmark_prints_table(capsys):
    if str(ROOT) not in sys.path:  # `benchmarks` lives at the repository root, next to tests/
        sys.path.insert(0, str(ROOT))
    from benchmarks.bench_ops import run

    table = run(threads=1, reps=5, batch=8)
    with capsys.disabled():
        print("\n" + table)
    # the table has one row per (shape, mode): 6 activation + 5 blur + 5 upsample shapes, fwd and fwd+bwd
    assert len([ln for ln in table.splitlines() if ln.startswith("| fused") or ln.startswith("| upfirdn")]) == 32
