"""BeCLR builder: backbone -> projector -> fc_out -> K sub-networks (csfarzin/BeCLR).

CIFAR/STL (``model.py``): ResNet with the CIFAR stem (3x3 conv1, no max-pool: build_backbone's
job), projector ``g = Linear(F, F, bias=False) -> BN -> ReLU -> Linear(F, 128)`` (F = backbone
width, 2048 for ResNet-50), ``fc_out = normalize(g(h))``, then k_subs sub-networks
``Linear(128, 512) -> ReLU -> Dropout(0.2) -> Linear(512, 1)`` concatenated to [B, k_subs].
ImageNet (``model_im.py``): stock ResNet, ``g = Linear(F, F) -> ReLU -> Linear(F, 128)`` (biases,
no BN), fc_out NOT normalised, sub-network hidden 100, k_subs 200: ``normalize=False,
proj_bn=False, subnet_hidden=100, k_subs=200``.

The official trainer forwards each view separately (BN statistics per view); so does this builder
(SimCLR's default ``concat_views=False``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losses.base import ViewOutputs
from models.simclr import SimCLR


class SubNetworks(nn.Module):
    """K independent ``Linear(D, H) -> ReLU -> Dropout(p) -> Linear(H, 1)`` as batched einsums.

    Equal, up to float summation order, to K separate Linear stacks (``to_linears`` /
    ``from_linears`` convert). Parameter layout: the K per-subnet nn.Linear parameters stacked on
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

    @classmethod
    def from_linears(cls, first: Sequence[nn.Linear], second: Sequence[nn.Linear],
                     dropout: float = 0.2) -> SubNetworks:
        """Stack K ``Linear(D, H)`` and K ``Linear(H, 1)`` layers (e.g. official subnets)."""
        k_subs, (hidden_dim, in_dim) = len(first), first[0].weight.shape
        sub = cls(k_subs, in_dim, hidden_dim, dropout).to(first[0].weight)
        with torch.no_grad():
            sub.fc1_weight.copy_(torch.stack([m.weight for m in first]))
            sub.fc1_bias.copy_(torch.stack([m.bias for m in first]))
            sub.fc2_weight.copy_(torch.stack([m.weight for m in second]))
            sub.fc2_bias.copy_(torch.stack([m.bias for m in second]))
        return sub

    def to_linears(self) -> nn.ModuleList:
        """The K sub-networks as separate ``Sequential(Linear, ReLU, Dropout, Linear)`` copies."""
        k_subs, hidden_dim, in_dim = self.fc1_weight.shape
        nets = nn.ModuleList()
        for k in range(k_subs):
            net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(),
                                nn.Dropout(self.dropout.p), nn.Linear(hidden_dim, 1))
            net = net.to(self.fc1_weight)
            with torch.no_grad():
                net[0].weight.copy_(self.fc1_weight[k])
                net[0].bias.copy_(self.fc1_bias[k])
                net[3].weight.copy_(self.fc2_weight[k])
                net[3].bias.copy_(self.fc2_bias[k])
            nets.append(net)
        return nets


def convert_official_subnets(state_dict: dict[str, Tensor],
                             prefix: str = "subnets.") -> dict[str, Tensor]:
    """Official ``subnets.{k}.fc_{k}_0.*`` and ``subnets.{k}.output_{k}.*`` -> SubNetworks keys."""
    k_subs = len({key.split(".")[1] for key in state_dict if key.startswith(prefix)})

    def stack(layer: str, field: str) -> Tensor:
        keys = [f"{prefix}{k}.{layer.format(k=k)}.{field}" for k in range(k_subs)]
        return torch.stack([state_dict[key] for key in keys])

    return {"fc1_weight": stack("fc_{k}_0", "weight"), "fc1_bias": stack("fc_{k}_0", "bias"),
            "fc2_weight": stack("output_{k}", "weight"), "fc2_bias": stack("output_{k}", "bias")}


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

    def subnet_outputs(self, x: Tensor) -> Tensor:
        """Images [N, C, H, W] -> sub-network outputs [N, K]: the Bregman kNN monitor's features."""
        return self.subnets(self.forward_online(x)[1])

    def forward(self, views: list[Tensor]) -> ViewOutputs:
        out = super().forward(views)  # one forward per view, as the official trainer
        views_, batch, dim = out.z.shape
        # the sub-networks hold no BN, so one call over all views equals one call per view
        subnet = self.subnets(out.z.reshape(views_ * batch, dim)).view(views_, batch, -1)
        out.extras["subnet"] = subnet  # [V, B, K]
        return out


__all__ = ["SubNetworks", "BeCLRNet", "beclr_projector", "convert_official_subnets"]
