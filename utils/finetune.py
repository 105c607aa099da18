"""Fine-tuning plumbing on timm: classifier wrapper, optimizer (layer-wise lr decay), schedules,
Mixup/CutMix, the loss that goes with them, and the weight EMA.

Each piece is timm's own object, configured from main_finetune.py's flags, so the recipes behave
as DeiT/PatchMix (which call the same timm functions) do.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch import Tensor, nn


class Classifier(nn.Module):
    """backbone (images -> features [B, D]) + a fresh Linear head (features -> logits [B, C]).

    Exposes timm's `group_matcher` / `no_weight_decay` of the backbone under the `backbone.`
    prefix, so timm's layer-wise lr decay groups it as it groups its own ViT (head: last layer).
    """

    def __init__(self, backbone: nn.Module, num_features: int, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(num_features, num_classes)  # PyTorch's default init (PatchMix, MV-MR)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))

    def group_matcher(self, coarse: bool = False) -> dict:
        if not hasattr(self.backbone, "group_matcher"):
            raise SystemExit("error: --layer-decay needs a ViT backbone (a ResNet has no layers "
                             "to group); drop --layer-decay")
        return {name: _prefixed(spec) for name, spec in
                self.backbone.group_matcher(coarse).items()}

    def no_weight_decay(self) -> set[str]:
        inner = getattr(self.backbone, "no_weight_decay", lambda: set())()
        return {f"backbone.{name}" for name in inner}


def _prefixed(spec: Any) -> Any:
    """A timm group-matcher spec (regex, or list of (regex, ordinal)) anchored under backbone."""
    if isinstance(spec, str):
        return re.sub(r"^\^", r"^backbone\\.", spec)
    return [(_prefixed(pattern), ordinal) for pattern, ordinal in spec]


def set_drop_path(backbone: nn.Module, rate: float) -> None:
    """Stochastic depth growing linearly from 0 to `rate` over the ViT's blocks (timm's rule);
    the pretrained encoder was rebuilt without it."""
    blocks = getattr(backbone, "blocks", None)
    if blocks is None:
        if rate > 0:
            raise SystemExit("error: --drop-path needs a ViT backbone; drop it for a ResNet")
        return
    for block, r in zip(blocks, torch.linspace(0, rate, len(blocks)).tolist(), strict=True):
        block.drop_path.drop_prob = r


def unfreeze_pos_embed(backbone: nn.Module) -> None:
    """Make a fixed (sin-cos) position embedding trainable, as DeiT does when it loads a moco-v3
    checkpoint into its learnable one."""
    if not hasattr(backbone, "pos_embed"):
        raise SystemExit("error: --train-pos-embed needs a ViT backbone; drop it for a ResNet")
    backbone.pos_embed.requires_grad_(True)


def build_optimizer(model: nn.Module, args: Any) -> torch.optim.Optimizer:
    """timm's optimizer factory: no decay on 1-D parameters and the model's no_weight_decay list
    (unless --wd-exclude-norm-bias false), lr_scale per layer with --layer-decay."""
    extra = {"eps": args.opt_eps} if args.opt in ("adam", "adamw") else {}
    return create_optimizer_v2(model, opt=args.opt, lr=args.lr_effective,
                               weight_decay=args.weight_decay, momentum=args.momentum,
                               filter_bias_and_bn=args.wd_exclude_norm_bias,
                               layer_decay=args.layer_decay, **extra)


def build_scheduler(optimizer: torch.optim.Optimizer, args: Any, iters: int
                    ) -> CosineLRScheduler | None:
    """timm's cosine with linear warmup from --warmup-lr (DeiT's create_scheduler settings), in
    epochs (--sched-per-epoch) or in steps; None for the other --sched choices."""
    if args.sched != "cosine":
        return None
    unit = 1 if args.sched_per_epoch else iters
    return CosineLRScheduler(optimizer, t_initial=args.epochs * unit, lr_min=args.min_lr,
                             warmup_t=round(args.warmup_epochs * unit),
                             warmup_lr_init=args.warmup_lr, t_in_epochs=args.sched_per_epoch)


def set_lr(optimizer: torch.optim.Optimizer, scheduler: CosineLRScheduler | None, epoch: int,
           step: int, iters: int, args: Any) -> float:
    """Set every group's lr for this step (a pure function of epoch and step: exact resume).

    cosine: timm's scheduler; with --sched-epoch-lag, epoch e runs at the value of e - 1, as
    DeiT/PatchMix call ``step(epoch)`` after training epoch e. mvmr: MV-MR's CosineAnnealingLR
    whose period is the number of batches but which Lightning steps once per epoch. constant: BeCLR.
    """
    if scheduler is not None:
        if args.sched_per_epoch:
            scheduler.step(max(epoch - 1, 0) if args.sched_epoch_lag else epoch)
        else:
            scheduler.step_update(epoch * iters + step)
        return optimizer.param_groups[0]["lr"] / optimizer.param_groups[0].get("lr_scale", 1.0)
    lr = args.lr_effective
    if args.sched == "mvmr":
        lr = lr * 0.5 * (1.0 + math.cos(math.pi * epoch / iters))
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    return lr


def build_mixup(args: Any, num_classes: int) -> Mixup | None:
    """timm's Mixup/CutMix (batch mode) with label smoothing in its targets; None when off."""
    if args.mixup <= 0 and args.cutmix <= 0:
        return None
    return Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, prob=args.mixup_prob,
                 switch_prob=args.mixup_switch_prob, mode="batch",
                 label_smoothing=args.smoothing, num_classes=num_classes)


def build_criterion(args: Any, mixup: Mixup | None) -> nn.Module:
    """DeiT/PatchMix: soft-target CE under Mixup, else label-smoothed CE, else plain CE."""
    if mixup is not None:
        return SoftTargetCrossEntropy()
    if args.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    return nn.CrossEntropyLoss()


def build_ema(model: nn.Module, args: Any) -> ModelEmaV3 | None:
    """timm's weight EMA (DeiT/PatchMix ModelEma: constant decay, updated after every step)."""
    return ModelEmaV3(model, decay=args.model_ema_decay) if args.model_ema else None


@torch.no_grad()
def accuracy(logits: Tensor, labels: Tensor) -> tuple[float, float]:
    """Top-1 and top-5 accuracy (%) of logits [N, C] against labels [N]."""
    top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
    top1 = 100.0 * float((top5[:, 0] == labels).float().mean())
    return top1, 100.0 * float((top5 == labels[:, None]).any(1).float().mean())
