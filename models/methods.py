"""The method registry: ``--method`` -> builder + loss + argument groups. The only module that
imports both models and losses; the training loop never names a method.

One METHODS entry per method: summary, builder (models/builders.py), loss factory (losses/<key>.py)
and the argument groups of the flags it reads, defined right above METHODS. Adding a method touches
its loss file, its entry and argument group here, its views in data/views.py, its test
tests/test_loss_<key>.py, its bundled config and its README row (plus models/builders.py if it
needs a new builder or backbone stem)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from functools import partial
from typing import Callable

from torch import Tensor, nn

from data.views import MVMR_POLICIES, Side, ViewSpec, add_view_args, describe, expand, resolve_sides
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
from models import build_backbone, builders
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
    add_args: tuple[Callable[[argparse.ArgumentParser], None], ...] = ()  # its argument groups

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


# ============ each method's argument group (its flags), named by its METHODS entry ============


def simclr_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("SimCLR / NNCLR / BeCLR projector")
    g.add_argument("--proj-hidden-dim", default=2048, type=int,
                   help="hidden width of the SimCLR projector (default: 2048)")
    g.add_argument("--proj-dim", default=256, type=int,
                   help="output width of the SimCLR projector (default: 256)")
    g.add_argument("--pred-hidden-dim", "--pred_hidden_dim", dest="pred_hidden_dim", default=4096,
                   type=int, help="hidden width of the NNCLR predictor (default: 4096)")


def nnclr_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("NNCLR")
    g.add_argument("--queue-size", "--queue_size", dest="queue_size", default=98304, type=int,
                   help="support-set rows shared by all ranks, a multiple of the global batch (default: "
                        "98304; recipes: 65536)")


def snclr_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("SNCLR")
    g.add_argument("--bank-size", "--bank_size", dest="bank_size", default=98304, type=int,
                   help="bank rows per rank (default: 98304; the SNCLR recipe: 128000)")
    g.add_argument("--topk", default=5, type=int,
                   help="neighbours K per key (default: 5; the SNCLR recipe: 30)")
    g.add_argument("--threshold", nargs="?", const=True, default=False, type=bool_flag,
                   help="keep only soft weights w > 1/K (default: off)")
    g.add_argument("--detach-weights", nargs="?", const=True, default=False, type=bool_flag,
                   help="stop the gradient the soft weights send into the projector (default: false)")


def beclr_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("BeCLR")
    g.add_argument("--k-subs", "--k_subs", dest="k_subs", default=None, type=int,
                   help="number of sub-networks K (default: 100 CIFAR/STL, 200 ImageNet); active_frac "
                        "< 0.1 means collapse")
    g.add_argument("--subnet-hidden", "--layer_size", dest="subnet_hidden", default=None, type=int,
                   help="hidden width H of each Linear(128,H)-ReLU-Dropout-Linear(H,1) (default: 512 "
                        "CIFAR/STL, 100 ImageNet)")
    g.add_argument("--subnet-dropout", default=0.2, type=probability,
                   help="dropout in each sub-network (default: 0.2; 0 makes the divergence deterministic)")
    g.add_argument("--sigma", default=0.9, type=float,
                   help="training Bregman bandwidth, s = exp(-d / 2 sigma^2) (default: 0.9); the kNN's "
                        "is main_knn.py --sigma")
    g.add_argument("--feature-dim", "--feature_dim", "--fc_dim", dest="feature_dim", default=128,
                   type=int, help="fc_out width (default: 128)")
    g.add_argument("--temperature", default=None, type=float,
                   help="T of both BeCLR terms (default: 0.5 CIFAR/STL, 0.1 ImageNet); BeCLR ignores "
                        "--moco-t")
    g.add_argument("--mixed-loss", default=True, type=bool_flag,
                   help="add the cosine NT-Xent on fc_out (default: true)")


def mvmr_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("MV-MR")
    g.add_argument("--proj-dims", "--out_dim", dest="proj_dims", default="8192-8192-8192",
                   help="projector sizes 'hidden-...-D' (default: 8192-8192-8192; e.g. 512-512-512 on a "
                        "CPU)")
    g.add_argument("--std-margin", "--std_margin", dest="std_margin", default=1.0, type=float,
                   help="margin of the per-dimension std hinge (default: 1)")
    g.add_argument("--mvmr-scale", default=32.0, type=float,
                   help="divide z by this before dCor, for fp16 (default: 32; 1 = off)")
    g.add_argument("--representation-sign", "--mvmr-rep-sign", dest="mvmr_rep_sign", default=1.0,
                   type=float, help="sign of the representation dCor terms: +1 minimises them (default), "
                                    "-1 maximises them")
    g.add_argument("--representations", "--mvmr-reps", dest="mvmr_reps",
                   default="pixels,scatnet,augment,hog,std",
                   type=lambda s: [n for n in s.split(",") if n],
                   help="comma list of data/representations.py names (default: "
                        "pixels,scatnet,augment,hog,std)")
    g.add_argument("--mvmr-small-kernel", default=None, type=bool_flag,
                   help="3x3 stride-1 conv1, max-pool kept (default: on at img_size <= 96)")
    g.add_argument("--mvmr-policy", "--aug_policy", dest="mvmr_policy", default="auto",
                   choices=MVMR_POLICIES,
                   help="augmented view (default: auto = cifar20 at <= 64 px, else custom; cifar = "
                        "RandomCrop(32, padding 4) + flip)")


def patchmix_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("PatchMix")
    g.add_argument("--mix-num", "--mix_num", dest="mix_num", default=2, type=int,
                   help="images per mixed image m (default: 2; 1 = no mixing)")
    g.add_argument("--mix-size", "--mix_size", dest="mix_size", default=None, type=int,
                   help="side in px of a mixed patch, dividing every crop size (default: --patch-size; "
                        "ResNets: ceil(img_size/16))")
    g.add_argument("--mix-p", "--mix_p", dest="mix_p", default=1.0, type=probability,
                   help="probability of mixing, drawn once per step for all mixes (default: 1.0)")
    g.add_argument("--src-smoothing", default=0.1, type=probability,
                   help="label smoothing of the original->original and local-crop targets (default: 0.1; "
                        "0 = one-hot)")
    g.add_argument("--mix-smoothing", "--smoothing", dest="mix_smoothing", default=0.0, type=probability,
                   help="label smoothing of the mixed targets (default: 0.0)")
    g.add_argument("--mix-accumulate", default=False, type=bool_flag,
                   help="add, not overwrite, the weights of a repeated target column (per-GPU batch < "
                        "2 x mix-num - 1) (default: false)")
    g.add_argument("--momentum-encoder", "--use-moco", "--use_moco", dest="momentum_encoder",
                   default=True, type=bool_flag,
                   help="keys from an EMA encoder (default: true); false = online projector outputs "
                        "without gradient (ViT-T recipes)")
    g.add_argument("--local-crops", "--multi-crop-num", "--multi_crop_num", dest="local_crops",
                   default=0, type=int,
                   help="local crops per image (default: 0; ImageNet recipes: 8)")
    g.add_argument("--local-crop-size", "--multi-crop-size", "--multi_crop_size",
                   dest="local_crop_size", default=96, type=int,
                   help="local crop side in px (default: 96)")
    g.add_argument("--local-crop-min", default=0.05, type=float,
                   help="min RandomResizedCrop scale of the local crops, whose max is --crop-min (default: "
                        "0.05)")


def dsf_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("DSF (dsf, mocov2_dsf)")
    g.add_argument("--kld-t", "--kld_t", dest="kld_t", default=1.0, type=float,
                   help="temperature dividing the -KL logits (default: 1.0); DSF ignores --moco-t")
    g.add_argument("--r-bar-coeff", "--R_bar_coeff", dest="r_bar_coeff", default=0.95, type=float,
                   help="scale on the crops' mean resultant length R, keeping kappa finite (default: 0.95)")
    g.add_argument("--kappa-normalization", "--kappa_normalization", dest="kappa_normalization",
                   default=True, type=bool_flag,
                   help="divide every kappa by the embedding dim D (default: true)")
    g.add_argument("--bessel-sign", default=None, choices=["official", "correct"],
                   help="sign of log(S_Y/S_X) in the Debye expansion (default: per method, "
                        "docs/methods.md §5.6-1)")


def mocov2_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("MoCo v2 CIFAR (mocov2, mocov2_dsf)")
    g.add_argument("--moco-k", default=4096, type=int,
                   help="queue size K (default: 4096); keep it a multiple of the global batch (x2 with "
                        "--symmetric)")
    g.add_argument("--bn-splits", default=8, type=int,
                   help="SplitBatchNorm groups per process, dividing batch x ns (default: 8; 1 = plain BN)")
    g.add_argument("--symmetric", default=False, type=bool_flag,
                   help="also score branch 2 -> branch 1, at twice the compute (default: false)")
    g.add_argument("--randaugment-p", default=0.5, type=probability,
                   help="probability of RandAugment (2 ops, magnitude 9) after the crop (default: 0.5; "
                        "0 = off)")


def mvmr_clip_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("MV-MR CLIP distillation (mvmr_clip; also reads the MV-MR flags)")
    g.add_argument("--clip-model", default="ViT-B-16",
                   help="open_clip teacher architecture (default: ViT-B-16)")
    g.add_argument("--clip-pretrained", default="laion400m_e32",
                   help="open_clip weights tag, downloaded once (default: laion400m_e32; 'none' = random, "
                        "for tests)")
    g.add_argument("--clip-image-size", default=None, type=int,
                   help="teacher input size in px (default: the model's, 224); for tests")
    g.add_argument("--clip-renormalize", default=False, type=bool_flag,
                   help="normalise CLIP's input with its own statistics (default: false: the student's "
                        "view as it is)")


METHODS: dict[str, Method] = {  # mocov3's flags: main_pretrain.py's shared "MoCo v3" group
    "mocov3": Method("MoCo v3 (Chen, Xie, He 2021): InfoNCE between predictor and momentum keys",
                     builders.mocov3_builder, lambda a: MoCoV3Loss(a.moco_t)),
    "simclr": Method("SimCLR (Chen et al. 2020): NT-Xent over all views, negatives from all ranks",
                     builders.simclr_builder, lambda a: SimCLRLoss(a.moco_t),
                     add_args=(simclr_args,)),
    "nnclr": Method("NNCLR (Dwibedi et al. 2021): InfoNCE with the positive swapped for its "
                    "nearest neighbour in a support set", builders.nnclr_builder,
                    lambda a: NNCLRLoss(temperature=a.moco_t, queue_size=a.queue_size,
                                        dim=a.proj_dim),
                    add_args=(simclr_args, nnclr_args)),
    "snclr": Method("SNCLR (Ge et al. 2023): MoCo v3 InfoNCE plus soft-weighted bank neighbours as "
                    "positives", builders.mocov3_builder,
                    lambda a: SNCLRLoss(temperature=a.moco_t, bank_size=a.bank_size, topk=a.topk,
                                        dim=a.moco_dim, threshold=a.threshold,
                                        detach_weights=a.detach_weights),
                    add_args=(snclr_args,)),
    "beclr": Method("BeCLR (Rezaei et al. 2021): NT-Xent on a deep Bregman divergence + cosine "
                    "NT-Xent", builders.beclr_builder,
                    lambda a: BeCLRLoss(builders.beclr_temperature(a), a.sigma, a.mixed_loss),
                    # the official Trainer.bregman_sim monitor on the sub-network outputs
                    KnnSimilarity("bregman", "subnet",
                                  lambda a: partial(bregman_similarity, sigma=a.sigma)),
                    add_args=(beclr_args,)),
    "mvmr": Method("MV-MR (Kinakh et al. 2023): MSE + variance hinge + distance correlation "
                   "between original and augmented views, + dCor with hand-crafted representations",
                   builders.mvmr_builder,
                   lambda a: MVMRLoss(std_margin=a.std_margin, scale=a.mvmr_scale,
                                      representation_sign=a.mvmr_rep_sign),
                   add_args=(mvmr_args,)),
    "patchmix": Method("PatchMix (Shen et al. 2023): soft-target contrasts between patch-mixed and "
                       "original images", builders.patchmix_builder,
                       lambda a: PatchMixLoss(temperature=a.moco_t, smoothing=a.src_smoothing,
                                              m=a.mix_num, mix_smoothing=a.mix_smoothing,
                                              accumulate=a.mix_accumulate),
                       add_args=(patchmix_args,)),
    "dsf": Method(
        "DSF (Jeon et al. 2025): CE over -KL between the vMF fits of each image's ns crops",
        builders.dsf_builder,
        lambda a: DSFLoss(r_bar_coeff=a.r_bar_coeff, kappa_normalization=a.kappa_normalization,
                          kld_t=a.kld_t, bessel_sign=a.bessel_sign or "official"),
        add_args=(dsf_args,)),
    "mocov2": Method("MoCo v2, CIFAR demo (Chen et al. 2020): InfoNCE against a queue of past keys",
                     builders.mocov2_cifar_builder,
                     lambda a: MoCoV2Loss(temperature=a.moco_t, queue_size=a.moco_k, dim=a.moco_dim,
                                          symmetric=a.symmetric),
                     add_args=(mocov2_args,)),
    "mocov2_dsf": Method(
        "DSF on MoCo v2 CIFAR: CE over [-KL(X||Y) | -KL(X||queue of mean directions)]",
        builders.mocov2_cifar_builder,
        lambda a: DSFQueueLoss(queue_size=a.moco_k, dim=a.moco_dim, r_bar_coeff=a.r_bar_coeff,
                               kappa_normalization=a.kappa_normalization, kld_t=a.kld_t,
                               bessel_sign=a.bessel_sign or "correct", symmetric=a.symmetric),
        add_args=(dsf_args, mocov2_args)),
    "mvmr_clip": Method("MV-MR distillation (Kinakh et al. 2023): MV-MR with a frozen CLIP image "
                        "encoder's embedding as the representation (1 - dCor with it)",
                        builders.mvmr_clip_builder,
                        lambda a: MVMRLoss(std_margin=a.std_margin, scale=a.mvmr_scale,
                                           representation_sign=-1.0),
                        add_args=(mvmr_args, mvmr_clip_args)),
}

# main_knn.py --similarity choices beyond cosine, each owned by one method
KNN_SIMILARITIES = {m.knn.name: m.knn for m in METHODS.values() if m.knn is not None}
ALIASES = {"mocov3_dsf": "dsf", "mocov2_cifar": "mocov2"}  # DSF's README spells the method --model=mocov3_dsf


def add_method_args(parser: argparse.ArgumentParser) -> None:
    """The flags whose default depends on the method: views (data/views.py), backbone variant
    (models/builders.py), LARS (utils/optim.py); then every METHODS entry's argument groups, each
    once, in order."""
    add_view_args(parser)
    builders.add_backbone_args(parser)
    add_lars_args(parser)
    for add_group in dict.fromkeys(g for m in METHODS.values() for g in m.add_args):
        add_group(parser)  # a group several methods read (DSF, MV-MR, projector) is added once


def build_model(args: argparse.Namespace) -> tuple[nn.Module, nn.Module]:
    """(model, backbone) for args.method, with the backbone built from the run's options."""
    backbone, feat_dim = build_backbone(args.arch, **builders.backbone_kwargs(vars(args)))
    return METHODS[args.method].builder(args, backbone, feat_dim), backbone
