"""BeCLR builder: backbone -> projector -> fc_out -> K sub-networks (csfarzin/BeCLR).

CIFAR/STL (``model.py``): ResNet with the CIFAR stem (3x3 conv1, no max-pool: build_backbone's
job), projector ``g = Linear(F, F, bias=False) -> BN -> ReLU -> Linear(F, 128)`` (F = backbone
width, 2048 for ResNet-50), ``fc_out = normalize(g(h))``, then k_subs sub-networks
``Linear(128, 512) -> ReLU -> Dropout(0.2) -> Linear(512, 1)`` concatenated to [B, k_subs].
ImageNet (``model_im.py``): stock ResNet, ``g = Linear(F, F) -> ReLU -> Linear(F, 128)`` (biases,
no BN), fc_out NOT normalised, sub-network hidden 100, k_subs 200: ``normalize=False,
proj_bn=False, subnet_hidden=100, k_subs=200``.

The official trainer forwards each view separately (BN statistics per view); so does this builder
(as every SimCLR).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losses.base import ViewOutputs
from models.simclr import SimCLR


class SubNetworks(nn.Module):
    """K independent ``Linear(D, H) -> ReLU -> Dropout(p) -> Linear(H, 1)`` as batched einsums.

    Equal, up to float summation order, to K separate Linear stacks. Parameter layout: the K
    per-subnet nn.Linear parameters (official ``fc_{k}_0`` and ``output_{k}``) stacked on
    dim 0, ``fc1_weight`` [K, H, D] (Linear(D, H).weight), ``fc1_bias`` [K, H], ``fc2_weight``
    [K, 1, H] (Linear(H, 1).weight), ``fc2_bias`` [K, 1]. Dropout draws one independent mask over
    [N, K, H]: the distribution of K separate Dropout layers.
    """

    def __init__(self, k_subs: int, in_dim: int = 128, hidden_dim: int = 512,
                 dropout: float = 0.2):
        super().__init__()
        self.fc1_weight = nn.Parameter(torch.empty(k_subs, hidden_dim, in_dim))
        self.fc1_bias = nn.Parameter(torch.empty(k_subs, hidden_dim))
        self.fc2_weight = nn.Parameter(torch.empty(k_subs, 1, hidden_dim))
        self.fc2_bias = nn.Parameter(torch.empty(k_subs, 1))
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """nn.Linear's default init, per sub-network: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
        for weight, bias in ((self.fc1_weight, self.fc1_bias), (self.fc2_weight, self.fc2_bias)):
            bound = 1 / math.sqrt(weight.shape[-1])
            weight.uniform_(-bound, bound)
            bias.uniform_(-bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        """x [N, D] -> [N, K]: column k is sub-network k's scalar output."""
        hidden = torch.einsum("nd,khd->nkh", x, self.fc1_weight) + self.fc1_bias  # [N, K, H]
        hidden = self.dropout(F.relu(hidden))
        out = torch.einsum("nkh,kh->nk", hidden, self.fc2_weight[:, 0])  # [N, K]
        return out + self.fc2_bias[:, 0]


def beclr_projector(feat_dim: int, out_dim: int = 128, hidden_dim: int | None = None,
                    bn: bool = True) -> nn.Sequential:
    """CIFAR: Linear(bias=False) -> BN -> ReLU -> Linear; bn=False (ImageNet): no BN, all biases.

    hidden_dim defaults to feat_dim, the official ``Linear(dim_mlp, dim_mlp)`` (512 for ResNet-18).
    Indices match the official ``g.0 .. g.3`` (CIFAR) and ``model.fc.0 .. 2`` (ImageNet) keys.
    """
    hidden_dim = hidden_dim or feat_dim
    if bn:
        return nn.Sequential(nn.Linear(feat_dim, hidden_dim, bias=False),
                             nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                             nn.Linear(hidden_dim, out_dim))
    return nn.Sequential(nn.Linear(feat_dim, hidden_dim), nn.ReLU(inplace=True),
                         nn.Linear(hidden_dim, out_dim))


class BeCLRNet(SimCLR):
    """SimCLR with BeCLR's projector, a normalised fc_out and K sub-networks on top.

    forward(views: V x [B, C, H, W]) -> ViewOutputs(p = z = fc_out [V, B, feature_dim] (normalised
    unless normalize=False), h [V, B, feat_dim], extras["subnet"] [V, B, k_subs]). No loss.
    """

    def __init__(self, backbone: nn.Module, feat_dim: int, *, feature_dim: int = 128,
                 proj_hidden: int | None = None, k_subs: int = 100, subnet_hidden: int = 512,
                 dropout: float = 0.2, normalize: bool = True, proj_bn: bool = True):
        projector = beclr_projector(feat_dim, feature_dim, proj_hidden, proj_bn)
        super().__init__(backbone, feat_dim, projector)
        self.normalize = normalize
        self.subnets = SubNetworks(k_subs, feature_dim, subnet_hidden, dropout)

    def forward_online(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [N, C, H, W] -> (h [N, feat_dim], fc_out [N, feature_dim], fc_out)."""
        h = torch.flatten(self.backbone(x), 1)
        z = self.projector(h)
        z = F.normalize(z, dim=-1) if self.normalize else z
        return h, z, z

    def forward(self, views: list[Tensor]) -> ViewOutputs:
        out = super().forward(views)  # one forward per view, as the official trainer
        views_, batch, dim = out.z.shape
        # the sub-networks hold no BN, so one call over all views equals one call per view
        subnet = self.subnets(out.z.reshape(views_ * batch, dim)).view(views_, batch, -1)
        out.extras["subnet"] = subnet  # [V, B, K]
        return out


__all__ = ["SubNetworks", "BeCLRNet", "beclr_projector"]
