r"""SimCLR NT-Xent (``--method simclr``).

NT-Xent (docs/methods.md §3; solo-learn's multi-view form), over the N = V B anchors z_a:

    L = -mean_a log( \sum_{p \in pos(a)} e^{s_ap} / \sum_{c \ne a} e^{s_ac} ),  s = norm(z) norm(z)^T / T

where pos(a) are the other views of the same image; all positives sit inside one log. Negatives are
gathered across ranks with gradient. For V = 2 this equals the 2B-anchor NT-Xent of SimCLR/lightly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from losses.base import ContrastiveLoss, LossOutput, ViewOutputs, check_views, upcast
from utils import dist


def nt_xent(z: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """SimCLR NT-Xent over the V*B anchors (self excluded). Returns (loss, positive-pair accuracy).

    Shapes: z [V, B, D] unnormalised; negatives gathered over ranks with gradient.
    """
    (z,) = check_views(z)
    views, batch, _ = z.shape
    if views < 2:
        raise ValueError("nt_xent needs at least 2 views")
    z = F.normalize(upcast(z), dim=-1)
    keys = dist.gather_with_grad(z, dim=1)  # [V, W*B, D]
    n_keys = keys.shape[1]
    logits = torch.einsum("vbd,wcd->vbwc", z, keys) / temperature  # [V, B, V, W*B]
    image = torch.arange(batch, device=z.device) + batch * dist.get_rank()  # global image index
    cols = torch.arange(n_keys, device=z.device)
    same_image = (image[:, None] == cols[None, :])[None, :, None, :]  # [1, B, 1, W*B]
    self_mask = same_image & torch.eye(views, dtype=torch.bool, device=z.device)[:, None, :, None]
    logits = logits.masked_fill(self_mask, float("-inf")).flatten(2)  # [V, B, V*W*B]
    positives = (same_image & ~self_mask).expand(views, batch, views, n_keys).flatten(2)
    log_denominator = torch.logsumexp(logits, dim=-1)
    log_numerator = torch.logsumexp(logits.masked_fill(~positives, float("-inf")), dim=-1)
    loss = (log_denominator - log_numerator).mean()
    acc = positives.gather(-1, logits.argmax(-1, keepdim=True)).float().mean()
    return loss, acc.detach()


class SimCLRLoss(ContrastiveLoss):
    """SimCLR NT-Xent. Reads out.p [V, B, D] (projector output, grad)."""

    def __init__(self, temperature: float = 0.2):
        super().__init__()
        self.temperature = temperature

    def forward(self, out: ViewOutputs, labels: Tensor | None = None) -> LossOutput:
        loss, acc = nt_xent(out.p, self.temperature)
        return LossOutput(loss, {"acc": acc})


__all__ = ["nt_xent", "SimCLRLoss"]
