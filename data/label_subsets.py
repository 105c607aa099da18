"""Labelled subsets of a training set for semi-supervised evaluation (1 %, 10 % of the labels).

Three draws:
- ``balanced``: per class, round(fraction x class count) images (at least 1), chosen without
  replacement by ``numpy.random.default_rng(seed)``; the protocol of SimCLR's ImageNet lists.
- ``mvmr``: MV-MR ``src/model/semi_supervised_module.py::get_dataloader``: after
  ``np.random.seed(seed)``, ``np.random.randint(0, n, size=int(percentage * n / 100) + 1)``, i.e.
  indices drawn WITH replacement and not per class (repeats stay in the subset, as there).
  ``draw`` picks which call of that function the subset is (Lightning calls the train loader more
  than once: ``configure_optimizers`` also builds it to read its length).
- ``beclr``: BeCLR ``fine_tuning.py``: ``torch.utils.data.random_split(train, [k, n - k])``; the
  official call uses the unseeded global generator, here a generator seeded with ``seed``.

A subset is saved as one entry per line: the image's file name for folder datasets (the form of
SimCLR's ``1percent.txt`` / ``10percent.txt``: ``n01440764_10026.JPEG``), the dataset index for
in-memory datasets.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset

DRAWS = ("balanced", "mvmr", "beclr")


def dataset_targets(dataset: Any) -> np.ndarray:
    """Labels [N] of a dataset (in-memory or ImageFolder), also through a torch Subset."""
    if isinstance(dataset, Subset):
        return dataset_targets(dataset.dataset)[np.asarray(dataset.indices)]
    targets = dataset.targets
    return targets.numpy() if torch.is_tensor(targets) else np.asarray(targets)


def balanced_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices: round(fraction x count) images of every class (>= 1), seeded."""
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        k = min(len(members), max(1, round(fraction * len(members))))
        chosen.append(rng.choice(members, size=k, replace=False))
    return np.sort(np.concatenate(chosen))


def mvmr_subset(n: int, fraction: float, seed: int = 0, draw: int = 1) -> np.ndarray:
    """MV-MR's draw: the `draw`-th call (1-based) of randint after seeding; repeats kept."""
    percentage = round(fraction * 100, 10)
    rng = np.random.RandomState(seed)  # the legacy global RNG's stream after np.random.seed(seed)
    for _ in range(draw):
        indices = rng.randint(0, n, size=int(percentage * n / 100) + 1)
    return indices


def beclr_subset(n: int, fraction: float, seed: int) -> np.ndarray:
    """BeCLR's draw: the first part of random_split(range(n), [k, n - k]), k = round(fraction n)."""
    k = round(fraction * n)
    generator = torch.Generator().manual_seed(seed)
    first, _ = torch.utils.data.random_split(range(n), [k, n - k], generator=generator)
    return np.asarray(first.indices)


def draw_subset(dataset: Any, fraction: float, draw: str, seed: int, mvmr_draw: int = 1
                ) -> np.ndarray:
    """Indices into `dataset` of its labelled subset (see the module docstring)."""
    if not 0.0 < fraction <= 1.0:
        raise SystemExit(f"error: --label-fraction {fraction} is not in (0, 1]")
    if draw == "balanced":
        return balanced_subset(dataset_targets(dataset), fraction, seed)
    if draw == "mvmr":
        return mvmr_subset(len(dataset), fraction, seed, mvmr_draw)
    if draw == "beclr":
        return beclr_subset(len(dataset), fraction, seed)
    raise SystemExit(f"error: --label-draw {draw!r} is unknown; choose from {DRAWS}")


def sample_names(dataset: Any) -> list[str]:
    """What a subset file lists for each sample: file names (folders) or indices (in memory)."""
    if isinstance(dataset, Subset):
        names = sample_names(dataset.dataset)
        return [names[i] for i in dataset.indices]
    if hasattr(dataset, "samples"):
        return [os.path.basename(path) for path, _ in dataset.samples]
    return [str(i) for i in range(len(dataset))]


def save_subset(path: str, dataset: Any, indices: np.ndarray) -> None:
    """Write the subset's names, one per line (repeats of a with-replacement draw included)."""
    names = sample_names(dataset)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.writelines(f"{names[i]}\n" for i in indices)
    os.replace(tmp, path)


def load_subset(path: str, dataset: Any) -> np.ndarray:
    """Indices of the names listed in `path`, in file order; an unknown name is a one-line error."""
    if not os.path.isfile(path):
        raise SystemExit(f"error: --label-subset {path}: no such file")
    with open(path) as f:
        wanted = [line.strip() for line in f if line.strip()]
    position = {name: i for i, name in enumerate(sample_names(dataset))}
    missing = [name for name in wanted if name not in position]
    if missing:
        raise SystemExit(f"error: --label-subset {path}: {len(missing)} names are not in the "
                         f"training set (first: {missing[0]}); check --dataset and --data")
    return np.asarray([position[name] for name in wanted], dtype=np.int64)
