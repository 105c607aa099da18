r"""InfoNCE in its MoCo v3 form and NT-Xent in its SimCLR form.

MoCo v3 (facebookresearch/moco-v3, ``moco/builder.py::contrastive_loss``), for V views:

    L = \sum_{i \ne j} 2T \cdot CE( norm(q_i) norm(k_j)^T / T , arange(B) + B \cdot rank )

with k gathered over ranks without gradient. For V = 2 this is exactly ``ctr(q1, k2) + ctr(q2, k1)``.

SimCLR NT-Xent (docs/methods.md §3; solo-learn's multi-view form), over the N = V B anchors z_a:

    L = -mean_a log( \sum_{p \in pos(a)} e^{s_ap} / \sum_{c \ne a} e^{s_ac} ),  s = norm(z) norm(z)^T / T

where pos(a) are the other views of the same image; all positives sit inside one log. Negatives are
gathered across ranks with gradient. For V = 2 this equals the 2B-anchor NT-Xent of SimCLR/lightly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from losses.base import ContrastiveLoss, LossOutput, ViewOutputs, accuracy, check_views, upcast
from utils import dist


def _offset_labels(batch: int, device: torch.device) -> Tensor:
    """Positive column of each local row among the keys gathered from every rank."""
    return torch.arange(batch, device=device) + batch * dist.get_rank()


def mocov3_loss(q: Tensor, k: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """MoCo v3 InfoNCE over all ordered view pairs i != j. Returns (loss, positive-pair accuracy).

    Shapes: q [V, B, D] (grad), k [V, B, D] (treated as constant), both unnormalised.
    """
    q, k = check_views(q, k)
    q = F.normalize(upcast(q), dim=-1)
    k = dist.gather_no_grad(F.normalize(upcast(k), dim=-1), dim=1)  # [V, W*B, D]
    views, batch = q.shape[:2]
    labels = _offset_labels(batch, q.device)
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
    image = _offset_labels(batch, z.device)  # global index of each local image
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


class InfoNCE(ContrastiveLoss):
    """MoCo v3 InfoNCE. Reads out.p [V, B, D] (grad) and out.k [V, B, D] (momentum keys)."""

    def __init__(self, temperature: float = 0.2):
        super().__init__()
        self.temperature = temperature

    def forward(self, out: ViewOutputs, labels: Tensor | None = None) -> LossOutput:
        loss, acc = mocov3_loss(out.p, out.k, self.temperature)
        return LossOutput(loss, {"acc": acc})


class NTXent(ContrastiveLoss):
    """SimCLR NT-Xent. Reads out.p [V, B, D] (projector output, grad)."""

    def __init__(self, temperature: float = 0.2):
        super().__init__()
        self.temperature = temperature

    def forward(self, out: ViewOutputs, labels: Tensor | None = None) -> LossOutput:
        loss, acc = nt_xent(out.p, self.temperature)
        return LossOutput(loss, {"acc": acc})
