"""Batched per-sample RandAugment: torchvision's v2.RandAugment op space and magnitudes, applied to
float images in [0, 1] with each sample's own ops and signs (the reference path uses
v2.RandAugment itself, data/per_sample.py)."""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

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
