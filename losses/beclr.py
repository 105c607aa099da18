r"""BeCLR: NT-Xent over a Bregman divergence between sub-network outputs, plus a cosine NT-Xent.

With F = cat(out_view0, out_view1) [2B, K] (K sub-networks f_k) and k*_j = argmax_k F[j, k]:

    d_{ij} = \max_k F_{ik} - F_{i, k*_j} \ge 0,    s_{ij} = \exp(-d_{ij} / (2\sigma^2)) / T
    L = NTXent(s) + NTXent(\cos(z) / T)    (positives i <-> i \pm B, self excluded, mean over 2B)

d is the Bregman divergence of the convex generator phi(x) = max_k f_k(x), whose sub-gradient at
x_j is the winning sub-network k*_j. The Bregman logits are exp(.)/T, so they lie in (0, 1/T].

Source: csfarzin/BeCLR ``loss/breg_loss.py::BregmanLoss`` (sigma 0.9, its "case 2"),
``loss/nt_xent.py``, ``trainer.py::Trainer`` (``mixed_loss = True``: both terms summed, same T;
the kNN monitor ``Trainer.bregman_sim`` uses sigma = 1). The official code is single-node
``nn.DataParallel``, so its negatives are the whole batch; under DDP every rank here gathers the
winners k*_j and the projections of all ranks, which gives the same global negatives.

Reads: out.extras["subnet"] [2, B, K] (sub-network outputs, grad), out.p [2, B, D] (projector).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from losses.base import ContrastiveLoss, LossOutput, ViewOutputs, check_views, upcast
from utils import dist


def _distance_to_winners(f: Tensor, winners: Tensor) -> Tensor:
    """d[i, j] = max_k f[i, k] - f[i, winners[j]]. Shapes: f [N, K], winners [M] long -> [N, M]."""
    return f.max(dim=1).values[:, None] - f[:, winners]  # [N, M]


def bregman_distance(f: Tensor) -> Tensor:
    """Bregman divergence d[i, j] = max_k f[i, k] - f[i, argmax_k f[j, k]] (>= 0, zero diagonal).

    Shapes: f [N, K] sub-network outputs -> [N, N]. The gradient flows through row i only: the
    winner index of row j is piecewise constant.
    """
    return _distance_to_winners(f, f.max(dim=1).indices)


def bregman_similarity(test_out: Tensor, bank_out: Tensor, sigma: float = 1.0) -> Tensor:
    """kNN similarity of the official monitor, exp(-d(test_b, bank_n) / (2 sigma^2)).

    d(t, b) = max_k t[k] - t[argmax_k b[k]]. Shapes: test_out [n, K], bank_out [m, K] (sub-network
    outputs in eval mode) -> [n, m]. Pure, so test rows can be chunked. sigma = 1 as in
    ``Trainer.bregman_sim`` (training uses 0.9).
    """
    d = _distance_to_winners(upcast(test_out), bank_out.max(dim=1).indices)  # [n, m]
    return torch.exp(-d / (2 * sigma**2))


def _anchor_columns(batch: int, n_global: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Columns of each local anchor's self and positive among the gathered cat(view0, view1).

    Local rows are cat(view0, view1) [2B]; columns are cat(view0, view1) of [2, W*B] (all ranks).
    """
    image = torch.arange(batch, device=device) + batch * dist.get_rank()  # global image index [B]
    view = torch.arange(2, device=device)[:, None]
    self_col = (view * n_global + image).flatten()  # [2B]
    pos_col = ((1 - view) * n_global + image).flatten()  # [2B], i <-> i +- B
    return self_col, pos_col


def _nt_xent_rows(logits: Tensor, batch: int) -> Tensor:
    """NT-Xent as the official code lays it out: CE([pos | others], 0), self excluded, row mean.

    Shapes: logits [2B, 2*W*B] (local anchors x global columns) -> scalar.
    """
    self_col, pos_col = _anchor_columns(batch, logits.shape[1] // 2, logits.device)
    rows = torch.arange(logits.shape[0], device=logits.device)
    # torch.full fills on the device (new_tensor would copy from the host: a sync)
    minus_inf = torch.full((), float("-inf"), dtype=logits.dtype, device=logits.device)
    logits = logits.index_put((rows, self_col), minus_inf)  # [2B, 2WB]
    return (torch.logsumexp(logits, dim=1) - logits[rows, pos_col]).mean()


def _check_two_views(x: Tensor) -> None:
    if x.shape[0] != 2:
        raise ValueError(f"BeCLR's loss takes exactly 2 views, got {x.shape[0]}")


def _bregman_term(out: Tensor, temperature: float, sigma: float) -> tuple[Tensor, Tensor]:
    """NT-Xent over the Bregman similarity of the local rows to the rows of every rank.

    Returns (loss = mean over the 2B local anchors, winners [2, W*B] of all ranks). d has no
    gradient with respect to row j (only its argmax enters), so the winners are gathered as
    integers without gradient: the values and gradients of gathering the outputs with gradient.
    """
    _check_two_views(out)
    winners = dist.gather_no_grad(out.max(dim=2).indices, dim=1)  # [2, W*B]
    d = _distance_to_winners(out.flatten(0, 1), winners.flatten())  # [2B, 2WB], rows cat(v0, v1)
    logits = torch.exp(-d / (2 * sigma**2)) / temperature
    return _nt_xent_rows(logits, out.shape[1]), winners


def _cosine_term(feat: Tensor, temperature: float) -> Tensor:
    """The official ``NT_Xent`` (cosine similarity, eps 1e-8), negatives from every rank."""
    _check_two_views(feat)
    z = F.normalize(feat, dim=-1, eps=1e-8)  # [2, B, D]
    keys = dist.gather_with_grad(z, dim=1).flatten(0, 1)  # [2*W*B, D], negatives get gradient
    return _nt_xent_rows(z.flatten(0, 1) @ keys.T / temperature, feat.shape[1])  # [2B, 2WB]


def bregman_nt_xent(out: Tensor, temperature: float, sigma: float = 0.9) -> Tensor:
    """The official ``BregmanLoss`` value. Shapes: out [2, B, K] sub-network outputs -> scalar."""
    (out,) = check_views(out)
    return _bregman_term(upcast(out), temperature, sigma)[0]


def cosine_nt_xent(feat: Tensor, temperature: float) -> Tensor:
    """The official ``NT_Xent`` value. Shapes: feat [2, B, D] projector outputs -> scalar."""
    (feat,) = check_views(feat)
    return _cosine_term(upcast(feat), temperature)


def beclr_loss(out: Tensor, feat: Tensor, temperature: float, sigma: float = 0.9,
               mixed: bool = True) -> Tensor:
    """The official training loss: Bregman NT-Xent(out) + cosine NT-Xent(feat), one temperature.

    Shapes: out [2, B, K] sub-network outputs, feat [2, B, D] projector outputs -> scalar.
    mixed=False drops the cosine term (the official ``Trainer.mixed_loss``, hard-coded True).
    """
    loss = bregman_nt_xent(out, temperature, sigma)
    return loss + cosine_nt_xent(feat, temperature) if mixed else loss


def selection_stats(winners: Tensor, k_subs: int) -> tuple[Tensor, Tensor]:
    """(sub-networks that win at least one row, entropy in nats of the win histogram).

    Replaces the official ``num_max`` (a CPU identity indexed by device indices, docs/methods.md
    §6.5-1) by counts on the input's device (scatter_add_: a CUDA bincount reads its max back to
    the host). Shapes: winners, long indices in [0, k_subs).
    """
    flat = winners.flatten()
    counts = torch.zeros(k_subs, device=flat.device).scatter_add_(
        0, flat, torch.ones(flat.shape, device=flat.device))  # [K]
    prob = counts / counts.sum()
    entropy = -(prob * prob.clamp_min(1e-12).log()).sum()
    return (counts > 0).sum().float(), entropy


class BeCLRLoss(ContrastiveLoss):
    """BeCLR loss. Reads out.extras["subnet"] [2, B, K] (grad) and out.p [2, B, D] (grad).

    Metrics: ``loss_bregman`` and ``loss_ntxent`` (the two terms), ``active_subs`` (sub-networks
    winning at least one row of the global batch), ``active_frac`` = active_subs / K (below 0.1 is
    the collapse failure mode: a few sub-networks win every row), ``select_entropy`` (nats; log K
    when the wins are uniform).
    """

    def __init__(self, temperature: float = 0.5, sigma: float = 0.9, mixed: bool = True):
        super().__init__()
        self.temperature, self.sigma, self.mixed = temperature, sigma, mixed

    def forward(self, out: ViewOutputs, labels: Tensor | None = None) -> LossOutput:
        if "subnet" not in out.extras:
            raise ValueError('BeCLR reads out.extras["subnet"]: use the BeCLRNet builder')
        subnet, feat = check_views(out.extras["subnet"], out.p)
        loss, winners = _bregman_term(upcast(subnet), self.temperature, self.sigma)
        metrics = {"loss_bregman": loss.detach()}
        if self.mixed:
            loss_nt = _cosine_term(upcast(feat), self.temperature)
            metrics["loss_ntxent"] = loss_nt.detach()
            loss = loss + loss_nt
        k_subs = subnet.shape[-1]
        active, entropy = selection_stats(winners, k_subs)
        metrics.update(active_subs=active, active_frac=active / k_subs, select_entropy=entropy)
        return LossOutput(loss, metrics)

    def warnings(self, epoch_metrics: dict[str, float]) -> list[str]:
        active = epoch_metrics.get("active_frac", 1.0)
        if active >= 0.1:
            return []
        return [f"only {100 * active:.1f}% of the sub-networks are selected: the Bregman generator "
                "is collapsing (lower --lr or --k-subs)"]


__all__ = ["bregman_distance", "bregman_similarity", "bregman_nt_xent", "cosine_nt_xent",
           "beclr_loss", "selection_stats", "BeCLRLoss"]
