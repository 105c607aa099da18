"""--aug-device split: the loader workers decode and crop, the training device does the colour.

At ImageNet scale a multi-view recipe (DSF: 8 views of 224 px; PatchMix: 2 x 224 + 8 x 96) makes the
loader workers the bottleneck when each view is made whole per sample (`MultiViewTransform`). This
placement cuts every view in two:

* `GeometricViews` (in the workers, per sample, seeded by `SeededSamples`): decode once, then per
  view RandomResizedCrop + resize to the final size, or the padded RandomCrop of `ViewSpec.pad`
  (+ horizontal flip) on the uint8 image, giving uint8 [3, S, S]; the default collate makes
  list[uint8 [B, 3, S, S]], side-major.
* `DevicePhotometric` (on the training device, batched): the rest of `BatchMultiView`'s engine,
  RandAugment, jitter, grey, blur, solarize and normalisation, with per-sample parameters drawn by
  `sample_params` from the same ViewSpec distributions, using the global torch RNG of that device
  (saved in every checkpoint, so a resumed run redraws them exactly).

Views that share a ViewSpec are augmented in one batched call; views of different sizes (multi-crop)
stay separate groups. With RandAugment in a spec its flip moves to the device too, after
RandAugment, because RandAugment's shears and translations do not commute with the flip.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from data.batched import ViewGroups, photometric
from data.eval_transforms import _to_float, resize_for_eval
from data.per_sample import view_crop
from data.randaugment import randaugment
from data.view_params import sample_params
from data.views import ViewSpec


def _as_uint8_chw(img: Image.Image | Tensor) -> Tensor:
    """uint8 RGB [3, H, W]. A PIL image stays a channels-last view (no copy): torch's uint8
    antialiased resize is fastest on that layout, and the crop copies anyway."""
    if isinstance(img, Image.Image):
        img = TF.pil_to_tensor(img if img.mode == "RGB" else img.convert("RGB"))
    if img.dtype != torch.uint8:
        raise TypeError(f"expected a uint8 image tensor, got {img.dtype}")
    return img.expand(3, -1, -1) if img.shape[-3] == 1 else img


def _geometric_view(spec: ViewSpec) -> Any:
    if not spec.crop:  # the un-augmented view: resize only, as the other placements
        return lambda x: resize_for_eval(x, spec.size, interpolation=spec.interpolation)
    ops: list[Any] = [view_crop(spec)]
    if spec.flip_p > 0 and spec.randaugment_p == 0:  # with RandAugment: flipped on the device
        ops.append(v2.RandomHorizontalFlip(p=spec.flip_p))
    return v2.Compose(ops)


class GeometricViews:
    """Worker side: one image -> list of V uint8 [3, S, S] (crop, resize, flip), side-major."""

    def __init__(self, specs: Sequence[ViewSpec]):
        self.specs = tuple(specs)
        self.transforms = [_geometric_view(s) for s in self.specs]

    def __call__(self, img: Image.Image | Tensor) -> list[Tensor]:
        x = _as_uint8_chw(img)
        return [t(x) for t in self.transforms]  # the collate copies them into one batch

    def __repr__(self) -> str:
        return f"GeometricViews({len(self.specs)} views: {self.specs})"


class DevicePhotometric(ViewGroups):
    """Device side: list of V uint8 [B, 3, S_v, S_v] -> list of V normalised float [B, 3, S_v, S_v].

    Parameters come from `sample_params` (the global RNG, or `generator`), so every rate and range
    is the ViewSpec's; crop boxes are drawn too (and unused) so the stream is `BatchMultiView`'s.
    """

    @torch.no_grad()
    def forward(
        self, views: Sequence[Tensor], generator: torch.Generator | None = None
    ) -> list[Tensor]:
        if len(views) != len(self.specs):
            raise ValueError(f"expected {len(self.specs)} views, got {len(views)}")
        out: list[Tensor] = list(views)
        with torch.autocast(views[0].device.type, enabled=False):
            for spec, idx in self.groups:
                y = _to_float(torch.cat([views[v] for v in idx]))  # [len(idx) * B, 3, S, S]
                if spec.crop:
                    y = self._augment(y, spec, generator)
                y = (y - self.mean) / self.std
                for k, chunk in enumerate(y.chunk(len(idx))):
                    out[idx[k]] = chunk
        return out

    def _augment(self, y: Tensor, spec: ViewSpec, generator: torch.Generator | None) -> Tensor:
        n, _, size, _ = y.shape
        params = sample_params(spec, n, size, size, generator, y.device)
        if spec.randaugment_p > 0:  # the reference order: crop -> RandAugment -> ... -> flip
            y = randaugment(y, params.randaugment, params.randaugment_ops,
                            params.randaugment_negate, spec.randaugment_magnitude)
            y = torch.where(params.flip.view(-1, 1, 1, 1), y.flip(-1), y)
        return photometric(y, spec, params, self.hue_impl)

    def extra_repr(self) -> str:
        return f"{len(self.specs)} views, hue {self.hue_impl}: {self.specs}"


# ============ the placement switch of data/loaders.py build_view_loader ============

PLACEMENTS = ("auto", "device", "split", "workers")


def resolve_placement(aug_device: str, in_memory: bool, device_type: str) -> str:
    """--aug-device -> "device" (batched, in-memory data), "split" or "workers" (folder data).

    auto: in-memory datasets on the device; folder datasets split on CUDA (the workers are the
    bottleneck there) and whole per sample in the workers on CPU (one pool of cores either way).
    """
    if aug_device not in PLACEMENTS:
        raise SystemExit(f"error: --aug-device {aug_device!r}: choose from {list(PLACEMENTS)}")
    if aug_device == "auto":
        return "device" if in_memory else ("split" if device_type == "cuda" else "workers")
    if aug_device == "device" and not in_memory:
        raise SystemExit("error: --aug-device device needs an in-memory dataset; this one is "
                         "decoded in loader workers: use --aug-device split or workers")
    if aug_device == "split" and in_memory:
        raise SystemExit("error: --aug-device split is for folder datasets (decoded in loader "
                         "workers); this one is in memory: use --aug-device device")
    return aug_device
