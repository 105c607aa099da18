"""Gradient accumulation (--accum-steps N) through the real step code (utils.training.TrainStep):
the accumulated gradient is the mean of the N micro-batch gradients; for a per-sample separable
loss it equals one step at the full batch, also with 2 gloo processes (DDP no_sync on all but the
last micro-batch); the schedules for both --accum-schedule values; exact resume with accumulation.

Contrastive losses are not separable per sample (every sample is a negative of the others, and
BatchNorm normalises over the micro-batch), so accumulating them is not the full-batch step; the
separable case is the one where the equality is literal.
"""

import argparse
import copy

import numpy as np
import torch
from helpers import run_gloo
from test_reliability import ITERS, assert_same_run, kill_and_resume, pytestmark, run  # noqa: F401
from torch import nn

from losses.base import LossOutput, ViewOutputs
from losses.simclr import SimCLRLoss
from utils.schedules import training_schedules
from utils.training import TrainStep, micro_batches


def step_args(accum: int) -> argparse.Namespace:
    return argparse.Namespace(accum_steps=accum, on_nonfinite="stop", clip_grad=0.0, amp="off",
                              device=torch.device("cpu"), max_overflows=0)


class TwoViewNet(nn.Module):
    """[V, B, D] outputs of a tiny MLP, with or without BatchNorm (batch statistics)."""

    def __init__(self, batch_norm: bool):
        super().__init__()
        norm = nn.BatchNorm1d(8) if batch_norm else nn.Identity()
        self.net = nn.Sequential(nn.Linear(6, 8), norm, nn.ReLU(), nn.Linear(8, 4))

    def forward(self, views: list[torch.Tensor]) -> ViewOutputs:
        return ViewOutputs(p=torch.stack([self.net(v) for v in views]))


class PerSampleLoss(nn.Module):
    """mean_b ||p0_b - p1_b||^2: a mean of per-sample terms, no batch statistics."""

    def forward(self, out: ViewOutputs, labels: torch.Tensor | None = None) -> LossOutput:
        loss = (out.p[0] - out.p[1]).pow(2).sum(-1).mean()
        return LossOutput(loss, {"term": loss.detach()})


def batch(n: int, seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    return [([torch.randn(n, 6, generator=g), torch.randn(n, 6, generator=g)], torch.zeros(n))]


def split(batches: list, parts: int) -> list:
    (views, y), = batches
    return [([v.chunk(parts)[i] for v in views], y.chunk(parts)[i]) for i in range(parts)]


def grads_after_step(model, criterion, batches, accum, **kw) -> list[torch.Tensor]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # the gradient, weights unchanged
    step = TrainStep(model, model, criterion, optimizer, None, step_args(accum), **kw)
    result = step(batches, 0, 0)
    assert not result["skipped"]
    return [p.grad.clone() for p in model.parameters()]


def test_accumulated_gradient_is_the_mean_of_micro_batch_gradients():
    torch.manual_seed(0)
    model, criterion, n = TwoViewNet(batch_norm=True), SimCLRLoss(0.5), 3
    micro = split(batch(12, 1), n)
    reference = [torch.zeros_like(p) for p in model.parameters()]
    for views, _ in micro:  # naive loop: a fresh copy per micro-batch, gradients averaged
        copy_ = copy.deepcopy(model)
        loss = criterion(copy_(views)).loss
        for r, g in zip(reference, torch.autograd.grad(loss, list(copy_.parameters())),
                        strict=True):  # fmt: skip
            r += g / n
    for ours, ref in zip(grads_after_step(model, criterion, micro, n), reference, strict=True):
        torch.testing.assert_close(ours, ref)


def test_separable_loss_accumulated_equals_full_batch():
    torch.manual_seed(0)
    model = TwoViewNet(batch_norm=False)
    full = grads_after_step(copy.deepcopy(model), PerSampleLoss(), batch(8, 2), 1)
    accumulated = grads_after_step(model, PerSampleLoss(), split(batch(8, 2), 2), 2)
    for a, b in zip(accumulated, full, strict=True):
        torch.testing.assert_close(a, b)


def _ddp_accumulated_grads(rank: int, world: int, state: dict) -> list[torch.Tensor]:
    model = TwoViewNet(batch_norm=False)
    model.load_state_dict(state)
    ddp = nn.parallel.DistributedDataParallel(model)
    (views, y), = batch(8, 2)
    mine = [([v.chunk(world)[rank] for v in views], y.chunk(world)[rank])]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    step = TrainStep(ddp, model, PerSampleLoss(), optimizer, None, step_args(2),
                     no_sync=ddp.no_sync)
    step(split(mine, 2), 0, 0)
    return [p.grad.clone() for p in model.parameters()]


def test_two_gloo_processes_with_accumulation_equal_one_full_batch():
    torch.manual_seed(0)
    model = TwoViewNet(batch_norm=False)
    full = grads_after_step(copy.deepcopy(model), PerSampleLoss(), batch(8, 2), 1)
    for grads in run_gloo(_ddp_accumulated_grads, model.state_dict()):
        for a, b in zip(grads, full, strict=True):
            torch.testing.assert_close(a, b)


def test_micro_batches_groups_consecutive_batches():
    assert list(micro_batches(range(7), 3)) == [[0, 1, 2], [3, 4, 5]]  # a partial group is dropped


def schedule_args(accum_schedule: str) -> argparse.Namespace:
    return argparse.Namespace(lr_effective=1.0, min_lr=0.0, epochs=4, warmup_epochs=1,
                              weight_decay=0.0, weight_decay_end=None, moco_m=0.99,
                              moco_m_cos=False, momentum_per_epoch=False, accum_steps=4,
                              accum_schedule=accum_schedule)


def test_schedules_per_optimizer_step_and_lightning_micro_sizing():
    iters = 10  # optimizer steps per epoch
    per_step = training_schedules(schedule_args("optimizer"), iters)
    assert len(per_step["lr"]) == 4 * iters and per_step["lr"][iters] == 1.0  # warmed up: epoch 1
    assert per_step["lr"][-1] < 0.01  # the cosine ends with the run
    micro = training_schedules(schedule_args("micro"), iters)
    assert len(micro["lr"]) == 4 * iters * 4  # sized in micro-batches
    # indexed by the optimizer step, it advances 4x slower: a quarter through warmup at epoch 1,
    # and warmup ends at optimizer step 4 * iters, the last one of the run
    np.testing.assert_allclose(micro["lr"][iters], 0.25)
    assert micro["lr"][4 * iters - 1] < 1.0 and micro["lr"][4 * iters] == 1.0
    assert len(micro["wd"]) == len(micro["m"]) == 4 * iters  # only the lr is sized in micro-batches


def test_resume_with_accumulation_is_exact(tmp_path):
    ref, out = str(tmp_path / "ref"), str(tmp_path / "run")
    accum = ["--accum-steps", "2", "--accum-schedule", "micro"]
    console = run(ref, *accum)
    assert f"[{ITERS - 1}/{ITERS}]" in console  # -b stays the global batch: same steps per epoch
    kill_and_resume(out, 5, *accum)
    assert_same_run(out, ref)
