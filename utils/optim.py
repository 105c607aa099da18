"""Optimisers: LARS (moco-v3), parameter groups that exclude norms and biases from weight decay."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


class LARS(torch.optim.Optimizer):
    """LARS as in moco-v3 ``moco/optimizer.py``: parameters with ndim <= 1 get neither weight decay
    nor the trust-ratio adaptation."""

    def __init__(self, params: Iterable, lr: float = 0.0, weight_decay: float = 0.0,
                 momentum: float = 0.9, trust_coefficient: float = 0.001):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                        trust_coefficient=trust_coefficient)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - the Optimizer signature
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                dp = p.grad
                if p.ndim > 1:  # no weight decay or adaptation for biases and norm parameters
                    dp = dp.add(p, alpha=group["weight_decay"])
                    param_norm, update_norm = torch.norm(p), torch.norm(dp)
                    one = torch.ones_like(param_norm)
                    q = torch.where(param_norm > 0.0,
                                    torch.where(update_norm > 0,
                                                group["trust_coefficient"] * param_norm / update_norm,
                                                one), one)
                    dp = dp.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(dp)
                p.add_(mu, alpha=-group["lr"])


def param_groups(model: nn.Module, exclude_norm_bias: bool) -> list[dict]:
    """One group, or two with weight decay off (``wd_scale`` 0) for biases and 1-D parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not exclude_norm_bias:
        return [{"params": params, "wd_scale": 1.0}]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return [{"params": decay, "wd_scale": 1.0}, {"params": no_decay, "wd_scale": 0.0}]


def build_optimizer(name: str, groups: list[dict], lr: float, weight_decay: float,
                    momentum: float = 0.9, betas: tuple[float, float] = (0.9, 0.999)
                    ) -> torch.optim.Optimizer:
    """lars | sgd | adamw | adam. The step's lr and wd are set from schedules by the training loop."""
    fast = {"foreach": True}  # one fused multi-tensor kernel per step instead of a Python loop
    if name == "lars":
        return LARS(groups, lr=lr, weight_decay=weight_decay, momentum=momentum)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, **fast)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, betas=betas, **fast)
    if name == "adam":  # BeCLR / MV-MR use Adam with an L2 penalty, not decoupled decay
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay, betas=betas, **fast)
    raise ValueError(f"unknown optimizer {name!r}: choose lars, sgd, adamw or adam")


def set_lr_wd(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    for group in optimizer.param_groups:
        # plain floats: numpy scalars in param groups would make checkpoints need unpickling
        group["lr"] = float(lr)
        group["weight_decay"] = float(weight_decay) * group.get("wd_scale", 1.0)
