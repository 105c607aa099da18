"""Preemption: SIGTERM / SIGUSR1 ask every rank to finish its step, save, and exit for a requeue.

SLURM sends SIGTERM (or a chosen signal, e.g. ``--signal=USR1@120``) before it kills a job. The
handler only records the request; the training loop checks it after each optimizer step, so a
checkpoint is never written in the middle of a step. Under DDP the ranks agree through an all-reduce
(MAX), so they all stop after the same step.
"""

from __future__ import annotations

import signal
import threading

import torch

from utils import dist

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL (sysexits.h): "try again later" -> requeue the job
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preemption:
    def __init__(self, device: torch.device) -> None:
        self.signum: int | None = None
        self.device = device
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.signum = signum

    def requested(self) -> bool:
        """True on every rank as soon as any rank received a preemption signal."""
        flag = self.signum is not None
        if dist.get_world_size() > 1:
            t = torch.tensor([int(flag)], device=self.device)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            flag = bool(t.item())
        return flag
