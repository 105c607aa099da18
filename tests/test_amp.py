"""fp16 autocast + GradScaler, run on the CPU (torch.amp.GradScaler("cpu")) so CI exercises the path
every CUDA recipe takes: overflows are skipped by the scaler and counted, never fatal; a non-finite
loss stops (or is skipped); --max-overflows stops a run whose scale keeps falling.

Runs are tests/test_reliability.py's tiny recipe (4 steps per epoch, a checkpoint after each),
shortened: fp16 on the CPU is slow.
"""

import json
import math
import os

import torch
from test_reliability import ITERS, pytestmark, run  # noqa: F401

from utils.checkpoint import list_checkpoints, load_checkpoint

FP16 = ["--amp", "fp16"]


def final(out: str, epochs: int) -> dict:
    return load_checkpoint(os.path.join(out, f"checkpoint_{epochs:04d}_000000.pth.tar"))


def saved_losses(out: str) -> list[float]:
    with open(os.path.join(out, "log.txt")) as f:
        return [json.loads(line).get("train_loss", math.nan) for line in f]


def test_fp16_on_cpu_overflows_skips_recovers_and_counts(tmp_path):
    """A first scale of 2^18 overflows for a few steps; each overflow halves the scale (the scaler's
    step is skipped, no error), then training proceeds: weights change, losses are finite."""
    out = str(tmp_path)
    console = run(out, *FP16, "--amp-init-scale", str(2.0**18), "--epochs", "2")
    last = final(out, 2)
    overflows = last["overflow_skipped"]
    assert 0 < overflows < 2 * ITERS, console[-2000:]
    # no growth within 2000 clean steps: the scale is the first one halved once per overflow
    assert last["scaler"]["scale"] == 2.0**18 * 0.5**overflows
    with open(os.path.join(out, "results.json")) as f:
        assert json.load(f)["pretrain"]["overflow_skipped"] == overflows
    assert f"overflows {overflows} scale" in console
    first = load_checkpoint(sorted(list_checkpoints(out))[0])  # the oldest kept: 2 steps back
    changed = [not torch.equal(a, b) for a, b in zip(first["model"].values(),
                                                     last["model"].values(), strict=True)]
    assert any(changed)
    losses = saved_losses(out)
    assert math.isfinite(losses[-1])  # the last epoch trained (an all-skipped epoch logs none)
    assert all(torch.isfinite(t).all() for t in last["model"].values() if t.is_floating_point())


def test_max_overflows_stops_with_one_line_naming_the_step(tmp_path):
    console = run(str(tmp_path), *FP16, "--amp-init-scale", "1e30", "--max-overflows", "3",
                  status=1)  # fmt: skip
    line = next(s for s in console.splitlines() if s.startswith("error:"))
    assert "3 fp16 overflows in a row" in line and "up to epoch 0 step 2" in line
    assert "--max-overflows" in line and "Traceback" not in console


def test_fp16_with_on_nonfinite_skip(tmp_path):
    """Skip mode with a scaler: overflows belong to the scaler (no unscale_ error on the next step,
    none counted as non-finite); a non-finite loss is skipped and counted."""
    out = str(tmp_path / "overflow")
    run(out, *FP16, "--amp-init-scale", "1e30", "--max-overflows", "0", "--on-nonfinite", "skip",
        "--epochs", "1")  # fmt: skip
    last = final(out, 1)
    assert last["overflow_skipped"] == ITERS and last["nonfinite_skipped"] == 0
    out = str(tmp_path / "nan")
    console = run(out, *FP16, "--lr", "1e30", "--on-nonfinite", "skip", "--max-overflows", "0",
                  "--epochs", "1")  # fmt: skip
    skipped = [s for s in console.splitlines() if "step skipped" in s]
    assert skipped and skipped[0].startswith("warning: non-finite loss at epoch 0 step")
    last = final(out, 1)
    assert last["nonfinite_skipped"] == len(skipped)
    assert all(torch.isfinite(t).all() for t in last["model"].values() if t.is_floating_point())
