"""Hand-crafted representations of the original (un-augmented) image, as MV-MR computes them.

vkinakh/mv-mr ``src/model/self_supervised_module.py::_step_dc`` (which representation, and the /32
"FP16 trick"), ``src/model/hog.py::HOGLayer`` (HOG) and ``src/utils/utils.py::std_filter_torch``
(local standard deviation); docs/methods.md §7.2 and §7.6. Every function maps a batch of images
im [B, C, H, W] to a tensor [B, ...] with no gradient; the loss flattens it.

    pixels   im / 32                                              [B, C, H, W]
    hog      per-channel HOG, 24 orientation bins, 8x8 cells      [B, C*24, H//8, W//8]
    std      3x3 local standard deviation                         [B, C, H, W]
    augment  one random augmentation draw for the whole batch, /32 [B, C, H, W]
    scatnet  kymatio Scattering2D(J=2, L=8), /32                  [B, C*81, H//4, W//4]

and two variants that switch an official oddity off: ``hog_linear`` (proper linear binning) and
``augment_per_image`` (one augmentation draw per image).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision import transforms as T

FP16_SCALE = 32.0  # the official code divides raw-valued representations by 32 for fp16


def pixels(im: Tensor) -> Tensor:
    """The raw image / 32 (``full_img``)."""
    return im / FP16_SCALE


_SOBEL_CACHE: dict[tuple[torch.dtype, torch.device], Tensor] = {}


def _sobel_weight(dtype: torch.dtype, device: torch.device) -> Tensor:
    """The [2, 1, 3, 3] Sobel pair, built once per (dtype, device): a host tensor copied to the GPU
    every step would be a device sync."""
    key = (dtype, device)
    if key not in _SOBEL_CACHE:
        k = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], dtype=dtype)
        _SOBEL_CACHE[key] = torch.stack([k, k.t()])[:, None].to(device)  # [2, 1, 3, 3]
    return _SOBEL_CACHE[key]


def _sobel(im: Tensor) -> tuple[Tensor, Tensor]:
    """The official HOG layer's two 3x3 Sobel responses (zero padding 1) of im [N, 1, H, W].

    As a cross-correlation, g0 = left - right columns and g1 = top - bottom rows (weights 1, 2, 1).
    """
    g = F.conv2d(im, _sobel_weight(im.dtype, im.device), padding=1)  # [N, 2, H, W]
    return g[:, 0], g[:, 1]


def hog(im: Tensor, nbins: int = 24, pool: int = 8, official_binning: bool = True) -> Tensor:
    """HOG per colour channel (official HOGLayer): [B, C, H, W] -> [B, C*nbins, H/pool, W/pool].

    Orientation atan2(g0, g1) is scaled to phase/pi*nbins and wrapped mod nbins (unsigned, [0, pi)).
    official_binning=True reproduces the official scatter (docs/methods.md §7.6-3): the floor bin is set
    to the magnitude m, then 1 - m is added to the ceil bin, so a pixel whose phase lands on a bin
    edge (flat regions included) puts exactly 1 in that bin. False is a proper linear interpolation
    (floor bin m (1 - f), ceil bin m f, f the fractional part). Cells: pool x pool averages (floor).
    Channel c of the input gives output channels c*nbins ... c*nbins + nbins - 1.
    """
    b, c, h, w = im.shape
    g0, g1 = _sobel(im.reshape(b * c, 1, h, w))  # each [B*C, H, W]
    mag = torch.sqrt(g0 * g0 + g1 * g1)[:, None]  # [B*C, 1, H, W]
    phase = (torch.atan2(g0, g1) / math.pi * nbins)[:, None]  # in (-nbins, nbins]
    lo, hi = phase.floor(), phase.ceil()
    lo_bin, hi_bin = lo.long() % nbins, hi.long() % nbins  # Python-style mod: negatives wrap
    out = torch.zeros(b * c, nbins, h, w, dtype=im.dtype, device=im.device)
    if official_binning:
        out.scatter_(1, lo_bin, mag)
        out.scatter_add_(1, hi_bin, 1 - mag)
    else:
        frac = phase - lo
        out.scatter_add_(1, lo_bin, mag * (1 - frac))
        out.scatter_add_(1, hi_bin, mag * frac)
    out = F.avg_pool2d(out, pool, stride=pool)  # [B*C, nbins, H//pool, W//pool]
    return out.reshape(b, c * nbins, *out.shape[-2:])


def box_blur(im: Tensor, size: int = 3) -> Tensor:
    """Mean over a size x size window with reflect padding (kornia's box_blur defaults)."""
    c = im.shape[1]
    kernel = torch.full((c, 1, size, size), 1.0 / size**2, dtype=im.dtype, device=im.device)
    pad = size // 2
    return F.conv2d(F.pad(im, (pad, pad, pad, pad), mode="reflect"), kernel, groups=c)


def local_std(im: Tensor, size: int = 3, eps: float = 1e-8) -> Tensor:
    """sqrt(E[x^2] - E[x]^2 + eps) over size x size windows, NaN (rounding) -> 0: [B, C, H, W]."""
    sigma = torch.sqrt(box_blur(im * im, size) - box_blur(im, size) ** 2 + eps)
    return torch.nan_to_num(sigma, nan=0.0)


def batch_augment(size: int) -> Callable[[Tensor], Tensor]:
    """The official representation augmentation, for a batch tensor (one draw for the whole batch).

    RandomResizedCrop(size), flip, ColorJitter(0.8, 0.8, 0.8, 0.2) p=0.8, grayscale p=0.2,
    GaussianBlur(2*int(0.05*size)+1) always. Applied to normalised images, as the official code
    (§7.6-2), so the jitter also clamps them to [0, 1].
    """
    jitter = T.ColorJitter(0.8, 0.8, 0.8, 0.2)
    return T.Compose(
        [
            T.RandomResizedCrop(size),
            T.RandomHorizontalFlip(),
            T.RandomApply([jitter], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.GaussianBlur(kernel_size=2 * int(0.05 * size) + 1),
        ]
    )


def augmented(im: Tensor, augment: Callable[[Tensor], Tensor]) -> Tensor:
    """augment(im) / 32, augment called once on the batch: one random draw for every image, as the
    official code (wrap augment with per_image for one draw per image)."""
    return augment(im) / FP16_SCALE


def per_image(augment: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """A batch augmentation that draws its randomness independently for each image [C, H, W]."""

    def fn(im: Tensor) -> Tensor:
        return torch.stack([augment(x) for x in im])

    return fn


_SCATTERING: dict[tuple, torch.nn.Module] = {}


def _scattering(h: int, w: int, J: int, L: int, like: Tensor) -> torch.nn.Module:
    key = (h, w, J, L, like.dtype, like.device)
    if key not in _SCATTERING:
        try:  # the 2-D frontend alone: kymatio.torch also imports the 3-D one, which needs
            # scipy.special.sph_harm (removed in scipy 1.17)
            from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D
        except ImportError as e:
            raise ImportError(
                "the 'scatnet' representation needs kymatio (pip install kymatio); "
                "or leave scatnet out of --mvmr-reps"
            ) from e
        _SCATTERING[key] = ScatteringTorch2D(J=J, shape=(h, w), L=L).to(like.device, like.dtype)
    return _SCATTERING[key]


def scatnet(im: Tensor, J: int = 2, L: int = 8) -> Tensor:
    """Wavelet scattering transform / 32 (kymatio, imported lazily): the official full_img_scatnet.

    Shapes: [B, C, H, W] -> [B, C*K, H/2^J, W/2^J], K = 1 + JL + L^2 J(J-1)/2 (81 for J=2, L=8).
    """
    b, c, h, w = im.shape
    s = _scattering(h, w, J, L, im)(im.contiguous())  # [B, C, K, H/2^J, W/2^J]
    return s.reshape(b, -1, *s.shape[-2:]) / FP16_SCALE


def _needs_augment(name: str, per_sample: bool) -> Callable[[Tensor, Callable | None], Tensor]:
    def fn(im: Tensor, augment: Callable | None) -> Tensor:
        if augment is None:
            raise ValueError(f"the {name!r} representation needs an augment callable")
        return augmented(im, per_image(augment) if per_sample else augment)

    return fn


# name -> fn(im [B, C, H, W], augment) -> [B, ...]. The first five are the official terms, in the
# official order; the last two switch the oddities of docs/methods.md §7.6-2/3 off.
REPRESENTATIONS: dict[str, Callable[[Tensor, Callable | None], Tensor]] = {
    "pixels": lambda im, augment: pixels(im),
    "scatnet": lambda im, augment: scatnet(im),
    "augment": _needs_augment("augment", per_sample=False),
    "hog": lambda im, augment: hog(im),
    "std": lambda im, augment: local_std(im),
    "augment_per_image": _needs_augment("augment_per_image", per_sample=True),
    "hog_linear": lambda im, augment: hog(im, official_binning=False),
}


@torch.no_grad()
def compute_representations(
    im: Tensor, names: Sequence[str], augment: Callable[[Tensor], Tensor] | None = None
) -> dict[str, Tensor]:
    """{name: REPRESENTATIONS[name](im)} for the original view im [B, C, H, W], without gradient.

    Autocast is off and half precision is upcast: HOG and the std map cancel badly in fp16.
    """
    unknown = [n for n in names if n not in REPRESENTATIONS]
    if unknown:
        raise ValueError(
            f"unknown MV-MR representation(s) {unknown}; choose from {list(REPRESENTATIONS)}"
        )
    im = im.detach()
    if im.dtype in (torch.float16, torch.bfloat16):
        im = im.float()
    with torch.autocast(device_type=im.device.type, enabled=False):
        return {n: REPRESENTATIONS[n](im, augment) for n in names}


__all__ = [
    "REPRESENTATIONS",
    "augmented",
    "batch_augment",
    "box_blur",
    "compute_representations",
    "hog",
    "local_std",
    "per_image",
    "pixels",
    "scatnet",
]
