"""Training-step throughput of every METHODS entry, and our SimCLR beside lightly's.

    python -m benchmarks.bench_step [--quick] [--batch 16] [--archs resnet18 vit_tiny]

A step is train_one_epoch's sequence on views already in memory on the device: set lr/wd,
update_momentum, model(views), criterion(out), zero_grad, backward, grad-norm, finite check,
optimizer step. Reported per method x backbone x batch x views: ms/step, images/s, the share of
the step spent in the loss (its forward + backward timed alone on detached copies of the outputs),
and the achieved FLOP/s (torch.utils.flop_counter over one step) against a large matmul timed on
this machine, the practical compute bound. The peer is lightly's NTXentLoss on the same backbone,
projector and optimizer, stepped the way lightly's examples do (no grad-norm, no finite check).
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import markdown_table, matmul_flops, report, time_call, write_json
from benchmarks.step_builders import IMG_SIZE, Case, build_peer_step, build_step, make_args
from benchmarks.step_tables import (
    MATRIX_COLS,
    PEER_COLS,
    default_vs_default,
    peer_rows,
    precision_note,
    targets,
)
from models.methods import METHODS

MULTI_VIEW = ("mocov3", "dsf", "simclr")  # V = 2 * ns: also measured at ns = 4 (V = 8)


def count_flops(step: Callable[[], None]) -> float:
    """FLOPs of one step (matmuls and convolutions, forward + backward); doubles as warm-up."""
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return float(counter.get_total_flops())


def prepare(
    case: Case, peer: bool = False
) -> tuple[Callable[[], None], Callable | None, int, float]:
    """(step, loss_only, V, FLOPs per step), warmed up: the FLOP-counting step, then for bf16
    two more (oneDNN builds its bf16 kernels over the first steps: measured)."""
    torch.manual_seed(0)
    args = make_args(case)
    if peer:
        step, loss_only, views = build_peer_step(args), None, 2
    else:
        step, loss_only, views = build_step(args)
    flops = count_flops(step)
    for _ in range(2 if case.amp == "bf16" else 0):
        step()
    return step, loss_only, views, flops


def make_row(case: Case, ms: float, views: int, flops: float, peer: bool) -> dict:
    row = {
        "method": "lightly NTXent" if peer else case.method,
        "arch": case.arch,
        "B": case.batch,
        "V": views,
        "amp": case.amp,
        "channels_last": case.channels_last,
        "ms/step": ms,
        "img/s": case.batch / ms * 1e3,
        "views/s": views * case.batch / ms * 1e3,
        "GFLOP/step": flops / 1e9,
        "GFLOP/s": flops / ms / 1e6,
    }
    print(
        f"  {row['method']:>14} {case.arch:9} B={case.batch:<4} V={views} {case.amp:4} "
        f"cl={int(case.channels_last)}  {ms:8.1f} ms/step  {row['img/s']:7.1f} img/s",
        flush=True,
    )
    return row


def add_loss_share(row: dict, loss_only: Callable[[], None], repeats: int) -> dict:
    row["loss ms"] = time_call(loss_only, repeats=max(3, repeats), warmup=1)["median_ms"]
    row["loss %"] = 100 * row["loss ms"] / row["ms/step"]
    return row


def measure(case: Case, repeats: int) -> dict:
    """One matrix row: time the step and the loss alone, count FLOPs, compare to the bound."""
    step, loss_only, views, flops = prepare(case)
    ms = time_call(step, repeats=repeats, warmup=0)["median_ms"]
    return add_loss_share(make_row(case, ms, views, flops, False), loss_only, repeats)


def measure_pair(case: Case, rounds: int) -> tuple[dict, dict]:
    """Ours and the peer at the same settings, their steps interleaved (ours, peer, ours, ...)
    so that a change in the machine's load hits both alike; medians over `rounds`."""
    ours_step, loss_only, views, ours_flops = prepare(case)
    peer_step, _, _, peer_flops = prepare(case, peer=True)
    times: dict[str, list[float]] = {"ours": [], "peer": []}
    for _ in range(rounds):
        for name, step in (("ours", ours_step), ("peer", peer_step)):
            times[name].append(time_call(step, repeats=1, warmup=0)["median_ms"])
    ours = make_row(case, statistics.median(times["ours"]), views, ours_flops, False)
    peer = make_row(case, statistics.median(times["peer"]), 2, peer_flops, True)
    return add_loss_share(ours, loss_only, rounds), peer


def probe_bounds(bounds: dict[str, float]) -> dict[str, float]:
    """The matmul bound, kept at its best over probes taken through the run: a probe taken while
    other jobs hold the cores understates what the machine can do."""
    for dtype, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        bounds[name] = max(bounds.get(name, 0.0), matmul_flops(dtype))
    return bounds


def add_bound_share(rows: list[dict], bounds: dict[str, float]) -> None:
    for r in rows:
        r["% of matmul"] = (
            100 * r["GFLOP/s"] * 1e9 / bounds["bf16" if r["amp"] == "bf16" else "fp32"]
        )


def plan(
    quick: bool, batch: int | None, archs: list[str], methods: list[str]
) -> tuple[list[Case], list[Case]]:
    """(method matrix, simclr-vs-peer precision/format grid)."""
    b = batch or (8 if quick else 16)
    matrix = [Case(m, a, b) for a in archs for m in methods]
    v8_archs = archs[:1] if quick else archs
    matrix += [Case(m, a, b, ns=4) for a in v8_archs for m in MULTI_VIEW if m in methods]
    grid = []
    for a in archs:
        if a.startswith("vit"):  # channels_last does not apply
            settings = [("off", True), ("bf16", True)]
        else:
            settings = [("off", True), ("off", False), ("bf16", True)]
            settings += [] if quick else [("bf16", False)]
        grid += [Case("simclr", a, b, amp=amp, channels_last=cl) for amp, cl in settings]
    return matrix, grid


def run(
    quick: bool = False,
    batch: int | None = None,
    archs: list[str] | None = None,
    methods: list[str] | None = None,
) -> tuple[str, list[dict]]:
    """Run the benchmark, write results/step.json; return (Markdown section, targets)."""
    archs = archs or ["resnet18", "vit_tiny"]
    methods = methods or sorted(METHODS)
    repeats = 1 if quick else 2
    bounds = probe_bounds({})
    matrix, grid = plan(quick, batch, archs, methods)
    print("method matrix (fp32, channels_last on)", flush=True)
    rows = [measure(c, repeats if c.ns == 1 else 1) for c in matrix]
    probe_bounds(bounds)
    print("simclr vs lightly", flush=True)
    pairs = [measure_pair(c, 3) for c in grid]
    ours, peers = [o for o, _ in pairs], [p for _, p in pairs]
    add_bound_share(rows + ours + peers, probe_bounds(bounds))
    print(
        f"matmul bound: fp32 {bounds['fp32'] / 1e9:.0f} GFLOP/s, "
        f"bf16 {bounds['bf16'] / 1e9:.0f} GFLOP/s",
        flush=True,
    )
    versus, defaults = peer_rows(grid, ours, peers), default_vs_default(grid, ours, peers)
    v8 = [r for r in rows if r["V"] == 8]
    write_json(
        "step",
        {
            "img_size": IMG_SIZE,
            "quick": quick,
            "matmul_flops": bounds,
            "matrix": rows,
            "simclr": ours,
            "peer": peers,
            "versus": versus,
            "defaults": defaults,
        },
    )
    notes = [
        (
            f"{IMG_SIZE} px inputs; resnet18 = width 64, CIFAR stem; vit_tiny = patch 4 (65 "
            "tokens); main_pretrain defaults otherwise (LARS, --moco-mlp-dim 4096, method defaults)"
        ),
        (
            f"matmul bound (2048^3, the best of 3 probes through the run): fp32 "
            f"{bounds['fp32'] / 1e9:.0f} GFLOP/s, bf16 {bounds['bf16'] / 1e9:.0f} GFLOP/s; "
            "% of matmul = achieved FLOP/s (FlopCounterMode: matmuls and convolutions, forward + "
            "backward) over it"
        ),
        "img/s counts source images (B per step); views/s = V x img/s",
        "loss ms = criterion forward + backward alone, on detached copies of the model outputs",
        (
            f"method matrix: median of {repeats} timed step(s) (V = 8: 1) after a FLOP-counting "
            "warm-up step; "
            "ours vs lightly: steps interleaved (ours, peer, ...), median of 3 each; bf16: 2 more "
            "warm-up steps"
        ),
    ]
    if v8:
        notes.append(
            f"max loss share at V = 8: {max(r['loss %'] for r in v8):.2f} % (target < 5 %)"
        )
    notes.append(precision_note(ours))
    tables = [
        ("Method matrix (fp32, channels_last on for ResNets)", markdown_table(rows, MATRIX_COLS)),
        (
            "SimCLR: ours vs lightly NTXentLoss (same backbone, projector, LARS)",
            markdown_table(versus, PEER_COLS),
        ),
        (
            "Defaults: ours (fp32, channels_last) vs lightly (fp32, contiguous)",
            markdown_table(defaults, ["arch", "B", "ours img/s", "peer img/s", "ours/peer"]),
        ),
    ]
    return report("Training step", tables, notes), targets(versus, v8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller batch, fewer cases")
    parser.add_argument(
        "--batch",
        type=int,
        default=None,
        help="per-step batch B (default 16, quick 8); try 64-256 on a GPU",
    )
    parser.add_argument("--archs", nargs="+", default=None, help="default: resnet18 vit_tiny")
    parser.add_argument("--methods", nargs="+", default=None, help="default: every METHODS key")
    a = parser.parse_args()
    print(run(a.quick, a.batch, a.archs, a.methods)[0])


if __name__ == "__main__":
    main()
