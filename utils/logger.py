"""Logging: averaged metrics per epoch, one JSON line per epoch, optional TensorBoard scalars."""

from __future__ import annotations

import json
import os
from collections import defaultdict

import torch

from utils.misc import git_sha


def log_run_args(args, main_process: bool) -> None:
    """Print the commit and every argument, and (main process) save them as args.json."""
    os.makedirs(args.results_dir, exist_ok=True)
    print(f"git {git_sha()}\n" + "\n".join(f"{k}: {v}" for k, v in sorted(vars(args).items())))
    if main_process:
        with open(os.path.join(args.results_dir, "args.json"), "w") as f:
            json.dump(vars(args), f, indent=1, default=str)


class MetricAverager:
    """Accumulates detached tensors on the device; reads them back (one sync) only when asked."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = defaultdict(int)

    def update(self, metrics: dict[str, torch.Tensor]) -> None:
        for name, value in metrics.items():
            value = value.detach().float()
            self.sums[name] = self.sums[name] + value if name in self.sums else value.clone()
            self.counts[name] += 1

    def averages(self) -> dict[str, float]:
        if not self.sums:
            return {}
        names = list(self.sums)
        # note: a single device->host copy for all metrics
        values = torch.stack([self.sums[n] / self.counts[n] for n in names]).cpu().tolist()
        return dict(zip(names, values))


class RunLogger:
    """log.txt (JSON lines, DINO/MAE style) and TensorBoard, written by rank 0 only."""

    def __init__(self, results_dir: str, enabled: bool, tensorboard: bool = True,
                 filename: str = "log.txt"):
        self.enabled = enabled
        self.path = os.path.join(results_dir, filename)
        self.writer = None
        if enabled:  # an evaluation into a new directory must not fail at its first log line
            os.makedirs(results_dir, exist_ok=True)
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(os.path.join(results_dir, "tb"))
            except ImportError:  # tensorboard is optional
                self.writer = None

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)

    def epoch(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.scalars({k: v for k, v in record.items() if isinstance(v, float)}, record["epoch"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def format_metrics(values: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.4g}" for k, v in values.items())
