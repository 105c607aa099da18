"""Seeded, class-balanced subsets (--train-subset N / --val-subset N), the same on every rank.

The first N files of an ImageFolder tree are its first classes (2000 images of a 10-class tree of
600 per class would be 4 classes), so a subset is a seeded random sample instead, balanced over the
labels when the dataset knows them without decoding (`.targets`: in-memory datasets and
ImageFolder): every class gets N / C images, or all it has if that is fewer, the rest going to the
larger classes. Unlabeled samples (label -1, STL-10's pretraining split) keep their share of the
whole. The draw depends on the seed and the labels only, never on the rank, so every process and
every resumed run trains on the same images.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Subset


class LabelledSubset(Subset):
    """A Subset that keeps its dataset's class names and exposes the subset's labels."""

    def __init__(self, dataset: Any, indices: list[int]):
        super().__init__(dataset, indices)
        self.classes = getattr(dataset, "classes", None)
        targets = getattr(dataset, "targets", None)
        self.targets = None if targets is None else [int(targets[i]) for i in indices]


def balanced_quota(counts: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """Images to take per class: equal shares capped at each class's size, summing to n.

    Water-filling: the largest cap t with sum(min(counts, t)) <= n, then one more image for as many
    randomly chosen classes (among those with images left) as needed to reach n exactly.
    """
    n = min(n, int(counts.sum()))
    lo, hi = 0, int(counts.max()) if counts.numel() else 0
    while lo < hi:  # binary search of the cap
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if int(counts.clamp(max=mid).sum()) <= n else (lo, mid - 1)
    quota = counts.clamp(max=lo)
    room = (counts > lo).nonzero().flatten()
    extra = n - int(quota.sum())
    quota[room[torch.randperm(len(room), generator=generator)[:extra]]] += 1
    return quota


def subset_indices(targets: Tensor | None, size: int, n: int, seed: int) -> Tensor:
    """Sorted indices of a seeded sample of n of `size` samples, class-balanced if targets given."""
    g = torch.Generator().manual_seed(seed)
    if targets is None:
        return torch.randperm(size, generator=g)[:n].sort().values
    targets = torch.as_tensor(targets).long()
    order = torch.argsort(targets, stable=True)  # unlabelled (< 0) first, then class by class
    n_unlabelled_all = int((targets < 0).sum())
    unlabelled, labelled = order[:n_unlabelled_all], order[n_unlabelled_all:]
    n_unlabelled = round(n * n_unlabelled_all / size)
    counts = targets[labelled].unique_consecutive(return_counts=True)[1]  # [C], sorted classes
    quota = balanced_quota(counts, n - n_unlabelled, g)
    picked = [unlabelled[torch.randperm(len(unlabelled), generator=g)[:n_unlabelled]]]
    for members, q in zip(labelled.split(counts.tolist()), quota.tolist()):
        picked.append(members[torch.randperm(len(members), generator=g)[:q]])
    return torch.cat(picked).sort().values


def make_subset(dataset: Any, n: int, seed: int) -> Any:
    """n samples of dataset (n <= 0 or >= its size: the dataset itself); see the module docstring.

    In-memory datasets (one `images` tensor) stay in-memory; others become a LabelledSubset.
    """
    if n <= 0 or n >= len(dataset):
        return dataset
    indices = subset_indices(getattr(dataset, "targets", None), len(dataset), n, seed)
    if hasattr(dataset, "images"):
        subset = copy.copy(dataset)
        subset.images, subset.targets = dataset.images[indices], dataset.targets[indices]
        return subset
    return LabelledSubset(dataset, indices.tolist())
