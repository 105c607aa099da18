"""The fine-tuning training loader: a labelled subset, per-sample supervised augmentation, and a
resumable shuffled sampler.

Augmentations (--train-aug):
- ``timm``: ``timm.data.create_transform`` (RandomResizedCrop bicubic + flip, RandAugment --aa,
  ColorJitter when there is no --aa, RandomErasing --reprob), DeiT and PatchMix. At <= 32 px
  PatchMix swaps the crop for RandomCrop(32, padding=4) (``--train-crop pad``, the default there).
- ``simple``: RandomResizedCrop(scale=(--crop-min, 1)) + flip (BeCLR ``fine_tuning.py``).
- ``none``: the eval transform (BeCLR's CIFAR-100 branch trains on ``test_transform``).
In-memory datasets (CIFAR, STL-10, bundled) take the same per-sample path: each uint8 image is
turned into a PIL image first, so timm's PIL transforms apply unchanged (loader workers: -j).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from PIL import ImageOps
from timm.data import create_transform
from torch.utils.data import DataLoader, Subset
from torchvision import transforms as T
from torchvision.transforms.v2 import functional as TF

from data.datasets import build_dataset
from data.eval_transforms import eval_transform
from data.label_subsets import dataset_targets, draw_subset, load_subset, save_subset
from data.loaders import SeededSamples, _ignore_sigterm
from data.subsets import make_subset
from utils import dist
from utils.sampler import ResumableSampler

AUGS = ("timm", "simple", "none")


def _to_pil(img: Any) -> Any:
    """uint8 tensor [3, H, W] (in-memory datasets) -> PIL; PIL images pass through."""
    return TF.to_pil_image(img) if torch.is_tensor(img) else img.convert("RGB")


def _posterize(img: Any, bits_to_keep: int, **_: Any) -> Any:
    """timm's posterize with Pillow >= 11, which refuses 0 bits: keeping no bit gives the black
    image older Pillow (and so timm's reference runs) returned."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return img.point(lambda _: 0)
    return ImageOps.posterize(img, bits_to_keep)


def train_transform(args: Any, info: Any, size: int) -> T.Compose:
    """The per-sample training transform of --train-aug (see the module docstring)."""
    if args.train_aug == "none":
        return T.Compose([_to_pil, eval_transform(size, info.mean, info.std)])
    if args.train_aug == "simple":
        return T.Compose([_to_pil, T.RandomResizedCrop(size, scale=(args.crop_min, 1.0)),
                          T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(info.mean, info.std)])
    tf = create_transform(size, is_training=True, color_jitter=args.color_jitter,
                          auto_augment=args.aa or None, interpolation=args.train_interpolation,
                          re_prob=args.reprob, re_mode="pixel", re_count=1, mean=info.mean,
                          std=info.std)
    for t in tf.transforms:
        for op in getattr(t, "ops", []):  # RandAugment's ops
            if op.name.startswith("Posterize"):
                op.aug_fn = _posterize
    pad = args.train_crop == "pad" or (args.train_crop == "auto" and size <= 32)
    if pad:  # PatchMix main_finetune.py build_transform: no resized crop on 32-px images
        tf.transforms[0] = T.RandomCrop(size, padding=4)
    return T.Compose([_to_pil, *tf.transforms])


class SeededAllSamples(SeededSamples):
    """SeededSamples that also seeds Python's and NumPy's RNGs, which timm's RandAugment and
    RandomErasing draw from: a resumed run redraws the same images in any worker layout."""

    def __getitem__(self, code: int) -> Any:
        epoch, index = divmod(code, self.n)
        seed = (self.seed * 1_000_003 + epoch) * 1_000_003 + index
        py_state, np_state = random.getstate(), np.random.get_state()
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            return super().__getitem__(code)
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def labelled_indices(args: Any, dataset: Any) -> np.ndarray | None:
    """The labelled subset (--label-subset file, or --label-fraction drawn by --label-draw);
    None = every image. Rank 0 writes the chosen names to results_dir/label_subset.txt."""
    if args.label_subset:
        indices = load_subset(args.label_subset, dataset)
    elif args.label_fraction < 1.0:
        indices = draw_subset(dataset, args.label_fraction, args.label_draw,
                              args.label_seed, args.mvmr_draw)
    else:
        return None
    if dist.is_main_process():
        save_subset(f"{args.results_dir}/label_subset.txt", dataset, indices)
    return indices


def build_train_loader(args: Any, info: Any, size: int) -> tuple[DataLoader, int, int]:
    """(shuffled drop-last loader of (image, label) on the labelled subset, its image count,
    the number of classes)."""
    dataset = build_dataset(args.dataset, args.data, "train",
                            transform=train_transform(args, info, size),
                            on_bad_image=args.on_bad_image)
    dataset = make_subset(dataset, args.train_subset, args.seed or 0)  # as the eval loaders do
    num_classes = info.num_classes or int(dataset_targets(dataset).max()) + 1  # `folder`
    indices = labelled_indices(args, dataset)
    if indices is not None:
        dataset = Subset(dataset, indices.tolist())
    sampler = ResumableSampler(len(dataset), shuffle=True, seed=args.seed or 0,
                               rank=dist.get_rank(), world_size=dist.get_world_size(),
                               encode_epoch=True)
    loader = DataLoader(SeededAllSamples(dataset, args.seed or 0),
                        batch_size=args.batch_size_per_gpu,
                        sampler=sampler, num_workers=args.workers, drop_last=True,
                        pin_memory=args.device.type == "cuda", persistent_workers=args.workers > 0,
                        worker_init_fn=_ignore_sigterm if args.workers > 0 else None,
                        # each iterator draws a worker base seed: from its own generator, not from
                        # the global RNG that drop path and Mixup draw from (a resumed run starts
                        # an iterator where the uninterrupted one did not)
                        generator=torch.Generator())
    if len(loader) == 0:
        raise SystemExit(f"error: -b {args.batch_size} is larger than the {len(dataset)} labelled "
                         "images; lower the batch size or raise --label-fraction")
    return loader, len(dataset), num_classes
