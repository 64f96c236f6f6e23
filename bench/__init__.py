"""Benchmarks of shoal against Ray and multiprocessing: `python -m bench` (see bench/README.md).

Kept free of imports: containers import this package when they load `bench.workloads`.
"""
