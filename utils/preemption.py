"""Preemption: SIGTERM / SIGUSR1 ask every rank to finish its step, save, and exit for a requeue.

SLURM sends SIGTERM (or a chosen signal, e.g. ``--signal=USR1@120``) before it kills a job. The
handler only records the request; the training loop reads it after each optimizer step, so a
checkpoint is never written in the middle of a step. The request is a persistent device tensor that
joins the step's one device->host read (utils.training.TrainStep), all-reduced (MAX) under DDP, so
every rank stops after the same step. The handlers are installed first thing in a worker, so a
signal during data or model set-up is not lost either.
"""

from __future__ import annotations

import signal
import threading

import torch

from utils import dist

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL (sysexits.h): "try again later" -> requeue the job
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preemption:
    def __init__(self, device: torch.device | None = None) -> None:
        self.signum: int | None = None
        self.device = device
        self._flag: torch.Tensor | None = None
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.signum = signum

    def flag(self, device: torch.device) -> torch.Tensor:
        """1.0 if this rank received a signal, else 0.0, as a device scalar (fill_ from a host value:
        a kernel launch, not a sync); the caller reads it together with its other flags."""
        if self._flag is None or self._flag.device != device:
            self._flag = torch.zeros((), device=device)
        return self._flag.fill_(float(self.signum is not None))

    def requested(self) -> bool:
        """True on every rank as soon as any rank received a preemption signal (a read of its own:
        the training loop folds the flag into its step's read instead)."""
        flag = self.flag(self.device or torch.device("cpu"))
        if dist.get_world_size() > 1:
            flag = flag.clone()
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())
