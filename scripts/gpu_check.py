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
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import signal
import sys
import tempfile
import time
import traceback

import numpy as np
import torch
import yaml
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import main_pretrain  # noqa: E402
from models.methods import METHODS, build_model  # noqa: E402
from utils.args import parse_with_config  # noqa: E402

# dense fp16/bf16 tensor-core peak in TFLOP/s from the vendors' datasheets; first match wins
PEAK_TFLOPS = [("H100 PCIe", 756), ("H100", 989), ("H200", 989), ("A100", 312), ("L40S", 362),
               ("L4", 121), ("A10", 125), ("V100", 125), ("T4", 65), ("A6000", 155)]
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
# the forward's own randomness, off for the CPU and DDP comparisons (see the docstring)
DETERMINISTIC = {"patchmix": ["--mix-num", "1"],
                 "mvmr": ["--representations", "pixels,hog,std"],
                 "mvmr_clip": ["--representations", "pixels,hog,std"]}


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
                   help="methods also run with bf16 and with --compile (default: a ResNet and a "
                        "ViT recipe; 'method_vit' picks the method's ViT recipe)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's dense fp16/bf16 peak for MFU (default: from its name)")
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "gpu_check"),
                   help="where the report, the JPEGs and the runs go")
    args = p.parse_args()
    if args.smoke:
        args.steps, args.batch_size, args.img_size, args.workers = 2, 8, 32, 0
    return args


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
    for path in sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml"))):
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


# ============ one step, outside the loop: FLOPs, CPU vs device ============


def model_and_views(flags: list[str], device: torch.device, batch: int, seed: int = 0):
    """(model, criterion, views, labels) built on the CPU with a fixed seed, then moved."""
    run_args = parse(flags)
    run_args.device = device
    torch.manual_seed(seed)
    model = build_model(run_args)[0]
    criterion = METHODS[run_args.method].loss(run_args)
    g = torch.Generator().manual_seed(seed)
    sizes = [spec.size for spec in METHODS[run_args.method].views(run_args)]
    views = [torch.randn(batch, 3, s, s, generator=g) for s in sizes]
    labels = torch.randint(0, 4, (batch,), generator=g)
    return model.to(device), criterion.to(device), [v.to(device) for v in views], labels.to(device)


def loss_and_grads(model, criterion, views, labels) -> tuple[float, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    out = model(views)
    loss = criterion(out, labels=labels).loss
    loss.backward()
    grads = [p.grad.flatten() for p in model.parameters() if p.grad is not None]
    return float(loss.detach()), torch.cat(grads).double().cpu()


def step_flops(flags: list[str], device: torch.device, batch: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    model, criterion, views, labels = model_and_views(flags, device, batch)
    model.train()
    with FlopCounterMode(display=False) as counter:
        loss_and_grads(model, criterion, views, labels)
    return float(counter.get_total_flops())


@contextlib.contextmanager
def exact_fp32():
    """No TF32: the device step must be the CPU's fp32 arithmetic."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def device_vs_cpu(flags: list[str], device: torch.device, batch: int = 4) -> dict:
    results = []
    for dev in (torch.device("cpu"), device):
        model, criterion, views, labels = model_and_views(flags, dev, batch)
        model.eval()  # BatchNorm running statistics and no dropout (see the docstring)
        with exact_fp32():
            results.append(loss_and_grads(model, criterion, views, labels))
    (loss_cpu, g_cpu), (loss_dev, g_dev) = results
    return {"loss_cpu": loss_cpu, "loss_dev": loss_dev,
            "loss_err": abs(loss_dev - loss_cpu) / max(abs(loss_cpu), 1e-12),
            "grad_err": relative(g_dev, g_cpu)}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a - b| / |b| over all gradient entries."""
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


# ============ DDP: one step over 2+ processes equals one process ============


def ddp_worker(rank: int, world: int, port: int, flag_sets: dict, batch: int, out_dir: str) -> None:
    import torch.distributed as torch_dist

    cuda = torch.cuda.is_available()
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.set_num_threads(1)
    torch_dist.init_process_group("nccl" if cuda else "gloo", world_size=world, rank=rank,
                                  init_method=f"tcp://127.0.0.1:{port}")
    results = {}
    for name, flags in flag_sets.items():
        try:
            model, criterion, views, labels = model_and_views(flags, device, batch)
            model.eval()  # see the docstring: no per-rank random numbers in the step
            ddp = torch.nn.parallel.DistributedDataParallel(model,
                                                            device_ids=[rank] if cuda else None)
            shard = slice(rank * batch // world, (rank + 1) * batch // world)
            with exact_fp32():
                loss, _ = loss_and_grads(ddp, criterion, [v[shard] for v in views], labels[shard])
            mean_loss = torch.tensor([loss], device=device)
            torch_dist.all_reduce(mean_loss)
            grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
            results[name] = (float(mean_loss) / world, grads.double().cpu())
        except Exception as e:  # noqa: BLE001 - reported per method
            results[name] = one_line(e)
    if rank == 0:
        torch.save(results, os.path.join(out_dir, "ddp.pt"))
    torch_dist.destroy_process_group()


def ddp_vs_one(flag_sets: dict, world: int, batch: int = 8) -> dict:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(ddp_worker, args=(world, port, flag_sets, batch, out_dir), nprocs=world)
        many = torch.load(os.path.join(out_dir, "ddp.pt"), weights_only=False)
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    report = {}
    for name, flags in flag_sets.items():
        if isinstance(many[name], str):
            report[name] = {"error": many[name]}
            continue
        model, criterion, views, labels = model_and_views(flags, device, batch)
        model.eval()
        with exact_fp32():
            loss, grads = loss_and_grads(model, criterion, views, labels)
        report[name] = {"loss_one": loss, "loss_ddp": many[name][0],
                        "loss_err": abs(many[name][0] - loss) / max(abs(loss), 1e-12),
                        "grad_err": relative(many[name][1], grads)}
    return report


# ============ the report ============


def peak_tflops(args) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in PEAK_TFLOPS if key in name), None)


def one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:160] if lines else ''}".replace("|", "/")


def fmt(value, spec: str = ".1f") -> str:
    return "n/a" if value is None or value != value else format(value, spec)


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


LOSS_TOL, GRAD_TOL = 1e-4, 1e-3  # relative; fp32 without TF32 differs by summation order only


def check_rows(results: dict, left: str, right: str) -> tuple[list[str], int]:
    lines, failed = [], 0
    for m, r in results.items():
        if "error" in r:
            lines.append(f"| {m} | | | | | FAILED: {r['error']} |")
            failed += 1
            continue
        ok = r["loss_err"] <= LOSS_TOL and r["grad_err"] <= GRAD_TOL
        failed += not ok
        lines.append(f"| {m} | {r[left]:.6f} | {r[right]:.6f} | {r['loss_err']:.1e} | "
                     f"{r['grad_err']:.1e} | {'ok' if ok else 'FAILED'} |")
    return lines, failed


def write_report(args, rows, numerics, ddp, world, peak, seconds) -> int:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (--smoke)"
    lines = [f"# GPU check: {device}", "",
             f"torch {torch.__version__}, {args.steps} steps per run at {args.img_size} px, "
             f"synthetic JPEGs through the folder path ({args.workers} workers), channels_last; "
             f"peak {fmt(peak, '.0f')} TFLOP/s; {seconds / 60:.1f} min in total.", "",
             "| run | arch | batch | amp | compile | img/s | data wait % | peak mem GB | "
             "TFLOP/step | MFU % | status |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    failed = 0
    for r in rows:
        status = f"FAILED: {r['error']}" if "error" in r else "ok"
        failed += "error" in r
        share = r.get("data_share")
        lines.append(f"| {r['run']} | {r.get('arch', '')} | {r.get('batch', '')} | {r['amp']} | "
                     f"{'yes' if r['compile'] else 'no'} | {fmt(r.get('img_s'), '.3g')} | "
                     f"{fmt(None if share is None else 100 * share)} | "
                     f"{fmt(r.get('peak_gb'), '.2f')} | "
                     f"{fmt(r.get('tflop_step'), '.3f')} | {fmt(r.get('mfu'))} | {status} |")
    head = "| method | {} loss | {} loss | loss rel. err | grad rel. err | status |"
    numeric_lines, n_failed = check_rows(numerics, "loss_cpu", "loss_dev")
    lines += ["", f"## One fp32 step: device vs CPU (tolerance {LOSS_TOL:g} loss, {GRAD_TOL:g} "
              "gradients)", "", head.format("CPU", "device"), "|---|---|---|---|---|---|",
              *numeric_lines]
    failed += n_failed
    if ddp:
        ddp_lines, d_failed = check_rows(ddp, "loss_one", "loss_ddp")
        backend = "NCCL" if torch.cuda.is_available() else "gloo"
        lines += ["", f"## One step: DDP over {world} processes ({backend}) vs one process", "",
                  head.format("1 process", "DDP"), "|---|---|---|---|---|---|", *ddp_lines]
        failed += d_failed
    else:
        lines += ["", "## DDP", "", "skipped: one GPU (the check needs 2 or more)"]
    path = os.path.join(args.out, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nreport: {path}" + (f"  ({failed} checks FAILED)" if failed else "  (all checks ok)"))
    return failed


if __name__ == "__main__":
    sys.exit(main())
