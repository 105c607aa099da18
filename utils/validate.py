"""Flag checks that run right after parsing, before any data or model is built.

A value that cannot work (``-b 0``, ``--lr -1``, ``--ns 0``, ``-a resnet999``, a ViT crop that the
patch size does not divide, a batch that the processes cannot share) is one usage line naming the
flag and what would work, instead of a traceback minutes later, or a run that trains on nonsense.
Each check applies to whichever of its flags the script has (``hasattr``), so every entry script
shares them. Names of architectures, methods and datasets live in models/ and data/, which utils/
may not import (STYLE B1): the entry script passes them in ``Known``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

# gradient accumulation splits each process's batch further; the flag has one of these names
ACCUMULATION_DESTS = ("accum_iter", "accum_steps", "grad_accum_steps")


@dataclass(frozen=True)
class Known:
    """What the checks need from the packages utils/ may not import; the entry script fills it in.

    archs, methods: the accepted -a and --method values (models.BACKBONES, METHODS and ALIASES).
    datasets: name -> info with an ``img_size`` (data.datasets.DATASETS): the accepted --dataset
        values, and the crop size the ViT patch check assumes when --img-size is not given.
    global_batch: -b counts all processes (pretraining, linear probe), not one (kNN).
    min_batch_per_process: 2 where BatchNorm layers train (one image has no batch statistics).
    drop_last: the training loader drops an incomplete batch (pretraining), so --train-subset
        below -b gives no step at all.
    """

    archs: Collection[str] = ()
    methods: Collection[str] = ()
    datasets: Mapping[str, Any] = field(default_factory=dict)
    global_batch: bool = True
    min_batch_per_process: int = 1
    drop_last: bool = False

    def names(self) -> dict[str, Collection[str]]:
        named = {"arch": self.archs, "method": self.methods, "dataset": self.datasets}
        return {dest: names for dest, names in named.items() if names}

    def img_size(self, dataset: str) -> int | None:
        return getattr(self.datasets.get(dataset), "img_size", None)


def positive(v: Any) -> bool:
    return v > 0


def non_negative(v: Any) -> bool:
    return v >= 0


def unit_interval(v: Any) -> bool:
    return 0 <= v <= 1


def open_unit_interval(v: Any) -> bool:
    return 0 < v <= 1


# dest -> (test, what works); a dest the script does not have, or set to None, is not checked
VALUE_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "batch_size": (positive, "a positive batch size"),
    "lr": (positive, "a positive learning rate"),
    "epochs": (positive, "at least 1 epoch"),
    "moco_t": (positive, "a positive temperature"),
    "temperature": (positive, "a positive temperature"),
    "knn_t": (positive, "a positive temperature"),
    "kld_t": (positive, "a positive temperature"),
    "sigma": (positive, "a positive bandwidth"),
    "ns": (positive, "at least 1 crop per branch"),
    "width": (positive, "a positive width"),
    "img_size": (positive, "a positive crop size in pixels"),
    "patch_size": (positive, "a positive patch size in pixels"),
    "moco_dim": (positive, "a positive dimension"),
    "moco_mlp_dim": (positive, "a positive width"),
    "proj_hidden_dim": (positive, "a positive width"),
    "proj_dim": (positive, "a positive dimension"),
    "pred_hidden_dim": (positive, "a positive width"),
    "feature_dim": (positive, "a positive dimension"),
    "moco_k": (positive, "a positive queue size"),
    "queue_size": (positive, "a positive queue size"),
    "bank_size": (positive, "a positive bank size"),
    "topk": (positive, "at least 1 neighbour"),
    "k_subs": (positive, "at least 1 sub-network"),
    "subnet_hidden": (positive, "a positive width"),
    "bn_splits": (positive, "at least 1 group (1 = plain BatchNorm)"),
    "mix_num": (positive, "at least 1 image per mix (1 = no mixing)"),
    "mix_size": (positive, "a positive patch side in pixels"),
    "local_crop_size": (positive, "a positive crop size in pixels"),
    "mvmr_scale": (positive, "a positive scale (1 = off)"),
    "print_freq": (positive, "print every N >= 1 steps"),
    "knn_k": (positive, "at least 1 neighbour"),
    "online_probe_lr": (positive, "a positive learning rate"),
    "nproc_cpu": (positive, "at least 1 process"),
    "world_size": (positive, "at least 1 node"),
    "dist_timeout": (positive, "a positive number of seconds"),
    "workers": (non_negative, "0 (load in the main process) or more workers"),
    "warmup_epochs": (non_negative, "0 or more warmup epochs"),
    "weight_decay": (non_negative, "a weight decay >= 0"),
    "weight_decay_end": (non_negative, "a weight decay >= 0"),
    "min_lr": (non_negative, "a final lr >= 0"),
    "momentum": (non_negative, "a momentum >= 0 (0.9 is usual)"),
    "clip_grad": (non_negative, "a max norm > 0, or 0 = off"),
    "std_margin": (non_negative, "a margin >= 0"),
    "train_subset": (non_negative, "N > 0 images, or 0 = all"),
    "val_subset": (non_negative, "N > 0 images, or 0 = all"),
    "save_freq_steps": (non_negative, "N > 0 steps, or 0 = end of epoch only"),
    "keep_checkpoints": (non_negative, "N > 0, or 0 = keep all"),
    "knn_freq": (non_negative, "N > 0 epochs, or 0 = off"),
    "steps_per_epoch": (non_negative, "N > 0 steps, or 0 = the whole dataset"),
    "local_crops": (non_negative, "0 or more local crops"),
    "rank": (non_negative, "a node rank >= 0"),
    "max_overflows": (non_negative, "N > 0 overflows in a row, or 0 = never stop"),
    "lr_lag": (non_negative, "0 or more epochs (PatchMix: 1)"),
    "lr_cycle_steps": (non_negative, "N > 0 steps, or 0 = one unsharded epoch"),
    "lr_cycle_val_steps": (non_negative, "0 or more validation steps per epoch"),
    "amp_init_scale": (positive, "a positive loss scale (65536 is usual)"),
    "moco_m": (unit_interval, "a momentum in [0, 1]"),
    "crop_min": (open_unit_interval, "a crop scale in (0, 1]"),
    "local_crop_min": (open_unit_interval, "a crop scale in (0, 1]"),
    "r_bar_coeff": (open_unit_interval, "a coefficient in (0, 1]"),
    **{dest: (positive, "at least 1 step") for dest in ACCUMULATION_DESTS},
}


def flag(parser: argparse.ArgumentParser, dest: str) -> str:
    """The flag's spellings as argparse names them in its own errors: 'argument -b/--batch-size'."""
    for action in parser._actions:
        if action.dest == dest and action.option_strings:
            return "argument " + "/".join(action.option_strings)
    return f"argument --{dest.replace('_', '-')}"


def value_problems(args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    for dest, (ok, works) in VALUE_RULES.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        try:
            good = ok(value)
        except TypeError:  # a --config value of the wrong type (a list for a number)
            good = False
        if not good:
            yield dest, f"{value!r} cannot work; give {works}"
    for k in getattr(args, "ks", None) or []:
        if k < 1:
            yield "ks", f"k = {k} cannot work; give neighbour counts >= 1, e.g. --nb-knn 20 200"


def name_problems(args: argparse.Namespace, known: Known) -> Iterator[tuple[str, str]]:
    for dest, names in known.names().items():
        value = getattr(args, dest, None)
        if value is not None and value not in names:
            yield dest, f"unknown {dest} {value!r}; choose from {', '.join(sorted(names))}"


def process_count(args: argparse.Namespace) -> int:
    """How many processes dist.launch will start (torchrun's WORLD_SIZE, or spawn's count)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    if getattr(args, "multiprocessing_distributed", False):
        import torch  # only here: scripts that never spawn need not pay for the import

        return (torch.cuda.device_count() or args.nproc_cpu) * args.world_size
    return 1


def batch_problems(args: argparse.Namespace, known: Known) -> Iterator[tuple[str, str]]:
    if getattr(args, "batch_size", 0) <= 0:
        return  # reported by the value rules
    accumulation = next((getattr(args, d) for d in ACCUMULATION_DESTS if hasattr(args, d)), 1)
    processes = process_count(args) if known.global_batch else 1
    share = processes * max(accumulation or 1, 1)
    b = args.batch_size
    if known.global_batch and b % share:
        what = f"{processes} processes" + (f" x {accumulation} accumulation steps"
                                            if accumulation > 1 else "")
        yield "batch_size", (f"the global batch {b} is not divisible by the {what}; give a "
                             f"multiple of {share}, e.g. -b {max(share, b // share * share)}")
    elif b // share < known.min_batch_per_process:
        yield "batch_size", (f"{b} gives {b // share} image(s) per process and step, but BatchNorm "
                             f"needs {known.min_batch_per_process}; give -b "
                             f"{known.min_batch_per_process * share} or more")
    subset = getattr(args, "train_subset", 0)
    if known.drop_last and subset and subset < b:
        yield "train_subset", (f"{subset} images make no full batch of {b}; give "
                               f"--train-subset >= {b} or a smaller -b")


def vit_problems(args: argparse.Namespace, known: Known) -> Iterator[tuple[str, str]]:
    if not str(getattr(args, "arch", "")).startswith("vit"):
        return
    img = getattr(args, "img_size", None) or known.img_size(getattr(args, "dataset", ""))
    if not img or img <= 0:
        return
    patch = getattr(args, "patch_size", None) or (16 if img >= 128 else 4)  # as backbone_kwargs
    if patch <= 0:
        return
    if img % patch:
        yield "img_size", (f"a {img}-px crop is not a whole number of {patch}-px ViT patches; "
                           f"give --img-size {img // patch * patch or patch} or a --patch-size "
                           "that divides it")
    local = getattr(args, "local_crop_size", 0) if getattr(args, "local_crops", 0) else 0
    if local > 0 and local % patch:
        fit = local // patch * patch or patch
        yield "local_crop_size", (f"a {local}-px local crop is not a whole number of {patch}-px "
                                  f"patches; give --local-crop-size {fit}")


def existing(path: str) -> bool:
    return os.path.exists(os.path.expanduser(path))


def file_problems(args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    resume = getattr(args, "resume", "")
    if resume and resume != "auto" and not os.path.isfile(resume):
        yield "resume", (f"no checkpoint at {resume}; give an existing file, or --resume auto "
                         "(the newest in --results_dir)")
    pretrained = getattr(args, "pretrained", "")
    if pretrained and not os.path.isfile(pretrained):
        yield "pretrained", f"no checkpoint at {pretrained}; give the path of a saved checkpoint"
    data = getattr(args, "data", "")
    if data and not getattr(args, "download", False) and not existing(data):
        yield "data", f"{data} does not exist; give the dataset's root folder"


def encoder_problems(args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    """Evaluation scripts: exactly one of --pretrained and --random-init."""
    if not hasattr(args, "random_init"):
        return
    if args.random_init and getattr(args, "pretrained", ""):
        yield "random_init", "--random-init and --pretrained exclude each other; give one"
    elif not args.random_init and not getattr(args, "pretrained", ""):
        yield "pretrained", "give --pretrained CHECKPOINT, or --random-init for the baseline"
    features = "subnet" if getattr(args, "similarity", "") == "bregman" else \
        getattr(args, "features", "backbone")
    if args.random_init and features != "backbone":
        yield "features", (f"--features {features} reads the pretrained model's heads; give "
                           "--pretrained CHECKPOINT (--random-init has backbone features only)")


def problems(args: argparse.Namespace, known: Known) -> Iterator[tuple[str, str]]:
    """(dest, message) for every flag value, or combination of values, that cannot work."""
    yield from value_problems(args)
    yield from name_problems(args, known)
    yield from batch_problems(args, known)
    yield from vit_problems(args, known)
    yield from file_problems(args)
    yield from encoder_problems(args)


def validate(parser: argparse.ArgumentParser, args: argparse.Namespace,
             known: Known | None = None) -> None:
    """parser.error (one line, exit 2) on the first value that cannot work."""
    for dest, message in problems(args, known or Known()):
        parser.error(f"{flag(parser, dest)}: {message}")
