"""GPU readiness check: every registered method through the real training loop on one CUDA GPU.

    bash scripts/gpu_check.sh            # one CUDA GPU, under 8 minutes; 2+ GPUs add a DDP check
    bash scripts/gpu_check.sh --smoke    # CPU, tiny widths, 2 steps: proves this script still runs

For each method of models.methods.METHODS, at the architecture and heads of its ImageNet recipe
(configs/<method>_in1k_*.yaml, else in100, else any of its configs), on synthetic JPEGs that it
writes itself, through the folder data path and main_pretrain.py's own main():
1. `--steps` steps with --amp fp16 (GradScaler) and channels_last: img/s, the share of the step
   spent waiting for data, peak memory, and MFU (FLOPs of one step from torch.utils.flop_counter
   over the device's dense fp16/bf16 peak: the table below, or --peak-tflops);
2. the same with --amp bf16, and with --compile true, for --variant-methods (one ResNet, one ViT);
3. one fp32 step on the device against the same step on the CPU: loss and gradients;
4. with 2+ GPUs (gloo processes with --smoke): one step under DDP over NCCL equals one process.
Checks 3 and 4 run the model in eval mode (BatchNorm running statistics, no dropout) and without
PatchMix mixing or MV-MR's random augmentation representation: the CPU, the GPU and the ranks draw
different random numbers, and what is compared is the arithmetic, gathers and gradient averaging.
A Markdown report is written to --out; the exit status is 1 if any check failed.

This file is the command line and the plan; the parts live beside it: gpu_check_runs.py (the
JPEGs and the timed training runs, check 1-2), gpu_check_steps.py (FLOPs and checks 3-4),
gpu_check_report.py (the Markdown report).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # main_pretrain, models and utils, for the gpu_check_* modules

from gpu_check_report import one_line, peak_tflops, write_report  # noqa: E402
from gpu_check_runs import run_flags, train_run, write_jpegs  # noqa: E402
from gpu_check_steps import DETERMINISTIC, ddp_vs_one, device_vs_cpu, step_flops  # noqa: E402

from models.methods import METHODS  # noqa: E402


def get_args() -> argparse.Namespace:
    p = argparse.ArgumentParser("GPU readiness check")
    p.add_argument("--smoke", action="store_true",
                   help="CPU: tiny widths, 2 steps, 32 px, no compile, gloo (the tests run it)")
    p.add_argument("--steps", type=int, default=30, help="training steps per run (default: 30)")
    p.add_argument("-b", "--batch-size", type=int, default=64, help="batch per run (default: 64)")
    p.add_argument("--img-size", type=int, default=224, help="crop size in px (default: 224)")
    p.add_argument("--workers", type=int, default=8, help="data loader workers (default: 8)")
    p.add_argument("--methods", default="all", help="comma list of methods (default: all)")
    p.add_argument("--variant-methods", default="simclr,mocov3_vit",
                   help="methods also run with bf16 and --compile, 'method_vit' for a ViT recipe (default: "
                        "simclr,mocov3_vit)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's dense fp16/bf16 peak for MFU (default: from its name)")
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "gpu_check"),
                   help="where the report, the JPEGs and the runs go")
    args = p.parse_args()
    if args.smoke:
        args.steps, args.batch_size, args.img_size, args.workers = 2, 8, 32, 0
    return args


def main() -> int:
    args = get_args()
    t0 = time.time()
    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        raise SystemExit("error: no CUDA device; run on a GPU, or pass --smoke for the CPU version")
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if cuda:
        torch.backends.cudnn.benchmark = True
    os.makedirs(args.out, exist_ok=True)
    images = max(args.batch_size * args.steps // 4 + 1, 2)  # per class, 4 classes: steps x batch
    root = write_jpegs(os.path.join(args.out, "jpegs"), {"train": images, "val": 2}, args.img_size)
    methods = sorted(METHODS) if args.methods == "all" else args.methods.split(",")
    variants = [v for v in args.variant_methods.split(",") if v]
    plan = [(m, False, "fp16", False) for m in methods]
    for v in variants:
        method, vit = v.removesuffix("_vit"), v.endswith("_vit")
        plan.append((method, vit, "bf16", False))
        plan += [] if args.smoke else [(method, vit, "fp16", True)]  # minutes to compile on CPU
    peak, rows, failed = peak_tflops(args), [], 0
    for method, vit, amp, compiled in plan:
        name = f"{method}{'_vit' if vit else ''}-{amp}{'-compile' if compiled else ''}"
        out = os.path.join(args.out, "runs", name)
        flags = run_flags(method, vit, args, root, out, amp, compiled)
        row = {"run": name, "amp": amp, "compile": compiled}
        try:
            row.update(train_run(flags))
            flops = step_flops(flags, device, args.batch_size)
            row["tflop_step"] = flops / 1e12
            steps_s = row["img_s"] / row["batch"]
            row["mfu"] = 100 * flops * steps_s / (peak * 1e12) if peak else None
        except (Exception, SystemExit) as e:  # noqa: BLE001 - a check reports every failure
            failed += 1
            row["error"] = one_line(e)
            traceback.print_exc()
        rows.append(row)
        print(json.dumps(row, default=str), flush=True)
    check_out = os.path.join(args.out, "runs", "check")
    check_flags = {m: run_flags(m, False, args, root, check_out, "off")
                   + ["--img-size", "32" if args.smoke else "64"] + DETERMINISTIC.get(m, [])
                   for m in methods}
    numerics = {}
    for m, flags in check_flags.items():
        try:
            numerics[m] = device_vs_cpu(flags, device)
        except (Exception, SystemExit) as e:  # noqa: BLE001
            numerics[m] = {"error": one_line(e)}
    world = torch.cuda.device_count() if cuda else 2
    ddp = ddp_vs_one(check_flags, world) if world >= 2 else {}
    failed += write_report(args, rows, numerics, ddp, world, peak, time.time() - t0)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
