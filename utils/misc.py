"""Small helpers: seeding, boolean flags, git revision, RNG state capture."""

from __future__ import annotations

import argparse
import os
import random
import subprocess

import numpy as np
import torch


def bool_flag(s: str) -> bool:
    """argparse type for booleans: --flag true/false, 1/0, yes/no, on/off."""
    value = str(s).lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {s!r}: use true or false")


def probability(s: str) -> float:
    """argparse type for a probability or rate in [0, 1]: a bad value is a one-line usage error."""
    value = float(s)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{s!r} is not in [0, 1]")
    return value


def to_device(batch, device: torch.device):
    """A tensor, or a list/tuple of tensors (multi-view batches), on `device`; the one place every
    entry script moves a batch (pinned host memory makes the copy asynchronous)."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    return type(batch)(to_device(b, device) for b in batch)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def git_sha() -> str:
    """The checkout's commit (with -dirty when it has local changes), or 'unknown'."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def run(*cmd: str) -> str:
        return subprocess.run(cmd, cwd=here, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        sha = run("git", "rev-parse", "HEAD") or "unknown"
        dirty = bool(run("git", "status", "--porcelain", "--untracked-files=no"))
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def rng_state() -> dict:
    """Every RNG the next step depends on, as plain tensors/tuples (weights_only-loadable)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
