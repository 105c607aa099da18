r"""SNCLR soft-neighbour InfoNCE (Ge et al., ICLR 2023; ChongjianGE/SNCLR, builder_snclr_factor.py).

For a query q_b with momentum key k_b and its K nearest bank entries n_b1..n_bK (docs/methods.md §8.3):

    L = 2T mean_b [ -log p_b(k_b) - \sum_t w_bt log p_b(n_bt) ]
    w_bt = softmax_t( norm(z_b) . norm(n_bt) )

where p_b is the softmax of norm(q_b) against all W B (K+1) normalised candidates [k, n_1..n_K] of
every sample (gathered over ranks without gradient) at temperature T; z is the online projector
output.

Reads: out.p [2, B, D] (predictor, grad), out.z [2, B, D] (projector, grad through the weights),
out.k [2, B, D] (momentum keys, no grad), the optional ``labels`` argument [B] for the purity metric.
The bank is per rank (no gather before enqueue), as in the official code: ranks see different
neighbours, so a sharded run equals a 1-process run only when the ranks' banks are equal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from losses.base import ContrastiveLoss, LossOutput, ViewOutputs, accuracy, check_views, upcast
from losses.memory import FeatureQueue
from utils import dist


@torch.no_grad()
def topk_neighbours(k: Tensor, bank: Tensor, topk: int) -> tuple[Tensor, Tensor]:
    """The topk bank rows most cosine-similar to each key, in descending similarity.

    Shapes: k [B, D], bank [M, D] (raw stored keys) -> (neighbours [B, K, D] raw, indices [B, K]).
    """
    bank = bank.to(k.dtype)
    sims = F.normalize(k, dim=-1) @ F.normalize(bank, dim=-1).T  # [B, M]
    idx = sims.topk(topk, dim=-1).indices  # [B, K]
    return bank[idx], idx


def _snclr_terms(
    q: Tensor,
    q_pre: Tensor,
    key: Tensor,
    neighbours: Tensor,
    temperature: float,
    threshold: bool,
    detach_weights: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """One direction of the loss. Returns (loss, weights w [B, K] before thresholding, accuracy)."""
    q, q_pre, key, neighbours = upcast(q), upcast(q_pre), upcast(key), upcast(neighbours)
    batch, n_neigh = neighbours.shape[:2]
    # candidates in the official keep order: per sample [key, n_1..n_K], samples rank-major
    keep = torch.cat([key.detach().unsqueeze(1), neighbours.detach()], dim=1)  # [B, K+1, D]
    keep = F.normalize(keep, dim=-1).flatten(0, 1)  # [B(K+1), D]
    keep = dist.gather_no_grad(keep, dim=0)  # [W B (K+1), D]
    logp = (F.normalize(q, dim=-1) @ keep.T / temperature).log_softmax(-1)  # [B, W B (K+1)]
    own = torch.arange(batch, device=q.device) + batch * dist.get_rank()
    rows = torch.arange(batch, device=q.device)
    logp_own = logp.view(batch, -1, n_neigh + 1)[rows, own]  # [B, K+1]: own key and neighbours
    # the official softmax runs over all gathered neighbours with -999 on the others' columns:
    # exp(-999) is exactly 0 in fp32 and fp64, so it is this softmax over the sample's own K
    q_pre = q_pre.detach() if detach_weights else q_pre
    attn = torch.einsum(
        "bd,btd->bt", F.normalize(q_pre, dim=-1), F.normalize(neighbours.detach(), dim=-1)
    )  # [B, K]
    weights = attn.softmax(-1)
    w = weights * (weights > 1.0 / n_neigh) if threshold else weights
    per_sample = -logp_own[:, 0] - (w * logp_own[:, 1:]).sum(-1)  # [B]
    acc = accuracy(logp, own * (n_neigh + 1))  # the own key is the top candidate
    return per_sample.mean() * (2 * temperature), weights, acc


def snclr_loss(
    q: Tensor,
    q_pre: Tensor,
    key: Tensor,
    neighbours: Tensor,
    temperature: float,
    threshold: bool = False,
    detach_weights: bool = False,
) -> Tensor:
    """SNCLR soft-neighbour loss for one direction (docs/methods.md §8.3).

    Shapes: q [B, D] predictor outputs, q_pre [B, D] projector outputs, key [B, D] raw momentum
    keys, neighbours [B, K, D] raw bank rows. Keys and neighbours are constants; the weights carry
    gradient into q_pre as in the official code unless detach_weights; threshold keeps w > 1/K only.
    """
    return _snclr_terms(q, q_pre, key, neighbours, temperature, threshold, detach_weights)[0]


def _entropy(w: Tensor) -> Tensor:
    return -(w * w.clamp_min(1e-12).log()).sum(-1).mean()


class SNCLRLoss(ContrastiveLoss):
    """SNCLR loss owning a per-rank bank of raw momentum keys (view-2 keys enqueued each step).

    Args:
        temperature: softmax temperature T (0.2 in the official recipe).
        bank_size: bank rows per rank (128000 in the official recipe; builder default 98304).
        topk: neighbours per key K (30 in the official recipe; builder default 5).
        dim: key dimension D.
        threshold: keep only weights above 1/K (official flag, default off).
        detach_weights: stop the gradient that the official weights send into the projector.
    """

    def __init__(
        self,
        temperature: float = 0.2,
        bank_size: int = 98304,
        topk: int = 5,
        dim: int = 256,
        threshold: bool = False,
        detach_weights: bool = False,
    ):
        super().__init__()
        self.temperature, self.topk = temperature, topk
        self.threshold, self.detach_weights = threshold, detach_weights
        self.bank = FeatureQueue(bank_size, dim, init="randn_normalized", gather=False)
        # labels of the banked keys, for the purity metric only (-1 = unknown)
        self.bank_labels = FeatureQueue(bank_size, 1, init="zeros", gather=False)
        self.bank_labels.bank.fill_(-1)

    def forward(self, out: ViewOutputs, labels: Tensor | None = None) -> LossOutput:
        q, q_pre, k = check_views(out.p, out.z, out.k)
        if q.shape[0] != 2:
            raise ValueError(f"SNCLR needs exactly 2 views, got {q.shape[0]}")
        k = upcast(k.detach())
        # one lookup for both views, on the bank before this step's enqueue (the rows are copies)
        neigh, idx = topk_neighbours(k.flatten(0, 1), self.bank.bank, self.topk)  # [2B, K, D]
        (n1, n2), (idx1, idx2) = neigh.chunk(2), idx.chunk(2)
        flags = (self.temperature, self.threshold, self.detach_weights)
        loss_a, w_a, acc_a = _snclr_terms(q[0], q_pre[0], k[1], n2, *flags)
        loss_b, w_b, acc_b = _snclr_terms(q[1], q_pre[1], k[0], n1, *flags)
        metrics = {
            "acc": (acc_a + acc_b) / 2,
            "w_entropy": ((_entropy(w_a) + _entropy(w_b)) / 2).detach(),
        }
        if labels is not None:
            metrics["purity"] = (self._purity(idx2, labels) + self._purity(idx1, labels)) / 2
        if self.training:
            self.bank.enqueue(k[1])  # only view-2 keys enter the bank, un-normalised (§8.1)
            if labels is None:
                labels = torch.full((k.shape[1],), -1, device=k.device)
            self.bank_labels.enqueue(labels.view(-1, 1))
        return LossOutput(loss_a + loss_b, metrics)

    def _purity(self, idx: Tensor, labels: Tensor) -> Tensor:
        """Fraction of the [B, K] neighbours whose stored label equals the (known) query label."""
        nn_labels = self.bank_labels.bank[idx, 0].to(labels.dtype)  # [B, K]
        return ((nn_labels == labels[:, None]) & (labels[:, None] >= 0)).float().mean()
