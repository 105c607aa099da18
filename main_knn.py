"""Weighted kNN evaluation of a frozen encoder (DINO / InstDisc vote), on 1 process or under DDP.

    python main_knn.py --pretrained results/checkpoint_0100_000000.pth.tar --dataset cifar10 --data DIR
    python main_knn.py --random-init -a resnet18 --width 16 --dataset fashion_mnist   # the baseline
"""

import argparse
import json
import time

import torch

from data.datasets import dataset_info
from data.loaders import build_eval_loaders
from losses.bregman import bregman_similarity
from models import build_backbone
from models.methods import backbone_kwargs, load_pretrained
from utils import dist
from utils.args import add_common_args, parse_with_config
from utils.checkpoint import load_backbone, load_backbone_into
from utils.knn import extract_features, knn_classify
from utils.misc import seed_everything
from utils.results import write_results


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("Weighted kNN evaluation", add_help=False)
    add_common_args(parser)
    g = parser.add_argument_group("encoder")
    g.add_argument("--pretrained", default="", help="checkpoint of main_pretrain.py, or a moco-v3 / "
                                                    "DSF checkpoint (module.base_encoder.*)")
    g.add_argument("--random-init", action="store_true",
                   help="evaluate a randomly initialised encoder (the baseline a run must beat)")
    g.add_argument("-a", "--arch", default="resnet50", help="backbone when it is not in the checkpoint")
    g.add_argument("--method", default=None, help="with --random-init: that method's backbone "
                                                  "variant (MV-MR keeps the ResNet max-pool)")
    g.add_argument("--width", default=64, type=int)
    g.add_argument("--img-size", default=None, type=int)
    g.add_argument("--patch-size", default=None, type=int)
    g.add_argument("--encoder", default="online", choices=["online", "momentum"],
                   help="which backbone of a momentum method (PatchMix evaluates the momentum one)")
    g.add_argument("--features", default="backbone", choices=["backbone", "projector", "subnet"],
                   help="backbone features (default), projector output, or BeCLR sub-network outputs")
    g = parser.add_argument_group("kNN")
    g.add_argument("--nb-knn", "--k", dest="ks", default=[10, 20, 100, 200], nargs="+", type=int)
    g.add_argument("--temperature", default=0.07, type=float, help="vote temperature (DINO: 0.07)")
    g.add_argument("--similarity", default="cosine", choices=["cosine", "bregman"],
                   help="bregman: BeCLR's monitor on sub-network outputs (implies --features subnet)")
    g.add_argument("--sigma", default=1.0, type=float, help="Bregman kNN bandwidth (BeCLR: 1.0)")
    g.add_argument("-b", "--batch-size", default=256, type=int, help="per-process batch")
    return parser


def main(args: argparse.Namespace) -> None:
    dist.launch(main_worker, args)


def build_encoder(args):
    """(encode fn, args dict of the encoder's run) from --pretrained or --random-init."""
    features = "subnet" if args.similarity == "bregman" else args.features
    if features != "backbone":
        model, run = load_pretrained(args.pretrained)
        model = model.to(args.device)
        field = {"projector": lambda o: o.z[0], "subnet": lambda o: o.extras["subnet"][0]}[features]
        return lambda x: field(model([x])), run
    run = {"arch": args.arch, "width": args.width, "img_size": args.img_size,
           "patch_size": args.patch_size, "method": args.method}
    state = None
    if not args.random_init:
        state, saved = load_backbone(args.pretrained, prefer=args.encoder)
        run.update({k: saved[k] for k in run if saved.get(k) is not None})
        run["method"] = saved.get("method")
    run["img_size"] = run["img_size"] or dataset_info(args.dataset).img_size
    backbone, _ = build_backbone(run["arch"], **backbone_kwargs(run))
    if state is not None:
        load_backbone_into(backbone, state, allowed_missing=set())
    return backbone.to(args.device).eval(), run


def main_worker(gpu, args):
    dist.init(gpu, args)
    if not args.pretrained and not args.random_init:
        raise SystemExit("error: give --pretrained CHECKPOINT or --random-init")
    seed_everything(args.seed if args.seed is not None else 0)  # the random-init baseline repeats
    t0 = time.time()
    encode, run = build_encoder(args)
    size = args.img_size or run.get("img_size") or dataset_info(args.dataset).img_size
    train_loader, val_loader, prepare, info = build_eval_loaders(args, size, args.batch_size)
    with torch.no_grad():
        train = extract_features(encode, train_loader, len(train_loader.dataset), args.device,
                                 prepare)
        val = extract_features(encode, val_loader, len(val_loader.dataset), args.device, prepare)
    similarity = None
    if args.similarity == "bregman":
        similarity = lambda t, bank: bregman_similarity(t, bank, args.sigma)  # noqa: E731
    acc = knn_classify(*train, *val, ks=args.ks, temperature=args.temperature,
                       num_classes=info.num_classes, similarity=similarity)
    for k, a in acc.items():
        print(f"{args.similarity} kNN (k={k}, T={args.temperature}) top-1: {a:.2f}")
    if dist.is_main_process():
        name = "knn_random_init" if args.random_init else "knn"
        args.method, args.arch = run.get("method"), run["arch"]
        write_results(args.results_dir, name, args, {"top1": {str(k): v for k, v in acc.items()},
                                                     "similarity": args.similarity,
                                                     "features": args.features}, time.time() - t0)
        print(json.dumps({"knn_top1": acc}))
    dist.cleanup()


if __name__ == "__main__":
    from data.datasets import DATASETS
    from models import BACKBONES
    from models.methods import ALIASES, METHODS
    from utils import cli
    from utils.validate import Known

    parser = argparse.ArgumentParser("Weighted kNN evaluation", parents=[get_args_parser()])
    known = Known(BACKBONES, [*METHODS, *ALIASES], DATASETS, global_batch=False)
    cli.run(main, parse_with_config(parser, known=known))
