"""The method registry: ``--method`` -> builder + loss + view recipe. The only module that imports
both models and losses.

A method is one builder plus one loss, chosen by one dict entry; the training loop never names a
method. Each entry's flags live in one argument group below (``add_method_args``), next to the entry,
so adding a method touches this file, its loss file, its test and main.sh/README only.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from functools import partial
from typing import Callable

from torch import Tensor, nn

from data.datasets import dataset_info
from data.representations import REPRESENTATIONS, batch_augment, compute_representations
from data.views import Side, ViewSpec, add_view_args, describe, expand, resolve_sides
from losses.base import ContrastiveLoss
from losses.beclr import BeCLRLoss, bregman_similarity
from losses.dsf import DSFLoss, DSFQueueLoss
from losses.mocov2 import MoCoV2Loss
from losses.mocov3 import MoCoV3Loss
from losses.mvmr import MVMRLoss
from losses.nnclr import NNCLRLoss
from losses.patchmix import PatchMixLoss
from losses.simclr import SimCLRLoss
from losses.snclr import SNCLRLoss
from models import build_backbone
from models.beclr import BeCLRNet
from models.moco import MoCoV3
from models.mocov2 import MoCoV2CIFAR
from models.mvmr import MVMR
from models.mvmr_clip import MVMRCLIP, build_clip_teacher
from models.nnclr import nnclr_heads
from models.patchmix import PatchMixMoCo
from models.simclr import SimCLR
from utils.checkpoint import load_checkpoint
from utils.misc import bool_flag, probability
from utils.optim import add_lars_args


@dataclass(frozen=True)
class KnnSimilarity:
    """A method's own kNN monitor for main_knn.py: which model output it compares, and how."""
    name: str  # main_knn.py --similarity NAME
    features: str  # the main_knn.py --features it implies
    build: Callable[[argparse.Namespace], Callable[[Tensor, Tensor], Tensor]]  # (test, bank) -> sim


@dataclass(frozen=True)
class Method:
    summary: str  # one line for --help and README
    builder: Callable[[argparse.Namespace, nn.Module, int], nn.Module]  # (args, backbone, feat_dim)
    loss: Callable[[argparse.Namespace], ContrastiveLoss]  # args -> criterion, explicit kwargs
    knn: KnnSimilarity | None = None  # None: cosine kNN on the chosen features only

    @staticmethod
    def sides(args: argparse.Namespace) -> list[Side]:
        """The views of args.method (data/views.py METHOD_VIEWS) with the CLI overrides applied."""
        return resolve_sides(args)

    def views(self, args: argparse.Namespace) -> list[ViewSpec]:
        """The augmentation recipe, side-major: [t1 x ns, t2 x ns, local crops ...]."""
        return expand(self.sides(args))

    def describe_views(self, args: argparse.Namespace) -> list[str]:
        """One line per side of the resolved views (printed at the start of a run)."""
        return describe(self.sides(args))


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


METHODS: dict[str, Method] = {
    "mocov3": Method("MoCo v3 (Chen, Xie, He 2021): InfoNCE between predictor and momentum keys",
                     mocov3_builder, lambda a: MoCoV3Loss(a.moco_t)),
    "simclr": Method("SimCLR (Chen et al. 2020): NT-Xent over all views, negatives from all ranks",
                     simclr_builder, lambda a: SimCLRLoss(a.moco_t)),
    "nnclr": Method("NNCLR (Dwibedi et al. 2021): InfoNCE with the positive swapped for its "
                    "nearest neighbour in a support set", nnclr_builder,
                    lambda a: NNCLRLoss(temperature=a.moco_t, queue_size=a.queue_size, dim=a.proj_dim)),
    "snclr": Method("SNCLR (Ge et al. 2023): MoCo v3 InfoNCE plus soft-weighted bank neighbours as "
                    "positives", mocov3_builder,
                    lambda a: SNCLRLoss(temperature=a.moco_t, bank_size=a.bank_size, topk=a.topk,
                                        dim=a.moco_dim, threshold=a.threshold,
                                        detach_weights=a.detach_weights)),
    "beclr": Method("BeCLR (Rezaei et al. 2021): NT-Xent on a deep Bregman divergence + cosine "
                    "NT-Xent", beclr_builder,
                    lambda a: BeCLRLoss(beclr_temperature(a), a.sigma, a.mixed_loss),
                    # the official Trainer.bregman_sim monitor on the sub-network outputs
                    KnnSimilarity("bregman", "subnet",
                                  lambda a: partial(bregman_similarity, sigma=a.sigma))),
    "mvmr": Method("MV-MR (Kinakh et al. 2023): MSE + variance hinge + distance correlation "
                   "between original and augmented views, + dCor with hand-crafted representations",
                   mvmr_builder, lambda a: MVMRLoss(std_margin=a.std_margin, scale=a.mvmr_scale,
                                                   representation_sign=a.mvmr_rep_sign)),
    "patchmix": Method("PatchMix (Shen et al. 2023): soft-target contrasts between patch-mixed and "
                       "original images", patchmix_builder,
                       lambda a: PatchMixLoss(temperature=a.moco_t, smoothing=a.src_smoothing,
                                              m=a.mix_num, mix_smoothing=a.mix_smoothing,
                                              accumulate=a.mix_accumulate)),
    "dsf": Method(
        "DSF (Jeon et al. 2025): CE over -KL between the vMF fits of each image's ns crops",
        dsf_builder,
        lambda a: DSFLoss(r_bar_coeff=a.r_bar_coeff, kappa_normalization=a.kappa_normalization,
                          kld_t=a.kld_t, bessel_sign=a.bessel_sign or "official")),
    "mocov2": Method(
        "MoCo v2, CIFAR demo (Chen et al. 2020): InfoNCE against a queue of past keys",
        mocov2_cifar_builder,
        lambda a: MoCoV2Loss(temperature=a.moco_t, queue_size=a.moco_k, dim=a.moco_dim,
                             symmetric=a.symmetric)),
    "mocov2_dsf": Method(
        "DSF on MoCo v2 CIFAR: CE over [-KL(X||Y) | -KL(X||queue of mean directions)]",
        mocov2_cifar_builder,
        lambda a: DSFQueueLoss(queue_size=a.moco_k, dim=a.moco_dim, r_bar_coeff=a.r_bar_coeff,
                               kappa_normalization=a.kappa_normalization, kld_t=a.kld_t,
                               bessel_sign=a.bessel_sign or "correct", symmetric=a.symmetric)),
    "mvmr_clip": Method("MV-MR distillation (Kinakh et al. 2023): MV-MR with a frozen CLIP image "
                        "encoder's embedding as the representation (1 - dCor with it)",
                        lambda a, b, d: mvmr_clip_builder(a, b, d),  # defined below
                        lambda a: MVMRLoss(std_margin=a.std_margin, scale=a.mvmr_scale,
                                           representation_sign=-1.0)),
}

# main_knn.py --similarity choices beyond cosine, each owned by one method
KNN_SIMILARITIES = {m.knn.name: m.knn for m in METHODS.values() if m.knn is not None}
ALIASES = {"mocov3_dsf": "dsf", "mocov2_cifar": "mocov2"}  # DSF's README spells the method --model=mocov3_dsf


def add_method_args(parser: argparse.ArgumentParser) -> None:
    """Every method's own flags, one argument group per method, and the flags whose default
    depends on the method: views (data/views.py), backbone variant, LARS (utils/optim.py)."""
    add_view_args(parser)
    g = parser.add_argument_group("backbone variant (default: the method's official code)")
    g.add_argument("--zero-init-residual", default=None, type=bool_flag,
                   help="zero the last BN gamma of every ResNet block (default: true for mocov3 "
                        "(main_moco.py) and mvmr (src/model/resnet.py), false otherwise)")
    g.add_argument("--cifar-stem-padding", default=1, type=int,
                   help="padding of the 3x3 CIFAR stem conv (default: 1; solo-learn recipes: 2, "
                        "34 x 34 maps from 32 px)")
    add_lars_args(parser)
    g = parser.add_argument_group("DSF (dsf, mocov2_dsf)")
    g.add_argument("--kld-t", "--kld_t", dest="kld_t", default=1.0, type=float,
                   help="temperature dividing the -KL logits (default: 1.0, DSF's). DSF ignores "
                        "--moco-t, although its README passes --moco-t 0.2")
    g.add_argument("--r-bar-coeff", "--R_bar_coeff", dest="r_bar_coeff", default=0.95, type=float,
                   help="scale on the crops' mean resultant length R (default: 0.95); caps R "
                        "below 1 so kappa stays finite (1.0 lets kappa reach ~1e8 x D)")
    g.add_argument("--kappa-normalization", "--kappa_normalization", dest="kappa_normalization",
                   default=True, type=bool_flag,
                   help="divide every kappa by the embedding dim D (default: True, DSF's)")
    g.add_argument("--bessel-sign", default=None, choices=["official", "correct"],
                   help="sign of log(S_Y/S_X) in the Debye expansion. Default: each variant's "
                        "official code: dsf 'official' (the MoCo v3 code's '-', docs/methods.md "
                        "5.6-1), mocov2_dsf 'correct' ('+', which that code already uses)")
    g = parser.add_argument_group("MoCo v2 CIFAR (mocov2, mocov2_dsf)")
    g.add_argument("--moco-k", default=4096, type=int,
                   help="queue size K (default: 4096); keep it a multiple of the global batch "
                        "(x2 with --symmetric) so no key is dropped at the wrap-around")
    g.add_argument("--bn-splits", default=8, type=int,
                   help="SplitBatchNorm groups per process (default: 8, the demo's simulated "
                        "8 GPUs; 1 = plain BN). The per-process batch x ns must divide by it")
    g.add_argument("--symmetric", default=False, type=bool_flag,
                   help="also score branch 2 -> branch 1 (default: False, the official "
                        "x1 -> x2 only; True costs 2x the compute)")
    g.add_argument("--randaugment-p", default=0.5, type=probability,
                   help="probability of torchvision's RandAugment (2 ops, magnitude 9) after the "
                        "crop (default: 0.5, DSF's CIFAR transform; 0 = off)")
    g = parser.add_argument_group("SimCLR / NNCLR / BeCLR projector")
    g.add_argument("--proj-hidden-dim", default=2048, type=int,
                   help="hidden width of the SimCLR projector (solo-learn: 2048)")
    g.add_argument("--proj-dim", default=256, type=int,
                   help="output width of the SimCLR projector (solo-learn: 256)")
    g.add_argument("--pred-hidden-dim", "--pred_hidden_dim", dest="pred_hidden_dim", default=4096,
                   type=int, help="NNCLR predictor hidden width (paper, solo-learn: 4096)")
    g = parser.add_argument_group("NNCLR")
    g.add_argument("--queue-size", "--queue_size", dest="queue_size", default=98304, type=int,
                   help="NNCLR support-set rows, shared by all ranks (default 98304, the paper's; "
                        "solo-learn CIFAR: 65536). Use a multiple of the global batch: at the "
                        "wrap-around the tail of a batch is dropped (solo-learn asserts instead)")
    g = parser.add_argument_group("SNCLR")
    g.add_argument("--bank-size", "--bank_size", dest="bank_size", default=98304, type=int,
                   help="SNCLR bank rows PER RANK (default 98304 = the official builder default; "
                        "official recipe start.sh and main_log.py: 128000)")
    g.add_argument("--topk", default=5, type=int,
                   help="SNCLR neighbours per key K (default 5 = code default; recipe: 30)")
    g.add_argument("--threshold", nargs="?", const=True, default=False, type=bool_flag,
                   help="keep only soft weights w > 1/K (official flag, default off)")
    g.add_argument("--detach-weights", nargs="?", const=True, default=False, type=bool_flag,
                   help="stop the gradient the official soft weights send into the projector "
                        "(default false = official behaviour)")
    g = parser.add_argument_group("BeCLR")
    g.add_argument("--k-subs", "--k_subs", dest="k_subs", default=None, type=int,
                   help="number of sub-networks K (default: 100 CIFAR/STL as main.py, 200 "
                        "imagenet/in100 as main_imgnet.py). Watch active_frac: < 0.1 = collapse")
    g.add_argument("--subnet-hidden", "--layer_size", dest="subnet_hidden", default=None, type=int,
                   help="hidden width H of each Linear(128,H)-ReLU-Dropout-Linear(H,1) (default: 512 "
                        "CIFAR/STL, 100 ImageNet; the official --layer_size could not be set from its CLI)")
    g.add_argument("--subnet-dropout", default=0.2, type=probability,
                   help="dropout in each sub-network (official 0.2: makes phi random in train mode)")
    g.add_argument("--sigma", default=0.9, type=float,
                   help="Bregman bandwidth, s = exp(-d / 2 sigma^2) (training 0.9; the official kNN "
                        "monitor uses 1.0: main_knn.py --sigma)")
    g.add_argument("--feature-dim", "--feature_dim", "--fc_dim", dest="feature_dim", default=128,
                   type=int, help="fc_out width (default 128; README --feature_dim, main.py --fc_dim)")
    g.add_argument("--temperature", default=None, type=float,
                   help="T of both BeCLR terms (default 0.5 CIFAR/STL, 0.1 imagenet/in100; BeCLR "
                        "ignores --moco-t). The official README and code disagree on batch (512/1024 "
                        "vs code 64) and k_nn (200 vs code 50), not on T; we follow the code")
    g.add_argument("--mixed-loss", default=True, type=bool_flag,
                   help="add the cosine NT-Xent on fc_out (official Trainer.mixed_loss=True)")
    g = parser.add_argument_group("MV-MR")
    g.add_argument("--proj-dims", "--out_dim", dest="proj_dims", default="8192-8192-8192",
                   help="MV-MR projector sizes 'hidden-...-D' (official 8192-8192-8192); not "
                        "--proj-dim (SimCLR). Shrink to e.g. 512-512-512 on CPU")
    g.add_argument("--std-margin", "--std_margin", dest="std_margin", default=1.0, type=float,
                   help="margin of the per-dimension std hinge (official std_margin: 1)")
    g.add_argument("--mvmr-scale", default=32.0, type=float,
                   help="z is divided by this before dCor (official fp16 trick: 32; 1 = off)")
    g.add_argument("--representation-sign", "--mvmr-rep-sign", dest="mvmr_rep_sign", default=1.0,
                   type=float, help="sign of the representation dCor terms: +1 = official code "
                                    "(minimises them), -1 = paper/README ('maximise dependence')")
    g.add_argument("--representations", "--mvmr-reps", dest="mvmr_reps",
                   default="pixels,scatnet,augment,hog,std",
                   type=lambda s: [n for n in s.split(",") if n],
                   help="comma list from data/representations.py (default: the official five; "
                        "scatnet needs kymatio (in requirements.txt); "
                        "hog_linear / augment_per_image turn the oddities off)")
    g.add_argument("--mvmr-small-kernel", default=None, type=bool_flag,
                   help="3x3/1 conv1 with max-pool kept (official small_kernel; default: "
                        "img_size <= 96)")
    add_mvmr_clip_args(parser)
    g = parser.add_argument_group("PatchMix")
    g.add_argument("--mix-num", "--mix_num", dest="mix_num", default=2, type=int,
                   help="images per mixed image m (official: 2; 1 = no mixing)")
    g.add_argument("--mix-size", "--mix_size", dest="mix_size", default=None, type=int,
                   help="side in pixels of a mixed patch (official: the ViT patch size, 16 at "
                        "224 px, 2 at 32 px). Default: --patch-size for ViTs, ceil(img_size / 16) "
                        "for ResNets. Must divide every crop size, local crops included")
    g.add_argument("--mix-p", "--mix_p", dest="mix_p", default=1.0, type=probability,
                   help="probability of mixing at a step (official: 1.0). Drawn once per step for "
                        "all mixes; the official code draws it per mixed batch")
    g.add_argument("--src-smoothing", default=0.1, type=probability,
                   help="label smoothing of the original->original and local-crop targets (default "
                        "0.1: what the official code does, via a default argument of its no_mixer, "
                        "although its config says smoothing = 0.0; 0 = one-hot targets)")
    g.add_argument("--mix-smoothing", "--smoothing", dest="mix_smoothing", default=0.0, type=probability,
                   help="label smoothing of the mixed targets (official config 'smoothing': 0.0)")
    g.add_argument("--mix-accumulate", default=False, type=bool_flag,
                   help="add target weights of a column listed twice instead of overwriting them "
                        "(the official scatter_ overwrites; differs only when the per-GPU batch "
                        "is < 2 x mix-num - 1). Default false = official")
    g.add_argument("--momentum-encoder", "--use-moco", "--use_moco", dest="momentum_encoder",
                   default=True, type=bool_flag,
                   help="keys from an EMA encoder (default true, official ViT-S/B); false = keys "
                        "are the online projector outputs without gradient (official ViT-T config)")
    g.add_argument("--local-crops", "--multi-crop-num", "--multi_crop_num", dest="local_crops",
                   default=0, type=int,
                   help="local crops per image (official: 8 on ImageNet, 0 on CIFAR)")
    g.add_argument("--local-crop-size", "--multi-crop-size", "--multi_crop_size",
                   dest="local_crop_size", default=96, type=int,
                   help="local crop side in px (official ImageNet: 96)")
    g.add_argument("--local-crop-min", default=0.05, type=float,
                   help="local crops' min RandomResizedCrop scale; their max is --crop-min "
                        "(official ImageNet: 0.05 and 0.35; the official config calls it min_crop)")


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


def build_model(args: argparse.Namespace) -> tuple[nn.Module, nn.Module]:
    """(model, backbone) for args.method, with the backbone built from the run's options."""
    backbone, feat_dim = build_backbone(args.arch, **backbone_kwargs(vars(args)))
    return METHODS[args.method].builder(args, backbone, feat_dim), backbone


def load_pretrained(path: str) -> tuple[nn.Module, dict]:
    """The full pretrained model of one of this suite's checkpoints (kNN on projector/sub-network
    outputs needs more than the backbone), in eval mode, and its args."""
    ckpt = load_checkpoint(path)
    if "model" not in ckpt or "args" not in ckpt:
        raise SystemExit(f"error: {path} is not a checkpoint of this suite's main_pretrain.py "
                         "(only --features backbone works with moco-v3/DSF checkpoints)")
    args = argparse.Namespace(**ckpt["args"])
    model, _ = build_model(args)
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt["args"]


# ============ MV-MR CLIP distillation (docs/protocols.md section 2) ============


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


def add_mvmr_clip_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("MV-MR CLIP distillation (mvmr_clip; also reads the MV-MR flags)")
    g.add_argument("--clip-model", default="ViT-B-16",
                   help="open_clip teacher architecture (official: ViT-B-16)")
    g.add_argument("--clip-pretrained", default="laion400m_e32",
                   help="open_clip weights tag (official: laion400m_e32; 'none' = random, tests "
                        "only); downloaded once, see docs/protocols.md")
    g.add_argument("--clip-image-size", default=None, type=int,
                   help="teacher input size in pixels (default: the model's, 224); tests only")
    g.add_argument("--clip-renormalize", default=False, type=bool_flag,
                   help="give CLIP its own input statistics (default: false = official, the "
                        "student's normalised view as it is)")
