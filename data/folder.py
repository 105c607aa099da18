"""ImageFolder trees (`imagenet`, `in100`, `folder`): root/{train,val}/<class>/<image>.

The class list comes from train/: val/ must hold the same class folders (a missing or extra folder
would silently shift every label after it), checked whenever either split is built. Images are
decoded to 8-bit RGB: grayscale ones become 3 identical channels, 16-bit ones (microscopy, medical
PNG/TIFF) are scaled to 8 bits by their bit depth instead of being clipped to white. Errors are one
line and name the expected layout. An unreadable image (truncated, empty, not an image) fails with a
one-line `BadImageError` naming the file (`on_bad_image="fail"`), or is replaced by the next
readable image of the folder with a warning naming it (`on_bad_image="skip"`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision import datasets as tvd
from torchvision.transforms.v2 import functional as TF

Transform = Callable[..., object]
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


class DatasetError(ValueError):
    """A dataset is present but malformed (wrong layout, empty class folder, wrong class count)."""


class BadImageError(DatasetError):
    """An image file that cannot be decoded, with --on-bad-image fail."""

    def __str__(self) -> str:
        # a DataLoader worker's error comes back as BadImageError("Caught ... Original Traceback
        # ...\n<module>.BadImageError: <message>"): keep the one-line message, drop the traceback
        text = super().__str__().strip()
        return text.splitlines()[-1].split("BadImageError: ", 1)[-1] if "\n" in text else text


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB: grayscale -> 3 identical channels; 16-bit grayscale keeps its top 8 bits (PIL's
    own convert clips every value above 255, so a 16-bit image would come out nearly white)."""
    if img.mode.startswith("I;16") or img.mode == "I":
        pixels = np.asarray(img).astype(np.int64)
        # 32-bit "I" images holding 8-bit values (some TIFF writers) are kept as they are
        shift = 8 if img.mode != "I" or pixels.max(initial=0) > 255 else 0
        img = Image.fromarray((pixels >> shift).clip(0, 255).astype(np.uint8))
    return img.convert("RGB")


def load_rgb(path: str) -> Image.Image:
    with open(path, "rb") as f:  # closed right away: no file handle per worker sample
        return to_rgb(Image.open(f))


def pil_to_uint8(img: Image.Image) -> Tensor:
    return TF.pil_to_tensor(to_rgb(img))


# what PIL raises on a truncated, empty, missing or non-image file (and on decompression bombs)
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class CheckedImageFolder(tvd.ImageFolder):
    """ImageFolder whose unreadable images fail with one line naming the file, or are skipped.

    Skipping replaces sample i by the next readable one (i+1, i+2, ... wrapping around), label
    included: the batch keeps its shape, and the substitute depends on i alone, so a resumed run
    draws the same batches. Each skipped file is warned about once per process; `skipped` maps
    path -> reason (per process: every loader worker counts its own).
    """

    def __init__(self, path: str, transform: Transform, name: str, on_bad_image: str):
        super().__init__(path, transform=transform, loader=load_rgb)
        self.name, self.on_bad_image = name, on_bad_image
        self.skipped: dict[str, str] = {}

    def __getitem__(self, index: int) -> tuple[object, int]:
        for offset in range(len(self.samples)):
            path, target = self.samples[(index + offset) % len(self.samples)]
            if path in self.skipped:
                continue
            try:
                image = self.loader(path)
            except _DECODE_ERRORS as e:
                self._bad(path, e)
                continue
            return self.transform(image), target
        raise BadImageError(f"{self.name}: no readable image in {self.root}")

    def _bad(self, path: str, error: Exception) -> None:
        first = (str(error).strip().splitlines() or [""])[0]
        reason = f"{type(error).__name__}: {first}" if first else type(error).__name__
        if self.on_bad_image == "fail":
            raise BadImageError(
                f"{self.name}: cannot read image {path} ({reason}); replace or delete the file, "
                "or pass --on-bad-image skip to skip unreadable images"
            )
        self.skipped[path] = reason
        warnings.warn(
            f"{self.name}: skipped unreadable image {path} ({reason}); the next readable image "
            f"stands in for it ({len(self.skipped)} skipped so far in this process)",
            stacklevel=2,
        )


def image_folder(
    root: str,
    split: str,
    transform: Transform | None,
    name: str,
    num_classes: int | None,
    on_bad_image: str = "fail",
) -> CheckedImageFolder:
    """CheckedImageFolder on root/train or root/val, with one-line errors naming the layout."""
    sub = "val" if split == "val" else "train"
    path = os.path.join(root, sub)
    layout = f"expected {root}/{{train,val}}/<class>/<image>"
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{name}: {path} is not a directory ({layout}{_layout_hint(root)})")
    classes = class_folders(path)
    if not classes:
        raise DatasetError(f"{name}: no class folders in {path} ({layout})")
    check_same_classes(root, name)
    if num_classes is not None and len(classes) != num_classes:
        hint = " (build it with generate_IN100.py)" if name == "in100" else ""
        raise DatasetError(
            f"{name}: expected {num_classes} class folders in {path}, found {len(classes)}{hint}"
        )
    try:
        return CheckedImageFolder(path, transform or pil_to_uint8, name, on_bad_image)
    except FileNotFoundError:  # ImageFolder found a class folder without any image
        empty = [c for c in classes if not _has_image(os.path.join(path, c))]
        raise DatasetError(
            f"{name}: empty class folder(s) in {path}: {_first(empty)} ({layout}; add images "
            "or remove the folders)"
        ) from None


def class_folders(path: str) -> list[str]:
    """The sorted class folder names of a split folder (ImageFolder's label order)."""
    return sorted(e.name for e in os.scandir(path) if e.is_dir())


def check_same_classes(root: str, name: str) -> None:
    """val/ must hold exactly train/'s class folders: labels are positions in train/'s sorted list.

    Without a val/ (pretraining only) there is nothing to check; without a train/ there is no class
    list, and evaluating on val/ alone would number its labels differently.
    """
    train, val = os.path.join(root, "train"), os.path.join(root, "val")
    if not os.path.isdir(val):
        return
    if not os.path.isdir(train):
        raise FileNotFoundError(
            f"{name}: {train} is not a directory (the class list comes from train/; expected "
            f"{root}/{{train,val}}/<class>/<image>)"
        )
    ours, theirs = set(class_folders(train)), set(class_folders(val))
    missing, extra = sorted(ours - theirs), sorted(theirs - ours)
    if missing or extra:
        raise DatasetError(
            f"{name}: {val} must have the class folders of {train} (missing in val/: "
            f"{_first(missing, 3) or '-'}; not in train/: {_first(extra, 3) or '-'}); add or "
            "remove folders so that both splits list the same classes"
        )


def find_grayscale(samples: list[tuple[str, int]], n: int = 64, seed: int = 0) -> str | None:
    """The path of a grayscale image among n seeded-random samples (headers only), or None."""
    g = torch.Generator().manual_seed(seed)
    for i in torch.randperm(len(samples), generator=g)[:n].tolist():
        try:
            with Image.open(samples[i][0]) as img:  # lazy: reads the header, not the pixels
                if img.mode in GRAY_MODES:
                    return samples[i][0]
        except _DECODE_ERRORS:
            continue  # an unreadable file is --on-bad-image's business
    return None


def _first(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def _layout_hint(root: str) -> str:
    """Why root/<split> is missing, when it can be guessed: a wrong --data, or a split folder."""
    if not os.path.isdir(root):
        return f"; {root} does not exist: check --data"
    if os.path.basename(os.path.normpath(root)) in ("train", "val"):
        return f"; {root} looks like a split folder: pass its parent"
    return ""


def _has_image(folder: str) -> bool:
    return any(
        f.lower().endswith(tvd.folder.IMG_EXTENSIONS)
        for _, _, files in os.walk(folder)
        for f in files
    )
