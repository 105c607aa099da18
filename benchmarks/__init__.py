"""Timing scripts (never asserted in tests). `python -m benchmarks.run_all [--quick]` runs them all
and rewrites benchmarks/RESULTS.md; each `python -m benchmarks.bench_*` also runs alone."""

import os

# Before torch loads libgomp: OpenMP threads that spin while waiting made 2-thread ops many times
# slower whenever another process held the cores; sleeping waiters cost little when the machine
# is idle. Set OMP_WAIT_POLICY=ACTIVE to measure the default.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
