"""scripts/gpu_check.py's Markdown report: the runs' speed and MFU, and the two step comparisons."""

from __future__ import annotations

import os

import torch

# dense fp16/bf16 tensor-core peak in TFLOP/s from the vendors' datasheets; first match wins
PEAK_TFLOPS = [("H100 PCIe", 756), ("H100", 989), ("H200", 989), ("A100", 312), ("L40S", 362),
               ("L4", 121), ("A10", 125), ("V100", 125), ("T4", 65), ("A6000", 155)]
LOSS_TOL, GRAD_TOL = 1e-4, 1e-3  # relative; fp32 without TF32 differs by summation order only


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
