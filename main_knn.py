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
from models.encoder import add_encoder_args, build_encoder, inherit_normalisation
from models.methods import KNN_SIMILARITIES
from utils import dist
from utils.args import add_common_args, parse_with_config
from utils.knn import extract_features, knn_classify
from utils.misc import seed_everything
from utils.results import write_results

BANK_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("Weighted kNN evaluation", add_help=False)
    add_common_args(parser)
    add_encoder_args(parser)
    parser.add_argument("--features", default="backbone",
                        choices=["backbone", "projector", "subnet"],
                        help="backbone features (default), projector output, or BeCLR sub-network "
                             "outputs")
    g = parser.add_argument_group("kNN")
    g.add_argument("--nb-knn", "--k", dest="ks", default=[10, 20, 100, 200], nargs="+", type=int,
                   help="numbers of neighbours k to report (default: 10 20 100 200)")
    g.add_argument("--temperature", default=0.07, type=float, help="vote temperature (default: 0.07)")
    g.add_argument("--similarity", default="cosine", choices=["cosine", *sorted(KNN_SIMILARITIES)],
                   help="cosine (default), or a method's own monitor, which sets its --features (bregman: "
                        "BeCLR's)")
    g.add_argument("--sigma", default=1.0, type=float, help="Bregman kNN bandwidth (default: 1.0)")
    g.add_argument("--knn-bank-dtype", default="fp32", choices=sorted(BANK_DTYPES),
                   help="storage of the train-feature bank (default: fp32; fp16 halves it, the similarities "
                        "stay fp32)")
    g.add_argument("-b", "--batch-size", default=256, type=int, help="per-process batch (default: 256)")
    return parser


def main(args: argparse.Namespace) -> None:
    dist.launch(main_worker, args)


def main_worker(gpu, args):
    dist.init(gpu, args)
    seed_everything(args.seed if args.seed is not None else 0)  # the random-init baseline repeats
    t0 = time.time()
    knn = KNN_SIMILARITIES.get(args.similarity)  # None: cosine
    if knn is not None:
        args.features = knn.features  # the monitor compares that output (also written to results)
    encode, run = build_encoder(args)
    inherit_normalisation(args, run)
    size = args.img_size or run.get("img_size") or dataset_info(args.dataset).img_size
    train_loader, val_loader, prepare, info = build_eval_loaders(args, size, args.batch_size)
    n_train, n_val = len(train_loader.dataset), len(val_loader.dataset)
    with torch.no_grad():
        train = extract_features(encode, train_loader, n_train, args.device, prepare,
                                 dtype=BANK_DTYPES[args.knn_bank_dtype], desc="train features")
        val = extract_features(encode, val_loader, n_val, args.device, prepare, desc="val features")
    acc = knn_classify(*train, *val, ks=args.ks, temperature=args.temperature,
                       num_classes=info.num_classes,
                       similarity=knn.build(args) if knn is not None else None)
    for k, a in acc.items():
        print(f"{args.similarity} kNN (k={k}, T={args.temperature}) top-1: {a:.2f}")
    if dist.is_main_process():
        name = "knn_random_init" if args.random_init else "knn"
        args.method, args.arch = run.get("method"), run["arch"]
        write_results(args.results_dir, name, args, {"top1": {str(k): v for k, v in acc.items()},
                                                     "similarity": args.similarity,
                                                     "features": args.features,
                                                     "train_images": n_train, "val_images": n_val},
                      time.time() - t0)
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
