"""MoCo v2 CIFAR builder: MoCo's CIFAR-10 demo as in Jeon789/DSF ``utils/models/mocov2_cifar.py``.

ResNet (CIFAR stem) with SplitBatchNorm, head Linear(f, f) -> ReLU -> Linear(f, dim) with biases
(512 -> 512 -> 128 for ResNet-18), a momentum copy updated by ``update_momentum(m)`` (parameters
only; the official CIFAR code uses a constant m = 0.99), and ShuffleBN on the key encoder.
Computes no loss: ``losses.mocov2.MoCoV2Loss`` and ``losses.dsf.DSFQueueLoss`` score its outputs.

Views are side-major ``[branch 1 x ns, branch 2 x ns]``; each branch is one forward whose rows are
image-major (image b's ns crops are rows b ns ... b ns + ns - 1), as the official ``view(bs*ns)``.
The order matters: SplitBatchNorm's splits are strided (row r falls in split r mod n_splits).
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import Tensor, nn

from losses.base import ViewOutputs


class SplitBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics come from ``num_splits`` groups of the batch.

    Simulates ``num_splits`` GPUs of per-GPU BN on one device (the MoCo CIFAR demo's layer). Row r
    belongs to group r mod num_splits; the running statistics are the mean of the groups' running
    statistics. In eval mode it is a plain BatchNorm2d. State-dict keys equal BatchNorm2d's.
    """

    def __init__(self, num_features: int, num_splits: int, **kw):
        super().__init__(num_features, **kw)
        self.num_splits = num_splits

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        n, c, h, w = x.shape
        s = self.num_splits
        if n % s:
            raise ValueError(f"SplitBatchNorm: batch {n} is not divisible by {s} splits")
        tracked = self.running_mean is not None and self.running_var is not None
        mean = self.running_mean.repeat(s) if tracked else None  # [s C], updated in place
        var = self.running_var.repeat(s) if tracked else None
        weight = self.weight.repeat(s) if self.weight is not None else None
        bias = self.bias.repeat(s) if self.bias is not None else None
        # [n, C, H, W] -> [n / s, s C, H, W]: channel j C + c holds rows j, j + s, j + 2s, ...
        out = F.batch_norm(x.reshape(n // s, s * c, h, w), mean, var, weight, bias, True,
                           self.momentum, self.eps)
        if tracked:
            with torch.no_grad():
                self.running_mean.copy_(mean.view(s, c).mean(0))
                self.running_var.copy_(var.view(s, c).mean(0))
        return out.reshape(n, c, h, w)


def convert_split_bn(module: nn.Module, num_splits: int) -> nn.Module:
    """Replace every BatchNorm2d of ``module`` by a SplitBatchNorm with the same state.

    num_splits <= 1 returns the module unchanged (plain BN, "SyncBN on one GPU" in the demo).
    """
    if num_splits <= 1:
        return module
    if type(module) is nn.BatchNorm2d:
        split = SplitBatchNorm(module.num_features, num_splits, eps=module.eps,
                               momentum=module.momentum, affine=module.affine,
                               track_running_stats=module.track_running_stats)
        split.load_state_dict(module.state_dict())
        return split
    for name, child in module.named_children():
        setattr(module, name, convert_split_bn(child, num_splits))
    return module


def _world() -> tuple[int, int]:
    if torch_dist.is_available() and torch_dist.is_initialized():
        return torch_dist.get_rank(), torch_dist.get_world_size()
    return 0, 1


def _all_gather(x: Tensor) -> Tensor:
    out = [torch.empty_like(x) for _ in range(torch_dist.get_world_size())]
    torch_dist.all_gather(out, x.contiguous())
    return torch.cat(out)


@torch.no_grad()
def shuffle_batch(x: Tensor) -> tuple[Tensor, Tensor]:
    """ShuffleBN: randomly permute the (global) batch; return (this rank's rows, undo index).

    One process: x[perm] (the demo's ``_batch_shuffle_single_gpu``). Under a process group, as
    MoCo's ``_batch_shuffle_ddp``: gather every rank's rows, permute them with rank 0's
    permutation, keep this rank's share; so a key's BN statistics do not come from its own
    query's batch (the "cheating" ShuffleBN prevents).
    """
    rank, world = _world()
    full = _all_gather(x) if world > 1 else x
    # drawn on the device (a CPU draw copied over is a sync); rank 0's is broadcast anyway
    perm = torch.randperm(full.shape[0], device=x.device)
    if world > 1:
        torch_dist.broadcast(perm, src=0)
    return full[perm.view(world, -1)[rank]], torch.argsort(perm)


@torch.no_grad()
def unshuffle_batch(y: Tensor, undo: Tensor) -> Tensor:
    """Undo ``shuffle_batch``: this rank's original rows of the key features y."""
    rank, world = _world()
    if world == 1:
        return y[undo]
    return _all_gather(y)[undo.view(world, -1)[rank]]


def _image_major(branch: list[Tensor]) -> Tensor:
    """ns views [B, C, H, W] -> [B ns, C, H, W] with image b's crops adjacent (official order)."""
    return branch[0] if len(branch) == 1 else torch.stack(branch, dim=1).flatten(0, 1)


def _view_major(y: Tensor, ns: int) -> Tensor:
    """[B ns, D] image-major -> [ns, B, D]."""
    return y.view(-1, ns, y.shape[-1]).transpose(0, 1)


class MoCoV2CIFAR(nn.Module):
    """MoCo v2 (CIFAR demo) encoders for ``mocov2`` and ``mocov2_dsf``.

    Args:
        backbone: maps [N, C, H, W] to features [N, feat_dim] (``build_backbone('resnet18',
            img_size=32)`` gives the CIFAR stem); its BatchNorm2d layers become SplitBatchNorm.
        feat_dim: backbone feature width (512 for ResNet-18); also the head's hidden width.
        dim: output width (128 in the official CIFAR runs).
        bn_splits: SplitBatchNorm groups (8 = the demo's simulated 8 GPUs; 1 = plain BN).
        symmetric: also score branch 2 -> branch 1 (official default False: x1 -> x2 only).
        shuffle_bn: permute the key encoder's batch (over all ranks under DDP) before its forward.

    Shapes: forward(views: 2 ns x [B, C, H, W]) -> ViewOutputs with
        symmetric=False: p = z [ns, B, dim] online(branch 1), k [ns, B, dim] momentum(branch 2),
                         h [ns, B, feat_dim];
        symmetric=True:  p = z [2 ns, B, dim], k [2 ns, B, dim], h [2 ns, B, feat_dim] (side-major).
    """

    # ShuffleBN relies on per-process BN statistics: converting to SyncBatchNorm would undo it
    sync_bn = False

    def __init__(self, backbone: nn.Module, feat_dim: int, *, dim: int = 128, bn_splits: int = 8,
                 symmetric: bool = False, shuffle_bn: bool = True) -> None:
        super().__init__()
        self.symmetric, self.shuffle_bn = symmetric, shuffle_bn
        self.backbone = convert_split_bn(backbone, bn_splits)
        self.projector = nn.Sequential(nn.Linear(feat_dim, feat_dim), nn.ReLU(),
                                       nn.Linear(feat_dim, dim))
        self.momentum_backbone = copy.deepcopy(self.backbone)
        self.momentum_projector = copy.deepcopy(self.projector)
        for p in self._momentum_params():
            p.requires_grad_(False)

    def _online_params(self) -> list[Tensor]:
        return [*self.backbone.parameters(), *self.projector.parameters()]

    def _momentum_params(self) -> list[Tensor]:
        return [*self.momentum_backbone.parameters(), *self.momentum_projector.parameters()]

    @torch.no_grad()
    def update_momentum(self, m: float) -> None:
        """theta_k <- m theta_k + (1 - m) theta_q on parameters (BN buffers are not averaged)."""
        momentum = self._momentum_params()
        torch._foreach_mul_(momentum, m)
        torch._foreach_add_(momentum, self._online_params(), alpha=1.0 - m)

    def encode(self, x: Tensor) -> Tensor:
        """Online backbone features h [N, feat_dim] (kNN monitor, linear probe)."""
        return self.backbone(x)

    def forward_online(self, branch: list[Tensor]) -> tuple[Tensor, Tensor]:
        """One branch of ns views -> (h [ns, B, feat_dim], p [ns, B, dim])."""
        h = self.backbone(_image_major(branch))
        return _view_major(h, len(branch)), _view_major(self.projector(h), len(branch))

    @torch.no_grad()
    def forward_target(self, branch: list[Tensor]) -> Tensor:
        """One branch through the momentum encoder, with ShuffleBN -> k [ns, B, dim]."""
        x = _image_major(branch)
        if self.shuffle_bn:
            x, undo = shuffle_batch(x)
        k = self.momentum_projector(self.momentum_backbone(x))
        if self.shuffle_bn:
            k = unshuffle_batch(k, undo)
        return _view_major(k, len(branch))

    def forward(self, views: list[Tensor]) -> ViewOutputs:
        if len(views) < 2 or len(views) % 2:
            raise ValueError(f"MoCoV2CIFAR needs 2 x ns views (two branches), got {len(views)}")
        ns = len(views) // 2
        branch1, branch2 = views[:ns], views[ns:]
        h1, p1 = self.forward_online(branch1)
        k2 = self.forward_target(branch2)
        if not self.symmetric:  # the official default: queries of branch 1, keys of branch 2
            return ViewOutputs(p=p1, k=k2, z=p1, h=h1)
        h2, p2 = self.forward_online(branch2)
        k1 = self.forward_target(branch1)
        p = torch.cat([p1, p2])
        return ViewOutputs(p=p, k=torch.cat([k1, k2]), z=p, h=torch.cat([h1, h2]))


__all__ = ["MoCoV2CIFAR", "SplitBatchNorm", "convert_split_bn", "shuffle_batch", "unshuffle_batch"]
