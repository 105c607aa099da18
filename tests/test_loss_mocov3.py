"""MoCo v3 InfoNCE (losses/mocov3.py) against naive loops written from docs/methods.md §2."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import run_gloo

from losses.mocov3 import mocov3_loss


def naive_moco_ctr(q, k, T):
    """moco-v3 contrastive_loss for one (q, k) pair, with Python loops over rows."""
    total = 0.0
    for b in range(q.shape[0]):
        qn = q[b] / q[b].norm()
        logits = [torch.dot(qn, k[c] / k[c].norm()) / T for c in range(k.shape[0])]
        logits = torch.stack(logits)
        total = total - (logits[b] - torch.logsumexp(logits, 0))
    return total / q.shape[0] * 2 * T


@pytest.mark.parametrize("V", [2, 3, 4])
def test_mocov3_matches_naive(V):
    q, k = torch.randn(V, 6, 5, dtype=torch.float64), torch.randn(V, 6, 5, dtype=torch.float64)
    loss, _ = mocov3_loss(q, k, 0.2)
    expected = sum(naive_moco_ctr(q[i], k[j], 0.2) for i in range(V) for j in range(V) if i != j)
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)


def test_mocov3_two_views_is_ctr_q1k2_plus_q2k1():
    q, k = torch.randn(2, 8, 4, dtype=torch.float64), torch.randn(2, 8, 4, dtype=torch.float64)
    T = 0.5

    def ctr(a, b):  # moco-v3 builder.contrastive_loss on one process
        logits = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T / T
        return F.cross_entropy(logits, torch.arange(a.shape[0])) * 2 * T

    torch.testing.assert_close(mocov3_loss(q, k, T)[0], ctr(q[0], k[1]) + ctr(q[1], k[0]))


def test_closed_form_collinear():
    """MoCo v3 with identical q and k: CE = log(B) per direction, times 2T, two directions."""
    B = 5
    z = torch.ones(2, B, 4, dtype=torch.float64)
    loss, _ = mocov3_loss(z, z, 0.1)
    torch.testing.assert_close(loss, torch.tensor(2 * 2 * 0.1 * math.log(B), dtype=torch.float64))


def test_gradient_flow():
    q = torch.randn(2, 4, 3, requires_grad=True)
    k = torch.randn(2, 4, 3, requires_grad=True)
    mocov3_loss(q, k, 0.2)[0].backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert k.grad is None  # keys are constants


def _sharded(rank, world, x, k, T):
    B = x.shape[1] // world
    xs = x[:, rank * B:(rank + 1) * B].clone().requires_grad_(True)
    loss, _ = mocov3_loss(xs, k[:, rank * B:(rank + 1) * B], T)
    loss.backward()
    return loss.detach(), xs.grad


def test_two_process_gloo_equals_one_process():
    x = torch.randn(2, 8, 5, dtype=torch.float64)
    k = torch.randn(2, 8, 5, dtype=torch.float64)
    full = x.clone().requires_grad_(True)
    loss = mocov3_loss(full, k, 0.2)[0]
    loss.backward()
    results = run_gloo(_sharded, x, k, 0.2)
    mean_loss = sum(r[0] for r in results) / 2
    torch.testing.assert_close(mean_loss, loss.detach())
    grads = torch.cat([r[1] for r in results], dim=1) / 2  # each rank holds W x its share
    torch.testing.assert_close(grads, full.grad)
