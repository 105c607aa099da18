"""Training curves from log.txt: loss, learning rate and kNN top-1 per epoch.

    python tools/plots.py runs/simclr_s0 runs/simclr_s1 --out plots/

Writes <run>.png per run (three panels) and, for two runs or more, overlay.png with every run on
the same three panels. Every PNG is exactly FIGSIZE x DPI pixels (no tight bounding box), so the
images line up in a README. kNN points exist only for epochs where main_pretrain.py's monitor ran
(--knn-freq).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any

from matplotlib.figure import Figure  # the object API: no pyplot state, no GUI backend

FIGSIZE = (12.0, 3.5)  # inches
DPI = 100  # -> 1200 x 350 pixels
PANELS = (("train_loss", "training loss"), ("train_lr", "learning rate"),
          ("test_knn_top1", "kNN top-1 (%)"))


def image_size() -> tuple[int, int]:
    """(width, height) in pixels of every PNG this tool writes."""
    return round(FIGSIZE[0] * DPI), round(FIGSIZE[1] * DPI)


def read_log(path: str) -> list[dict[str, Any]]:
    """The epoch records of a JSON-lines log; a line being written (unparsable) is skipped."""
    records = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                print(f"warning: {path}:{n} is not JSON (a run still writing?); skipped",
                      file=sys.stderr)
    return records


def series(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of the records that have `key`."""
    points = [(r["epoch"], r[key]) for r in records if r.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def _new_figure() -> tuple[Figure, list[Any]]:
    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    axes = fig.subplots(1, len(PANELS))
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.15, top=0.85, wspace=0.25)
    for ax, (_, title) in zip(axes, PANELS):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    return fig, list(axes)


def _draw(axes: list[Any], records: list[dict[str, Any]], label: str | None = None) -> None:
    for ax, (key, _) in zip(axes, PANELS):
        x, y = series(records, key)
        if x:
            # kNN is measured every few epochs: markers keep isolated points visible
            ax.plot(x, y, marker="o" if len(x) < 30 or key == "test_knn_top1" else None,
                    markersize=3, label=label)


def _mark_empty(axes: list[Any]) -> None:
    for ax, (key, _) in zip(axes, PANELS):
        if not ax.lines:
            hint = "\n(main_pretrain.py --knn-freq N)" if key == "test_knn_top1" else ""
            ax.text(0.5, 0.5, f"not in log.txt{hint}", ha="center", va="center",
                    transform=ax.transAxes, fontsize=9, color="gray")


def plot_run(records: list[dict[str, Any]], title: str, out: str) -> str:
    """One run's three panels in one PNG; returns its path."""
    fig, axes = _new_figure()
    _draw(axes, records)
    _mark_empty(axes)
    fig.suptitle(title, fontsize=11)
    fig.savefig(out, dpi=DPI)
    return out


def plot_overlay(runs: dict[str, list[dict[str, Any]]], out: str) -> str:
    """Several runs on the same three panels, one colour per run; returns the PNG's path."""
    fig, axes = _new_figure()
    for name, records in runs.items():
        _draw(axes, records, label=name)
    _mark_empty(axes)
    if axes[0].lines:
        axes[0].legend(fontsize=7, loc="upper right")
    fig.suptitle(f"{len(runs)} runs", fontsize=11)
    fig.savefig(out, dpi=DPI)
    return out


def run_names(run_dirs: list[str]) -> list[str]:
    """File-safe names: the shortest tail of the paths (basename, then parent/basename, ...) that
    tells the runs apart, e.g. `simclr/seed0` and `dsf/seed0`."""
    parts = [os.path.normpath(d).strip(os.sep).split(os.sep) for d in run_dirs]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = [os.sep.join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            break
    return [re.sub(r"[^\w.-]+", "_", n) or "run" for n in names]


def describe(run_dir: str) -> str:
    """'method, dataset, arch' from the run's args.json, when there is one."""
    path = os.path.join(run_dir, "args.json")
    if not os.path.isfile(path):
        return ""
    with open(path) as f:
        a = json.load(f)
    return ", ".join(str(a[k]) for k in ("method", "dataset", "arch") if a.get(k) is not None)


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories (each with a log.txt)")
    parser.add_argument("--out", required=True, help="directory for the PNGs (created)")
    parser.add_argument("--log-name", default="log.txt", help="JSON-lines log of each run")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    runs: dict[str, list[dict[str, Any]]] = {}
    written = []
    for run_dir, name in zip(args.runs, run_names(args.runs)):
        log = os.path.join(run_dir, args.log_name)
        if not os.path.isfile(log):
            print(f"warning: {run_dir} has no {args.log_name}; skipped", file=sys.stderr)
            continue
        runs[name] = read_log(log)
        title = f"{name} ({describe(run_dir)})" if describe(run_dir) else name
        written.append(plot_run(runs[name], title, os.path.join(args.out, f"{name}.png")))
    if not runs:
        raise SystemExit(f"error: no {args.log_name} in {args.runs}")
    if len(runs) > 1:
        written.append(plot_overlay(runs, os.path.join(args.out, "overlay.png")))
    print("\n".join(written))
    return written


if __name__ == "__main__":
    main()
