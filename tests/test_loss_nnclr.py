"""NNCLR (solo-learn form): naive loop reference, closed forms, queue semantics, gradients, gloo."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import run_gloo

from losses.base import ViewOutputs
from losses.nnclr import NNCLRLoss, nearest_neighbour
from models.nnclr import nnclr_heads

DT = torch.float64


def naive_nearest(z: torch.Tensor, bank: torch.Tensor) -> list[int]:
    out = []
    for row in z:
        sims = [float(row @ b / (row.norm() * b.norm())) for b in bank]
        out.append(max(range(len(sims)), key=lambda m: sims[m]))
    return out


def naive_direction(nn: torch.Tensor, p: torch.Tensor, temperature: float) -> torch.Tensor:
    """CE with row i = neighbour i against every prediction, positive = column i; python loops."""
    total = torch.zeros((), dtype=nn.dtype)
    for i in range(nn.shape[0]):
        a = nn[i] / nn[i].norm()
        logits = torch.stack([a @ (pj / pj.norm()) / temperature for pj in p])
        total = total - (logits[i] - torch.log(torch.exp(logits).sum()))
    return total / nn.shape[0]


def naive_nnclr(nn: torch.Tensor, p: torch.Tensor, temperature: float) -> torch.Tensor:
    return 0.5 * naive_direction(nn[0], p[1], temperature) + 0.5 * naive_direction(
        nn[1], p[0], temperature
    )


def test_nearest_neighbour_matches_loops():
    z, bank = torch.randn(5, 4, dtype=DT), torch.randn(11, 4, dtype=DT)
    rows, idx = nearest_neighbour(z, bank)
    assert idx.tolist() == naive_nearest(z, bank)
    assert torch.equal(rows, bank[idx])  # the stored rows, not normalised copies


def test_bank_holding_the_query_returns_it():
    bank = torch.randn(9, 4, dtype=DT)
    z = 3.0 * bank[[4, 7]]  # cosine similarity is scale-free
    rows, idx = nearest_neighbour(z, bank)
    assert idx.tolist() == [4, 7]
    torch.testing.assert_close(rows, bank[[4, 7]])


@pytest.mark.parametrize("temperature", [0.1, 0.2, 1.0])
def test_loss_matches_naive(temperature):
    nn, p = torch.randn(2, 6, 5, dtype=DT), torch.randn(2, 6, 5, dtype=DT)
    torch.testing.assert_close(
        nnclr_loss(nn, p, temperature), naive_nnclr(nn, p, temperature), rtol=1e-12, atol=0
    )


def test_collinear_embeddings_give_log_batch():
    # every logit is equal, so each CE is exactly log(B)
    direction = torch.randn(1, 1, 7, dtype=DT)
    nn = direction * torch.rand(2, 5, 1, dtype=DT).add(0.5)
    p = direction * torch.rand(2, 5, 1, dtype=DT).add(0.5)
    torch.testing.assert_close(nnclr_loss(nn, p, 0.1), torch.tensor(math.log(5), dtype=DT))


def test_gradient_reaches_p_only():
    nn = torch.randn(2, 4, 6, dtype=DT, requires_grad=True)
    p = torch.randn(2, 4, 6, dtype=DT, requires_grad=True)
    nnclr_loss(nn, p, 0.1).backward()
    assert nn.grad is None  # neighbours are constants (queue rows)
    assert p.grad.abs().sum() > 0
    # the gradient equals the naive loop's
    p2 = p.detach().clone().requires_grad_()
    naive_nnclr(nn.detach(), p2, 0.1).backward()
    torch.testing.assert_close(p.grad, p2.grad, rtol=1e-10, atol=1e-12)


def nnclr_loss(nn: torch.Tensor, p: torch.Tensor, temperature: float) -> torch.Tensor:
    """The NNCLR class with the neighbours given: a support set of exactly the rows of nn, so each
    query (z = nn) finds itself. Shapes: nn, p [2, B, D]."""
    criterion = _module(F.normalize(nn.detach().flatten(0, 1).to(DT), dim=-1), temperature).eval()
    return criterion(ViewOutputs(p=p, z=nn)).loss


def _module(queue: torch.Tensor, temperature: float = 0.1) -> NNCLRLoss:
    loss = NNCLRLoss(temperature, queue_size=queue.shape[0], dim=queue.shape[1]).to(DT)
    loss.queue.bank.copy_(queue)
    return loss


def test_module_uses_queue_before_enqueue_then_enqueues_view0():
    queue = F.normalize(torch.randn(16, 5, dtype=DT), dim=1)
    z = torch.randn(2, 4, 5, dtype=DT, requires_grad=True)
    p = torch.randn(2, 4, 5, dtype=DT, requires_grad=True)
    loss = _module(queue).train()
    out = loss(ViewOutputs(p=p, z=z))
    nn = torch.stack([nearest_neighbour(z[v].detach(), queue)[0] for v in range(2)])
    torch.testing.assert_close(out.loss, naive_nnclr(nn, p.detach(), 0.1), rtol=1e-12, atol=0)
    torch.testing.assert_close(loss.queue.bank[:4], F.normalize(z[0].detach(), dim=1))
    torch.testing.assert_close(loss.queue.bank[4:], queue[4:])
    assert int(loss.queue.ptr) == 4
    out.loss.backward()
    assert z.grad is None  # the loss never differentiates through z (only through p)
    assert p.grad.abs().sum() > 0
    assert set(out.metrics) == {"acc"} and not out.metrics["acc"].requires_grad


def test_eval_mode_leaves_queue():
    queue = F.normalize(torch.randn(8, 5, dtype=DT), dim=1)
    loss = _module(queue).eval()
    loss(ViewOutputs(p=torch.randn(2, 4, 5, dtype=DT), z=torch.randn(2, 4, 5, dtype=DT)))
    assert torch.equal(loss.queue.bank, queue) and int(loss.queue.ptr) == 0


def test_neighbour_label_metric():
    queue = F.normalize(torch.randn(8, 5, dtype=DT), dim=1)
    loss = _module(queue).train()
    loss.queue_labels.bank[:, 0] = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3], dtype=DT)
    z = queue[[0, 1, 2, 3]].unsqueeze(0).repeat(2, 1, 1)  # view 0's neighbours are rows 0..3
    labels = torch.tensor([0, 1, 5, -1])  # 2 matches; -1 never counts
    out = loss(ViewOutputs(p=torch.randn(2, 4, 5, dtype=DT), z=z), labels=labels)
    torch.testing.assert_close(out.metrics["nn_acc"], torch.tensor(0.5))
    assert loss.queue_labels.bank[:4, 0].tolist() == [0, 1, 5, -1]  # labels ride with the queue


def test_heads_shapes_and_layers():
    projector, predictor = nnclr_heads(32, hidden=16, pred_hidden=24, out=8)
    h = torch.randn(5, 32)
    z = projector(h)
    assert z.shape == (5, 8) and predictor(z).shape == (5, 8)
    linears = [m for m in projector if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [16, 16, 8]
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in projector) == 3
    assert sum(isinstance(m, torch.nn.ReLU) for m in projector) == 2
    assert not isinstance(projector[-1], torch.nn.ReLU)  # no ReLU after the last BN
    assert isinstance(predictor[-1], torch.nn.Linear) and predictor[-1].bias is not None
    assert all(m.bias is None for m in linears)  # BN follows every projector Linear


def test_loss_decreases_under_sgd():
    queue = F.normalize(torch.randn(32, 6, dtype=DT), dim=1)
    loss = _module(queue).eval()  # fixed queue: the objective is a fixed function of p
    z = torch.randn(2, 8, 6, dtype=DT)
    p = torch.randn(2, 8, 6, dtype=DT, requires_grad=True)
    opt = torch.optim.SGD([p], lr=0.5)
    first = None
    for _ in range(20):
        value = loss(ViewOutputs(p=p, z=z)).loss
        first = value.detach() if first is None else first
        opt.zero_grad()
        value.backward()
        opt.step()
    assert value.detach() < first


def _gloo_nnclr(rank, world_size, z, p, queue):
    b = z.shape[1] // world_size
    loss = _module(queue).train()
    p_local = p[:, rank * b : (rank + 1) * b].clone().requires_grad_()
    out = loss(ViewOutputs(p=p_local, z=z[:, rank * b : (rank + 1) * b]))
    out.loss.backward()
    return out.loss.detach(), p_local.grad, loss.queue.bank.clone(), int(loss.queue.ptr)


def test_two_ranks_equal_one_process():
    queue = F.normalize(torch.randn(12, 5, dtype=DT), dim=1)
    z, p = torch.randn(2, 6, 5, dtype=DT), torch.randn(2, 6, 5, dtype=DT)
    full = _module(queue).train()
    p_full = p.clone().requires_grad_()
    ref = full(ViewOutputs(p=p_full, z=z))
    ref.loss.backward()
    results = run_gloo(_gloo_nnclr, z, p, queue)
    world = len(results)
    mean_loss = torch.stack([r[0] for r in results]).mean()
    torch.testing.assert_close(mean_loss, ref.loss.detach(), rtol=1e-12, atol=0)
    grads = torch.cat([r[1] for r in results], dim=1) / world  # rank grads are W x (convention)
    torch.testing.assert_close(grads, p_full.grad, rtol=1e-10, atol=1e-14)
    for _, _, bank, ptr in results:  # the gathered enqueue gives every rank the 1-process queue
        torch.testing.assert_close(bank, full.queue.bank, rtol=0, atol=0)
        assert ptr == int(full.queue.ptr) == 6


def test_half_precision_is_upcast():
    nn, p = torch.randn(2, 6, 5, dtype=DT), torch.randn(2, 6, 5, dtype=DT)
    half = nnclr_loss(nn.to(torch.bfloat16), p.to(torch.bfloat16), 0.2)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half.double(), nnclr_loss(nn, p, 0.2), rtol=0.05, atol=0)
