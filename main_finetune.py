"""End-to-end fine-tuning and semi-supervised evaluation: the whole pretrained encoder plus a fresh
Linear head, trained on all labels or a labelled fraction, evaluated on the full val set.

    python main_finetune.py --config configs/finetune/patchmix_cifar10_vits.yaml \
        --pretrained runs/patchmix_c10_vits/checkpoint_0800_000000.pth.tar --data /path/to/cifar10

Recipes (configs/finetune/) and the official protocols they reproduce: docs/finetune.md.
Read top to bottom: arguments, launch, main_worker (data -> model -> loss -> optimizer and
schedules -> resume -> train), train_one_epoch, evaluate.
"""

import argparse
import math
import os
import time

import torch

from data.datasets import DatasetError
from data.finetune import AUGS, build_train_loader
from data.label_subsets import DRAWS
from data.loaders import build_eval_loaders, resolve_info
from models.encoder import add_encoder_args, build_encoder, inherit_normalisation
from utils import dist
from utils.args import add_common_args, parse_with_config
from utils.checkpoint import (
    check_compatible,
    checkpoint_path,
    find_resume,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    restore_training_state,
    save_atomic,
    training_state,
)
from utils.finetune import (
    Classifier,
    accuracy,
    build_criterion,
    build_ema,
    build_mixup,
    build_optimizer,
    build_scheduler,
    set_drop_path,
    set_lr,
    unfreeze_pos_embed,
)
from utils.knn import encoder_in_eval, extract_features
from utils.logger import MetricAverager, RunLogger, format_metrics, log_run_args
from utils.misc import bool_flag, probability, seed_everything, to_device
from utils.preemption import PREEMPTED_EXIT_CODE, Preemption
from utils.results import write_results
from utils.training import amp_context, build_scaler, check_finite

# a checkpoint saved with other values of these cannot continue this run
RUN_KEYS = ["arch", "img_size", "batch_size", "pretrained", "random_init", "label_fraction",
            "label_draw", "label_subset", "label_seed"]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("Fine-tuning", add_help=False)
    add_common_args(parser)
    add_encoder_args(parser)  # --pretrained / --random-init -a --method, --encoder, val resizing
    g = parser.add_argument_group("fine-tuning")
    g.add_argument("--drop-path", default=0.0, type=probability,
                   help="ViT stochastic depth (default: 0; DeiT recipes: 0.1)")
    g.add_argument("--train-pos-embed", default=False, type=bool_flag,
                   help="make a fixed sin-cos position embedding trainable (default: false; moco-v3 ViT "
                        "recipes: true)")
    g = parser.add_argument_group("labels (semi-supervised)")
    g.add_argument("--label-fraction", default=1.0, type=float,
                   help="fraction of the training labels (default: 1 = all; 0.01 / 0.1: semi-supervised)")
    g.add_argument("--label-subset", default="",
                   help="file of file names (e.g. 1percent.txt) or indices, one per line, overriding the "
                        "draw (default: none)")
    g.add_argument("--label-draw", default="balanced", choices=DRAWS,
                   help="balanced per class (default), mvmr (randint with replacement), beclr "
                        "(random_split)")
    g.add_argument("--label-seed", default=0, type=int, help="seed of the draw (default: 0)")
    g.add_argument("--mvmr-draw", default=1, type=int,
                   help="with --label-draw mvmr: which randint call the subset is (default: 1)")
    g = parser.add_argument_group("optimization")
    g.add_argument("-b", "--batch-size", default=256, type=int,
                   help="GLOBAL batch over all processes (default: 256)")
    g.add_argument("--lr", default=5e-4, type=float,
                   help="base lr; effective lr = lr x batch / 256 (default: 5e-4)")
    g.add_argument("--min-lr", default=1e-5, type=float, help="final lr of the cosine (default: 1e-5)")
    g.add_argument("--warmup-lr", default=1e-6, type=float, help="lr the warmup starts from (default: 1e-6)")
    g.add_argument("--epochs", default=100, type=int)
    g.add_argument("--warmup-epochs", default=5, type=float, help="linear warmup in epochs (default: 5)")
    g.add_argument("--weight-decay", "--wd", dest="weight_decay", default=0.05, type=float)
    g.add_argument("--wd-exclude-norm-bias", default=True, type=bool_flag,
                   help="no weight decay on 1-D parameters and pos/cls tokens (default: true; MV-MR: false)")
    g.add_argument("--opt", default="adamw", help="timm optimizer name: adamw (default), adam, sgd, lamb ...")
    g.add_argument("--opt-eps", default=1e-8, type=float, help="Adam(W) epsilon")
    g.add_argument("--momentum", default=0.9, type=float, help="SGD momentum")
    g.add_argument("--layer-decay", default=None, type=float,
                   help="layer-wise lr decay, ViT only (default: off; PatchMix: 0.75)")
    g.add_argument("--sched", default="cosine", choices=["cosine", "mvmr", "constant"],
                   help="cosine with warmup (default), mvmr (MV-MR's per-epoch cosine) or constant (BeCLR)")
    g.add_argument("--sched-per-epoch", default=False, type=bool_flag,
                   help="change the lr once per epoch (default: every step; DeiT/PatchMix: true)")
    g.add_argument("--sched-epoch-lag", default=False, type=bool_flag,
                   help="epoch e runs at the lr of e - 1 (default: false; DeiT/PatchMix: true)")
    g.add_argument("--clip-grad", default=0.0, type=float, help="max grad norm (0 = off)")
    g = parser.add_argument_group("augmentation and regularisation")
    g.add_argument("--train-aug", default="timm", choices=AUGS,
                   help="timm create_transform (default), simple crop + flip (BeCLR) or none (the eval "
                        "transform)")
    g.add_argument("--train-crop", default="auto", choices=["auto", "rrc", "pad"],
                   help="auto (default): RandomCrop(padding 4) at <= 32 px, else a resized crop")
    g.add_argument("--crop-min", default=0.08, type=float,
                   help="--train-aug simple: min crop scale (default: 0.08)")
    g.add_argument("--aa", default="rand-m9-mstd0.5-inc1",
                   help="timm RandAugment (default: rand-m9-mstd0.5-inc1; '' = off)")
    g.add_argument("--color-jitter", default=0.4, type=float,
                   help="ColorJitter strength, used only without --aa (default: 0.4)")
    g.add_argument("--train-interpolation", default="bicubic")
    g.add_argument("--reprob", default=0.25, type=probability,
                   help="RandomErasing probability (default: 0.25)")
    g.add_argument("--mixup", default=0.8, type=float, help="Mixup alpha (default: 0.8; 0 = off)")
    g.add_argument("--cutmix", default=1.0, type=float, help="CutMix alpha (default: 1.0; 0 = off)")
    g.add_argument("--mixup-prob", default=1.0, type=probability)
    g.add_argument("--mixup-switch-prob", default=0.5, type=probability,
                   help="probability of CutMix rather than Mixup (default: 0.5)")
    g.add_argument("--smoothing", default=0.1, type=probability, help="label smoothing (default: 0.1)")
    g.add_argument("--model-ema", default=False, type=bool_flag,
                   help="keep a weight EMA and evaluate it too, as top1_ema (default: false)")
    g.add_argument("--model-ema-decay", default=0.99996, type=float)
    g = parser.add_argument_group("run control")
    g.add_argument("--amp", default="auto", choices=["auto", "off", "bf16", "fp16", "bf16-native"],
                   help="autocast (default: auto = fp16 + GradScaler on CUDA, off on CPU)")
    g.add_argument("--resume", default="",
                   help="checkpoint path, or 'auto' (newest in --results_dir) (default: none)")
    g.add_argument("--save-freq-steps", default=0, type=int,
                   help="also checkpoint every N steps inside an epoch (default: 0 = end of epoch only)")
    g.add_argument("--keep-checkpoints", default=2, type=int, help="keep the newest N (default: 2; 0 = all)")
    g.add_argument("--print-freq", default=50, type=int)
    g.add_argument("--steps-per-epoch", default=0, type=int,
                   help="cap on steps per epoch, for smoke tests (default: 0 = all)")
    return parser


def main(args: argparse.Namespace) -> None:
    try:
        dist.launch(main_worker, args)
    except (DatasetError, FileNotFoundError) as e:  # bad data: one line, not a traceback
        raise SystemExit(f"error: {e}") from None


def main_worker(gpu, args):
    dist.init(gpu, args)
    if args.batch_size % args.world_size:
        raise SystemExit(f"error: -b {args.batch_size} is not divisible by the {args.world_size} "
                         "processes; pick a multiple of the world size")
    args.batch_size_per_gpu = args.batch_size // args.world_size
    args.lr_effective = args.lr * args.batch_size / 256
    check_not_pretraining_dir(args.results_dir)
    seed_everything((args.seed or 0) + args.rank)
    log_run_args(args, dist.is_main_process())
    t0 = time.time()

    # ============ model ============
    backbone, run = build_encoder(args)
    inherit_normalisation(args, run)  # the pretraining's --mean/--std unless given
    args.img_size = args.img_size or run["img_size"]
    set_drop_path(backbone, args.drop_path)
    if args.train_pos_embed:
        unfreeze_pos_embed(backbone)

    # ============ data ============
    info = resolve_info(args)
    loader, train_images, num_classes = build_train_loader(args, info, args.img_size)
    _, val_loader, prepare, _ = build_eval_loaders(args, args.img_size, args.batch_size_per_gpu)
    iters = min(len(loader), args.steps_per_epoch or len(loader))
    model = Classifier(backbone, backbone.num_features, num_classes).to(args.device).train()
    if args.world_size > 1 and args.gpu is not None:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # CUDA only, as pretraining
    model_without_ddp = model
    ddp = dist.ddp_wrapper(args)
    model = ddp(model) if ddp else model
    ema = build_ema(model_without_ddp, args)

    # ============ loss ============
    mixup = build_mixup(args, num_classes)
    if mixup is not None and args.batch_size_per_gpu % 2:
        raise SystemExit("error: Mixup/CutMix needs an even per-process batch; change -b")
    criterion = build_criterion(args, mixup)

    # ============ optimizer and schedules ============
    optimizer = build_optimizer(model_without_ddp, args)
    scheduler = build_scheduler(optimizer, args, iters)
    scaler = build_scaler(args)

    # ============ resume ============
    parts = {"model": model_without_ddp, "optimizer": optimizer, "scaler": scaler, "ema": ema}
    start = {"epoch": 0, "step": 0, "nonfinite_skipped": 0}
    best = {"top1_best": -1.0, "top5_best": 0.0, "best_epoch": 0}
    found = find_resume(args.resume, args.results_dir)
    if found:
        path, ckpt = found
        check_compatible(ckpt, args, path, RUN_KEYS)
        start = restore_training_state(ckpt, parts, args.rank)
        best = ckpt.get("best", best)
        print(f"resumed from {path} at epoch {start['epoch']} step {start['step']}")

    def save(epoch: int, step: int) -> None:
        state = training_state(parts, epoch, step, args, start["nonfinite_skipped"])
        state["best"], state["kind"] = dict(best), "finetune"
        if dist.is_main_process():
            save_atomic(state, checkpoint_path(args.results_dir, epoch, step))
            prune_checkpoints(args.results_dir, args.keep_checkpoints)

    # ============ train ============
    start["preemption"] = Preemption(args.device)
    logger = RunLogger(args.results_dir, dist.is_main_process(), tensorboard=False,
                       filename="log_finetune.txt")
    record = {}
    for epoch in range(start["epoch"], args.epochs):
        loader.sampler.set_epoch(epoch, start["step"] * args.batch_size_per_gpu)
        stats = train_one_epoch(model, model_without_ddp, criterion, loader, optimizer, scheduler,
                                scaler, mixup, ema, epoch, iters, start, save, args)
        start["step"] = 0
        record = {"epoch": epoch + 1, **{f"train_{k}": v for k, v in stats.items()},
                  **evaluate(model_without_ddp, val_loader, prepare, args, "test_")}
        if ema is not None:
            record.update(evaluate(ema.module, val_loader, prepare, args, "test_ema_"))
        if record["test_top1"] > best["top1_best"]:
            best = {"top1_best": record["test_top1"], "top5_best": record["test_top5"],
                    "best_epoch": epoch + 1}
        print(f"epoch {epoch + 1}/{args.epochs}  {format_metrics(record)}")
        logger.epoch(record)
        save(epoch + 1, 0)
    logger.close()
    if not record:  # resumed at the end: evaluate the finished model once more
        record = evaluate(model_without_ddp, val_loader, prepare, args, "test_")
    if dist.is_main_process():
        args.method, args.arch = run.get("method"), run["arch"]
        metrics = {"top1": record["test_top1"], "top5": record["test_top5"], **best,
                   "top1_ema": record.get("test_ema_top1"), "label_fraction": args.label_fraction,
                   "label_draw": args.label_draw, "train_images": train_images,
                   "val_images": len(val_loader.dataset)}
        kind = "finetune_random_init" if args.random_init else "finetune"
        write_results(args.results_dir, kind, args, metrics, time.time() - t0)
    dist.cleanup()


def check_not_pretraining_dir(results_dir: str) -> None:
    """Fine-tuning checkpoints share pretraining's names: in a pretraining run's directory, the
    pruning would delete its checkpoints and --resume auto would load one of them."""
    existing = list_checkpoints(results_dir)
    if existing and load_checkpoint(existing[0]).get("kind") != "finetune":
        raise SystemExit(f"error: {results_dir} holds pretraining checkpoints; give fine-tuning "
                         f"its own --results_dir (e.g. {os.path.join(results_dir, 'finetune')})")


def train_one_epoch(model, model_without_ddp, criterion, loader, optimizer, scheduler, scaler,
                    mixup, ema, epoch, iters, start, save, args):
    model.train()
    meter, lr = MetricAverager(), 0.0
    for i, (x, y) in enumerate(loader, start=start["step"]):
        if i >= iters:
            break
        lr = set_lr(optimizer, scheduler, epoch, i, iters, args)
        x, y = to_device(x, args.device), to_device(y, args.device)
        if mixup is not None:
            x, y = mixup(x, y)  # soft targets [B, C]
        with amp_context(args):
            loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        max_norm = args.clip_grad if args.clip_grad > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm, foreach=True)
        check_finite(loss, grad_norm, {}, epoch, i, "stop")
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if ema is not None:
            ema.update(model_without_ddp)
        meter.update({"loss": loss.detach(), "grad_norm": grad_norm.detach()})
        if start["preemption"].requested():  # every rank stops after the same step
            save(epoch, i + 1)
            print(f"preempted at epoch {epoch} step {i + 1}: checkpoint saved", force=True)
            raise SystemExit(PREEMPTED_EXIT_CODE)
        if args.save_freq_steps and (i + 1) % args.save_freq_steps == 0 and i + 1 < iters:
            save(epoch, i + 1)
        if i % args.print_freq == 0:
            print(f"epoch {epoch} [{i}/{iters}] lr {lr:.3g} {format_metrics(meter.averages())}")
    return {**meter.averages(), "lr": lr}


@torch.no_grad()
def evaluate(model, val_loader, prepare, args, prefix: str) -> dict:
    """Top-1/top-5 (%) on the whole val set: each rank scores its shard, logits are placed by
    dataset index and summed over ranks (DistributedSampler padding is not counted twice)."""
    with amp_context(args):
        logits, labels = extract_features(encoder_in_eval(model), val_loader,
                                          len(val_loader.dataset), args.device, prepare)
    top1, top5 = accuracy(logits, labels)
    return {f"{prefix}top1": top1, f"{prefix}top5": top5}


if __name__ == "__main__":
    from data.datasets import DATASETS
    from models import BACKBONES
    from models.methods import ALIASES, METHODS
    from utils import cli
    from utils.validate import Known

    parser = argparse.ArgumentParser("Fine-tuning", parents=[get_args_parser()])
    known = Known(BACKBONES, [*METHODS, *ALIASES], DATASETS, min_batch_per_process=2)
    cli.run(main, parse_with_config(parser, known=known))
