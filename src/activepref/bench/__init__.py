"""Side-by-side benchmarks of acquisition methods: metrics, a parallel resumable runner and a report.

Entry point: :func:`activepref.bench.runner.run_bench`.
"""

from activepref.bench.runner import BenchEvent, run_bench

__all__ = ["BenchEvent", "run_bench"]
