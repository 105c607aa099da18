"""Linear probe on a frozen encoder: the MoCo v3 protocol by default, the other papers' by flags.

Default (moco-v3 main_lincls.py): backbone in eval mode, Linear head N(0, 0.01) / bias 0, SGD
momentum 0.9, wd 0, per-epoch cosine lr with lr = base x batch / 256, RandomResizedCrop + flip,
val Resize + CenterCrop. --optimizer, --lr-schedule, --train-aug, --interpolation,
--val-resize-ratio, --head-init, --head-outputs and --backbone-mode reproduce DSF, PatchMix, NNCLR
(solo-learn), BeCLR and MV-MR (docs/evaluation.md). results.json keeps the last and the best epoch.

Under DDP every rank holds the features of the whole val set (and, cached, of the whole train set),
so the reported accuracy is over every val image whatever the number of processes.

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
from data.views import TRAIN_AUGS, ViewSpec
from models.encoder import add_encoder_args, build_encoder, inherit_normalisation
from utils import dist
from utils.args import add_common_args, parse_with_config
from utils.checkpoint import load_checkpoint
from utils.knn import extract_features
from utils.logger import RunLogger
from utils.misc import bool_flag, seed_everything, to_device
from utils.optim import build_optimizer, set_lr_wd
from utils.results import write_results


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("Linear probe", add_help=False)
    add_common_args(parser)
    add_encoder_args(parser)
    g = parser.add_argument_group("probe")
    g.add_argument("-b", "--batch-size", default=256, type=int, help="global batch (default: 256)")
    g.add_argument("--lr", default=0.1, type=float,
                   help="base lr, x batch/256 (default: 0.1; ViT: 3; DSF: 30)")
    g.add_argument("--epochs", default=90, type=int, help="training epochs (default: 90)")
    g.add_argument("--momentum", default=0.9, type=float, help="SGD momentum (default: 0.9)")
    g.add_argument("--weight-decay", "--wd", dest="weight_decay", default=0.0, type=float,
                   help="weight decay (default: 0)")
    g.add_argument("--optimizer", default="sgd", choices=["sgd", "nesterov", "adam"],
                   help="sgd (default), nesterov (PatchMix) or adam with L2 weight decay (BeCLR, MV-MR)")
    g.add_argument("--lr-schedule", default="cosine", choices=["cosine", "step"],
                   help="per-epoch cosine to 0 (default), or x0.1 at each of --lr-steps")
    g.add_argument("--lr-lag", default=0, type=int,
                   help="epochs the lr runs behind its schedule (default: 0; PatchMix: 1, its cosine steps "
                        "after each epoch)")
    g.add_argument("--lr-steps", default=[], nargs="+", type=int,
                   help="epochs where the step schedule multiplies the lr by 0.1 (default: none; solo-learn: "
                        "60 80)")
    g.add_argument("--cache-features", default=False, type=bool_flag,
                   help="train the head on features encoded once, un-augmented (default: false; fast, not a "
                        "paper protocol)")
    g.add_argument("--train-aug", default="crop", choices=sorted(TRAIN_AUGS),
                   help="crop = RandomResizedCrop + flip (default); dsf, mvmr add those methods' colour ops")
    g.add_argument("--crop-min", default=0.08, type=float, help="RandomResizedCrop min scale (default: 0.08)")
    g.add_argument("--aug-device", default="auto", choices=["auto", "device", "workers"],
                   help="where the train views are made (default: auto, per dataset and device)")
    g.add_argument("--head-init", default="normal", choices=["normal", "default", "probe"],
                   help="normal = N(0, 0.01) (default), default = nn.Linear's (PatchMix), probe = the "
                        "checkpoint's online probe")
    g.add_argument("--head-outputs", default=0, type=int,
                   help="head outputs (default: 0 = the class count; DSF CIFAR: 128)")
    g.add_argument("--backbone-mode", default="eval", choices=["eval", "train"],
                   help="eval (default); train = frozen weights but BN on batch statistics, running ones "
                        "updated (BeCLR)")
    return parser


def main(args: argparse.Namespace) -> None:
    check_args(args)  # before any process starts
    dist.launch(main_worker, args)


def check_args(args) -> None:
    if args.epochs < 1:
        raise SystemExit(f"error: --epochs {args.epochs}: the probe needs at least one epoch")
    if args.lr_schedule == "step" and not args.lr_steps:
        raise SystemExit("error: --lr-schedule step needs --lr-steps E1 E2 ...")
    if args.backbone_mode == "train" and args.cache_features:
        raise SystemExit("error: --backbone-mode train needs --cache-features false (BN statistics "
                         "of cached features never change)")
    if args.head_init == "probe" and args.random_init:
        raise SystemExit("error: --head-init probe needs --pretrained with an online probe")


def main_worker(gpu, args):
    dist.init(gpu, args)
    seed_everything(args.seed if args.seed is not None else 0)  # same head init on every rank
    t0 = time.time()
    # ============ frozen encoder and data ============
    encoder, run = build_encoder(args)  # the backbone, in eval mode
    inherit_normalisation(args, run)
    frozen = copy.deepcopy(encoder.state_dict())
    size = args.img_size or run["img_size"]
    args.batch_size_per_gpu = args.batch_size // args.world_size
    train_loader, val_loader, prepare, info = build_eval_loaders(args, size,
                                                                 args.batch_size_per_gpu)
    n_train, n_val = len(train_loader.dataset), len(val_loader.dataset)

    def encode_val():
        return extract_features(encoder, val_loader, n_val, args.device, prepare, desc="val")

    val = encode_val()
    if args.cache_features:
        train = extract_features(encoder, train_loader, n_train, args.device, prepare, desc="train")
    else:  # the paper protocol: a fresh augmented view of every image every epoch
        spec = ViewSpec(size, scale=(args.crop_min, 1.0), interpolation=args.interpolation,
                        **TRAIN_AUGS[args.train_aug](size))
        aug_loader, make_views, _ = build_view_loader(args, [spec], split="train")
    # ============ head and optimizer ============
    head = build_head(args, val[0].shape[1], info.num_classes)  # the dataset's class list
    lr = args.lr * args.batch_size / 256
    if args.optimizer == "adam":
        optimizer = build_optimizer("adam", [{"params": head.parameters()}], lr, args.weight_decay)
    else:
        optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=args.momentum,
                                    weight_decay=args.weight_decay,
                                    nesterov=args.optimizer == "nesterov")
    # ============ train ============
    logger = RunLogger(args.results_dir, dist.is_main_process(), tensorboard=False,
                       filename="log_lincls.txt")
    best = {"top1_best": -1.0}
    for epoch in range(args.epochs):
        set_lr_wd(optimizer, lr_at(epoch, lr, args), args.weight_decay)
        if args.cache_features:
            batches = cached_batches(*train, args.batch_size_per_gpu, args.seed or 0, epoch)
        else:
            batches = augmented_batches(encoder, aug_loader, make_views, epoch, args)
        loss = train_epoch(head, optimizer, batches)
        if args.backbone_mode == "train":  # the BN running statistics moved: encode val again
            average_buffers(encoder)
            val = encode_val()
        top1, top5 = validate(head, *val)
        if top1 > best["top1_best"]:
            best = {"top1_best": top1, "top5_best": top5, "best_epoch": epoch + 1}
        logger.epoch({"epoch": epoch + 1, "train_loss": loss, "test_top1": top1,
                      "test_top5": top5})
        print(f"epoch {epoch + 1}/{args.epochs} loss {loss:.4f} top-1 {top1:.2f} top-5 {top5:.2f}"
              f" (best {best['top1_best']:.2f})")
    sanity_check(encoder, frozen, args.backbone_mode)
    if dist.is_main_process():
        args.method, args.arch = run.get("method"), run["arch"]
        protocol = {k: getattr(args, k) for k in ("optimizer", "lr_schedule", "train_aug",
                                                  "head_init", "backbone_mode", "cache_features")}
        write_results(args.results_dir, "linear_random_init" if args.random_init else "linear",
                      args, {"top1": top1, "top5": top5, **best, "train_images": n_train,
                             "val_images": n_val, **protocol}, time.time() - t0)
    dist.cleanup()


def build_head(args, feat_dim: int, num_classes: int) -> nn.Linear:
    outputs = args.head_outputs or num_classes
    if outputs < num_classes:
        raise SystemExit(f"error: --head-outputs {outputs} is below the {num_classes} classes")
    head = nn.Linear(feat_dim, outputs)  # PyTorch's init from the seeded RNG: --head-init default
    if args.head_init == "normal":
        head.weight.data.normal_(mean=0.0, std=0.01)
        head.bias.data.zero_()
    elif args.head_init == "probe":
        state = (load_checkpoint(args.pretrained).get("probe") or {}).get("head")
        if state is None or state["weight"].shape != head.weight.shape:
            raise SystemExit(f"error: {args.pretrained} has no online probe of shape "
                             f"{tuple(head.weight.shape)}: pretrain with --online-probe true, or "
                             "use --head-init normal")
        head.load_state_dict(state)
    return head.to(args.device)


def lr_at(epoch: int, lr: float, args) -> float:
    epoch = max(epoch - args.lr_lag, 0)  # --lr-lag 1: epoch e trains at e - 1's lr
    if args.lr_schedule == "step":  # moco-v3 / torch MultiStepLR: x0.1 from each step epoch on
        return lr * 0.1 ** sum(epoch >= step for step in args.lr_steps)
    return lr * 0.5 * (1.0 + math.cos(math.pi * epoch / args.epochs))


def cached_batches(x, y, batch_size: int, seed: int, epoch: int):
    """(features, labels) batches of one epoch on cached features of the whole train set.

    A seeded permutation, padded by repeating its head (as DistributedSampler) to a multiple of the
    world size, so every rank runs the same number of steps; rank r takes every W-th sample, so
    the ranks' step-i batches together are the 1-process step-i batch.
    """
    world = dist.get_world_size()
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed + epoch))
    order = torch.cat([order, order[:(-order.shape[0]) % world]])[dist.get_rank()::world]
    for idx in order.to(x.device).split(batch_size):
        yield x[idx], y[idx]


def augmented_batches(encoder, loader, make_views, epoch: int, args):
    """(features, labels) of freshly augmented views; the sampler gives every rank the same
    number of batches (drop_last)."""
    loader.sampler.set_epoch(epoch)
    encoder.train(args.backbone_mode == "train")
    try:
        for x, y in loader:
            with torch.no_grad():
                feats = encoder(make_views(to_device(x, args.device))[0]).float()
            yield feats, y.to(args.device, non_blocking=True)
    finally:
        encoder.eval()


def train_epoch(head, optimizer, batches) -> float:
    """SGD on (frozen features [B, D], labels [B]) batches; returns the mean loss over ranks."""
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
    return float(dist.all_reduce_mean(torch.as_tensor(total / max(steps, 1))))  # all ranks' mean


@torch.no_grad()
def validate(head, x, y) -> tuple[float, float]:
    """Top-1 / top-5 (%) over every val image (each rank holds all of them)."""
    top5 = head(x.float()).topk(min(5, head.out_features), dim=1).indices
    top1 = 100.0 * float((top5[:, 0] == y).float().mean())
    return top1, 100.0 * float((top5 == y[:, None]).any(1).float().mean())


@torch.no_grad()
def average_buffers(module: nn.Module) -> None:
    """Mean over ranks of the BN running statistics, which each rank updated on its own batches:
    validation then encodes with one set, as DDP's buffer broadcast would."""
    if dist.get_world_size() > 1:
        for buffer in module.buffers():
            if buffer.is_floating_point():
                torch.distributed.all_reduce(buffer)
                buffer /= dist.get_world_size()


def sanity_check(encoder: nn.Module, frozen: dict, backbone_mode: str) -> None:
    """moco-v3's check: the backbone comes out of the probe exactly as it went in. With
    --backbone-mode train the BN running statistics move by design, so only weights are checked."""
    state = encoder.state_dict()
    keys = frozen if backbone_mode == "eval" else dict(encoder.named_parameters())
    for key in keys:
        if not torch.equal(state[key], frozen[key]):
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
