r"""MoCo v2 InfoNCE against a queue of past keys (the DSF CIFAR table's baseline).

    L = CE( [q_i k_i | q_i Z_k]_k / T , 0 ),   q = norm(p), k = norm(k), Z the queue of past keys

Source: facebookresearch/moco ``moco/builder.py`` as its CIFAR-10 demo (``moco_cifar10_demo``)
rewrites it, copied by Jeon789/DSF ``utils/models/mocov2_cifar.py::ModelMoCo.contrastive_loss``
(T = 0.1 is the demo's and DSF's ``--moco-t`` default; the ImageNet MoCo v2 uses T = 0.2).
Reads: out.p [V, B, D] (online projector outputs, grad) and out.k [V, B, D] (momentum keys):
V = 1 (query view 1, key view 2) when asymmetric, V = 2 (views 1, 2) when symmetric.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from losses.base import ContrastiveLoss, LossOutput, ViewOutputs, accuracy, check_views, upcast
from losses.memory import FeatureQueue


def mocov2_logits(q: Tensor, k: Tensor, queue: Tensor, temperature: float = 0.1) -> Tensor:
    """[q_i . k_i | q_i . Z_k] / T for unit q, k (k detached); the queue rows are used as stored.

    Shapes: q [B, D], k [B, D] (unnormalised), queue [K, D] -> logits [B, 1 + K].
    """
    q = F.normalize(upcast(q), dim=-1)
    k = F.normalize(upcast(k.detach()), dim=-1).to(q.dtype)  # keys are constants
    positive = (q * k).sum(-1, keepdim=True)  # [B, 1]
    negative = q @ queue.to(q.dtype).T  # [B, K]
    return torch.cat([positive, negative], dim=1) / temperature


def mocov2_loss(q: Tensor, k: Tensor, queue: Tensor, temperature: float = 0.1) -> Tensor:
    """CE_mean(mocov2_logits(q, k, queue, T), 0). Shapes as ``mocov2_logits``; returns a scalar."""
    logits = mocov2_logits(q, k, queue, temperature)
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


class MoCoV2Loss(ContrastiveLoss):
    """MoCo v2 with a FIFO queue of ``queue_size`` normalised keys (gathered over ranks).

    symmetric=False (the CIFAR demo's and DSF's default): p [1, B, D] = queries of view 1,
    k [1, B, D] = keys of view 2 (``MoCoV2CIFAR(symmetric=False)`` emits exactly this).
    symmetric=True: p and k are [2, B, D]; L = L(q1, k2) + L(q2, k1), both against the same queue
    snapshot, then [k1, k2] is enqueued. Keys are enqueued only in training mode.
    Metrics: acc (the positive key ranks first among 1 + K).
    """

    def __init__(self, temperature: float = 0.1, queue_size: int = 4096, dim: int = 128,
                 symmetric: bool = False):
        super().__init__()
        self.temperature, self.symmetric = temperature, symmetric
        self.queue = FeatureQueue(queue_size, dim)  # random unit rows, as MoCo's initial queue

    def _direction(self, q: Tensor, k: Tensor, queue: Tensor) -> tuple[Tensor, Tensor]:
        logits = mocov2_logits(q, k, queue, self.temperature)
        labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        return F.cross_entropy(logits, labels), accuracy(logits, labels)

    def forward(self, out: ViewOutputs, labels: Tensor | None = None) -> LossOutput:
        p, k = check_views(out.p, out.k)
        views = 2 if self.symmetric else 1
        if p.shape[0] != views or k.shape[0] != views:
            raise ValueError(f"MoCoV2Loss(symmetric={self.symmetric}) needs p and k of {views} "
                             f"view(s), got {p.shape[0]} and {k.shape[0]}: check the builder's "
                             "flag")
        queue = self.queue.snapshot()  # both directions see the queue before this step's keys
        if self.symmetric:
            loss12, acc12 = self._direction(p[0], k[1], queue)
            loss21, acc21 = self._direction(p[1], k[0], queue)
            loss, acc = loss12 + loss21, (acc12 + acc21) / 2
        else:
            loss, acc = self._direction(p[0], k[0], queue)
        if self.training:  # one enqueue per view: under DDP the queue then holds [k1 of all
            for keys in F.normalize(k.detach(), dim=-1):  # ranks, k2 of all ranks], as 1 process
                self.queue.enqueue(keys)
        return LossOutput(loss, {"acc": acc})


__all__ = ["mocov2_logits", "mocov2_loss", "MoCoV2Loss"]
