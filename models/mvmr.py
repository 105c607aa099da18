"""MV-MR builder: one encoder for the original and the augmented view, plus hand-crafted
representations of the original view in ``extras`` (vkinakh/mv-mr ``src/model/resnet.py``
``ResnetMultiProj`` and ``self_supervised_module.py::step``; docs/methods.md §7.1).

Both views go through the same backbone and projector with gradient (no stop-gradient, no
momentum encoder), one forward per view (BatchNorm statistics per view), augmented view first as
the official step does. The representations come from a callable given at construction (the
registry passes ``data.representations.compute_representations``): models/ does not import data/.
The official ResNet variant (3x3/1 conv1 with the max-pool kept for STL/CIFAR, zero-init residual
BN) is a backbone option (models/builders.py::mvmr_stem), so evaluation rebuilds the same backbone.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

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


class MVMR(SimCLR):
    """Backbone + the official projector; forward([original, augmented]) -> ViewOutputs.

    Args:
        backbone: maps [N, C, H, W] to h [N, feat_dim].
        feat_dim: backbone feature width.
        proj_dims: projector sizes "hidden-...-D" (official: "8192-8192-8192").
        representations: im [B, C, H, W] -> {name: [B, ...]}, called on the original view under
            no_grad; None gives no representation terms.

    Shapes: p = z = [2, B, D] (view 0 original, view 1 augmented), h [2, B, feat_dim],
    extras {"rep_<name>": [B, ...]}; k = None.
    """

    def __init__(self, backbone: nn.Module, feat_dim: int, *, proj_dims: str = "8192-8192-8192",
                 representations: Representations | None = None) -> None:
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


__all__ = ["MVMR", "build_projector"]
