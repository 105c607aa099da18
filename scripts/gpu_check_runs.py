"""scripts/gpu_check.py's training runs: synthetic JPEGs, the method's recipe flags shrunk to the
check, and main_pretrain.main() with its loader timed (img/s, data wait, peak memory).

Imported by scripts/gpu_check.py, which puts the repository on sys.path first.
"""

from __future__ import annotations

import argparse
import glob
import os
import signal
import time

import numpy as np
import torch
import yaml
from PIL import Image

import main_pretrain
from utils.args import parse_with_config

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
# CPU-sized heads for --smoke (the recipe's flags otherwise)
SMOKE_FLAGS = ["--width", "8", "--moco-dim", "32", "--moco-mlp-dim", "64",
               "--proj-hidden-dim", "64", "--proj-dim", "32", "--pred-hidden-dim", "64",
               "--proj-dims", "64-64-64",
               "--queue-size", "64", "--bank-size", "64", "--moco-k", "64", "--k-subs", "4",
               "--subnet-hidden", "16", "--feature-dim", "16", "--clip-image-size", "32",
               "--local-crops", "2", "--local-crop-size", "16",
               "--mvmr-scale", "1"]  # z / 32 of a 64-wide projector: every distance under the clamp
# 32-px synthetic images: MV-MR's one-draw augmented representation can be constant over the
# batch, and its distance correlation 0/0 at step 0
SMOKE_METHOD_FLAGS = {"mvmr": ["--representations", "pixels,hog,std"]}


# ============ data: synthetic JPEGs in an ImageFolder tree ============


def write_jpegs(root: str, per_class: dict[str, int], size: int, classes: int = 4) -> str:
    """Smooth random images (gradients plus noise: JPEG sizes like photos) as root/<split>/<c>/."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, size)[None, :, None]
    for split, n in per_class.items():
        for c in range(classes):
            folder = os.path.join(root, split, f"class{c}")
            os.makedirs(folder, exist_ok=True)
            for i in range(n):
                ramps = rng.uniform(0, 255, 3) * ramp, rng.uniform(0, 255, 3) * ramp.swapaxes(0, 1)
                base = ramps[0] + ramps[1]
                pixels = np.clip(base / 2 + rng.normal(0, 20, (size, size, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(os.path.join(folder, f"{i}.jpg"),
                                                               quality=90)
    return root


# ============ the runs ============


def recipe(method: str, vit: bool = False) -> str | None:
    """The method's recipe config: ImageNet-1k first, then IN-100, then any (ViT ones if vit)."""
    found = []
    for path in sorted(glob.glob(os.path.join(CONFIGS, "*.yaml"))):
        with open(path) as f:
            cfg = yaml.safe_load(f) or {}
        if cfg.get("method") == method and str(cfg.get("arch", "")).startswith("vit") == vit:
            rank = 0 if "_in1k_" in path else 1 if "_in100_" in path else 2
            found.append((rank, path))
    return min(found)[1] if found else None


def run_flags(method: str, vit: bool, args, root: str, out: str, amp: str = "fp16",
              compile_: bool = False) -> list[str]:
    """main_pretrain.py flags: the method's recipe, shrunk to --steps on the synthetic folder."""
    config = recipe(method, vit) or recipe(method, not vit)
    flags = ["--config", config] if config else []
    flags += ["--method", method, "--dataset", "folder", "--data", root,
              "--img-size", str(args.img_size), "-b", str(args.batch_size), "--accum-steps", "1",
              "--epochs", "1", "--steps-per-epoch", str(args.steps), "--warmup-epochs", "0",
              "--amp", amp, "--compile", str(compile_).lower(), "--channels-last", "true",
              "--workers", str(args.workers), "--print-freq", "1000000", "--knn-freq", "0",
              "--online-probe", "false", "--train-subset", "0", "--resume", "", "--seed", "0",
              "--results_dir", out, "--keep-checkpoints", "1", "--clip-pretrained", "none",
              "--mean", "0.5", "0.5", "0.5", "--std", "0.25", "0.25", "0.25"]
    if args.smoke:
        vit_flags = ["-a", "vit_tiny", "--patch-size", "16"]  # 4 tokens at 32 px
        flags += SMOKE_FLAGS + (vit_flags if "vit" in str(config) else [])
        flags += SMOKE_METHOD_FLAGS.get(method, [])
    return flags


def parse(flags: list[str]) -> argparse.Namespace:
    """main_pretrain's parser and checks; one process whatever the recipe launches."""
    parser = argparse.ArgumentParser("gpu_check", parents=[main_pretrain.get_args_parser()])
    run_args = parse_with_config(parser, known_flags(flags, parser))
    run_args.multiprocessing_distributed, run_args.world_size, run_args.rank = False, 1, 0
    return run_args


def known_flags(flags: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """Drop the flags (and their values) this checkout's main_pretrain.py does not have."""
    kept, skipping = [], False
    for f in flags:
        if f.startswith("--"):
            skipping = f not in parser._option_string_actions
        if not skipping:
            kept.append(f)
    return kept


class TimedLoader:
    """The training loader; records when each batch arrived and how long the loop waited for it."""

    def __init__(self, loader, sync):
        self.loader, self.sync, self.waits, self.stamps = loader, sync, [], []

    def __len__(self):
        return len(self.loader)

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def __iter__(self):
        it = iter(self.loader)
        while True:
            self.sync()  # the previous step is finished: what follows is waiting for data
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            t1 = time.perf_counter()
            self.waits.append(t1 - t0)
            self.stamps.append(t1)
            yield batch


def train_run(flags: list[str]) -> dict:
    """main_pretrain.main() here, its loader timed: img/s, data share, peak memory."""
    run_args = parse(flags)
    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    timed = {}

    def timed_loader(*a, **kw):
        loader, make_views, info = build_view_loader(*a, **kw)
        timed["loader"] = TimedLoader(loader, sync)
        return timed["loader"], make_views, info

    build_view_loader = main_pretrain.build_view_loader
    main_pretrain.build_view_loader = timed_loader
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    try:
        main_pretrain.main(run_args)
    finally:
        main_pretrain.build_view_loader = build_view_loader
        for sig in (signal.SIGTERM, signal.SIGUSR1):  # the run's preemption handlers
            signal.signal(sig, signal.SIG_DFL)
    loader = timed["loader"]
    warm = min(5, max(len(loader.stamps) - 2, 0))  # first steps: cudnn autotuning, compilation
    span = loader.stamps[-1] - loader.stamps[warm]
    steps = len(loader.stamps) - 1 - warm
    return {"arch": run_args.arch, "batch": run_args.batch_size,
            "img_s": run_args.batch_size * steps / span if span > 0 else float("nan"),
            "data_share": sum(loader.waits[warm + 1:]) / span if span > 0 else float("nan"),
            "peak_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}
