"""Multi-view augmentation: one `ViewSpec` per view, two implementations of the same distribution.

* `MultiViewTransform` is the reference, per sample: torchvision.transforms.v2 on uint8 tensors,
  for folder datasets decoded in DataLoader workers.
* `BatchMultiView` is the fast path: an nn.Module on a uint8 batch (CPU or GPU) that draws
  independent parameters for every sample and view from the same distributions, vectorised over
  the batch.

Views are side-major, `[t1 x ns, t2 x ns, local crops ...]` (STYLE B2). The op order is MoCo v3's
(`main_moco.py`): RandomResizedCrop -> ColorJitter (p) -> Grayscale (p) -> GaussianBlur (p) ->
Solarize (p) -> HorizontalFlip -> Normalize, with DSF's CIFAR RandAugment (p, off by default) right
after the crop: RandomResizedCrop -> RandAugment (p) -> ColorJitter (p) -> ...

Blur kernel: MoCo v3, DSF, SNCLR and PatchMix blur with PIL `GaussianBlur(radius=sigma)`, a
Gaussian of std sigma with no fixed kernel. `ViewSpec.blur_kernel=None` therefore truncates at
3 sigma_max (`2 * ceil(3 * sigma_max) + 1`, 13 px for sigma <= 2) whatever the image size, instead
of the "10 % of the image" rule of torchvision-based code (pass `blur_kernel` explicitly for that,
e.g. MV-MR's `2 * int(0.05 * size) + 1`). It is capped at `2 * size - 1` (reflect padding limit).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from data.hue import HUE_IMPLS, shift_hue
from data.views import ViewSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
# the std of the MoCo CIFAR demo, kept by DSF's CIFAR scripts and BeCLR (not the true std)
CIFAR10_STD_MOCO_DEMO = (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
FASHION_MNIST_MEAN = (0.2860, 0.2860, 0.2860)  # grayscale replicated to 3 channels
FASHION_MNIST_STD = (0.3530, 0.3530, 0.3530)

_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale
_INTERPOLATIONS = {
    "bilinear": v2.InterpolationMode.BILINEAR,
    "bicubic": v2.InterpolationMode.BICUBIC,
}

# torchvision's `v2.RandAugment._AUGMENTATION_SPACE` (0.29), in its order (the op index of
# `ViewParams.randaugment_ops`): name -> (magnitudes(num_bins, height, width) or None, signed)
_RANDAUGMENT_SPACE: dict[str, tuple[Any, bool]] = {
    "Identity": (None, False),
    "ShearX": (lambda bins, h, w: torch.linspace(0.0, 0.3, bins), True),
    "ShearY": (lambda bins, h, w: torch.linspace(0.0, 0.3, bins), True),
    "TranslateX": (lambda bins, h, w: torch.linspace(0.0, 150.0 / 331.0 * w, bins), True),
    "TranslateY": (lambda bins, h, w: torch.linspace(0.0, 150.0 / 331.0 * h, bins), True),
    "Rotate": (lambda bins, h, w: torch.linspace(0.0, 30.0, bins), True),
    "Brightness": (lambda bins, h, w: torch.linspace(0.0, 0.9, bins), True),
    "Color": (lambda bins, h, w: torch.linspace(0.0, 0.9, bins), True),
    "Contrast": (lambda bins, h, w: torch.linspace(0.0, 0.9, bins), True),
    "Sharpness": (lambda bins, h, w: torch.linspace(0.0, 0.9, bins), True),
    "Posterize": (
        lambda bins, h, w: (8 - (torch.arange(bins) / ((bins - 1) / 4))).round().int(),
        False,
    ),
    "Solarize": (lambda bins, h, w: torch.linspace(1.0, 0.0, bins), False),
    "AutoContrast": (None, False),
    "Equalize": (None, False),
}
_RANDAUGMENT_OPS = tuple(_RANDAUGMENT_SPACE)
_RANDAUGMENT_BINS = 31  # torchvision's default num_magnitude_bins


# ============ eval-style resizing (shared by both paths and by the eval transforms) ============


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
    kernels downstream (hue, blur, normalise) are 20-50 % slower on the channels-last view."""
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


# ============ reference path: torchvision.transforms.v2, per sample ============


def _gaussian_kernel1d(kernel_size: int, sigma: float) -> Tensor:
    """torchvision's 1-D Gaussian kernel (v2.functional._misc._get_gaussian_kernel1d, 0.29)."""
    lim = (kernel_size - 1) / (2.0 * math.sqrt(2.0))
    x = torch.linspace(-lim, lim, steps=kernel_size, dtype=torch.float32)
    return torch.softmax(x.div(sigma).pow(2).neg(), dim=0)


class _GaussianBlur(v2.GaussianBlur):
    """v2.GaussianBlur (same sigma draw, kernel, reflect padding and uint8 rounding) that blurs a
    plain [C, H, W] tensor with two 1-D convolutions instead of torchvision's 2-D one: the kernel
    is the outer product of the 1-D kernels, so only the float summation order differs (a pixel
    changes by 1 only when it lands within ~1e-5 of a .5 rounding boundary: 34 of 2.4 M pixels
    in a check). k=13 at 224 px, 1 thread: ~6 ms -> ~1.8 ms. Anything else goes to torchvision."""

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


def _reference_view(
    spec: ViewSpec, mean: Sequence[float], std: Sequence[float], hue_impl: str = "float"
) -> v2.Compose:
    if not spec.crop:
        ops: list[Any] = [_EvalResize(spec.size, None, True, spec.interpolation)]
    else:
        ops = [
            v2.RandomResizedCrop(
                spec.size,
                scale=spec.scale,
                ratio=spec.ratio,
                interpolation=_INTERPOLATIONS[spec.interpolation],
                antialias=True,
            )
        ]
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


# ============ fast path: batched parameters ============


class ViewParams(NamedTuple):
    """Random parameters of n augmented samples of one ViewSpec (all tensors have leading dim n).

    top/left/height/width: crop box (int64, pixels of the input). flip, jitter, gray, blur,
    solarize: bool masks (op applied). factors [n, 4]: brightness, contrast, saturation, hue.
    order [n, 4]: ColorJitter's op order, a permutation of 0..3 in that same numbering.
    sigma [n]: blur std. randaugment [n]: bool mask (RandAugment applied); randaugment_ops
    [n, num_ops]: the ops (int64 index into torchvision's RandAugment op list, `_RANDAUGMENT_OPS`),
    applied in column order; randaugment_negate [n, num_ops]: bool, the magnitude is negated (only
    read for the signed ops). A spec with randaugment_p == 0 gets an all-False mask and [n, 0]
    op tensors, with no random draw.
    """

    top: Tensor
    left: Tensor
    height: Tensor
    width: Tensor
    flip: Tensor
    jitter: Tensor
    factors: Tensor
    order: Tensor
    gray: Tensor
    blur: Tensor
    sigma: Tensor
    solarize: Tensor
    randaugment: Tensor
    randaugment_ops: Tensor
    randaugment_negate: Tensor


def _rand(
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """U[0, 1) drawn on the generator's device (the global RNG if None), moved to `device`."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


def _uniform(
    lo: float, hi: float, n: int, generator: torch.Generator | None, device: torch.device
) -> Tensor:
    return lo + (hi - lo) * _rand((n,), generator, device)


def _sample_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None,
    device: torch.device,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """RandomResizedCrop.get_params for n samples: 10 trials of (area, log-ratio), first valid wins,
    else the central-crop fallback. Float64 and round-half-even, as torchvision's Python math."""
    area = height * width
    u = _rand((3, n, 10), generator, device, torch.float64)
    target_area = area * (scale[0] + (scale[1] - scale[0]) * u[0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[1])
    w = torch.round(torch.sqrt(target_area * aspect))  # [n, 10]
    h = torch.round(torch.sqrt(target_area / aspect))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.to(torch.uint8).argmax(dim=1, keepdim=True)  # index of the first valid trial
    found = ok.any(dim=1)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    # fallback: the largest central crop with an aspect ratio inside `ratio`
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    w = torch.where(found, w, float(fw)).long()
    h = torch.where(found, h, float(fh)).long()
    # uniform integer offsets in [0, H - h]; the clamp guards against u * n rounding up to n
    top = torch.minimum((u[2, :, 0] * (height - h + 1)).long(), height - h)
    left = torch.minimum((u[2, :, 1] * (width - w + 1)).long(), width - w)
    top = torch.where(found, top, (height - h) // 2)
    left = torch.where(found, left, (width - w) // 2)
    return top, left, h, w


def sample_params(
    spec: ViewSpec,
    n: int,
    height: int,
    width: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> ViewParams:
    """Draw n independent sets of augmentation parameters of `spec` for images of height x width.

    The RandAugment parameters are drawn last, and only if spec.randaugment_p > 0, so that the
    random stream of a spec without RandAugment does not depend on the RandAugment fields."""
    device = torch.device(device or "cpu")
    top, left, h, w = _sample_boxes(n, height, width, spec.scale, spec.ratio, generator, device)
    b, c, s, hue = spec.jitter
    factors = torch.stack(
        [
            _uniform(max(0.0, 1 - b), 1 + b, n, generator, device),
            _uniform(max(0.0, 1 - c), 1 + c, n, generator, device),
            _uniform(max(0.0, 1 - s), 1 + s, n, generator, device),
            _uniform(-hue, hue, n, generator, device),
        ],
        dim=1,
    )  # [n, 4]
    u = _rand((5, n), generator, device)
    order = _rand((n, 4), generator, device).argsort(dim=1)  # a uniform random permutation
    sigma = _uniform(spec.blur_sigma[0], spec.blur_sigma[1], n, generator, device)
    if spec.randaugment_p > 0:  # after every other draw: the existing streams are unchanged
        ra_mask = _rand((n,), generator, device) < spec.randaugment_p
        k, n_ops = spec.randaugment_ops, len(_RANDAUGMENT_OPS)
        # uniform op index (torch.randint(14) in torchvision); the clamp guards u * 14 -> 14.0
        ops = (_rand((n, k), generator, device) * n_ops).long().clamp_(max=n_ops - 1)
        negate = _rand((n, k), generator, device) < 0.5
    else:  # no draw at all
        ra_mask = torch.zeros(n, dtype=torch.bool, device=device)
        ops = torch.zeros(n, 0, dtype=torch.long, device=device)
        negate = torch.zeros(n, 0, dtype=torch.bool, device=device)
    return ViewParams(
        top=top,
        left=left,
        height=h,
        width=w,
        flip=u[0] < spec.flip_p,
        jitter=u[1] < spec.jitter_p,
        factors=factors,
        order=order,
        gray=u[2] < spec.gray_p,
        blur=u[3] < spec.blur_p,
        sigma=sigma,
        solarize=u[4] < spec.solarize_p,
        randaugment=ra_mask,
        randaugment_ops=ops,
        randaugment_negate=negate,
    )


# ============ fast path: batched ops on float images in [0, 1] ============


def _filter(x: Tensor, interpolation: str) -> Tensor:
    """Kernels of torch's antialiased resize: triangle, or Keys cubic with a = -0.5."""
    x = x.abs()
    if interpolation == "bilinear":
        return (1 - x).clamp(min=0)
    a = -0.5
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def _resample_matrix(
    start: Tensor,
    length: Tensor,
    in_size: int,
    out_size: int,
    interpolation: str,
    dtype: torch.dtype,
) -> Tensor:
    """Per-sample 1-D resampling matrices [n, out_size, in_size] that crop [start, start+length)
    and resize it to out_size with the weights of
    F.interpolate(antialias=True, align_corners=False).
    """
    length = length.to(dtype).view(-1, 1, 1)
    scale = length / out_size  # input pixels per output pixel
    out_pos = torch.arange(out_size, device=start.device, dtype=dtype) + 0.5
    center = scale * out_pos.view(1, -1, 1)  # [n, S, 1]
    t = torch.arange(in_size, device=start.device, dtype=dtype).view(1, 1, -1)
    t = t - start.to(dtype).view(-1, 1, 1)  # crop coordinate of every input pixel, [n, 1, in]
    # when downsampling, the filter is stretched by `scale` (antialiasing)
    weights = _filter((t - center + 0.5) / scale.clamp(min=1.0), interpolation)
    weights = weights * ((t >= 0) & (t < length))  # only pixels inside the crop
    return weights / weights.sum(dim=-1, keepdim=True)


def crop_resize(x: Tensor, params: ViewParams, size: int, interpolation: str) -> Tensor:
    """Crop each sample's box, resize it to size x size and flip it where params.flip.

    x is [B, C, H, W] and params hold n = k * B samples (k views of the same batch, sample i uses
    image i % B); returns [n, C, size, size]. Separable resampling as two batched matmuls; the flip
    reverses the output columns, which commutes with every later (pointwise or symmetric) op except
    RandAugment's geometric ops (`apply_params` then passes flip=False and flips after RandAugment).
    """
    B, C, H, W = x.shape
    rows = _resample_matrix(params.top, params.height, H, size, interpolation, x.dtype)  # [n,S,H]
    cols = _resample_matrix(params.left, params.width, W, size, interpolation, x.dtype)  # [n,S,W]
    cols = torch.where(params.flip.view(-1, 1, 1), cols.flip(1), cols)
    k = rows.shape[0] // B
    out = rows.view(k, B, 1, size, H) @ x.unsqueeze(0)  # [k, B, C, S, W]
    out = out @ cols.view(k, B, 1, size, W).transpose(-1, -2)  # [k, B, C, S, S]
    out = out.reshape(k * B, C, size, size)
    return out.clamp_(0.0, 1.0) if interpolation == "bicubic" else out  # cubic overshoots


def _grayscale(x: Tensor) -> Tensor:
    r, g, b = x.unbind(dim=1)
    return (_GRAY_WEIGHTS[0] * r + _GRAY_WEIGHTS[1] * g + _GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _sync_free(x: Tensor) -> bool:
    """Avoid data-dependent shapes (nonzero: a device->host sync) on accelerators."""
    return x.device.type != "cpu"


def color_jitter(
    x: Tensor,
    apply: Tensor,
    factors: Tensor,
    order: Tensor,
    with_hue: bool = True,
    hue_impl: str = "float",
) -> Tensor:
    """ColorJitter per sample: the 4 ops (brightness, contrast, saturation, hue) in each sample's
    own random order, only where `apply`. Brightness, contrast and saturation are one blend each,
    `clamp(f * x + (1 - f) * target)`, with target 0, the mean gray level, or the gray image.
    `with_hue=False` skips the (costly) hue op, for a zero hue range. `hue_impl`: "float" (HSV
    in float32, torchvision's tensor adjust_hue) or "pil" (PIL's 8-bit HSV, data/hue.py)."""
    hue_op = HUE_IMPLS[hue_impl]

    def per_sample(t: Tensor) -> Tensor:
        return t.view(-1, 1, 1, 1)

    for k in range(4):  # loop over the 4 op slots, never over samples
        op = torch.where(apply, order[:, k], -1)  # [n]; -1 = this sample is not jittered
        f = factors.gather(1, order[:, k : k + 1]).squeeze(1)
        gray = _grayscale(x)
        target = torch.where(
            per_sample(op == 2),
            gray,
            torch.where(
                per_sample(op == 1), gray.mean(dim=(1, 2, 3), keepdim=True), torch.zeros_like(gray)
            ),
        )
        ratio = per_sample(torch.where((op >= 0) & (op <= 2), f, torch.ones_like(f)))
        x = (ratio * x + (1 - ratio) * target).clamp_(0.0, 1.0)
        if with_hue and _sync_free(x):  # every sample, kept only where selected: no host sync
            x = torch.where(per_sample(op == 3), hue_op(x, f), x)
        elif with_hue:  # on the CPU only the selected samples (2-3x faster, same output)
            idx = (op == 3).nonzero().squeeze(1)
            x = x.index_copy(0, idx, hue_op(x[idx], f[idx]))
    return x


@functools.lru_cache(maxsize=64)
def _randaugment_magnitudes(magnitude: int, height: int, width: int) -> list[float]:
    """Each RandAugment op's (unsigned) magnitude at bin `magnitude`, as torchvision computes it
    (once per size: 11 tensor reads otherwise at every call)."""
    out = []
    for fn, _ in _RANDAUGMENT_SPACE.values():
        out.append(0.0 if fn is None else float(fn(_RANDAUGMENT_BINS, height, width)[magnitude]))
    return out


def _via_uint8(x: Tensor, op: Any) -> Tensor:
    """Apply a uint8 kernel to float images in [0, 1] (rounded to the uint8 grid, as the reference
    path's images are)."""
    q = x.mul(255).round_().clamp_(0, 255).to(torch.uint8)
    return op(q).to(x.dtype).div_(255)


def _randaugment_op(x: Tensor, name: str, magnitude: float) -> Tensor:
    """One RandAugment op on float images x [m, C, H, W] in [0, 1], all with the same signed
    magnitude: torchvision's `v2.RandAugment` (`_apply_image_or_video_transform`) with nearest
    interpolation and fill 0, through torchvision.transforms.v2.functional. Posterize and Equalize
    go through uint8 (the float Posterize kernel quantises differently from the uint8 one)."""
    nearest = v2.InterpolationMode.NEAREST
    if name == "Identity":
        return x
    if name in ("ShearX", "ShearY"):
        shear = math.degrees(math.atan(magnitude))
        return TF.affine(
            x,
            angle=0.0,
            translate=[0, 0],
            scale=1.0,
            shear=[shear, 0.0] if name == "ShearX" else [0.0, shear],
            interpolation=nearest,
            center=[0, 0],
        )
    if name in ("TranslateX", "TranslateY"):
        shift = int(magnitude)  # truncation towards 0, as torchvision
        return TF.affine(
            x,
            angle=0.0,
            translate=[shift, 0] if name == "TranslateX" else [0, shift],
            scale=1.0,
            shear=[0.0, 0.0],
            interpolation=nearest,
        )
    if name == "Rotate":
        return TF.rotate(x, angle=magnitude, interpolation=nearest)
    if name == "Brightness":
        return TF.adjust_brightness(x, 1.0 + magnitude)
    if name == "Color":
        return TF.adjust_saturation(x, 1.0 + magnitude)
    if name == "Contrast":
        return TF.adjust_contrast(x, 1.0 + magnitude)
    if name == "Sharpness":
        return TF.adjust_sharpness(x, 1.0 + magnitude)
    if name == "Posterize":
        bits = int(magnitude)
        return _via_uint8(x, lambda q: TF.posterize(q, bits))
    if name == "Solarize":
        return TF.solarize(x, threshold=1.0 * magnitude)  # bound 1.0 for float images
    if name == "AutoContrast":
        return TF.autocontrast(x)
    if name == "Equalize":
        return _via_uint8(x, TF.equalize)
    raise ValueError(f"unknown RandAugment op {name}")


_SIGNED_OPS: dict[torch.device, Tensor] = {}


def _signed_ops(device: torch.device) -> Tensor:
    """Which RandAugment ops take a sign, on `device`; copied there once (each copy is a sync)."""
    if device not in _SIGNED_OPS:
        _SIGNED_OPS[device] = torch.tensor([s for _, s in _RANDAUGMENT_SPACE.values()]).to(device)
    return _SIGNED_OPS[device]


def randaugment(x: Tensor, apply: Tensor, ops: Tensor, negate: Tensor, magnitude: int) -> Tensor:
    """Per-sample RandAugment of x [n, C, H, W] in [0, 1]: sample i, where apply[i], gets the ops
    ops[i, 0], ops[i, 1], ... (indices into `_RANDAUGMENT_OPS`) in that order, with torchvision's
    magnitude at bin `magnitude` of 31 for the image size, negated where negate (signed ops only).

    For each op slot, samples are grouped by (op, sign) (one magnitude per group, so one batched
    torchvision call) and written back with index_copy: a loop over op kinds, never over samples;
    one host sync per slot (the group sizes)."""
    n_ops = len(_RANDAUGMENT_OPS)
    if ops.shape[1] == 0 or not x.shape[0]:
        return x
    magnitudes = _randaugment_magnitudes(magnitude, x.shape[-2], x.shape[-1])
    signed = _signed_ops(x.device)
    x = x.clone()
    for k in range(ops.shape[1]):  # loop over the op slots, never over samples
        op = ops[:, k]
        key = torch.where(apply, op * 2 + (negate[:, k] & signed[op]).long(), 0)  # 0: Identity
        # scatter_add_, not bincount (a CUDA bincount reads its max back first): one sync per slot
        counts = torch.zeros(2 * n_ops, dtype=torch.long, device=key.device)
        counts = counts.scatter_add_(0, key, torch.ones_like(key)).tolist()
        perm = key.argsort(stable=True)
        start = counts[0] + counts[1]  # Identity (and not applied): unchanged
        for group in range(2, 2 * n_ops):
            count = counts[group]
            if count == 0:
                continue
            idx = perm[start : start + count]
            start += count
            name, sign = _RANDAUGMENT_OPS[group // 2], -1.0 if group % 2 else 1.0
            x.index_copy_(0, idx, _randaugment_op(x[idx], name, sign * magnitudes[group // 2]))
    return x


def gaussian_blur(x: Tensor, apply: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Per-sample Gaussian blur of x [n, C, H, W] (std sigma [n], reflect padding, as torchvision),
    as a separable grouped convolution; samples with apply=False get a delta kernel (exact copy)."""
    n, C, H, W = x.shape
    offsets = torch.arange(kernel_size, device=x.device, dtype=x.dtype) - (kernel_size - 1) / 2
    kernel = torch.exp(-0.5 * (offsets / sigma.view(-1, 1).to(x.dtype)) ** 2)  # [n, k]
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    delta = (offsets == 0).to(x.dtype).expand(n, -1)
    kernel = torch.where(apply.view(-1, 1), kernel, delta).repeat_interleave(C, dim=0)  # [n*C, k]
    pad = kernel_size // 2
    y = F.pad(x, (pad, pad, pad, pad), mode="reflect").view(1, n * C, H + 2 * pad, W + 2 * pad)
    y = F.conv2d(y, kernel.view(n * C, 1, 1, kernel_size), groups=n * C)  # along W
    y = F.conv2d(y, kernel.view(n * C, 1, kernel_size, 1), groups=n * C)  # along H
    return y.view(n, C, H, W)


def apply_params(
    x: Tensor, spec: ViewSpec, params: ViewParams, hue_impl: str = "float"
) -> Tensor:
    """Augment a float batch x [B, 3, H, W] in [0, 1] with sampled params -> [n, 3, S, S] in [0, 1]
    (n = k * B, see `crop_resize`), in MoCo v3's op order (RandAugment after the crop, before the
    colour jitter, as DSF's CIFAR recipe). No normalisation."""
    if spec.randaugment_p > 0:
        # RandAugment's shears/rotations/translations do not commute with the flip: flip after them
        # (the remaining ops commute with it, so this is the reference's flip-last order)
        y = crop_resize(
            x, params._replace(flip=torch.zeros_like(params.flip)), spec.size, spec.interpolation
        )
        y = randaugment(
            y,
            params.randaugment,
            params.randaugment_ops,
            params.randaugment_negate,
            spec.randaugment_magnitude,
        )
        y = torch.where(params.flip.view(-1, 1, 1, 1), y.flip(-1), y)
    else:
        y = crop_resize(x, params, spec.size, spec.interpolation)
    return photometric(y, spec, params, hue_impl)


def photometric(y: Tensor, spec: ViewSpec, params: ViewParams, hue_impl: str = "float") -> Tensor:
    """The colour ops of `apply_params` on cropped views y [n, 3, S, S] in [0, 1]: jitter, gray,
    blur, solarize (also the device stage of --aug-device split, data/split_views.py)."""
    if spec.jitter_p > 0 and any(spec.jitter):
        y = color_jitter(
            y, params.jitter, params.factors, params.order, spec.jitter[3] > 0, hue_impl
        )
    if spec.gray_p > 0:
        y = torch.where(params.gray.view(-1, 1, 1, 1), _grayscale(y).expand_as(y), y)
    if spec.blur_p > 0:
        y = gaussian_blur(y, params.blur, params.sigma, spec.kernel_size)
    if spec.solarize_p > 0:
        invert = params.solarize.view(-1, 1, 1, 1) & (y >= spec.solarize_threshold / 255)
        y = torch.where(invert, 1 - y, y)
    return y


def _to_float(x: Tensor) -> Tensor:
    """uint8 images -> float32 in [0, 1]; float images are assumed to be in [0, 1] already."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


class BatchMultiView(nn.Module):
    """Fast multi-view augmentation: uint8 [B, 3, H, W] -> list of V normalised float [B, 3, S, S].

    Every sample and view gets independent parameters drawn (from the global torch RNG, or
    `generator`) from the same distributions as `MultiViewTransform`. Views with the same ViewSpec
    are augmented in one batched call. The only difference from the reference is numeric: the
    reference rounds to uint8 after each op, this path stays in float32.
    """

    sample_params = staticmethod(sample_params)

    def __init__(
        self,
        specs: Sequence[ViewSpec],
        mean: Sequence[float],
        std: Sequence[float],
        hue_impl: str = "float",
    ):
        super().__init__()
        self.specs, self.hue_impl = tuple(specs), hue_impl
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        groups: dict[ViewSpec, list[int]] = {}
        for v, spec in enumerate(self.specs):
            groups.setdefault(spec, []).append(v)
        self.groups = list(groups.items())  # (spec, view indices), in order of first appearance

    @torch.no_grad()
    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> list[Tensor]:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"BatchMultiView expects [B, 3, H, W] images, got {tuple(x.shape)}")
        # float32 even if called under autocast: fp16 resampling weights would shift the pixels
        with torch.autocast(x.device.type, enabled=False):
            return self._views(_to_float(x), generator)

    def _views(self, x: Tensor, generator: torch.Generator | None) -> list[Tensor]:
        B, _, H, W = x.shape
        views: list[Tensor] = [x] * len(self.specs)  # placeholders: every slot is overwritten
        for spec, idx in self.groups:
            if not spec.crop:
                y = resize_for_eval(x, spec.size, interpolation=spec.interpolation)
                y = y.unsqueeze(0).expand(len(idx), -1, -1, -1, -1).reshape(-1, *y.shape[1:])
            else:
                params = sample_params(spec, len(idx) * B, H, W, generator, x.device)
                y = apply_params(x, spec, params, self.hue_impl)  # [len(idx) * B, 3, S, S]
            y = (y - self.mean) / self.std
            for k, v in enumerate(idx):
                views[v] = y[k * B : (k + 1) * B]
        return views

    def extra_repr(self) -> str:
        return f"{len(self.specs)} views: {self.specs}"
