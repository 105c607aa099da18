"""Images/s delivered by each augmentation recipe: our batched path, our per-sample path, lightly.

    python -m benchmarks.bench_data [--quick] [--workers 2]

32 px (in-memory uint8, as CIFAR): BatchMultiView on uint8 batches sliced from the tensor (what
main_pretrain does for in-memory datasets) vs MultiViewTransform per sample in a DataLoader vs
lightly's multi-view transforms on PIL images (what torchvision's CIFAR10 yields), with 0 and N
loader workers. 224 px: JPEG files in a temporary folder read by ImageFolder, decoded in the
loader (PIL), then our per-sample path (what main_pretrain does for folder datasets) or lightly's.
Random images are used: augmentation cost does not depend on content; JPEGs are smooth random
fields so that they compress and decode like photographs, not like noise.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torchvision import datasets as tvd
from torchvision.transforms import v2

from benchmarks.common import markdown_table, ratio, report, write_json
from data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BatchMultiView,
    MultiViewTransform,
    ViewSpec,
)
from data.views import byol_asymmetric, simclr_symmetric

NORMALIZE = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


# ============ recipes: ours and lightly's equivalent ============


def recipes(size: int, ns_list: Iterable[int]) -> dict[str, list[ViewSpec]]:
    out = {f"byol_asymmetric ns={ns}": byol_asymmetric(size, ns=ns) for ns in ns_list}
    out["simclr_symmetric"] = simclr_symmetric(size)
    return out


def lightly_transform(name: str, size: int) -> Callable[[Image.Image], list[Tensor]]:
    """lightly's transform with the parameters of our recipe `name` (same jitter, gray, blur,
    solarize probabilities and crop scale; PIL ops per view)."""
    from lightly.transforms import BYOLView1Transform, BYOLView2Transform, SimCLRTransform
    from lightly.transforms.multi_view_transform import MultiViewTransform as LightlyMultiView

    if name == "simclr_symmetric":
        return SimCLRTransform(input_size=size, gaussian_blur=0.5, normalize=NORMALIZE)
    ns = int(name.split("ns=")[1])
    view1 = BYOLView1Transform(input_size=size, normalize=NORMALIZE)
    view2 = BYOLView2Transform(input_size=size, normalize=NORMALIZE)
    return LightlyMultiView([view1] * ns + [view2] * ns)


# ============ datasets ============


class TensorImages(Dataset):
    """In-memory uint8 images [N, 3, H, W]; `as_pil` yields PIL images as torchvision CIFAR10."""

    def __init__(self, images: Tensor, transform: Callable, as_pil: bool):
        self.images, self.transform, self.as_pil = images, transform, as_pil

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        x = self.images[i]
        if self.as_pil:
            x = Image.fromarray(x.permute(1, 2, 0).numpy())
        return self.transform(x), 0


def smooth_images(n: int, generator: torch.Generator, low: int = 256, high: int = 400) -> list:
    """n uint8 images [3, h, w] of random size: upsampled low-frequency noise plus grain."""
    out = []
    for _ in range(n):
        h, w = torch.randint(low, high + 1, (2,), generator=generator).tolist()
        base = torch.rand(1, 3, 8, 8, generator=generator)
        x = F.interpolate(base, size=(h, w), mode="bicubic", align_corners=False)[0]
        x = x + 0.03 * torch.randn(3, h, w, generator=generator)
        out.append((x.clamp(0, 1) * 255).to(torch.uint8))
    return out


def write_jpegs(root: Path, n: int, seed: int = 0) -> None:
    """An ImageFolder tree root/<class>/<i>.jpg of n smooth random images (quality 90)."""
    g = torch.Generator().manual_seed(seed)
    for i, x in enumerate(smooth_images(n, g)):
        folder = root / f"class{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x.permute(1, 2, 0).numpy()).save(folder / f"{i:04d}.jpg", quality=90)


# ============ candidate changes to data/transforms.py, measured here ============


class PILBlur:
    """PIL's GaussianBlur(radius=sigma), sigma ~ U(sigma range), with probability p: the blur of
    the MoCo v3 / DSF / SNCLR / PatchMix code (PIL's extended-box approximation, no truncation)."""

    def __init__(self, p: float, sigma: tuple[float, float]):
        self.p, self.sigma = p, sigma

    def __call__(self, img: Image.Image) -> Image.Image:
        if torch.rand(()) >= self.p:
            return img
        radius = self.sigma[0] + (self.sigma[1] - self.sigma[0]) * float(torch.rand(()))
        return img.filter(ImageFilter.GaussianBlur(radius=radius))


class PILMultiView:
    """MultiViewTransform with every op on the PIL image (torchvision v2 dispatches to PIL
    kernels), PIL's own Gaussian blur, and the tensor conversion last, as lightly does."""

    def __init__(self, specs: list[ViewSpec]):
        ref = MultiViewTransform(specs, IMAGENET_MEAN, IMAGENET_STD)
        self.transforms = []
        for spec, t in zip(specs, ref.transforms, strict=True):
            ops = [
                PILBlur(op.p, spec.blur_sigma) if _is_blur(op) else op for op in t.transforms[:-2]
            ]
            # every reference view ends with ToDtype + Normalize: convert to a tensor just before
            self.transforms.append(v2.Compose([*ops, v2.PILToTensor(), *t.transforms[-2:]]))

    def __call__(self, img: Image.Image) -> list[Tensor]:
        img = img.convert("RGB")
        return [t(img) for t in self.transforms]


def _is_blur(op: object) -> bool:
    return isinstance(op, v2.RandomApply) and isinstance(op.transforms[0], v2.GaussianBlur)


# ============ timing ============


def loader_rate(dataset: Dataset, workers: int, batch: int, seconds: float) -> float:
    """Steady-state images/s of a DataLoader: the first batch (worker start-up) is not timed."""
    sampler = RandomSampler(dataset, replacement=True, num_samples=10**7)
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers)
    it = iter(loader)
    next(it)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += len(next(it)[1])
    rate = n / (time.perf_counter() - t0)
    del it  # stops the workers
    return rate


def batched_rate(images: Tensor, augment: BatchMultiView, batch: int, seconds: float) -> float:
    """Images/s of BatchMultiView on uint8 batches indexed out of the in-memory tensor."""
    augment(images[:batch])  # warm-up
    n, t0, g = 0, time.perf_counter(), torch.Generator().manual_seed(0)
    while time.perf_counter() - t0 < seconds:
        idx = torch.randint(len(images), (batch,), generator=g)
        augment(images[idx])
        n += batch
    return n / (time.perf_counter() - t0)


# ============ the two resolutions ============


def run_32px(quick: bool, workers: int, seconds: float) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2048, 3, 32, 32), dtype=torch.uint8, generator=g)
    rows = []
    for name, specs in recipes(32, (1, 4) if quick else (1, 2, 4, 8)).items():
        augment = BatchMultiView(specs, IMAGENET_MEAN, IMAGENET_STD)
        row = {
            "recipe": name,
            "V": len(specs),
            "ours batched": batched_rate(images, augment, 256, seconds),
        }
        for w in (0, workers):
            ref = MultiViewTransform(specs, IMAGENET_MEAN, IMAGENET_STD)
            row[f"ours per-sample w={w}"] = loader_rate(
                TensorImages(images, ref, False), w, 64, seconds
            )
            peer = TensorImages(images, lightly_transform(name, 32), as_pil=True)
            row[f"lightly w={w}"] = loader_rate(peer, w, 64, seconds)
        row[f"ours per-sample PIL* w={workers}"] = loader_rate(
            TensorImages(images, PILMultiView(specs), as_pil=True), workers, 64, seconds
        )
        best_peer = max(row["lightly w=0"], row[f"lightly w={workers}"])
        row["batched/lightly best"] = ratio(row["ours batched"], best_peer)
        row[f"per-sample/lightly w={workers}"] = ratio(
            row[f"ours per-sample w={workers}"], row[f"lightly w={workers}"]
        )
        print(
            f"  32px {name:24} ours batched {row['ours batched']:7.0f}  lightly best "
            f"{best_peer:7.0f} img/s",
            flush=True,
        )
        rows.append(row)
    return rows


def run_224px(quick: bool, workers: int, seconds: float, n_files: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_jpegs(Path(tmp), n_files)
        decode_only = tvd.ImageFolder(tmp, transform=lambda img: torch.zeros(1))
        base = {"decode only (PIL)": loader_rate(decode_only, workers, 16, seconds)}
        names = ("byol_asymmetric ns=1",) if quick else ("byol_asymmetric ns=1", "simclr_symmetric")
        all_recipes = recipes(224, (1,))
        for name in names:
            specs = all_recipes[name]
            row = {"recipe": name, "V": len(specs), **base}
            ours = MultiViewTransform(specs, IMAGENET_MEAN, IMAGENET_STD)  # decodes with PIL
            for w in (workers,) if quick else (0, workers):
                row[f"ours w={w}"] = loader_rate(
                    tvd.ImageFolder(tmp, transform=ours), w, 16, seconds
                )
                row[f"lightly w={w}"] = loader_rate(
                    tvd.ImageFolder(tmp, transform=lightly_transform(name, 224)), w, 16, seconds
                )
            row[f"ours PIL* w={workers}"] = loader_rate(
                tvd.ImageFolder(tmp, transform=PILMultiView(specs)), workers, 16, seconds
            )
            row[f"ours/lightly w={workers}"] = ratio(
                row[f"ours w={workers}"], row[f"lightly w={workers}"]
            )
            row["PIL*/lightly"] = ratio(row[f"ours PIL* w={workers}"], row[f"lightly w={workers}"])
            print(
                f"  224px {name:24} ours {row[f'ours w={workers}']:6.1f}  lightly "
                f"{row[f'lightly w={workers}']:6.1f} img/s",
                flush=True,
            )
            rows.append(row)
    return rows


def columns(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(k for r in rows for k in r))


def run(quick: bool = False, workers: int = 2) -> tuple[str, list[dict]]:
    """Run the benchmark, write results/data.json; return (Markdown section, targets)."""
    seconds = 1.0 if quick else 2.0
    n_files = 128 if quick else 256
    print("32 px, in-memory uint8", flush=True)
    small = run_32px(quick, workers, seconds)
    print(f"224 px, {n_files} JPEG files", flush=True)
    large = run_224px(quick, workers, seconds, n_files)
    write_json(
        "data",
        {
            "quick": quick,
            "workers": workers,
            "seconds_per_cell": seconds,
            "jpeg_files": n_files,
            "rows_32px": small,
            "rows_224px": large,
        },
    )
    notes = [
        (
            "source images/s (each gives V views); w = DataLoader workers; ours batched = "
            f"BatchMultiView on 256-image uint8 batches, {torch.get_num_threads()} torch threads, "
            "in the main process (no workers: it runs where the model runs)"
        ),
        (
            "per-sample paths: batches of 64 (32 px) or 16 (224 px); steady state after the first "
            f"batch, {seconds:g} s per cell"
        ),
        (
            "recipes at their defaults (blur on, also at 32 px); lightly: BYOLView1/2Transform x "
            "ns and SimCLRTransform with the same probabilities, PIL ops per view"
        ),
        f"224 px: {n_files} JPEGs of 256-400 px (quality 90), ImageFolder + PIL decode",
        (
            "* = a candidate change to data/transforms.py, implemented in bench_data.py: 'PIL' "
            "runs the reference views on the PIL image with PIL's "
            "GaussianBlur(radius=sigma) (the official seeds' blur) and converts to a tensor last"
        ),
    ]
    tables = [
        ("32 px, in-memory uint8 (images/s)", markdown_table(small, columns(small))),
        ("224 px, JPEG folder (images/s)", markdown_table(large, columns(large))),
    ]
    ns4 = next(r for r in small if r["recipe"] == "byol_asymmetric ns=4")
    found = [
        {
            "target": "data path >= 2x per-view PIL (lightly) at ns = 4, 32 px",
            "measured": f"{ns4['batched/lightly best']:.2f}x",
            "met": ns4["batched/lightly best"] >= 2,
            "note": "",
        }
    ]
    return report("Data path", tables, notes), found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer recipes, shorter cells")
    parser.add_argument("--workers", type=int, default=2, help="the N of '0 and N workers'")
    a = parser.parse_args()
    print(run(a.quick, a.workers)[0])


if __name__ == "__main__":
    main()
