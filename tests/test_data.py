"""data/: recipes (view order and shapes), pixel semantics of both augmentation paths, datasets
(one-line errors, Fashion-MNIST, CIFAR-20 mapping, folder trees), IN100.txt, generate_IN100.py."""

import gzip
import os
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import generate_IN100
from data import fashion_mnist
from data.batched import BatchMultiView
from data.datasets import (
    CIFAR100_CLASSES,
    CIFAR100_SUPERCLASSES,
    CIFAR100_TO_CIFAR20,
    DATASETS,
    TensorImageDataset,
    WithIndex,
    build_dataset,
    dataset_info,
)
from data.eval_transforms import BatchEval, eval_transform
from data.folder import find_grayscale
from data.loaders import build_eval_loaders, build_view_loader
from data.normalization import IMAGENET_MEAN, IMAGENET_STD
from data.per_sample import MultiViewTransform
from data.stats import compute_stats, stats_flags
from data.views import ViewSpec, byol_asymmetric, multicrop, original_view, simclr_symmetric
from utils.online_probe import OnlineProbe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLAIN = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=0.0, blur_p=0.0)
FM_ROOTS = [None, "/tmp/fm/x/usr/share/datasets/fashion-mnist"]  # None: default + Debian path


def _batch(b=3, h=20, w=20, seed=0) -> torch.Tensor:
    return torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))  # fmt: skip


def _both_paths(spec: ViewSpec, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One view of spec on both paths with identity normalisation: (reference, fast) in [0, 1]."""
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    ref = torch.stack([MultiViewTransform([spec], mean, std)(img)[0] for img in x])
    fast = BatchMultiView([spec], mean, std)(x)[0]
    return ref, fast


# ============ recipes: count, side-major order, shapes ============


@pytest.mark.parametrize("ns", [1, 2, 4])
def test_byol_asymmetric_is_side_major(ns):
    specs = byol_asymmetric(32, crop_min=0.2, ns=ns)
    assert len(specs) == 2 * ns
    side1, side2 = specs[:ns], specs[ns:]
    assert all(s.blur_p == 1.0 and s.solarize_p == 0.0 for s in side1)
    assert all(s.blur_p == 0.1 and s.solarize_p == 0.2 for s in side2)
    assert all(s.scale == (0.2, 1.0) and s.jitter == (0.4, 0.4, 0.2, 0.1) for s in specs)
    assert all(s.jitter_p == 0.8 and s.gray_p == 0.2 and s.flip_p == 0.5 for s in specs)
    no_blur = byol_asymmetric(32, ns=ns, blur=False)
    assert all(s.blur_p == 0.0 for s in no_blur) and no_blur[-1].solarize_p == 0.2


@pytest.mark.parametrize("n_views", [1, 2, 4])
def test_simclr_symmetric(n_views):
    specs = simclr_symmetric(24, n_views=n_views)
    assert len(specs) == n_views and len(set(specs)) == 1
    s = specs[0]
    assert s.jitter == (0.8, 0.8, 0.8, 0.2) and s.jitter_p == 0.8 and s.gray_p == 0.2
    assert s.blur_p == 0.5 and s.solarize_p == 0.0 and s.scale == (0.08, 1.0)


def test_multicrop_appends_local_crops_after_global_views():
    specs = multicrop(byol_asymmetric(32, ns=2, interpolation="bicubic"), n_local=3, local_size=12)
    assert [s.size for s in specs] == [32] * 4 + [12] * 3
    local = specs[-1]
    assert local.scale == (0.05, 0.35) and local.blur_p == 0.5 and local.solarize_p == 0.0
    assert local.interpolation == "bicubic" and local.jitter == specs[0].jitter


def test_blur_kernel_default_and_validation():
    assert ViewSpec(224).kernel_size == 13  # 3 sigma_max on each side, as a PIL-radius Gaussian
    assert ViewSpec(4).kernel_size == 7  # capped so that reflect padding is valid
    assert ViewSpec(96, blur_kernel=9).kernel_size == 9
    with pytest.raises(ValueError):
        ViewSpec(32, blur_kernel=4)
    with pytest.raises(ValueError):
        ViewSpec(32, gray_p=1.5)
    with pytest.raises(ValueError):
        ViewSpec(32, interpolation="nearest")


@pytest.mark.parametrize("ns", [1, 2, 4])
def test_both_paths_agree_on_shapes_dtypes_and_ranges(ns):
    specs = multicrop(byol_asymmetric(16, ns=ns), 2, 8) + [original_view(16)]
    x = _batch(b=3, h=20, w=24)
    lo = [(0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    hi = [(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    ref = MultiViewTransform(specs, IMAGENET_MEAN, IMAGENET_STD)(x[0])
    fast = BatchMultiView(specs, IMAGENET_MEAN, IMAGENET_STD)(x)
    pil = Image.fromarray(x[0].permute(1, 2, 0).numpy())
    ref_pil = MultiViewTransform(specs, IMAGENET_MEAN, IMAGENET_STD)(pil)
    assert len(ref) == len(fast) == len(ref_pil) == len(specs) == 2 * ns + 3
    for spec, r, f, p in zip(specs, ref, fast, ref_pil, strict=True):
        assert r.shape == p.shape == (3, spec.size, spec.size)
        assert f.shape == (3, 3, spec.size, spec.size)
        assert r.dtype == f.dtype == p.dtype == torch.float32
        for t in (r.unsqueeze(0), f):
            for c in range(3):
                assert lo[c] - 1e-5 <= t[:, c].min() and t[:, c].max() <= hi[c] + 1e-5


def test_batch_multiview_stays_float32_under_autocast():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        views = BatchMultiView(byol_asymmetric(8), IMAGENET_MEAN, IMAGENET_STD)(_batch())
    assert all(v.dtype == torch.float32 for v in views)


def test_batch_multiview_rejects_non_rgb_batches():
    with pytest.raises(ValueError, match="B, 3, H, W"):
        BatchMultiView([ViewSpec(8)], IMAGENET_MEAN, IMAGENET_STD)(torch.zeros(2, 1, 8, 8))


# ============ pixel semantics, on both paths ============


def test_identity_crop_is_identity():
    x = _batch()
    for out in _both_paths(ViewSpec(20, **PLAIN), x):
        torch.testing.assert_close(out, x / 255, rtol=0, atol=1e-6)


def test_flip_flips():
    x = _batch()
    for out in _both_paths(ViewSpec(20, **{**PLAIN, "flip_p": 1.0}), x):
        torch.testing.assert_close(out, x.flip(-1) / 255, rtol=0, atol=1e-6)


def test_grayscale_gives_three_equal_channels():
    x = _batch()
    for out in _both_paths(ViewSpec(20, **{**PLAIN, "gray_p": 1.0}), x):
        assert out.shape[1] == 3
        assert torch.allclose(out[:, 0], out[:, 1], atol=1e-6)
        assert torch.allclose(out[:, 1], out[:, 2], atol=1e-6)
        luma = (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]) / 255
        assert (out[:, 0] - luma).abs().max() <= 1 / 255 + 1e-6  # the reference rounds to uint8


def test_solarize_inverts_pixels_at_or_above_threshold():
    x = _batch()
    x[0, 0, 0, :4] = torch.tensor([127, 128, 129, 255], dtype=torch.uint8)
    expected = torch.where(x >= 128, 255 - x, x) / 255
    for out in _both_paths(ViewSpec(20, **{**PLAIN, "solarize_p": 1.0}), x):
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_original_view_resizes_only():
    x = _batch(h=20, w=20)
    ref, fast = _both_paths(original_view(20), x)
    torch.testing.assert_close(ref, x / 255, rtol=0, atol=1e-6)
    torch.testing.assert_close(fast, x / 255, rtol=0, atol=1e-6)
    ref, fast = _both_paths(original_view(10), x)  # a smaller image: resized whole
    assert ref.shape == fast.shape == (3, 3, 10, 10)
    assert (ref - fast).abs().max() <= 1 / 255 + 1e-6


def test_eval_transforms():
    big = torch.randint(0, 256, (3, 60, 80), dtype=torch.uint8)
    out = eval_transform(32, IMAGENET_MEAN, IMAGENET_STD)(big)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    small = _batch(b=2, h=32, w=32)
    batched = BatchEval(32, IMAGENET_MEAN, IMAGENET_STD)(small)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(batched, (small / 255 - mean) / std)  # identity at native size
    per_sample = eval_transform(32, IMAGENET_MEAN, IMAGENET_STD)(small[0])
    torch.testing.assert_close(per_sample, batched[0])
    assert BatchEval(48, IMAGENET_MEAN, IMAGENET_STD)(small).shape == (2, 3, 48, 48)


# ============ datasets ============


def test_registry_and_info():
    assert set(DATASETS) == {"fashion_mnist", "cifar10", "cifar100", "cifar20", "stl10",
                             "imagenet", "in50", "in100", "in200", "folder"}  # fmt: skip
    assert [dataset_info(n).num_classes for n in ("in50", "in100", "in200")] == [50, 100, 200]
    info = dataset_info("cifar20")
    assert (info.img_size, info.num_classes, info.in_memory) == (32, 20, True)
    assert dataset_info("in100").num_classes == 100 and not dataset_info("in100").in_memory
    with pytest.raises(ValueError, match="unknown dataset"):
        dataset_info("mnist")
    with pytest.raises(ValueError, match="unknown split"):
        build_dataset("cifar10", "/nonexistent", "test")


def _one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises((FileNotFoundError, ValueError)) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    return message


@pytest.mark.parametrize("name, layout", [("cifar10", "cifar-10-batches-py"),
                                          ("cifar100", "cifar-100-python"),
                                          ("cifar20", "cifar-100-python"),
                                          ("stl10", "stl10_binary")])  # fmt: skip
def test_missing_torchvision_dataset_error_names_layout(tmp_path, name, layout):
    message = _one_line_error(build_dataset, name, str(tmp_path), "train")
    assert layout in message and "download=True" in message and "--download" in message


def _write_png(path, color=(255, 0, 0), size=(6, 5)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, color).save(path)


def test_image_folder_errors_are_one_line_and_name_the_layout(tmp_path):
    root = str(tmp_path)
    assert "{train,val}/<class>/<image>" in _one_line_error(build_dataset, "folder", root, "train")
    _write_png(f"{root}/train/img.png")  # images without class folders
    assert "no class folders" in _one_line_error(build_dataset, "folder", root, "train")
    _write_png(f"{root}/train/cat/a.png")
    os.makedirs(f"{root}/train/dog")  # an empty class
    message = _one_line_error(build_dataset, "folder", root, "train")
    assert "empty class folder" in message and "dog" in message
    assert "val" in _one_line_error(build_dataset, "folder", root, "val")
    message = _one_line_error(build_dataset, "in100", root, "train")
    assert "expected 100 class folders" in message and "generate_IN100" in message


def test_image_folder_yields_uint8_or_transformed(tmp_path):
    root = str(tmp_path)
    for split in ("train", "val"):
        _write_png(f"{root}/{split}/cat/a.png", (255, 0, 0))
        _write_png(f"{root}/{split}/dog/b.png", (0, 0, 255), size=(9, 7))
    ds = build_dataset("folder", root, "pretrain")
    image, label = ds[1]
    assert image.dtype == torch.uint8 and image.shape == (3, 7, 9) and label == 1
    assert image[2].min() == 255 and image[0].max() == 0
    views = MultiViewTransform(byol_asymmetric(8), IMAGENET_MEAN, IMAGENET_STD)
    image, label = build_dataset("folder", root, "val", transform=views)[0]
    assert len(image) == 2 and image[0].shape == (3, 8, 8) and label == 0
    image, label, index = WithIndex(ds)[1]
    assert (label, index) == (1, 1) and len(WithIndex(ds)) == 2


def _write_idx(path, array: np.ndarray, type_code=0x08):
    header = bytes([0, 0, type_code, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_reader_and_fake_fashion_mnist(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 5), ("t10k", 3)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    ds = build_dataset("fashion_mnist", str(tmp_path), "train")
    assert ds.images.shape == (5, 3, 28, 28) and ds.images.dtype == torch.uint8
    assert torch.equal(ds.images[:, 0], ds.images[:, 2])  # grayscale replicated to RGB
    assert ds.targets.tolist() == [0, 1, 2, 3, 4]
    assert len(build_dataset("fashion_mnist", str(tmp_path), "val")) == 3
    _write_idx(tmp_path / "bad.gz", np.zeros((2, 2)), type_code=0x0D)  # float data
    with pytest.raises(ValueError, match="uint8 IDX"):
        fashion_mnist.read_idx(str(tmp_path / "bad.gz"), ndim=2)
    (tmp_path / "junk.gz").write_bytes(b"not gzip at all")
    assert "\n" not in _one_line_error(fashion_mnist.read_idx, str(tmp_path / "junk.gz"), 1)


def test_missing_fashion_mnist_error(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "FALLBACK_ROOTS", ())
    message = _one_line_error(build_dataset, "fashion_mnist", str(tmp_path), "train")
    assert "train-images-idx3-ubyte.gz" in message and "dataset-fashion-mnist" in message


def test_fashion_mnist_loads():
    root = next((r for r in FM_ROOTS if fashion_mnist.locate(r)), False)
    if root is False:
        pytest.skip("Fashion-MNIST IDX files not found in data/fashion-mnist, "
                    "/usr/share/datasets/fashion-mnist or /tmp/fm (apt-get install "
                    "dataset-fashion-mnist)")  # fmt: skip
    train = build_dataset("fashion_mnist", root, "pretrain")
    assert train.images.shape == (60000, 3, 28, 28) and train.images.dtype == torch.uint8
    assert train.targets.shape == (60000,)
    assert train.targets.unique().tolist() == list(range(10))
    assert len(train.classes) == dataset_info("fashion_mnist").num_classes == 10
    val = build_dataset("fashion_mnist", root, "val")
    assert val.images.shape == (10000, 3, 28, 28)
    assert torch.bincount(val.targets).tolist() == [1000] * 10
    image, label = val[0]
    assert image.shape == (3, 28, 28) and isinstance(label, int)


def test_cifar20_mapping_covers_100_classes_into_20():
    assert len(CIFAR100_CLASSES) == 100 and len(set(CIFAR100_CLASSES)) == 100
    assert CIFAR100_CLASSES[0] == "apple" and CIFAR100_CLASSES[99] == "worm"
    assert CIFAR100_TO_CIFAR20.shape == (100,)
    assert torch.bincount(CIFAR100_TO_CIFAR20).tolist() == [5] * 20
    names = list(CIFAR100_SUPERCLASSES)
    spot = {
        "apple": "fruit_and_vegetables",
        "aquarium_fish": "fish",
        "bus": "vehicles_1",
        "lawn_mower": "vehicles_2",
        "whale": "aquatic_mammals",
        "worm": "non-insect_invertebrates",
    }
    for fine, coarse in spot.items():
        assert names[CIFAR100_TO_CIFAR20[CIFAR100_CLASSES.index(fine)]] == coarse
    # the standard coarse_labels table for the first fine labels (apple, aquarium_fish, baby, ...)
    assert CIFAR100_TO_CIFAR20[:10].tolist() == [4, 1, 14, 8, 0, 6, 7, 7, 18, 3]


# ============ IN100.txt and generate_IN100.py ============


def test_in100_txt_has_100_unique_wnids():
    wnids = generate_IN100.read_classes(os.path.join(ROOT, "IN100.txt"))
    assert len(wnids) == len(set(wnids)) == 100
    assert all(re.fullmatch(r"n\d{8}", w) for w in wnids)


def _imagenet_tree(root, wnids, splits=("train", "val")):
    for split in splits:
        for i, w in enumerate(wnids):
            _write_png(f"{root}/{split}/{w}/{w}_{i}.png")


@pytest.fixture
def tiny_imagenet(tmp_path):
    wnids = ["n00000001", "n00000002", "n00000003", "n00000004"]
    _imagenet_tree(tmp_path / "imagenet", wnids)
    classes = tmp_path / "classes.txt"
    classes.write_text("# a subset\nn00000001\nn00000003\n\n")
    return tmp_path, str(classes)


@pytest.mark.parametrize("copy", [False, True])
def test_generate_in100_builds_an_image_folder_tree(tiny_imagenet, copy, capsys):
    tmp, classes = tiny_imagenet
    argv = ["--src", str(tmp / "imagenet"), "--dst", str(tmp / "in100"), "--classes", classes]
    argv += ["--copy"] if copy else []
    verb = "copied" if copy else "linked"
    generate_IN100.main(argv)
    assert f"2 classes (2 {verb}, 0 already there)" in capsys.readouterr().out
    for split in ("train", "val"):
        assert sorted(os.listdir(tmp / "in100" / split)) == ["n00000001", "n00000003"]
        assert os.path.islink(tmp / "in100" / split / "n00000001") != copy
    generate_IN100.main(argv)  # idempotent re-run
    assert f"2 classes (0 {verb}, 2 already there)" in capsys.readouterr().out
    ds = build_dataset("folder", str(tmp / "in100"), "val")
    assert ds.classes == ["n00000001", "n00000003"] and len(ds) == 2


def test_generate_in100_dsf_single_split_usage(tiny_imagenet):
    tmp, classes = tiny_imagenet
    src, dst = str(tmp / "imagenet" / "train"), str(tmp / "out" / "train")
    argv = ["--source_folder", src, "--target_folder", dst, "--target_class", classes]
    generate_IN100.main(argv)
    assert sorted(os.listdir(tmp / "out" / "train")) == ["n00000001", "n00000003"]


def test_generate_in100_reports_every_missing_class(tiny_imagenet):
    tmp, _ = tiny_imagenet
    classes = tmp / "more.txt"
    classes.write_text("n00000001\nn00000009\nn00000007\n")
    argv = ["--src", str(tmp / "imagenet"), "--dst", str(tmp / "out"), "--classes", str(classes)]
    with pytest.raises(SystemExit) as info:
        generate_IN100.main(argv)
    assert "2 of 3 classes missing" in str(info.value)
    assert "n00000009" in str(info.value) and "n00000007" in str(info.value)
    assert not os.path.exists(tmp / "out")  # nothing written before the check


def test_generate_in100_refuses_to_clobber(tiny_imagenet):
    tmp, classes = tiny_imagenet
    os.makedirs(tmp / "out" / "train" / "n00000001")  # a real folder where a link would go
    argv = ["--src", str(tmp / "imagenet"), "--dst", str(tmp / "out"), "--classes", classes]
    with pytest.raises(SystemExit, match="remove it first"):
        generate_IN100.main(argv)
    with pytest.raises(SystemExit, match="choose them with --splits"):
        generate_IN100.main(argv[:4] + ["--classes", classes, "--splits", "train", "test"])


# ============ own data: class list, decoding, normalisation, statistics ============


def _folder_args(root, **kw):
    defaults = dict(dataset="folder", data=str(root), train_subset=0, val_subset=0, seed=0,
                    workers=0, on_bad_image="fail", device=torch.device("cpu"), aug_device="auto",
                    batch_size=2, batch_size_per_gpu=2, mean=None, std=None, compute_stats=0)
    return SimpleNamespace(**{**defaults, **kw})


def test_val_must_list_the_class_folders_of_train(tmp_path):
    root = str(tmp_path)
    for c in ("cat", "dog", "fox"):
        _write_png(f"{root}/train/{c}/a.png")
    for c in ("cat", "dog", "emu"):
        _write_png(f"{root}/val/{c}/a.png")
    for split in ("train", "val", "pretrain"):  # caught before a long pretraining too
        message = _one_line_error(build_dataset, "folder", root, split)
        assert "missing in val/: fox" in message and "not in train/: emu" in message
    os.rename(f"{root}/val/emu", f"{root}/val/fox")
    assert build_dataset("folder", root, "val").class_to_idx == {"cat": 0, "dog": 1, "fox": 2}
    os.rename(f"{root}/train", f"{root}/elsewhere")  # val/ alone has no class list
    assert "the class list comes from train/" in _one_line_error(build_dataset, "folder", root,
                                                                 "val")


def test_grayscale_and_16_bit_images_decode_to_8_bit_rgb(tmp_path):
    gray = np.arange(35, dtype=np.uint8).reshape(5, 7) * 7
    deep = (np.arange(35, dtype=np.uint16).reshape(5, 7) * 1800 + 3)
    os.makedirs(tmp_path / "train" / "x")
    Image.fromarray(gray, "L").save(tmp_path / "train" / "x" / "g.png")
    Image.fromarray(deep).save(tmp_path / "train" / "x" / "h.png")  # 16-bit PNG (mode I;16)
    ds = build_dataset("folder", str(tmp_path), "train")
    for (image, _), expected in zip((ds[0], ds[1]), (gray, deep >> 8), strict=True):
        assert image.shape == (3, 5, 7) and image.dtype == torch.uint8
        for c in range(3):  # 3 identical channels, the 16-bit one not clipped to white
            assert torch.equal(image[c], torch.from_numpy(expected.astype(np.uint8)))
    assert find_grayscale(ds.samples) is not None
    assert find_grayscale([(str(tmp_path / "colour.png"), 0)]) is None  # missing file: no error


def test_loaders_carry_class_names_and_the_chosen_normalisation(tmp_path, capsys):
    root = tmp_path
    for split in ("train", "val"):
        _write_png(f"{root}/{split}/cat/a.png", (255, 0, 0), size=(8, 8))
        _write_png(f"{root}/{split}/dog/b.png", (0, 0, 255), size=(8, 8))
        os.makedirs(f"{root}/{split}/emu")
        Image.new("L", (8, 8), 128).save(f"{root}/{split}/emu/c.png")
    mean, std = [0.5, 0.25, 0.0], [0.5, 2.0, 1.0]
    args = _folder_args(root, mean=mean, std=std)
    train, val, prepare, info = build_eval_loaders(args, 8, batch_size=4)
    assert info.num_classes == 3 and info.classes == ("cat", "dog", "emu")
    assert args.class_names == ["cat", "dog", "emu"]
    assert (args.train_images, args.val_images) == (3, 3)
    assert prepare is None and (info.mean, info.std) == (tuple(mean), tuple(std))
    image, label, _ = val.dataset[0]  # red, after (x - mean) / std
    torch.testing.assert_close(image[:, 0, 0], torch.tensor([1.0, -0.125, 0.0]))
    views = build_view_loader(args, [original_view(8)], split="train")[0]
    (x,), y = next(iter(views))  # workers path: the same normalisation
    colours = {int(label): x[i, :, 0, 0] for i, label in enumerate(y)}
    torch.testing.assert_close(colours[2], (torch.tensor([128 / 255] * 3) - torch.tensor(mean))
                               / torch.tensor(std))
    assert capsys.readouterr().out.count("grayscale images") == 1  # said once, not per split
    args = _folder_args(root, std=[0.2, 0.0, 0.2])
    with pytest.raises(SystemExit, match=r"--std takes 3 numbers, R G B \(all > 0\)"):
        build_eval_loaders(args, 8)


def test_in_memory_loaders_use_the_chosen_normalisation(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6), ("t10k", 4)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 3)
    args = _folder_args(tmp_path, dataset="fashion_mnist", mean=[0.1, 0.2, 0.3], std=[1, 2, 4])
    _, val, prepare, info = build_eval_loaders(args, 28, batch_size=4)
    assert info.classes == fashion_mnist.CLASSES and len(args.class_names) == 10
    x = val.dataset.images[:2]
    mean, std = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1), torch.tensor([1, 2, 4.0])
    torch.testing.assert_close(prepare(x), (x / 255 - mean) / std.view(1, 3, 1, 1))
    _, make_views, _ = build_view_loader(args, [original_view(28)])
    torch.testing.assert_close(make_views(x)[0], (x / 255 - mean) / std.view(1, 3, 1, 1))
    assert args.mean == [0.1, 0.2, 0.3]  # recorded for the checkpoint
    default = _folder_args(tmp_path, dataset="fashion_mnist")
    build_eval_loaders(default, 28)
    assert default.mean == list(dataset_info("fashion_mnist").mean)


def test_compute_stats_matches_the_pixels_and_prints_a_flag_line(tmp_path, capsys):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]
    for i, colour in enumerate(colours):  # different sizes: statistics weigh pixels, not images
        _write_png(f"{tmp_path}/train/c{i % 2}/{i}.png", colour, size=(4 + i, 3))
    ds = build_dataset("folder", str(tmp_path), "train")
    pixels = torch.cat([ds[i][0].reshape(3, -1) for i in range(len(ds))], dim=1).double() / 255
    mean, std = compute_stats(ds, 4, seed=1)
    torch.testing.assert_close(torch.tensor(mean, dtype=torch.float64), pixels.mean(1))
    torch.testing.assert_close(torch.tensor(std, dtype=torch.float64),
                               pixels.std(1, unbiased=False))
    assert stats_flags((0.5, 0.25, 0.125), (1, 2, 3)) == (
        "--mean 0.5000 0.2500 0.1250 --std 1.0000 2.0000 3.0000")
    with pytest.raises(SystemExit) as exit_info:
        build_eval_loaders(_folder_args(tmp_path, compute_stats=100), 8)
    assert exit_info.value.code == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line == stats_flags(mean, std)
    images = (pixels.T.reshape(-1, 3, 1, 1) * 255).round().byte()  # one pixel per image
    in_memory = TensorImageDataset(images, torch.zeros(len(images)), ("x",))
    in_memory_mean = torch.tensor(compute_stats(in_memory, 1000)[0], dtype=torch.float64)
    torch.testing.assert_close(in_memory_mean, pixels.mean(1))


def test_online_probe_needs_the_real_class_count():
    with pytest.raises(ValueError, match="class count"):
        OnlineProbe(8, None, "cpu")
    with pytest.raises(SystemExit, match="--online-probe false"):
        OnlineProbe(8, 1, "cpu")  # unlabeled images in one class folder
    saved = OnlineProbe(8, 5, "cpu").state_dict()
    with pytest.raises(SystemExit, match="online probe has 5 classes, this dataset 3"):
        OnlineProbe(8, 3, "cpu").load_state_dict(saved)
