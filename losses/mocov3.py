r"""MoCo v3 InfoNCE (``--method mocov3``; docs/methods.md §2).

MoCo v3 (facebookresearch/moco-v3, ``moco/builder.py::contrastive_loss``), for V views:

    L = \sum_{i \ne j} 2T \cdot CE( norm(q_i) norm(k_j)^T / T , arange(B) + B \cdot rank )

with k gathered over ranks without gradient. For V = 2 this is exactly ``ctr(q1, k2) + ctr(q2, k1)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from losses.base import ContrastiveLoss, LossOutput, ViewOutputs, accuracy, check_views, upcast
from utils import dist


def mocov3_loss(q: Tensor, k: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """MoCo v3 InfoNCE over all ordered view pairs i != j. Returns (loss, positive-pair accuracy).

    Shapes: q [V, B, D] (grad), k [V, B, D] (treated as constant), both unnormalised.
    """
    q, k = check_views(q, k)
    q = F.normalize(upcast(q), dim=-1)
    k = dist.gather_no_grad(F.normalize(upcast(k), dim=-1), dim=1)  # [V, W*B, D]
    views, batch = q.shape[:2]
    labels = torch.arange(batch, device=q.device) + batch * dist.get_rank()  # positive columns
    logits = torch.einsum("vbd,wcd->vwbc", q, k) / temperature  # [V, V, B, W*B]
    if views < 2:
        raise ValueError("mocov3_loss needs at least 2 views")
    # the V(V-1) ordered pairs i != j, row-major (a view is never its own positive); built by index
    # arithmetic on the device, since a boolean mask index would be a device->host sync
    pair = torch.arange(views * (views - 1), device=q.device)
    i, jj = pair // (views - 1), pair % (views - 1)
    j = jj + (jj >= i).long()
    pairs = logits.flatten(0, 1).index_select(0, i * views + j)  # [P, B, W*B]
    ce = F.cross_entropy(pairs.flatten(0, 1), labels.repeat(pairs.shape[0]), reduction="none")
    loss = ce.view(pairs.shape[0], batch).mean(1).sum() * (2 * temperature)
    return loss, accuracy(pairs.flatten(0, 1), labels.repeat(pairs.shape[0]))


class MoCoV3Loss(ContrastiveLoss):
    """MoCo v3 InfoNCE. Reads out.p [V, B, D] (grad) and out.k [V, B, D] (momentum keys)."""

    def __init__(self, temperature: float = 0.2):
        super().__init__()
        self.temperature = temperature

    def forward(self, out: ViewOutputs, labels: Tensor | None = None) -> LossOutput:
        loss, acc = mocov3_loss(out.p, out.k, self.temperature)
        return LossOutput(loss, {"acc": acc})


__all__ = ["mocov3_loss", "MoCoV3Loss"]
