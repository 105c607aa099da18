"""Loaders shared by the three entry scripts: the pretraining loader (with its view maker) and the
evaluation loaders (train/val, index-returning, for kNN and the linear probe).

Two data paths make the same views:
- in-memory datasets (bundled, CIFAR, STL) yield raw uint8 batches and the views are made batched on
  the training device by ``BatchMultiView`` (the fast path);
- folder datasets (ImageNet, IN-100, any ImageFolder) decode in loader workers and make each view
  there with ``MultiViewTransform`` (the reference per-sample path).

Both builders return the run's ``DatasetInfo``: the real class names and count (a folder tree's
come from its train/ folders) and the normalisation in use (--mean/--std, else the dataset's). They
record what the run used in ``args`` (``class_names``, ``mean``, ``std``, ``<split>_images``), which
checkpoints and results.json save. ``--train-subset`` / ``--val-subset`` are seeded class-balanced
samples (data/subsets.py), the same on every rank.
"""

from __future__ import annotations

import signal
from dataclasses import replace
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from data.batched import BatchMultiView
from data.datasets import DatasetInfo, WithIndex, build_dataset, dataset_info
from data.eval_transforms import BatchEval, eval_transform
from data.folder import find_grayscale
from data.per_sample import MultiViewTransform
from data.split_views import DevicePhotometric, GeometricViews, resolve_placement
from data.stats import compute_stats, stats_flags
from data.subsets import make_subset
from data.views import ViewSpec
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
        # its own generator: each iter() would otherwise draw the workers' base seed from the
        # training RNG, at another point of the stream after a resume (SeededSamples seeds views)
        generator=torch.Generator().manual_seed(0),
    )


def _root(args: Any) -> str:
    return args.data  # empty: the dataset's default location (bundled set: datasets/fashion-mnist)


def _subset_seed(args: Any) -> int:
    """The subset draw depends on --seed alone (never the rank): every process, every resume."""
    return args.seed if getattr(args, "seed", None) is not None else 0


def _channels(args: Any, name: str, default: tuple[float, ...]) -> tuple[float, ...]:
    value = getattr(args, name, None)
    if value is None:
        return tuple(default)
    if len(value) != 3 or (name == "std" and min(value) <= 0):
        positive = " (all > 0)" if name == "std" else ""
        raise SystemExit(f"error: --{name} takes 3 numbers, R G B{positive}, got {list(value)}; "
                         "--compute-stats N estimates them")
    return tuple(float(v) for v in value)


def resolve_info(args: Any) -> DatasetInfo:
    """The registry's info with the run's normalisation (--mean/--std, else the dataset's),
    recorded in args.mean/args.std. With --compute-stats N: print the stats and exit."""
    info = dataset_info(args.dataset)
    if getattr(args, "compute_stats", 0) > 0:
        print_stats_and_exit(args)
    mean, std = _channels(args, "mean", info.mean), _channels(args, "std", info.std)
    args.mean, args.std = list(mean), list(std)
    return replace(info, mean=mean, std=std)


def print_stats_and_exit(args: Any) -> None:
    """--compute-stats N: mean/std of N seeded-random training images, as a flag line; exit 0."""
    dataset = build_dataset(args.dataset, _root(args), "train", on_bad_image=args.on_bad_image)
    n = min(args.compute_stats, len(dataset))
    mean, std = compute_stats(dataset, n, _subset_seed(args), args.workers)
    where = _root(args) or "its default location"
    print(f"# per-channel stats of {n} random training images of {args.dataset} ({where})")
    print(stats_flags(mean, std))
    raise SystemExit(0)


def with_classes(info: DatasetInfo, dataset: Any, args: Any) -> DatasetInfo:
    """info with the dataset's class names and count, recorded in args.class_names."""
    classes = tuple(str(c) for c in dataset.classes)
    args.class_names = list(classes)
    return replace(info, classes=classes, num_classes=len(classes))


_ANNOUNCED: set[tuple[str, str]] = set()


def _announce_grayscale(dataset: Any, args: Any) -> None:
    """Say once per process (not per split or epoch) that grayscale images become 3 channels."""
    key = (args.dataset, _root(args))
    if not hasattr(dataset, "samples") or key in _ANNOUNCED:
        return
    _ANNOUNCED.add(key)
    path = find_grayscale(dataset.samples, seed=_subset_seed(args))
    if path:
        print(f"{args.dataset}: grayscale images (e.g. {path}) are read as 3 identical channels "
              "(16-bit ones scaled to 8 bits); --compute-stats N gives their --mean/--std")


def _build(args: Any, split: str, transform: Any, subset: int) -> Any:
    """The split, subsampled (seeded, class-balanced); its size goes to args.<split>_images."""
    dataset = build_dataset(args.dataset, _root(args), split, transform=transform,
                            on_bad_image=args.on_bad_image,
                            class_list=getattr(args, "class_list", None))
    _announce_grayscale(dataset, args)
    dataset = make_subset(dataset, subset, _subset_seed(args))
    setattr(args, f"{split}_images", len(dataset))
    return dataset


def build_view_loader(
    args: Any, specs: list[ViewSpec], split: str = "pretrain"
) -> tuple[Any, Callable[[Any], list[Tensor]], Any]:
    """(loader, make_views, info) for training: shuffled, drop_last, resumable.

    make_views turns what the loader yields into the views list[[B, C, s, s]] on args.device.
    """
    info = resolve_info(args)
    placement = resolve_placement(args.aug_device, info.in_memory, args.device.type)
    on_device, hue_impl = placement == "device", getattr(args, "hue_impl", "float")
    transform = {"device": None, "split": GeometricViews(specs),
                 "workers": MultiViewTransform(specs, info.mean, info.std, hue_impl)}[placement]
    dataset = _build(args, split, transform, args.train_subset)
    info = with_classes(info, dataset, args)
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
        make_views = BatchMultiView(specs, info.mean, info.std, hue_impl).to(args.device)
    elif placement == "split":  # the workers cropped: colour and normalisation on the device
        make_views = DevicePhotometric(specs, info.mean, info.std, hue_impl).to(args.device)
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
    """Index-returning (train, val) loaders and `prepare` (uint8 batch -> normalised input).

    Reads, when present, args.interpolation and args.val_resize_ratio (`resize_center_crop`).
    """
    info = resolve_info(args)
    resizing = dict(
        interpolation=getattr(args, "interpolation", None) or "bilinear",
        resize_ratio=getattr(args, "val_resize_ratio", None),
    )
    per_sample = None if info.in_memory else eval_transform(size, info.mean, info.std, **resizing)
    train = _build(args, train_split, train_transform or per_sample, args.train_subset)
    val = _build(args, "val", per_sample, args.val_subset)
    info = with_classes(info, train, args)
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
    prepare = (
        BatchEval(size, info.mean, info.std, **resizing).to(args.device) if info.in_memory else None
    )
    return loaders[0], loaders[1], prepare, info
