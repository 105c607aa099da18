"""Eval transforms: deterministic resize (+ centre crop) and normalisation, per sample
(`eval_transform`) and batched (`BatchEval`). The resizing helpers are shared with the training
views (a view with crop=False, and the loader workers of --aug-device split)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from torch import Tensor, nn
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

_INTERPOLATIONS = {
    "bilinear": v2.InterpolationMode.BILINEAR,
    "bicubic": v2.InterpolationMode.BICUBIC,
}


def resize_for_eval(
    x: Tensor,
    size: int,
    resize: int | None = None,
    crop: bool = True,
    interpolation: str = "bilinear",
) -> Tensor:
    """Resize images [..., C, H, W] to [..., C, size, size] without randomness.

    Already `size` x `size`: unchanged. Larger than `size` and `crop`: Resize(shorter side to
    `resize`, default int(size * 256 / 224)) + CenterCrop(size), the ImageNet protocol. Otherwise
    (small images, or crop=False): the whole image is resized to (size, size).
    """
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    mode = _INTERPOLATIONS[interpolation]
    if crop and min(h, w) > size:
        x = TF.resize(x, [resize or int(size * 256 / 224)], interpolation=mode, antialias=True)
        return TF.center_crop(x, [size, size])
    return TF.resize(x, [size, size], interpolation=mode, antialias=True)


def to_uint8_tensor(img: Image.Image | Tensor) -> Tensor:
    """PIL image or uint8 tensor [C, H, W] -> uint8 RGB tensor [3, H, W].

    A PIL image comes out contiguous (pil_to_tensor's HWC -> CHW view is copied): the tensor
    kernels downstream (hue, blur, normalise) are slower on the channels-last view."""
    if isinstance(img, Image.Image):
        img = TF.pil_to_tensor(img.convert("RGB")).contiguous()
    if img.dtype != torch.uint8:
        raise TypeError(f"expected a uint8 image tensor, got {img.dtype}")
    return img.expand(3, -1, -1) if img.shape[-3] == 1 else img


def _ratio_side(size: int, resize_ratio: float) -> int:
    """int(size * R), as PatchMix's int(size / 224 * 256); a product within 1e-3 of an integer is
    that integer, so R typed as 1.142857 gives 256 at 224 px, not 255."""
    side = size * resize_ratio
    return round(side) if abs(side - round(side)) < 1e-3 else int(side)


def resize_center_crop(x: Tensor, size: int, resize_ratio: float, interpolation: str) -> Tensor:
    """Resize(shorter side to int(size * R)) + CenterCrop(size) at ANY input size (PatchMix's
    eval: CIFAR 32 -> 36 -> centre 32). Float input is clamped after bicubic, as PIL's is."""
    mode = _INTERPOLATIONS[interpolation]
    x = TF.resize(x, [_ratio_side(size, resize_ratio)], interpolation=mode, antialias=True)
    x = TF.center_crop(x, [size, size])
    return x.clamp(0.0, 1.0) if x.is_floating_point() and interpolation == "bicubic" else x


class _EvalResize:
    def __init__(
        self,
        size: int,
        resize: int | None,
        crop: bool,
        interpolation: str,
        resize_ratio: float | None = None,
    ):
        self.args = (size, resize, crop, interpolation)
        self.resize_ratio = resize_ratio

    def __call__(self, x: Tensor) -> Tensor:
        if self.resize_ratio is not None:
            return resize_center_crop(x, self.args[0], self.resize_ratio, self.args[3])
        return resize_for_eval(x, *self.args)

    def __repr__(self) -> str:
        size, resize, crop, interpolation = self.args
        return f"EvalResize({size=}, {resize=}, {crop=}, {interpolation=})"


def eval_transform(
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    resize: int | None = None,
    crop: bool = True,
    interpolation: str = "bilinear",
    resize_ratio: float | None = None,
) -> v2.Compose:
    """Per-sample eval transform: PIL/uint8 [C,H,W] -> normalised float [3, size, size].

    Large images: Resize(int(size*256/224)) + CenterCrop(size); small ones: resized whole (identity
    at their own size). See `resize_for_eval`. With `resize_ratio` R: Resize(int(size*R)) +
    CenterCrop(size) whatever the input size (`resize_center_crop`).
    """
    return v2.Compose(
        [
            to_uint8_tensor,
            _EvalResize(size, resize, crop, interpolation, resize_ratio),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )


class BatchEval(nn.Module):
    """Batched eval transform: uint8 [B, C, H, W] -> normalised float [B, C, size, size]."""

    def __init__(
        self,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        resize: int | None = None,
        crop: bool = True,
        interpolation: str = "bilinear",
        resize_ratio: float | None = None,
    ):
        super().__init__()
        self.size, self.resize, self.crop, self.interpolation = size, resize, crop, interpolation
        self.resize_ratio = resize_ratio
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.resize_ratio is not None:
            x = resize_center_crop(_to_float(x), self.size, self.resize_ratio, self.interpolation)
        else:
            x = resize_for_eval(_to_float(x), self.size, self.resize, self.crop, self.interpolation)
        return (x - self.mean) / self.std


def _to_float(x: Tensor) -> Tensor:
    """uint8 images -> float32 in [0, 1]; float images are assumed to be in [0, 1] already."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()
