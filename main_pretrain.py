"""Multi-view contrastive pretraining: one loop for every method of models/methods.py.

    python main_pretrain.py --method mocov3 -a vit_small -b 1024 --optimizer adamw --lr 1.5e-4 \
        --weight-decay .1 --epochs 300 --warmup-epochs 40 --stop-grad-conv1 --moco-m-cos \
        --dataset imagenet --data /path/to/imagenet --multiprocessing-distributed --world-size 1 --rank 0

Read top to bottom: arguments, launch, main_worker (data -> model -> loss -> optimizer and schedules
-> resume -> train), train_one_epoch.
"""

import argparse
import sys
import time

import torch

from data.datasets import DatasetError, dataset_info
from data.loaders import build_eval_loaders, build_view_loader
from data.views import original_view
from models.methods import ALIASES, METHODS, add_method_args, build_model
from utils import dist
from utils.args import add_checkpoint_and_monitor_args, add_common_args, parse_with_config
from utils.checkpoint import resume_run, save_checkpoint
from utils.knn import encoder_in_eval, extract_features, knn_classify
from utils.logger import (
    MetricAverager,
    Progress,
    RunLogger,
    format_metrics,
    log_run_args,
    run_summary,
)
from utils.misc import bool_flag, probability, seed_everything, to_device
from utils.online_probe import OnlineProbe
from utils.optim import build_optimizer, lars_options, param_groups, set_lr_wd
from utils.preemption import PREEMPTED_EXIT_CODE, Preemption
from utils.results import write_results
from utils.schedules import training_schedules
from utils.training import TrainStep, amp_context, build_scaler, epoch_batches, split_batch

# a checkpoint saved with other values of these cannot continue this run
RUN_KEYS = ["method", "arch", "width", "ns", "img_size", "patch_size", "moco_dim", "batch_size"]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("Multi-view contrastive pretraining", add_help=False)
    add_common_args(parser)
    summaries = "; ".join(f"{k}: {m.summary}" for k, m in sorted(METHODS.items()))
    g = parser.add_argument_group("method", summaries)
    g.add_argument("--method", "--model", dest="method", default="mocov3",
                   help=f"{', '.join(sorted(METHODS))} (default: mocov3; also {', '.join(ALIASES)})")
    g = parser.add_argument_group("backbone")
    g.add_argument("-a", "--arch", default="resnet50",
                   help="resnet18 | resnet34 | resnet50 | vit_tiny | vit_small | vit_base (default: "
                        "resnet50)")
    g.add_argument("--width", default=64, type=int,
                   help="ResNet first-stage width (default: 64; 16 for fast CPU runs)")
    g.add_argument("--img-size", default=None, type=int,
                   help="training crop size in px (default: the dataset's: 224 ImageNet, 32 CIFAR, 28 "
                        "bundled)")
    g.add_argument("--patch-size", default=None, type=int,
                   help="ViT patch size (default: 16 at >= 128 px, else 4)")
    g.add_argument("--stop-grad-conv1", action="store_true",
                   help="freeze the ViT patch projection at its random init (MoCo v3 ViT recipes)")
    g.add_argument("--drop-path", default=0.0, type=probability,
                   help="ViT stochastic depth of the online encoder (default: 0)")
    g = parser.add_argument_group("MoCo v3 (shared by the momentum methods)")
    g.add_argument("--moco-dim", default=256, type=int, help="embedding dimension (default: 256)")
    g.add_argument("--moco-mlp-dim", default=4096, type=int, help="hidden MLP width (default: 4096)")
    g.add_argument("--moco-m", default=0.99, type=float, help="EMA momentum m0 (default: 0.99)")
    g.add_argument("--moco-m-cos", action="store_true",
                   help="raise m from m0 to 1 by a half cosine (default: off)")
    g.add_argument("--moco-t", default=1.0, type=float,
                   help="temperature of every InfoNCE-family loss (default: 1.0; ViT recipes: 0.2); DSF "
                        "uses --kld-t")
    g.add_argument("--crop-min", default=0.08, type=float,
                   help="minimum RandomResizedCrop scale (default: 0.08; ResNet recipes: 0.2)")
    g.add_argument("--ns", default=1, type=int,
                   help="crops per branch: each image gives 2 x ns views (default: 1; DSF: 4)")
    add_method_args(parser)
    g = parser.add_argument_group("optimization")
    g.add_argument("-b", "--batch-size", "--batch_size", dest="batch_size", default=256, type=int,
                   help="GLOBAL batch over all processes (default: 256)")
    g.add_argument("--lr", "--learning-rate", dest="lr", default=0.6, type=float,
                   help="base lr; the effective lr is lr x batch / 256 (default: 0.6)")
    g.add_argument("--min-lr", default=0.0, type=float, help="final lr of the cosine (default: 0)")
    g.add_argument("--epochs", default=100, type=int)
    g.add_argument("--warmup-epochs", default=10, type=float,
                   help="linear lr warmup in epochs (default: 10; --lr-schedule mvmr-clip: constant-lr epochs)")
    g.add_argument("--lr-schedule", default="warmup-cosine", choices=["warmup-cosine", "mvmr-clip"],
                   help="warmup + one cosine (default), or MV-MR CLIP's cycling cosine (protocols.md §2)")
    g.add_argument("--lr-cycle-steps", default=0, type=int,
                   help="mvmr-clip cosine T_max in steps (default: 0 = micro-batches in one unsharded epoch)")
    g.add_argument("--lr-cycle-val-steps", default=0, type=int,
                   help="mvmr-clip scheduler steps per epoch of the official validation (default: 0; STL-10: 31, "
                        "ImageNet: 195)")
    g.add_argument("--weight-decay", "--wd", dest="weight_decay", default=1e-6, type=float)
    g.add_argument("--weight-decay-end", default=None, type=float,
                   help="end value of a cosine weight-decay schedule (default: none, constant; PatchMix: "
                        "0.4)")
    g.add_argument("--optimizer", default="lars", choices=["lars", "sgd", "adamw", "adam"])
    g.add_argument("--momentum", default=0.9, type=float, help="SGD/LARS momentum (default: 0.9)")
    g.add_argument("--exclude-norm-bias", default=False, type=bool_flag,
                   help="no weight decay on biases and norm parameters (default: false; LARS excludes them "
                        "itself)")
    g.add_argument("--clip-grad", default=0.0, type=float, help="max grad norm (0 = off)")
    g.add_argument("--momentum-per-epoch", default=False, type=bool_flag,
                   help="update the EMA momentum once per epoch (default: false; PatchMix: true, methods.md "
                        "§9.6-1)")
    g.add_argument("--accum-steps", default=1, type=int,
                   help="micro-batches per optimizer step, -b its global batch (default: 1; raise when -b "
                        "does not fit)")
    g.add_argument("--accum-schedule", default="optimizer", choices=["optimizer", "micro"],
                   help="size the lr schedule in optimizer steps (default) or in micro-batches (MV-MR, "
                        "docs/training.md)")
    g = parser.add_argument_group("speed")
    g.add_argument("--amp", default="auto", choices=["auto", "off", "bf16", "fp16", "bf16-native"],
                   help="autocast (default: auto = fp16 + GradScaler on CUDA, off on CPU); bf16-native: bf16 "
                        "where the device has it")
    g.add_argument("--amp-init-scale", default=2.0**16, type=float,
                   help="first fp16 loss scale of the GradScaler (default: 65536)")
    g.add_argument("--max-overflows", default=20, type=int,
                   help="stop after N fp16 overflows (skipped steps) in a row (default: 20; 0 = never)")
    g.add_argument("--compile", default=False, type=bool_flag,
                   help="torch.compile the model (default: false; under DDP: no SyncBatchNorm)")
    g.add_argument("--aug-device", default="auto", choices=["auto", "device", "split", "workers"],
                   help="where views are made (default: auto, per dataset and device); split = workers "
                        "crop, device colours")
    g.add_argument("--hue-impl", default="float", choices=["float", "pil"],
                   help="ColorJitter hue: float HSV (default, faster) or PIL's 8-bit HSV (exact official "
                        "numerics)")
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
    preemption = Preemption()  # first: a signal during set-up must reach the requeue path too
    dist.init(gpu, args)
    device = args.device
    split_batch(args)  # args.batch_size_per_gpu: the micro-batch of one process
    args.lr_effective = args.lr * args.batch_size / 256
    if args.seed is not None:
        seed_everything(args.seed + args.rank)
    log_run_args(args, dist.is_main_process())
    method = METHODS[args.method]

    # ============ data ============
    args.img_size = args.img_size or dataset_info(args.dataset).img_size
    print("views: " + "\n       ".join(method.describe_views(args)))
    probe_view = [original_view(args.img_size)] if args.online_probe else []  # the last view
    loader, augment, info = build_view_loader(args, method.views(args) + probe_view)
    iters = len(loader) // args.accum_steps  # optimizer steps per epoch
    iters = min(iters, args.steps_per_epoch) if args.steps_per_epoch else iters
    print(run_summary(args, iters))

    # ============ model ============
    model = build_model(args)[0].to(device)
    if args.channels_last and not args.arch.startswith("vit"):
        model = model.to(memory_format=torch.channels_last)
    if args.world_size > 1 and args.gpu is not None and getattr(model, "sync_bn", True):
        if args.compile:  # SyncBatchNorm graph-breaks under torch.compile (pytorch#161302)
            print("note: --compile true keeps per-process BatchNorm (no SyncBatchNorm)")
        else:
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
    start = resume_run(args, parts, RUN_KEYS)
    if start["epoch"] >= args.epochs:  # keep the finished run's results.json as it is
        print(f"nothing to do: {start['path']} is the end of this {args.epochs}-epoch run")
        dist.cleanup()
        return
    step = TrainStep(forward, model_without_ddp, criterion, optimizer, scaler, args, probe,
                     model.no_sync if ddp else None, preemption, start["overflow_skipped"],
                     prepare=lambda x, y: (prepare_views(augment, x, args), to_device(y, device)))
    step.nonfinite_skipped = start["nonfinite_skipped"]

    def save(epoch: int, at: int) -> None:
        save_checkpoint(parts, epoch, at, args, nonfinite_skipped=step.nonfinite_skipped,
                        overflow_skipped=step.overflows.total)

    # ============ train ============
    logger = RunLogger(args.results_dir, dist.is_main_process())
    history, t0, images_seen, eval_loaders = [], time.time(), 0, {}
    for epoch in range(start["epoch"], args.epochs):
        loader.sampler.set_epoch(epoch, start["step"] * args.batch_size_per_gpu * args.accum_steps)
        progress = Progress(iters, args.batch_size, args.print_freq, args.log_freq, logger, device)
        stats = train_one_epoch(step, loader, schedules, epoch, iters, start["step"], save,
                                progress, args)
        images_seen += stats.pop("images")
        start["step"] = 0
        record = {"epoch": epoch + 1, **{f"train_{k}": v for k, v in stats.items()}}
        knn_due = args.knn_freq and ((epoch + 1) % args.knn_freq == 0 or epoch + 1 == args.epochs)
        if knn_due or probe is not None:
            record.update(monitor(model_without_ddp, probe, knn_due, eval_loaders, args))
            history.append(record)
        print(f"epoch {epoch + 1}/{args.epochs}  {format_metrics(record)}")
        for line in criterion.warnings(stats):  # a loss's known failure modes, in its own words
            print(f"warning: {line}")
        logger.epoch(record)
        save(epoch + 1, 0)
    wall = time.time() - t0
    logger.close()
    if dist.is_main_process():
        write_results(args.results_dir, "pretrain", args, {
            "knn_top1_monitor": next((r["test_knn_top1"] for r in history[::-1]
                                      if "test_knn_top1" in r), None),
            "online_probe_top1": history[-1].get("test_probe_top1") if history else None,
            "images_per_s": images_seen * args.world_size / max(wall, 1e-9),
            "nonfinite_skipped": step.nonfinite_skipped,
            "overflow_skipped": step.overflows.total}, wall)
    dist.cleanup()


def prepare_views(augment, x, args) -> list:
    """The views of a loader batch on the device (augmented there for in-memory datasets)."""
    views = augment(to_device(x, args.device))
    if args.channels_last and not args.arch.startswith("vit"):
        views = [v.contiguous(memory_format=torch.channels_last) for v in views]
    return views


def train_one_epoch(step, loader, schedules, epoch, iters, first, save, progress, args):
    step.forward.train()
    step.criterion.train()
    meter, images = MetricAverager(), 0
    with epoch_batches(loader, args.accum_steps) as groups:  # workers stop on a SystemExit
        for i, batches in zip(range(first, iters), groups):
            progress.batch_ready()
            it = epoch * iters + i  # global optimizer step: every schedule is indexed by it
            set_lr_wd(step.optimizer, schedules["lr"][it], schedules["wd"][it])
            if hasattr(step.model, "update_momentum"):  # before the forward, as moco-v3
                step.model.update_momentum(float(schedules["m"][it]))
            result = step(batches, epoch, i)
            if not result["skipped"]:
                images += result["images"]
                meter.update(result["metrics"])
            if result["preempt"]:  # every rank read the same flag: all stop after this step
                preempted(save, epoch, i + 1)
            if args.save_freq_steps and (i + 1) % args.save_freq_steps == 0 and i + 1 < iters:
                save(epoch, i + 1)
            progress.step_done(epoch, i, it, {} if result["skipped"] else result["metrics"],
                               {k: float(schedules[k][it]) for k in ("lr", "wd", "m")},
                               step.status)
    return {**meter.averages(), "lr": float(schedules["lr"][epoch * iters + iters - 1]),
            "images": images}


def preempted(save, epoch: int, at: int) -> None:
    save(epoch, at)
    print(f"preempted at epoch {epoch} step {at}: checkpoint saved; exiting with status "
          f"{PREEMPTED_EXIT_CODE} so that the scheduler requeues the job", force=True)
    dist.barrier()  # no rank exits (and gets its peers killed) before the save is on disk
    raise SystemExit(PREEMPTED_EXIT_CODE)


def monitor(model, probe, knn_due, cache, args) -> dict:
    """Val top-1 of the online probe, and (when due) the weighted kNN top-1 of the online backbone
    (k = --knn-k, T = --knn-t). The eval loaders are built once (cache) and reused."""
    if not cache:
        cache.update(zip(("train", "val", "prepare", "info"),
                         build_eval_loaders(args, args.img_size)))
    encode = encoder_in_eval(model.backbone)
    with amp_context(args):  # features under autocast; the similarities below in fp32
        val = extract_features(encode, cache["val"], len(cache["val"].dataset), args.device,
                               cache["prepare"])
        train = extract_features(encode, cache["train"], len(cache["train"].dataset), args.device,
                                 cache["prepare"]) if knn_due else None
    record = {"test_probe_top1": probe.top1(*val)} if probe else {}
    if knn_due:
        accuracy = knn_classify(train[0].float(), train[1], val[0].float(), val[1],
                                ks=[args.knn_k], temperature=args.knn_t,
                                num_classes=cache["info"].num_classes)
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
