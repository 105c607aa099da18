"""Multi-view contrastive pretraining: one loop for every method of models/methods.py.

    python main_pretrain.py --method mocov3 -a vit_small -b 1024 --optimizer adamw --lr 1.5e-4 \
        --weight-decay .1 --epochs 300 --warmup-epochs 40 --stop-grad-conv1 --moco-m-cos \
        --dataset imagenet --data /path/to/imagenet --multiprocessing-distributed --world-size 1 --rank 0

Read top to bottom: arguments, launch, main_worker (data -> model -> loss -> optimizer and schedules
-> resume -> train), train_one_epoch.
"""

import argparse
import math
import sys
import time

import torch

from data.datasets import DatasetError, dataset_info
from data.loaders import build_eval_loaders, build_view_loader
from data.views import original_view
from models.methods import ALIASES, METHODS, add_method_args, build_model
from utils import dist
from utils.args import add_checkpoint_and_monitor_args, add_common_args, parse_with_config
from utils.checkpoint import (
    check_compatible,
    checkpoint_path,
    find_resume,
    prune_checkpoints,
    restore_training_state,
    save_atomic,
    training_state,
)
from utils.knn import encoder_in_eval, extract_features, knn_classify
from utils.logger import MetricAverager, RunLogger, format_metrics, log_run_args
from utils.misc import bool_flag, probability, seed_everything
from utils.online_probe import OnlineProbe
from utils.optim import build_optimizer, lars_options, param_groups, set_lr_wd
from utils.preemption import PREEMPTED_EXIT_CODE, Preemption
from utils.results import write_results
from utils.schedules import training_schedules
from utils.training import NonFiniteError, amp_context, build_scaler, check_finite

# a checkpoint saved with other values of these cannot continue this run
RUN_KEYS = ["method", "arch", "width", "ns", "img_size", "patch_size", "moco_dim", "batch_size"]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("Multi-view contrastive pretraining", add_help=False)
    add_common_args(parser)
    g = parser.add_argument_group("method")
    methods = "; ".join(f"{k}: {m.summary}" for k, m in sorted(METHODS.items()))
    g.add_argument("--method", "--model", dest="method", default="mocov3",
                   help=f"one of {sorted(METHODS)} (aliases {ALIASES}). {methods}")
    g = parser.add_argument_group("backbone")
    g.add_argument("-a", "--arch", default="resnet50",
                   help="resnet18 | resnet34 | resnet50 | vit_tiny | vit_small | vit_base")
    g.add_argument("--width", default=64, type=int,
                   help="ResNet first-stage width (64 = standard; 16 for fast CPU runs)")
    g.add_argument("--img-size", default=None, type=int,
                   help="training crop size (default: the dataset's: 224 ImageNet, 32 CIFAR, 28 bundled)")
    g.add_argument("--patch-size", default=None, type=int,
                   help="ViT patch size (default: 16 at >= 128 px, else 4)")
    g.add_argument("--stop-grad-conv1", action="store_true",
                   help="freeze the ViT patch projection at its random init (MoCo v3)")
    g.add_argument("--drop-path", default=0.0, type=probability,
                   help="ViT stochastic depth (online only)")
    g = parser.add_argument_group("MoCo v3 (shared by the momentum methods)")
    g.add_argument("--moco-dim", default=256, type=int, help="embedding dimension (default: 256)")
    g.add_argument("--moco-mlp-dim", default=4096, type=int, help="hidden MLP width (default: 4096)")
    g.add_argument("--moco-m", default=0.99, type=float, help="EMA momentum m0 (default: 0.99)")
    g.add_argument("--moco-m-cos", action="store_true", help="raise m from m0 to 1 by a half cosine")
    g.add_argument("--moco-t", default=1.0, type=float,
                   help="softmax temperature of every InfoNCE-family loss (moco-v3 default: 1.0; "
                        "ViT recipes 0.2). DSF ignores it: it uses --kld-t")
    g.add_argument("--crop-min", default=0.08, type=float,
                   help="minimum RandomResizedCrop scale (0.08 ViT, 0.2 ResNet recipes)")
    g.add_argument("--ns", default=1, type=int,
                   help="crops per branch: each image gives 2 x ns views (DSF: 4)")
    add_method_args(parser)
    g = parser.add_argument_group("optimization")
    g.add_argument("-b", "--batch-size", "--batch_size", dest="batch_size", default=256, type=int,
                   help="GLOBAL batch over all processes (moco-v3)")
    g.add_argument("--lr", "--learning-rate", dest="lr", default=0.6, type=float,
                   help="base lr; the effective lr is lr x batch / 256")
    g.add_argument("--min-lr", default=0.0, type=float, help="final lr of the cosine (default: 0)")
    g.add_argument("--epochs", default=100, type=int)
    g.add_argument("--warmup-epochs", default=10, type=float, help="linear lr warmup (epochs)")
    g.add_argument("--weight-decay", "--wd", dest="weight_decay", default=1e-6, type=float)
    g.add_argument("--weight-decay-end", default=None, type=float,
                   help="cosine weight-decay schedule end value (PatchMix: 0.04 -> 0.4); "
                        "default: constant")
    g.add_argument("--optimizer", default="lars", choices=["lars", "sgd", "adamw", "adam"])
    g.add_argument("--momentum", default=0.9, type=float, help="SGD/LARS momentum")
    g.add_argument("--exclude-norm-bias", default=False, type=bool_flag,
                   help="no weight decay on biases and norm parameters (moco-v3 AdamW applies it to "
                        "all, as DSF does; LARS excludes them itself)")
    g.add_argument("--clip-grad", default=0.0, type=float, help="max grad norm (0 = off)")
    g.add_argument("--momentum-per-epoch", default=False, type=bool_flag,
                   help="reproduce PatchMix's once-per-epoch momentum update (methods.md §9.6-1)")
    g = parser.add_argument_group("speed")
    g.add_argument("--amp", default="auto", choices=["auto", "off", "bf16", "fp16"],
                   help="autocast: auto = fp16 + GradScaler on CUDA, off on CPU; bf16 works on both")
    g.add_argument("--compile", default=False, type=bool_flag, help="torch.compile the model")
    g.add_argument("--aug-device", default="auto", choices=["auto", "device", "split", "workers"],
                   help="where views are made (default auto: device for in-memory data, split for "
                        "folders on CUDA, workers on CPU); split = workers crop, device colours")
    g.add_argument("--hue-impl", default="float", choices=["float", "pil"],
                   help="ColorJitter hue: float HSV (default, fast) or PIL's 8-bit HSV (what the "
                        "official PIL pipelines do)")
    add_checkpoint_and_monitor_args(parser)
    return parser


def main(args: argparse.Namespace) -> None:
    args.method = ALIASES.get(args.method, args.method)
    if args.method not in METHODS:
        sys.exit(f"error: --method {args.method!r} is unknown; choose from {sorted(METHODS)}")
    try:
        dist.launch(main_worker, args)
    except (DatasetError, FileNotFoundError) as e:  # bad data: one line, not a traceback
        if getattr(args, "debug", False):
            raise
        sys.exit(f"error: {e}")


def main_worker(gpu, args):
    dist.init(gpu, args)
    device = args.device
    if args.batch_size % args.world_size:
        raise SystemExit(f"error: -b {args.batch_size} is not divisible by the {args.world_size} "
                         "processes; pick a multiple of the world size")
    args.batch_size_per_gpu = args.batch_size // args.world_size
    args.lr_effective = args.lr * args.batch_size / 256
    if args.seed is not None:
        seed_everything(args.seed + args.rank)
    log_run_args(args, dist.is_main_process())
    method = METHODS[args.method]

    # ============ data ============
    args.img_size = args.img_size or dataset_info(args.dataset).img_size
    probe_view = [original_view(args.img_size)] if args.online_probe else []  # the last view
    loader, augment, info = build_view_loader(args, method.views(args) + probe_view)
    iters = len(loader) if not args.steps_per_epoch else min(len(loader), args.steps_per_epoch)

    # ============ model ============
    model = build_model(args)[0].to(device)
    if args.channels_last and not args.arch.startswith("vit"):
        model = model.to(memory_format=torch.channels_last)
    if args.world_size > 1 and args.gpu is not None and getattr(model, "sync_bn", True):
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # moco-v3; CUDA only
    model_without_ddp = model
    ddp = dist.ddp_wrapper(args)
    model = ddp(model) if ddp else model
    forward = torch.compile(model) if args.compile else model
    probe = OnlineProbe(model_without_ddp.backbone.num_features, info.num_classes, device,
                        args.online_probe_lr, ddp) if args.online_probe else None

    # ============ loss ============
    criterion = method.loss(args).to(device)

    # ============ optimizer and schedules ============
    optimizer = build_optimizer(args.optimizer, param_groups(model_without_ddp,
                                                             args.exclude_norm_bias),
                                args.lr_effective, args.weight_decay, args.momentum,
                                **lars_options(args))
    scaler = build_scaler(args)
    schedules = training_schedules(args, iters)

    # ============ resume ============
    parts = {"model": model_without_ddp, "criterion": criterion, "optimizer": optimizer,
             "scaler": scaler, "probe": probe}
    start = {"epoch": 0, "step": 0, "nonfinite_skipped": 0}
    found = find_resume(args.resume, args.results_dir)
    if found:
        path, ckpt = found
        check_compatible(ckpt, args, path, RUN_KEYS)
        start = restore_training_state(ckpt, parts, args.rank)
        print(f"resumed from {path} at epoch {start['epoch']} step {start['step']}")
        if start["epoch"] >= args.epochs:  # keep the finished run's results.json as it is
            print(f"nothing to do: {path} is the end of this {args.epochs}-epoch run")
            dist.cleanup()
            return

    def save(epoch: int, step: int) -> None:
        state = training_state(parts, epoch, step, args, start["nonfinite_skipped"])
        if dist.is_main_process():
            save_atomic(state, checkpoint_path(args.results_dir, epoch, step))
            prune_checkpoints(args.results_dir, args.keep_checkpoints)

    # ============ train ============
    start["preemption"] = Preemption(device)
    logger = RunLogger(args.results_dir, dist.is_main_process())
    history, t0, images_seen = [], time.time(), 0
    for epoch in range(start["epoch"], args.epochs):
        loader.sampler.set_epoch(epoch, start["step"] * args.batch_size_per_gpu)
        stats = train_one_epoch(forward, model_without_ddp, criterion, probe, loader, augment,
                                optimizer, scaler, schedules, epoch, iters, start, save, args)
        images_seen += stats.pop("images")
        start["step"] = 0
        record = {"epoch": epoch + 1, **{f"train_{k}": v for k, v in stats.items()}}
        knn_due = args.knn_freq and ((epoch + 1) % args.knn_freq == 0 or epoch + 1 == args.epochs)
        if knn_due or probe is not None:
            record.update(monitor(model_without_ddp, probe, knn_due, args))
            history.append(record)
        print(f"epoch {epoch + 1}/{args.epochs}  {format_metrics(record)}")
        if record.get("train_active_frac", 1.0) < 0.1:  # BeCLR's known failure mode
            print(f"warning: only {100 * record['train_active_frac']:.1f}% of the sub-networks are "
                  "selected: the Bregman generator is collapsing (lower --lr or --k-subs)")
        logger.epoch(record)
        save(epoch + 1, 0)
    wall = time.time() - t0
    logger.close()
    if dist.is_main_process():
        write_results(args.results_dir, "pretrain", args, {
            "knn_top1_monitor": next((r["test_knn_top1"] for r in history[::-1]
                                      if "test_knn_top1" in r), None),
            "online_probe_top1": history[-1].get("test_probe_top1") if history else None,
            "images_per_s": images_seen * args.world_size / max(wall, 1e-9)}, wall)
    dist.cleanup()


def train_one_epoch(forward, model, criterion, probe, loader, augment, optimizer, scaler,
                    schedules, epoch, iters, start, save, args):
    forward.train()
    criterion.train()
    meter, images = MetricAverager(), 0
    device = args.device
    buffers = [*model.buffers(), *criterion.buffers()]  # BN statistics, queues, banks
    for i, (x, y) in enumerate(loader, start=start["step"]):
        if i >= iters:
            break
        it = epoch * iters + i  # global iteration: every schedule is indexed by it
        set_lr_wd(optimizer, schedules["lr"][it], schedules["wd"][it])
        if hasattr(model, "update_momentum"):
            model.update_momentum(float(schedules["m"][it]))  # before the forward, as moco-v3
        views = augment(x.to(device, non_blocking=True) if torch.is_tensor(x)
                        else [v.to(device, non_blocking=True) for v in x])
        if args.channels_last and not args.arch.startswith("vit"):
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        # a skipped step must not keep what its non-finite forward wrote into the buffers
        kept = [b.clone() for b in buffers] if args.on_nonfinite == "skip" else []
        y = y.to(device, non_blocking=True)
        with amp_context(args):
            probe_metrics = probe.step(model.backbone, views.pop(), y) if probe else {}
            out = forward(views)
            out.extras["labels"] = y
            loss, metrics = criterion(out)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        max_norm = args.clip_grad if args.clip_grad > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm, foreach=True)
        try:
            check_finite(loss, grad_norm, metrics, epoch, i, args.on_nonfinite)
        except NonFiniteError as skip:
            for b, old in zip(buffers, kept, strict=True):
                b.copy_(old)
            start["nonfinite_skipped"] += 1
            print(f"warning: {skip}; step skipped ({start['nonfinite_skipped']} so far)")
            continue
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        images += y.shape[0]
        meter.update({"loss": loss.detach(), "grad_norm": grad_norm.detach(), **metrics,
                      **probe_metrics})
        if start["preemption"].requested():  # every rank stops after the same step
            save(epoch, i + 1)
            print(f"preempted at epoch {epoch} step {i + 1}: checkpoint saved; exiting with status "
                  f"{PREEMPTED_EXIT_CODE} so that the scheduler requeues the job", force=True)
            raise SystemExit(PREEMPTED_EXIT_CODE)
        if args.save_freq_steps and (i + 1) % args.save_freq_steps == 0 and i + 1 < iters:
            save(epoch, i + 1)
        if i % args.print_freq == 0:
            print(f"epoch {epoch} [{i}/{iters}] lr {schedules['lr'][it]:.3g} "
                  f"{format_metrics(meter.averages())}")
    return {**meter.averages(), "lr": float(schedules["lr"][epoch * iters + iters - 1]),
            "images": images}


def monitor(model, probe, knn_due, args) -> dict:
    """Val top-1 of the online probe, and (when due) the weighted kNN top-1 of the online backbone
    (k = --knn-k, T = --knn-t)."""
    train_loader, val_loader, prepare, info = build_eval_loaders(args, args.img_size)
    encode = encoder_in_eval(model.backbone)
    with amp_context(args):
        val = extract_features(encode, val_loader, len(val_loader.dataset), args.device, prepare)
        record = {"test_probe_top1": probe.top1(*val)} if probe else {}
        if knn_due:
            train = extract_features(encode, train_loader, len(train_loader.dataset), args.device,
                                     prepare)
            accuracy = knn_classify(*train, *val, ks=[args.knn_k], temperature=args.knn_t,
                                    num_classes=info.num_classes)
            record["test_knn_top1"] = accuracy[min(args.knn_k, len(train[0]))]
    return record


if __name__ == "__main__":
    from data.datasets import DATASETS
    from models import BACKBONES
    from models.methods import ALIASES, METHODS
    from utils import cli
    from utils.validate import Known

    parser = argparse.ArgumentParser("Multi-view contrastive pretraining",
                                     parents=[get_args_parser()])
    known = Known(BACKBONES, [*METHODS, *ALIASES], DATASETS, min_batch_per_process=2,
                  drop_last=True)
    cli.run(main, parse_with_config(parser, known=known))
