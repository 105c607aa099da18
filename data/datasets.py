"""Datasets by name: `build_dataset(name, root, split, transform)` and `dataset_info(name)`.

Every dataset yields `(image, label)`: `transform(image)` if a transform is given, else a uint8
tensor [3, H, W]. Splits: "train", "val" and "pretrain" (the pretraining split: STL-10 train +
unlabeled, with label -1 for unlabeled images; the train split elsewhere).

In-memory datasets (fashion_mnist, cifar*, stl10) hold one uint8 tensor [N, 3, H, W] and a label
tensor, so the default collate gives raw uint8 batches for `BatchMultiView` on the GPU. Folder
datasets (imagenet, in50/in100/in200, folder) are ImageFolder trees
`root/{train,val}/<class>/<image>` decoded in the DataLoader workers (data/folder.py: class list
from train/, checked against val/; grayscale and 16-bit images decoded to 8-bit RGB; unreadable
images fail or are skipped). Every dataset has `.classes` (names, label order) and `.targets`
(labels, -1 = unlabeled) without decoding an image.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import datasets as tvd

from data import fashion_mnist
from data.folder import BadImageError, DatasetError, class_folders, image_folder
from data.normalization import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
)

__all__ = ["DATASETS", "BadImageError", "DatasetError", "DatasetInfo", "TensorImageDataset",
           "WithIndex", "build_dataset", "dataset_info"]
SPLITS = ("train", "val", "pretrain")
BAD_IMAGE_POLICIES = ("fail", "skip")
Transform = Callable[..., object]


# CIFAR-100's 20 superclasses ("coarse labels"), 5 classes each; the fine label of a class is its
# index in alphabetical order (CIFAR100_CLASSES), the coarse label the index of its superclass here.
CIFAR100_SUPERCLASSES: dict[str, tuple[str, ...]] = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}
CIFAR100_CLASSES = tuple(sorted(c for fine in CIFAR100_SUPERCLASSES.values() for c in fine))
_COARSE_OF = {c: i for i, fine in enumerate(CIFAR100_SUPERCLASSES.values()) for c in fine}
CIFAR100_TO_CIFAR20 = torch.tensor([_COARSE_OF[c] for c in CIFAR100_CLASSES])  # [100] fine->coarse


class TensorImageDataset(Dataset):
    """In-memory images: uint8 [N, 3, H, W] + int64 labels [N] (-1 = unlabeled)."""

    def __init__(
        self,
        images: Tensor,
        targets: Tensor,
        classes: tuple[str, ...],
        transform: Transform | None = None,
    ):
        assert images.dtype == torch.uint8 and images.dim() == 4 and images.shape[1] == 3
        assert len(images) == len(targets)
        self.images, self.targets, self.classes, self.transform = (
            images,
            targets,
            classes,
            transform,
        )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[object, int]:
        image = self.images[i]
        return (self.transform(image) if self.transform else image), int(self.targets[i])


class WithIndex(Dataset):
    """Wrap a dataset to yield (image, label, index), for kNN feature banks filled with index_copy_
    (DINO), which DistributedSampler padding cannot double-count."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[object, int, int]:
        image, label = self.dataset[i]
        return image, label, i


# ============ loaders: (root, split, transform, download) -> Dataset ============


def _load_fashion_mnist(
    root: str, split: str, transform: Transform | None, download: bool
) -> Dataset:
    images, targets = fashion_mnist.load(root or None, train=split != "val")
    return TensorImageDataset(images, targets, fashion_mnist.CLASSES, transform)


def _torchvision_or_raise(
    make: Callable[[], Dataset], root: str, expected: str, name: str
) -> Dataset:
    """Build a torchvision dataset with download=False, turning its errors into one line."""
    try:
        return make()
    except RuntimeError:  # torchvision: "Dataset not found or corrupted. ..."
        how = f"download it with torchvision.datasets.{name}('{root}', download=True) or --download"
        if not os.path.exists(os.path.join(root, expected)):
            raise FileNotFoundError(
                f"{name} not found under {root}: expected {os.path.join(root, expected)} ({how})"
            ) from None
        raise DatasetError(
            f"{name} under {root} is incomplete or corrupted (torchvision's md5 check failed on "
            f"{os.path.join(root, expected)}): re-{how}"
        ) from None


def _cifar(
    cls: type, folder: str, root: str, split: str, download: bool
) -> tuple[Tensor, list[int]]:
    ds = _torchvision_or_raise(
        lambda: cls(root, train=split != "val", download=download), root, folder, cls.__name__
    )
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # [N,32,32,3] -> [N,3,..]
    return images, ds.targets


def _load_cifar10(root: str, split: str, transform: Transform | None, download: bool) -> Dataset:
    images, targets = _cifar(tvd.CIFAR10, "cifar-10-batches-py", root, split, download)
    classes = ("airplane", "automobile", "bird", "cat", "deer",
               "dog", "frog", "horse", "ship", "truck")  # fmt: skip
    return TensorImageDataset(images, torch.tensor(targets), classes, transform)


def _load_cifar100(root: str, split: str, transform: Transform | None, download: bool) -> Dataset:
    images, targets = _cifar(tvd.CIFAR100, "cifar-100-python", root, split, download)
    return TensorImageDataset(images, torch.tensor(targets), CIFAR100_CLASSES, transform)


def _load_cifar20(root: str, split: str, transform: Transform | None, download: bool) -> Dataset:
    images, targets = _cifar(tvd.CIFAR100, "cifar-100-python", root, split, download)
    coarse = CIFAR100_TO_CIFAR20[torch.tensor(targets)]
    return TensorImageDataset(images, coarse, tuple(CIFAR100_SUPERCLASSES), transform)


def _load_stl10(root: str, split: str, transform: Transform | None, download: bool) -> Dataset:
    tv_split = {"train": "train", "val": "test", "pretrain": "train+unlabeled"}[split]
    ds = _torchvision_or_raise(
        lambda: tvd.STL10(root, split=tv_split, download=download), root, "stl10_binary", "STL10"
    )
    images = torch.from_numpy(ds.data)  # already [N, 3, 96, 96] uint8
    targets = torch.from_numpy(ds.labels).long()  # -1 for the unlabeled images
    return TensorImageDataset(images, targets, tuple(ds.classes), transform)


# ============ the registry ============


@dataclass(frozen=True)
class DatasetInfo:
    """What the scripts need to know about a dataset.

    The registry's entry is what is known before reading the data (num_classes is None for
    `folder`, classes empty). The loaders of data/loaders.py return the run's copy: the real class
    names and count (read off the built dataset), and the normalisation in use (--mean/--std).
    in_memory datasets yield uint8 tensors of one size (use BatchMultiView/BatchEval on the batch),
    the others are decoded per sample (use MultiViewTransform/eval_transform in the workers).
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    img_size: int
    num_classes: int | None
    in_memory: bool
    loader: Callable[..., Dataset] = field(repr=False, compare=False)
    classes: tuple[str, ...] = ()


# ImageNet class subsets: the list file each dataset's tree must match (docs/protocols.md)
CLASS_LISTS = {"in50": "IN50.txt", "in100": "IN100.txt", "in200": "IN200.txt"}
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_class_list(path: str) -> list[str]:
    """Class folder names (WNIDs) of a list file: the first word of each line; '#' comments and
    blank lines are skipped (so MV-MR's "wnid name" lines work as they are)."""
    try:
        with open(path) as f:
            names = [line.split("#")[0].split()[0] for line in f if line.split("#")[0].strip()]
    except OSError as e:
        raise DatasetError(f"cannot read the class list {path}: {e.strerror}") from None
    if not names:
        raise DatasetError(f"the class list {path} names no class")
    return names


def check_class_list(root: str, split: str, name: str, list_file: str) -> None:
    """The split folder must hold exactly the listed classes: one line naming the missing ones."""
    path = os.path.join(root, "val" if split == "val" else "train")
    if not os.path.isdir(path):
        return  # image_folder reports the layout
    listed, present = read_class_list(list_file), set(class_folders(path))
    missing = [c for c in listed if c not in present]
    extra = sorted(present - set(listed))
    if missing or extra:
        def first(v: list[str]) -> str:
            return ", ".join(v[:5]) + (f" and {len(v) - 5} more" if len(v) > 5 else "")

        raise DatasetError(
            f"{name}: expected {len(listed)} class folders (the list {os.path.basename(list_file)})"
            f" in {path}, found {len(present)}: missing {len(missing)}: {first(missing) or '-'}; "
            f"unexpected {len(extra)}: {first(extra) or '-'}; build it with generate_IN100.py "
            f"--classes {list_file}"
        )


def _folder_loader(name: str, num_classes: int | None) -> Callable[..., Dataset]:
    def load(
        root: str, split: str, transform: Transform | None, download: bool, on_bad_image: str,
        class_list: str | None = None,
    ) -> Dataset:
        if class_list and name != "folder":
            raise DatasetError(f"--class-list checks a --dataset folder tree; {name} always "
                               f"uses {CLASS_LISTS.get(name, 'all its classes')}")
        listed = class_list or (os.path.join(_REPO, CLASS_LISTS[name]) if name in CLASS_LISTS
                                else None)
        if listed:
            check_class_list(root, split, name, listed)
        return image_folder(root, split, transform, name, num_classes, on_bad_image)

    return load


DATASETS: dict[str, DatasetInfo] = {
    "fashion_mnist": DatasetInfo(FASHION_MNIST_MEAN, FASHION_MNIST_STD, 28, 10, True,
                                 _load_fashion_mnist),
    "cifar10": DatasetInfo(CIFAR10_MEAN, CIFAR10_STD, 32, 10, True, _load_cifar10),
    "cifar100": DatasetInfo(CIFAR100_MEAN, CIFAR100_STD, 32, 100, True, _load_cifar100),
    "cifar20": DatasetInfo(CIFAR100_MEAN, CIFAR100_STD, 32, 20, True, _load_cifar20),
    "stl10": DatasetInfo(IMAGENET_MEAN, IMAGENET_STD, 96, 10, True, _load_stl10),  # as MV-MR
    "imagenet": DatasetInfo(IMAGENET_MEAN, IMAGENET_STD, 224, 1000, False,
                            _folder_loader("imagenet", 1000)),
    "in50": DatasetInfo(IMAGENET_MEAN, IMAGENET_STD, 224, 50, False, _folder_loader("in50", 50)),
    "in100": DatasetInfo(IMAGENET_MEAN, IMAGENET_STD, 224, 100, False,
                         _folder_loader("in100", 100)),
    "in200": DatasetInfo(IMAGENET_MEAN, IMAGENET_STD, 224, 200, False,
                         _folder_loader("in200", 200)),
    "folder": DatasetInfo(IMAGENET_MEAN, IMAGENET_STD, 224, None, False,
                          _folder_loader("folder", None)),
}  # fmt: skip


def dataset_info(name: str) -> DatasetInfo:
    """Normalisation, native image size, class count and storage kind of a dataset name."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {sorted(DATASETS)}")
    return DATASETS[name]


def build_dataset(
    name: str,
    root: str,
    split: str,
    transform: Transform | None = None,
    download: bool = False,
    on_bad_image: str = "fail",
    class_list: str | None = None,
) -> Dataset:
    """The `split` ("train", "val", "pretrain") of dataset `name` stored under `root`.

    Yields (transform(image) or uint8 [3, H, W], label). `download` only applies to the
    torchvision datasets (cifar*, stl10); `on_bad_image` ("fail" or "skip", see
    CheckedImageFolder) only to the folder datasets, the others decode nothing per sample.
    `class_list` (a file of class folder names) makes a `folder` tree hold exactly those classes;
    in50 / in100 / in200 always check theirs (CLASS_LISTS).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise ValueError(f"unknown on_bad_image {on_bad_image!r}; choose from {BAD_IMAGE_POLICIES}")
    info = dataset_info(name)
    if info.in_memory:
        if class_list:
            raise DatasetError(f"--class-list applies to folder datasets, not {name}")
        return info.loader(root, split, transform, download)
    return info.loader(root, split, transform, download, on_bad_image, class_list)
