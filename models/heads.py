"""Projector / predictor MLPs as MoCo v3 builds them (facebookresearch/moco-v3 ``moco/builder.py``).

``build_mlp`` is MoCo v3's ``_build_mlp`` (also copied verbatim by DSF, SNCLR and PatchMix);
its ``nn.Sequential`` indices (``0.weight``, ``1.running_mean``, ...) match the official
checkpoints' head keys. The depths, which depend on the backbone family (docs/methods.md §1.1), are
chosen by the registry's builders (models/builders.py::mocov3_builder).
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


__all__ = ["build_mlp"]
