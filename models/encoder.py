"""The frozen encoder of an evaluation (main_knn.py, main_lincls.py, tools/retrieval_grid.py).

One place that turns --pretrained / --random-init into the backbone, with the flags both evaluation
scripts share: which encoder, and how validation images are resized.
"""

from __future__ import annotations

import argparse
from fractions import Fraction
from typing import Any, Callable

from torch import Tensor, nn

from data.datasets import dataset_info
from models import build_backbone
from models.builders import backbone_kwargs
from models.methods import build_model
from utils.checkpoint import load_backbone, load_backbone_into, load_checkpoint


def ratio(s: str) -> float:
    """argparse type for a positive ratio, as a number or a fraction: 1.142857 or 256/224."""
    try:
        value = float(Fraction(s))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{s!r} is not a ratio such as 256/224") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{s!r} is not positive")
    return value


def add_encoder_args(parser: argparse.ArgumentParser) -> None:
    """The encoder and validation-input flags of main_knn.py and main_lincls.py."""
    g = parser.add_argument_group("encoder")
    g.add_argument("--pretrained", default="", help="checkpoint of main_pretrain.py, or a moco-v3 / "
                                                    "DSF checkpoint (module.base_encoder.*)")
    g.add_argument("--random-init", action="store_true",
                   help="evaluate a randomly initialised encoder (the baseline a run must beat)")
    g.add_argument("-a", "--arch", default="resnet50",
                   help="backbone when it is not in the checkpoint (default: resnet50)")
    g.add_argument("--method", default=None, help="with --random-init: that method's backbone "
                                                  "variant (MV-MR keeps the ResNet max-pool)")
    g.add_argument("--width", default=64, type=int,
                   help="ResNet base width with --random-init (default: 64)")
    g.add_argument("--img-size", default=None, type=int,
                   help="input size (default: the checkpoint's, else the dataset's)")
    g.add_argument("--patch-size", default=None, type=int, help="ViT patch size with --random-init")
    g.add_argument("--encoder", default="online", choices=["online", "momentum"],
                   help="which backbone of a momentum method (default: online; PatchMix: momentum)")
    g = parser.add_argument_group("evaluation input")
    g.add_argument("--interpolation", default="bilinear", choices=["bilinear", "bicubic"],
                   help="resampling of the val resize and the probe's train crop (default: bilinear; "
                        "PatchMix: bicubic)")
    g.add_argument("--val-resize-ratio", default=None, type=ratio,
                   help="val Resize(int(size*R)) + CenterCrop(size) (default: 256/224 above the input size, "
                        "else none)")


# run args that change the backbone a method builds (models/builders.py backbone_kwargs and its
# METHOD_BACKBONE stems read them); the pretraining dataset also picks BeCLR's stem
BACKBONE_SHAPING = ("cifar_stem_padding", "mvmr_small_kernel", "zero_init_residual",
                    "stop_grad_conv1")


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


def build_encoder(args: Any) -> tuple[nn.Module | Callable[[Tensor], Tensor], dict]:
    """(encoder in eval mode, the encoder's run args) from --pretrained or --random-init.

    args.features (main_knn.py; absent: "backbone") "backbone" gives the backbone module itself;
    "projector" / "subnet" (also set by main_knn.py --similarity) a function of the whole
    pretrained model (this suite's checkpoints only). The run args hold arch, width, img_size,
    patch_size, method, and the pretraining's mean/std when it recorded them.
    """
    features = getattr(args, "features", "backbone")
    if features != "backbone":
        model, run = load_pretrained(args.pretrained)
        model = model.to(args.device)
        field = {"projector": lambda o: o.z[0], "subnet": lambda o: o.extras["subnet"][0]}[features]
        return lambda x: field(model([x])), run
    run = {"arch": args.arch, "width": args.width, "img_size": args.img_size,
           "patch_size": args.patch_size, "method": args.method, "mean": None, "std": None,
           "dataset": args.dataset,
           **{k: getattr(args, k, None) for k in BACKBONE_SHAPING}}
    state = None
    if not args.random_init:
        state, saved = load_backbone(args.pretrained, prefer=args.encoder)
        # every option that shaped the pretrained backbone, so evaluation rebuilds the same one
        run.update({k: saved[k] for k in (*run, *BACKBONE_SHAPING) if saved.get(k) is not None})
        run["method"] = saved.get("method")
    run["img_size"] = run["img_size"] or dataset_info(args.dataset).img_size
    backbone, _ = build_backbone(run["arch"], **backbone_kwargs(run))
    if state is not None:
        load_backbone_into(backbone, state, allowed_missing=set())
    return backbone.to(args.device).eval(), run


def inherit_normalisation(args: Any, run: dict) -> None:
    """--mean/--std not given: use the ones the pretraining recorded, so the encoder sees the
    input statistics it was trained on (None leaves the dataset's own)."""
    for key in ("mean", "std"):
        if getattr(args, key, None) is None and run.get(key) is not None:
            setattr(args, key, [float(v) for v in run[key]])
