"""The optimizer step of main_pretrain.py: mixed precision, gradient accumulation, the non-finite
guard and the loss-scale overflow count, with one device->host read per step.

One step = N micro-batches (``--accum-steps``): each runs forward, loss and backward on its own
micro-batch (BatchNorm, the loss and its batch statistics see the micro-batch, as PyTorch Lightning's
``accumulate_grad_batches``), the loss divided by N so that the summed gradient is the mean of the N
micro-batch gradients; DDP synchronises only on the last backward (``no_sync`` on the others).

Host syncs: the finite flags of the loss and the gradient, the preemption flag and the overflow flag
are stacked into one small device tensor, all-reduced (MAX) under DDP, and read back once. With fp16
the GradScaler reads its own ``found_inf`` inside ``scaler.step`` (the one other sync per step).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Iterator
from typing import Any, Callable

import torch
from torch import Tensor, nn

from utils import dist

DEFAULT_INIT_SCALE = 2.0**16  # torch.amp.GradScaler's default


def amp_dtype(args: Any) -> torch.dtype | None:
    """None (fp32), torch.bfloat16 or torch.float16 from --amp and the device (fp16 runs on the
    CPU too, with a CPU GradScaler: slow, but it is how the fp16 path is tested without a GPU)."""
    choice = args.amp
    if choice == "auto":
        choice = "fp16" if args.device.type == "cuda" else "off"
    if choice == "bf16-native":  # bf16 only where it is fast; emulated bf16 is far slower than fp32
        choice = "bf16" if native_bf16(args.device) else "off"
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[choice]


def native_bf16(device: torch.device) -> bool:
    """CUDA, or a CPU with bf16 units (AVX512-BF16 or AMX): where bf16 autocast is fast."""
    return device.type == "cuda" or cpu_has_bf16_units()


@functools.cache  # amp_context asks at every micro-batch: read /proc/cpuinfo once per process
def cpu_has_bf16_units() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        flags = ""
    return "avx512_bf16" in flags or "amx_bf16" in flags


def amp_context(args: Any) -> contextlib.AbstractContextManager:
    dtype = amp_dtype(args)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=args.device.type, dtype=dtype)


def build_scaler(args: Any) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 only (bf16 has fp32's range and needs none); --amp-init-scale sets
    its first scale."""
    if amp_dtype(args) != torch.float16:
        return None
    init_scale = getattr(args, "amp_init_scale", DEFAULT_INIT_SCALE)
    return torch.amp.GradScaler(args.device.type, init_scale=init_scale)


class NonFiniteError(RuntimeError):
    """Raised for a non-finite step in --on-nonfinite skip mode (the caller skips and counts)."""


def nonfinite_message(what: str, metrics: dict[str, Tensor], epoch: int, step: int) -> str:
    """'non-finite loss at epoch E step S (non-finite terms: ...)'; reads the metrics (an error
    path: the extra syncs do not matter)."""
    bad = [name for name, v in metrics.items() if not bool(torch.isfinite(v).all())]
    terms = f" (non-finite terms: {', '.join(bad)})" if bad else ""
    return f"non-finite {what} at epoch {epoch} step {step}{terms}"


def nonfinite_stop(message: str, mode: str) -> None:
    """Raise NonFiniteError (skip mode) or stop the run with a one-line message."""
    if mode == "skip":
        raise NonFiniteError(message)
    raise SystemExit(f"error: {message}; the last checkpoint is intact. Lower --lr, use --amp off, "
                     "or pass --on-nonfinite skip")


def check_finite(loss: Tensor, grad_norm: Tensor, metrics: dict[str, Tensor], epoch: int,
                 step: int, mode: str) -> None:
    """Stop (SystemExit) or raise NonFiniteError when the loss or the gradient is not finite (a
    standalone check for scripts without TrainStep, e.g. benchmarks)."""
    loss_ok, grad_ok = torch.stack([torch.isfinite(loss), torch.isfinite(grad_norm)]).tolist()
    if not (loss_ok and grad_ok):
        nonfinite_stop(nonfinite_message("loss" if not loss_ok else "gradient", metrics, epoch,
                                         step), mode)


def micro_batches(loader: Iterable, accum_steps: int) -> Iterator[list]:
    """Groups of `accum_steps` consecutive loader batches: the micro-batches of one step."""
    group: list = []
    for batch in loader:
        group.append(batch)
        if len(group) == accum_steps:
            yield group
            group = []


@contextlib.contextmanager
def epoch_batches(loader: Iterable, accum_steps: int) -> Iterator[Iterator[list]]:
    """micro_batches(loader, accum_steps) for one epoch. On an exit by exception (preemption,
    non-finite stop) the loader's persistent workers are shut down first: they ignore SIGTERM, and
    the interpreter's exit would SIGTERM them and then wait for them forever."""
    try:
        yield micro_batches(loader, accum_steps)
    except BaseException:
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        raise


class OverflowCounter:
    """fp16 loss-scale overflows: steps the GradScaler skipped (its scale went down), in total and
    in a row; a run stops after --max-overflows in a row (the scale keeps halving towards 0)."""

    def __init__(self, max_in_a_row: int, total: int = 0):
        self.max_in_a_row, self.total, self.in_a_row = max_in_a_row, total, 0

    def record(self, overflowed: bool, epoch: int, step: int, scale: Callable[[], float]) -> None:
        self.in_a_row = self.in_a_row + 1 if overflowed else 0
        self.total += int(overflowed)
        if self.max_in_a_row and self.in_a_row >= self.max_in_a_row:
            raise SystemExit(f"error: {self.in_a_row} fp16 overflows in a row (steps skipped by the "
                             f"GradScaler) up to epoch {epoch} step {step}, loss scale now "
                             f"{scale():.3g}; lower --lr, use --amp bf16, or raise --max-overflows")


def grad_norm_of(parameters: list[nn.Parameter], max_norm: float) -> Tensor:
    """Total gradient norm, clipped to max_norm when max_norm > 0 (0: only measured)."""
    if max_norm > 0:
        return nn.utils.clip_grad_norm_(parameters, max_norm, foreach=True)
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return nn.utils.get_total_norm(grads, foreach=True)


class TrainStep:
    """One optimizer step over N micro-batches of (views, labels), already on the device.

    Args:
        forward: the (DDP-wrapped, maybe compiled) model: views -> ViewOutputs.
        model: the bare model (parameters, buffers, backbone for the probe).
        no_sync: DDP's ``no_sync`` (None without DDP).
        preemption: utils.preemption.Preemption (its flag joins the one host read), or None.
        overflows: fp16 overflows counted so far (a resumed run continues the count).
        prepare: (loader batch, labels) -> (views, labels) on the device, applied lazily to each
            micro-batch right before its forward (default: as given).
    """

    def __init__(self, forward: Callable, model: nn.Module, criterion: nn.Module,
                 optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None, args: Any,
                 probe: Any = None, no_sync: Callable | None = None, preemption: Any = None,
                 overflows: int = 0, prepare: Callable | None = None):
        self.forward, self.model, self.criterion = forward, model, criterion
        self.optimizer, self.scaler, self.args = optimizer, scaler, args
        self.probe, self.no_sync, self.preemption = probe, no_sync, preemption
        self.prepare = prepare or (lambda x, y: (x, y))
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.buffers = [*model.buffers(), *criterion.buffers()]  # BN statistics, queues, banks
        self.overflows = OverflowCounter(getattr(args, "max_overflows", 0), overflows)
        self.nonfinite_skipped = 0

    def _accumulate(self, batches: list) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """Forward + backward of every micro-batch; returns the mean loss and metrics."""
        n = len(batches)
        loss_sum, metric_sums, probe_metrics = None, {}, {}
        for index, batch in enumerate(batches):
            views, y = self.prepare(*batch)
            last = index == n - 1
            sync = self.no_sync() if self.no_sync and not last else contextlib.nullcontext()
            with sync:
                with amp_context(self.args):
                    if self.probe is not None:
                        probe_metrics = self.probe.step(self.model.backbone, views.pop(), y)
                    out = self.forward(views)
                    loss, metrics = self.criterion(out, labels=y)
                scaled = loss / n  # the mean of the micro-batch gradients
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
            for name, value in metrics.items():
                metric_sums[name] = metric_sums.get(name, 0) + value.detach()
        return loss_sum / n, {k: v / n for k, v in metric_sums.items()}, probe_metrics

    def _read_flags(self, flags: list[Tensor]) -> list[bool]:
        """The one device->host read of the step: [loss bad, grad bad or overflow, preempt]."""
        device = flags[0].device
        preempt = self.preemption.flag(device) if self.preemption is not None else None
        stacked = torch.stack([f.to(device=device, dtype=torch.float32).reshape(()) for f in
                               flags + ([preempt] if preempt is not None else [])])
        if dist.get_world_size() > 1:  # a rank-local non-finite loss stops every rank
            torch.distributed.all_reduce(stacked, op=torch.distributed.ReduceOp.MAX)
        values = [v > 0 for v in stacked.tolist()]
        return values + [False] * (3 - len(values))

    def __call__(self, batches: list, epoch: int, step: int) -> dict[str, Any] | None:
        """Run the step. Returns {loss, grad_norm, metrics, preempt, images}, or None when the step
        was skipped (non-finite in skip mode, or an fp16 overflow the scaler skipped). Stops with a
        one-line SystemExit on a non-finite loss (stop mode) or too many overflows in a row."""
        skip_mode = self.args.on_nonfinite == "skip"
        kept = [b.clone() for b in self.buffers] if skip_mode else []
        self.optimizer.zero_grad(set_to_none=True)
        images = sum(len(y) for _, y in batches)
        loss, metrics, probe_metrics = self._accumulate(batches)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = grad_norm_of(self.params, self.args.clip_grad)
        try:
            if self.scaler is None:  # check before the update: a NaN never reaches the weights
                loss_bad, grad_bad, preempt = self._read_flags(
                    [~torch.isfinite(loss), ~torch.isfinite(grad_norm)])
                if loss_bad or grad_bad:
                    nonfinite_stop(nonfinite_message("loss" if loss_bad else "gradient", metrics,
                                                     epoch, step), self.args.on_nonfinite)
                self.optimizer.step()
                overflowed = False
            else:  # the scaler skips inf/NaN gradients itself and always updates its scale
                scale_before = self.scaler._scale.clone()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                loss_bad, overflowed, preempt = self._read_flags(
                    [~torch.isfinite(loss), self.scaler._scale < scale_before])
                if loss_bad:  # the scaler skipped the update; the forward still wrote buffers
                    nonfinite_stop(nonfinite_message("loss", metrics, epoch, step),
                                   self.args.on_nonfinite)
                self.overflows.record(overflowed, epoch, step, self.scaler.get_scale)
        except NonFiniteError as skip:
            for b, old in zip(self.buffers, kept, strict=True):
                b.copy_(old)
            self.nonfinite_skipped += 1
            print(f"warning: {skip}; step skipped ({self.nonfinite_skipped} so far)")
            return {"skipped": True, "preempt": self._preempt_after_skip(), "images": 0}
        return {"skipped": overflowed, "preempt": preempt, "images": images,
                "metrics": {"loss": loss, "grad_norm": grad_norm, **metrics, **probe_metrics}}

    def status(self) -> str:
        """' overflows N scale S' under fp16 (read at print time), else ''."""
        if self.scaler is None:
            return ""
        return f" overflows {self.overflows.total} scale {self.scaler.get_scale():.3g}"

    def _preempt_after_skip(self) -> bool:
        """A skipped step still honours a preemption request (read once more: a rare path)."""
        if self.preemption is None:
            return False
        return self._read_flags([torch.zeros(()), torch.zeros(())])[2]


def split_batch(args: Any) -> None:
    """args.batch_size_per_gpu = the micro-batch one process holds at once (-b / (N x world));
    a one-line error when -b does not split."""
    parts = args.world_size * args.accum_steps
    if args.accum_steps < 1 or args.batch_size % parts:
        raise SystemExit(f"error: -b {args.batch_size} is not divisible by the {args.world_size} "
                         f"processes x {args.accum_steps} accumulation steps; pick a multiple of "
                         f"{parts}")
    args.batch_size_per_gpu = args.batch_size // parts
