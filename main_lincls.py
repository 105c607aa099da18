"""Linear probe on a frozen encoder: the MoCo v3 protocol (methods.md §1.5).

Frozen backbone in eval mode, a Linear head (init N(0, 0.01), bias 0), SGD momentum 0.9, wd 0,
per-epoch cosine lr with lr = base x batch / 256. DSF's evaluation is ``--lr 30 -b 256 --epochs 30``.

    python main_lincls.py -a vit_small --lr 3 --pretrained results/checkpoint_0300_000000.pth.tar \
        --dataset imagenet --data /path/to/imagenet --multiprocessing-distributed
"""

import argparse
import copy
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from data.loaders import build_eval_loaders, build_view_loader
from data.transforms import ViewSpec
from main_knn import build_encoder
from utils import dist
from utils.args import add_common_args, parse_with_config
from utils.logger import RunLogger
from utils.misc import bool_flag, seed_everything
from utils.optim import build_optimizer, set_lr_wd
from utils.results import write_results


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("Linear probe", add_help=False)
    add_common_args(parser)
    g = parser.add_argument_group("encoder")
    g.add_argument("--pretrained", default="", help="checkpoint of main_pretrain.py or moco-v3/DSF")
    g.add_argument("--random-init", action="store_true", help="probe a random encoder (baseline)")
    g.add_argument("-a", "--arch", default="resnet50")
    g.add_argument("--method", default=None,
                   help="with --random-init: that method's backbone variant (MV-MR: max-pool kept)")
    g.add_argument("--width", default=64, type=int)
    g.add_argument("--img-size", default=None, type=int)
    g.add_argument("--patch-size", default=None, type=int)
    g.add_argument("--encoder", default="online", choices=["online", "momentum"])
    g = parser.add_argument_group("probe")
    g.add_argument("-b", "--batch-size", default=256, type=int, help="global batch")
    g.add_argument("--lr", default=0.1, type=float,
                   help="base lr, x batch/256 (moco-v3: 0.1 ResNet, 3 ViT; DSF: 30)")
    g.add_argument("--epochs", default=90, type=int)
    g.add_argument("--momentum", default=0.9, type=float)
    g.add_argument("--weight-decay", "--wd", dest="weight_decay", default=0.0, type=float)
    g.add_argument("--cache-features", default=False, type=bool_flag,
                   help="encode the train set once without augmentation and train the head on the "
                        "cached features (fast; not the paper protocol, which augments every epoch)")
    g.add_argument("--crop-min", default=0.08, type=float, help="RandomResizedCrop min scale")
    g.add_argument("--aug-device", default="auto", choices=["auto", "device", "workers"])
    g.add_argument("--features", default="backbone", choices=["backbone"], help=argparse.SUPPRESS)
    g.add_argument("--similarity", default="cosine", help=argparse.SUPPRESS)
    return parser


def main(args: argparse.Namespace) -> None:
    dist.launch(main_worker, args)


@torch.no_grad()
def encode_all(encode, loader, prepare, device):
    feats, labels = [], []
    for images, target, _ in loader:
        x = images.to(device)
        feats.append(encode(prepare(x) if prepare is not None else x).float())
        labels.append(target.to(device))
    return torch.cat(feats), torch.cat(labels)


def main_worker(gpu, args):
    dist.init(gpu, args)
    if not args.pretrained and not args.random_init:
        raise SystemExit("error: give --pretrained CHECKPOINT or --random-init")
    seed_everything(args.seed if args.seed is not None else 0)
    t0 = time.time()
    encode, run = build_encoder(args)  # the frozen backbone, in eval mode
    frozen = copy.deepcopy(encode.state_dict())
    size = args.img_size or run["img_size"]
    per_rank = args.batch_size // args.world_size
    train_loader, val_loader, prepare, info = build_eval_loaders(args, size, per_rank)
    val_x, val_y = encode_all(encode, val_loader, prepare, args.device)
    if args.cache_features:
        train_x, train_y = encode_all(encode, train_loader, prepare, args.device)
    else:  # the paper protocol: a fresh RandomResizedCrop + flip of every image every epoch
        args.batch_size_per_gpu = per_rank
        spec = ViewSpec(size, scale=(args.crop_min, 1.0), jitter_p=0.0, gray_p=0.0, blur_p=0.0)
        aug_loader, make_views, _ = build_view_loader(args, [spec], split="train")
    num_classes = info.num_classes or int(val_y.max()) + 1  # `folder`: read off the labels
    head = nn.Linear(val_x.shape[1], num_classes).to(args.device)
    head.weight.data.normal_(mean=0.0, std=0.01)
    head.bias.data.zero_()
    lr = args.lr * args.batch_size / 256
    optimizer = build_optimizer("sgd", [{"params": head.parameters()}], lr, args.weight_decay,
                                args.momentum)
    logger = RunLogger(args.results_dir, dist.is_main_process(), tensorboard=False,
                       filename="log_lincls.txt")
    for epoch in range(args.epochs):
        set_lr_wd(optimizer, lr * 0.5 * (1.0 + math.cos(math.pi * epoch / args.epochs)),
                  args.weight_decay)
        if args.cache_features:
            loss = train_cached(head, optimizer, train_x, train_y, per_rank, args.seed or 0, epoch)
        else:
            aug_loader.sampler.set_epoch(epoch)
            features = torch.no_grad()(lambda x: encode(make_views(x)[0]).float())
            batches = ((features(x), y.to(args.device)) for x, y in aug_loader)
            loss = train_epoch(head, optimizer, batches)
        top1, top5 = validate(head, val_x, val_y)
        logger.epoch({"epoch": epoch + 1, "train_loss": loss, "test_top1": top1,
                      "test_top5": top5})
        print(f"epoch {epoch + 1}/{args.epochs} loss {loss:.4f} top-1 {top1:.2f} top-5 {top5:.2f}")
    sanity_check(encode.state_dict(), frozen)
    if dist.is_main_process():
        args.method, args.arch = run.get("method"), run["arch"]
        write_results(args.results_dir, "linear_random_init" if args.random_init else "linear",
                      args, {"top1": top1, "top5": top5}, time.time() - t0)
    dist.cleanup()


def train_cached(head, optimizer, x, y, batch_size, seed, epoch) -> float:
    """One epoch on cached features; each rank takes its shard of a seeded permutation."""
    g = torch.Generator().manual_seed(seed + epoch)
    order = torch.randperm(x.shape[0], generator=g)[dist.get_rank()::dist.get_world_size()]
    batches = ((x[idx], y[idx]) for idx in order.to(x.device).split(batch_size))
    return train_epoch(head, optimizer, batches)


def train_epoch(head, optimizer, batches) -> float:
    """SGD on (frozen features [B, D], labels [B]) batches; returns the mean loss."""
    total, steps = 0.0, 0
    for feats, labels in batches:
        loss = F.cross_entropy(head(feats), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if dist.get_world_size() > 1:  # average the head's gradients as DDP would
            for p in head.parameters():
                torch.distributed.all_reduce(p.grad)
                p.grad /= dist.get_world_size()
        optimizer.step()
        total, steps = total + loss.detach(), steps + 1
    return float(total / max(steps, 1))


@torch.no_grad()
def validate(head, x, y) -> tuple[float, float]:
    top5 = head(x).topk(min(5, head.out_features), dim=1).indices
    top1 = 100.0 * float((top5[:, 0] == y).float().mean())
    return top1, 100.0 * float((top5 == y[:, None]).any(1).float().mean())


def sanity_check(state, frozen) -> None:
    """moco-v3's check: the backbone must come out of the probe exactly as it went in."""
    for key, value in frozen.items():
        if not torch.equal(state[key], value):
            raise RuntimeError(f"{key} changed during the linear probe: the backbone is not frozen")


if __name__ == "__main__":
    from data.datasets import DATASETS
    from models import BACKBONES
    from models.methods import ALIASES, METHODS
    from utils import cli
    from utils.validate import Known

    parser = argparse.ArgumentParser("Linear probe", parents=[get_args_parser()])
    known = Known(BACKBONES, [*METHODS, *ALIASES], DATASETS)
    cli.run(main, parse_with_config(parser, known=known))
