"""losses/patchmix.py and models/patchmix.py against a naive reading of docs/methods.md §9."""

from __future__ import annotations

import math
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from helpers import run_gloo

from losses.base import ViewOutputs
from losses.patchmix import PatchMixLoss, patchmix_targets, soft_contrastive
from models import build_backbone
from models.patchmix import PatchMixMoCo
from utils import dist

DT = torch.float64


# ---------------------------------------------------------------- naive reference (loops, float64)
def naive_ctr(q: torch.Tensor, k: torch.Tensor, target: torch.Tensor, t: float) -> torch.Tensor:
    """mean_b sum_c -Y_bc log softmax_c(cos(q_b, k_c) / T), one row and one column at a time."""
    rows = []
    for b in range(q.shape[0]):
        qb = q[b] / torch.sqrt((q[b] * q[b]).sum())
        logits = torch.stack([(qb * k[c].detach()).sum() / torch.sqrt((k[c] * k[c]).sum()).detach()
                              for c in range(k.shape[0])]) / t
        log_z = torch.log(torch.exp(logits).sum())
        rows.append(sum(-target[b, c] * (logits[c] - log_z) for c in range(k.shape[0])))
    return sum(rows) / len(rows)


def naive_targets(b: int, m: int, eps: float, rank: int = 0, world: int = 1):
    """(I_eps, Y_mix, Y_mixmix) of one rank from §9.1; mixed ones unsmoothed, last write wins."""
    n = b * world
    ident = [[eps / n] * n for _ in range(b)]
    mix = [[0.0] * n for _ in range(b)]
    mixmix = [[0.0] * n for _ in range(b)]
    for g in range(b):
        ident[g][g + b * rank] = 1 - eps + eps / n
        for j in range(m):
            mix[g][(g + j) % b + b * rank] = 1 / m
        for i in range(2 * m - 1):
            mixmix[g][(g - m + 1 + i) % b + b * rank] = (1 - abs(m - i - 1) / m) / m
    return tuple(torch.tensor(x, dtype=DT) for x in (ident, mix, mixmix))


def naive_patchmix(q1, k1, k2, mk1, mq2, t, targets, local_q=None, local_mq=None):
    ident, mix, mixmix = targets
    loss = naive_ctr(q1, k2, ident, t) + naive_ctr(mq2, k1, mix, t) / 2
    loss = loss + naive_ctr(mq2, mk1, mixmix, t) / 2
    if local_q is not None:
        c = local_q.shape[0]
        loss = loss + sum(naive_ctr(local_q[i], k1, ident, t) + naive_ctr(local_q[i], k2, ident, t)
                          for i in range(c)) / c
        loss = loss + sum(naive_ctr(local_mq[i], k1, mix, t) + naive_ctr(local_mq[i], k2, mix, t)
                          for i in range(c)) / c
    return loss


def patchmix_loss(q1, k1, k2, mk1, mq2, temperature, smoothing=0.1, local_q=None, local_mq=None,
                  *, m=2, mix_smoothing=0.0, accumulate=False, mixed=None):
    """The PatchMix loss class on these tensors, packed into ViewOutputs as the builder packs them.

    Shapes: q1, k1, k2, mk1, mq2 [B, D]; local_q, local_mq [C, B, D] or None.
    """
    extras = {"p_mix": mq2[None] if local_mq is None else torch.cat([mq2[None], local_mq]),
              "k_mix": mk1[None]}
    if mixed is not None:
        extras["mixed"] = mixed
    out = ViewOutputs(p=q1[None] if local_q is None else torch.cat([q1[None], local_q]),
                      k=torch.stack([k1, k2]), extras=extras)
    criterion = PatchMixLoss(temperature, smoothing, m, mix_smoothing, accumulate)
    return criterion(out).loss


def _inputs(b=5, d=4, crops=2, grad=True):
    def leaf(*shape):
        return torch.randn(*shape, dtype=DT).requires_grad_(grad)
    return dict(q1=leaf(b, d), k1=leaf(b, d), k2=leaf(b, d), mk1=leaf(b, d), mq2=leaf(b, d),
                local_q=leaf(crops, b, d), local_mq=leaf(crops, b, d))


# ---------------------------------------------------------------- soft targets
def targets(b, m, eps=0.0, *, rank=0, world_size=1, accumulate=False):
    """patchmix_targets of one rank of world_size, in float64, without a process group."""
    with mock.patch.object(dist, "get_rank", return_value=rank), \
            mock.patch.object(dist, "get_world_size", return_value=world_size):
        return patchmix_targets(b, m, eps, torch.zeros((), dtype=DT), accumulate=accumulate)


def naive_smoothed_targets(b, m, eps, rank, world):
    """Targets from the notes (§9.1), with the scatter_ overwrite done as 'last write wins'."""
    n = b * world
    mix = [[eps / n] * n for _ in range(b)]
    mixmix = [[eps / n] * n for _ in range(b)]
    for g in range(b):
        for j in range(m):
            mix[g][(g + j) % b + b * rank] = (1 - eps) / m + eps / n
        for i in range(2 * m - 1):
            weight = 1 - abs(m - i - 1) / m
            mixmix[g][(g - m + 1 + i) % b + b * rank] = (1 - eps) * weight / m + eps / n
    return torch.tensor(mix, dtype=DT), torch.tensor(mixmix, dtype=DT)


@pytest.mark.parametrize("b,m,eps,rank,world", [(5, 2, 0.0, 0, 1), (6, 3, 0.1, 1, 2),
                                                (4, 2, 0.2, 2, 3), (2, 2, 0.0, 0, 1),
                                                (1, 2, 0.1, 1, 2)])
def test_targets_match_naive(b, m, eps, rank, world):
    got = targets(b, m, eps, rank=rank, world_size=world)
    want = naive_smoothed_targets(b, m, eps, rank, world)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-15, atol=0)


def test_targets_exact_values_m2():
    mix, mixmix = targets(5, 2)
    for g in range(5):
        assert mix[g].sum() == 1.0 and mixmix[g].sum() == 1.0
        assert mix[g, [g, (g + 1) % 5]].tolist() == [0.5, 0.5]
        assert mixmix[g, [(g - 1) % 5, g, (g + 1) % 5]].tolist() == [0.25, 0.5, 0.25]
        assert (mixmix[g] > 0).sum() == 3


def test_mixmix_is_the_overlap_of_shares():
    # mixed q_g and mixed k_c share source s with weight (1/m)(1/m): Y_mixmix = Y_mix Y_mix^T
    for b, m in [(5, 2), (7, 3), (2, 2), (3, 3)]:
        mix, mixmix = targets(b, m, accumulate=True)
        torch.testing.assert_close(mixmix, mix @ mix.T, rtol=1e-14, atol=1e-15)
        torch.testing.assert_close(mixmix.sum(1), torch.ones(b, dtype=DT))


def test_tiny_batch_overwrite_oddity():
    # B = 2 < 2m - 1: the official scatter_ keeps one 0.25 for the twice-listed neighbour
    _, official = targets(2, 2)
    _, fixed = targets(2, 2, accumulate=True)
    assert official.sum(1).tolist() == [0.75, 0.75]
    assert fixed.tolist() == [[0.5, 0.5], [0.5, 0.5]]


@pytest.mark.parametrize("rank,world", [(0, 1), (1, 2)])
def test_targets_rows_sum_to_one_with_smoothing(rank, world):
    mix, mixmix = targets(4, 2, 0.1, rank=rank, world_size=world)
    for t in (mix, mixmix):
        torch.testing.assert_close(t.sum(1), torch.ones(4, dtype=DT))
        other = torch.ones(4 * world, dtype=torch.bool)
        other[4 * rank:4 * rank + 4] = False
        assert torch.all(t[:, other] == 0.1 / (4 * world))  # other ranks' columns: eps/N only


def test_m1_targets_are_the_smoothed_identity():
    y, _ = targets(3, 1, 0.1, rank=1, world_size=2)
    want = torch.full((3, 6), 0.1 / 6, dtype=DT)
    want[[0, 1, 2], [3, 4, 5]] = 0.9 + 0.1 / 6
    torch.testing.assert_close(y, want, rtol=1e-15, atol=0)
    assert torch.equal(targets(4, 1, 0.0)[0], torch.eye(4, dtype=DT))


# ---------------------------------------------------------------- soft_contrastive
def test_soft_contrastive_matches_naive():
    q, k = torch.randn(5, 6, dtype=DT), torch.randn(5, 6, dtype=DT)
    target = torch.softmax(torch.randn(5, 5, dtype=DT), dim=1)
    torch.testing.assert_close(soft_contrastive(q, k, target, 0.2), naive_ctr(q, k, target, 0.2),
                               rtol=1e-12, atol=0)


def test_soft_contrastive_one_hot_is_cross_entropy_without_2t():
    q, k = torch.randn(6, 3, dtype=DT), torch.randn(6, 3, dtype=DT)
    logits = F.normalize(q, dim=1) @ F.normalize(k, dim=1).T / 0.5
    want = F.cross_entropy(logits, torch.arange(6))
    torch.testing.assert_close(soft_contrastive(q, k, torch.eye(6, dtype=DT), 0.5), want,
                               rtol=1e-13, atol=0)


def test_soft_contrastive_collinear_is_log_n():
    q = torch.ones(4, 3, dtype=DT)
    k = 2 * torch.ones(4, 3, dtype=DT)  # every logit equal: -log(1/N) per unit of target mass
    target = torch.softmax(torch.randn(4, 4, dtype=DT), dim=1)
    want = torch.tensor(math.log(4), dtype=DT)
    torch.testing.assert_close(soft_contrastive(q, k, target, 0.1), want)


# ---------------------------------------------------------------- patchmix_loss
@pytest.mark.parametrize("m,smoothing,crops", [(2, 0.1, 0), (2, 0.0, 2), (3, 0.1, 3), (2, 0.1, 2)])
def test_patchmix_loss_matches_naive(m, smoothing, crops):
    x = _inputs(b=6, crops=crops)
    local = {"local_q": x["local_q"], "local_mq": x["local_mq"]} if crops else {}
    got = patchmix_loss(x["q1"], x["k1"], x["k2"], x["mk1"], x["mq2"], 0.2, smoothing, m=m, **local)
    want = naive_patchmix(x["q1"], x["k1"], x["k2"], x["mk1"], x["mq2"], 0.2,
                          naive_targets(6, m, smoothing), **local)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def test_patchmix_loss_default_smoothing_is_the_hidden_official_one():
    x = _inputs(b=5, crops=0)
    args = (x["q1"], x["k1"], x["k2"], x["mk1"], x["mq2"], 0.2)
    want = naive_patchmix(*args, naive_targets(5, 2, 0.1))
    torch.testing.assert_close(patchmix_loss(*args), want, rtol=1e-12, atol=0)
    assert not torch.allclose(patchmix_loss(*args, smoothing=0.0), want)


def test_patchmix_loss_collinear_closed_form():
    # all logits equal: each term is log N times its weight: 1 + 1/2 + 1/2 (+ 2 + 2 with crops)
    b, ones = 5, torch.ones(5, 3, dtype=DT)
    crops = torch.ones(3, 5, 3, dtype=DT)
    loss = patchmix_loss(ones, ones, ones, ones, ones, 0.3)
    torch.testing.assert_close(loss, torch.tensor(2 * math.log(b), dtype=DT))
    loss = patchmix_loss(ones, ones, ones, ones, ones, 0.3, 0.1, crops, crops)
    torch.testing.assert_close(loss, torch.tensor(6 * math.log(b), dtype=DT))


def test_gradient_reaches_queries_not_keys():
    x = _inputs(b=5, crops=2)
    patchmix_loss(**x, temperature=0.2).backward()
    for name in ("q1", "mq2", "local_q", "local_mq"):
        assert x[name].grad is not None and x[name].grad.abs().sum() > 0, name
    for name in ("k1", "k2", "mk1"):
        assert x[name].grad is None, name


def test_accumulate_flag_only_changes_tiny_batches():
    x = _inputs(b=5, crops=0, grad=False)
    args = (x["q1"], x["k1"], x["k2"], x["mk1"], x["mq2"], 0.2)
    torch.testing.assert_close(patchmix_loss(*args), patchmix_loss(*args, accumulate=True),
                               rtol=0, atol=0)
    tiny = [v[:2] for v in args[:5]]
    assert not torch.allclose(patchmix_loss(*tiny, 0.2), patchmix_loss(*tiny, 0.2, accumulate=True))


def test_unmixed_step_uses_identity_targets():
    x = _inputs(b=5, crops=1, grad=False)
    args = (x["q1"], x["k1"], x["k2"], x["mk1"], x["mq2"], 0.2, 0.1, x["local_q"], x["local_mq"])
    ident = torch.eye(5, dtype=DT)
    want = naive_patchmix(*args[:6], (naive_targets(5, 2, 0.1)[0], ident, ident),
                          x["local_q"], x["local_mq"])
    got = patchmix_loss(*args, mixed=torch.tensor(False))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    torch.testing.assert_close(patchmix_loss(*args, mixed=torch.tensor(True)), patchmix_loss(*args))


def test_half_precision_is_upcast():
    x = _inputs(b=4, crops=0, grad=False)
    args = [v.to(torch.bfloat16) for v in (x["q1"], x["k1"], x["k2"], x["mk1"], x["mq2"])]
    assert patchmix_loss(*args, 0.2).dtype == torch.float32


def test_loss_decreases_under_sgd():
    x = _inputs(b=6, crops=0)
    keys = {k: x[k].detach() for k in ("k1", "k2", "mk1")}
    opt = torch.optim.SGD([x["q1"], x["mq2"]], lr=0.5)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = patchmix_loss(x["q1"], keys["k1"], keys["k2"], keys["mk1"], x["mq2"], 0.2)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5


# ---------------------------------------------------------------- the ContrastiveLoss class
def _view_outputs(x, mixed=None):
    extras = {"p_mix": torch.cat([x["mq2"][None], x["local_mq"]]), "k_mix": x["mk1"][None]}
    if mixed is not None:
        extras["mixed"] = torch.tensor(mixed)
    return ViewOutputs(p=torch.cat([x["q1"][None], x["local_q"]]),
                       k=torch.stack([x["k1"], x["k2"]]), extras=extras)


def test_class_reads_view_outputs_and_reports_metrics():
    x = _inputs(b=5, crops=2)
    criterion = PatchMixLoss(temperature=0.2, smoothing=0.1, m=2)
    loss, metrics = criterion(_view_outputs(x, mixed=True))
    want = naive_patchmix(x["q1"], x["k1"], x["k2"], x["mk1"], x["mq2"], 0.2,
                          naive_targets(5, 2, 0.1), x["local_q"], x["local_mq"])
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=0)
    assert set(metrics) == {"src", "mix", "mixmix", "acc"}
    for v in metrics.values():
        assert v.dim() == 0 and not v.requires_grad
    src = soft_contrastive(x["q1"], x["k2"], naive_targets(5, 2, 0.1)[0], 0.2)
    torch.testing.assert_close(metrics["src"], src.detach())
    logits = F.normalize(x["q1"], dim=1) @ F.normalize(x["k2"], dim=1).T
    assert metrics["acc"] == (logits.argmax(1) == torch.arange(5)).float().mean()
    loss.backward()
    assert x["q1"].grad is not None and x["k1"].grad is None


def test_class_without_local_crops_and_bad_shapes():
    x = _inputs(b=4, crops=0, grad=False)
    criterion = PatchMixLoss()
    loss, _ = criterion(_view_outputs(x))
    want = naive_patchmix(x["q1"], x["k1"], x["k2"], x["mk1"], x["mq2"], 0.2,
                          naive_targets(4, 2, 0.1))
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=0)
    with pytest.raises(ValueError):
        criterion(ViewOutputs(p=x["q1"][None], k=x["k1"][None], extras={}))


# ---------------------------------------------------------------- distributed equivalence
def _gloo_patchmix(rank: int, world: int, full: dict[str, torch.Tensor]):
    b = full["q1"].shape[0] // world
    mine = slice(rank * b, (rank + 1) * b)
    x = {k: (v[:, mine] if v.dim() == 3 else v[mine]).clone().requires_grad_(True)
         for k, v in full.items()}
    loss = patchmix_loss(x["q1"], x["k1"], x["k2"], x["mk1"], x["mq2"], 0.2, 0.1, x["local_q"],
                         x["local_mq"])
    loss.backward()
    return loss.detach(), {k: x[k].grad for k in ("q1", "mq2", "local_q", "local_mq")}


def test_two_process_gloo_equals_one_process():
    world, b = 2, 3
    full = {k: v.detach() for k, v in _inputs(b=world * b, crops=2).items()}
    results = run_gloo(_gloo_patchmix, full, world_size=world)
    # one process, whole batch: each rank's rows carry that rank's targets (partners within a rank)
    per_rank = [naive_targets(b, 2, 0.1, rank, world) for rank in range(world)]
    targets = tuple(torch.cat([t[i] for t in per_rank]) for i in range(3))
    x = {k: v.clone().requires_grad_(True) for k, v in full.items()}
    want = naive_patchmix(x["q1"], x["k1"], x["k2"], x["mk1"], x["mq2"], 0.2, targets,
                          x["local_q"], x["local_mq"])
    want.backward()
    torch.testing.assert_close(torch.stack([r[0] for r in results]).mean(), want.detach(),
                               rtol=1e-12, atol=0)
    for name in ("q1", "mq2"):
        got = torch.cat([r[1][name] for r in results]) / world
        torch.testing.assert_close(got, x[name].grad, rtol=1e-10, atol=1e-14)
    for name in ("local_q", "local_mq"):
        got = torch.cat([r[1][name] for r in results], dim=1) / world
        torch.testing.assert_close(got, x[name].grad, rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------- the builder
def _tiny_model(**kw):
    backbone, feat_dim = build_backbone("vit_tiny", img_size=8, patch_size=2, embed_dim=16,
                                        depth=2, num_heads=2, pos_embed="learnable",
                                        drop_path=kw.pop("drop_path", 0.1))
    return PatchMixMoCo(backbone, feat_dim, dim=8, mlp_dim=16, mix_size=2, **kw)


def test_builder_outputs_and_gradients():
    model = _tiny_model()
    views = [torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)] + [torch.randn(4, 3, 4, 4)] * 2
    out = model(views)
    assert out.p.shape == (3, 4, 8) and out.k.shape == (2, 4, 8)
    assert out.extras["p_mix"].shape == (3, 4, 8) and out.extras["k_mix"].shape == (1, 4, 8)
    assert out.h.shape == (3, 4, 16) and bool(out.extras["mixed"])
    assert not out.k.requires_grad and not out.extras["k_mix"].requires_grad
    loss, _ = PatchMixLoss()(out)
    loss.backward()
    assert all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad)
    assert all(p.grad is None for p in model.momentum_backbone.parameters())
    # drop-path regularises the online encoder only
    assert max(m.drop_prob for m in model.backbone.modules() if hasattr(m, "drop_prob")) > 0
    assert all(m.drop_prob == 0 for m in model.momentum_backbone.modules()
               if hasattr(m, "drop_prob"))


def test_builder_unmixed_step_and_no_momentum_variant():
    model = _tiny_model(mix_p=0.0)
    views = [torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)]
    out = model(views)
    assert not bool(out.extras["mixed"])
    torch.testing.assert_close(out.extras["k_mix"][0], out.k[0])  # mom(x1): no mixing happened
    model = _tiny_model(momentum_encoder=False)
    out = model(views)
    assert model.momentum_backbone is None
    torch.testing.assert_close(out.k[0], out.z[0].detach())  # k1 is q1's own projector output
    model.update_momentum(0.99)  # a no-op without a momentum encoder


def test_builder_mixes_every_mixed_branch(monkeypatch):
    import models.patchmix as builder

    original, seen = builder.patch_mix, []

    def spy(x, patch_size, m):
        seen.append((tuple(x.shape), patch_size, m))
        return original(x, patch_size, m)

    monkeypatch.setattr(builder, "patch_mix", spy)
    model = _tiny_model(mix_num=2)
    model([torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8), torch.randn(4, 3, 4, 4)])
    # mix(x1), mix(x2) and one mix per local crop, each with its own permutation
    assert seen == [((4, 3, 8, 8), 2, 2), ((4, 3, 8, 8), 2, 2), ((4, 3, 4, 4), 2, 2)]
