r"""PatchMix image mixing and its soft targets (visresearch/patchmix ``module/mix.py``).

:func:`patch_mix` cuts every image into T = (H/p)(W/p) tokens of p x p pixels, numbered row-major,
takes one permutation ``perm`` of the T positions for the whole batch and, with S = T // m, gives
mixed image g the tokens at positions ``perm[j S : (j+1) S]`` of image (g + j) mod B, j = 0..m-1
(positions beyond S m keep image g). Each mixed image holds m source images in equal shares, on
random positions; two calls with different permutations share the same partners (g, g+1, ...),
which the mixed-to-mixed targets rely on. Plain tensor ops: runs on any device, no loop over B.

Targets (global columns: local image g is column g + B rank, N = B W in all; eps = smoothing):

    mix_target[g]    = (1 - eps)/m + eps/N         on columns {g, ..., g+m-1} mod B
    mixmix_target[g] = (1 - eps) w_i / m + eps/N   on columns (g - m + 1 + i) mod B, i = 0..2m-2,
                       w_i = 1 - |m - i - 1| / m   ([0.25, 0.5, 0.25] for m = 2)
    every other entry eps/N.

As in the official code the entries are written with ``scatter_``, so a column listed twice
(B < 2m - 1) keeps one value instead of their sum (methods.md §9.6-4); ``accumulate=True`` adds
them, which makes every row sum to 1 for any B.

Differences from the official code: the permutation comes from torch's RNG (the official one
uses numpy's global RNG); ``mix_n``/``mix_s`` lists (a random m or patch size per call) are not
supported; non-square images work (the official reassembly assumes H = W).
"""

from __future__ import annotations

import torch
from torch import Tensor

from utils import dist


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


def _dist_defaults(rank: int | None, world_size: int | None) -> tuple[int, int]:
    return (
        dist.get_rank() if rank is None else rank,
        dist.get_world_size() if world_size is None else world_size,
    )


def soft_one_hot(
    cols: Tensor, on: Tensor, num_classes: int, off: float, accumulate: bool = False
) -> Tensor:
    """[B, num_classes] filled with off, then on (0-d or [K]) written at cols [B, K].

    Like ``scatter_``, a column listed twice keeps one value; with accumulate, repeated columns
    add their (on - off) parts instead. The result has on's dtype and cols' device.
    """
    on = on.to(cols.device).expand(cols.shape)  # [B, K]
    out = torch.full((cols.shape[0], num_classes), off, dtype=on.dtype, device=cols.device)
    if accumulate:
        return out.scatter_add_(1, cols, on - off)
    return out.scatter_(1, cols, on)


def mix_targets(
    batch: int,
    m: int,
    smoothing: float = 0.0,
    *,
    rank: int | None = None,
    world_size: int | None = None,
    accumulate: bool = False,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Soft targets of a mixed batch: (mixed -> original, mixed -> mixed), each [B, B W].

    rank and world_size default to utils.dist (rank 0 of 1 without a process group).
    """
    rank, world_size = _dist_defaults(rank, world_size)
    num_classes, off = batch * world_size, smoothing / (batch * world_size)
    ids = torch.arange(batch, device=device)[:, None]  # [B, 1]
    src_cols = (ids + torch.arange(m, device=device)) % batch + batch * rank  # [B, m]
    mix_cols = (ids - m + 1 + torch.arange(2 * m - 1, device=device) + batch) % batch
    mix_cols = mix_cols + batch * rank  # [B, 2m - 1]
    weights = 1.0 - torch.abs(m - torch.arange(2 * m - 1, device=device, dtype=dtype) - 1) / m
    on_src = torch.tensor((1.0 - smoothing) / m + off, dtype=dtype)
    on_mix = (1.0 - smoothing) * weights / m + off  # [2m - 1]
    return (
        soft_one_hot(src_cols, on_src, num_classes, off, accumulate),
        soft_one_hot(mix_cols, on_mix, num_classes, off, accumulate),
    )


def smoothed_identity(
    batch: int,
    smoothing: float,
    *,
    rank: int | None = None,
    world_size: int | None = None,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Original -> original targets [B, B W]: 1 - eps + eps/N at column g + B rank, eps/N elsewhere.

    The official unmixed case (m = 1), built by its ``no_mixer`` with the default eps = 0.1.
    """
    return mix_targets(
        batch, 1, smoothing, rank=rank, world_size=world_size, device=device, dtype=dtype
    )[0]


__all__ = ["patch_mix", "source_offsets", "mix_targets", "smoothed_identity", "soft_one_hot"]
