"""Fashion-MNIST from its gzip IDX files, with a pure-numpy reader (no torchvision download).

Files: train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz,
t10k-labels-idx1-ubyte.gz (uncompressed copies without `.gz` also work), looked up in `root`, then
in the Debian package's folder (`apt-get install dataset-fashion-mnist`). Decoding the train split
is quick, so nothing is cached.
"""

from __future__ import annotations

import gzip
import os

import numpy as np
import torch
from torch import Tensor

# where `bash main.sh quickstart|test` puts the files (the repository's datasets/ folder)
DEFAULT_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "datasets",
                            "fashion-mnist")
FALLBACK_ROOTS = ("/usr/share/datasets/fashion-mnist",)  # Debian package dataset-fashion-mnist
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")  # fmt: skip
FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_UINT8 = 0x08  # IDX type code of unsigned bytes, the only one Fashion-MNIST uses


def read_idx(path: str, ndim: int) -> np.ndarray:
    """Read an IDX file (gzip or raw) of uint8 data with `ndim` dimensions.

    Format: 2 zero bytes, a type byte, a dimension-count byte, ndim big-endian uint32 sizes, data.
    """
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: cannot read ({e})") from None
    if len(raw) < 4 + 4 * ndim or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    if raw[2] != _IDX_UINT8 or raw[3] != ndim:
        raise ValueError(
            f"{path}: expected uint8 IDX data with {ndim} dims, got type {raw[2]:#x}, {raw[3]} dims"
        )
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} but holds {data.size} bytes (truncated?)")
    return data.reshape(shape)


def _file(folder: str, name: str) -> str | None:
    for candidate in (name + ".gz", name):
        if os.path.isfile(os.path.join(folder, candidate)):
            return os.path.join(folder, candidate)
    return None


def locate(root: str | None = None) -> str | None:
    """The first of `root` (default datasets/fashion-mnist) and FALLBACK_ROOTS holding all 4 files."""
    names = [name for pair in FILES.values() for name in pair]
    for folder in (root or DEFAULT_ROOT, *FALLBACK_ROOTS):
        if all(_file(folder, name) for name in names):
            return folder
    return None


def load(root: str | None, train: bool) -> tuple[Tensor, Tensor]:
    """Return (images uint8 [N, 3, 28, 28], labels int64 [N]); N = 60000 (train) or 10000.

    The grayscale images are replicated to 3 channels once here, so that every dataset of the suite
    yields RGB uint8 tensors (the cost is 141 MB for the train split).
    """
    folder = locate(root)
    if folder is None:
        searched = ", ".join((root or DEFAULT_ROOT, *FALLBACK_ROOTS))
        raise FileNotFoundError(
            "Fashion-MNIST not found: expected train-images-idx3-ubyte.gz, "
            "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz "
            f"in one of: {searched} (on Debian: apt-get install dataset-fashion-mnist)"
        )
    image_path, label_path = (_file(folder, name) or "" for name in FILES[train])
    images = read_idx(image_path, ndim=3)  # [N, 28, 28]
    labels = read_idx(label_path, ndim=1)  # [N]
    if len(images) != len(labels):
        raise ValueError(f"{image_path} and {label_path} disagree: {len(images)} vs {len(labels)}")
    images_t = torch.from_numpy(images.copy()).unsqueeze(1).repeat(1, 3, 1, 1)
    return images_t, torch.from_numpy(labels.astype(np.int64))
