"""Benchmark suite: each workload measured next to its raw floor in the same run.

Run with ``scripts/bench.sh`` (it enables pytest-benchmark, which the normal test run keeps
off); the results table lands in ``benchmarks/results.md``.
"""
