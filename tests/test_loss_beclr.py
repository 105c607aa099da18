"""BeCLR: naive loop references from docs/methods.md §6 (float64), closed forms, gradients, gloo."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import run_gloo
from torch import nn

from losses.base import ViewOutputs
from losses.beclr import (
    BeCLRLoss,
    beclr_loss,
    bregman_distance,
    bregman_nt_xent,
    bregman_similarity,
    selection_stats,
)
from models import build_backbone
from models.beclr import BeCLRNet, SubNetworks

DT = torch.float64


# ----------------------------------------------------------------- naive references (loops)
def naive_distance(f: torch.Tensor) -> torch.Tensor:
    n, k = f.shape
    d = torch.zeros(n, n, dtype=f.dtype)
    for i in range(n):
        for j in range(n):
            winner = max(range(k), key=lambda c: float(f[j, c].detach()))
            d[i, j] = f[i].max() - f[i, winner]  # the max carries gradient, the index does not
    return d


def naive_nt_xent_rows(sim: torch.Tensor, batch: int) -> torch.Tensor:
    """Official layout: row i's logits = [sim[i, pos] | sim[i, j], j not in {i, pos}], label 0."""
    n, total = 2 * batch, 0.0
    for i in range(n):
        pos = i + batch if i < batch else i - batch
        row = [sim[i, pos]] + [sim[i, j] for j in range(n) if j not in (i, pos)]
        row = torch.stack(row)
        total = total - torch.log_softmax(row, dim=0)[0]  # CrossEntropy(reduction="sum")
    return total / n


def naive_bregman_loss(out: torch.Tensor, temperature: float, sigma: float = 0.9) -> torch.Tensor:
    f = torch.cat([out[0], out[1]])
    sim = torch.exp(-naive_distance(f) / (2 * sigma**2)) / temperature
    return naive_nt_xent_rows(sim, out.shape[1])


def naive_cosine_nt_xent(feat: torch.Tensor, temperature: float) -> torch.Tensor:
    z = torch.cat([feat[0], feat[1]])
    sim = F.cosine_similarity(z[:, None], z[None, :], dim=2, eps=1e-8) / temperature
    return naive_nt_xent_rows(sim, feat.shape[1])


def naive_similarity(test: torch.Tensor, bank: torch.Tensor, sigma: float) -> torch.Tensor:
    s = torch.zeros(test.shape[0], bank.shape[0], dtype=test.dtype)
    for b in range(test.shape[0]):
        for n in range(bank.shape[0]):
            winner = int(torch.argmax(bank[n]))
            s[b, n] = math.exp(-(float(test[b].max()) - float(test[b, winner])) / (2 * sigma**2))
    return s


def inputs(batch: int = 5, k: int = 7, d: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = torch.randn(2, batch, k, generator=g, dtype=DT)
    return out, torch.randn(2, batch, d, generator=g, dtype=DT)


# ----------------------------------------------------------------- distance and similarity
def test_distance_matches_naive_and_is_a_divergence():
    f = torch.randn(9, 5, dtype=DT)
    d = bregman_distance(f)
    torch.testing.assert_close(d, naive_distance(f), rtol=1e-12, atol=0)
    assert torch.all(d.diagonal() == 0)
    assert torch.all(d >= 0)


def test_distance_zero_when_rows_share_the_winner():
    f = torch.randn(6, 4, dtype=DT)
    f[:, 2] += 100.0  # every row is won by sub-network 2
    assert torch.all(bregman_distance(f) == 0)


def test_similarity_matches_naive():
    test, bank = torch.randn(4, 6, dtype=DT), torch.randn(11, 6, dtype=DT)
    for sigma in (1.0, 0.7):
        got = bregman_similarity(test, bank, sigma=sigma)
        torch.testing.assert_close(got, naive_similarity(test, bank, sigma), rtol=1e-12, atol=0)
    chunks = torch.cat([bregman_similarity(test[:2], bank), bregman_similarity(test[2:], bank)])
    torch.testing.assert_close(chunks, bregman_similarity(test, bank), rtol=0, atol=0)


# ----------------------------------------------------------------- loss values
@pytest.mark.parametrize("temperature, sigma", [(0.5, 0.9), (0.1, 0.9), (0.2, 1.3)])
def test_loss_matches_naive_official_form(temperature, sigma):
    out, feat = inputs()
    want = naive_bregman_loss(out, temperature, sigma) + naive_cosine_nt_xent(feat, temperature)
    got = beclr_loss(out, feat, temperature, sigma)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    breg = bregman_nt_xent(out, temperature, sigma)
    want = naive_bregman_loss(out, temperature, sigma)
    torch.testing.assert_close(breg, want, rtol=1e-12, atol=0)
    torch.testing.assert_close(beclr_loss(out, feat, temperature, sigma, mixed=False), breg)


def test_closed_form_all_logits_equal():
    """One winner for every row (d = 0) and collinear features: each term is log(2B - 1)."""
    batch = 4
    out = torch.randn(2, batch, 5, dtype=DT)
    out[..., 0] += 100.0
    feat = torch.randn(6, dtype=DT).expand(2, batch, 6) * torch.rand(2, batch, 1, dtype=DT).add(0.5)
    want = 2 * math.log(2 * batch - 1)
    torch.testing.assert_close(beclr_loss(out, feat, 0.5), torch.tensor(want, dtype=DT))


def test_loss_class_metrics_and_value():
    out, feat = inputs(k=12)
    crit = BeCLRLoss(temperature=0.5, sigma=0.9)
    res = crit(ViewOutputs(p=feat, extras={"subnet": out}))
    torch.testing.assert_close(res.loss, beclr_loss(out, feat, 0.5, 0.9))
    winners = torch.cat([out[0], out[1]]).argmax(1)
    counts = torch.bincount(winners, minlength=12).double()
    prob = counts[counts > 0] / counts.sum()
    assert res.metrics["active_subs"] == (counts > 0).sum()
    torch.testing.assert_close(res.metrics["active_frac"], (counts > 0).sum().float() / 12)
    torch.testing.assert_close(res.metrics["select_entropy"], -(prob * prob.log()).sum().float())
    torch.testing.assert_close(res.metrics["loss_bregman"] + res.metrics["loss_ntxent"], res.loss)
    for v in res.metrics.values():
        assert v.dim() == 0 and not v.requires_grad


def test_selection_stats_collapse_and_uniform():
    active, entropy = selection_stats(torch.zeros(10, dtype=torch.long), 8)
    assert active == 1 and entropy == 0
    active, entropy = selection_stats(torch.arange(8).repeat(3), 8)
    assert active == 8
    torch.testing.assert_close(entropy, torch.tensor(math.log(8)))


def test_loss_rejects_missing_subnet_and_wrong_views():
    out, feat = inputs()
    with pytest.raises(ValueError, match="subnet"):
        BeCLRLoss()(ViewOutputs(p=feat))
    with pytest.raises(ValueError, match="2 views"):
        bregman_nt_xent(torch.cat([out, out]), 0.5)


def test_half_precision_is_upcast():
    out, feat = inputs()
    got = BeCLRLoss()(ViewOutputs(p=feat.half(), extras={"subnet": out.half()})).loss
    assert got.dtype == torch.float32
    want = beclr_loss(out.half().double(), feat.half().double(), 0.5)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------- gradients
def test_gradients_reach_out_and_feat():
    out, feat = inputs()
    out.requires_grad_(True)
    feat.requires_grad_(True)
    BeCLRLoss()(ViewOutputs(p=feat, extras={"subnet": out})).loss.backward()
    assert out.grad.abs().sum() > 0 and feat.grad.abs().sum() > 0
    feat.grad = None
    BeCLRLoss(mixed=False)(ViewOutputs(p=feat, extras={"subnet": out})).loss.backward()
    assert feat.grad is None  # without the mixed term the projection gets no gradient from the loss


def test_distance_gradient_only_through_its_own_row():
    """d[i, j] depends on row j only through the (piecewise constant) argmax."""
    f = torch.randn(6, 5, dtype=DT)
    f[1, 0] += 10.0  # row 1 is won by sub-network 0, row 4 by sub-network 3
    f[4, 3] += 10.0
    f.requires_grad_(True)
    bregman_distance(f)[1, 4].backward()
    want = torch.zeros_like(f)
    want[1, 0], want[1, 3] = 1.0, -1.0
    torch.testing.assert_close(f.grad, want, rtol=0, atol=0)


def test_gradient_matches_naive():
    out, feat = inputs()
    a, fa = out.clone().requires_grad_(True), feat.clone().requires_grad_(True)
    b, fb = out.clone().requires_grad_(True), feat.clone().requires_grad_(True)
    beclr_loss(a, fa, 0.5).backward()
    (naive_bregman_loss(b, 0.5) + naive_cosine_nt_xent(fb, 0.5)).backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(fa.grad, fb.grad, rtol=1e-10, atol=1e-14)


# ----------------------------------------------------------------- 2-process equivalence
def _sharded(rank: int, world_size: int, out: torch.Tensor, feat: torch.Tensor):
    batch = out.shape[1] // world_size
    o = out[:, rank * batch:(rank + 1) * batch].clone().requires_grad_(True)
    f = feat[:, rank * batch:(rank + 1) * batch].clone().requires_grad_(True)
    res = BeCLRLoss(temperature=0.5)(ViewOutputs(p=f, extras={"subnet": o}))
    res.loss.backward()
    return res.loss.detach(), o.grad, f.grad, res.metrics


def test_two_process_equals_one_process():
    out, feat = inputs(batch=6, k=9)
    out1, feat1 = out.clone().requires_grad_(True), feat.clone().requires_grad_(True)
    res = BeCLRLoss(temperature=0.5)(ViewOutputs(p=feat1, extras={"subnet": out1}))
    res.loss.backward()
    ranks = run_gloo(_sharded, out, feat)
    world = len(ranks)
    mean_loss = sum(r[0] for r in ranks) / world
    torch.testing.assert_close(mean_loss, res.loss.detach(), rtol=1e-12, atol=0)
    grad_out = torch.cat([r[1] for r in ranks], dim=1) / world
    grad_feat = torch.cat([r[2] for r in ranks], dim=1) / world
    torch.testing.assert_close(grad_out, out1.grad, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(grad_feat, feat1.grad, rtol=1e-10, atol=1e-14)
    for name in ("active_subs", "select_entropy"):  # selection metrics are over the global batch
        assert all(torch.equal(r[3][name], res.metrics[name]) for r in ranks)


# ----------------------------------------------------------------- model
def test_vectorised_subnets_equal_separate_linears():
    sub = SubNetworks(k_subs=5, in_dim=8, hidden_dim=6, dropout=0.2).double().eval()
    x = torch.randn(7, 8, dtype=DT)
    want = []
    for k in range(5):  # the official k-th Linear(8, 6) -> ReLU -> Linear(6, 1), one at a time
        hidden = F.relu(F.linear(x, sub.fc1_weight[k], sub.fc1_bias[k]))
        want.append(F.linear(hidden, sub.fc2_weight[k], sub.fc2_bias[k]))
    torch.testing.assert_close(sub(x), torch.cat(want, dim=-1), rtol=1e-12, atol=1e-14)


def test_subnet_dropout_is_stochastic_in_train_mode_only():
    sub = SubNetworks(k_subs=4, in_dim=8, hidden_dim=32, dropout=0.5)
    x = torch.randn(16, 8)
    assert not torch.equal(sub(x), sub(x))
    sub.eval()
    assert torch.equal(sub(x), sub(x))


def _tiny_backbone() -> tuple[nn.Module, int]:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten()), 8


@pytest.mark.parametrize("normalize", [True, False])
def test_model_outputs(normalize):
    backbone, feat_dim = _tiny_backbone()
    model = BeCLRNet(backbone, feat_dim, feature_dim=16, k_subs=6, subnet_hidden=10,
                     normalize=normalize, proj_bn=normalize)
    views = [torch.randn(4, 3, 8, 8) for _ in range(3)]
    out = model(views)
    assert out.p.shape == (3, 4, 16) and out.h.shape == (3, 4, 8)
    assert out.extras["subnet"].shape == (3, 4, 6)
    norms = out.p.norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms)) == normalize
    model.eval()
    out = model(views)
    torch.testing.assert_close(out.extras["subnet"][1],
                               model.subnets(model.forward_online(views[1])[1]))


def test_projector_layouts_match_the_official_keys():
    backbone, feat_dim = _tiny_backbone()
    cifar = BeCLRNet(backbone, feat_dim, feature_dim=16, k_subs=3)
    keys = {k for k in cifar.state_dict() if k.startswith("projector.")}
    assert keys == {"projector.0.weight", "projector.1.weight", "projector.1.bias",
                    "projector.1.running_mean", "projector.1.running_var",
                    "projector.1.num_batches_tracked", "projector.3.weight", "projector.3.bias"}
    imnet = BeCLRNet(backbone, feat_dim, feature_dim=16, k_subs=3, normalize=False, proj_bn=False)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in imnet.projector.modules())
    assert all(m.bias is not None for m in imnet.projector.modules() if isinstance(m, nn.Linear))


def test_model_on_a_suite_backbone():
    backbone, feat_dim = build_backbone("resnet18", img_size=16, width=8)
    model = BeCLRNet(backbone, feat_dim, feature_dim=16, k_subs=5, subnet_hidden=8)
    out = model([torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)])
    assert out.h.shape == (2, 4, feat_dim) and out.extras["subnet"].shape == (2, 4, 5)
    res = BeCLRLoss()(out)
    res.loss.backward()
    assert model.subnets.fc1_weight.grad.abs().sum() > 0
    assert model.backbone.conv1.weight.grad.abs().sum() > 0


def test_learning_smoke():
    """A few SGD steps on fixed views lower the loss (dropout off: a deterministic objective)."""
    backbone, feat_dim = _tiny_backbone()
    model = BeCLRNet(backbone, feat_dim, feature_dim=16, k_subs=8, subnet_hidden=16, dropout=0.0)
    crit = BeCLRLoss(temperature=0.5)
    images = torch.randn(8, 3, 8, 8)
    views = [images + 0.1 * torch.randn_like(images), images + 0.1 * torch.randn_like(images)]
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for _ in range(15):
        loss = crit(model(views)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 0.05
