"""Loaders shared by the three entry scripts: the pretraining loader (with its view maker) and the
evaluation loaders (train/val, index-returning, for kNN and the linear probe).

Two data paths make the same views:
- in-memory datasets (bundled, CIFAR, STL) yield raw uint8 batches and the views are made batched on
  the training device by ``BatchMultiView`` (the fast path);
- folder datasets (ImageNet, IN-100, any ImageFolder) decode in loader workers and make each view
  there with ``MultiViewTransform`` (the reference per-sample path).
"""

from __future__ import annotations

import copy
import signal
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from data.datasets import WithIndex, build_dataset, dataset_info
from data.transforms import BatchEval, BatchMultiView, MultiViewTransform, ViewSpec, eval_transform
from utils import dist
from utils.sampler import ResumableSampler


class InMemoryLoader:
    """Batches of a dataset that holds one uint8 tensor: indexing, no per-sample collate.

    Yields (images uint8 [B, C, H, W], labels [B]) or, with_index, (images, labels, indices).
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        sampler: ResumableSampler,
        drop_last: bool,
        with_index: bool = False,
    ):
        self.dataset, self.batch_size, self.sampler = dataset, batch_size, sampler
        self.drop_last, self.with_index = drop_last, with_index

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        order = torch.tensor(list(iter(self.sampler)), dtype=torch.long)
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            batch = (self.dataset.images[idx], self.dataset.targets[idx])
            yield (*batch, idx) if self.with_index else batch


class SeededSamples(Dataset):
    """Seeds each sample's augmentation from (seed, epoch, index), decoded from the sampler's
    ``epoch * N + index``: a resumed run redraws exactly the same views in any worker layout.

    The global RNG is forked, so the main process's RNG is untouched when workers = 0.
    """

    def __init__(self, dataset: Any, seed: int):
        self.dataset, self.seed, self.n = dataset, seed, len(dataset)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, code: int) -> Any:
        epoch, index = divmod(code, self.n)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + epoch) * 1_000_003 + index)
            return self.dataset[index]


def _ignore_sigterm(worker_id: int) -> None:
    """Loader workers leave preemption to their rank: a SIGTERM sent to the whole process group
    (SLURM, ``kill -- -PGID``) would otherwise kill a worker, and the rank would crash instead of
    saving. Workers still exit with their parent (PyTorch's watchdog)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _in_memory(dataset: Any) -> bool:
    """One uint8 tensor and no per-sample transform: batches can be sliced out directly."""
    return hasattr(dataset, "images") and getattr(dataset, "transform", None) is None


def _loader(
    dataset: Any,
    batch_size: int,
    sampler: ResumableSampler,
    workers: int,
    drop_last: bool,
    with_index: bool,
    device: torch.device,
) -> Any:
    if _in_memory(dataset):
        return InMemoryLoader(dataset, batch_size, sampler, drop_last, with_index)
    return DataLoader(
        WithIndex(dataset) if with_index else dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        drop_last=drop_last,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        worker_init_fn=_ignore_sigterm if workers > 0 else None,
    )


def first_n(dataset: Any, n: int) -> Any:
    """The first n samples (n <= 0: all); in-memory datasets stay in-memory."""
    if n <= 0 or n >= len(dataset):
        return dataset
    if _in_memory(dataset):
        subset = copy.copy(dataset)
        subset.images, subset.targets = dataset.images[:n], dataset.targets[:n]
        return subset
    return Subset(dataset, range(n))


def _root(args: Any) -> str:
    return args.data  # empty: the dataset's default location (bundled set: datasets/fashion-mnist)


def build_view_loader(
    args: Any, specs: list[ViewSpec], split: str = "pretrain"
) -> tuple[Any, Callable[[Any], list[Tensor]], Any]:
    """(loader, make_views, info) for training: shuffled, drop_last, resumable.

    make_views turns what the loader yields into the views list[[B, C, s, s]] on args.device.
    """
    info = dataset_info(args.dataset)
    on_device = args.aug_device == "device" or (args.aug_device == "auto" and info.in_memory)
    if on_device and not info.in_memory:
        raise SystemExit(
            f"error: --aug-device device needs an in-memory dataset; {args.dataset} is "
            "decoded in loader workers: use --aug-device workers"
        )
    transform = None if on_device else MultiViewTransform(specs, info.mean, info.std)
    dataset = first_n(
        build_dataset(
            args.dataset, _root(args), split, transform=transform, on_bad_image=args.on_bad_image
        ),
        args.train_subset,
    )
    if not on_device:  # views drawn in workers: seed each sample from (seed, epoch, index)
        dataset = SeededSamples(dataset, args.seed or 0)
    args.num_views = len(specs)
    sampler = ResumableSampler(
        len(dataset),
        shuffle=True,
        seed=args.seed or 0,
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        encode_epoch=not on_device,
    )
    loader = _loader(
        dataset,
        args.batch_size_per_gpu,
        sampler,
        args.workers,
        drop_last=True,
        with_index=False,
        device=args.device,
    )
    if len(loader) == 0:
        raise SystemExit(
            f"error: -b {args.batch_size} is larger than the {len(dataset)} images "
            f"of {args.dataset}; lower the batch size"
        )
    make_views: Callable[[Any], list[Tensor]]
    if on_device:
        make_views = BatchMultiView(specs, info.mean, info.std).to(args.device)
    else:
        make_views = nn.Identity()  # the workers already made the views
    return loader, make_views, info


def build_eval_loaders(
    args: Any,
    size: int,
    batch_size: int = 256,
    train_split: str = "train",
    train_transform: Any = None,
) -> tuple[Any, Any, Callable, Any]:
    """Index-returning (train, val) loaders and `prepare` (uint8 batch -> normalised input)."""
    info = dataset_info(args.dataset)
    per_sample = None if info.in_memory else eval_transform(size, info.mean, info.std)
    train = first_n(
        build_dataset(
            args.dataset,
            _root(args),
            train_split,
            transform=train_transform or per_sample,
            on_bad_image=args.on_bad_image,
        ),
        args.train_subset,
    )
    val = first_n(
        build_dataset(
            args.dataset, _root(args), "val", transform=per_sample, on_bad_image=args.on_bad_image
        ),
        args.val_subset,
    )
    rank, world = dist.get_rank(), dist.get_world_size()
    loaders = [
        _loader(
            ds,
            batch_size,
            ResumableSampler(len(ds), shuffle=False, rank=rank, world_size=world, drop_last=False),
            args.workers,
            drop_last=False,
            with_index=True,
            device=args.device,
        )
        for ds in (train, val)
    ]
    prepare = BatchEval(size, info.mean, info.std).to(args.device) if info.in_memory else None
    return loaders[0], loaders[1], prepare, info
