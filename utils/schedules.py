"""Schedules as pure functions of the global iteration: computed once, indexed per step (DINO)."""

from __future__ import annotations

import math

import numpy as np


def cosine_schedule(base: float, final: float, epochs: int, iters_per_epoch: int,
                    warmup_epochs: float = 0, warmup_start: float = 0.0) -> np.ndarray:
    """Per-iteration values: linear warmup from warmup_start to base, then a half cosine to final.

    With final = 0 and warmup_start = 0 this is moco-v3's adjust_learning_rate evaluated at
    epoch + i / iters_per_epoch.
    """
    total = epochs * iters_per_epoch
    t = np.arange(total, dtype=np.float64) / iters_per_epoch  # fractional epoch of each step
    values = np.empty(total, dtype=np.float64)
    warm = t < warmup_epochs
    values[warm] = warmup_start + (base - warmup_start) * t[warm] / max(warmup_epochs, 1e-12)
    progress = (t[~warm] - warmup_epochs) / max(epochs - warmup_epochs, 1e-12)
    values[~warm] = final + (base - final) * 0.5 * (1.0 + np.cos(math.pi * progress))
    return values


def momentum_schedule(m0: float, epochs: int, iters_per_epoch: int, cosine: bool,
                      per_epoch: bool = False) -> np.ndarray:
    """EMA momentum per iteration: m(t) = 1 - (1 + cos(pi t / E)) / 2 * (1 - m0) (moco-v3 --moco-m-cos).

    per_epoch=True reproduces PatchMix's shadowed-index bug (docs/methods.md §9.6-1): t = epoch + 1 / iters,
    so the momentum changes once per epoch.
    """
    total = epochs * iters_per_epoch
    if not cosine:
        return np.full(total, m0, dtype=np.float64)
    it = np.arange(total, dtype=np.float64)
    t = it // iters_per_epoch + 1.0 / iters_per_epoch if per_epoch else it / iters_per_epoch
    return 1.0 - 0.5 * (1.0 + np.cos(math.pi * t / epochs)) * (1.0 - m0)


def mvmr_clip_schedule(base: float, final: float, epochs: int, iters_per_epoch: int, constant_epochs: int,
                       cycle_steps: int, accum: int = 1, val_steps: int = 0) -> np.ndarray:
    """vkinakh/mv-mr's CLIP distillation lr per optimizer step (clip_self_supervised_module.py:113,160-162).

    A CosineAnnealingLR(T_max=cycle_steps) counts k steps: one at the end of every epoch (PyTorch
    Lightning, interval 'epoch'), and from epoch constant_epochs on one per training micro-batch and
    val_steps per validation. Its lr is final + (base - final)(1 + cos(pi k / T_max)) / 2, which past
    T_max climbs back (period 2 T_max). The optimizer step ending micro-batch (i + 1) accum - 1 sees
    the k after that micro-batch's step, as the official step() runs before optimizer.step().
    """
    it = np.arange(epochs * iters_per_epoch)
    e, i = it // iters_per_epoch, it % iters_per_epoch
    cycling = np.maximum(e - constant_epochs, 0)  # epochs already spent cycling
    within = np.where(e >= constant_epochs, (i + 1) * accum, 0)
    k = e + cycling * (iters_per_epoch * accum + val_steps) + within
    return final + (base - final) * 0.5 * (1.0 + np.cos(math.pi * k / cycle_steps))


def training_schedules(args, iters_per_epoch: int) -> dict[str, np.ndarray]:
    """main_pretrain.py's per-optimizer-step lr (warmup + cosine to --min-lr), weight decay (cosine
    to --weight-decay-end, constant by default) and EMA momentum (--moco-m, --moco-m-cos).

    --lr-schedule mvmr-clip swaps the lr for mvmr_clip_schedule: constant for --warmup-epochs, T_max
    --lr-cycle-steps (0: one epoch of the unsharded loader, steps x accumulation x processes).

    iters_per_epoch counts optimizer steps. With --accum-schedule micro the lr schedule is sized in
    micro-batches (N per step) but still indexed by the optimizer step, as PyTorch Lightning sizes
    MV-MR's warmup/cosine in dataloader batches and steps it per optimizer step: with N-fold
    accumulation it advances N times slower and ends 1/N of the way through.
    """
    wd_end = args.weight_decay if args.weight_decay_end is None else args.weight_decay_end
    accum = getattr(args, "accum_steps", 1)
    lr_iters = iters_per_epoch * accum if getattr(args, "accum_schedule", "") == "micro" else None
    if getattr(args, "lr_schedule", "warmup-cosine") == "mvmr-clip":
        cycle = args.lr_cycle_steps or iters_per_epoch * accum * getattr(args, "world_size", 1)
        lr = mvmr_clip_schedule(args.lr_effective, args.min_lr, args.epochs, iters_per_epoch,
                                round(args.warmup_epochs), cycle, accum, args.lr_cycle_val_steps)
    else:
        lr = cosine_schedule(args.lr_effective, args.min_lr, args.epochs, lr_iters or iters_per_epoch,
                             args.warmup_epochs)
    return {
        "lr": lr,
        "wd": cosine_schedule(args.weight_decay, wd_end, args.epochs, iters_per_epoch),
        "m": momentum_schedule(args.moco_m, args.epochs, iters_per_epoch, args.moco_m_cos,
                               args.momentum_per_epoch),
    }
