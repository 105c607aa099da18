"""SimCLR-style builder: backbone + projector (+ optional predictor, e.g. NNCLR), no target branch.

Hooks for subclasses (BeCLR, MV-MR, NNCLR, ...): ``forward_online(x) -> (h, z, p)`` for one batch,
and ``forward(views)``, which runs it over the views with ``models.moco.forward_grouped``.
"""

from __future__ import annotations

from torch import Tensor, nn

from losses.base import ViewOutputs
from models.moco import forward_grouped


class SimCLR(nn.Module):
    """``z = projector(backbone(x))``, ``p = predictor(z)`` (or ``z`` when there is no predictor).

    Args:
        backbone: maps [N, C, H, W] to features [N, feat_dim].
        feat_dim: backbone feature width.
        projector: maps [N, feat_dim] to [N, D], e.g. ``heads.build_mlp(2, feat_dim, 2048, 256)``.
        predictor: optional [N, D] -> [N, D'] head (NNCLR).

    Each view is its own forward, so BatchNorm statistics are per view (BeCLR's trainer,
    solo-learn, lightly's examples).

    Shapes: forward(views: V x [B, C, H, W]) -> ViewOutputs(p [V,B,D'], z [V,B,D],
    h [V,B,feat_dim]), k = None. Computes no loss.
    """

    def __init__(self, backbone: nn.Module, feat_dim: int, projector: nn.Module,
                 predictor: nn.Module | None = None) -> None:
        super().__init__()
        self.feat_dim = feat_dim
        self.backbone = backbone
        self.projector = projector
        self.predictor = predictor

    def forward_online(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One pass: x [N, C, H, W] -> (h [N, feat_dim], z [N, D], p [N, D'])."""
        h = self.backbone(x)
        z = self.projector(h)
        return h, z, (z if self.predictor is None else self.predictor(z))

    def forward(self, views: list[Tensor]) -> ViewOutputs:
        h, z, p = forward_grouped(self.forward_online, views, 1)
        return ViewOutputs(p=p, z=z, h=h)


__all__ = ["SimCLR"]
