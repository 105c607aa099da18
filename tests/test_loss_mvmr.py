"""MV-MR (losses/mvmr.py, models/mvmr.py): naive-loop references written from docs/methods.md §7.2,
closed forms, invariances, gradient flow, AMP, and 2-process gloo == 1 process."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from helpers import run_gloo

from data.representations import compute_representations
from losses.base import ViewOutputs
from losses.mvmr import MVMRLoss, distance_correlation, mvmr_loss, mvmr_terms
from models.mvmr import MVMR, build_projector

F64 = torch.float64


# ---------------------------------------------------------------- naive references (python loops)
def naive_dcor(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-4) -> float:
    n = x.shape[0]
    xs, ys = x.tolist(), y.tolist()

    def dist(v):
        sq = [sum(t * t for t in row) for row in v]
        def dot(i, j):
            return sum(a * b for a, b in zip(v[i], v[j], strict=True))

        return [[math.sqrt(max(sq[i] - 2 * dot(i, j) + sq[j], eps)) for j in range(n)]
                for i in range(n)]

    def centre(a):
        row = [sum(a[i]) / n for i in range(n)]
        col = [sum(a[i][j] for i in range(n)) / n for j in range(n)]
        grand = sum(row) / n
        return [[a[i][j] - row[i] - col[j] + grand for j in range(n)] for i in range(n)]

    A, B = centre(dist(xs)), centre(dist(ys))

    def dcov(P, Q):  # the official extra 1/n^2 inside the mean
        return math.sqrt(sum(P[i][j] * Q[i][j] for i in range(n) for j in range(n)) / n**2 / n**2)

    return dcov(A, B) / math.sqrt(dcov(A, A) * dcov(B, B))


def naive_mvmr(z, z_orig, reps, margin=1.0, scale=32.0, sign=1.0) -> float:
    n, d = z.shape
    diffs = [(z_orig[i, k].item() - z[i, k].item()) ** 2 for i in range(n) for k in range(d)]
    mse = sum(diffs) / (n * d)

    def hinge(u):
        total = 0.0
        for k in range(d):
            col = [u[i, k].item() for i in range(n)]
            mu = sum(col) / n
            std = math.sqrt(sum((c - mu) ** 2 for c in col) / (n - 1))  # torch.std: unbiased
            total += max(margin - std, 0.0)
        return total / d

    loss = mse + hinge(z) + hinge(z_orig) + 1 - naive_dcor(z_orig / scale, z / scale)
    for r in reps:
        loss += sign * naive_dcor(r.flatten(1), z / scale)
    return loss


def _inputs(n=6, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=F64) * 2
    z_orig = z + 0.5 * torch.randn(n, d, generator=g, dtype=F64)
    reps = [torch.randn(n, 3, 2, 2, generator=g, dtype=F64),
            torch.rand(n, 7, generator=g, dtype=F64)]
    return z, z_orig, reps


# ---------------------------------------------------------------- distance correlation
def test_dcor_matches_naive_loops():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(7, 3, generator=g, dtype=F64), torch.randn(7, 4, generator=g, dtype=F64)
    y = y + x[:, :1]  # some dependence
    assert distance_correlation(x, y).item() == pytest.approx(naive_dcor(x, y), rel=1e-10)
    # tiny inputs: the 1e-4 clamp (diagonal 0.01) dominates and must be reproduced
    xs, ys = x * 4e-3, y * 4e-3
    assert (torch.cdist(xs, xs) < 1e-2).sum() > 7  # some off-diagonal pairs are clamped too
    assert distance_correlation(xs, ys).item() == pytest.approx(naive_dcor(xs, ys), rel=1e-10)


def test_dcor_invariances():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(8, 4, generator=g, dtype=F64), torch.randn(8, 3, generator=g, dtype=F64)
    y = y + x[:, :3] ** 2
    ref = distance_correlation(x, y)
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=F64))
    torch.testing.assert_close(distance_correlation(x @ q + 3.0, y), ref, rtol=1e-9, atol=0)
    # scale: exact once the clamp scales with the distances (a -> c a)...
    scaled = distance_correlation(5 * x, 5 * y, eps=25e-4)
    torch.testing.assert_close(scaled, ref, rtol=1e-9, atol=0)
    # ...and only approximate with the fixed official clamp (why the /32 trick is harmless)
    assert distance_correlation(x / 32, y).item() == pytest.approx(ref.item(), rel=5e-2)
    assert distance_correlation(x / 32, y).item() != pytest.approx(ref.item(), rel=1e-9)


def test_dcor_self_is_one_and_independent_is_small():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(10, 5, generator=g, dtype=F64)
    assert distance_correlation(x, x).item() == pytest.approx(1.0, abs=1e-12)
    assert distance_correlation(x, 2 * x).item() == pytest.approx(1.0, abs=1e-3)  # up to clamp
    a, b = torch.randn(600, 2, generator=g, dtype=F64), torch.randn(600, 2, generator=g, dtype=F64)
    assert distance_correlation(a, b).item() < 0.15
    assert distance_correlation(a, a[:, :1] ** 2).item() > 0.3  # nonlinear dependence is seen


def test_batch_of_one_is_a_clear_error():
    z = torch.randn(1, 4)
    with pytest.raises(ValueError, match="at least 2"):
        mvmr_loss(z, z.clone(), [])
    with pytest.raises(ValueError, match=">= 2"):
        distance_correlation(z, z)


# ---------------------------------------------------------------- the MV-MR loss
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_mvmr_loss_matches_naive_composition(sign):
    z, z_orig, reps = _inputs()
    loss = mvmr_loss(z, z_orig, reps, representation_sign=sign)
    assert loss.item() == pytest.approx(naive_mvmr(z, z_orig, reps, sign=sign), rel=1e-10)
    margin_loss = mvmr_loss(z, z_orig, reps, std_margin=3.0, scale=7.0)
    naive = naive_mvmr(z, z_orig, reps, margin=3.0, scale=7.0)
    assert margin_loss.item() == pytest.approx(naive, rel=1e-10)


def test_terms_and_sign():
    z, z_orig, reps = _inputs()
    terms = mvmr_terms(z, z_orig, {"pixels": reps[0], "hog": reps[1]})
    assert list(terms) == ["mse", "std", "dc_zz", "dc_pixels", "dc_hog"]
    rep_sum = terms["dc_pixels"] + terms["dc_hog"]
    plus, minus = mvmr_loss(z, z_orig, reps), mvmr_loss(z, z_orig, reps, representation_sign=-1.0)
    torch.testing.assert_close(plus - minus, 2 * rep_sum)


def test_closed_form_identical_views():
    """z == z_orig with per-dimension std >= 1: mse = std hinge = 1 - dCor = 0, only reps remain."""
    z, _, reps = _inputs(n=8)
    z = z / z.std(0) * 2  # every std is exactly 2 > margin
    terms = mvmr_terms(z, z.clone(), reps)
    assert terms["mse"].item() == 0.0 and terms["std"].item() == 0.0
    assert terms["dc_zz"].item() == pytest.approx(0.0, abs=1e-12)
    expected = sum(naive_dcor(r.flatten(1), z / 32) for r in reps)
    assert mvmr_loss(z, z.clone(), reps).item() == pytest.approx(expected, rel=1e-10)
    # collapsed embeddings: the hinge is 2 * margin
    flat = torch.ones(4, 3, dtype=F64)
    assert mvmr_terms(flat + 0 * torch.randn(4, 3, dtype=F64), flat, [])["std"].item() == 2.0


def test_gradient_reaches_both_views_not_reps():
    z, z_orig, reps = _inputs()
    z.requires_grad_(True)
    z_orig.requires_grad_(True)
    mvmr_loss(z, z_orig, reps).backward()
    for t in (z, z_orig):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    assert all(r.grad is None for r in reps)


def test_criterion_reads_views_and_extras():
    z, z_orig, reps = _inputs()
    out = ViewOutputs(p=torch.stack([z_orig, z]).requires_grad_(True),
                      extras={"rep_pixels": reps[0], "rep_hog": reps[1],
                              "labels": torch.arange(6)})  # labels: not a representation
    criterion = MVMRLoss(std_margin=1.0)
    loss, metrics = criterion(out)
    ref = mvmr_loss(z, z_orig, {"pixels": reps[0], "hog": reps[1]})
    torch.testing.assert_close(loss, ref)
    assert set(metrics) == {"mse", "std", "dc_zz", "dc_pixels", "dc_hog"}
    assert all(v.dim() == 0 and not v.requires_grad for v in metrics.values())
    loss.backward()
    assert out.p.grad[0].abs().sum() > 0 and out.p.grad[1].abs().sum() > 0
    with pytest.raises(ValueError, match="2 views"):
        criterion(ViewOutputs(p=torch.randn(3, 6, 5)))


def test_amp_terms_are_float32():
    z, z_orig, reps = _inputs()
    ref = mvmr_loss(z.float(), z_orig.float(), [r.float() for r in reps])
    half = mvmr_loss(z.bfloat16(), z_orig.bfloat16(), reps)
    assert half.dtype == torch.float32 and torch.isfinite(half)
    assert half.item() == pytest.approx(ref.item(), rel=5e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast is switched off inside the loss
        auto = mvmr_loss(z.float(), z_orig.float(), [r.float() for r in reps])
    assert auto.dtype == torch.float32
    torch.testing.assert_close(auto, ref)


def test_loss_decreases_under_sgd():
    torch.manual_seed(0)
    z = torch.randn(16, 8, requires_grad=True)
    z_orig = torch.randn(16, 8, requires_grad=True)
    reps = [torch.randn(16, 12)]
    opt = torch.optim.SGD([z, z_orig], lr=1.0)
    first = None
    for _ in range(30):
        loss = mvmr_loss(z, z_orig, reps)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.8 * first


# ---------------------------------------------------------------- distributed: 2 ranks == 1 process
def _sharded_worker(rank: int, world_size: int, z, z_orig, reps):
    b = z.shape[0] // world_size
    rows = slice(rank * b, (rank + 1) * b)
    p = torch.stack([z_orig[rows], z[rows]]).clone().requires_grad_(True)
    extras = {f"rep_{i}": r[rows] for i, r in enumerate(reps)}
    loss, metrics = MVMRLoss()(ViewOutputs(p=p, extras=extras))
    loss.backward()
    return loss.detach(), p.grad, metrics


def test_two_ranks_equal_one_process():
    z, z_orig, reps = _inputs(n=8)
    p = torch.stack([z_orig, z]).requires_grad_(True)
    loss, metrics = MVMRLoss()(ViewOutputs(p=p, extras={f"rep_{i}": r for i, r in enumerate(reps)}))
    loss.backward()
    results = run_gloo(_sharded_worker, z, z_orig, reps, world_size=2)
    losses = torch.stack([r[0] for r in results])
    torch.testing.assert_close(losses.mean(), loss.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(losses, loss.detach().expand(2), rtol=1e-12, atol=0)  # every rank
    grads = torch.cat([r[1] for r in results], dim=1) / 2  # each rank holds W x its slice's grad
    torch.testing.assert_close(grads, p.grad, rtol=1e-10, atol=1e-14)
    for k, v in metrics.items():
        torch.testing.assert_close(results[0][2][k], v, rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------- the builder
def _tiny_resnet():
    """The registry's MV-MR backbone (official small_kernel stem at 16 px), at width 8."""
    from models import build_backbone
    from models.builders import backbone_kwargs
    return build_backbone("resnet18", **backbone_kwargs({"method": "mvmr", "img_size": 16,
                                                         "width": 8}))


def test_builder_outputs_and_gradients():
    backbone, feat = _tiny_resnet()
    reps = partial(compute_representations, names=["pixels", "hog", "std"])
    model = MVMR(backbone, feat, proj_dims="32-32-16", representations=reps)
    assert isinstance(model.backbone.maxpool, torch.nn.MaxPool2d)  # kept, unlike the CIFAR stem
    assert model.backbone.conv1.kernel_size == (3, 3) and model.backbone.conv1.stride == (1, 1)
    assert all((blk.bn2.weight == 0).all() for blk in model.backbone.layer1)  # zero_init_residual
    x_orig = torch.randn(4, 3, 16, 16, requires_grad=True)
    x_aug = torch.randn(4, 3, 16, 16, requires_grad=True)
    out = model([x_orig, x_aug])
    assert out.p.shape == (2, 4, 16) and out.h.shape == (2, 4, feat) and out.k is None
    assert set(out.extras) == {"rep_pixels", "rep_hog", "rep_std"}
    assert out.extras["rep_hog"].shape == (4, 3 * 24, 2, 2)
    assert not any(v.requires_grad for v in out.extras.values())
    loss, _ = MVMRLoss()(out)
    loss.backward()
    assert x_orig.grad.abs().sum() > 0 and x_aug.grad.abs().sum() > 0  # no stop-gradient
    assert model.projector[0].weight.grad is not None
    with pytest.raises(ValueError, match="2 views"):
        model([x_orig])


def test_projector_layout():
    proj = build_projector(10, "32-32-16")
    kinds = [type(m).__name__ for m in proj]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert all(m.bias is None for m in proj if isinstance(m, torch.nn.Linear))
    assert proj[-1].out_features == 16
