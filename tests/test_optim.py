"""utils/optim.py: LARS against naive per-parameter references written from moco-v3's
moco/optimizer.py and solo-learn's solo/utils/lars.py (float64, plain Python scalars); the
mvmr-clip lr schedule against a real CosineAnnealingLR stepped as MV-MR's CLIP distillation does."""

import argparse
import math
import warnings

import pytest
import torch

from utils.optim import LARS, build_optimizer
from utils.schedules import training_schedules


def reference_direction(p, g, wd, eta, clip, lr, denominator):
    """One parameter's d (before momentum), one scalar at a time."""
    if p.ndim <= 1:
        return g.clone()
    p_norm = math.sqrt(float((p * p).sum()))
    if denominator == "update":  # moco-v3: q from the norm of the decayed update, q = 1 on zeros
        d = g + wd * p
        u_norm = math.sqrt(float((d * d).sum()))
        q = eta * p_norm / u_norm if p_norm > 0 and u_norm > 0 else 1.0
        if clip and p_norm > 0 and u_norm > 0:
            q = min(q / lr, 1.0)
        return q * d
    g_norm = math.sqrt(float((g * g).sum()))  # solo-learn: skip decay and scaling on zeros
    if p_norm == 0 or g_norm == 0:
        return g.clone()
    q = eta * p_norm / (g_norm + p_norm * wd + 1e-8)
    if clip:
        q = min(q / lr, 1.0)
    return q * (g + wd * p)


def reference_run(params, grads, steps, lr, wd, momentum, **kw):
    params = [p.clone() for p in params]
    bufs = [torch.zeros_like(p) for p in params]
    for s in range(steps):
        for i, p in enumerate(params):
            d = reference_direction(p, grads[s][i], wd, lr=lr, **kw)
            bufs[i] = momentum * bufs[i] + d
            params[i] = p - lr * bufs[i]
    return params


@pytest.mark.parametrize("denominator", ["update", "sum"])
@pytest.mark.parametrize("eta,clip,lr", [(0.001, False, 0.4), (0.02, True, 0.4),
                                         (0.02, True, 1e-3), (0.5, False, 0.1)])
def test_lars_equals_naive_reference(denominator, eta, clip, lr):
    torch.manual_seed(0)
    shapes = [(6, 5), (4, 3, 3, 3), (5,), (1,)]
    params = [torch.randn(s, dtype=torch.float64) for s in shapes]
    grads = [[torch.randn(s, dtype=torch.float64) * 10 ** (-k) for k, s in enumerate(shapes)]
             for _ in range(3)]
    expected = reference_run(params, grads, 3, lr, 1e-4, 0.9, eta=eta, clip=clip,
                             denominator=denominator)
    tensors = [torch.nn.Parameter(p.clone()) for p in params]
    opt = build_optimizer("lars", [{"params": tensors}], lr, 1e-4, 0.9, lars_eta=eta,
                          lars_clip=clip, lars_denominator=denominator)
    for step in range(3):
        for t, g in zip(tensors, grads[step]):
            t.grad = g.clone()
        opt.step()
    for got, want in zip(tensors, expected):
        torch.testing.assert_close(got.detach(), want, rtol=1e-12, atol=1e-14)


def test_clip_caps_the_layer_step_at_lr():
    """solo-learn's clip_lr: with a huge trust ratio the first step is plain SGD at lr."""
    p = torch.nn.Parameter(torch.full((3, 3), 100.0, dtype=torch.float64))
    p.grad = torch.full((3, 3), 1e-6, dtype=torch.float64)
    LARS([p], lr=0.5, weight_decay=0.0, momentum=0.9, eta=0.02, clip=True).step()
    torch.testing.assert_close(p.detach(), torch.full((3, 3), 100.0 - 0.5e-6, dtype=torch.float64))


def test_zero_norm_rules_follow_each_source():
    zero = torch.nn.Parameter(torch.zeros(2, 2, dtype=torch.float64))
    zero.grad = torch.ones(2, 2, dtype=torch.float64)
    other = torch.nn.Parameter(torch.zeros(2, 2, dtype=torch.float64))
    other.grad = torch.ones(2, 2, dtype=torch.float64)
    LARS([zero], lr=0.1, denominator="update").step()  # q = 1: a plain SGD step
    LARS([other], lr=0.1, denominator="sum").step()  # raw gradient
    torch.testing.assert_close(zero.detach(), other.detach())
    assert torch.all(zero == -0.1)


def test_defaults_are_mocov3():
    opt = LARS([torch.nn.Parameter(torch.ones(2, 2))])
    group = opt.param_groups[0]
    assert (group["eta"], group["clip"], group["denominator"]) == (0.001, False, "update")
    with pytest.raises(ValueError, match="denominator"):
        LARS([torch.nn.Parameter(torch.ones(2))], denominator="norm")


def official_mvmr_clip_lrs(epochs, n, accum, warm, val, t_max):
    """vkinakh/mv-mr clip_self_supervised_module.py:113,160-169 under PyTorch Lightning 1.5: a real
    CosineAnnealingLR stepped in every training/validation step() from epoch `warm` on, plus once at
    the end of every training epoch (interval 'epoch'); the lr of each optimizer step."""
    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t_max)
    lrs = []
    for epoch in range(epochs):
        for micro in range(n * accum):
            if epoch >= warm:  # training_step -> step(): sch.step() before optimizer.step()
                sched.step()
            if (micro + 1) % accum == 0:
                lrs.append(opt.param_groups[0]["lr"])
        sched.step()  # Lightning: epoch-interval schedulers after the last training batch
        for _ in range(val if epoch >= warm else 0):  # validation_step -> step()
            sched.step()
    return lrs


@pytest.mark.parametrize("accum,val,t_max,world", [(1, 0, 0, 1), (1, 3, 0, 1), (2, 3, 0, 1),
                                                   (1, 2, 0, 2), (1, 0, 7, 1)])
def test_mvmr_clip_schedule_matches_stepped_cosine(accum, val, t_max, world):
    args = argparse.Namespace(lr_schedule="mvmr-clip", lr_effective=1e-4, min_lr=0.0, epochs=12,
                              warmup_epochs=3, lr_cycle_steps=t_max, lr_cycle_val_steps=val,
                              accum_steps=accum, accum_schedule="optimizer", world_size=world,
                              weight_decay=0.0, weight_decay_end=None, moco_m=0.99,
                              moco_m_cos=False, momentum_per_epoch=False)
    n = 5  # optimizer steps per epoch of one process
    ours = training_schedules(args, n)["lr"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scheduler.step() before optimizer.step()
        ref = official_mvmr_clip_lrs(12, n, accum, 3, val, t_max or n * accum * world)
    assert ours.tolist() == pytest.approx(ref, rel=1e-6, abs=1e-12)
    assert min(ref[3 * n:]) < 1e-5 and max(ref[3 * n:]) > 9e-5  # it does swing down and back up
