"""A shuffling sampler with DistributedSampler's semantics that can start mid-epoch (exact resume)."""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    """Shuffle with seed + epoch, shard over ranks as DistributedSampler does, skip `start` samples.

    With drop_last the permutation is cut to a multiple of world_size; otherwise it is padded by
    repeating its head (as DistributedSampler does) so every rank gets the same count.
    """

    def __init__(self, num_samples: int, shuffle: bool = True, seed: int = 0, rank: int = 0,
                 world_size: int = 1, drop_last: bool = True, encode_epoch: bool = False):
        if num_samples < world_size:
            raise ValueError(f"dataset of {num_samples} samples is smaller than the world size "
                             f"{world_size}")
        self.num_samples, self.shuffle, self.seed = num_samples, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch, self.start = 0, 0
        # yield epoch * num_samples + index, so a dataset can seed each sample's augmentation from
        # (seed, epoch, index) alone: exact resume whatever the worker count or start offset
        self.encode_epoch = encode_epoch

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's permutation; `start` = samples of this rank already consumed."""
        self.epoch, self.start = epoch, start

    def _indices(self) -> torch.Tensor:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_samples, generator=g)
        else:
            order = torch.arange(self.num_samples)
        if self.drop_last:
            order = order[: self.num_samples - self.num_samples % self.world_size]
        else:
            pad = (-self.num_samples) % self.world_size
            order = torch.cat([order, order[:pad]])
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        indices = self._indices()[self.start :]
        if self.encode_epoch:
            indices = indices + self.epoch * self.num_samples
        return iter(indices.tolist())

    def __len__(self) -> int:
        return len(self._indices()) - self.start
