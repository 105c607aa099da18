"""Batched multi-view augmentation: `BatchMultiView`, an nn.Module on a uint8 batch (CPU or GPU)
that draws independent parameters for every sample and view (data/view_params.py) from the same
distributions as the per-sample reference (data/per_sample.py, whose docstring gives the op order
and the blur kernel), and applies them vectorised over the batch, on float images in [0, 1].
`photometric` is also the device stage of --aug-device split (data/split_views.py)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from data.eval_transforms import _to_float, resize_for_eval
from data.hue import HUE_IMPLS
from data.randaugment import randaugment
from data.view_params import ViewParams, sample_params
from data.views import ViewSpec

_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale


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
    # an output pixel in the zero padding of a padded crop (ViewSpec.pad) has no input pixel: 0
    return weights / weights.sum(dim=-1, keepdim=True).clamp(min=1e-30)


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
        elif with_hue:  # on the CPU only the selected samples (faster, same output)
            idx = (op == 3).nonzero().squeeze(1)
            x = x.index_copy(0, idx, hue_op(x[idx], f[idx]))
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


class ViewGroups(nn.Module):
    """The view specs grouped by identical spec (one batched call per group), the normalisation
    and the hue implementation: what the batched view makers share."""

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


class BatchMultiView(ViewGroups):
    """Fast multi-view augmentation: uint8 [B, 3, H, W] -> list of V normalised float [B, 3, S, S].

    Every sample and view gets independent parameters drawn (from the global torch RNG, or
    `generator`) from the same distributions as `MultiViewTransform`. Views with the same ViewSpec
    are augmented in one batched call. The only difference from the reference is numeric: the
    reference rounds to uint8 after each op, this path stays in float32.
    """

    sample_params = staticmethod(sample_params)

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
