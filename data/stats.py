"""Per-channel mean and std of a dataset's images (--compute-stats N), for --mean/--std.

Pixels are pooled over a seeded random sample of N training images at their stored size, in [0, 1]
after decoding to 8-bit RGB (so grayscale images give three equal channels).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from data.subsets import subset_indices


def compute_stats(dataset: Any, n: int, seed: int = 0, workers: int = 0
                  ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel of n seeded-random images of a dataset yielding uint8 [3, H, W]."""
    indices = subset_indices(None, len(dataset), min(n, len(dataset)), seed)
    if hasattr(dataset, "images"):  # in-memory: one tensor
        images = [dataset.images[indices]]  # [n, 3, H, W]
    else:  # decoded in workers, one image at a time (sizes differ)
        images = DataLoader(Subset(dataset, indices.tolist()), batch_size=None,
                            num_workers=workers, collate_fn=_image_only)
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    pixels = 0
    for x in images:  # [n, 3, H, W] (in-memory) or [3, H, W]
        x = x.movedim(-3, 0).reshape(3, -1).to(torch.float64) / 255  # [3, pixels]
        total += x.sum(1)
        squares += (x * x).sum(1)
        pixels += x.shape[1]
    mean = total / pixels
    std = (squares / pixels - mean * mean).clamp(min=0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def _image_only(sample: tuple[Any, int]) -> Any:
    return sample[0]


def stats_flags(mean: tuple[float, ...], std: tuple[float, ...]) -> str:
    """The ready-to-paste flags: --mean R G B --std R G B."""
    return "--mean " + " ".join(f"{m:.4f}" for m in mean) + " --std " + " ".join(
        f"{s:.4f}" for s in std)
