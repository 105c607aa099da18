"""Logging: averaged metrics per epoch, one JSON line per epoch, optional TensorBoard scalars."""

from __future__ import annotations

import datetime
import json
import os
import time
from collections import defaultdict

import torch

from utils.misc import git_sha


def log_run_args(args, main_process: bool) -> None:
    """Save every argument as args.json (main process); print them only with --verbose."""
    os.makedirs(args.results_dir, exist_ok=True)
    print(f"git {git_sha()}; arguments in {os.path.join(args.results_dir, 'args.json')}")
    if getattr(args, "verbose", False):
        print("\n".join(f"{k}: {v}" for k, v in sorted(vars(args).items())))
    if main_process:
        with open(os.path.join(args.results_dir, "args.json"), "w") as f:
            json.dump(vars(args), f, indent=1, default=str)


def run_summary(args, iters: int) -> str:
    """What a run is, in three lines: method and model, data, optimisation and where it goes."""
    classes = len(getattr(args, "class_names", None) or []) or "?"
    return (f"run: {args.method}, {args.arch}, {args.dataset} ({getattr(args, 'pretrain_images', '?')} "
            f"images, {classes} classes, {args.img_size} px, {args.num_views} views)\n"
            f"     global batch {args.batch_size} ({args.world_size} process(es) x "
            f"{args.batch_size_per_gpu} x {args.accum_steps} accumulation), lr {args.lr_effective:.3g} "
            f"(= {args.lr:g} x {args.batch_size} / 256), {args.epochs} epochs x {iters} steps\n"
            f"     device {args.device}, amp {args.amp}, results in {args.results_dir}")


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


class Progress:
    """The DeiT/DINO MetricLogger line every `print_freq` steps: step/total, ETA, the mean loss and
    terms since the last line, lr, img/s, data and step time (a data-bound run shows data close to
    step), max memory on CUDA; TensorBoard scalars every `log_freq` steps. Metrics stay on the
    device between reads: one device-to-host copy per line or scalar write, none per step."""

    def __init__(self, iters: int, batch: int, print_freq: int, log_freq: int, logger: RunLogger,
                 device: torch.device):
        self.iters, self.batch, self.print_freq, self.log_freq = iters, batch, print_freq, log_freq
        self.logger, self.cuda = logger, device.type == "cuda"
        self.window, self.data_s, self.step_s, self.steps = MetricAverager(), 0.0, 0.0, 0
        self.last = self.ready = time.time()

    def batch_ready(self) -> None:
        self.ready = time.time()

    def step_done(self, epoch: int, i: int, it: int, metrics: dict, scalars: dict,
                  status=lambda: "") -> None:
        now = time.time()
        self.data_s, self.step_s = self.data_s + self.ready - self.last, self.step_s + now - self.ready
        self.last, self.steps = now, self.steps + 1
        self.window.update(metrics)
        printing = self.print_freq and i % self.print_freq == 0
        logging = self.log_freq and it % self.log_freq == 0 and self.logger.writer is not None
        if not (printing or logging):
            return
        means, seconds = self.window.averages(), max(self.data_s + self.step_s, 1e-9)
        speed = {"img_per_s": self.steps * self.batch / seconds,
                 "data_s": self.data_s / self.steps, "step_s": self.step_s / self.steps}
        if logging:
            self.logger.scalars({f"step/{k}": v for k, v in {**means, **scalars, **speed}.items()},
                                it)
        if printing:
            eta = datetime.timedelta(seconds=int(seconds / self.steps * (self.iters - i - 1)))
            memory = (f"  mem {torch.cuda.max_memory_allocated() / 2**20:.0f}MB" if self.cuda
                      else "")
            print(f"epoch {epoch} [{i}/{self.iters}]  eta {eta}  lr {scalars['lr']:.3g}  "
                  f"{speed['img_per_s']:.0f} img/s  data {speed['data_s']:.3f}s  step "
                  f"{speed['step_s']:.3f}s{memory}{status()}  {format_metrics(means)}")
        self.window, self.data_s, self.step_s, self.steps = MetricAverager(), 0.0, 0.0, 0


def format_metrics(values: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.4g}" for k, v in values.items())
