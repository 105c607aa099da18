"""MV-MR builder: one encoder for the original and the augmented view, plus hand-crafted
representations of the original view in ``extras`` (vkinakh/mv-mr ``src/model/resnet.py``
``ResnetMultiProj`` and ``self_supervised_module.py::step``; methods.md §7.1).

Both views go through the same backbone and projector with gradient (no stop-gradient, no
momentum encoder), one forward per view (BatchNorm statistics per view), augmented view first as
the official step does. The representations come from a callable given at construction (the
registry passes ``data.representations.compute_representations``): models/ does not import data/.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torchvision.models import resnet as tv

from losses.base import ViewOutputs
from models.simclr import SimCLR

Representations = Callable[[Tensor], dict[str, Tensor]]


def build_projector(in_dim: int, dims: str = "8192-8192-8192") -> nn.Sequential:
    """The official projector: [Linear(no bias) -> BN -> ReLU] per hidden size -> Linear(no bias).

    dims is the official "out_dim" string, e.g. "8192-8192-8192": the last size is the embedding
    dimension D, the others hidden widths (no BN after the last Linear).
    """
    sizes = [in_dim] + [int(s) for s in dims.split("-")]
    layers: list[nn.Module] = []
    for d_in, d_out in zip(sizes[:-2], sizes[1:-1], strict=True):
        layers += [nn.Linear(d_in, d_out, bias=False), nn.BatchNorm1d(d_out), nn.ReLU(inplace=True)]
    layers.append(nn.Linear(sizes[-2], sizes[-1], bias=False))
    return nn.Sequential(*layers)


def small_kernel_stem(backbone: nn.Module) -> None:
    """The official STL/CIFAR stem of a torchvision ResNet, in place: conv1 becomes a 3x3 stride-1
    conv (PyTorch's default init, as the official swap) and the max-pool is KEPT (re-added if the
    backbone was built with a CIFAR stem that removed it)."""
    if not (hasattr(backbone, "conv1") and hasattr(backbone, "maxpool")):
        raise ValueError("small_kernel needs a torchvision-style ResNet (conv1 and maxpool)")
    old = backbone.conv1
    backbone.conv1 = nn.Conv2d(old.in_channels, old.out_channels, 3, 1, 1, bias=False)
    backbone.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)


def zero_last_bn(backbone: nn.Module) -> None:
    """torchvision's zero_init_residual=True on an already built ResNet: the last BN of every
    residual block starts at gamma = 0, so each block starts as the identity."""
    for m in backbone.modules():
        if isinstance(m, tv.Bottleneck):
            nn.init.zeros_(m.bn3.weight)
        elif isinstance(m, tv.BasicBlock):
            nn.init.zeros_(m.bn2.weight)


class MVMR(SimCLR):
    """Backbone + the official projector; forward([original, augmented]) -> ViewOutputs.

    Args:
        backbone: maps [N, C, H, W] to h [N, feat_dim].
        feat_dim: backbone feature width.
        proj_dims: projector sizes "hidden-...-D" (official: "8192-8192-8192").
        representations: im [B, C, H, W] -> {name: [B, ...]}, called on the original view under
            no_grad; None gives no representation terms.
        small_kernel: apply the official STL/CIFAR stem (3x3/1 conv1, max-pool kept); ResNets only.
        zero_init_residual: zero the last BN gamma of each residual block (official: True).

    Shapes: p = z = [2, B, D] (view 0 original, view 1 augmented), h [2, B, feat_dim],
    extras {"rep_<name>": [B, ...]}; k = None.
    """

    def __init__(self, backbone: nn.Module, feat_dim: int, *, proj_dims: str = "8192-8192-8192",
                 representations: Representations | None = None, small_kernel: bool = False,
                 zero_init_residual: bool = True) -> None:
        if small_kernel:
            small_kernel_stem(backbone)
        if zero_init_residual:
            zero_last_bn(backbone)
        super().__init__(backbone, feat_dim, build_projector(feat_dim, proj_dims))
        self.representations = representations

    def forward(self, views: list[Tensor]) -> ViewOutputs:
        if len(views) != 2:
            raise ValueError(f"MV-MR takes 2 views [original, augmented], got {len(views)}")
        x_orig, x_aug = views
        h_aug, z_aug, _ = self.forward_online(x_aug)  # the official step encodes im first
        h_orig, z_orig, _ = self.forward_online(x_orig)
        z = torch.stack([z_orig, z_aug])  # [2, B, D]
        extras: dict[str, Tensor] = {}
        if self.representations is not None:
            with torch.no_grad():
                extras = {f"rep_{k}": v for k, v in self.representations(x_orig).items()}
        return ViewOutputs(p=z, z=z, h=torch.stack([h_orig, h_aug]), extras=extras)


__all__ = ["MVMR", "build_projector", "small_kernel_stem", "zero_last_bn"]
