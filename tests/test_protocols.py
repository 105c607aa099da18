"""Every paper recipe runs with its official protocol: configs/<recipe>.yaml and the evaluation lines
of main.sh <recipe>() are resolved through the real parsers and registries into the settings they
run with (optimizer and LARS options, backbone stem / max-pool / zero-init, heads, views per side,
normalisation, accumulation; linear and kNN protocol flags), and compared with OFFICIAL below,
written from the official code (file:line in the comments). A change to any recipe, default or
registry entry that moves a recipe off its protocol fails here.

Where the suite knowingly differs (docs/recipes.md, "differences"), the table holds the suite's value
and the comment says so.
"""

from __future__ import annotations

import argparse
import glob
import importlib
import os
from fractions import Fraction

import pytest
import torch
from test_recipes import COMMANDS
from torch import nn

from data.datasets import dataset_info
from models import build_backbone
from models.builders import backbone_kwargs
from models.methods import METHODS, build_model
from utils.args import parse_with_config
from utils.optim import build_optimizer, lars_options

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMNET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CIFAR10 = ((0.4914, 0.4822, 0.4465), (0.247, 0.2435, 0.2616))
MOCO_DEMO = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
J_BYOL, J_SIMCLR, J_MOCO2 = (0.4, 0.4, 0.2, 0.1), (0.8, 0.8, 0.8, 0.2), (0.4, 0.4, 0.4, 0.1)
R256 = float(Fraction(256, 224))


def side(count, size, scale, jitter, gray, blur, solarize, interp="bilinear", kernel=None, ra=0.0,
         pad=None, jitter_p=0.8):
    """One augmented side: flip 0.5 and (but MV-MR cifar) jitter p 0.8 in every official recipe."""
    return (count, size, scale, interp, 0.5, jitter, jitter_p, gray, blur, kernel, solarize, ra, pad)


def byol(size, crop_min, ns=1, interp="bilinear", blur=True):
    """moco-v3 main_moco.py:262-285 (augmentation1 / augmentation2)."""
    return [side(ns, size, (crop_min, 1.0), J_BYOL, 0.2, 1.0 if blur else 0.0, 0.0, interp),
            side(ns, size, (crop_min, 1.0), J_BYOL, 0.2, 0.1 if blur else 0.0, 0.2, interp)]


def resnet(kernel, stride, pad, maxpool, zero_init):
    return {"stem": (kernel, stride, pad, maxpool), "zero_init": zero_init}


TORCHVISION_STEM = (7, 2, 3, True)
MOCOV3_HEADS_R50 = {"projector": ((2048, 4096), (4096, 256)),  # moco-v3 builder.py MoCo_ResNet
                    "predictor": ((256, 4096), (4096, 256))}


def vit_heads(embed):  # moco-v3 builder.py MoCo_ViT: 3-layer projector, 2-layer predictor
    return {"projector": ((embed, 4096), (4096, 4096), (4096, 256)),
            "predictor": ((256, 4096), (4096, 256))}


MOCOV3_LINEAR = dict(optimizer="sgd", lr_schedule="cosine", weight_decay=0.0, train_aug="crop",
                     head_init="normal", backbone_mode="eval", interpolation="bilinear",
                     val_resize_ratio=None, head_outputs=0)  # moco-v3 main_lincls.py
SOLO_LARS = dict(optimizer="lars", lars=(0.02, True, "sum"))  # solo scripts/pretrain/*: kwargs
SOLO_STEM = resnet(3, 1, 2, False, False)  # solo/methods/base.py:200-203
MOCOV3_LARS = (0.001, False, "update")  # moco-v3 moco/optimizer.py (trust_coefficient=0.001)


def patchmix(arch, ds, lr, wd, lin_lr, knn_encoder="momentum"):
    """visresearch/patchmix config/{pretrain,linear,knn}/*.py, module/augmentation.py."""
    imagenet = ds == "imagenet"
    size, crop = (224, 0.35) if imagenet else (32, 0.1)
    views = byol(size, crop, interp="bicubic")
    if imagenet:  # MultiCropsTransform: 8 x 96 px, blur 0.5, no solarize
        views.append(side(8, 96, (0.05, 0.35), J_BYOL, 0.2, 0.5, 0.0, "bicubic"))
    embed = {"vit_tiny": 192, "vit_small": 384, "vit_base": 768}[arch]
    eval_input = dict(interpolation="bicubic", val_resize_ratio=R256, norm=IMNET)
    return {
        "pretrain": dict(method="patchmix", arch=arch, dataset=ds, optimizer="adamw",
                         batch_size=1024 if imagenet else 512, epochs=300 if imagenet else 800,
                         warmup_epochs=10 if imagenet else 100, lr_effective=lr * (4 if imagenet
                                                                                  else 2),
                         weight_decay=wd, weight_decay_end=10 * wd, moco_t=0.2, views=views,
                         norm=IMNET,  # timm IMAGENET_DEFAULT_MEAN/STD, CIFAR too
                         heads=vit_heads(embed)),
        "knn": dict(ks=[10, 20, 100, 200], temperature=0.07, encoder=knn_encoder,
                    similarity="cosine", **eval_input),  # main_knn.py:35-38, config/knn/knn.py
        "linear": dict(optimizer="nesterov",  # timm create_optimizer('sgd'), main_linear.py:266
                       lr_effective=lin_lr * (4 if imagenet else 1), epochs=100, weight_decay=0.0,
                       lr_schedule="cosine", lr_lag=1,  # lr_scheduler.step(epoch) after it, l.353
                       head_init="default", train_aug="crop",
                       backbone_mode="eval", encoder=knn_encoder, **eval_input),
    }


def mvmr(ds, batch, lr_eff, size, views, norm, stem, lin_batch):
    """vkinakh/mv-mr configs/*_self_supervised.yaml, src/model/resnet.py, evaluate_self_supervised.py."""
    return {
        "pretrain": dict(method="mvmr", dataset=ds, arch="resnet50", optimizer="adam",
                         batch_size=batch, lr_effective=lr_eff, weight_decay=1e-6, epochs=1000,
                         warmup_epochs=10, min_lr=1e-6, amp="fp16", online_probe=True,
                         views=[("original", 1, size)] + views, norm=norm, sync_bn=False,
                         heads={"projector": ((2048, 8192), (8192, 8192), (8192, 8192))},
                         **resnet(*stem, zero_init=True)),  # resnet.py:16 zero_init_residual
        # evaluate_self_supervised.py --retrain: Adam 1e-3 l.54, CosineAnnealingLR l.55, 'custom'
        # AugTransform l.31, finetuner from the checkpoint l.50, 100 epochs l.159
        "linear": dict(optimizer="adam", lr_effective=1e-3, batch_size=lin_batch, epochs=100,
                       lr_schedule="cosine", weight_decay=0.0, train_aug="mvmr", head_init="probe",
                       backbone_mode="eval", norm=norm),
    }


def beclr(ds, norm, size):
    """csfarzin/BeCLR main.py, model.py:32-34, data_aug/*.py; linear.py:171-172 (Adam, no schedule)."""
    blur = 0.5 if size > 100 else 0.0  # transformation.py: blur only above 100 px
    imagenet = ds == "imagenet"
    pretrain = dict(method="beclr", dataset=ds, optimizer="adam", weight_decay=1e-6,
                    warmup_epochs=0, norm=norm,
                    views=[side(1, size, (0.08, 1.0), J_MOCO2, 0.2, blur, 0.0)] * 2,
                    **(resnet(*TORCHVISION_STEM, zero_init=False) if imagenet
                       else resnet(3, 1, 1, False, False)))
    if imagenet:  # main_imgnet.py: batch 800, lr 1e-4, 200 epochs, T 0.1, K 200, H 100
        pretrain.update(batch_size=800, lr_effective=1e-4, epochs=200, k_subs=200,
                        subnet_hidden=100, temperature=0.1)
    else:  # main.py with the README's batch 512 and 500 epochs
        pretrain.update(batch_size=512, lr_effective=5e-3, epochs=500, k_subs=100,
                        subnet_hidden=512, temperature=0.5, sigma=0.9)
    out = {"pretrain": pretrain,
           "linear": dict(optimizer="adam", lr_effective=1e-3, batch_size=512, epochs=100,
                          weight_decay=1e-6, lr_schedule="step", lr_steps=[100],  # constant lr
                          head_init="default", backbone_mode="train", norm=norm)}
    if not imagenet:  # main.py kNN monitor: Bregman sigma 1.0, T_train, k_nn 50 (README 200)
        out["knn"] = dict(similarity="bregman", sigma=1.0, temperature=0.5, ks=[50, 200],
                          norm=norm)
    return out


OFFICIAL: dict[str, dict] = {
    # ---- moco-v3 CONFIG.md ("ViT-Small, 4-node"), main_moco.py defaults; linear: lr 3 (CONFIG.md)
    "mocov3_in1k_vits": {
        "pretrain": dict(method="mocov3", arch="vit_small", batch_size=4096, optimizer="adamw",
                         lr_effective=1.5e-4 * 16, weight_decay=0.1, epochs=300, warmup_epochs=40,
                         moco_t=0.2, moco_m=0.99, moco_m_cos=True, stop_grad_conv1=True,
                         views=byol(224, 0.08), norm=IMNET, heads=vit_heads(384)),
        "linear": dict(MOCOV3_LINEAR, lr_effective=3 * 4, batch_size=1024, epochs=90, norm=IMNET)},
    # ---- CONFIG.md "ResNet-50, 100-epoch": main_moco.py defaults (-b 4096, lr .6, wd 1e-6,
    # T 1.0), --crop-min .2; main_moco.py:186 zero_init_residual=True
    "mocov3_in1k_r50": {
        "pretrain": dict(method="mocov3", arch="resnet50", batch_size=4096, optimizer="lars",
                         lars=MOCOV3_LARS, lr_effective=0.6 * 16, weight_decay=1e-6, epochs=100,
                         warmup_epochs=10, moco_t=1.0, moco_m_cos=True, views=byol(224, 0.2),
                         norm=IMNET, heads=MOCOV3_HEADS_R50,
                         **resnet(*TORCHVISION_STEM, zero_init=True)),
        "linear": dict(MOCOV3_LINEAR, lr_effective=0.1 * 4, batch_size=1024, epochs=90, norm=IMNET)},
    # ---- solo-learn scripts/pretrain/cifar/simclr.yaml, augmentations/symmetric.yaml:13-14 (blur
    # 0.5 at 32 px), pretrain_dataloader.py:207 (stats), lars.py:140-150
    "simclr_cifar10_r18": {
        "pretrain": dict(method="simclr", arch="resnet18", batch_size=256, lr_effective=0.4,
                         weight_decay=1e-4, epochs=1000, warmup_epochs=10, moco_t=0.2, norm=CIFAR10,
                         views=[side(1, 32, (0.08, 1.0), J_SIMCLR, 0.2, 0.5, 0.0)] * 2,
                         heads={"projector": ((512, 2048), (2048, 256))},
                         **SOLO_LARS, **SOLO_STEM),
        # no official CIFAR linear script (the published number is online): the suite's default
        "linear": dict(MOCOV3_LINEAR, lr_effective=0.1, batch_size=256, epochs=100, norm=CIFAR10)},
    # ---- solo-learn scripts/pretrain/imagenet-100/simclr.yaml (128 per GPU x 2 devices) and
    # scripts/linear/imagenet-100/simclr.yaml (SGD 1.0, step [60, 80], wd 0)
    "simclr_in100_r18": {
        "pretrain": dict(method="simclr", arch="resnet18", dataset="in100", batch_size=256,
                         lr_effective=0.3, weight_decay=1e-4, epochs=400, warmup_epochs=10,
                         moco_t=0.2, norm=IMNET,
                         views=[side(1, 224, (0.08, 1.0), J_SIMCLR, 0.2, 0.5, 0.0)] * 2,
                         heads={"projector": ((512, 4096), (4096, 512))},
                         **SOLO_LARS, **resnet(*TORCHVISION_STEM, zero_init=False)),
        "linear": dict(MOCOV3_LINEAR, lr_effective=1.0, batch_size=256, epochs=100,
                       lr_schedule="step", lr_steps=[60, 80], norm=IMNET)},
    # ---- Jeon789/DSF main.sh #3, main_mocov3_multiview.py; linear main_linclsv3.py (lr 30, b256)
    "dsf_in100_vits": {
        "pretrain": dict(method="dsf", arch="vit_small", dataset="in100", batch_size=128, ns=4,
                         optimizer="adamw", lr_effective=5e-3 / 2, weight_decay=0.1, epochs=100,
                         warmup_epochs=15, stop_grad_conv1=True, moco_m_cos=True, kld_t=1.0,
                         r_bar_coeff=0.95, seed=307, views=byol(224, 0.08, ns=4), norm=IMNET,
                         heads=vit_heads(384)),
        "linear": dict(MOCOV3_LINEAR, lr_effective=30.0, batch_size=256, epochs=30, norm=IMNET)},
    # ---- DSF main.sh #2, train_moco_cifar_multiview.py; linear main_lincls.py:226 (128 outputs),
    # :310-316 (jitter + grey, MoCo demo std), --cos default True (:133)
    "mocov2_dsf_cifar10": {
        "pretrain": dict(method="mocov2_dsf", arch="resnet18", batch_size=256, ns=4,
                         optimizer="sgd", lr_effective=0.06, momentum=0.9, weight_decay=5e-4,
                         epochs=250, warmup_epochs=0, moco_m=0.99, moco_dim=128, moco_k=4096,
                         bn_splits=8, amp="off", seed=920, norm=MOCO_DEMO,
                         views=[side(4, 32, (0.2, 1.0), J_MOCO2, 0.2, 0.5, 0.0, ra=0.5)] * 2,
                         heads={"projector": ((512, 512), (512, 128))},
                         **resnet(3, 1, 1, False, False)),
        "linear": dict(MOCOV3_LINEAR, lr_effective=30.0, batch_size=256, epochs=30,
                       train_aug="dsf", head_outputs=128, crop_min=0.08, norm=MOCO_DEMO)},
    # ---- DSF main.sh #1, train_moco_cifar.py (lr 0.12 at b1024, T 0.1, 800 epochs)
    "mocov2_cifar10": {
        "pretrain": dict(method="mocov2", arch="resnet18", batch_size=1024, ns=1,
                         optimizer="sgd", lr_effective=0.12, weight_decay=5e-4, epochs=800,
                         moco_t=0.1, moco_m=0.99, moco_k=4096, bn_splits=8, amp="off",
                         norm=MOCO_DEMO,
                         views=[side(1, 32, (0.2, 1.0), J_MOCO2, 0.2, 0.5, 0.0, ra=0.5)] * 2,
                         **resnet(3, 1, 1, False, False)),
        "linear": dict(MOCOV3_LINEAR, lr_effective=30.0, batch_size=256, epochs=30,
                       train_aug="dsf", head_outputs=128, crop_min=0.08, norm=MOCO_DEMO)},
    # ---- BeCLR data_aug/data_loader.py:49-50, 73-74 (CIFAR), 97-98 (STL), 17-18 (ImageNet)
    "beclr_cifar10_r50": beclr("cifar10", MOCO_DEMO, 32),
    "beclr_cifar100_r50": beclr("cifar100", MOCO_DEMO, 32),
    "beclr_stl10_r50": beclr("stl10", ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)), 96),
    "beclr_in1k_r50": beclr("imagenet", IMNET, 224),
    # ---- MV-MR configs: stl10 (b256, lr 1e-4, 'custom'), cifar20 (b512, lr 2e-4, 'cifar20' policy,
    # CIFAR_STATS), imagenet (256 x accumulate 8, lr 1e-4 per optimizer step); small_kernel keeps
    # the max-pool (resnet.py); the STL/CIFAR batch is per GPU (one-GPU reading, docs/recipes.md)
    "mvmr_stl10_r50": mvmr(
        "stl10", 256, 1e-4, 96, [side(1, 96, (0.08, 1.0), J_SIMCLR, 0.2, 1.0, 0.0, kernel=9)],
        IMNET, (3, 1, 1, True), lin_batch=256),
    "mvmr_cifar20_r50": mvmr(
        "cifar20", 512, 2e-4, 32,
        [side(1, 32, (0.2, 1.0), J_MOCO2, 0.1, 0.0, 0.0, interp="bicubic")],
        ((0.491, 0.482, 0.447), (0.247, 0.243, 0.261)), (3, 1, 1, True), lin_batch=512),
    "mvmr_in1k_r50": mvmr(
        "imagenet", 2048, 1e-4, 224, [side(1, 224, (0.08, 1.0), J_SIMCLR, 0.2, 1.0, 0.0, kernel=23)],
        IMNET, TORCHVISION_STEM, lin_batch=256),
    # ---- solo-learn scripts/pretrain/cifar/nnclr.yaml, augmentations/asymmetric.yaml (no blur at
    # 32 px, solarize 0.2 on view 2)
    "nnclr_cifar10_r18": {
        "pretrain": dict(method="nnclr", arch="resnet18", batch_size=256, lr_effective=0.4,
                         weight_decay=1e-5, epochs=1000, warmup_epochs=10, moco_t=0.2,
                         queue_size=65536, norm=CIFAR10, views=byol(32, 0.08, blur=False),
                         heads={"projector": ((512, 2048), (2048, 2048), (2048, 256)),
                                "predictor": ((256, 4096), (4096, 256))},
                         **SOLO_LARS, **SOLO_STEM),
        "linear": dict(MOCOV3_LINEAR, lr_effective=0.1, batch_size=256, epochs=100, norm=CIFAR10)},
    # ---- solo-learn imagenet-100/nnclr.yaml (128 x 2 GPUs); linear/imagenet-100/nnclr.yaml:27-31
    "nnclr_in100_r18": {
        "pretrain": dict(method="nnclr", arch="resnet18", dataset="in100", batch_size=256,
                         lr_effective=0.4, weight_decay=1e-5, epochs=400, moco_t=0.2,
                         queue_size=65536, norm=IMNET, views=byol(224, 0.08),
                         **SOLO_LARS, **resnet(*TORCHVISION_STEM, zero_init=False)),
        "linear": dict(MOCOV3_LINEAR, lr_effective=0.3, batch_size=256, epochs=100,
                       lr_schedule="step", lr_steps=[60, 80], norm=IMNET)},
    # ---- ChongjianGE/SNCLR start.sh (lr 1.5e-5 as committed); evaluation: the MoCo v3 protocol
    "snclr_in1k_vits": {
        "pretrain": dict(method="snclr", arch="vit_small", batch_size=4096, optimizer="adamw",
                         lr_effective=1.5e-5 * 16, weight_decay=0.1, epochs=300, warmup_epochs=40,
                         moco_t=0.2, moco_m=0.99, moco_m_cos=True, stop_grad_conv1=True,
                         bank_size=128000, topk=30, views=byol(224, 0.08), norm=IMNET,
                         heads=vit_heads(384)),
        "linear": dict(MOCOV3_LINEAR, lr_effective=3 * 4, batch_size=1024, epochs=90, norm=IMNET)},
    # ---- PatchMix config/pretrain/vit_{small,base,tiny}_pretrain.py, config/linear/*.py
    "patchmix_in1k_vits": patchmix("vit_small", "imagenet", 5e-4, 0.04, 0.02),
    "patchmix_in1k_vitb": patchmix("vit_base", "imagenet", 7.5e-4, 0.04, 0.01),
    "patchmix_cifar10_vitt": patchmix("vit_tiny", "cifar10", 2e-3, 0.02, 0.05, "online"),
    "patchmix_cifar10_vits": patchmix("vit_small", "cifar10", 5e-4, 0.04, 0.02),
    "patchmix_cifar10_vitb": patchmix("vit_base", "cifar10", 7.5e-4, 0.04, 0.01),
    "patchmix_cifar100_vitt": patchmix("vit_tiny", "cifar100", 2e-3, 0.02, 0.05, "online"),
    "patchmix_cifar100_vits": patchmix("vit_small", "cifar100", 5e-4, 0.04, 0.02),
    "patchmix_cifar100_vitb": patchmix("vit_base", "cifar100", 7.5e-4, 0.04, 0.01),
}

def mvmr_clip(ds, size, epochs, val_steps):
    """vkinakh/mv-mr configs/{stl10,imagenet}_clip_self_supervised.yaml: b256, Adam 1e-4, wd 1e-6,
    epochs (:2: STL-10 1000, ImageNet 100), small_kernel False (torchvision stem), the 'custom' views, ImageNet stats.
    lr: constant for warmup_epochs (:3), then a one-epoch CosineAnnealingLR stepped per train and val
    batch (clip_self_supervised_module.py:100,113,160-169): val_steps = val images // 256."""
    views = [("original", 1, size),
             side(1, size, (0.08, 1.0), J_SIMCLR, 0.2, 1.0, 0.0, kernel=2 * int(0.05 * size) + 1)]
    return {"pretrain": dict(method="mvmr_clip", dataset=ds, arch="resnet50", optimizer="adam",
                             batch_size=256, lr_effective=1e-4, weight_decay=1e-6, epochs=epochs,
                             warmup_epochs=10, min_lr=0.0, lr_schedule="mvmr-clip", lr_cycle_steps=0,
                             lr_cycle_val_steps=val_steps, amp="fp16", std_margin=1.0, views=views, norm=IMNET,
                             clip_model="ViT-B-16", clip_pretrained="laion400m_e32",
                             sync_bn=False, **resnet(*TORCHVISION_STEM, zero_init=True)),
            # the mv-mr README evaluates the distilled ResNet as its self-supervised models:
            # evaluate_self_supervised.py --retrain (see mvmr() above)
            "linear": dict(optimizer="adam", lr_effective=1e-3, batch_size=256, epochs=100,
                           lr_schedule="cosine", weight_decay=0.0, train_aug="mvmr",
                           head_init="probe", backbone_mode="eval", norm=IMNET)}


OFFICIAL["mvmr_clip_stl10_r50"] = mvmr_clip("stl10", 96, 1000, 8000 // 256)
OFFICIAL["mvmr_clip_in1k_r50"] = mvmr_clip("imagenet", 224, 100, 50000 // 256)
# CIFAR-100, configs/cifar100_clip_self_supervised.yaml: 200 epochs (:2), small_kernel True (:29, the
# 3x3 stem), aug_policy cifar (:24) = transform.py:58-62 RandomCrop(32, padding=4) + flip only,
# CIFAR_STATS (transform.py:10-13, also for the linear's 'custom' AugTransform)
CIFAR_MVMR = ((0.491, 0.482, 0.447), (0.247, 0.243, 0.261))
OFFICIAL["mvmr_clip_cifar100_r50"] = mvmr_clip("cifar100", 32, 200, 10000 // 256)
OFFICIAL["mvmr_clip_cifar100_r50"]["pretrain"].update(
    views=[("original", 1, 32), side(1, 32, (0.08, 1.0), J_BYOL, 0.0, 0.0, 0.0, pad=4, jitter_p=0.0)],
    norm=CIFAR_MVMR, **resnet(3, 1, 1, True, zero_init=True))
OFFICIAL["mvmr_clip_cifar100_r50"]["linear"].update(norm=CIFAR_MVMR)
# MV-MR ImageNet: 8-step accumulation with the schedule in micro-batches (PL 1.5 steps the
# scheduler per optimizer step; imagenet_self_supervised.yaml:1,8, self_supervised_module.py:164)
OFFICIAL["mvmr_in1k_r50"]["pretrain"].update(accum_steps=8, accum_schedule="micro")

# ============ resolving a recipe into the settings it runs with ============


def rounded(value):
    if isinstance(value, float):
        return round(value, 10)
    if isinstance(value, (list, tuple)):
        return tuple(rounded(v) for v in value)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    return value


def linear_dims(module: nn.Module | None):
    if module is None:
        return None
    return tuple((m.in_features, m.out_features) for m in module.modules()
                 if isinstance(m, nn.Linear))


def view_settings(sides) -> list[tuple]:
    out = []
    for s in sides:
        v = s.spec
        if not v.crop:
            out.append((s.name, s.count, v.size))
            continue
        out.append((s.count, v.size, v.scale, v.interpolation, v.flip_p, v.jitter, v.jitter_p,
                    v.gray_p, v.blur_p, v.blur_kernel, v.solarize_p, v.randaugment_p, v.pad))
    return out


def resnet_settings(args: argparse.Namespace) -> dict:
    backbone, _ = build_backbone(args.arch, **backbone_kwargs(vars(args)))
    conv, blocks = backbone.conv1, [b for layer in (backbone.layer1, backbone.layer4)
                                    for b in layer]
    last_bn = [getattr(b, "bn3", None) or b.bn2 for b in blocks]
    return {"stem": (conv.kernel_size[0], conv.stride[0], conv.padding[0],
                     not isinstance(backbone.maxpool, nn.Identity)),
            "zero_init": all(not bn.weight.detach().any() for bn in last_bn)}


def heads_only(args: argparse.Namespace) -> nn.Module:
    """The method's model with its heads, cheaply: on the meta device (MV-MR's 8192 x 8192
    projector), else around a stub backbone (momentum encoders copy weights; ViTs read values)."""
    try:
        with torch.device("meta"):
            return build_model(args)[0]
    except NotImplementedError:
        feat_dim = build_backbone(args.arch, **backbone_kwargs(vars(args)))[1]
        return METHODS[args.method].builder(args, nn.Identity(), feat_dim)


def resolve_pretrain(recipe: str) -> dict:
    import main_pretrain

    parser = argparse.ArgumentParser(parents=[main_pretrain.get_args_parser()])
    args = parse_with_config(parser, ["--config", os.path.join(ROOT, "configs", f"{recipe}.yaml")])
    info = dataset_info(args.dataset)
    args.img_size = args.img_size or info.img_size
    model = heads_only(args)
    opt = build_optimizer(args.optimizer, [{"params": [nn.Parameter(torch.ones(2, 2))]}], 0.1,
                          0.0, **lars_options(args))
    group = opt.param_groups[0]
    out = dict(vars(args), lr_effective=args.lr * args.batch_size / 256,
               views=view_settings(METHODS[args.method].sides(args)),
               norm=(tuple(args.mean or info.mean), tuple(args.std or info.std)),
               sync_bn=getattr(model, "sync_bn", True),
               heads={k: linear_dims(getattr(model, k)) for k in ("projector", "predictor")
                      if getattr(model, k, None) is not None},
               lars=(group["eta"], group["clip"], group["denominator"]) if "eta" in group else None)
    if args.arch.startswith("resnet"):
        out.update(resnet_settings(args))
    return out


def resolve_eval(recipe: str, script: str, pretrain: dict) -> dict:
    words = [words for s, words in COMMANDS[recipe] if s == script]
    assert len(words) == 1, f"main.sh {recipe}() should run {script} once"
    module = importlib.import_module(script)
    args = argparse.ArgumentParser(parents=[module.get_args_parser()]).parse_args(words[0])
    out = vars(args)
    if script == "main_lincls":
        out["lr_effective"] = args.lr * args.batch_size / 256
    # --mean/--std not given: the evaluation inherits the pretraining's (models/encoder.py)
    out["norm"] = (tuple(args.mean or pretrain["norm"][0]), tuple(args.std or pretrain["norm"][1]))
    return out


def compare(expected: dict, resolved: dict, where: str) -> None:
    differ = {k: (rounded(resolved.get(k, "<missing>")), rounded(v)) for k, v in expected.items()
              if rounded(resolved.get(k, "<missing>")) != rounded(v)}
    assert not differ, f"{where} (key: (runs with, official)): {differ}"


# ============ the tests ============

RECIPES = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(ROOT, "configs", "*.yaml"))
                 if not p.endswith("quickstart.yaml"))


def test_every_recipe_has_official_values():
    missing = sorted(set(RECIPES) - set(OFFICIAL))
    assert not missing, f"add the official values of {missing} to OFFICIAL (file:line)"
    assert set(OFFICIAL) <= set(RECIPES), sorted(set(OFFICIAL) - set(RECIPES))


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_runs_the_official_protocol(recipe):
    pretrain = resolve_pretrain(recipe)
    compare(OFFICIAL[recipe]["pretrain"], pretrain, f"configs/{recipe}.yaml")
    for protocol, script in (("linear", "main_lincls"), ("knn", "main_knn")):
        if recipe not in COMMANDS:  # no main.sh function: tests/test_tools.py asks for one
            break
        if protocol in OFFICIAL[recipe]:
            compare(OFFICIAL[recipe][protocol], resolve_eval(recipe, script, pretrain),
                    f"main.sh {recipe}() {script}.py")
        else:
            assert script not in {s for s, _ in COMMANDS[recipe]}, f"{recipe}: table its {script}"
