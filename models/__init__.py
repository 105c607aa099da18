"""Backbones: ``BACKBONES`` (name -> constructor) and ``build_backbone(name, ...) -> (net, dim)``.

Every backbone maps images [B, C, H, W] to features h [B, feat_dim]: the global-average-pooled
``layer4`` output for ResNets (``fc`` removed), the final-norm CLS token for ViTs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from models.resnet import resnet18, resnet34, resnet50
from models.vits import vit_base, vit_small, vit_tiny

BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "vit_tiny": vit_tiny,
    "vit_small": vit_small,
    "vit_base": vit_base,
}


def build_backbone(name: str, *, img_size: int = 224, width: int = 64,
                   cifar_stem: bool | None = None, patch_size: int = 16,
                   stop_grad_conv1: bool = False, pos_embed: str = "sincos", drop_path: float = 0.0,
                   zero_init_residual: bool = False, in_chans: int = 3, keep_maxpool: bool = False,
                   cifar_stem_padding: int = 1, **overrides: Any) -> tuple[nn.Module, int]:
    """Build a backbone by name; return it and its feature width.

    Options of the other family are ignored (a ResNet ignores patch_size, stop_grad_conv1,
    pos_embed and drop_path; a ViT ignores width, cifar_stem, keep_maxpool, cifar_stem_padding and
    zero_init_residual), so the training script can pass every CLI option. ``cifar_stem=None``
    means ``img_size <= 64``; ``cifar_stem_padding`` pads its 3x3 conv (solo-learn: 2).
    ``overrides`` go to the ViT constructor (``depth``, ``embed_dim``, ``num_heads``, ``mlp_ratio``:
    small test models).
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose from {', '.join(sorted(BACKBONES))}")
    if name.startswith("vit"):
        model = BACKBONES[name](img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                                stop_grad_conv1=stop_grad_conv1, pos_embed=pos_embed,
                                drop_path=drop_path, **overrides)
    else:
        if overrides:
            raise TypeError(f"{name} takes no options {sorted(overrides)}")
        stem = img_size <= 64 if cifar_stem is None else cifar_stem
        model = BACKBONES[name](width=width, cifar_stem=stem, in_chans=in_chans,
                                zero_init_residual=zero_init_residual, keep_maxpool=keep_maxpool,
                                stem_padding=cifar_stem_padding)
    return model, model.num_features


__all__ = ["BACKBONES", "build_backbone"]
