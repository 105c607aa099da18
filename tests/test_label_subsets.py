"""Labelled subsets: class balance, determinism, save/reload, and the official MV-MR / BeCLR draws
reproduced index for index (compared with the calls their scripts make)."""

import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Subset

from data.datasets import TensorImageDataset, build_dataset
from data.label_subsets import (
    balanced_subset,
    beclr_subset,
    draw_subset,
    load_subset,
    mvmr_subset,
    sample_names,
    save_subset,
)


def tensor_dataset(labels: list[int]) -> TensorImageDataset:
    n = len(labels)
    return TensorImageDataset(torch.zeros(n, 3, 4, 4, dtype=torch.uint8), torch.tensor(labels),
                              classes=tuple(str(c) for c in sorted(set(labels))))


def test_balanced_subset_takes_the_fraction_of_every_class():
    labels = np.repeat(np.arange(5), [100, 200, 50, 10, 40])
    idx = balanced_subset(labels, 0.1, seed=3)
    counts = np.bincount(labels[idx], minlength=5)
    assert counts.tolist() == [10, 20, 5, 1, 4]
    assert len(set(idx.tolist())) == len(idx)  # without replacement


def test_balanced_subset_keeps_one_image_of_a_rare_class():
    labels = np.array([0] * 300 + [1] * 3)
    counts = np.bincount(labels[balanced_subset(labels, 0.01, seed=0)])
    assert counts.tolist() == [3, 1]


def test_draws_are_deterministic_for_a_seed_and_differ_across_seeds():
    labels = np.random.default_rng(0).integers(0, 10, 1000)
    ds = tensor_dataset(labels.tolist())
    for draw in ("balanced", "mvmr", "beclr"):
        a = draw_subset(ds, 0.1, draw, seed=1)
        assert np.array_equal(a, draw_subset(ds, 0.1, draw, seed=1)), draw
        assert not np.array_equal(a, draw_subset(ds, 0.1, draw, seed=2)), draw


def test_mvmr_draw_is_numpy_randint_after_np_random_seed():
    """semi_supervised_module.py: np.random.seed(0) at import, then randint(0, n, p n / 100 + 1)
    in every train-loader build; the second build is the second call."""
    n = 5000
    np.random.seed(0)
    first = np.random.randint(0, n, size=int(1 * n / 100) + 1)
    second = np.random.randint(0, n, size=int(1 * n / 100) + 1)
    assert np.array_equal(mvmr_subset(n, 0.01, seed=0, draw=1), first)
    assert np.array_equal(mvmr_subset(n, 0.01, seed=0, draw=2), second)
    assert len(mvmr_subset(n, 0.1)) == int(10 * n / 100) + 1
    assert len(set(first.tolist())) < len(first)  # with replacement: repeats are kept


def test_beclr_draw_is_random_split_after_manual_seed():
    """fine_tuning.py: random_split(train, [5000, 45000]) with the global generator."""
    torch.manual_seed(7)
    first, _ = torch.utils.data.random_split(range(50000), [5000, 45000])
    assert np.array_equal(beclr_subset(50000, 0.1, seed=7), np.asarray(first.indices))


def test_saved_in_memory_subset_reloads_the_same_indices(tmp_path):
    ds = tensor_dataset([i % 4 for i in range(40)])
    idx = draw_subset(ds, 0.25, "balanced", seed=0)
    path = str(tmp_path / "subset.txt")
    save_subset(path, ds, idx)
    assert np.array_equal(load_subset(path, ds), idx)


def test_folder_subset_lists_file_names_as_simclr_and_reloads(tmp_path):
    root = tmp_path / "tree"
    for c in ("n01", "n02"):
        os.makedirs(root / "train" / c)
        for i in range(6):
            Image.new("RGB", (8, 8)).save(root / "train" / c / f"{c}_{i}.JPEG")
    ds = build_dataset("folder", str(root), "train")
    idx = draw_subset(ds, 0.5, "balanced", seed=0)
    path = str(tmp_path / "1percent.txt")
    save_subset(path, ds, idx)
    lines = open(path).read().split()
    assert all(line.startswith(("n01_", "n02_")) and line.endswith(".JPEG") for line in lines)
    assert np.array_equal(load_subset(path, ds), idx)
    assert sample_names(Subset(ds, [1, 0]))[:2] == [sample_names(ds)[1], sample_names(ds)[0]]


def test_unknown_names_and_bad_fractions_are_one_line_errors(tmp_path):
    ds = tensor_dataset([0, 1] * 5)
    path = tmp_path / "bad.txt"
    path.write_text("3\nnot_there\n")
    with pytest.raises(SystemExit, match="not in the training set"):
        load_subset(str(path), ds)
    with pytest.raises(SystemExit, match="not in"):
        draw_subset(ds, 0.0, "balanced", seed=0)
