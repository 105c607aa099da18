"""MoCo v2 queue InfoNCE (losses/mocov2.py) and the CIFAR builder (models/mocov2.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import run_gloo
from torch import nn

from losses.base import ViewOutputs
from losses.mocov2 import MoCoV2Loss, mocov2_logits, mocov2_loss
from models import build_backbone
from models.mocov2 import (
    MoCoV2CIFAR,
    SplitBatchNorm,
    convert_split_bn,
    shuffle_batch,
    unshuffle_batch,
)


def rand(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64)


def naive_mocov2_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, t: float) -> float:
    """Mean of -log softmax(positive) over [q.k, q.Z_1, ..., q.Z_K] / t, one row at a time."""
    total = 0.0
    for qi, ki in zip(q, k, strict=True):
        qi, ki = qi / qi.norm(), ki / ki.norm()
        scores = [float(qi @ ki) / t] + [float(qi @ z) / t for z in queue]
        total += -scores[0] + math.log(sum(math.exp(s) for s in scores))
    return total / q.shape[0]


def unit(*shape: int) -> torch.Tensor:
    return F.normalize(rand(*shape), dim=-1)


# ---------------------------------------------------------------- the loss


def test_logits_shape_and_positive_column():
    q, k, queue = rand(4, 8), rand(4, 8), unit(6, 8)
    logits = mocov2_logits(q, k, queue, temperature=0.2)
    assert logits.shape == (4, 7)
    cos = F.cosine_similarity(q, k, dim=-1)
    torch.testing.assert_close(logits[:, 0], cos / 0.2)


@pytest.mark.parametrize("t", [0.1, 0.5])
def test_loss_matches_naive_loop(t):
    q, k, queue = rand(5, 8), rand(5, 8), unit(11, 8)
    want = naive_mocov2_loss(q, k, queue, t)
    assert abs(float(mocov2_loss(q, k, queue, t)) - want) < 1e-12


def test_collinear_closed_form():
    """q = k = every queue row: all 1 + K logits are equal, so the loss is log(1 + K)."""
    x = unit(1, 8)
    q, k, queue = x.repeat(3, 1), 2 * x.repeat(3, 1), x.repeat(9, 1)
    torch.testing.assert_close(mocov2_loss(q, k, queue), torch.tensor(math.log(10.0),
                                                                      dtype=torch.float64))


def _module(queue: torch.Tensor, symmetric: bool = False) -> MoCoV2Loss:
    crit = MoCoV2Loss(temperature=0.1, queue_size=queue.shape[0], dim=queue.shape[1],
                  symmetric=symmetric).double()
    crit.queue.bank.copy_(queue)
    return crit


def test_module_asymmetric_scores_then_enqueues():
    queue = unit(8, 4)
    crit = _module(queue)
    p, k = rand(1, 4, 4), rand(1, 4, 4)
    out = crit(ViewOutputs(p=p, k=k))
    assert abs(float(out.loss) - naive_mocov2_loss(p[0], k[0], queue, 0.1)) < 1e-12
    assert out.metrics["acc"].dim() == 0 and not out.metrics["acc"].requires_grad
    torch.testing.assert_close(crit.queue.bank[:4], F.normalize(k[0], dim=-1))
    torch.testing.assert_close(crit.queue.bank[4:], queue[4:])
    crit.eval()
    crit(ViewOutputs(p=p, k=k))
    assert int(crit.queue.ptr) == 4  # evaluation does not enqueue


def test_module_symmetric_sums_directions_and_enqueues_k1_then_k2():
    queue = unit(16, 4)
    crit = _module(queue, symmetric=True)
    p, k = rand(2, 4, 4), rand(2, 4, 4)
    out = crit(ViewOutputs(p=p, k=k))
    want = naive_mocov2_loss(p[0], k[1], queue, 0.1) + naive_mocov2_loss(p[1], k[0], queue, 0.1)
    assert abs(float(out.loss) - want) < 1e-12
    torch.testing.assert_close(crit.queue.bank[:8], F.normalize(k.flatten(0, 1), dim=-1))


@pytest.mark.parametrize("symmetric,views", [(False, 2), (True, 1)])
def test_module_rejects_wrong_view_count(symmetric, views):
    with pytest.raises(ValueError, match="symmetric"):
        _module(unit(8, 4), symmetric)(ViewOutputs(p=rand(views, 4, 4), k=rand(views, 4, 4)))


def test_gradient_reaches_p_not_k():
    p, k = rand(2, 4, 4).requires_grad_(), rand(2, 4, 4).requires_grad_()
    _module(unit(8, 4), symmetric=True)(ViewOutputs(p=p, k=k)).loss.backward()
    assert p.grad.abs().sum() > 0 and k.grad is None


# ---------------------------------------------------------------- SplitBatchNorm


def _split_bn(splits: int = 4, channels: int = 3) -> SplitBatchNorm:
    bn = SplitBatchNorm(channels, splits).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    return bn


def test_split_bn_normalises_each_strided_group():
    """Training: rows r, r + s, r + 2s, ... share statistics; running stats = mean over groups."""
    bn, s = _split_bn(), 4
    x = rand(8, 3, 2, 2)
    mean0, var0 = bn.running_mean.clone(), bn.running_var.clone()
    out = bn(x)
    means, vars_ = [], []
    for j in range(s):
        rm, rv = mean0.clone(), var0.clone()
        want = F.batch_norm(x[j::s], rm, rv, bn.weight, bn.bias, True, bn.momentum, bn.eps)
        torch.testing.assert_close(out[j::s], want)
        means.append(rm)
        vars_.append(rv)
    torch.testing.assert_close(bn.running_mean, torch.stack(means).mean(0))
    torch.testing.assert_close(bn.running_var, torch.stack(vars_).mean(0))


def test_split_bn_eval_is_plain_bn():
    bn = _split_bn().eval()
    plain = nn.BatchNorm2d(3).double().eval()
    plain.load_state_dict(bn.state_dict())
    x = rand(6, 3, 2, 2)  # any batch size: no splitting in eval
    torch.testing.assert_close(bn(x), plain(x))


def test_split_bn_rejects_indivisible_batch():
    with pytest.raises(ValueError, match="not divisible"):
        _split_bn(splits=4)(rand(6, 3, 2, 2))


def test_convert_split_bn_keeps_state_dict_keys():
    backbone, _ = build_backbone("resnet18", img_size=32, width=8)
    keys = set(backbone.state_dict())
    converted = convert_split_bn(backbone, 8)
    bns = [m for m in converted.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(isinstance(m, SplitBatchNorm) and m.num_splits == 8 for m in bns)
    assert set(converted.state_dict()) == keys  # loads into a plain-BN backbone for the probe
    plain, _ = build_backbone("resnet18", img_size=32, width=8)
    assert convert_split_bn(plain, 1) is plain
    assert not any(isinstance(m, SplitBatchNorm) for m in plain.modules())


# ---------------------------------------------------------------- MoCoV2CIFAR


def _model(symmetric: bool = False, **kw) -> MoCoV2CIFAR:
    backbone, feat_dim = build_backbone("resnet18", img_size=32, width=8)
    return MoCoV2CIFAR(backbone, feat_dim, dim=16, bn_splits=8, symmetric=symmetric, **kw)


def _views(n: int, batch: int = 8, size: int = 8) -> list[torch.Tensor]:
    return [torch.randn(batch, 3, size, size) for _ in range(n)]


@pytest.mark.parametrize("symmetric", [False, True])
def test_model_output_shapes(symmetric):
    model = _model(symmetric)
    out = model(_views(4))  # ns = 2
    v = 4 if symmetric else 2
    assert out.p.shape == (v, 8, 16) and out.k.shape == (v, 8, 16)
    assert out.h.shape == (v, 8, 64)  # 8 x width
    assert out.p.requires_grad and not out.k.requires_grad
    head = [type(m) for m in model.projector]
    assert head == [nn.Linear, nn.ReLU, nn.Linear] and model.projector[0].bias is not None
    assert all(not p.requires_grad for p in model.momentum_backbone.parameters())


def test_model_branches_and_image_major_rows():
    """Training-mode BN: the online pass equals the official (B ns)-row image-major batch of
    branch 1; with eval BN the keys are per-crop momentum features (ShuffleBN undone)."""
    torch.manual_seed(1)
    model = _model()
    views = _views(4)
    out = model(views)
    x = torch.stack(views[:2], dim=1).flatten(0, 1)  # [B ns, C, H, W], image b's crops adjacent
    h = model.backbone(x).view(8, 2, -1).transpose(0, 1)
    torch.testing.assert_close(out.h, h)
    model.eval()
    out = model(views)
    for s in range(2):  # branch 2's crops give the keys
        k = model.momentum_projector(model.momentum_backbone(views[2 + s]))
        torch.testing.assert_close(out.k[s], k)
        torch.testing.assert_close(out.p[s], model.projector(model.backbone(views[s])))


def test_update_momentum_moves_parameters_only():
    model = _model()
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(1.0)
    before = [p.clone() for p in model.momentum_backbone.parameters()]
    online = list(model.backbone.parameters())
    buffers = [b.clone() for b in model.momentum_backbone.buffers()]
    model.update_momentum(0.9)
    for b, o, a in zip(before, online, model.momentum_backbone.parameters(), strict=True):
        torch.testing.assert_close(a, 0.9 * b + 0.1 * o)
    for b, a in zip(buffers, model.momentum_backbone.buffers(), strict=True):
        assert torch.equal(a, b)


def test_model_rejects_odd_views():
    with pytest.raises(ValueError, match="2 x ns"):
        _model()(_views(3))


def test_model_feeds_dsf_and_mocov2_losses():
    from losses.dsf import DSFQueueLoss

    model = _model()
    out = model(_views(4))
    loss = DSFQueueLoss(queue_size=32, dim=16)(out).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert model.backbone.conv1.weight.grad is not None
    assert model.momentum_backbone.conv1.weight.grad is None
    out = _model(symmetric=True)(_views(2, batch=16))  # >= 2 rows per split at 1x1 layer4
    assert torch.isfinite(MoCoV2Loss(queue_size=32, dim=16, symmetric=True)(out).loss)


# ---------------------------------------------------------------- 2 processes == 1 process


def _gloo_mocov2(rank, world_size, p, k, queue, x):
    half = p.shape[1] // world_size
    rows = slice(rank * half, (rank + 1) * half)
    p_local = p[:, rows].clone().requires_grad_()
    crit = _module(queue, symmetric=True)
    loss = crit(ViewOutputs(p=p_local, k=k[:, rows])).loss
    loss.backward()
    x_local = x[rows]
    shuffled, undo = shuffle_batch(x_local)
    restored = unshuffle_batch(shuffled * 2, undo)
    return loss.detach(), p_local.grad, crit.queue.bank.clone(), shuffled, restored, x_local


def test_two_processes_equal_one():
    p, k, queue = rand(2, 8, 4), rand(2, 8, 4), unit(32, 4)
    x = torch.arange(8, dtype=torch.float64)[:, None] * torch.ones(1, 3)
    results = run_gloo(_gloo_mocov2, p, k, queue, x)
    p_full = p.clone().requires_grad_()
    crit = _module(queue, symmetric=True)
    loss = crit(ViewOutputs(p=p_full, k=k)).loss
    loss.backward()
    world = len(results)
    torch.testing.assert_close(sum(r[0] for r in results) / world, loss.detach())
    torch.testing.assert_close(torch.cat([r[1] for r in results], dim=1) / world, p_full.grad)
    for r in results:
        torch.testing.assert_close(r[2], crit.queue.bank)  # all ranks' keys, in rank order
        torch.testing.assert_close(r[4], 2 * r[5])  # unshuffle(shuffle(x)) gives back x
    # ShuffleBN across ranks: the ranks' shares are a permutation of the global batch
    shuffled = torch.cat([r[3] for r in results])
    assert sorted(shuffled[:, 0].tolist()) == list(range(8))
