"""Optimisers: LARS (moco-v3's, with solo-learn's options), parameter groups that exclude norms and
biases from weight decay, and the optimizer factory."""

from __future__ import annotations

import argparse
from typing import Iterable

import torch
from torch import nn

from utils.misc import bool_flag

SOLO_EPS = 1e-8  # solo-learn's LARS eps in the "sum" denominator


class LARS(torch.optim.Optimizer):
    r"""LARS: momentum SGD whose step for each weight matrix is scaled by a trust ratio q.

    For a parameter p with ndim > 1, gradient g, weight decay wd, step lr and momentum m:

        q = eta * |p| / |g + wd * p|                 denominator "update" (moco-v3 moco/optimizer.py)
        q = eta * |p| / (|g| + wd * |p| + 1e-8)      denominator "sum" (solo-learn solo/utils/lars.py)
        q = min(q / lr, 1)                           if clip (solo-learn clip_lr: the layer's step
                                                     lr * q never exceeds lr)
        d = q * (g + wd * p);   mu = m * mu + d;   p = p - lr * mu

    Parameters with ndim <= 1 (biases, norms) get d = g: no weight decay, no adaptation (moco-v3,
    and solo-learn with exclude_bias_n_norm, which its recipes set). A zero norm: moco-v3 keeps
    q = 1 with the weight decay; solo-learn skips both, and each denominator keeps its source's rule.
    The defaults (eta 0.001, no clip, "update") are moco-v3's optimizer exactly.
    """

    def __init__(self, params: Iterable, lr: float = 0.0, weight_decay: float = 0.0,
                 momentum: float = 0.9, eta: float = 0.001, clip: bool = False,
                 denominator: str = "update"):
        if denominator not in ("update", "sum"):
            raise ValueError(f"LARS denominator must be 'update' or 'sum', got {denominator!r}")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta, clip=clip,
                        denominator=denominator)
        super().__init__(params, defaults)

    @staticmethod
    def _direction(p: torch.Tensor, group: dict) -> torch.Tensor:
        """d = q * (g + wd * p) for a weight matrix, d = g for a bias or norm parameter."""
        g, wd = p.grad, group["weight_decay"]
        if p.ndim <= 1:
            return g
        p_norm, d = torch.linalg.vector_norm(p), g.add(p, alpha=wd)
        if group["denominator"] == "update":
            denom = torch.linalg.vector_norm(d)
            usable = (p_norm > 0) & (denom > 0)
        else:
            g_norm = torch.linalg.vector_norm(g)
            denom = g_norm + wd * p_norm + SOLO_EPS
            usable = (p_norm > 0) & (g_norm > 0)
        q = group["eta"] * p_norm / denom
        if group["clip"] and group["lr"] > 0:  # lr 0 (warmup start): the step is 0 anyway
            q = torch.clamp(q / group["lr"], max=1.0)
        if group["denominator"] == "sum":  # solo: a zero norm means the raw gradient, no decay
            return torch.where(usable, d * q, g)
        return d * torch.where(usable, q, torch.ones_like(q))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - the Optimizer signature
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = self._direction(p, group)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(d)
                p.add_(mu, alpha=-group["lr"])


def add_lars_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("LARS (--optimizer lars)")
    g.add_argument("--lars-eta", default=0.001, type=float,
                   help="trust coefficient eta (default: 0.001; solo-learn recipes: 0.02)")
    g.add_argument("--lars-clip", default=False, type=bool_flag,
                   help="cap each layer's step at lr, q = min(q / lr, 1) (default: false; solo-learn "
                        "recipes: true)")
    g.add_argument("--lars-denominator", default="update", choices=["update", "sum"],
                   help="trust-ratio denominator: update = |g + wd p| (default) or sum = |g| + wd |p| "
                        "(solo-learn recipes)")


def lars_options(args: argparse.Namespace) -> dict:
    """build_optimizer's LARS keywords from a run's args (older runs' args lack them)."""
    return dict(lars_eta=getattr(args, "lars_eta", 0.001),
                lars_clip=getattr(args, "lars_clip", False),
                lars_denominator=getattr(args, "lars_denominator", "update"))


def param_groups(model: nn.Module, exclude_norm_bias: bool) -> list[dict]:
    """One group, or two with weight decay off (``wd_scale`` 0) for biases and 1-D parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not exclude_norm_bias:
        return [{"params": params, "wd_scale": 1.0}]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return [{"params": decay, "wd_scale": 1.0}, {"params": no_decay, "wd_scale": 0.0}]


def build_optimizer(name: str, groups: list[dict], lr: float, weight_decay: float,
                    momentum: float = 0.9, betas: tuple[float, float] = (0.9, 0.999), *,
                    lars_eta: float = 0.001, lars_clip: bool = False,
                    lars_denominator: str = "update") -> torch.optim.Optimizer:
    """lars | sgd | adamw | adam. The step's lr and wd are set from schedules by the training loop."""
    fast = {"foreach": True}  # one fused multi-tensor kernel per step instead of a Python loop
    if name == "lars":
        return LARS(groups, lr=lr, weight_decay=weight_decay, momentum=momentum, eta=lars_eta,
                    clip=lars_clip, denominator=lars_denominator)
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
