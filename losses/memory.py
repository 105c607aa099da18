r"""A FIFO ring buffer of feature vectors kept as registered buffers (checkpointed with the loss).

Wrap-around follows the official banks (old lightly ``MemoryBankModule``, SNCLR §8.2, MoCo v2's queue):
with pointer p and a batch of n rows, if p + n >= size only the first size - p rows are written and the
pointer returns to 0 (the rest of the batch is dropped); otherwise all n rows are written at p and the
pointer moves to p + n. When size is a multiple of n (MoCo v2 asserts it) nothing is ever dropped.

Shapes: bank [size, dim]; enqueue takes [n, dim].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from utils import dist


class FeatureQueue(nn.Module):
    """Ring buffer of ``size`` rows of ``dim`` features.

    Args:
        size: number of rows.
        dim: feature dimension.
        init: "randn_normalized" (random unit rows, as MoCo v2 / SNCLR), "randn" or "zeros".
        gather: gather the batch from every rank (no gradient) before enqueueing, as MoCo v2 and
            solo-learn's NNCLR do; False keeps one bank per rank, as SNCLR does.
    """

    def __init__(self, size: int, dim: int, init: str = "randn_normalized", gather: bool = True):
        super().__init__()
        if size < 1:
            raise ValueError(f"queue size must be >= 1, got {size}")
        bank = torch.zeros(size, dim) if init == "zeros" else torch.randn(size, dim)
        if init == "randn_normalized":
            bank = F.normalize(bank, dim=1)
        self.register_buffer("bank", bank)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.gather = gather
        # a bank that is not gathered differs per rank: checkpoints keep every rank's copy
        self.per_rank_state = not gather
        # host copy of ptr: reading the buffer every enqueue would be a device->host sync
        self._ptr = 0

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._ptr = int(self.ptr)  # once per load, not per step

    @property
    def size(self) -> int:
        return self.bank.shape[0]

    @torch.no_grad()
    def enqueue(self, x: Tensor) -> None:
        """Write x [n, dim] at the pointer with the official wrap-around (see module docstring)."""
        if self.gather:
            x = dist.gather_no_grad(x, dim=0)
        x = x.detach().to(self.bank.dtype)
        ptr, n = self._ptr, x.shape[0]
        if ptr + n >= self.size:
            self.bank[ptr:] = x[: self.size - ptr]
            self._ptr = 0
        else:
            self.bank[ptr : ptr + n] = x
            self._ptr = ptr + n
        self.ptr.fill_(self._ptr)  # a fill kernel from a host scalar: no sync

    def snapshot(self) -> Tensor:
        """A copy of the bank as it is now (callers take it before the step's enqueue)."""
        return self.bank.clone()
