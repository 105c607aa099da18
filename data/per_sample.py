"""Reference multi-view augmentation, per sample: `MultiViewTransform`, one `ViewSpec` per view,
with torchvision.transforms.v2 on uint8 tensors, for folder datasets decoded in DataLoader workers.
`BatchMultiView` (data/batched.py) draws from the same distributions, vectorised over a batch.

Views are side-major, `[t1 x ns, t2 x ns, local crops ...]` (STYLE B2). The op order is MoCo v3's
(`main_moco.py`): RandomResizedCrop (or the padded RandomCrop of `ViewSpec.pad`) -> ColorJitter
(p) -> Grayscale (p) -> GaussianBlur (p) -> Solarize (p) -> HorizontalFlip -> Normalize, with DSF's CIFAR RandAugment (p, off by default) right
after the crop: RandomResizedCrop -> RandAugment (p) -> ColorJitter (p) -> ...

Blur kernel: MoCo v3, DSF, SNCLR and PatchMix blur with PIL `GaussianBlur(radius=sigma)`, a
Gaussian of std sigma with no fixed kernel. `ViewSpec.blur_kernel=None` therefore truncates at
3 sigma_max (`2 * ceil(3 * sigma_max) + 1`, 13 px for sigma <= 2) whatever the image size, instead
of the "10 % of the image" rule of torchvision-based code (pass `blur_kernel` explicitly for that,
e.g. MV-MR's `2 * int(0.05 * size) + 1`). It is capped at `2 * size - 1` (reflect padding limit).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from data.batched import _grayscale
from data.eval_transforms import _INTERPOLATIONS, _EvalResize, to_uint8_tensor
from data.hue import shift_hue
from data.views import ViewSpec


def _gaussian_kernel1d(kernel_size: int, sigma: float) -> Tensor:
    """torchvision's 1-D Gaussian kernel (v2.functional._misc._get_gaussian_kernel1d, 0.29)."""
    lim = (kernel_size - 1) / (2.0 * math.sqrt(2.0))
    x = torch.linspace(-lim, lim, steps=kernel_size, dtype=torch.float32)
    return torch.softmax(x.div(sigma).pow(2).neg(), dim=0)


class _GaussianBlur(v2.GaussianBlur):
    """v2.GaussianBlur (same sigma draw, kernel, reflect padding and uint8 rounding) that blurs a
    plain [C, H, W] tensor with two 1-D convolutions instead of torchvision's 2-D one: the kernel
    is the outer product of the 1-D kernels, so only the float summation order differs (a pixel
    changes by 1 only when it lands within ~1e-5 of a .5 rounding boundary, which is rare), and two
    1-D passes cost far less than one 2-D pass at large kernels. Anything else goes to torchvision."""

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if type(inpt) is not Tensor or inpt.ndim != 3 or not inpt.numel():
            return super().transform(inpt, params)
        (kw, kh), (sx, sy) = self.kernel_size, params["sigma"]
        fp = inpt.is_floating_point()
        x = (inpt if fp else inpt.to(torch.float32)).unsqueeze(0)
        c = x.shape[1]
        wx = _gaussian_kernel1d(kw, sx).to(x.dtype).expand(c, 1, 1, kw)
        wy = _gaussian_kernel1d(kh, sy).to(x.dtype).view(kh, 1).expand(c, 1, kh, 1)
        x = F.pad(x, [kw // 2, kw // 2, kh // 2, kh // 2], mode="reflect")
        x = F.conv2d(F.conv2d(x, wx, groups=c), wy, groups=c)[0]
        return x if fp else x.round_().to(inpt.dtype)


class _ColorJitter(v2.ColorJitter):
    """v2.ColorJitter (same draws and op order) on a uint8 tensor, in one of two numerics:
    "float" = the four ops of the batched engine (`color_jitter`) in float32, rounded to uint8
    once at the end (faster than torchvision's four uint8 kernels, and the same arithmetic as
    BatchMultiView); "pil" = torchvision's uint8 kernels with PIL's 8-bit HSV hue, i.e.
    torchvision's ColorJitter on a PIL image, as the official pipelines run it."""

    def __init__(self, *jitter: float, hue_impl: str = "float"):
        super().__init__(*jitter)
        self.hue_impl = hue_impl

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if type(inpt) is not Tensor or inpt.dtype != torch.uint8 or inpt.ndim != 3:
            return super().transform(inpt, params)
        if self.hue_impl == "float":
            return self._float(inpt, params)
        hue = params["hue_factor"]
        for fn_id in params["fn_idx"]:
            if fn_id == 3 and hue is not None:  # PIL itself: faster than its emulation on one image
                inpt = TF.pil_to_tensor(TF.adjust_hue(TF.to_pil_image(inpt), hue)).contiguous()
            elif fn_id != 3:  # brightness, contrast, saturation: torchvision's uint8 kernels
                inpt = super().transform(inpt, dict(params, fn_idx=[fn_id], hue_factor=None))
        return inpt

    @staticmethod
    def _float(x: Tensor, params: dict[str, Any]) -> Tensor:
        """The blends of `color_jitter` for one image whose ops are known: no per-sample masks."""
        y = x.unsqueeze(0).float().div_(255)  # [1, 3, H, W]
        for fn_id in params["fn_idx"].tolist():
            f = params[("brightness_factor", "contrast_factor", "saturation_factor",
                        "hue_factor")[fn_id]]
            if f is None:
                continue
            if fn_id == 3:
                y = shift_hue(y, torch.tensor([f]))
                continue
            target = 0.0 if fn_id == 0 else _grayscale(y)  # brightness: blend with black
            target = target.mean() if fn_id == 1 else target  # contrast: with the mean grey
            y = y.mul_(f).add_((1 - f) * target).clamp_(0.0, 1.0)
        return y[0].mul_(255).round_().to(torch.uint8)


def view_crop(spec: ViewSpec) -> v2.Transform:
    """The view's crop as torchvision draws it: the per-sample and split placements share it.
    RandomResizedCrop, or with `spec.pad` RandomCrop(size, padding=pad) (fill 0, constant)."""
    if spec.pad is not None:
        return v2.RandomCrop(spec.size, padding=spec.pad, fill=0, padding_mode="constant")
    return v2.RandomResizedCrop(spec.size, scale=spec.scale, ratio=spec.ratio,
                                interpolation=_INTERPOLATIONS[spec.interpolation], antialias=True)


def _reference_view(
    spec: ViewSpec, mean: Sequence[float], std: Sequence[float], hue_impl: str = "float"
) -> v2.Compose:
    if not spec.crop:
        ops: list[Any] = [_EvalResize(spec.size, None, True, spec.interpolation)]
    else:
        ops = [view_crop(spec)]
        if spec.randaugment_p > 0:
            ra = v2.RandAugment(spec.randaugment_ops, spec.randaugment_magnitude)
            ops.append(v2.RandomApply([ra], p=spec.randaugment_p))
        if spec.jitter_p > 0 and any(spec.jitter):
            jitter = _ColorJitter(*spec.jitter, hue_impl=hue_impl)
            ops.append(v2.RandomApply([jitter], p=spec.jitter_p))
        if spec.gray_p > 0:
            ops.append(v2.RandomGrayscale(p=spec.gray_p))
        if spec.blur_p > 0:
            blur = _GaussianBlur(spec.kernel_size, sigma=spec.blur_sigma)
            ops.append(v2.RandomApply([blur], p=spec.blur_p))
        if spec.solarize_p > 0:
            ops.append(v2.RandomSolarize(spec.solarize_threshold, p=spec.solarize_p))
        if spec.flip_p > 0:
            ops.append(v2.RandomHorizontalFlip(p=spec.flip_p))
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(ops)


class MultiViewTransform:
    """Reference multi-view transform: one image -> list of V normalised float [3, size, size].

    Each view is augmented independently with torchvision.transforms.v2 on the uint8 image, exactly
    with the ViewSpec parameters. Use it as a Dataset transform (the default collate then gives
    list[Tensor[B, 3, size, size]], side-major). Every op runs on the uint8 tensor (a PIL crop
    is no faster on ImageNet-sized JPEGs); the colour jitter in float32, rounded once
    (`hue_impl="float"`), or with torchvision's uint8 kernels and PIL's 8-bit HSV hue, as the
    official PIL pipelines (`hue_impl="pil"`, see `_ColorJitter`).
    """

    def __init__(
        self,
        specs: Sequence[ViewSpec],
        mean: Sequence[float],
        std: Sequence[float],
        hue_impl: str = "float",
    ):
        self.specs = tuple(specs)
        self.transforms = [_reference_view(s, mean, std, hue_impl) for s in self.specs]

    def __call__(self, img: Image.Image | Tensor) -> list[Tensor]:
        x = to_uint8_tensor(img)
        return [t(x) for t in self.transforms]

    def __repr__(self) -> str:
        return f"MultiViewTransform({len(self.specs)} views: {self.specs})"
