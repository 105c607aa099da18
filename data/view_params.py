"""Random parameters of the batched augmentation (`BatchMultiView`, --aug-device split):
`ViewParams` and `sample_params`, torchvision's per-sample draws for a ViewSpec, vectorised over
n samples."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from data.randaugment import _RANDAUGMENT_OPS
from data.views import ViewSpec


class ViewParams(NamedTuple):
    """Random parameters of n augmented samples of one ViewSpec (all tensors have leading dim n).

    top/left/height/width: crop box (int64, pixels of the input; a padded crop's box, `ViewSpec.pad`,
    may reach up to pad pixels outside the image, which reads zeros there). flip, jitter, gray, blur,
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


def _sample_padded(
    n: int,
    height: int,
    width: int,
    size: int,
    pad: int,
    generator: torch.Generator | None,
    device: torch.device,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """RandomCrop(size, padding=pad).get_params for n samples: offsets uniform over
    0..H + 2 pad - size of the padded image, returned in input coordinates (minus pad)."""
    ph, pw = height + 2 * pad, width + 2 * pad
    if ph < size or pw < size:
        raise ValueError(f"padded crop of {size} px larger than the padded input {ph}x{pw}")
    u = _rand((2, n), generator, device, torch.float64)
    top = (u[0] * (ph - size + 1)).long().clamp_(max=ph - size) - pad
    left = (u[1] * (pw - size + 1)).long().clamp_(max=pw - size) - pad
    full = torch.full((n,), size, dtype=torch.long, device=device)
    return top, left, full, full.clone()


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
    if spec.pad is None:
        top, left, h, w = _sample_boxes(n, height, width, spec.scale, spec.ratio, generator, device)
    else:
        top, left, h, w = _sample_padded(n, height, width, spec.size, spec.pad, generator, device)
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
