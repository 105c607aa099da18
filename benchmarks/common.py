"""Shared by the benchmarks: machine record, timer, matmul bound, Markdown tables, JSON output."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (platform.processor() is often empty on Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peer_version() -> str | None:
    """lightly's version, or None when requirements-bench.txt is not installed."""
    try:
        import lightly
    except ImportError:
        return None
    return lightly.__version__


def environment() -> dict[str, Any]:
    """What every result file records: device, versions, CPU, threads, date and load."""
    cuda = torch.cuda.is_available()
    return {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "torch": torch.__version__,
        "lightly": peer_version(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        # the machine may be shared: the load average says how noisy the numbers are
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_call(
    fn: Callable[[], Any], repeats: int = 5, warmup: int = 1, min_seconds: float = 0.0
) -> dict[str, float]:
    """Wall time of fn() in ms: median, min and mean over `repeats` calls (at least `min_seconds`
    of them), after `warmup` untimed calls. The median resists other jobs on a shared machine."""
    for _ in range(warmup):
        fn()
    sync()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    ms = [1e3 * t for t in times]
    return {
        "median_ms": statistics.median(ms),
        "min_ms": min(ms),
        "mean_ms": statistics.fmean(ms),
        "n": len(ms),
    }


def matmul_flops(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Achieved FLOP/s of an n x n x n matmul: the practical compute bound of this device."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    t = time_call(lambda: a @ b, repeats=repeats, warmup=2)
    return 2 * n**3 / (t["min_ms"] / 1e3)  # min: the bound, not a typical run


def fmt(value: Any) -> str:
    """A table cell: 3 significant digits for floats, '-' for missing values."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        # 3 significant digits below 1000 (999.6 would print as 1e+03), whole numbers above
        return f"{value:.3g}" if abs(value) < 999.5 else f"{value:,.0f}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub Markdown table of `rows` restricted to `columns` (in that order)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def ratio(ours: float | None, peer: float | None) -> float | None:
    return ours / peer if ours and peer else None


def write_json(name: str, payload: dict[str, Any]) -> Path:
    """benchmarks/results/<name>.json with the environment record added."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps({"environment": environment(), **payload}, indent=1, default=str))
    return path


def report(title: str, tables: list[tuple[str, str]], notes: Sequence[str] = ()) -> str:
    """A Markdown section: `## title`, notes as a bullet list, then each `### caption` + table."""
    parts = [f"## {title}", ""]
    parts += [f"- {n}" for n in notes] + ([""] if notes else [])
    for caption, table in tables:
        parts += [f"### {caption}", "", table, ""]
    return "\n".join(parts)
