"""SNCLR soft-neighbour loss: a naive loop of the official procedure (§8.3), closed forms, the
bank, gradient flow, and the 2-rank run (banks are per rank: equal only if the banks are equal)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import run_gloo

from losses.base import ViewOutputs
from losses.snclr import SNCLRLoss, _snclr_terms, snclr_loss, topk_neighbours

DT = torch.float64


def naive_snclr(q, q_pre, key, neigh, temperature, threshold=False):
    """The official steps written as loops (one rank): candidates per sample [key, n_1..n_K];
    attention of q_pre over ALL B*K neighbours with -999 off the sample's own block; a target
    row of 1 at the own key and the attention at every neighbour column."""
    batch, topk, _ = neigh.shape
    unit = [[v[b] / v[b].norm() for b in range(batch)] for v in (q, q_pre)]
    cands = []
    for b in range(batch):
        cands.append(key[b] / key[b].norm())
        cands.extend(neigh[b, t] / neigh[b, t].norm() for t in range(topk))
    all_neigh = [
        neigh[c // topk, c % topk] / neigh[c // topk, c % topk].norm() for c in range(batch * topk)
    ]
    total = torch.zeros((), dtype=q.dtype)
    for b in range(batch):
        logits = torch.stack([unit[0][b] @ c / temperature for c in cands])
        logp = logits - torch.logsumexp(logits, 0)
        attn = torch.stack(
            [unit[1][b] @ n + (0.0 if c // topk == b else -999.0) for c, n in enumerate(all_neigh)]
        )
        w = torch.softmax(attn, 0)
        if threshold:
            w = w * (w > 1.0 / topk)
        for c in range(batch):
            total = total - (1.0 if c == b else 0.0) * logp[c * (topk + 1)]
            for t in range(topk):
                total = total - w[c * topk + t] * logp[c * (topk + 1) + 1 + t]
    return total / batch * (2 * temperature)


def _inputs(batch=4, topk=3, dim=6, grad=False):
    q, q_pre, key = (torch.randn(batch, dim, dtype=DT, requires_grad=grad) for _ in range(3))
    neigh = torch.randn(batch, topk, dim, dtype=DT, requires_grad=grad)
    return q, q_pre, key, neigh


@pytest.mark.parametrize("threshold", [False, True])
@pytest.mark.parametrize("temperature", [0.2, 1.0])
def test_loss_and_grads_match_naive(threshold, temperature):
    q, q_pre, key, neigh = _inputs(grad=True)
    ours = snclr_loss(q, q_pre, key, neigh, temperature, threshold=threshold)
    ours.backward()
    grads = q.grad.clone(), q_pre.grad.clone()
    a, b = q.detach().clone().requires_grad_(), q_pre.detach().clone().requires_grad_()
    ref = naive_snclr(a, b, key.detach(), neigh.detach(), temperature, threshold)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=0)
    ref.backward()
    torch.testing.assert_close(grads[0], a.grad, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(grads[1], b.grad, rtol=1e-10, atol=1e-14)


def test_gradient_flow_and_detach_weights():
    q, q_pre, key, neigh = _inputs(grad=True)
    snclr_loss(q, q_pre, key, neigh, 0.2).backward()
    assert q.grad.abs().sum() > 0
    assert q_pre.grad.abs().sum() > 0  # the official weights are not detached (§8.6-2)
    assert key.grad is None and neigh.grad is None  # keys and bank rows are constants
    q2, q_pre2 = q.detach().clone().requires_grad_(), q_pre.detach().clone().requires_grad_()
    loss = snclr_loss(q2, q_pre2, key, neigh, 0.2, detach_weights=True)
    loss.backward()
    assert q_pre2.grad is None
    torch.testing.assert_close(loss, snclr_loss(q, q_pre, key, neigh, 0.2))  # same value


def test_topk_neighbours_order_and_self_first():
    bank = torch.randn(20, 5, dtype=DT)
    k = 2.5 * bank[[3, 11]]  # each key is in the bank (up to scale)
    rows, idx = topk_neighbours(k, bank, 4)
    assert rows.shape == (2, 4, 5) and idx.shape == (2, 4)
    assert idx[:, 0].tolist() == [3, 11]
    sims = F.normalize(k, dim=1) @ F.normalize(bank, dim=1).T
    for b in range(2):
        expected = sorted(range(20), key=lambda m: -float(sims[b, m]))[:4]
        assert idx[b].tolist() == expected
    assert torch.equal(rows, bank[idx])  # raw rows, as stored


def test_equidistant_neighbours_get_equal_weights():
    # q_pre = e_0 and neighbours e_0 + e_t: every cosine is 1/sqrt(2), so w = 1/K
    batch, topk, dim = 3, 4, 8
    eye = torch.eye(dim, dtype=DT)
    q_pre = eye[0].repeat(batch, 1)
    neigh = (eye[0] + eye[1 : topk + 1]).repeat(batch, 1, 1)
    q, key = torch.randn(batch, dim, dtype=DT), torch.randn(batch, dim, dtype=DT)
    _, weights, _ = _snclr_terms(q, q_pre, key, neigh, 0.2, False, False)
    torch.testing.assert_close(weights, torch.full((batch, topk), 1 / topk, dtype=DT))
    # strict threshold w > 1/K zeroes equal weights: only the key term is left
    thr = snclr_loss(q, q_pre, key, neigh, 0.2, threshold=True)
    logits = (
        F.normalize(q, dim=1)
        @ F.normalize(torch.cat([key[:, None], neigh], 1).flatten(0, 1), dim=1).T
        / 0.2
    )
    own = torch.arange(batch) * (topk + 1)
    expected = -logits.log_softmax(-1)[torch.arange(batch), own].mean() * 0.4
    torch.testing.assert_close(thr, expected)


def test_collinear_candidates_closed_form():
    # all candidates collinear with q: log p = -log(B (K+1)) everywhere; weights sum to 1
    batch, topk, dim = 3, 2, 5
    d = torch.randn(dim, dtype=DT)
    q = d.repeat(batch, 1)
    key = d.repeat(batch, 1) * 2
    neigh = d.repeat(batch, topk, 1) * 3
    q_pre = torch.randn(batch, dim, dtype=DT)
    expected = 2 * 0.2 * 2 * math.log(batch * (topk + 1))
    torch.testing.assert_close(
        snclr_loss(q, q_pre, key, neigh, 0.2), torch.tensor(expected, dtype=DT)
    )


def _module(bank: torch.Tensor, topk: int = 3, **kw) -> SNCLRLoss:
    loss = SNCLRLoss(0.2, bank_size=bank.shape[0], topk=topk, dim=bank.shape[1], **kw).to(DT)
    loss.bank.bank.copy_(bank)
    return loss


def test_module_is_two_directions_on_the_pre_update_bank():
    bank = torch.randn(16, 6, dtype=DT)
    p, z, k = (torch.randn(2, 4, 6, dtype=DT) for _ in range(3))
    loss = _module(bank).train()
    out = loss(ViewOutputs(p=p, k=k, z=z))
    n1, _ = topk_neighbours(k[0], bank, 3)
    n2, _ = topk_neighbours(k[1], bank, 3)
    expected = snclr_loss(p[0], z[0], k[1], n2, 0.2) + snclr_loss(p[1], z[1], k[0], n1, 0.2)
    torch.testing.assert_close(out.loss, expected, rtol=1e-12, atol=0)
    # only the raw view-2 keys enter the bank
    assert torch.equal(loss.bank.bank[:4], k[1]) and torch.equal(loss.bank.bank[4:], bank[4:])
    assert int(loss.bank.ptr) == 4
    assert set(out.metrics) == {"acc", "w_entropy"}
    assert all(not v.requires_grad and v.dim() == 0 for v in out.metrics.values())
    assert 0 <= float(out.metrics["w_entropy"]) <= math.log(3) + 1e-9


def test_eval_mode_leaves_bank():
    bank = torch.randn(8, 6, dtype=DT)
    loss = _module(bank).eval()
    p, z, k = (torch.randn(2, 4, 6, dtype=DT) for _ in range(3))
    loss(ViewOutputs(p=p, k=k, z=z))
    assert torch.equal(loss.bank.bank, bank) and int(loss.bank.ptr) == 0


def test_purity_metric():
    bank = torch.randn(8, 6, dtype=DT)
    loss = _module(bank, topk=2).train()
    loss.bank_labels.bank[:, 0] = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3], dtype=DT)
    # every key is collinear with bank row 2b+1's direction and row 2b is its exact copy:
    bank[0::2] = bank[1::2]
    loss.bank.bank.copy_(bank)
    k = bank[1::2].unsqueeze(0).repeat(2, 1, 1)  # neighbours of key b: rows 2b, 2b+1 (label b)
    labels = torch.tensor([0, 1, 7, -1])  # 2 of the 4 queries match both neighbours
    p, z = torch.randn(2, 4, 6, dtype=DT), torch.randn(2, 4, 6, dtype=DT)
    out = loss(ViewOutputs(p=p, k=k, z=z), labels=labels)
    torch.testing.assert_close(out.metrics["purity"], torch.tensor(0.5))


def _gloo_snclr(rank, world_size, p, z, k, bank):
    b = p.shape[1] // world_size
    loss = _module(bank).train()  # identical banks on both ranks
    sl = slice(rank * b, (rank + 1) * b)
    p_local, z_local = p[:, sl].clone().requires_grad_(), z[:, sl].clone().requires_grad_()
    out = loss(ViewOutputs(p=p_local, k=k[:, sl], z=z_local))
    out.loss.backward()
    return out.loss.detach(), p_local.grad, z_local.grad, loss.bank.bank.clone(), int(loss.bank.ptr)


def test_two_ranks_with_equal_banks_equal_one_process():
    bank = torch.randn(16, 6, dtype=DT)
    p, z, k = (torch.randn(2, 6, 6, dtype=DT) for _ in range(3))
    full = _module(bank).train()
    p_full, z_full = p.clone().requires_grad_(), z.clone().requires_grad_()
    ref = full(ViewOutputs(p=p_full, k=k, z=z_full))
    ref.loss.backward()
    results = run_gloo(_gloo_snclr, p, z, k, bank)
    world, b = len(results), p.shape[1] // len(results)
    torch.testing.assert_close(
        torch.stack([r[0] for r in results]).mean(), ref.loss.detach(), rtol=1e-12, atol=0
    )
    # keys are gathered without gradient, so each rank's input grads are W x its share
    torch.testing.assert_close(torch.cat([r[1] for r in results], 1) / world, p_full.grad)
    torch.testing.assert_close(torch.cat([r[2] for r in results], 1) / world, z_full.grad)
    for rank, (*_, rank_bank, ptr) in enumerate(results):  # each rank banks only its own keys
        assert ptr == b
        assert torch.equal(rank_bank[:b], k[1, rank * b : (rank + 1) * b])
        assert torch.equal(rank_bank[b:], bank[b:])


def test_half_precision_is_upcast():
    q, q_pre, key, neigh = _inputs()
    ref = snclr_loss(q, q_pre, key, neigh, 0.2)
    half = snclr_loss(*(t.to(torch.bfloat16) for t in (q, q_pre, key, neigh)), 0.2)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half.double(), ref, rtol=0.05, atol=0)
