r"""NNCLR: InfoNCE with the positive replaced by its nearest neighbour in a support set.

solo-learn's form (``solo/losses/nnclr.py``, ``solo/methods/nnclr.py``; NNCLR has no official code),
with the predictions p gathered over ranks with gradient and labels offset by rank:

    L = 1/2 CE(norm(nn_0) norm(p_1)^T / T, y) + 1/2 CE(norm(nn_1) norm(p_0)^T / T, y)
    y = arange(B) + B rank
    nn_v = Q[argmax_m cos(z_v, Q_m)],  Q = FIFO queue of norm(z_0) gathered over ranks (no gradient)

Rows are neighbours (constants), columns are the predictions of the other view, so the gradient only
reaches p. The queue is read before this step's enqueue of view 0.

Reads: out.z [2, B, D] (projector output: queries and queue entries), out.p [2, B, D] (predictor
output, grad); the optional ``labels`` argument [B] (-1 = unknown) feeds the neighbour-label metric.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from losses.base import ContrastiveLoss, LossOutput, ViewOutputs, accuracy, check_views, upcast
from losses.memory import FeatureQueue
from utils import dist


@torch.no_grad()
def nearest_neighbour(z: Tensor, bank: Tensor) -> tuple[Tensor, Tensor]:
    """Row of bank most cosine-similar to each row of z. Returns (bank rows [B, D], indices [B]).

    Shapes: z [B, D], bank [M, D]; neither needs to be normalised. The rows are returned as stored.
    """
    bank = bank.to(z.dtype)
    sims = F.normalize(z, dim=-1) @ F.normalize(bank, dim=-1).T  # [B, M]
    idx = sims.argmax(dim=-1)
    return bank[idx], idx


def _one_direction(nn: Tensor, p: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """CE(norm(nn) norm(gather(p))^T / T, arange(B) + B rank); returns (loss, accuracy)."""
    nn = F.normalize(nn.detach(), dim=-1)
    p = dist.gather_with_grad(F.normalize(p, dim=-1), dim=0)  # [W*B, D], grad flows to every rank
    logits = nn @ p.T / temperature  # [B, W*B]
    labels = torch.arange(nn.shape[0], device=nn.device) + nn.shape[0] * dist.get_rank()
    return F.cross_entropy(logits, labels), accuracy(logits, labels)


def _nnclr_terms(nn: Tensor, p: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """Symmetrised NNCLR loss and the mean positive accuracy of its two directions."""
    nn, p = check_views(nn, p)
    if nn.shape[0] != 2 or p.shape[0] != 2:
        raise ValueError(f"NNCLR needs exactly 2 views, got {nn.shape[0]} and {p.shape[0]}")
    nn, p = upcast(nn), upcast(p)
    loss_a, acc_a = _one_direction(nn[0], p[1], temperature)
    loss_b, acc_b = _one_direction(nn[1], p[0], temperature)
    return loss_a / 2 + loss_b / 2, (acc_a + acc_b) / 2


class NNCLRLoss(ContrastiveLoss):
    """NNCLR loss owning its support set (solo-learn: normalised z of view 0, gathered over ranks).

    Args:
        temperature: softmax temperature (0.1 in the paper, 0.2 in solo-learn's CIFAR recipe).
        queue_size: support-set rows (98304 in the paper, 65536 in solo-learn).
        dim: projector output dimension D.
    """

    def __init__(self, temperature: float = 0.1, queue_size: int = 98304, dim: int = 256):
        super().__init__()
        self.temperature = temperature
        self.queue = FeatureQueue(queue_size, dim, init="randn_normalized", gather=True)
        # labels of the queued samples, for the metric only (-1 = unknown); same ring as the queue
        self.queue_labels = FeatureQueue(queue_size, 1, init="zeros", gather=True)
        self.queue_labels.bank.fill_(-1)

    def forward(self, out: ViewOutputs, labels: Tensor | None = None) -> LossOutput:
        z, p = check_views(out.z, out.p)
        z = F.normalize(upcast(z.detach()), dim=-1)  # the queue holds normalised z (solo-learn)
        # the lookup copies its rows, so the enqueue below cannot change this step's neighbours
        nn, idx = nearest_neighbour(z.flatten(0, 1), self.queue.bank)  # [2B, D], [2B]
        loss, acc = _nnclr_terms(nn.view_as(z), p, self.temperature)
        idx0 = idx[: z.shape[1]]  # solo-learn reports the neighbours of view 0
        metrics = {"acc": acc}
        if labels is not None:
            nn_labels = self.queue_labels.bank[idx0, 0].to(labels.dtype)
            metrics["nn_acc"] = ((nn_labels == labels) & (labels >= 0)).float().mean()
        if self.training:
            self.queue.enqueue(z[0])
            if labels is None:  # enqueue every step so all ranks run the same collectives
                labels = torch.full((z.shape[1],), -1, device=z.device)
            self.queue_labels.enqueue(labels.view(-1, 1))
        return LossOutput(loss, metrics)
