"""Test helpers: run a function on a 2-process gloo group; run an entry script in this process."""

from __future__ import annotations

import argparse
import builtins
import contextlib
import importlib
import os
import signal
import socket
import sys
import tempfile
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, out_dir: str, fn: Callable, args: tuple) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", world_size=world_size,
                            rank=rank)
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_gloo(fn: Callable[..., Any], *args: Any, world_size: int = 2) -> list[Any]:
    """Run fn(rank, world_size, *args) on a CPU gloo group; return each rank's (torch.save-able) result.

    fn must be a module-level function so that it can be pickled by the spawn start method.
    """
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_worker, args=(world_size, _free_port(), out_dir, fn, args), nprocs=world_size)
        return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False)
                for r in range(world_size)]


def run_script(module_name: str, argv: list[str], monkeypatch) -> argparse.Namespace:
    """`python MODULE.py ARGV` as its __main__ block does it, in this process; returns its args.
    A SystemExit (a non-zero exit) fails the calling test."""
    from utils.args import parse_with_config

    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(module_name, parents=[module.get_args_parser()])
    monkeypatch.setattr(sys, "argv", [f"{module_name}.py", *argv])  # results.json's command
    args = parse_with_config(parser, argv)
    module.main(args)
    return args


@contextlib.contextmanager
def script_process_state(monkeypatch) -> Iterator[None]:
    """Undo what an entry script changes in the process: print (rank-0 filter), SIGTERM/SIGUSR1
    handlers; and keep the run's git status from touching the index."""
    monkeypatch.setenv("GIT_OPTIONAL_LOCKS", "0")
    saved_print = builtins.print
    saved_signals = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        yield
    finally:
        builtins.print = saved_print
        for s, handler in saved_signals.items():
            signal.signal(s, handler)
