"""results.json: what a run was (command, commit, versions, device, wall time) and what it measured."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from typing import Any

import torch

from utils.misc import git_sha


def write_results(results_dir: str, kind: str, args: Any, metrics: dict, wall_time: float) -> str:
    """Write (or update) results_dir/results.json with a `kind` section; returns the path."""
    path = os.path.join(results_dir, "results.json")
    os.makedirs(results_dir, exist_ok=True)
    record: dict[str, Any] = {}
    if os.path.isfile(path):
        with open(path) as f:
            record = json.load(f)
    a = vars(args)
    for key in ("method", "dataset", "arch", "seed"):  # an evaluation never erases the run's own
        if a.get(key) is not None or key not in record:
            record[key] = a.get(key)
    record.update({
        "git_commit": git_sha(), "torch": torch.__version__, "python": platform.python_version(),
        "device": str(a.get("device", "cpu")),
    })
    record[kind] = {
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "epochs": a.get("epochs"), "batch_size": a.get("batch_size"),
        "views": a.get("num_views"), "wall_time_s": round(wall_time, 2),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **metrics,
    }
    if a.get("class_names"):  # the dataset's one class list (folder trees: train/'s folders)
        record["num_classes"] = len(a["class_names"])
        record["class_names"] = list(a["class_names"])
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1, default=str)
    os.replace(tmp, path)
    return path
