"""Our results beside the papers': one Markdown table from the results.json of many runs.

    python tools/results_table.py runs/ --metric both
    python tools/results_table.py 'runs/simclr_cifar10_seed*' --metric linear --json table.json

Every results.json under the given paths (directories are searched recursively, globs expanded) is
one run; args.json beside it fills fields results.json lacks. Runs are grouped by (method, dataset,
arch, epochs, pretraining batch size) and aggregated over seeds: mean ± sample standard deviation,
n = number of runs. Each group is matched to the rows of paper_results.yaml with the same method,
dataset, arch, epochs, batch size, protocol and metric (a paper row with `epochs: null` or no
`batch_size` matches any); the table shows our value, the random-init baseline when the run has one,
the paper's value and ours minus the paper's, or "no published number".

Protocols: `knn` (main_knn.py), `linear` (main_lincls.py, offline) and `linear-online` (the online
probe of main_pretrain.py). An offline linear number with no offline paper row is shown beside the
paper's online (or distillation) one, marked "(online)" ("(distill)"). A paper row with `report: best` is compared with our best
epoch (`top1_best`), marked "best"; otherwise with the last epoch.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import sys
from collections import defaultdict
from typing import Any

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PAPER = os.path.join(ROOT, "paper_results.yaml")
GROUP_KEY = ("method", "dataset", "arch", "epochs", "batch_size")
MATCH_KEY = ("method", "dataset", "arch", "protocol", "metric")
PROTOCOLS = ("linear", "linear-online", "knn", "finetune", "semi-1%", "semi-10%", "distill", "voc07")
PAPER_FIELDS = ("method", "dataset", "arch", "epochs", "protocol", "metric", "value", "source")
NO_PAPER = "no published number"

# results.json section -> (protocol, kind); kind "random" is the random-init baseline of the run
SECTIONS = {"knn": ("knn", "ours"), "knn_random_init": ("knn", "random"),
            "linear": ("linear", "ours"), "linear_random_init": ("linear", "random"),
            "finetune": ("finetune", "ours"), "finetune_random_init": ("finetune", "random"),
            "voc07": ("voc07", "ours")}
# a protocol of ours -> the paper protocols it is compared with, in order of preference
COMPARED_WITH = {"knn": ("knn",), "linear": ("linear", "linear-online", "distill"),
                 "linear-online": ("linear-online",), "finetune": ("finetune",),
                 "semi-1%": ("semi-1%",), "semi-10%": ("semi-10%",), "voc07": ("voc07",)}
VOC07_METRICS = ("mAP", "mAP_11point", "AP_pooled")  # main_voc07.py; MV-MR reports AP_pooled
# --metric -> the protocols tabulated
METRIC_PROTOCOLS = {"knn": ("knn",), "linear": ("linear", "linear-online"),
                    "both": ("knn", "linear", "linear-online"),
                    "finetune": ("finetune", "semi-1%", "semi-10%"), "voc07": ("voc07",),
                    "all": ("knn", "linear", "linear-online", "finetune", "semi-1%", "semi-10%",
                            "voc07")}


# ============ reading runs ============


def find_results(paths: list[str]) -> list[str]:
    """results.json files under directories (recursive), globs or file paths; sorted, unique."""
    found: set[str] = set()
    for pattern in paths:
        matches = glob.glob(pattern)
        if not matches:
            raise FileNotFoundError(f"no run directory or results.json matches {pattern!r}")
        for path in matches:
            if os.path.isfile(path):
                found.add(os.path.normpath(path))
            for root, _, files in os.walk(path):  # nothing when path is a file
                if "results.json" in files:
                    found.add(os.path.normpath(os.path.join(root, "results.json")))
    return sorted(found)


def _read_json(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def measurements(record: dict[str, Any], knn_k: int, where: str = ""
                 ) -> dict[tuple[str, str, str, str], float]:
    """{(protocol, metric, kind, report): value} of one results.json; kNN is top-1 at k = knn_k.

    report is "last", or "best" for a linear probe's best epoch (`top1_best`, `top5_best`).
    """
    values = {}
    for section, (protocol, kind) in SECTIONS.items():
        result = record.get(section) or {}
        if protocol == "knn" and result:
            top1 = result.get("top1") or {}
            if str(knn_k) in top1:
                values[(protocol, "top1", kind, "last")] = float(top1[str(knn_k)])
            else:
                print(f"warning: {section} of {where} has no k={knn_k} (has "
                      f"{sorted(top1, key=int)}); see --knn-k", file=sys.stderr)
        if protocol == "finetune" and result:
            protocol = label_protocol(result.get("label_fraction"))
        if protocol == "voc07":
            for metric in VOC07_METRICS:
                if result.get(metric) is not None:
                    values[(protocol, metric, kind, "last")] = float(result[metric])
        for metric in ("top1", "top5") if protocol not in ("knn", "voc07") else ():
            for report, field in (("last", metric), ("best", metric + "_best")):
                if result.get(field) is not None:
                    values[(protocol, metric, kind, report)] = float(result[field])
    online = (record.get("pretrain") or {}).get("online_probe_top1")
    if online is not None:  # main_pretrain --online-probe: its val top-1 after the last epoch
        values[("linear-online", "top1", "ours", "last")] = float(online)
    return values


def label_protocol(fraction: float | None) -> str:
    """finetune (all labels) or semi-P% (main_finetune.py --label-fraction)."""
    if fraction is None or fraction >= 1.0:
        return "finetune"
    return f"semi-{100 * fraction:g}%"


def load_run(path: str, knn_k: int = 20) -> dict[str, Any]:
    """One run: identity (method, dataset, arch, epochs, seed), directory and measurements."""
    record = _read_json(path)
    args = _read_json(os.path.join(os.path.dirname(path), "args.json"))  # main_pretrain's args
    pretrain = record.get("pretrain") or {}
    if not pretrain:  # a fine-tuning run lives in a subdirectory of its pretraining run (main.sh)
        parent = os.path.dirname(os.path.dirname(os.path.abspath(path)))
        pretrain = _read_json(os.path.join(parent, "results.json")).get("pretrain") or {}
    run = {"path": os.path.dirname(path) or "."}
    for field in ("epochs", "batch_size"):  # of the pretraining, not of an evaluation
        run[field] = pretrain.get(field) if pretrain.get(field) is not None else args.get(field)
    for field in ("method", "dataset", "arch", "seed"):
        run[field] = record.get(field) if record.get(field) is not None else args.get(field)
    run["values"] = measurements(record, knn_k, path)
    return run


# ============ paper numbers ============


def load_paper(path: str) -> list[dict[str, Any]]:
    """Rows of paper_results.yaml (a mapping with `rows`, or a bare list), checked for fields."""
    with open(path) as f:
        data = yaml.safe_load(f) or []
    rows = data.get("rows", []) if isinstance(data, dict) else data
    for i, row in enumerate(rows):
        missing = [k for k in PAPER_FIELDS if k not in row]
        if missing:
            raise ValueError(f"{path}: row {i} ({row}) lacks {missing}")
        if row["protocol"] not in PROTOCOLS or row.get("report", "last") not in ("best", "last"):
            raise ValueError(f"{path}: row {i} ({row}): protocol must be one of {PROTOCOLS}, "
                             "report best or last")
    return rows


def match_paper(row: dict[str, Any], paper: list[dict[str, Any]], ignore_epochs: bool = False,
                ignore_batch_size: bool = False) -> list[dict[str, Any]]:
    """Paper rows for one of our table rows (row["protocol"] is the paper protocol sought); epochs
    and batch size must agree unless the paper's is unknown or ignore_epochs / ignore_batch_size."""
    def agrees(p: dict[str, Any], key: str, ignore: bool) -> bool:
        return ignore or p.get(key) is None or p[key] == row.get(key)

    return [p for p in paper if all(p[k] == row[k] for k in MATCH_KEY)
            and agrees(p, "epochs", ignore_epochs) and agrees(p, "batch_size", ignore_batch_size)]


# ============ the table ============


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single run)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _sort_key(key: tuple) -> tuple:
    *names, epochs, batch_size = key
    return (*(str(n) for n in names),
            *(n if isinstance(n, (int, float)) else -1 for n in (epochs, batch_size)))


def _warn_repeated_seeds(key: tuple, runs: list[dict[str, Any]]) -> None:
    seeds = [r["seed"] for r in runs]
    repeated = sorted({str(s) for s in seeds if s is not None and seeds.count(s) > 1})
    if repeated:
        print(f"warning: {key}: seed(s) {repeated} appear in several runs; each run counts once "
              f"({[r['path'] for r in runs]})", file=sys.stderr)


def aggregate(key: tuple, runs: list[dict[str, Any]], protocol: str, metric: str,
              report: str = "last") -> dict[str, Any] | None:
    """Our aggregated row for one group, protocol, metric and report (best or last epoch); None
    when no run measured it. Runs that recorded no best epoch (older results) give "last"."""
    if report == "best" and not any((protocol, metric, "ours", "best") in r["values"]
                                    for r in runs):
        report = "last"
    ours = [r for r in runs if (protocol, metric, "ours", report) in r["values"]]
    if not ours:
        return None
    mean, std = mean_std([r["values"][(protocol, metric, "ours", report)] for r in ours])
    random = [r["values"][(protocol, metric, "random", report)] for r in runs
              if (protocol, metric, "random", report) in r["values"]]
    return {**dict(zip(GROUP_KEY, key)), "protocol": protocol, "metric": metric,
            "report": report, "mean": mean, "std": std, "n": len(ours),
            "seeds": [r["seed"] for r in ours], "runs": [r["path"] for r in ours],
            "random_init": mean_std(random)[0] if random else None}


def beside_paper(ours: dict[str, Any], matches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One table row per matching paper row (ours minus theirs), or one row with no paper."""
    if not matches:
        return [{**ours, "paper": None, "paper_epochs": None, "paper_batch_size": None,
                 "paper_protocol": None, "diff": None, "source": None, "verified": None,
                 "note": None}]
    return [{**ours, "paper": p["value"], "paper_epochs": p["epochs"],
             "paper_batch_size": p.get("batch_size"), "paper_protocol": p["protocol"],
             "diff": ours["mean"] - p["value"], "source": p["source"],
             "verified": p.get("verified", True), "note": p.get("note")} for p in matches]


def paper_matches(key: tuple, protocol: str, metric: str, paper: list[dict[str, Any]],
                  ignore: dict[str, bool]) -> list[dict[str, Any]]:
    """The paper rows our (group, protocol, metric) is compared with: those of the first paper
    protocol in COMPARED_WITH that has any (offline linear falls back to online)."""
    row = {**dict(zip(GROUP_KEY, key)), "metric": metric}
    for theirs in COMPARED_WITH.get(protocol, (protocol,)):
        found = match_paper({**row, "protocol": theirs}, paper, **ignore)
        if found:
            return found
    return []


def build_table(runs: list[dict[str, Any]], paper: list[dict[str, Any]],
                protocols: tuple[str, ...] = ("knn", "linear", "linear-online"), top5: bool = False,
                ignore_epochs: bool = False, ignore_batch_size: bool = False
                ) -> list[dict[str, Any]]:
    """Table rows: ours (mean, std, n over seeds; the epoch the paper reported) beside each
    matching paper row, or none."""
    ignore = {"ignore_epochs": ignore_epochs, "ignore_batch_size": ignore_batch_size}
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[tuple(run[k] for k in GROUP_KEY)].append(run)
    table = []
    for key in sorted(groups, key=_sort_key):
        _warn_repeated_seeds(key, groups[key])
        for protocol in protocols:
            for metric in _metrics(protocol, top5):
                matches = paper_matches(key, protocol, metric, paper, ignore)
                for report in sorted({p.get("report", "last") for p in matches} or {"last"}):
                    ours = aggregate(key, groups[key], protocol, metric, report)
                    if ours is not None:
                        table += beside_paper(ours, [p for p in matches
                                                     if p.get("report", "last") == report])
    return table


def _metrics(protocol: str, top5: bool) -> tuple[str, ...]:
    if protocol == "voc07":
        return VOC07_METRICS
    return ("top1", "top5") if top5 and protocol != "knn" else ("top1",)


def _paper_cell(row: dict[str, Any]) -> str:
    if row["paper"] is None:
        return NO_PAPER
    cell = f"{row['paper']:.2f}" + ("" if row["verified"] else "*")
    if row["paper_epochs"] != row["epochs"]:
        cell += f" ({row['paper_epochs'] if row['paper_epochs'] is not None else '?'} ep)"
    if row["paper_batch_size"] is not None and row["paper_batch_size"] != row["batch_size"]:
        cell += f" (b{row['paper_batch_size']})"
    if row["paper_protocol"] != row["protocol"]:
        cell += f" ({row['paper_protocol'].replace('linear-', '')})"
    return cell


def _ours_cell(row: dict[str, Any]) -> str:
    best = ", best" if row["report"] == "best" else ""
    if row["n"] < 2:  # one run has no spread to report
        return f"{row['mean']:.2f} (n=1{best})"
    return f"{row['mean']:.2f} ± {row['std']:.2f} (n={row['n']}{best})"


def _source_cell(row: dict[str, Any]) -> str:
    # full commits stay in the YAML and the JSON; 7 hex digits are enough on screen
    source = re.sub(r"@([0-9a-f]{7})[0-9a-f]{33}\b", r"@\1", row["source"] or "")
    return source + (f" ({row['note']})" if row["note"] else "")


def format_markdown(table: list[dict[str, Any]]) -> str:
    """The table as Markdown, with a footnote for unverified paper numbers."""
    header = ["method", "dataset", "arch", "epochs", "batch", "protocol", "metric", "ours",
              "random init", "paper", "ours - paper", "source"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in table:
        cells = [r["method"], r["dataset"], r["arch"], r["epochs"], r["batch_size"], r["protocol"],
                 r["metric"],
                 _ours_cell(r), "" if r["random_init"] is None else f"{r['random_init']:.2f}",
                 _paper_cell(r), "" if r["diff"] is None else f"{r['diff']:+.2f}",
                 _source_cell(r)]
        lines.append("| " + " | ".join("?" if c is None else str(c) for c in cells) + " |")
    notes = ["", "ours: mean ± sample std over seeds (n runs), at the last epoch or, where the paper "
             "reported its best epoch, at ours (best); kNN and linear top-1/top-5 in %. batch: "
             "the pretraining's; linear-online: the pretraining's online probe."]
    if not table:
        notes.append("(no kNN or linear results in these runs: run main_knn.py / main_lincls.py)")
    if any(r["verified"] is False for r in table):
        notes.append("\\* not verified against a stored source (`verified: false` in the YAML).")
    return "\n".join(lines + notes)


# ============ command line ============


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run directories (searched recursively for "
                                                "results.json), globs, or results.json files")
    parser.add_argument("--paper", default=DEFAULT_PAPER,
                        help="published numbers (default: paper_results.yaml of the repo)")
    parser.add_argument("--metric", default="both", choices=sorted(METRIC_PROTOCOLS),
                        help="which protocols to tabulate (default: both = knn and linear)")
    parser.add_argument("--knn-k", default=20, type=int,
                        help="k of the kNN top-1 to report (default: 20, DINO's)")
    parser.add_argument("--top5", action="store_true", help="also tabulate linear top-5")
    parser.add_argument("--ignore-epochs", action="store_true",
                        help="match paper rows whatever their epochs (shown beside the value)")
    parser.add_argument("--ignore-batch-size", action="store_true",
                        help="match paper rows whatever their pretraining batch (shown beside it)")
    parser.add_argument("--json", default="", help="also write the table rows to this JSON file")
    return parser


def main(argv: list[str] | None = None) -> str:
    args = get_args_parser().parse_args(argv)
    try:
        paths = find_results(args.runs)
    except FileNotFoundError as e:
        raise SystemExit(f"error: {e}") from None
    if not paths:
        raise SystemExit(f"error: no results.json under {args.runs}")
    runs = [load_run(p, args.knn_k) for p in paths]
    protocols = METRIC_PROTOCOLS[args.metric]
    table = build_table(runs, load_paper(args.paper), protocols, args.top5, args.ignore_epochs,
                        args.ignore_batch_size)
    text = format_markdown(table)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"paper": args.paper, "knn_k": args.knn_k, "rows": table}, f, indent=1)
    return text


if __name__ == "__main__":
    main()
