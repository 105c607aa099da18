"""The builders of the registry (models/methods.py): (args, backbone, feat_dim) -> model, and the
backbone options a method fixes.

A builder reads the run's args and wires a model of models/ (heads, momentum encoder, mixing)
around a backbone; it computes no loss. ``backbone_kwargs`` turns a run's args (or a checkpoint's
saved args) into the options of ``models.build_backbone``, with each method's stem from
METHOD_BACKBONE, so evaluation (models/encoder.py) rebuilds the backbone the pretraining trained.
"""

from __future__ import annotations

import argparse
from functools import partial
from typing import Callable

from torch import nn

from data.datasets import dataset_info
from data.representations import REPRESENTATIONS, batch_augment, compute_representations
from models.beclr import BeCLRNet
from models.moco import MoCoV3
from models.mocov2 import MoCoV2CIFAR
from models.mvmr import MVMR
from models.mvmr_clip import MVMRCLIP, build_clip_teacher
from models.nnclr import nnclr_heads
from models.patchmix import PatchMixMoCo
from models.simclr import SimCLR
from utils.misc import bool_flag


def is_vit(args: argparse.Namespace) -> bool:
    return args.arch.startswith("vit")


def mocov3_builder(args: argparse.Namespace, backbone: nn.Module, feat_dim: int,
                   **kwargs) -> MoCoV3:
    """MoCo v3 heads (docs/methods.md §1.1): ViT 3-layer projector; ResNet 2-layer, predictor w/o last BN."""
    vit = is_vit(args)
    return MoCoV3(backbone, feat_dim, dim=args.moco_dim, mlp_dim=args.moco_mlp_dim,
                  proj_layers=3 if vit else 2, pred_layers=2, proj_last_bn=True, pred_last_bn=vit,
                  **kwargs)


def simclr_builder(args: argparse.Namespace, backbone: nn.Module, feat_dim: int) -> SimCLR:
    """solo-learn's SimCLR projector: Linear -> ReLU -> Linear (2048 -> 256 by default)."""
    projector = nn.Sequential(nn.Linear(feat_dim, args.proj_hidden_dim), nn.ReLU(inplace=True),
                              nn.Linear(args.proj_hidden_dim, args.proj_dim))
    return SimCLR(backbone, feat_dim, projector)


def nnclr_builder(args: argparse.Namespace, backbone: nn.Module, feat_dim: int) -> SimCLR:
    """NNCLR heads (docs/methods.md §4); each view forwarded separately (BN per view, as solo-learn)."""
    projector, predictor = nnclr_heads(feat_dim, hidden=args.proj_hidden_dim,
                                       pred_hidden=args.pred_hidden_dim, out=args.proj_dim)
    return SimCLR(backbone, feat_dim, projector, predictor)


def beclr_imagenet(args: argparse.Namespace) -> bool:
    return args.dataset in ("imagenet", "in100")  # main_imgnet.py / model_imgnet.py


def beclr_builder(args: argparse.Namespace, backbone: nn.Module, feat_dim: int) -> BeCLRNet:
    """CIFAR/STL: BN projector + normalised fc_out (model.py); ImageNet: no BN, not normalised."""
    imnet = beclr_imagenet(args)
    return BeCLRNet(backbone, feat_dim, feature_dim=args.feature_dim,
                    k_subs=args.k_subs or (200 if imnet else 100),
                    subnet_hidden=args.subnet_hidden or (100 if imnet else 512),
                    dropout=args.subnet_dropout, normalize=not imnet, proj_bn=not imnet)


def beclr_temperature(args: argparse.Namespace) -> float:
    if args.temperature is not None:
        return args.temperature
    return 0.1 if beclr_imagenet(args) else 0.5


def mvmr_builder(args: argparse.Namespace, backbone: nn.Module, feat_dim: int) -> MVMR:
    """MV-MR (docs/methods.md §7.1): official projector; representations of the original view.
    The stem and zero-init come from mvmr_stem (METHOD_BACKBONE), so evaluation rebuilds them."""
    unknown = sorted(set(args.mvmr_reps) - set(REPRESENTATIONS))
    if unknown:
        raise SystemExit(f"error: unknown --mvmr-reps {unknown}; choose from {list(REPRESENTATIONS)}")
    reps = partial(compute_representations, names=list(args.mvmr_reps),
                   augment=batch_augment(args.img_size))
    model = MVMR(backbone, feat_dim, proj_dims=args.proj_dims, representations=reps)
    model.sync_bn = False  # the official Lightning Trainer has no sync_batchnorm: BN per GPU
    return model


def patchmix_mix_size(args: argparse.Namespace) -> int:
    """--mix-size, else the ViT patch size (official), else ceil(img_size / 16) for ResNets."""
    if args.mix_size:
        return args.mix_size
    if is_vit(args):
        return backbone_kwargs(vars(args))["patch_size"]
    return -(-args.img_size // 16)  # about a 16 x 16 grid, as the official 32 px / patch 2


def patchmix_builder(args: argparse.Namespace, backbone: nn.Module, feat_dim: int) -> PatchMixMoCo:
    """MoCo v3 heads (ViT: 3-layer projector, 2-layer predictor, both with last BN) + mixing."""
    vit = is_vit(args)
    return PatchMixMoCo(backbone, feat_dim, dim=args.moco_dim, mlp_dim=args.moco_mlp_dim,
                        proj_layers=3 if vit else 2, pred_layers=2, proj_last_bn=True,
                        pred_last_bn=vit, momentum_encoder=args.momentum_encoder,
                        mix_size=patchmix_mix_size(args), mix_num=args.mix_num, mix_p=args.mix_p)


def dsf_builder(args: argparse.Namespace, backbone: nn.Module, feat_dim: int) -> MoCoV3:
    """MoCo v3 heads; each branch's ns crops are one forward (DSF's x.view(-1, C, H, W))."""
    return mocov3_builder(args, backbone, feat_dim, group_size=args.ns)


def mocov2_cifar_builder(args: argparse.Namespace, backbone: nn.Module,
                         feat_dim: int) -> MoCoV2CIFAR:
    """MoCo CIFAR demo: SplitBN backbone, Linear-ReLU-Linear head, ShuffleBN momentum encoder."""
    return MoCoV2CIFAR(backbone, feat_dim, dim=args.moco_dim, bn_splits=args.bn_splits,
                       symmetric=args.symmetric)


def mvmr_clip_builder(args: argparse.Namespace, backbone: nn.Module, feat_dim: int) -> MVMRCLIP:
    """MV-MR student (as mvmr_builder, no hand-crafted representations) + frozen CLIP teacher."""
    teacher = partial(build_clip_teacher, args.clip_model, args.clip_pretrained,
                      args.clip_image_size)  # loaded at the first training step
    renormalize = None
    if args.clip_renormalize:  # the official run feeds CLIP the student's normalisation
        info = dataset_info(args.dataset)
        mean, std = getattr(args, "mean", None) or info.mean, getattr(args, "std", None) or info.std
        renormalize = (tuple(mean), tuple(std))
    model = MVMRCLIP(backbone, feat_dim, teacher, proj_dims=args.proj_dims,
                     renormalize=renormalize)
    model.sync_bn = False  # as mvmr: the official Lightning Trainer has no sync_batchnorm
    return model


# ============ backbone options ============


def add_backbone_args(parser: argparse.ArgumentParser) -> None:
    """The flags that override a method's backbone variant (METHOD_BACKBONE) in backbone_kwargs."""
    g = parser.add_argument_group("backbone variant (default: the method's official code)")
    g.add_argument("--zero-init-residual", default=None, type=bool_flag,
                   help="zero the last BN gamma of every ResNet block (default: per method: true for "
                        "mocov3 and mvmr)")
    g.add_argument("--cifar-stem-padding", default=1, type=int,
                   help="padding of the 3x3 CIFAR stem conv (default: 1; solo-learn recipes: 2)")


def backbone_kwargs(args: dict) -> dict:
    """build_backbone options from a run's args (a dict: also a checkpoint's saved args)."""
    img_size = args["img_size"]
    patch = args.get("patch_size") or (16 if img_size >= 128 else 4)
    kwargs = dict(img_size=img_size, width=args.get("width", 64), patch_size=patch,
                  stop_grad_conv1=args.get("stop_grad_conv1", False),
                  drop_path=args.get("drop_path", 0.0),
                  cifar_stem_padding=args.get("cifar_stem_padding") or 1)
    if args.get("method") in METHOD_BACKBONE:
        kwargs.update(METHOD_BACKBONE[args["method"]](args))
    if args.get("zero_init_residual") is not None:  # the flag wins over the method's default
        kwargs["zero_init_residual"] = args["zero_init_residual"]
    return kwargs


def mvmr_stem(args: dict) -> dict:
    """MV-MR's ResNet: 3x3/1 conv1 with the max-pool KEPT for STL/CIFAR (official small_kernel),
    zero_init_residual=True (docs/methods.md §7.1)."""
    small = args.get("mvmr_small_kernel")
    return dict(cifar_stem=args["img_size"] <= 96 if small is None else small, keep_maxpool=True,
                zero_init_residual=True)


def beclr_stem(args: dict) -> dict:
    """BeCLR model.py swaps conv1 for a 3x3/1 conv and drops the max-pool for every main.py
    dataset (STL-10's 96 px included); model_imgnet.py keeps torchvision's stem, and so do other
    datasets above 96 px (a 3x3 stem at 224 px would cost ~16x the compute in layer1)."""
    imagenet = args.get("dataset") in ("imagenet", "in50", "in100", "in200")
    return dict(cifar_stem=not imagenet and args["img_size"] <= 96)


# backbone options a method fixes, from the run's args: evaluation rebuilds the same backbone
METHOD_BACKBONE: dict[str, Callable[[dict], dict]] = {
    "mocov3": lambda a: {"zero_init_residual": True},  # main_moco.py: resnet(zero_init_residual=True)
    "mvmr": mvmr_stem,
    "mvmr_clip": mvmr_stem,
    "beclr": beclr_stem,
    "patchmix": lambda a: {"pos_embed": "learnable"},  # PatchMix keeps timm's learnable pos-embed
}
