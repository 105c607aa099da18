"""SimCLR NT-Xent (losses/simclr.py) against naive loops written from docs/methods.md §3."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import run_gloo

from losses.simclr import nt_xent


def naive_ntxent(z, T):
    """NT-Xent over V*B anchors; all positives inside one log (solo-learn form)."""
    V, B, _ = z.shape
    flat = [(v, b, z[v, b] / z[v, b].norm()) for v in range(V) for b in range(B)]
    total = 0.0
    for v, b, za in flat:
        pos, den = [], []
        for w, c, zc in flat:
            if (w, c) == (v, b):
                continue
            s = torch.dot(za, zc) / T
            den.append(s)
            if c == b:
                pos.append(s)
        total = total - (torch.logsumexp(torch.stack(pos), 0) - torch.logsumexp(torch.stack(den), 0))
    return total / len(flat)


@pytest.mark.parametrize("V", [2, 3, 4])
def test_ntxent_matches_naive(V):
    z = torch.randn(V, 5, 7, dtype=torch.float64)
    torch.testing.assert_close(nt_xent(z, 0.3)[0], naive_ntxent(z, 0.3), rtol=1e-10, atol=1e-12)


def test_ntxent_two_views_equals_lightly_form():
    """For V = 2: mean CE of [pos | other 2B-2] rows (lightly / BeCLR NT_Xent)."""
    z = torch.randn(2, 6, 3, dtype=torch.float64)
    T = 0.5
    x = F.normalize(torch.cat([z[0], z[1]]), dim=1)
    sim = x @ x.T / T
    n = x.shape[0]
    rows = []
    for i in range(n):
        pos = (i + n // 2) % n
        others = [sim[i, j] for j in range(n) if j not in (i, pos)]
        rows.append(-(sim[i, pos] - torch.logsumexp(torch.stack([sim[i, pos], *others]), 0)))
    torch.testing.assert_close(nt_xent(z, T)[0], torch.stack(rows).mean())


def test_closed_form_collinear():
    """All embeddings equal: every logit ties, so NT-Xent = -log(1/(2B-1)) for V = 2."""
    B = 5
    z = torch.ones(2, B, 4, dtype=torch.float64)
    torch.testing.assert_close(nt_xent(z, 0.1)[0], torch.tensor(math.log(2 * B - 1),
                                                                dtype=torch.float64))


def test_gradient_flow():
    z = torch.randn(3, 4, 3, requires_grad=True)
    nt_xent(z, 0.2)[0].backward()
    assert z.grad.abs().sum() > 0


def test_loss_decreases_under_sgd():
    torch.manual_seed(1)
    z = torch.randn(2, 16, 8, requires_grad=True)
    opt = torch.optim.SGD([z], lr=0.5)
    first = nt_xent(z, 0.2)[0].item()
    for _ in range(20):
        opt.zero_grad()
        nt_xent(z, 0.2)[0].backward()
        opt.step()
    assert nt_xent(z, 0.2)[0].item() < first - 0.1


def _sharded(rank, world, x, T):
    B = x.shape[1] // world
    xs = x[:, rank * B:(rank + 1) * B].clone().requires_grad_(True)
    loss, _ = nt_xent(xs, T)
    loss.backward()
    return loss.detach(), xs.grad


def test_two_process_gloo_equals_one_process():
    x = torch.randn(2, 8, 5, dtype=torch.float64)
    full = x.clone().requires_grad_(True)
    loss = nt_xent(full, 0.2)[0]
    loss.backward()
    results = run_gloo(_sharded, x, 0.2)
    mean_loss = sum(r[0] for r in results) / 2
    torch.testing.assert_close(mean_loss, loss.detach())
    grads = torch.cat([r[1] for r in results], dim=1) / 2  # each rank holds W x its share
    torch.testing.assert_close(grads, full.grad)
