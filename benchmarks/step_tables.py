"""bench_step.py's tables and targets: the method matrix, ours vs lightly, the defaults."""

from __future__ import annotations

from benchmarks.common import ratio
from benchmarks.step_builders import Case

MATRIX_COLS = [
    "method",
    "arch",
    "B",
    "V",
    "ms/step",
    "img/s",
    "views/s",
    "loss ms",
    "loss %",
    "GFLOP/step",
    "GFLOP/s",
    "% of matmul",
]
PEER_COLS = [
    "arch",
    "B",
    "amp",
    "channels_last",
    "ours ms/step",
    "peer ms/step",
    "ours img/s",
    "peer img/s",
    "ours/peer",
    "ours loss %",
    "ours % of matmul",
    "peer % of matmul",
]


def peer_rows(grid: list[Case], ours: list[dict], peers: list[dict]) -> list[dict]:
    rows = []
    for case, o, p in zip(grid, ours, peers, strict=True):
        rows.append(
            {
                "arch": case.arch,
                "B": case.batch,
                "amp": case.amp,
                "channels_last": case.channels_last if not case.arch.startswith("vit") else "n/a",
                "ours ms/step": o["ms/step"],
                "peer ms/step": p["ms/step"],
                "ours img/s": o["img/s"],
                "peer img/s": p["img/s"],
                "ours/peer": ratio(o["img/s"], p["img/s"]),
                "ours loss %": o.get("loss %"),
                "ours % of matmul": o["% of matmul"],
                "peer % of matmul": p["% of matmul"],
            }
        )
    return rows


def default_vs_default(grid: list[Case], ours: list[dict], peers: list[dict]) -> list[dict]:
    """Ours at the training script's CPU defaults (fp32, channels_last) vs lightly's (fp32,
    contiguous): what each user gets without tuning."""
    rows = []
    for arch in dict.fromkeys(c.arch for c in grid):
        o = next(
            (
                r
                for c, r in zip(grid, ours, strict=True)
                if c.arch == arch and c.amp == "off" and c.channels_last
            ),
            None,
        )
        p = next(
            (
                r
                for c, r in zip(grid, peers, strict=True)
                if c.arch == arch
                and c.amp == "off"
                and (not c.channels_last or arch.startswith("vit"))
            ),
            None,
        )
        if o and p:
            rows.append(
                {
                    "arch": arch,
                    "B": o["B"],
                    "ours img/s": o["img/s"],
                    "peer img/s": p["img/s"],
                    "ours/peer": ratio(o["img/s"], p["img/s"]),
                }
            )
    return rows


def precision_note(ours: list[dict]) -> str:
    """Our step's bf16-autocast speed over fp32, per backbone and memory format."""
    fp32 = {(r["arch"], r["channels_last"]): r["img/s"] for r in ours if r["amp"] == "off"}
    parts = []
    for r in ours:
        key = (r["arch"], r["channels_last"])
        if r["amp"] == "bf16" and key in fp32:
            fmt = " channels_last" if r["channels_last"] and not r["arch"].startswith("vit") else ""
            parts.append(f"{r['arch']}{fmt} x{r['img/s'] / fp32[key]:.2f}")
    return "bf16 autocast vs fp32, our SimCLR step: " + ", ".join(parts)


def targets(versus: list[dict], v8: list[dict]) -> list[dict]:
    out = []
    for r in versus:
        if r["amp"] == "off" and r["channels_last"] in (True, "n/a"):
            out.append(
                {
                    "target": f"SimCLR step >= 1.2x lightly ({r['arch']}, B {r['B']}, fp32, "
                    "same settings)",
                    "measured": f"{r['ours/peer']:.2f}x",
                    "met": r["ours/peer"] >= 1.2,
                    "note": f"same backbone, projector, optimizer: the loss is "
                    f"{r['ours loss %']:.2f} % of our step, no 20 % to win there",
                }
            )
    if v8:
        worst = max(v8, key=lambda r: r["loss %"])
        out.append(
            {
                "target": "loss < 5 % of the step at V = 8",
                "measured": f"{worst['loss %']:.2f} % (max: {worst['method']} {worst['arch']})",
                "met": worst["loss %"] < 5,
                "note": "",
            }
        )
    return out
