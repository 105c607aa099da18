"""Checkpoints: atomic and durable writes, newest-valid resume, backbone extraction for evaluation.

Checkpoints hold plain data only (tensors, dicts, lists, numbers, strings), so every load uses
``torch.load(weights_only=True)`` and a pickled callable is refused.
"""

from __future__ import annotations

import glob
import os
import re
import warnings

import torch
from torch import nn

from utils import dist
from utils.misc import rng_state, set_rng_state

CKPT_PATTERN = "checkpoint_*.pth.tar"


def save_atomic(state: dict, path: str) -> None:
    """Write to a temporary file in the same directory, fsync, rename, fsync the directory."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself is durable only once the directory entry is on disk
    finally:
        os.close(fd)


def checkpoint_path(results_dir: str, epoch: int, step: int = 0) -> str:
    """Names sort by (epoch, step): checkpoint_0003_000000.pth.tar is the end of epoch 3."""
    return os.path.join(results_dir, f"checkpoint_{epoch:04d}_{step:06d}.pth.tar")


def list_checkpoints(results_dir: str) -> list[str]:
    """This run's checkpoints, newest first."""
    found = glob.glob(os.path.join(results_dir, CKPT_PATTERN))
    key = [(tuple(int(n) for n in re.findall(r"\d+", os.path.basename(p))), p) for p in found]
    return [p for _, p in sorted(key, reverse=True)]


def prune_checkpoints(results_dir: str, keep: int) -> None:
    """Keep the newest `keep` numbered checkpoints (keep <= 0 keeps all)."""
    if keep > 0:
        for old in list_checkpoints(results_dir)[keep:]:
            os.remove(old)


def load_checkpoint(path: str) -> dict:
    """torch.load(weights_only=True) with a one-line error naming the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    with warnings.catch_warnings(record=True) as caught:  # a corrupt file's warnings are noise
        warnings.simplefilter("always")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing here
            raise RuntimeError(unreadable_checkpoint(path, e)) from None
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return ckpt


def unreadable_checkpoint(path: str, error: Exception) -> str:
    """What to do about a checkpoint that torch.load refuses. torch's own text advises
    weights_only=False: the wrong way for a file cut short (a crash or a full disk during a copy)."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    if found:  # a real pickled object: DINO/MAE-style checkpoints pickle argparse.Namespace
        what = found.group(1)
        return (f"cannot load checkpoint {path}: it pickles a Python object ({what}), "
                "and checkpoints load with weights_only=True; re-save it as plain tensors and dicts")
    return (f"cannot load checkpoint {path}: the file is corrupt or truncated; resume from the "
            "previous one with --resume PATH (or --resume auto), or delete it")


def find_resume(resume: str, results_dir: str) -> tuple[str, dict] | None:
    """Resolve --resume: a path, or 'auto' for the newest readable checkpoint in results_dir.

    With 'auto', an unreadable newest checkpoint is skipped with a warning naming both files.
    """
    if not resume:
        return None
    if resume != "auto":
        return resume, load_checkpoint(resume)
    candidates = list_checkpoints(results_dir)
    for i, path in enumerate(candidates):
        try:
            return path, load_checkpoint(path)
        except RuntimeError as e:
            nxt = candidates[i + 1] if i + 1 < len(candidates) else "none left"
            warnings.warn(f"{e}; falling back to the previous checkpoint ({nxt})", stacklevel=2)
    return None


_PREFIXES = ("module.", "_orig_mod.")


def strip_prefixes(state: dict) -> dict:
    """Drop DDP's module. and torch.compile's _orig_mod. from every key."""
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


def backbone_state(state: dict, prefix: str) -> dict:
    """Keys under `prefix` (e.g. 'backbone.' or moco-v3's 'base_encoder.') with the prefix removed."""
    state = strip_prefixes(state)
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def load_backbone(path: str, prefer: str = "online") -> tuple[dict, dict]:
    """Backbone weights and the run's args from a checkpoint of this suite or of moco-v3/DSF.

    Returns (state_dict of the backbone, args dict or {}). `prefer` is 'online' or 'momentum'.
    moco-v3/DSF checkpoints keep the encoder under module.base_encoder.* (the head, fc or head.*,
    is the projector and is dropped by the caller's missing-keys check).
    """
    ckpt = load_checkpoint(path)
    model = ckpt.get("model", ckpt.get("state_dict", ckpt))
    args = ckpt.get("args", {}) if isinstance(ckpt.get("args"), dict) else {}
    order = ["momentum_backbone.", "backbone."] if prefer == "momentum" else ["backbone."]
    for prefix in order + ["base_encoder.", "momentum_encoder."]:
        state = backbone_state(model, prefix)
        if state:
            return state, args
    raise RuntimeError(f"{path} holds no backbone weights (looked for {order + ['base_encoder.']})")


def load_backbone_into(model: nn.Module, state: dict, allowed_missing: set[str]) -> None:
    """Load with strict=False and check that only the expected keys (the new head) are missing."""
    state = {k: v for k, v in state.items() if not k.startswith(("head.", "fc."))}
    msg = model.load_state_dict(state, strict=False)
    missing = set(msg.missing_keys) - allowed_missing
    if missing or msg.unexpected_keys:
        raise RuntimeError(f"checkpoint does not match the backbone: missing {sorted(missing)[:8]}, "
                           f"unexpected {sorted(msg.unexpected_keys)[:8]}")


def plain_args(d: dict) -> dict:
    """args as plain data (weights_only-loadable): devices and other objects become strings."""
    ok = (int, float, str, bool, type(None), list, tuple)
    return {k: v if isinstance(v, ok) else str(v) for k, v in d.items()}


def check_compatible(ckpt: dict, args: object, path: str, keys: list[str]) -> None:
    """A checkpoint of another method, architecture or view count is a one-line error listing
    every mismatched argument."""
    saved = ckpt.get("args", {})
    diff = [f"{k}: checkpoint {saved.get(k)!r} vs now {getattr(args, k)!r}" for k in keys
            if k in saved and saved.get(k) != getattr(args, k)]
    if diff:
        raise SystemExit(f"error: {path} does not match this run ({'; '.join(diff)}); "
                         "resume with the same flags or start a new --results_dir")


def per_rank_buffers(part: object) -> dict[str, torch.Tensor]:
    """Buffers that differ between ranks: those of every submodule marked ``per_rank_state``
    (e.g. SNCLR's banks, filled from each rank's own batches), by state_dict key."""
    if not isinstance(part, nn.Module):
        return {}
    out = {}
    for prefix, module in part.named_modules():
        if getattr(module, "per_rank_state", False):
            for name, buf in module.named_buffers(prefix=prefix):
                out[name] = buf.detach().cpu()
    return out


def training_state(parts: dict, epoch: int, step: int, args: object,
                   nonfinite_skipped: int, **counters: int) -> dict:
    """Everything the next step depends on, as plain data. Collective: every rank must call it
    (each rank's RNG state and per-rank buffers are gathered: each rank restores its own).
    `counters` (e.g. overflow_skipped) are stored as they are."""
    rngs = dist.all_gather_object(rng_state())
    state = {"epoch": epoch, "step": step, "args": plain_args(vars(args)), "rng": rngs,
             "nonfinite_skipped": nonfinite_skipped, **counters}
    state["method"] = state["args"].get("method")
    per_rank = {}
    for name, part in parts.items():
        state[name] = part.state_dict() if part is not None else None
        local = per_rank_buffers(part)
        if local:
            per_rank[name] = dist.all_gather_object(local)  # [rank 0's, rank 1's, ...]
    if per_rank:
        state["per_rank"] = per_rank
    return state


def restore_training_state(ckpt: dict, parts: dict, rank: int,
                           world_size: int | None = None) -> dict:
    """Load every part saved by training_state, this rank's RNG and (same world size) this rank's
    per-rank buffers; return the position and the saved counters."""
    world_size = dist.get_world_size() if world_size is None else world_size
    for name, part in parts.items():
        if part is not None and ckpt.get(name) is not None:
            part.load_state_dict(ckpt[name])
        saved = ckpt.get("per_rank", {}).get(name)
        if part is not None and saved and len(saved) == world_size:
            part.load_state_dict({**part.state_dict(), **saved[rank]})
        elif saved:  # another world size: every rank keeps rank 0's (refilled within a bank's size)
            warnings.warn(f"checkpoint has per-rank {name} state of {len(saved)} ranks, this run "
                          f"has {world_size}: every rank starts from rank 0's", stacklevel=2)
    rngs = ckpt["rng"] if isinstance(ckpt["rng"], list) else [ckpt["rng"]]
    set_rng_state(rngs[rank % len(rngs)])  # each rank its own stream
    skip = {"rng", "args", "method", "per_rank", *parts}
    counters = {k: v for k, v in ckpt.items() if k not in skip and isinstance(v, int)}
    return {"nonfinite_skipped": 0, "overflow_skipped": 0, **counters}


def resume_run(args: object, parts: dict, run_keys: list[str]) -> dict:
    """--resume for a training script: restore `parts` from the checkpoint it names (after checking
    `run_keys` match) and return the position {epoch, step, counters..., path}; zeros for a new run."""
    start = {"epoch": 0, "step": 0, "nonfinite_skipped": 0, "overflow_skipped": 0, "path": None}
    found = find_resume(args.resume, args.results_dir)
    if found:
        path, ckpt = found
        check_compatible(ckpt, args, path, run_keys)
        start = {**restore_training_state(ckpt, parts, args.rank), "path": path}
        print(f"resumed from {path} at epoch {start['epoch']} step {start['step']}")
    return start


def save_checkpoint(parts: dict, epoch: int, step: int, args: object, **counters: int) -> None:
    """training_state (collective: every rank calls it), written by rank 0 only, atomically; then
    only the newest --keep-checkpoints are kept."""
    state = training_state(parts, epoch, step, args, **counters)
    if dist.is_main_process():
        save_atomic(state, checkpoint_path(args.results_dir, epoch, step))
        prune_checkpoints(args.results_dir, args.keep_checkpoints)
