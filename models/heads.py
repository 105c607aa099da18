"""Projector / predictor MLPs as MoCo v3 builds them (facebookresearch/moco-v3 ``moco/builder.py``).

``build_mlp`` is MoCo v3's ``_build_mlp`` (also copied verbatim by DSF, SNCLR and PatchMix);
its ``nn.Sequential`` indices (``0.weight``, ``1.running_mean``, ...) match the official
checkpoints' head keys.
``projector_for`` gives MoCo v3's depths, which depend on the backbone family (methods.md §1.1).
"""

from __future__ import annotations

from torch import nn


def build_mlp(num_layers: int, in_dim: int, hidden_dim: int, out_dim: int, last_bn: bool = True,
              bias: bool = False) -> nn.Sequential:
    """Linear -> [BN -> ReLU -> Linear] * (num_layers - 1) -> BN(affine=False) if last_bn.

    Hidden layers get an affine BatchNorm1d and ReLU; the last Linear is followed by a BatchNorm1d
    without affine parameters when ``last_bn`` (SimCLR's "last BN, gamma removed" design).
    """
    if num_layers < 1:
        raise ValueError(f"an MLP needs at least one layer, got num_layers={num_layers}")
    layers: list[nn.Module] = []
    for i in range(num_layers):
        dim_in = in_dim if i == 0 else hidden_dim
        dim_out = out_dim if i == num_layers - 1 else hidden_dim
        layers.append(nn.Linear(dim_in, dim_out, bias=bias))
        if i < num_layers - 1:
            layers += [nn.BatchNorm1d(dim_out), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(dim_out, affine=False))
    return nn.Sequential(*layers)


def projector_for(backbone_name: str) -> dict[str, int | bool]:
    """MoCo v3's head depths for a backbone, as keyword arguments of ``MoCoV3``.

    ViT: projector 3 layers and predictor 2 layers, both ending in BN. ResNet: projector 2 layers
    (last BN), predictor 2 layers without last BN. Usage: ``MoCoV3(bb, d, **projector_for(arch))``.
    """
    if backbone_name.startswith("vit"):
        return {"proj_layers": 3, "pred_layers": 2, "proj_last_bn": True, "pred_last_bn": True}
    if backbone_name.startswith("resnet"):
        return {"proj_layers": 2, "pred_layers": 2, "proj_last_bn": True, "pred_last_bn": False}
    raise ValueError(f"no MoCo v3 head depths for backbone {backbone_name!r} (resnet* or vit_*)")


__all__ = ["build_mlp", "projector_for"]
