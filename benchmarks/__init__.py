"""Benchmark scripts (`python -m benchmarks.<name>`); they print timings and ratios, never assert on time."""
