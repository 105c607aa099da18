"""Arguments shared by the three entry scripts, and --config YAML files that set parser defaults."""

from __future__ import annotations

import argparse
import os
import sys

from utils.cli import add_debug_flag, one_line_usage
from utils.misc import bool_flag
from utils.validate import Known, validate


def add_common_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("data")
    g.add_argument("--dataset", default="fashion_mnist",
                   help="fashion_mnist (bundled, default), cifar10, cifar100, cifar20, stl10, imagenet, "
                        "in50, in100, in200, folder")
    g.add_argument("--data", "--data-path", dest="data", default="",
                   help="dataset root (default: the dataset's usual place, data/fashion-mnist for the "
                        "bundled set)")
    g.add_argument("-j", "--workers", default=4, type=int,
                   help="data loading workers per process (default: 4; in-memory datasets use none)")
    g.add_argument("--train-subset", default=0, type=int,
                   help="use N training images, class-balanced and seeded by --seed, for quick runs "
                        "(default: 0 = all)")
    g.add_argument("--val-subset", default=0, type=int,
                   help="use N validation images, drawn as --train-subset (default: 0 = all)")
    g.add_argument("--mean", default=None, type=float, nargs=3, metavar=("R", "G", "B"),
                   help="normalisation mean in [0, 1] (default: the dataset's; ImageNet's for folders); "
                        "see --compute-stats")
    g.add_argument("--std", default=None, type=float, nargs=3, metavar=("R", "G", "B"),
                   help="normalisation std (default: the dataset's); set it with --mean")
    g.add_argument("--compute-stats", default=0, type=int, metavar="N",
                   help="print --mean/--std of N random training images and exit (default: 0 = off; e.g. "
                        "2000)")
    g.add_argument("--on-bad-image", default="fail", choices=["fail", "skip"],
                   help="an unreadable folder image stops the run (fail, default) or is replaced by the "
                        "next one (skip)")
    g.add_argument("--class-list", default=None,
                   help="with --dataset folder: a file of the class folders the tree must hold exactly "
                        "(default: none)")
    g = parser.add_argument_group("distributed (moco-v3 compatible)")
    g.add_argument("--world-size", default=1, type=int,
                   help="nodes before spawn, total processes after (default: 1)")
    g.add_argument("--rank", default=0, type=int, help="node rank before spawn (default: 0)")
    g.add_argument("--dist-url", default="tcp://127.0.0.1:23456", type=str,
                   help="url to set up distributed training (default: tcp://127.0.0.1:23456)")
    g.add_argument("--multiprocessing-distributed", action="store_true",
                   help="spawn one process per GPU, or --nproc-cpu processes on a CPU machine")
    g.add_argument("--nproc-cpu", default=2, type=int,
                   help="processes to spawn per node when there is no GPU (gloo; default: 2)")
    g.add_argument("--dist-timeout", default=600, type=int,
                   help="seconds before a collective waiting on a dead rank fails (default: 600)")
    g = parser.add_argument_group("run")
    g.add_argument("--results_dir", "--results-dir", "--output-dir", dest="results_dir",
                   default="results", help="where logs, checkpoints and results.json go")
    g.add_argument("--seed", default=None, type=int,
                   help="seed for a reproducible run (default: none; DSF: 307)")
    g.add_argument("--config", default="", help="YAML file of flag defaults (configs/*.yaml); "
                                                "command-line flags win")
    g.add_argument("--channels-last", default=True, type=bool_flag,
                   help="channels_last memory format for convolutional backbones (default: true)")


def add_checkpoint_and_monitor_args(parser: argparse.ArgumentParser) -> None:
    """main_pretrain.py's run control: checkpoints, resume, non-finite policy, monitors."""
    g = parser.add_argument_group("checkpoints and monitoring")
    g.add_argument("--resume", default="", help="checkpoint path, or 'auto' (newest valid in "
                                                "--results_dir)")
    g.add_argument("--save-freq-steps", default=0, type=int,
                   help="also checkpoint every N steps inside an epoch (default: 0 = end of epoch only)")
    g.add_argument("--keep-checkpoints", default=2, type=int,
                   help="keep the newest N (default: 2; 0 = all)")
    g.add_argument("--on-nonfinite", default="stop", choices=["stop", "skip"],
                   help="a non-finite loss or gradient stops the run (default) or skips the step (counted)")
    g.add_argument("--print-freq", default=50, type=int,
                   help="a progress line (ETA, img/s, data and step time, losses) every N steps "
                        "(default: 50)")
    g.add_argument("--log-freq", default=10, type=int,
                   help="TensorBoard scalars (losses, lr, wd, momentum, speed) every N steps (default: 10; "
                        "0 = per epoch)")
    g.add_argument("--verbose", action="store_true", help="print every argument at the start "
                                                          "(they are always in args.json)")
    g.add_argument("--knn-freq", default=0, type=int,
                   help="kNN monitor every N epochs (default: 0 = off)")
    g.add_argument("--knn-k", default=200, type=int, help="k of the kNN monitor (default: 200)")
    g.add_argument("--knn-t", default=0.1, type=float,
                   help="temperature of the kNN monitor (default: 0.1)")
    g.add_argument("--online-probe", default=False, type=bool_flag,
                   help="train a linear head on detached features of the un-augmented view (default: "
                        "false; MV-MR: true)")
    g.add_argument("--online-probe-lr", default=1e-4, type=float,
                   help="the online probe's Adam lr (default: 1e-4)")
    g.add_argument("--steps-per-epoch", default=0, type=int,
                   help="cap on steps per epoch, for smoke tests (default: 0 = the whole dataset)")


def read_config(parser: argparse.ArgumentParser, path: str) -> dict:
    """The flag defaults of a --config YAML file; anything unusable is one usage line."""
    import yaml

    if not os.path.isfile(path):
        parser.error(f"--config {path}: no such file (see configs/)")
    try:
        with open(path) as f:
            values = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError) as e:
        parser.error(f"--config {path}: cannot read it ({e})")
    except yaml.YAMLError as e:  # keep the line and column, drop yaml's multi-line excerpt
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        parser.error(f"--config {path} is not valid YAML{where}: {problem}")
    values = {} if values is None else values
    if not isinstance(values, dict):
        parser.error(f"--config {path} holds a {type(values).__name__}, not a mapping of flag "
                     "names to values (e.g. 'batch_size: 256')")
    dests = {a.dest for a in parser._actions}
    unknown = sorted(set(map(str, values)) - dests)
    if unknown:
        parser.error(f"--config {path}: unknown keys {unknown} (use the flags' snake_case names)")
    return values


def parse_with_config(parser: argparse.ArgumentParser, argv: list[str] | None = None,
                      known: Known | None = None) -> argparse.Namespace:
    """Two-stage parse (timm): a --config YAML sets defaults, then the command line overrides.

    Usage errors are one line (exit 2); then every flag value and combination that cannot work is
    rejected (utils/validate.py, with the registries in `known`) before any data or model is built.
    """
    argv = sys.argv[1:] if argv is None else argv
    one_line_usage(parser)
    add_debug_flag(parser)
    pre = one_line_usage(argparse.ArgumentParser(add_help=False))
    pre.add_argument("--config", default="")
    config, _ = pre.parse_known_args(argv)
    if config.config:
        parser.set_defaults(**read_config(parser, config.config))
    args = parser.parse_args(argv)
    validate(parser, args, known)
    return args
