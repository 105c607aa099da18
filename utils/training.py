"""Mixed precision and the non-finite guard of the training step."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor


def amp_dtype(args: Any) -> torch.dtype | None:
    """None (fp32), torch.bfloat16 or torch.float16 from --amp and the device."""
    on_cuda = args.device.type == "cuda"
    choice = args.amp
    if choice == "auto":
        choice = "fp16" if on_cuda else "off"
    if choice == "fp16" and not on_cuda:
        raise SystemExit("error: --amp fp16 needs CUDA; use --amp bf16 on CPU")
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[choice]


def amp_context(args: Any) -> contextlib.AbstractContextManager:
    dtype = amp_dtype(args)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=args.device.type, dtype=dtype)


def build_scaler(args: Any) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 only (bf16 has fp32's range and needs none)."""
    return torch.amp.GradScaler("cuda") if amp_dtype(args) == torch.float16 else None


class NonFiniteError(RuntimeError):
    """Raised for a non-finite step in --on-nonfinite skip mode (the caller skips and counts)."""


def check_finite(loss: Tensor, grad_norm: Tensor, metrics: dict[str, Tensor], epoch: int,
                 step: int, mode: str) -> None:
    """Stop (SystemExit) or raise NonFiniteError when the loss or the gradient is not finite.

    The message names the step and every non-finite loss term among `metrics`. Under DDP all ranks
    see the same all-reduced gradient norm, so they agree on skipping.
    """
    # note: one device->host sync per step; it is what makes a NaN stop before the optimizer step
    if bool(torch.isfinite(loss)) and bool(torch.isfinite(grad_norm)):
        return
    bad = [name for name, v in metrics.items() if not bool(torch.isfinite(v).all())]
    what = "loss" if not bool(torch.isfinite(loss)) else "gradient"
    terms = f" (non-finite terms: {', '.join(bad)})" if bad else ""
    message = f"non-finite {what} at epoch {epoch} step {step}{terms}"
    if mode == "skip":
        raise NonFiniteError(message)
    raise SystemExit(f"error: {message}; the last checkpoint is intact. Lower --lr, use --amp off, "
                     "or pass --on-nonfinite skip")
