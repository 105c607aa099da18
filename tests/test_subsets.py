"""--train-subset / --val-subset: seeded, class-balanced samples, the same on every rank.

Unit tests of data/subsets.py, then the real path (data/loaders.py on an ImageFolder tree sorted by
class, where the first N files would be the first classes) on 1 process and on 2 gloo processes.
"""

import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import run_gloo
from PIL import Image

from data.datasets import TensorImageDataset, build_dataset
from data.loaders import build_eval_loaders, build_view_loader
from data.subsets import LabelledSubset, balanced_quota, make_subset, subset_indices
from data.views import ViewSpec

CLASSES = ["a", "b", "c", "d", "e"]


def _sorted_targets(counts: list[int]) -> torch.Tensor:
    """Labels of a class-sorted dataset: counts[0] zeros, then counts[1] ones, ..."""
    return torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])


def test_equal_classes_get_equal_shares_of_a_class_sorted_dataset():
    targets = _sorted_targets([600] * 10)  # the example: 10 classes of 600
    idx = subset_indices(targets, len(targets), 2000, seed=0)
    assert len(idx) == len(set(idx.tolist())) == 2000
    assert torch.bincount(targets[idx]).tolist() == [200] * 10
    assert torch.equal(idx, idx.sort().values)  # file order kept (sequential reads)


def test_uneven_classes_take_all_of_the_small_ones_and_balance_the_rest():
    counts = torch.tensor([50, 3, 100, 20])
    g = torch.Generator().manual_seed(0)
    assert balanced_quota(counts, 60, g).tolist() == [19, 3, 19, 19]
    targets = _sorted_targets([50, 3, 100, 20, 7])
    for n in (1, 9, 31, 77, 179):
        got = torch.bincount(targets[subset_indices(targets, len(targets), n, 5)], minlength=5)
        assert int(got.sum()) == n
        full = got == torch.tensor([50, 3, 100, 20, 7])
        partial = got[~full]  # classes not exhausted differ by at most one image
        assert len(partial) == 0 or int(partial.max() - partial.min()) <= 1, (n, got)
        assert len(partial) == 0 or bool((got[full] <= partial.min()).all()), (n, got)


def test_same_seed_same_subset_other_seed_other_subset():
    targets = _sorted_targets([40, 25, 33])
    a, b = (subset_indices(targets, len(targets), 30, seed=7) for _ in range(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, subset_indices(targets, len(targets), 30, seed=8))
    unlabelled = subset_indices(None, 500, 30, seed=7)  # no labels: a plain seeded sample
    assert torch.equal(unlabelled, subset_indices(None, 500, 30, seed=7))
    assert len(set(unlabelled.tolist())) == 30 and int(unlabelled.max()) >= 30


def test_unlabelled_samples_keep_their_share():
    targets = torch.cat([_sorted_targets([10] * 5), torch.full((150,), -1)])  # STL-like
    idx = subset_indices(targets, len(targets), 40, seed=0)
    picked = targets[idx]
    assert int((picked < 0).sum()) == 30  # 150 / 200 of 40
    assert torch.bincount(picked[picked >= 0]).tolist() == [2] * 5


def test_in_memory_subset_stays_in_memory_and_keeps_classes():
    targets = _sorted_targets([8] * 5)
    images = torch.arange(len(targets), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 2, 2)
    ds = TensorImageDataset(images.contiguous(), targets, tuple(CLASSES))
    sub = make_subset(ds, 10, seed=0)
    assert isinstance(sub, TensorImageDataset) and sub.classes == ds.classes
    assert torch.bincount(sub.targets).tolist() == [2] * 5
    assert torch.equal(sub.targets, targets[sub.images[:, 0, 0, 0].long()])  # rows stay paired
    assert make_subset(ds, 0, seed=0) is ds and make_subset(ds, 40, seed=0) is ds


# ============ the real path: loaders on a class-sorted ImageFolder tree ============


def _tree(root: str, per_class: int = 6, val_per_class: int = 3) -> str:
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", val_per_class)):
        for c in CLASSES:
            os.makedirs(f"{root}/{split}/{c}", exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(f"{root}/{split}/{c}/{i}.png")
    return root


def _args(root: str, **kw) -> SimpleNamespace:
    defaults = dict(dataset="folder", data=root, train_subset=10, val_subset=5, seed=3, workers=0,
                    on_bad_image="fail", device=torch.device("cpu"), aug_device="auto",
                    batch_size=2, batch_size_per_gpu=2, mean=None, std=None, compute_stats=0)
    return SimpleNamespace(**{**defaults, **kw})


def _subset_of(loader) -> LabelledSubset:
    ds = loader.dataset
    while not isinstance(ds, LabelledSubset):
        ds = ds.dataset
    return ds


def test_every_class_is_in_the_subset_of_a_class_sorted_tree(tmp_path):
    args = _args(_tree(str(tmp_path)))
    train, val, _, info = build_eval_loaders(args, 8, batch_size=4)
    for loader, per_class in ((train, 2), (val, 1)):
        labels = [label for _, label, _ in loader.dataset]
        assert sorted(labels) == sorted(list(range(5)) * per_class)  # not the first 2 classes
    assert (args.train_images, args.val_images) == (10, 5)
    assert info.num_classes == 5 and args.class_names == CLASSES
    views = build_view_loader(args, [ViewSpec(8)], split="train")[0]
    assert _subset_of(views).indices == _subset_of(train).indices  # one draw for every loader
    full = build_dataset("folder", args.data, "train")
    assert [full.targets[i] for i in _subset_of(train).indices] == _subset_of(train).targets


def _subset_on_rank(rank, world_size, root):
    args = _args(root, train_subset=7, val_subset=4)
    train, val, _, _ = build_eval_loaders(args, 8, batch_size=4)
    views = build_view_loader(args, [ViewSpec(8)], split="train")[0]
    return [_subset_of(loader).indices for loader in (train, val, views)]


def test_two_ranks_draw_the_same_subset_as_one_process(tmp_path):
    root = _tree(str(tmp_path))
    single = _subset_on_rank(0, 1, root)
    assert [len(s) for s in single] == [7, 4, 7]
    assert run_gloo(_subset_on_rank, root) == [single, single]


@pytest.mark.parametrize("flag", ["train_subset", "val_subset"])
def test_subset_larger_than_the_split_is_the_whole_split(tmp_path, flag):
    args = _args(_tree(str(tmp_path)), **{flag: 1000})
    train, val, _, _ = build_eval_loaders(args, 8, batch_size=4)
    assert (args.train_images, args.val_images) == ((30, 5) if flag == "train_subset" else (10, 15))
