"""The steps bench_step.py times: ours (train_one_epoch's sequence for any METHODS entry, and its
loss alone) and the peer's (lightly's NTXentLoss on the same backbone, projector and optimizer)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from losses.base import ViewOutputs
from main_pretrain import get_args_parser
from models.methods import METHODS, build_model
from utils.optim import build_optimizer, param_groups, set_lr_wd
from utils.training import amp_context, check_finite

IMG_SIZE = 32


@dataclass(frozen=True)
class Case:
    method: str
    arch: str
    batch: int
    ns: int = 1
    amp: str = "off"  # off | bf16
    channels_last: bool = True  # the training script's default


def make_args(case: Case) -> argparse.Namespace:
    """main_pretrain's arguments for one case, with what main_worker derives filled in."""
    argv = [
        "--method",
        case.method,
        "-a",
        case.arch,
        "--img-size",
        str(IMG_SIZE),
        "--patch-size",
        "4",
        "--ns",
        str(case.ns),
        "-b",
        str(case.batch),
        "--amp",
        case.amp,
        "--channels-last",
        str(case.channels_last),
    ]
    args = get_args_parser().parse_args(argv)
    args.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.world_size, args.rank, args.gpu = 1, 0, None
    args.batch_size_per_gpu = case.batch
    args.lr_effective = args.lr * case.batch / 256
    return args


def uses_channels_last(args: argparse.Namespace) -> bool:
    return args.channels_last and not args.arch.startswith("vit")


def make_views(args: argparse.Namespace) -> list[Tensor]:
    """Normalised views already on the device: the step benchmark excludes augmentation."""
    specs = METHODS[args.method].views(args)
    return [torch.randn(args.batch_size, 3, s.size, s.size, device=args.device) for s in specs]


def optimizer_for(module: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    """The run's optimizer over module's parameters (the same for our step and the peer's)."""
    return build_optimizer(args.optimizer, param_groups(module, args.exclude_norm_bias),
                           args.lr_effective, args.weight_decay, args.momentum)


def build_step(args: argparse.Namespace) -> tuple[Callable[[], None], Callable[[], None], int]:
    """(step, loss_only, V) for our method: the train_one_epoch step and the loss alone."""
    model = build_model(args)[0].to(args.device)
    if uses_channels_last(args):
        model = model.to(memory_format=torch.channels_last)
    criterion = METHODS[args.method].loss(args).to(args.device)
    optimizer = optimizer_for(model, args)
    model.train()
    criterion.train()
    views = make_views(args)
    labels = torch.randint(10, (args.batch_size,), device=args.device)

    def step() -> None:
        set_lr_wd(optimizer, args.lr_effective, args.weight_decay)
        if hasattr(model, "update_momentum"):
            model.update_momentum(args.moco_m)
        x = views
        if uses_channels_last(args):
            x = [v.contiguous(memory_format=torch.channels_last) for v in views]
        with amp_context(args):
            out = model(x)
            loss, metrics = criterion(out, labels=labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), math.inf, foreach=True)
        check_finite(loss, grad_norm, metrics, 0, 0, "stop")
        optimizer.step()

    return step, loss_only_fn(model, criterion, views, labels, args), len(views)


def _leaf(t: Tensor | None) -> Tensor | None:
    """A detached copy that still asks for gradient where the original had one."""
    if t is None or not t.requires_grad:
        return t
    return t.detach().requires_grad_()


def loss_only_fn(
    model: nn.Module,
    criterion: nn.Module,
    views: list[Tensor],
    labels: Tensor,
    args: argparse.Namespace,
) -> Callable[[], None]:
    """criterion forward + backward on leaf copies of one step's outputs: the loss's own cost."""
    with amp_context(args):
        out = model(views)
    leaves = ViewOutputs(
        p=_leaf(out.p),
        k=out.k,
        z=_leaf(out.z),
        h=_leaf(out.h),
        extras={k: _leaf(v) for k, v in out.extras.items()},
    )
    del out  # free the backbone graph before timing

    def loss_only() -> None:
        with amp_context(args):
            loss, _ = criterion(leaves, labels=labels)
        loss.backward()

    return loss_only


def build_peer_step(args: argparse.Namespace) -> Callable[[], None]:
    """lightly's NTXentLoss on our backbone + SimCLR projector, same optimizer and settings."""
    from lightly.loss import NTXentLoss

    model, _ = build_model(args)  # args.method is simclr: our SimCLR backbone + projector
    net = nn.Sequential(model.backbone, model.projector).to(args.device)
    if uses_channels_last(args):
        net = net.to(memory_format=torch.channels_last)
    criterion = NTXentLoss(temperature=args.moco_t)
    optimizer = optimizer_for(net, args)
    net.train()
    x0, x1 = make_views(args)[:2]
    if uses_channels_last(args):
        x0, x1 = (x.contiguous(memory_format=torch.channels_last) for x in (x0, x1))

    def step() -> None:  # lightly's examples/pytorch/simclr.py loop body
        with amp_context(args):
            loss = criterion(net(x0), net(x1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return step
