r"""PatchMix image mixing (visresearch/patchmix ``module/mix.py``).

:func:`patch_mix` cuts every image into T = (H/p)(W/p) tokens of p x p pixels, numbered row-major,
takes one permutation ``perm`` of the T positions for the whole batch and, with S = T // m, gives
mixed image g the tokens at positions ``perm[j S : (j+1) S]`` of image (g + j) mod B, j = 0..m-1
(positions beyond S m keep image g). Each mixed image holds m source images in equal shares, on
random positions; two calls with different permutations share the same partners (g, g+1, ...),
which the mixed-to-mixed targets rely on. Plain tensor ops: runs on any device, no loop over B.

Its soft targets live with the loss that reads them (losses/patchmix.py::patchmix_targets).

Differences from the official code: the permutation comes from torch's RNG (the official one
uses numpy's global RNG); ``mix_n``/``mix_s`` lists (a random m or patch size per call) are not
supported; non-square images work (the official reassembly assumes H = W).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _tokens(x: Tensor, patch_size: int) -> Tensor:
    """[B, C, H, W] -> [B, T, C p p], tokens numbered row-major over the (H/p, W/p) grid."""
    b, c, h, w = x.shape
    if h % patch_size or w % patch_size:
        raise ValueError(f"image size {h}x{w} is not a multiple of the mix patch size {patch_size}")
    gh, gw = h // patch_size, w // patch_size
    x = x.reshape(b, c, gh, patch_size, gw, patch_size)  # [B, C, gh, p, gw, p]
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c * patch_size * patch_size)


def _image(tokens: Tensor, shape: torch.Size, patch_size: int) -> Tensor:
    """Inverse of :func:`_tokens`: [B, T, C p p] -> [B, C, H, W]."""
    b, c, h, w = shape
    gh, gw = h // patch_size, w // patch_size
    x = tokens.reshape(b, gh, gw, c, patch_size, patch_size)  # [B, gh, gw, C, p, p]
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def source_offsets(num_tokens: int, m: int, perm: Tensor) -> Tensor:
    """[T] long: j at each token position that mixed image g takes from image (g + j) mod B."""
    group = num_tokens // m
    offsets = torch.zeros(num_tokens, dtype=torch.long, device=perm.device)
    # positions perm[j S : (j+1) S] form group j; the T - S m leftover positions stay with image g
    offsets[perm[: group * m]] = torch.arange(group * m, device=perm.device) // group
    return offsets


def patch_mix(x: Tensor, patch_size: int, m: int, perm: Tensor | None = None) -> Tensor:
    """Mix each image with its m - 1 successors in the batch, patch by patch.

    Args:
        x: images [B, C, H, W]; H and W multiples of patch_size.
        patch_size: side p of a token in pixels (the ViT patch size in the official configs).
        m: images per mixed image (``--mix-num``, 2 officially); m = 1 returns a copy of x.
        perm: LongTensor [T], a permutation of the T token positions; torch's RNG draws it if None.

    Returns:
        mixed images [B, C, H, W]: token t of image g comes from image (g + offsets[t]) mod B,
        offsets = :func:`source_offsets` (T, m, perm).
    """
    b = x.shape[0]
    tokens = _tokens(x, patch_size)  # [B, T, C p p]
    num_tokens = tokens.shape[1]
    if perm is None:
        perm = torch.randperm(num_tokens, device=x.device)
    if perm.shape != (num_tokens,):
        raise ValueError(f"perm must have shape [{num_tokens}], got {tuple(perm.shape)}")
    offsets = source_offsets(num_tokens, m, perm.to(x.device))
    rows = (torch.arange(b, device=x.device)[:, None] + offsets[None, :]) % b  # [B, T] source
    cols = torch.arange(num_tokens, device=x.device)[None, :].expand(b, -1)  # [B, T] position
    return _image(tokens[rows, cols], x.shape, patch_size)


__all__ = ["patch_mix", "source_offsets"]
