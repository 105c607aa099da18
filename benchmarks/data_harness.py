"""What bench_data.py measures with: synthetic images (an in-memory uint8 tensor, a JPEG folder)
and the timers (a loader's images/s, its workers' CPU-ms per image, the split device stage)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler, default_collate

from data.batched import BatchMultiView
from data.normalization import IMAGENET_MEAN, IMAGENET_STD
from data.split_views import DevicePhotometric
from data.views import ViewSpec

# ============ datasets ============


class TensorImages(Dataset):
    """In-memory uint8 images [N, 3, H, W]; `as_pil` yields PIL images as torchvision CIFAR10."""

    def __init__(self, images: Tensor, transform: Callable, as_pil: bool):
        self.images, self.transform, self.as_pil = images, transform, as_pil

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        x = self.images[i]
        if self.as_pil:
            x = Image.fromarray(x.permute(1, 2, 0).numpy())
        return self.transform(x), 0


def smooth_images(n: int, generator: torch.Generator, low: int = 256, high: int = 400) -> list:
    """n uint8 images [3, h, w] of random size: upsampled low-frequency noise plus grain."""
    out = []
    for _ in range(n):
        h, w = torch.randint(low, high + 1, (2,), generator=generator).tolist()
        base = torch.rand(1, 3, 8, 8, generator=generator)
        x = F.interpolate(base, size=(h, w), mode="bicubic", align_corners=False)[0]
        x = x + 0.03 * torch.randn(3, h, w, generator=generator)
        out.append((x.clamp(0, 1) * 255).to(torch.uint8))
    return out


def write_jpegs(root: Path, n: int, seed: int = 0) -> None:
    """An ImageFolder tree root/<class>/<i>.jpg of n smooth random images (quality 90)."""
    g = torch.Generator().manual_seed(seed)
    for i, x in enumerate(smooth_images(n, g)):
        folder = root / f"class{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x.permute(1, 2, 0).numpy()).save(folder / f"{i:04d}.jpg", quality=90)


# ============ timing ============


def loader_rate(dataset: Dataset, workers: int, batch: int, seconds: float) -> float:
    """Steady-state images/s of a DataLoader: the first batch (worker start-up) is not timed."""
    sampler = RandomSampler(dataset, replacement=True, num_samples=10**7)
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers)
    it = iter(loader)
    next(it)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += len(next(it)[1])
    rate = n / (time.perf_counter() - t0)
    del it  # stops the workers
    return rate


def batched_rate(images: Tensor, augment: BatchMultiView, batch: int, seconds: float) -> float:
    """Images/s of BatchMultiView on uint8 batches indexed out of the in-memory tensor."""
    augment(images[:batch])  # warm-up
    n, t0, g = 0, time.perf_counter(), torch.Generator().manual_seed(0)
    while time.perf_counter() - t0 < seconds:
        idx = torch.randint(len(images), (batch,), generator=g)
        augment(images[idx])
        n += batch
    return n / (time.perf_counter() - t0)


def _collate_with_cpu(batch: list) -> tuple:
    """Default collate, plus the worker's id and its process CPU seconds so far (all its work:
    decode, views, collate)."""
    info = torch.utils.data.get_worker_info()
    return default_collate(batch), (info.id if info else -1), time.process_time()


def worker_cost(dataset: Dataset, workers: int, batch: int, seconds: float) -> tuple[float, float]:
    """(worker CPU ms per image, images/s) of a DataLoader in steady state: each worker's first
    batch (start-up) is the baseline of its CPU clock; images/s after the first batch."""
    sampler = RandomSampler(dataset, replacement=True, num_samples=10**7)
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers,
                        collate_fn=_collate_with_cpu)
    it = iter(loader)
    first: dict[int, float] = {}
    last: dict[int, tuple[float, int]] = {}
    n, t0 = 0, None
    while t0 is None or time.perf_counter() - t0 < seconds or len(last) < len(first):
        _, worker, cpu = next(it)
        if worker not in first:
            first[worker] = cpu
            t0 = t0 or time.perf_counter()
            continue
        n += batch
        last[worker] = (cpu, last.get(worker, (0.0, 0))[1] + batch)
    rate = n / (time.perf_counter() - t0)
    del it  # stops the workers
    cpu_s = sum(cpu - first[w] for w, (cpu, _) in last.items())
    return 1000 * cpu_s / sum(count for _, count in last.values()), rate


def device_ms(specs: list[ViewSpec], batch: int = 32, repeats: int = 3) -> float:
    """CPU ms per image of the split placement's device stage, run here on the CPU."""
    stage = DevicePhotometric(specs, IMAGENET_MEAN, IMAGENET_STD)
    views = [torch.randint(0, 256, (batch, 3, s.size, s.size), dtype=torch.uint8) for s in specs]
    stage(views)  # warm-up
    t0 = time.process_time()
    for _ in range(repeats):
        stage(views)
    return 1000 * (time.process_time() - t0) / (repeats * batch)
